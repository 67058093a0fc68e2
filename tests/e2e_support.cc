#include "tests/e2e_support.h"

#include <fmt/format.h>
#include <grpcpp/generic/generic_stub.h>
#include <unistd.h>

#include <atomic>
#include <chrono>

#include "engine/placement.h"
#include "shardq/v1/message_limits.h"
#include "tests/support/mariadb_instance.h"

namespace shardq::testing {

void LiveServerTest::SetUp() {
  frontend::ServerConfig config = FreshConfig(SharedMariaDb().socket(), 2);
  Configure(config);
  auto server = frontend::Server::Start(config, clock_, ServerLimits());
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  server_ = std::move(*server);
  ASSERT_TRUE(server_->engine().AwaitShardsOpen(std::chrono::seconds(30)));
  client_ = std::make_unique<QueueClient>(server_->port());
}

bool AwaitFirstOpenAttempts(const engine::Engine& engine) {
  return Eventually([&] {
    for (const auto& h : engine.Health()) {
      if (h.starting) return false;
    }
    return true;
  });
}

frontend::ServerConfig FreshConfig(const std::string& socket, size_t shards) {
  static std::atomic<int> counter{0};
  int n = counter.fetch_add(1);
  frontend::ServerConfig config = frontend::EmbeddedConfig(socket, shards);
  for (auto& s : config.shards) {
    s.database = fmt::format("e2e_{}_{}_{}", getpid(), n, s.id.value());
  }
  config.listen = "127.0.0.1:0";
  config.io_threads = 4;
  return config;
}

grpc::health::v1::HealthCheckResponse::ServingStatus HealthCheck(
    int port, const std::string& service) {
  auto stub = grpc::health::v1::Health::NewStub(grpc::CreateChannel(
      "127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials()));
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  grpc::health::v1::HealthCheckResponse response;
  grpc::ClientContext context;
  SetDeadline(context, 5'000);
  grpc::Status status = stub->Check(&context, request, &response);
  EXPECT_TRUE(status.ok()) << status.error_message();
  return response.status();
}

grpc::Status WriteGarbageOnStream(int port, const std::string& method,
                                  const std::string& good) {
  auto channel = grpc::CreateChannel("127.0.0.1:" + std::to_string(port),
                                     grpc::InsecureChannelCredentials());
  grpc::GenericStub generic(channel);
  grpc::CompletionQueue cq;
  grpc::ClientContext ctx;
  SetDeadline(ctx);
  auto await = [&cq](intptr_t tag) {
    void* got = nullptr;
    bool ok = false;
    EXPECT_TRUE(cq.Next(&got, &ok));
    EXPECT_EQ(reinterpret_cast<intptr_t>(got), tag);
    return ok;
  };
  auto call = generic.PrepareCall(&ctx, "/shardq.v1.Queue/" + method, &cq);
  call->StartCall(reinterpret_cast<void*>(1));
  EXPECT_TRUE(await(1));

  grpc::Slice good_slice(good);
  grpc::ByteBuffer good_message(&good_slice, 1);
  call->Write(good_message, reinterpret_cast<void*>(2));
  EXPECT_TRUE(await(2));
  grpc::ByteBuffer answer;
  call->Read(&answer, reinterpret_cast<void*>(3));
  EXPECT_TRUE(await(3)) << "the good call is answered";

  std::string garbage = "\xff\xff\xff\xff\x0f garbage \x01\x02";
  grpc::Slice bad_slice(garbage);
  grpc::ByteBuffer bad_message(&bad_slice, 1);
  call->Write(bad_message, reinterpret_cast<void*>(4));
  await(4);
  grpc::Status status;
  call->Finish(&status, reinterpret_cast<void*>(5));
  EXPECT_TRUE(await(5));
  cq.Shutdown();
  void* tag = nullptr;
  bool ok = false;
  while (cq.Next(&tag, &ok)) {
  }
  return status;
}

void AdvanceToSlotOf(FakeClock& clock, const std::string& ns, size_t position,
                     size_t shards) {
  for (int i = 0; i < 1000; ++i) {
    if (engine::SlotPosition(ns, ToUnixMillis(clock.Now()), shards) == position) return;
    clock.Advance(engine::kPlacementSlot);
  }
  ADD_FAILURE() << "no slot of position " << position;
}

void SetDeadline(grpc::ClientContext& ctx, int64_t ms) {
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(ms));
}

namespace {
std::shared_ptr<grpc::Channel> ClientChannel(int port) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(v1::kMaxMessageBytes);
  return grpc::CreateCustomChannel(fmt::format("127.0.0.1:{}", port),
                                   grpc::InsecureChannelCredentials(), args);
}
}  // namespace

QueueClient::QueueClient(int port) : stub_(v1::Queue::NewStub(ClientChannel(port))) {}

Result<std::string> QueueClient::EnqueueOne(const std::string& ns,
                                            const std::string& topic,
                                            EnqueueOptions options) {
  v1::EnqueueRequest req;
  req.set_namespace_(ns);
  v1::EnqueueItem* item = req.add_items();
  item->set_topic(topic);
  item->set_priority(options.priority);
  item->set_payload(options.payload);
  if (options.delay_ms) item->set_delay_ms(options.delay_ms);
  item->set_lease_ms(options.lease_ms);
  if (!options.dedup_key.empty()) item->set_dedup_key(options.dedup_key);
  v1::EnqueueResponse resp;
  grpc::ClientContext ctx;
  SetDeadline(ctx);
  grpc::Status st = stub_->Enqueue(&ctx, req, &resp);
  if (!st.ok()) return Status(Code::kUnavailable, "rpc: " + st.error_message());
  if (resp.results_size() != 1) return Status::Internal("wrong result count");
  const auto& r = resp.results(0);
  if (r.status().code() != 0) {
    return Status(Code::kInternal, fmt::format("item code {}: {}", r.status().code(),
                                               r.status().message()));
  }
  return r.id();
}

std::vector<v1::DequeuedItem> QueueClient::Dequeue(const std::string& ns,
                                                   const std::string& topic, int count,
                                                   int64_t wait_ms,
                                                   grpc::Status* status) {
  v1::DequeueRequest req;
  req.set_namespace_(ns);
  auto* t = req.add_topics();
  t->set_topic(topic);
  t->set_count(count);
  req.set_wait_ms(wait_ms);
  v1::DequeueResponse resp;
  grpc::ClientContext ctx;
  SetDeadline(ctx);
  grpc::Status st = stub_->Dequeue(&ctx, req, &resp);
  if (status) *status = st;
  return {resp.items().begin(), resp.items().end()};
}

namespace {
template <typename Req>
void FillRef(Req* ref, const std::string& id, const std::string& token) {
  ref->set_id(id);
  ref->set_lease_token(token);
}
}  // namespace

grpc::StatusCode QueueClient::Ack(const std::string& id, const std::string& token) {
  v1::AckRequest req;
  FillRef(req.add_items(), id, token);
  v1::AckResponse resp;
  grpc::ClientContext ctx;
  SetDeadline(ctx);
  grpc::Status st = stub_->Ack(&ctx, req, &resp);
  if (!st.ok()) return st.error_code();
  return static_cast<grpc::StatusCode>(resp.results(0).code());
}

grpc::StatusCode QueueClient::Nack(const std::string& id, const std::string& token,
                                   int64_t delay_ms) {
  v1::NackRequest req;
  auto* n = req.add_items();
  FillRef(n->mutable_item(), id, token);
  n->set_delay_ms(delay_ms);
  v1::NackResponse resp;
  grpc::ClientContext ctx;
  SetDeadline(ctx);
  grpc::Status st = stub_->Nack(&ctx, req, &resp);
  if (!st.ok()) return st.error_code();
  return static_cast<grpc::StatusCode>(resp.results(0).code());
}

grpc::StatusCode QueueClient::Extend(const std::string& id, const std::string& token,
                                     int64_t extension_ms) {
  v1::ExtendLeaseRequest req;
  auto* e = req.add_items();
  FillRef(e->mutable_item(), id, token);
  e->set_extension_ms(extension_ms);
  v1::ExtendLeaseResponse resp;
  grpc::ClientContext ctx;
  SetDeadline(ctx);
  grpc::Status st = stub_->ExtendLease(&ctx, req, &resp);
  if (!st.ok()) return st.error_code();
  return static_cast<grpc::StatusCode>(resp.results(0).status().code());
}

v1::RedriveDeadLettersResponse QueueClient::Redrive(const std::string& ns,
                                                    const std::string& topic,
                                                    const std::vector<std::string>& ids) {
  v1::RedriveDeadLettersRequest req;
  req.set_namespace_(ns);
  req.set_topic(topic);
  for (const std::string& id : ids) req.add_ids(id);
  v1::RedriveDeadLettersResponse resp;
  grpc::ClientContext ctx;
  SetDeadline(ctx);
  grpc::Status st = stub_->RedriveDeadLetters(&ctx, req, &resp);
  EXPECT_TRUE(st.ok()) << st.error_message();
  return st.ok() ? resp : v1::RedriveDeadLettersResponse();
}

v1::Task QueueClient::GetTask(const std::string& id, grpc::Status* status) {
  v1::GetTaskRequest req;
  req.set_id(id);
  v1::GetTaskResponse resp;
  grpc::ClientContext ctx;
  SetDeadline(ctx);
  grpc::Status st = stub_->GetTask(&ctx, req, &resp);
  if (status) *status = st;
  return resp.task();
}

}  // namespace shardq::testing
