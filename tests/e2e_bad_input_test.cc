// Bad input over gRPC: each gets a clear status, changes nothing, and the server
// keeps serving.

#include <grpcpp/generic/generic_stub.h>
#include <gtest/gtest.h>

#include "tests/e2e_support.h"

namespace shardq::testing {
namespace {

constexpr char kNs[] = "bad";

class BadInputTest : public LiveServerTest {
 protected:
  void TearDown() override {
    // Whatever was sent, the server still answers and nothing was stored.
    if (!client_) return;
    EXPECT_TRUE(client_->EnqueueOne("alive", "check").ok());
    EXPECT_TRUE(server_->engine().ActiveTopics(kNs).empty())
        << "bad input changed something";
  }

  grpc::StatusCode EnqueueCall(const v1::EnqueueRequest& req, v1::EnqueueResponse* resp) {
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    return client_->stub().Enqueue(&ctx, req, resp).error_code();
  }
  // One item's per-item code.
  int EnqueueItemCode(const v1::EnqueueItem& item) {
    v1::EnqueueRequest req;
    req.set_namespace_(kNs);
    *req.add_items() = item;
    v1::EnqueueResponse resp;
    EXPECT_EQ(EnqueueCall(req, &resp), grpc::StatusCode::OK);
    return resp.results_size() == 1 ? resp.results(0).status().code() : -1;
  }
  grpc::StatusCode DequeueCall(const v1::DequeueRequest& req) {
    v1::DequeueResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    return client_->stub().Dequeue(&ctx, req, &resp).error_code();
  }
};

v1::EnqueueItem Item(const std::string& topic = "t") {
  v1::EnqueueItem item;
  item.set_topic(topic);
  item.set_payload("p");
  return item;
}

constexpr int kInvalid = static_cast<int>(grpc::StatusCode::INVALID_ARGUMENT);

TEST_F(BadInputTest, PayloadOverTenKiBIsRefusedAtTheLimitAccepted) {
  v1::EnqueueItem item = Item();
  item.set_payload(std::string(10 * 1024 + 1, 'x'));
  EXPECT_EQ(EnqueueItemCode(item), kInvalid);
  item.set_payload(std::string(10 * 1024, '\0'));
  item.set_topic("ok-topic");
  v1::EnqueueRequest req;
  req.set_namespace_("elsewhere");
  *req.add_items() = item;
  v1::EnqueueResponse resp;
  ASSERT_EQ(EnqueueCall(req, &resp), grpc::StatusCode::OK);
  EXPECT_EQ(resp.results(0).status().code(), 0) << "exactly 10 KiB is allowed";
}

TEST_F(BadInputTest, BadNamespacesFailTheWholeCall) {
  // The last is not UTF-8: the request does not even parse as a proto3 message.
  for (std::string ns :
       {std::string(""), std::string(65, 'n'), std::string("a b"), std::string("-lead"),
        std::string("x/y"), std::string("\xff\xfe")}) {
    v1::EnqueueRequest req;
    req.set_namespace_(ns);
    *req.add_items() = Item();
    v1::EnqueueResponse resp;
    EXPECT_EQ(EnqueueCall(req, &resp), grpc::StatusCode::INVALID_ARGUMENT) << ns;
    v1::DequeueRequest dq;
    dq.set_namespace_(ns);
    auto* t = dq.add_topics();
    t->set_topic("t");
    t->set_count(1);
    EXPECT_EQ(DequeueCall(dq), grpc::StatusCode::INVALID_ARGUMENT) << ns;
  }
}

TEST_F(BadInputTest, BadItemsAreRefusedOneByOneAndTheRestGoAhead) {
  std::vector<v1::EnqueueItem> bad;
  bad.push_back(Item(""));
  bad.push_back(Item(std::string(129, 't')));
  bad.push_back(Item("no spaces"));
  bad.push_back(Item("semi;colon"));
  auto with = [](auto set) {
    v1::EnqueueItem i = Item();
    set(i);
    return i;
  };
  bad.push_back(with([](auto& i) { i.set_delay_ms(-1); }));
  bad.push_back(with([](auto& i) { i.set_delay_ms(400LL * 24 * 3600 * 1000); }));
  bad.push_back(with([](auto& i) { i.set_deliver_after_ms(-5); }));
  bad.push_back(with([](auto& i) { i.set_lease_ms(-1); }));
  bad.push_back(with([](auto& i) { i.set_lease_ms(13LL * 3600 * 1000); }));
  bad.push_back(with([](auto& i) { i.set_ttl_ms(-1); }));

  v1::EnqueueRequest req;
  req.set_namespace_(kNs);
  for (const auto& b : bad) *req.add_items() = b;
  v1::EnqueueItem good = Item("good");
  v1::EnqueueResponse resp;
  ASSERT_EQ(EnqueueCall(req, &resp), grpc::StatusCode::OK);
  ASSERT_EQ(resp.results_size(), static_cast<int>(bad.size()));
  for (int i = 0; i < resp.results_size(); ++i) {
    EXPECT_EQ(resp.results(i).status().code(), kInvalid) << "item " << i;
    EXPECT_FALSE(resp.results(i).status().message().empty());
    EXPECT_TRUE(resp.results(i).id().empty());
  }

  // A mixed call in another namespace: the good item is enqueued, the bad one not.
  v1::EnqueueRequest mixed;
  mixed.set_namespace_("mixed");
  *mixed.add_items() = bad[0];
  *mixed.add_items() = good;
  ASSERT_EQ(EnqueueCall(mixed, &resp), grpc::StatusCode::OK);
  EXPECT_EQ(resp.results(0).status().code(), kInvalid);
  EXPECT_EQ(resp.results(1).status().code(), 0);
  EXPECT_EQ(server_->engine().ActiveTopics("mixed").size(), 1u);
}

TEST_F(BadInputTest, BatchSizesOutOfRange) {
  v1::EnqueueRequest req;
  req.set_namespace_(kNs);
  v1::EnqueueResponse resp;
  EXPECT_EQ(EnqueueCall(req, &resp), grpc::StatusCode::INVALID_ARGUMENT) << "no items";
  for (int i = 0; i < 1001; ++i) *req.add_items() = Item();
  EXPECT_EQ(EnqueueCall(req, &resp), grpc::StatusCode::INVALID_ARGUMENT) << "1001 items";

  v1::AckRequest ack;
  v1::AckResponse ack_resp;
  grpc::ClientContext ctx;
  SetDeadline(ctx);
  EXPECT_EQ(client_->stub().Ack(&ctx, ack, &ack_resp).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(BadInputTest, DequeueArgumentsOutOfRange) {
  auto request = [](int count, int64_t wait, std::vector<std::string> topics) {
    v1::DequeueRequest r;
    r.set_namespace_(kNs);
    r.set_wait_ms(wait);
    for (const auto& t : topics) {
      auto* tr = r.add_topics();
      tr->set_topic(t);
      tr->set_count(count);
    }
    return r;
  };
  EXPECT_EQ(DequeueCall(request(0, 0, {"t"})), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(DequeueCall(request(-3, 0, {"t"})), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(DequeueCall(request(1'000'000, 0, {"t"})),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(DequeueCall(request(1, -1, {"t"})), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(DequeueCall(request(1, 3'600'000, {"t"})),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(DequeueCall(request(1, 0, {})), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(DequeueCall(request(1, 0, {"t", "t"})), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(DequeueCall(request(1, 0, {"bad topic"})),
            grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(BadInputTest, AckRefsMalformedUnknownOrDuplicated) {
  auto id = client_->EnqueueOne("acks", "t");
  ASSERT_TRUE(id.ok());
  auto got = client_->Dequeue("acks", "t", 1);
  ASSERT_EQ(got.size(), 1u);
  const std::string token = got[0].lease_token();

  EXPECT_EQ(client_->Ack("garbage", token), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(client_->Ack("1-", token), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(client_->Ack(*id, "not-a-token"), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(client_->Ack("77-1", token), grpc::StatusCode::NOT_FOUND) << "unknown shard";
  EXPECT_EQ(client_->Ack(*id, "00000000000000ff"), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(client_->Nack(*id, token, -1), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(client_->Extend(*id, token, 0), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(client_->Extend(*id, token, -5), grpc::StatusCode::INVALID_ARGUMENT);

  v1::AckRequest req;
  for (int i = 0; i < 2; ++i) {
    auto* ref = req.add_items();
    ref->set_id(*id);
    ref->set_lease_token(token);
  }
  v1::AckResponse resp;
  grpc::ClientContext ctx;
  SetDeadline(ctx);
  ASSERT_TRUE(client_->stub().Ack(&ctx, req, &resp).ok());
  EXPECT_EQ(resp.results(0).code(), 0) << "the first occurrence is acked";
  EXPECT_EQ(resp.results(1).code(), kInvalid) << "the duplicate is refused";
}

TEST_F(BadInputTest, GarbageBytesAndOversizedMessages) {
  auto channel = grpc::CreateChannel("127.0.0.1:" + std::to_string(server_->port()),
                                     grpc::InsecureChannelCredentials());
  grpc::GenericStub generic(channel);
  for (const char* method : {"/shardq.v1.Queue/Enqueue", "/shardq.v1.Queue/Ack",
                             "/shardq.v1.Queue/Dequeue", "/shardq.v1.Queue/GetShards"}) {
    std::string garbage = "\xff\xff\xff\xff\x0f garbage \x01\x02";
    grpc::Slice slice(garbage);
    grpc::ByteBuffer request(&slice, 1);
    grpc::ByteBuffer response;
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    grpc::Status status;
    generic.UnaryCall(&ctx, method, grpc::StubOptions(), &request, &response,
                      [&](grpc::Status s) {
                        std::lock_guard lock(mu);
                        status = s;
                        done = true;
                        cv.notify_all();
                      });
    std::unique_lock lock(mu);
    cv.wait(lock, [&] { return done; });
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << method;
    EXPECT_NE(status.error_message().find("not a valid shardq.v1."), std::string::npos)
        << status.error_message();
  }

  v1::EnqueueRequest huge;
  huge.set_namespace_(kNs);
  for (int i = 0; i < 1000; ++i) {
    v1::EnqueueItem item = Item();
    item.set_payload(std::string(20 * 1024, 'h'));
    *huge.add_items() = item;
  }
  v1::EnqueueResponse resp;
  EXPECT_EQ(EnqueueCall(huge, &resp), grpc::StatusCode::RESOURCE_EXHAUSTED);
}

}  // namespace
}  // namespace shardq::testing
