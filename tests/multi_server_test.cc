// Several MySQL servers: shards 0,1 on MariaDB A and 2,3 on MariaDB B. Stopping A
// leaves enqueue and dequeue working on B's shards; A's shards come back when A
// returns. The shardq server runs in-process with a FakeClock, so breaker cool-downs
// pass only when the test advances the clock.

#include <gtest/gtest.h>

#include <set>
#include <thread>

#include "common/ids.h"
#include "tests/e2e_support.h"
#include "tests/support/mariadb_instance.h"

namespace shardq::testing {
namespace {

constexpr char kNs[] = "multi";

class MultiServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto a = MariaDbInstance::Start();
    auto b = MariaDbInstance::Start();
    ASSERT_TRUE(a.ok() && b.ok());
    a_ = std::move(*a);
    b_ = std::move(*b);
    frontend::ServerConfig config;
    config.listen = "127.0.0.1:0";
    config.io_threads = 4;
    config.mysql_servers = {{"a", a_->endpoint()}, {"b", b_->endpoint()}};
    config.shards = {{ShardId(0), "a", "shardq_0"},
                     {ShardId(1), "a", "shardq_1"},
                     {ShardId(2), "b", "shardq_2"},
                     {ShardId(3), "b", "shardq_3"}};
    auto server = frontend::Server::Start(config, clock_);
    ASSERT_TRUE(server.ok()) << server.status().ToString();
    server_ = std::move(*server);
    ASSERT_TRUE(server_->engine().AwaitShardsOpen(std::chrono::seconds(30)));
    client_ = std::make_unique<QueueClient>(server_->port());
  }

  uint32_t ShardOf(const std::string& id) { return ItemId::Parse(id)->shard.value(); }

  // Enqueues until `n` in a row succeed; returns the shards they landed on and counts
  // the failures on the way (bounded).
  std::multiset<uint32_t> EnqueueUntilHealthy(int n, int* failures) {
    std::multiset<uint32_t> shards;
    int in_a_row = 0;
    for (int i = 0; i < 300 && in_a_row < n; ++i) {
      auto id = client_->EnqueueOne(kNs, "t", 1);
      if (id.ok()) {
        shards.insert(ShardOf(*id));
        ++in_a_row;
      } else {
        shards.clear();
        in_a_row = 0;
        ++*failures;
      }
    }
    return shards;
  }

  bool AllShardsClosed() {
    for (const auto& h : server_->engine().Health()) {
      if (h.breaker != shard_worker::BreakerState::kClosed || !h.open) return false;
    }
    return true;
  }

  // Moves fake time in cool-down-sized steps until every breaker has probed and
  // closed. The probes themselves take real time (reconnecting), so the bound is a
  // real-time one.
  bool AdvanceUntilAllClosed() {
    auto until = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (!AllShardsClosed()) {
      if (std::chrono::steady_clock::now() > until) return false;
      clock_.Advance(Duration(100));
      std::this_thread::yield();
    }
    return true;
  }

  FakeClock clock_;
  std::unique_ptr<MariaDbInstance> a_, b_;
  std::unique_ptr<frontend::Server> server_;
  std::unique_ptr<QueueClient> client_;
};

TEST_F(MultiServerTest, OneServerDownLeavesTheOtherShardsWorkingAndTheyReturn) {
  std::set<std::string> before;
  for (int i = 0; i < 8; ++i) {
    AdvanceToSlotOf(clock_, kNs, static_cast<size_t>(i) % 4, 4);  // on A's shards too
    auto id = client_->EnqueueOne(kNs, "t", 5);
    ASSERT_TRUE(id.ok());
    before.insert(*id);
  }
  ASSERT_TRUE(a_->Kill().ok());
  AdvanceToSlotOf(clock_, kNs, 0, 4);  // enqueues try A's shard 0 first

  int failures = 0;
  auto shards = EnqueueUntilHealthy(30, &failures);
  ASSERT_EQ(shards.size(), 30u) << "enqueue never recovered with A down";
  EXPECT_EQ(shards.count(0) + shards.count(1), 0u) << "nothing may land on A's shards";
  EXPECT_GE(failures, 1) << "calls tried A's shard first";
  EXPECT_LE(failures, 20) << "the breakers should open after a few failures";

  // Dequeue still serves B's items while A is down.
  auto got = client_->Dequeue(kNs, "t", 100);
  EXPECT_FALSE(got.empty());
  for (const auto& item : got) {
    EXPECT_GE(ShardOf(item.id()), 2u);
    EXPECT_EQ(client_->Ack(item.id(), item.lease_token()), grpc::StatusCode::OK);
  }

  ASSERT_TRUE(a_->StartAgain().ok());
  // Past the cool-down the breakers probe A, reconnect and close.
  ASSERT_TRUE(AdvanceUntilAllClosed());
  for (size_t position = 0; position < 4; ++position) {
    AdvanceToSlotOf(clock_, kNs, position, 4);
    auto id = client_->EnqueueOne(kNs, "t", 1);
    ASSERT_TRUE(id.ok()) << id.status().ToString();
    EXPECT_EQ(ShardOf(*id), position) << "every shard, A's too, takes enqueues again";
  }

  // A's items from before the outage are delivered again.
  std::set<std::string> seen;
  for (int round = 0; round < 10; ++round) {
    for (const auto& item : client_->Dequeue(kNs, "t", 100)) seen.insert(item.id());
  }
  for (const auto& id : before) {
    if (ShardOf(id) < 2) {
      EXPECT_TRUE(seen.contains(id)) << id;
    }
  }
}

TEST_F(MultiServerTest, EveryShardDownIsUnavailable) {
  ASSERT_TRUE(a_->Kill().ok());
  ASSERT_TRUE(b_->Kill().ok());
  grpc::StatusCode last = grpc::StatusCode::OK;
  std::string message;
  for (int i = 0; i < 100; ++i) {
    v1::EnqueueRequest req;
    req.set_namespace_(kNs);
    req.add_items()->set_topic("t");
    v1::EnqueueResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    ASSERT_TRUE(client_->stub().Enqueue(&ctx, req, &resp).ok());
    last = static_cast<grpc::StatusCode>(resp.results(0).status().code());
    message = resp.results(0).status().message();
    if (message.find("no shard is available") != std::string::npos) break;
  }
  EXPECT_EQ(last, grpc::StatusCode::UNAVAILABLE);
  EXPECT_NE(message.find("no shard is available"), std::string::npos) << message;

  ASSERT_TRUE(a_->StartAgain().ok());
  ASSERT_TRUE(b_->StartAgain().ok());
  ASSERT_TRUE(AdvanceUntilAllClosed());
  EXPECT_TRUE(client_->EnqueueOne(kNs, "t", 1).ok());
}

}  // namespace
}  // namespace shardq::testing
