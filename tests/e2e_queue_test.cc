// End to end over gRPC: the real server (in-process, injected FakeClock) on a real
// MariaDB with 4 shard databases. Time moves only through clock_.Advance().

#include <gtest/gtest.h>

#include <algorithm>
#include <future>
#include <random>
#include <set>
#include <thread>

#include "common/ids.h"
#include "engine/placement.h"
#include "tests/e2e_support.h"
#include "tests/support/mariadb_instance.h"

namespace shardq::testing {
namespace {

constexpr char kNs[] = "e2e";

class E2ETest : public ::testing::Test {
 protected:
  void SetUp() override {
    config_ = FreshConfig(SharedMariaDb().socket(), 4);
    StartServer();
  }

  void StartServer() {
    auto server = frontend::Server::Start(config_, clock_);
    ASSERT_TRUE(server.ok()) << server.status().ToString();
    server_ = std::move(*server);
    ASSERT_TRUE(server_->engine().AwaitShardsOpen(std::chrono::seconds(30)));
    client_ = std::make_unique<QueueClient>(server_->port());
  }

  void RestartServer() {
    client_.reset();
    server_.reset();
    // So that the new server finds the shards free (its probes run on the fake clock).
    for (const auto& shard : config_.shards) {
      ASSERT_TRUE(AwaitOwnershipFreed(shard.database)) << shard.database;
    }
    StartServer();
  }

  // Starts a Dequeue that may park; the future resolves when the call answers.
  std::future<std::vector<v1::DequeuedItem>> DequeueAsync(const std::string& topic,
                                                          int count, int64_t wait_ms) {
    return std::async(std::launch::async, [this, topic, count, wait_ms] {
      return client_->Dequeue(kNs, topic, count, wait_ms);
    });
  }

  FakeClock clock_;
  frontend::ServerConfig config_;
  std::unique_ptr<frontend::Server> server_;
  std::unique_ptr<QueueClient> client_;
};

TEST_F(E2ETest, PrioritiesAcrossFourShardsComeOutInOrder) {
  std::mt19937 rng(7);
  std::set<uint32_t> shards_used;
  for (int i = 0; i < 200; ++i) {
    auto id = client_->EnqueueOne(kNs, "prio", static_cast<int32_t>(rng() % 50) - 10);
    ASSERT_TRUE(id.ok()) << id.status().ToString();
    shards_used.insert(ItemId::Parse(*id)->shard.value());
    clock_.Advance(engine::kPlacementSlot);  // the next call may go to another shard
  }
  EXPECT_EQ(shards_used.size(), 4u) << "calls are spread over all shards";

  std::vector<v1::DequeuedItem> all;
  for (int round = 0; round < 20 && all.size() < 200; ++round) {
    auto got = client_->Dequeue(kNs, "prio", 37);
    all.insert(all.end(), got.begin(), got.end());
  }
  ASSERT_EQ(all.size(), 200u);
  for (size_t i = 1; i < all.size(); ++i) {
    // The ordering rule's first key.
    ASSERT_LE(all[i - 1].priority(), all[i].priority()) << "at " << i;
  }
  EXPECT_TRUE(client_->Dequeue(kNs, "prio", 10).empty());
}

TEST_F(E2ETest, DelayIsHonouredNotBeforeAndPromptlyAfter) {
  ASSERT_TRUE(client_->EnqueueOne(kNs, "delay", {.delay_ms = 5000}).ok());
  EXPECT_TRUE(client_->Dequeue(kNs, "delay", 10).empty());
  clock_.Advance(Duration(4999));
  EXPECT_TRUE(client_->Dequeue(kNs, "delay", 10).empty()) << "one ms early";

  auto waiting = DequeueAsync("delay", 10, 60'000);
  clock_.Advance(Duration(1));
  auto got = waiting.get();
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].attempts(), 1u);
}

TEST_F(E2ETest, LongPollWakesWhenAnItemIsEnqueued) {
  auto waiting = DequeueAsync("poll", 5, 60'000);
  // Fake time never reaches the wait's end: only the enqueue can answer the call.
  auto id = client_->EnqueueOne(kNs, "poll", 3);
  ASSERT_TRUE(id.ok());
  auto got = waiting.get();
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].id(), *id);
}

TEST_F(E2ETest, LongPollAnswersEmptyWhenTheWaitRunsOut) {
  auto waiting = DequeueAsync("quiet", 5, 2000);
  // Let the call park (its first refill must finish) before time moves; an answer
  // before the advance would also be a failure, which get() below would show.
  auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (server_->engine().ParkedCalls() == 0 &&
         std::chrono::steady_clock::now() < until) {
    std::this_thread::yield();
  }
  ASSERT_EQ(server_->engine().ParkedCalls(), 1);
  clock_.Advance(Duration(2000));
  EXPECT_TRUE(waiting.get().empty());
}

