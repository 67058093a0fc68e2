// CallStreamClient and ConsumeCalls against in-process gRPC servers (no MariaDB): what
// a call sent on a stream that is over is answered with; a call given up on is
// cancelled on the server; answers batched by the server each reach their call.

#include "consumer_sdk/src/call_stream_client.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <future>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "consumer_sdk/src/consume_calls.h"
#include "shardq/v1/queue.grpc.pb.h"
#include "shardq/v1/stream_batching.h"

namespace shardq::sdk {
namespace {

using namespace std::chrono_literals;
using Stream = CallStreamClient<v1::ConsumeStreamRequest, v1::ConsumeStreamResponse>;

// An in-process server for `service` on a free port, and a stub for it.
struct InProcessServer {
  explicit InProcessServer(grpc::Service* service) {
    int port = 0;
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(service);
    server = builder.BuildAndStart();
    stub = v1::Queue::NewStub(grpc::CreateChannel("127.0.0.1:" + std::to_string(port),
                                                  grpc::InsecureChannelCredentials()));
  }
  ~InProcessServer() { server->Shutdown(); }

  std::unique_ptr<grpc::Server> server;
  std::unique_ptr<v1::Queue::Stub> stub;
};

// A server from before ConsumeStream: every method is UNIMPLEMENTED.
struct OldServer {
  OldServer() {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(&service);
    server = builder.BuildAndStart();
    channel = grpc::CreateChannel("127.0.0.1:" + std::to_string(port),
                                  grpc::InsecureChannelCredentials());
    stub = v1::Queue::NewStub(channel);
  }
  ~OldServer() { server->Shutdown(); }

  std::shared_ptr<Stream> Open(std::promise<void>* done) {
    return Stream::Open(
        [this](grpc::ClientContext* ctx, auto* reactor) {
          stub->async()->ConsumeStream(ctx, reactor);
        },
        [done] { done->set_value(); });
  }

