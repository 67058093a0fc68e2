// Load shedding end to end: what the server refuses when it is asked for more than
// it holds (parked long polls over all clients) or than a namespace may have (its
// enqueue quota), and that a refusal changes nothing.

#include <gtest/gtest.h>

#include <future>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "common/item.h"
#include "common/namespace_policy.h"
#include "store/db_client.h"
#include "tests/e2e_support.h"
#include "tests/support/mariadb_instance.h"

namespace shardq::testing {
namespace {

constexpr char kNs[] = "shed";

// A server that lets two dequeues park at once.
class ParkedCapTest : public LiveServerTest {
 protected:
  frontend::Limits ServerLimits() const override {
    frontend::Limits limits;
    limits.max_parked_dequeues = 2;
    return limits;
  }
};

TEST_F(ParkedCapTest, PastTheCapAWaitingDequeueTakesWhatIsReadyOrIsRefused) {
  // Two long polls park (the fake clock never ends their wait). jthreads: a failed
  // ASSERT below still joins them (each ends by its real-time deadline).
  std::vector<std::vector<v1::DequeuedItem>> got(3);
  std::vector<std::jthread> polls;
  for (int i = 0; i < 2; ++i) {
    polls.emplace_back([&, i] { got[i] = client_->Dequeue(kNs, "idle", 1, 60'000); });
  }
  ASSERT_TRUE(Eventually([&] { return server_->engine().ParkedCalls() == 2; }));

  // Nothing ready: a call that would wait is refused at once and does not park.
  grpc::Status refused;
  EXPECT_TRUE(client_->Dequeue(kNs, "idle", 1, 60'000, &refused).empty());
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(refused.error_message().find("retry later"), std::string::npos)
      << refused.error_message();
  EXPECT_EQ(server_->engine().ParkedCalls(), 2);
  // What is ready still goes to a call that asked to wait, and one that does not
  // wait is answered as ever.
  auto ready = client_->EnqueueOne(kNs, "busy");
  ASSERT_TRUE(ready.ok()) << ready.status().ToString();
  grpc::Status served;
  const auto busy = client_->Dequeue(kNs, "busy", 5, 60'000, &served);
  EXPECT_TRUE(served.ok()) << served.error_message();
  ASSERT_EQ(busy.size(), 1u);
  EXPECT_EQ(busy[0].id(), *ready);
  grpc::Status at_once;
  EXPECT_TRUE(client_->Dequeue(kNs, "idle", 1, 0, &at_once).empty());
  EXPECT_TRUE(at_once.ok()) << at_once.error_message();

  // An item answers one parked call; then a new one may park again.
  ASSERT_TRUE(client_->EnqueueOne(kNs, "idle").ok());
  ASSERT_TRUE(Eventually([&] { return server_->engine().ParkedCalls() == 1; }));
  polls.emplace_back([&] { got[2] = client_->Dequeue(kNs, "idle", 1, 60'000); });
  ASSERT_TRUE(Eventually([&] { return server_->engine().ParkedCalls() == 2; }));
  for (int i = 0; i < 2; ++i) ASSERT_TRUE(client_->EnqueueOne(kNs, "idle").ok());
  polls.clear();  // joins
  for (const auto& items : got) EXPECT_EQ(items.size(), 1u);
}

// Policies where namespace "metered" may enqueue `rate` items a second, `burst` at
// once, and the others have no quota.
NamespacePolicies Metered(uint64_t rate, uint64_t burst) {
  NamespacePolicy metered;
  metered.enqueue_rate = rate;
  metered.enqueue_burst = burst;
  return NamespacePolicies({}, {{"metered", metered}});
}

// A server whose namespace "metered" may enqueue 10 items a second, 3 at once.
class EnqueueQuotaTest : public LiveServerTest {
 protected:
  void Configure(frontend::ServerConfig& config) override {
    config.policies = Metered(10, 3);
  }

  // One Enqueue call of `payloads` (one item each) in `ns`; its per-item results.
  std::vector<v1::EnqueueResult> Enqueue(const std::string& ns,
                                         const std::vector<std::string>& payloads) {
    v1::EnqueueRequest request;
    request.set_namespace_(ns);
    for (const std::string& payload : payloads) {
      v1::EnqueueItem* item = request.add_items();
      item->set_topic("t");
      item->set_payload(payload);
    }
    v1::EnqueueResponse response;
    grpc::ClientContext context;
    SetDeadline(context);
    const grpc::Status status = client_->stub().Enqueue(&context, request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return {response.results().begin(), response.results().end()};
  }
};

TEST_F(EnqueueQuotaTest, ItemsPastTheQuotaAreRefusedOneByOneAndStoreNothing) {
  // Five valid items and one the server refuses anyway: the refused one does not use
  // the quota, and the valid ones past the burst of 3 are refused in order.
  const std::string too_big(kMaxPayloadBytes + 1, 'x');
  const auto results = Enqueue("metered", {"a", "b", too_big, "c", "d", "e"});
  ASSERT_EQ(results.size(), 6u);
  for (size_t i : {0, 1, 3}) {
    EXPECT_EQ(results[i].status().code(), grpc::StatusCode::OK) << i;
    EXPECT_FALSE(results[i].id().empty()) << i;
  }
  EXPECT_EQ(results[2].status().code(), grpc::StatusCode::INVALID_ARGUMENT);
  for (size_t i : {4, 5}) {
    EXPECT_EQ(results[i].status().code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << i;
    EXPECT_NE(results[i].status().message().find("enqueue quota of 10 items a second"),
              std::string::npos)
        << results[i].status().message();
    EXPECT_TRUE(results[i].id().empty()) << i;
  }
  // Other namespaces have no quota.
  const auto free = Enqueue("free", {"1", "2", "3", "4", "5"});
  for (const auto& r : free) EXPECT_EQ(r.status().code(), grpc::StatusCode::OK);

  // 100 ms refills one item.
  clock_.Advance(Duration(100));
  const auto later = Enqueue("metered", {"f", "g"});
  ASSERT_EQ(later.size(), 2u);
  EXPECT_EQ(later[0].status().code(), grpc::StatusCode::OK);
  EXPECT_EQ(later[1].status().code(), grpc::StatusCode::RESOURCE_EXHAUSTED);

  // Stored: exactly the items that were answered OK.
  std::multiset<std::string> payloads;
  for (const auto& item : client_->Dequeue("metered", "t", 100)) {
    payloads.insert(item.payload());
  }
  EXPECT_EQ(payloads, (std::multiset<std::string>{"a", "b", "c", "f"}));
}

// A server that holds at most 1 MiB of enqueues not yet committed. The engine lets
// one call of any size through while it holds nothing, and refuses a call that would
// pass the bound while another is still being committed.
class EnqueueQuotaRefundTest : public EnqueueQuotaTest {
 protected:
  void Configure(frontend::ServerConfig& config) override {
    config.policies = Metered(1, 200);
    config.max_buffered_enqueue_mb = 1;
    for (const auto& shard : config.shards) databases_.push_back(shard.database);
  }
  std::vector<std::string> databases_;
};

TEST_F(EnqueueQuotaRefundTest, ItemsTheEngineRefusesGiveTheirQuotaBack) {
  // Every shard's items table locked: an enqueue's bytes stay held while its insert
  // waits.
  store::DbConnection locker(SharedMariaDb().endpoint());
  std::string tables;
  for (const std::string& db : databases_) {
    tables += (tables.empty() ? "`" : ", `") + db + "`.items WRITE";
  }
  locker.Execute("LOCK TABLES " + tables);
  auto waiting = std::async(std::launch::async, [&] { return Enqueue("free", {"w"}); });
  ASSERT_TRUE(Eventually([&] { return server_->engine().BufferedEnqueueBytes() > 0; }));

  // 150 items of 10 KiB, 1.5 MiB: within the quota's 200, past the engine's budget.
  const auto big = Enqueue(
      "metered", std::vector<std::string>(150, std::string(kMaxPayloadBytes, 'x')));
  locker.Execute("UNLOCK TABLES");
  ASSERT_EQ(waiting.get().at(0).status().code(), grpc::StatusCode::OK);
  ASSERT_EQ(big.size(), 150u);
  for (const auto& r : big) {
    ASSERT_EQ(r.status().code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
    ASSERT_NE(r.status().message().find("not yet committed"), std::string::npos)
        << "refused by the engine's budget, not the quota: " << r.status().message();
  }
  // The clock has not moved, so nothing refilled: all 200 are back in the bucket.
  const auto small = Enqueue("metered", std::vector<std::string>(200, "s"));
  ASSERT_EQ(small.size(), 200u);
  for (const auto& r : small) {
    EXPECT_EQ(r.status().code(), grpc::StatusCode::OK) << r.status().message();
  }
  // And then the quota is spent.
  const auto more = Enqueue("metered", {"one more"});
  ASSERT_EQ(more.size(), 1u);
  EXPECT_NE(more[0].status().message().find("enqueue quota"), std::string::npos)
      << more[0].status().message();
}

}  // namespace
}  // namespace shardq::testing