TEST_F(E2ETest, ExpiredLeaseIsRedeliveredAndTheOldTokenRefused) {
  auto id = client_->EnqueueOne(kNs, "lease", {.lease_ms = 1000});
  ASSERT_TRUE(id.ok());
  auto first = client_->Dequeue(kNs, "lease", 1);
  ASSERT_EQ(first.size(), 1u);
  EXPECT_EQ(first[0].lease_deadline_ms(), ToUnixMillis(clock_.Now()) + 1000);
  EXPECT_TRUE(client_->Dequeue(kNs, "lease", 1).empty()) << "leased: nobody else gets it";

  clock_.Advance(Duration(999));
  EXPECT_TRUE(client_->Dequeue(kNs, "lease", 1).empty());
  auto waiting = DequeueAsync("lease", 1, 60'000);
  clock_.Advance(Duration(1));
  auto second = waiting.get();
  ASSERT_EQ(second.size(), 1u);
  EXPECT_EQ(second[0].id(), *id);
  EXPECT_EQ(second[0].attempts(), 2u);
  EXPECT_NE(second[0].lease_token(), first[0].lease_token());

  EXPECT_EQ(client_->Ack(*id, first[0].lease_token()),
            grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(client_->Nack(*id, first[0].lease_token(), 0),
            grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(client_->Extend(*id, first[0].lease_token(), 1000),
            grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(client_->Ack(*id, second[0].lease_token()), grpc::StatusCode::OK);
  EXPECT_EQ(client_->Ack(*id, second[0].lease_token()), grpc::StatusCode::OK)
      << "ack is idempotent";
  clock_.Advance(Duration(5000));
  EXPECT_TRUE(client_->Dequeue(kNs, "lease", 1).empty()) << "acked items never come back";
}

TEST_F(E2ETest, NackWithDelayRedeliversAfterTheDelayWithNewMetadata) {
  auto id = client_->EnqueueOne(kNs, "nack", 1);
  ASSERT_TRUE(id.ok());
  auto first = client_->Dequeue(kNs, "nack", 1);
  ASSERT_EQ(first.size(), 1u);

  v1::NackRequest req;
  auto* n = req.add_items();
  n->mutable_item()->set_id(*id);
  n->mutable_item()->set_lease_token(first[0].lease_token());
  n->set_delay_ms(2000);
  (*n->mutable_metadata()->mutable_entries())["why"] = "busy";
  v1::NackResponse resp;
  grpc::ClientContext ctx;
  SetDeadline(ctx);
  ASSERT_TRUE(client_->stub().Nack(&ctx, req, &resp).ok());
  ASSERT_EQ(resp.results(0).code(), 0) << resp.results(0).message();

  EXPECT_TRUE(client_->Dequeue(kNs, "nack", 1).empty());
  clock_.Advance(Duration(1999));
  EXPECT_TRUE(client_->Dequeue(kNs, "nack", 1).empty());
  auto waiting = DequeueAsync("nack", 1, 60'000);
  clock_.Advance(Duration(1));
  auto again = waiting.get();
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0].attempts(), 2u);
  EXPECT_EQ(again[0].metadata().entries().at("why"), "busy");
}

TEST_F(E2ETest, ExtendLeaseKeepsTheItemPastItsFirstDeadline) {
  auto id = client_->EnqueueOne(kNs, "extend", {.lease_ms = 1000});
  ASSERT_TRUE(id.ok());
  auto got = client_->Dequeue(kNs, "extend", 1);
  ASSERT_EQ(got.size(), 1u);
  clock_.Advance(Duration(900));
  EXPECT_EQ(client_->Extend(*id, got[0].lease_token(), 5000), grpc::StatusCode::OK);
  clock_.Advance(Duration(4000));
  EXPECT_TRUE(client_->Dequeue(kNs, "extend", 1).empty()) << "lease was extended";
  EXPECT_EQ(client_->Ack(*id, got[0].lease_token()), grpc::StatusCode::OK);
}

TEST_F(E2ETest, ActiveTopicsCountsEachState) {
  ASSERT_TRUE(client_->EnqueueOne(kNs, "t-a", 1).ok());
  ASSERT_TRUE(client_->EnqueueOne(kNs, "t-a", 2).ok());
  ASSERT_TRUE(client_->EnqueueOne(kNs, "t-b", {.delay_ms = 10'000}).ok());
  ASSERT_TRUE(client_->EnqueueOne("other-ns", "t-c", 1).ok());
  ASSERT_EQ(client_->Dequeue(kNs, "t-a", 1).size(), 1u);

  v1::GetActiveTopicsRequest req;
  req.set_namespace_(kNs);
  v1::GetActiveTopicsResponse resp;
  grpc::ClientContext ctx;
  SetDeadline(ctx);
  ASSERT_TRUE(client_->stub().GetActiveTopics(&ctx, req, &resp).ok());
  ASSERT_EQ(resp.topics_size(), 2);
  EXPECT_EQ(resp.topics(0).topic(), "t-a");
  EXPECT_EQ(resp.topics(0).ready(), 1u);
  EXPECT_EQ(resp.topics(0).leased(), 1u);
  EXPECT_EQ(resp.topics(1).topic(), "t-b");
  EXPECT_EQ(resp.topics(1).delayed(), 1u);
}

// A namespace may hold any number of topics; one answer must fit the message limit.
TEST_F(E2ETest, ActiveTopicsComeInPages) {
  for (const char* topic : {"p-c", "p-a", "p-d", "p-b", "p-e"})
    ASSERT_TRUE(client_->EnqueueOne(kNs, topic, 1).ok());
  auto page = [&](uint32_t limit, const std::string& after,
                  v1::GetActiveTopicsResponse* resp) {
    v1::GetActiveTopicsRequest req;
    req.set_namespace_(kNs);
    req.set_limit(limit);
    req.set_after_topic(after);
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    return client_->stub().GetActiveTopics(&ctx, req, resp).error_code();
  };
  std::vector<std::string> seen;
  std::string after;
  int pages = 0;
  do {
    v1::GetActiveTopicsResponse resp;
    ASSERT_EQ(page(2, after, &resp), grpc::StatusCode::OK);
    ASSERT_LE(resp.topics_size(), 2);
    for (const auto& t : resp.topics()) seen.push_back(t.topic());
    after = resp.next_after_topic();
    ++pages;
  } while (!after.empty() && pages < 10);
  EXPECT_EQ(pages, 3);
  EXPECT_EQ(seen, (std::vector<std::string>{"p-a", "p-b", "p-c", "p-d", "p-e"}));

  v1::GetActiveTopicsResponse whole;
  ASSERT_EQ(page(0, "", &whole), grpc::StatusCode::OK);  // 0: the default, 1,000
  EXPECT_EQ(whole.topics_size(), 5);
  EXPECT_TRUE(whole.next_after_topic().empty());
  v1::GetActiveTopicsResponse refused;
  EXPECT_EQ(page(10'001, "", &refused), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(E2ETest, RestartRebuildsTheIndexAndKeepsLeases) {
  std::set<std::string> ids;
  std::set<uint32_t> shards_used;
  for (int i = 0; i < 40; ++i) {
    AdvanceToSlotOf(clock_, kNs, static_cast<size_t>(i) % 4, 4);  // every shard rebuilds
    auto id = client_->EnqueueOne(kNs, "restart", {.priority = i % 5, .lease_ms = 3000});
    ASSERT_TRUE(id.ok());
    ids.insert(*id);
    shards_used.insert(ItemId::Parse(*id)->shard.value());
  }
  ASSERT_EQ(shards_used.size(), 4u);
  auto leased = client_->Dequeue(kNs, "restart", 5);
  ASSERT_EQ(leased.size(), 5u);

  RestartServer();

  auto rest = client_->Dequeue(kNs, "restart", 100);
  EXPECT_EQ(rest.size(), 35u) << "leased items stay leased across a restart";
  for (size_t i = 1; i < rest.size(); ++i)
    EXPECT_LE(rest[i - 1].priority(), rest[i].priority());
  for (const auto& d : rest)
    ASSERT_EQ(client_->Ack(d.id(), d.lease_token()), grpc::StatusCode::OK);

  auto waiting = DequeueAsync("restart", 100, 60'000);
  clock_.Advance(Duration(3000));
  auto back = waiting.get();
  // A long poll answers as soon as something is ready; fetch the rest.
  while (back.size() < 5) {
    auto more = client_->Dequeue(kNs, "restart", 100, 60'000);
    ASSERT_FALSE(more.empty());
    back.insert(back.end(), more.begin(), more.end());
  }
  ASSERT_EQ(back.size(), 5u) << "their leases still expire after the restart";
  std::set<std::string> seen;
  for (const auto& d : rest) seen.insert(d.id());
  for (const auto& d : back) seen.insert(d.id());
  EXPECT_EQ(seen, ids);
}

}  // namespace
}  // namespace shardq::testing