  v1::Queue::Service service;
  int port = 0;
  std::unique_ptr<grpc::Server> server;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::Queue::Stub> stub;
};

// Sends one call and waits for its answer's status.
grpc::StatusCode SendAndWait(Stream& stream, uint64_t call_id, bool* sent) {
  std::promise<grpc::StatusCode> answered;
  v1::ConsumeStreamRequest call;
  call.set_call_id(call_id);
  call.mutable_ack();
  *sent = stream.Send(std::move(call), [&](const grpc::Status& s, auto*) {
    answered.set_value(s.error_code());
  });
  auto future = answered.get_future();
  EXPECT_EQ(future.wait_for(30s), std::future_status::ready);
  return future.get();
}

// Polls `pred` until it holds or 30 s (real time) ran out.
template <typename Pred>
bool Eventually(Pred pred) {
  auto until = std::chrono::steady_clock::now() + 30s;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

// The server ends the stream before the caller's first call is sent (the race a
// worker's fallback to unary calls once lost): the call must hear UNIMPLEMENTED,
// which is what makes the caller fall back, not UNAVAILABLE, which it retries.
TEST(CallStreamClientTest, CallSentAfterTheServerEndedTheStreamGetsTheEndStatus) {
  OldServer old;
  std::promise<void> done;
  std::shared_ptr<Stream> stream = old.Open(&done);
  ASSERT_TRUE(Eventually([&] { return stream->closed(); }));
  bool sent = false;
  EXPECT_EQ(SendAndWait(*stream, 1, &sent), grpc::StatusCode::UNIMPLEMENTED);
  // After the end (the answer above comes from OnDone) too.
  EXPECT_EQ(SendAndWait(*stream, 2, &sent), grpc::StatusCode::UNIMPLEMENTED);
  EXPECT_FALSE(sent);
  stream.reset();
  EXPECT_EQ(done.get_future().wait_for(30s), std::future_status::ready);
}

TEST(CallStreamClientTest, CallSentAfterCloseWritesIsRefusedAsUnavailable) {
  OldServer old;
  std::promise<void> done;
  std::shared_ptr<Stream> stream = old.Open(&done);
  stream->CloseWrites();
  bool sent = true;
  EXPECT_EQ(SendAndWait(*stream, 1, &sent), grpc::StatusCode::UNAVAILABLE);
  EXPECT_FALSE(sent);
  stream.reset();
  EXPECT_EQ(done.get_future().wait_for(30s), std::future_status::ready);
}

// The end callback tells its owner it may let go of the channel. It must come after
// the stream object (whose ClientContext holds a channel reference) is destroyed, or
// the owner's release could leave the last reference to a gRPC thread, which gRPC
// 1.51 does not survive (a rare double free in a bench client's teardown).
TEST(CallStreamClientTest, TheEndCallbackRunsOnlyOnceTheStreamIsDestroyed) {
  OldServer old;
  std::weak_ptr<Stream> weak;
  std::promise<bool> gone_at_done;
  std::shared_ptr<Stream> stream = Stream::Open(
      [&](grpc::ClientContext* ctx, auto* reactor) {
        old.stub->async()->ConsumeStream(ctx, reactor);
      },
      // Cannot run before `weak` is set: `stream` holds the object until the reset.
      [&] { gone_at_done.set_value(weak.expired()); });
  weak = stream;
  ASSERT_TRUE(Eventually([&] { return stream->closed(); }));
  // A call's answer comes from OnDone at the latest, so once one was answered, a call
  // after it is refused at once: OnDone has run.
  bool sent = true;
  SendAndWait(*stream, 1, &sent);
  SendAndWait(*stream, 2, &sent);
  ASSERT_FALSE(sent);
  std::future<bool> gone = gone_at_done.get_future();
  // gRPC is done with the stream, but the caller still holds it.
  EXPECT_EQ(gone.wait_for(0s), std::future_status::timeout);
  stream.reset();
  ASSERT_EQ(gone.wait_for(30s), std::future_status::ready);
  EXPECT_TRUE(gone.get());
}

// A ConsumeStream server that never answers a dequeue and notes each cancel call.
class SilentDequeues final : public v1::Queue::Service {
 public:
  grpc::Status ConsumeStream(
      grpc::ServerContext*,
      grpc::ServerReaderWriter<v1::ConsumeStreamResponse, v1::ConsumeStreamRequest>* s)
      override {
    v1::ConsumeStreamRequest call;
    while (s->Read(&call)) {
      if (call.call_case() != v1::ConsumeStreamRequest::kCancel) continue;
      cancelled = call.cancel().call_id();
      v1::ConsumeStreamResponse answer;
      answer.set_call_id(call.call_id());
      s->Write(answer);
    }
    return grpc::Status::OK;
  }
  std::atomic<uint64_t> cancelled{0};
};

TEST(ConsumeCallsTest, ACallGivenUpAtItsDeadlineIsCancelledOnTheServer) {
  SilentDequeues service;
  InProcessServer in_process(&service);
  {
    ConsumeCalls calls(*in_process.stub);
    v1::DequeueResponse resp;
    // The first call on the stream gets call_id 1.
    grpc::Status s = calls.Dequeue(v1::DequeueRequest(), &resp, 20ms);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
    EXPECT_TRUE(Eventually([&] { return service.cancelled.load() == 1; }));
  }
}

// An EnqueueStream server that batches its answers: it reads `calls` calls, then
// answers them all in one message (the first, and the others in `more`).
class BatchingEnqueues final : public v1::Queue::Service {
 public:
  explicit BatchingEnqueues(int calls) : calls_(calls) {}

  grpc::Status EnqueueStream(
      grpc::ServerContext* ctx,
      grpc::ServerReaderWriter<v1::EnqueueStreamResponse, v1::EnqueueStreamRequest>* s)
      override {
    auto asked = ctx->client_metadata().find(v1::kBatchingHeader);
    client_asked = asked != ctx->client_metadata().end() && asked->second == "1";
    v1::EnqueueStreamResponse message;
    v1::EnqueueStreamRequest call;
    for (int i = 0; i < calls_ && s->Read(&call); ++i) {
      v1::EnqueueStreamResponse* answer = i == 0 ? &message : message.add_more();
      answer->set_call_id(call.call_id());
      answer->mutable_response()->add_results()->set_id("id-" +
                                                        std::to_string(call.call_id()));
      calls_per_message = std::max<int>(calls_per_message, 1 + call.more_size());
    }
    s->Write(message);
    while (s->Read(&call)) {
    }
    return grpc::Status::OK;
  }

  std::atomic<bool> client_asked{false};
  std::atomic<int> calls_per_message{0};

 private:
  const int calls_;
};

using EnqueueStream =
    CallStreamClient<v1::EnqueueStreamRequest, v1::EnqueueStreamResponse>;

// Sends `calls` calls on a stream opened with `answers` to a BatchingEnqueues server,
// waits for every answer and returns, by call id, the item id each answer carried;
// `asked` tells whether the stream asked for batched answers.
std::map<uint64_t, std::string> SendToABatchingServer(EnqueueStream::Answers answers,
                                                      int calls, bool* asked) {
  BatchingEnqueues service(calls);
  InProcessServer in_process(&service);
  std::promise<void> done;
  auto stream = EnqueueStream::Open(
      [&](grpc::ClientContext* ctx, auto* reactor) {
        in_process.stub->async()->EnqueueStream(ctx, reactor);
      },
      [&] { done.set_value(); }, answers);
  std::mutex mu;
  std::map<uint64_t, std::string> ids;
  for (uint64_t id = 1; id <= static_cast<uint64_t>(calls); ++id) {
    v1::EnqueueStreamRequest call;
    call.set_call_id(id);
    EXPECT_TRUE(stream->Send(std::move(call), [&, id](const grpc::Status& status,
                                                      v1::EnqueueStreamResponse* answer) {
      ASSERT_TRUE(status.ok()) << status.error_message();
      EXPECT_EQ(answer->call_id(), id);
      EXPECT_EQ(answer->more_size(), 0) << "each call sees its own answer only";
      std::lock_guard lock(mu);
      ids[id] = answer->response().results(0).id();
    }));
  }
  EXPECT_TRUE(Eventually([&] {
    std::lock_guard lock(mu);
    return ids.size() == static_cast<size_t>(calls);
  }));
  stream->CloseWrites();
  stream.reset();
  done.get_future().wait();
  EXPECT_EQ(service.calls_per_message.load(), 1) << "calls go one per message";
  *asked = service.client_asked.load();
  std::lock_guard lock(mu);
  return ids;
}

TEST(CallStreamClientTest, EachAnswerOfABatchedMessageReachesItsCall) {
  bool asked = false;
  std::map<uint64_t, std::string> ids =
      SendToABatchingServer(EnqueueStream::Answers::kBatched, 10, &asked);
  EXPECT_TRUE(asked);
  ASSERT_EQ(ids.size(), 10u);
  for (const auto& [id, item] : ids) EXPECT_EQ(item, "id-" + std::to_string(id));
}

TEST(CallStreamClientTest, AStreamAsksForBatchedAnswersOnlyWhenOpenedSo) {
  bool asked = true;
  SendToABatchingServer(EnqueueStream::Answers::kOnePerMessage, 1, &asked);
  EXPECT_FALSE(asked);
}

}  // namespace
}  // namespace shardq::sdk
