// The contract of store/store_api.h, run against both stores (typed tests), plus a few
// tests of what only one store has: the memory store's fault injection, and the MySQL
// store's recovery after the server is killed, its schema upgrade and its history rows.
//
// Time is given explicitly to every call; nothing here sleeps.

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "common/clock.h"
#include "common/item.h"
#include "common/namespace_policy.h"
#include "schema/migrations.h"
#include "store/memory_store.h"
#include "store/mysql_store.h"
#include "store/store_api.h"
#include "tests/support/mariadb_instance.h"

namespace shardq::store {
namespace {

using namespace std::chrono_literals;

const Time kT0 = FromUnixMillis(1'700'000'000'000);
// Retention of finished rows: kRetention by default, kShortRetention in namespace
// "short" (SetPolicies in SetUp).
constexpr Duration kRetention = std::chrono::hours(1);
constexpr Duration kShortRetention = std::chrono::seconds(10);

NamespacePolicies TestPolicies() {
  return NamespacePolicies(NamespacePolicy{5, kRetention},
                           {{"short", NamespacePolicy{5, kShortRetention}},
                            {"ephemeral", NamespacePolicy{5, Duration(0)}}});
}

// The value of a Result, or a test failure (thrown so the test stops at once).
template <typename T>
T Must(Result<T> r) {
  if (!r.ok()) {
    ADD_FAILURE() << r.status().ToString();
    throw std::runtime_error(r.status().ToString());
  }
  return std::move(r).value();
}

void MustOk(const Status& s) {
  if (!s.ok()) {
    ADD_FAILURE() << s.ToString();
    throw std::runtime_error(s.ToString());
  }
}

NewItem Item(std::string topic, int32_t priority, Time due, std::string payload = "p",
             Duration lease = 30s, std::optional<Time> expires_at = std::nullopt,
             std::string ns = "ns", uint32_t max_attempts = 5) {
  NewItem item;
  item.ns = std::move(ns);
  item.topic = std::move(topic);
  item.priority = priority;
  item.payload = std::move(payload);
  item.metadata = "m";
  item.deliver_after = due;
  item.lease = lease;
  item.expires_at = expires_at;
  item.max_attempts = max_attempts;
  return item;
}

NewItem Keyed(std::string key, std::string payload = "p", std::string ns = "ns") {
  NewItem item = Item("t", 0, kT0, std::move(payload), std::chrono::seconds(30),
                      std::nullopt, std::move(ns));
  item.dedup_key = std::move(key);
  return item;
}

// An item that is dead-lettered by its first failed delivery.
NewItem OneShot(std::string topic = "t", int32_t priority = 0) {
  return Item(std::move(topic), priority, kT0, "p", std::chrono::seconds(30),
              std::nullopt, "ns", 1);
}

std::vector<std::string> Kinds(const std::vector<TaskEvent>& history) {
  std::vector<std::string> kinds;
  for (const TaskEvent& e : history) kinds.push_back(e.kind);
  return kinds;
}

std::string RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 gen(seed);
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(gen() & 0xFF);
  return s;
}

// --- the two stores under test ---------------------------------------------------

struct MemoryEnv {
  static constexpr bool kSeparateReopen = false;
  std::unique_ptr<MemoryShardStore> Make() {
    return std::make_unique<MemoryShardStore>();
  }
};

// A database name not used before by this process (tests may run repeatedly).
std::string FreshDbName(const std::string& prefix) {
  static std::atomic<int> counter{0};
  return prefix + "_" + std::to_string(counter++);
}

struct MySqlEnv {
  static constexpr bool kSeparateReopen = true;
  // A fresh database per test on the binary's one private server.
  std::string db = FreshDbName("contract");
  std::unique_ptr<MySqlShardStore> Make() {
    return std::make_unique<MySqlShardStore>(testing::SharedMariaDb().endpoint(), db);
  }
  // MariaDB frees the closed store's ownership lock when it gets to the close, which
  // the next store's GET_LOCK(..., 0) could overtake (and be refused, as a restarted
  // server is until its next probe).
  void AfterClose() { ASSERT_TRUE(testing::AwaitOwnershipFreed(db)); }
};

template <typename Env>
class StoreContractTest : public ::testing::Test {
 protected:
  void SetUp() override {
    store_ = env_.Make();
    store_->SetPolicies(TestPolicies());
    ASSERT_TRUE(store_->Open().ok());
  }

  ShardStore& store() { return *store_; }

  // "Restarts" the store: a new object on the same database for MySQL (the recovery
  // path); for the memory store, whose data lives in the object, Open() again.
  void Reopen() {
    if constexpr (Env::kSeparateReopen) {
      store_.reset();
      env_.AfterClose();
      store_ = env_.Make();
      store_->SetPolicies(TestPolicies());
    }
    MustOk(store_->Open());
  }

  std::vector<Inserted> InsertFull(std::vector<NewItem> items, Time now = kT0) {
    return Must(store().Insert(items, now));
  }
  std::vector<RowId> Insert(std::vector<NewItem> items, Time now = kT0) {
    std::vector<RowId> rows;
    for (const Inserted& i : InsertFull(std::move(items), now)) {
      EXPECT_FALSE(i.deduplicated);
      rows.push_back(i.row);
    }
    return rows;
  }
  RowId InsertOne(NewItem item, Time now = kT0) {
    return Insert({std::move(item)}, now)[0];
  }

  std::vector<LeasedItem> Claim(std::vector<RowId> rows, uint64_t token, Time now = kT0,
                                const std::string& worker = "w1") {
    std::vector<ClaimRequest> reqs;
    for (RowId r : rows) reqs.push_back({r, worker});
    return Must(store().Claim(reqs, LeaseToken(token), now));
  }
  LeasedItem ClaimOne(RowId row, uint64_t token, Time now = kT0,
                      const std::string& worker = "w1") {
    std::vector<LeasedItem> got = Claim({row}, token, now, worker);
    if (got.size() != 1) throw std::runtime_error("claim did not lease the row");
    return got[0];
  }

  ItemOutcome AckOne(RowId row, uint64_t token, Time now = kT0, std::string result = "") {
    std::vector<AckRequest> req{{row, LeaseToken(token), std::move(result)}};
    return Must(store().Ack(req, now)).at(0);
  }
  ItemOutcome NackOne(RowId row, uint64_t token, Duration delay, Time now,
                      std::optional<std::string> metadata = std::nullopt,
                      std::string error = "", bool fatal = false) {
    std::vector<NackRequest> req{
        {row, LeaseToken(token), delay, std::move(metadata), std::move(error), fatal}};
    return Must(store().Nack(req, now)).at(0);
  }
  TaskRecord Task(RowId row, bool include_payload = false) {
    return Must(store().GetTask(row, include_payload));
  }
  ItemOutcome CancelOne(RowId row, Time now = kT0) {
    return Must(store().Cancel(row, now));
  }
  // Inserts a OneShot item, claims and nacks it: a DEAD row at `now`.
  RowId MakeDead(std::string topic = "t", int32_t priority = 0, Time now = kT0) {
    RowId id = InsertOne(OneShot(std::move(topic), priority), now);
    ClaimOne(id, 1000 + id.value(), now);
    ItemOutcome out = NackOne(id, 1000 + id.value(), Duration(0), now);
    if (!out.transition || out.transition->to != ItemState::kDead)
      throw std::runtime_error("not dead-lettered");
    return id;
  }
  ItemOutcome ExtendOne(RowId row, uint64_t token, Duration ext, Time now) {
    std::vector<ExtendRequest> req{{row, LeaseToken(token), ext}};
    return Must(store().Extend(req, now)).at(0);
  }

  std::vector<RowId> ReadyRows(const std::string& topic, size_t limit = 100,
                               const std::string& ns = "ns") {
    std::vector<RowId> rows;
    for (const ReadyKey& k : Must(store().FetchReady(ns, topic, limit)))
      rows.push_back(k.row);
    return rows;
  }

  TopicCounts Counts(const std::string& topic, const std::string& ns = "ns") {
    for (TopicCounts& c : Must(store().CountByTopic())) {
      if (c.ns == ns && c.topic == topic) return c;
    }
    return TopicCounts{ns, topic};
  }

  Env env_;
  std::unique_ptr<ShardStore> store_;
};

struct EnvNames {
  template <typename T>
  static std::string GetName(int) {
    return std::is_same_v<T, MemoryEnv> ? "Memory" : "MySql";
  }
};

using StoreEnvs = ::testing::Types<MemoryEnv, MySqlEnv>;
TYPED_TEST_SUITE(StoreContractTest, StoreEnvs, EnvNames);

// --- Open ---------------------------------------------------------------------------

TYPED_TEST(StoreContractTest, OpenTwiceIsIdempotent) {
  RowId id = this->InsertOne(Item("t", 0, kT0));
  EXPECT_TRUE(this->store().Open().ok());
  EXPECT_TRUE(this->store().Open().ok());
  EXPECT_TRUE(this->store().Ping().ok());
  EXPECT_EQ(this->ReadyRows("t"), std::vector<RowId>{id});
}

TYPED_TEST(StoreContractTest, ReopenKeepsEverything) {
  RowId ready = this->InsertOne(Item("t", 1, kT0));
  RowId leased = this->InsertOne(Item("t", 2, kT0));
  RowId delayed = this->InsertOne(Item("t", 3, kT0 + 1h));
  this->ClaimOne(leased, 77);

  this->Reopen();

  EXPECT_EQ(this->ReadyRows("t"), std::vector<RowId>{ready});
  TopicCounts c = this->Counts("t");
  EXPECT_EQ(c.ready, 1u);
  EXPECT_EQ(c.leased, 1u);
  EXPECT_EQ(c.delayed, 1u);
  EXPECT_EQ(Must(this->store().NextDue()), kT0 + 30s);  // the lease deadline
  // The lease survives with its token.
  EXPECT_TRUE(this->AckOne(leased, 77).status.ok());
  // New ids continue after the old ones.
  EXPECT_GT(this->InsertOne(Item("t", 0, kT0)), delayed);
}

// --- Insert -------------------------------------------------------------------------

TYPED_TEST(StoreContractTest, InsertReturnsIncreasingIdsAndSetsState) {
  std::vector<RowId> ids =
      this->Insert({Item("t", 0, kT0 - 1s), Item("t", 0, kT0), Item("t", 0, kT0 + 1ms)});
  ASSERT_EQ(ids.size(), 3u);
  EXPECT_LT(ids[0], ids[1]);
  EXPECT_LT(ids[1], ids[2]);
  std::vector<RowId> more = this->Insert({Item("t", 0, kT0), Item("t", 0, kT0)});
  EXPECT_LT(ids[2], more[0]);
  EXPECT_LT(more[0], more[1]);

  // deliver_after <= now is READY, later is DELAYED.
  TopicCounts c = this->Counts("t");
  EXPECT_EQ(c.ready, 4u);
  EXPECT_EQ(c.delayed, 1u);
  EXPECT_EQ(c.leased, 0u);
  std::vector<RowId> ready = this->ReadyRows("t");
  EXPECT_EQ(std::count(ready.begin(), ready.end(), ids[2]), 0);
}

TYPED_TEST(StoreContractTest, InsertOfNothingIsOk) {
  EXPECT_TRUE(Must(this->store().Insert({}, kT0)).empty());
  EXPECT_TRUE(Must(this->store().CountByTopic()).empty());
}

TYPED_TEST(StoreContractTest, InsertLargeBatchIsOneOrderedBatch) {
  std::vector<NewItem> items;
  for (int i = 0; i < 1200; ++i)
    items.push_back(Item("big", i % 7, kT0, std::to_string(i)));
  std::vector<RowId> ids = this->Insert(items);
  ASSERT_EQ(ids.size(), 1200u);
  EXPECT_TRUE(std::is_sorted(ids.begin(), ids.end()));
  EXPECT_EQ(std::adjacent_find(ids.begin(), ids.end()), ids.end());
  EXPECT_EQ(this->Counts("big").ready, 1200u);
  // Ids map to the input positions.
  EXPECT_EQ(this->ClaimOne(ids[777], 1).payload, "777");
}

// Every batch size maps the ids to the input positions, however the store splits it
// into statements (the MySQL store sends up to 16 rows as one INSERT, a larger batch
// as powers of two).
TYPED_TEST(StoreContractTest, InsertOfEverySmallBatchSizeMapsIdsToItems) {
  constexpr int kLargest = 40;
  for (int n = 1; n <= kLargest; ++n) {
    std::vector<NewItem> items;
    for (int i = 0; i < n; ++i) {
      items.push_back(Item("sizes", 0, kT0, std::to_string(n) + "/" + std::to_string(i)));
    }
    std::vector<RowId> ids = this->Insert(items);
    ASSERT_EQ(ids.size(), static_cast<size_t>(n));
    EXPECT_TRUE(std::is_sorted(ids.begin(), ids.end())) << n;
    EXPECT_EQ(std::adjacent_find(ids.begin(), ids.end()), ids.end()) << n;
    const int last = n - 1;
    EXPECT_EQ(this->ClaimOne(ids[last], 1).payload,
              std::to_string(n) + "/" + std::to_string(last))
        << n;
  }
  EXPECT_EQ(this->Counts("sizes").ready, kLargest * (kLargest + 1) / 2 - kLargest);
}

TYPED_TEST(StoreContractTest, InsertRefusesWhatTheTableCannotHoldAndStoresNothing) {
  Result<std::vector<Inserted>> r = this->store().Insert(
      std::vector<NewItem>{Item("ok", 0, kT0), Item(std::string(129, 't'), 0, kT0)}, kT0);
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
  EXPECT_TRUE(Must(this->store().CountByTopic()).empty());
}

// --- FetchReady ---------------------------------------------------------------------

TYPED_TEST(StoreContractTest, FetchReadyFollowsTheOrderingRule) {
  // Inserted out of order; same priority and due time are ordered by id.
  std::vector<RowId> ids = this->Insert({
      Item("t", 5, kT0 - 1s),   // 0
      Item("t", 1, kT0 - 1s),   // 1
      Item("t", 1, kT0 - 5s),   // 2
      Item("t", -3, kT0),       // 3
      Item("t", 1, kT0 - 5s),   // 4
      Item("t", 5, kT0 - 10s),  // 5
  });
  std::vector<RowId> want = {ids[3], ids[2], ids[4], ids[1], ids[5], ids[0]};
  EXPECT_EQ(this->ReadyRows("t"), want);

  std::vector<ReadyKey> keys = Must(this->store().FetchReady("ns", "t", 2));
  ASSERT_EQ(keys.size(), 2u);
  EXPECT_EQ(keys[0], (ReadyKey{-3, kT0, ids[3]}));
  EXPECT_EQ(keys[1], (ReadyKey{1, kT0 - 5s, ids[2]}));
  EXPECT_TRUE(Must(this->store().FetchReady("ns", "t", 0)).empty());
}

TYPED_TEST(StoreContractTest, FetchReadyReturnsOnlyReadyItemsOfThatTopic) {
  RowId mine = this->InsertOne(Item("t", 0, kT0));
  this->InsertOne(Item("other", 0, kT0));
  this->InsertOne(Item("t", 0, kT0, "p", 30s, std::nullopt, "other_ns"));
  this->InsertOne(Item("t", 0, kT0 + 1s));                // delayed
  this->ClaimOne(this->InsertOne(Item("t", 0, kT0)), 9);  // leased
  EXPECT_EQ(this->ReadyRows("t"), std::vector<RowId>{mine});
  EXPECT_TRUE(this->ReadyRows("nope").empty());
}

// --- Claim --------------------------------------------------------------------------

TYPED_TEST(StoreContractTest, ClaimLeasesTheRow) {
  NewItem item = Item("t", 4, kT0 - 2s, "payload", 45s);
  item.metadata = "meta";
  RowId id = this->InsertOne(item, kT0 - 2s);
  LeasedItem got = this->ClaimOne(id, 1234, kT0);
  EXPECT_EQ(got.row, id);
  EXPECT_EQ(got.ns, "ns");
  EXPECT_EQ(got.topic, "t");
  EXPECT_EQ(got.priority, 4);
  EXPECT_EQ(got.payload, "payload");
  EXPECT_EQ(got.metadata, "meta");
  EXPECT_EQ(got.token, LeaseToken(1234));
  EXPECT_EQ(got.lease_deadline, kT0 + 45s);
  EXPECT_EQ(got.attempts, 1u);
  EXPECT_EQ(got.enqueued_at, kT0 - 2s);
  EXPECT_EQ(got.deliver_after, kT0 - 2s);

  TopicCounts c = this->Counts("t");
  EXPECT_EQ(c.leased, 1u);
  EXPECT_EQ(c.ready, 0u);
  EXPECT_TRUE(this->ReadyRows("t").empty());
  EXPECT_EQ(Must(this->store().NextDue()), kT0 + 45s);
}

TYPED_TEST(StoreContractTest, ClaimIsACompareAndSwap) {
  RowId id = this->InsertOne(Item("t", 0, kT0));
  EXPECT_EQ(this->Claim({id}, 1).size(), 1u);
  EXPECT_TRUE(this->Claim({id}, 2).empty());
  // The first lease is intact: its token still acks.
  EXPECT_EQ(this->AckOne(id, 2).status.code(), Code::kFailedPrecondition);
  EXPECT_TRUE(this->AckOne(id, 1).status.ok());
}

TYPED_TEST(StoreContractTest, ClaimSkipsRowsThatAreNotClaimable) {
  RowId delayed = this->InsertOne(Item("t", 0, kT0 + 1s));
  RowId leased = this->InsertOne(Item("t", 0, kT0));
  this->ClaimOne(leased, 1);
  RowId acked = this->InsertOne(Item("t", 0, kT0));
  this->ClaimOne(acked, 2);
  ASSERT_TRUE(this->AckOne(acked, 2).status.ok());
  RowId ttl_now = this->InsertOne(Item("t", 0, kT0 - 1s, "p", 30s, kT0));
  RowId ttl_later = this->InsertOne(Item("t", 0, kT0 - 1s, "p", 30s, kT0 + 1ms));
  RowId ok = this->InsertOne(Item("t", 0, kT0));

  std::vector<LeasedItem> got =
      this->Claim({delayed, leased, acked, ttl_now, RowId(999999), ttl_later, ok, ok}, 3);
  std::vector<RowId> rows;
  for (const LeasedItem& g : got) rows.push_back(g.row);
  std::sort(rows.begin(), rows.end());
  EXPECT_EQ(rows, (std::vector<RowId>{ttl_later, ok}));
  EXPECT_EQ(this->Counts("t").delayed, 1u);
  EXPECT_EQ(this->Counts("t").ready, 1u);  // ttl_now, left for the purge
  EXPECT_TRUE(this->Claim({}, 4).empty());
}

TYPED_TEST(StoreContractTest, ClaimCountsAttempts) {
  RowId id = this->InsertOne(Item("t", 0, kT0));
  EXPECT_EQ(this->ClaimOne(id, 1).attempts, 1u);
  ASSERT_TRUE(this->NackOne(id, 1, 0ms, kT0 + 1s).status.ok());
  LeasedItem second = this->ClaimOne(id, 2, kT0 + 2s);
  EXPECT_EQ(second.attempts, 2u);
  EXPECT_EQ(second.deliver_after, kT0 + 1s);           // the nack made it due then
  Must(this->store().PromoteDue(kT0 + 2s + 30s, 10));  // lease expires
  EXPECT_EQ(this->ClaimOne(id, 3, kT0 + 40s).attempts, 3u);
}

TYPED_TEST(StoreContractTest, PayloadAndMetadataAreBinarySafe) {
  std::string binary("a\0b\xff\xfe\0\x80z", 8);
  std::string all_bytes;
  for (int i = 0; i < 256; ++i) all_bytes.push_back(static_cast<char>(i));
  std::string big = RandomBytes(kMaxPayloadBytes, 42);
  big[0] = '\0';
  big[big.size() - 1] = '\xff';

  NewItem a = Item("t", 0, kT0, binary);
  a.metadata = all_bytes;
  NewItem b = Item("t", 1, kT0, big);
  b.metadata = std::string("\0\0", 2);
  NewItem c = Item("t", 2, kT0, "");
  c.metadata = "";
  std::vector<RowId> ids = this->Insert({a, b, c});

  std::vector<LeasedItem> got = this->Claim(ids, 5);
  ASSERT_EQ(got.size(), 3u);
  std::sort(got.begin(), got.end(),
            [](const LeasedItem& x, const LeasedItem& y) { return x.row < y.row; });
  EXPECT_EQ(got[0].payload, binary);
  EXPECT_EQ(got[0].metadata, all_bytes);
  EXPECT_EQ(got[1].payload.size(), kMaxPayloadBytes);
  EXPECT_TRUE(got[1].payload == big);
  EXPECT_EQ(got[1].metadata, std::string("\0\0", 2));
  EXPECT_EQ(got[2].payload, "");
  EXPECT_EQ(got[2].metadata, "");

  // Binary metadata through nack too.
  ASSERT_TRUE(this->NackOne(ids[0], 5, 0ms, kT0, std::string("\xff\0x", 3)).status.ok());
  EXPECT_EQ(this->ClaimOne(ids[0], 6).metadata, std::string("\xff\0x", 3));
}

// --- Ack ----------------------------------------------------------------------------

TYPED_TEST(StoreContractTest, AckMakesTheRowSucceededAndReportsTheTransition) {
  RowId id = this->InsertOne(Item("t", 7, kT0));
  this->ClaimOne(id, 11);
  ItemOutcome out = this->AckOne(id, 11, kT0 + 2s, "the result");
  EXPECT_TRUE(out.status.ok());
  ASSERT_TRUE(out.transition.has_value());
  EXPECT_EQ(out.transition->row, id);
  EXPECT_EQ(out.transition->ns, "ns");
  EXPECT_EQ(out.transition->topic, "t");
  EXPECT_EQ(out.transition->priority, 7);
  EXPECT_EQ(out.transition->from, ItemState::kLeased);
  EXPECT_EQ(out.transition->to, ItemState::kSucceeded);
  EXPECT_EQ(out.transition->deliver_after, kT0 + 2s + kRetention);  // the purge time
  TopicCounts c = this->Counts("t");
  EXPECT_EQ(c.succeeded, 1u);
  EXPECT_EQ(c.leased + c.ready + c.delayed, 0u);
  EXPECT_TRUE(this->ReadyRows("t").empty());
  EXPECT_EQ(Must(this->store().NextDue()), std::nullopt);
  EXPECT_TRUE(this->Claim({id}, 12).empty());

  TaskRecord t = this->Task(id);
  EXPECT_EQ(t.state, ItemState::kSucceeded);
  EXPECT_EQ(t.result, "the result");
  EXPECT_EQ(t.finished_at, kT0 + 2s);
  EXPECT_EQ(t.deliver_after, kT0 + 2s + kRetention);
  EXPECT_EQ(Kinds(t.history), (std::vector<std::string>{"leased", "succeeded"}));
  EXPECT_EQ(t.history[1].at, kT0 + 2s);
  EXPECT_EQ(t.history[1].attempt, 1u);
  EXPECT_EQ(t.history[1].worker_id, "w1");
}

TYPED_TEST(StoreContractTest, AckIsIdempotent) {
  RowId id = this->InsertOne(Item("t", 0, kT0));
  this->ClaimOne(id, 11);
  ASSERT_TRUE(this->AckOne(id, 11).status.ok());
  ItemOutcome again = this->AckOne(id, 11, kT0 + 1s, "other result");
  EXPECT_TRUE(again.status.ok());
  EXPECT_FALSE(again.transition.has_value());
  // Nothing changed: no second event, the first ack's time and result.
  TaskRecord t = this->Task(id);
  EXPECT_EQ(Kinds(t.history), (std::vector<std::string>{"leased", "succeeded"}));
  EXPECT_EQ(t.finished_at, kT0);
  EXPECT_EQ(t.result, "");
  // Another token on the succeeded row is refused; a row that never existed is not found.
  EXPECT_EQ(this->AckOne(id, 12).status.code(), Code::kFailedPrecondition);
  ItemOutcome never = this->AckOne(RowId(424242), 3);
  EXPECT_EQ(never.status.code(), Code::kNotFound);
  EXPECT_FALSE(never.transition.has_value());
}

TYPED_TEST(StoreContractTest, AckWithAStaleTokenIsRefusedAndChangesNothing) {
  RowId id = this->InsertOne(Item("t", 0, kT0));
  this->ClaimOne(id, 11);
  ItemOutcome out = this->AckOne(id, 12);
  EXPECT_EQ(out.status.code(), Code::kFailedPrecondition);
  EXPECT_FALSE(out.transition.has_value());
  EXPECT_EQ(this->Counts("t").leased, 1u);
  // Token 0 is never a lease, not even on a row that was never claimed.
  RowId fresh = this->InsertOne(Item("t", 0, kT0));
  EXPECT_EQ(this->AckOne(fresh, 0).status.code(), Code::kFailedPrecondition);
  EXPECT_EQ(this->Counts("t").ready, 1u);
  EXPECT_TRUE(this->AckOne(id, 11).status.ok());
}

TYPED_TEST(StoreContractTest, AckBatchAnswersInRequestOrder) {
  std::vector<RowId> ids =
      this->Insert({Item("t", 0, kT0), Item("t", 0, kT0), Item("t", 0, kT0)});
  this->Claim(ids, 21);
  std::vector<AckRequest> reqs = {{ids[2], LeaseToken(21), ""},
                                  {ids[0], LeaseToken(99), ""},
                                  {RowId(777777), LeaseToken(21), ""},
                                  {ids[1], LeaseToken(21), ""},
                                  {ids[2], LeaseToken(21), ""}};
  std::vector<ItemOutcome> out = Must(this->store().Ack(reqs, kT0));
  ASSERT_EQ(out.size(), 5u);
  EXPECT_TRUE(out[0].status.ok());
  ASSERT_TRUE(out[0].transition.has_value());
  EXPECT_EQ(out[0].transition->row, ids[2]);
  EXPECT_EQ(out[1].status.code(), Code::kFailedPrecondition);
  EXPECT_EQ(out[2].status.code(), Code::kNotFound);
  EXPECT_FALSE(out[2].transition.has_value());
  EXPECT_TRUE(out[3].status.ok());
  ASSERT_TRUE(out[3].transition.has_value());
  EXPECT_EQ(out[3].transition->row, ids[1]);
  EXPECT_TRUE(out[4].status.ok());  // a duplicate of an ack that just succeeded
  EXPECT_FALSE(out[4].transition.has_value());
  EXPECT_EQ(this->Counts("t").leased, 1u);
  EXPECT_EQ(this->Counts("t").succeeded, 2u);
  EXPECT_TRUE(Must(this->store().Ack({}, kT0)).empty());
}

// Acks of rows this store leased itself take MySQL's compare-and-swap fast path; these
// are the cases where it must give way to the general path and answer the same.
TYPED_TEST(StoreContractTest, AckOfLeasedRowsWithOneStaleTokenAnswersEachRow) {
  std::vector<RowId> ids =
      this->Insert({Item("t", 0, kT0), Item("t", 1, kT0), Item("t", 2, kT0)});
  this->Claim(ids, 31);
  std::vector<AckRequest> reqs = {{ids[0], LeaseToken(31), "a"},
                                  {ids[1], LeaseToken(32), "b"},
                                  {ids[2], LeaseToken(31), "c"}};
  std::vector<ItemOutcome> out = Must(this->store().Ack(reqs, kT0 + 1s));
  ASSERT_EQ(out.size(), 3u);
  EXPECT_TRUE(out[0].status.ok());
  EXPECT_EQ(out[1].status.code(), Code::kFailedPrecondition);
  EXPECT_FALSE(out[1].transition.has_value());
  EXPECT_TRUE(out[2].status.ok());
  ASSERT_TRUE(out[2].transition.has_value());
  EXPECT_EQ(out[2].transition->from, ItemState::kLeased);
  EXPECT_EQ(out[2].transition->to, ItemState::kSucceeded);
  EXPECT_EQ(out[2].transition->topic, "t");
  EXPECT_EQ(out[2].transition->priority, 2);
  EXPECT_EQ(out[2].transition->deliver_after, kT0 + 1s + kRetention);
  EXPECT_EQ(this->Task(ids[0]).result, "a");
  EXPECT_EQ(this->Task(ids[1]).state, ItemState::kLeased);
  EXPECT_EQ(this->Task(ids[2]).result, "c");
  EXPECT_EQ(this->Counts("t").succeeded, 2u);
  EXPECT_EQ(this->Counts("t").leased, 1u);
  // The refused row is still acked by its own token afterwards.
  ItemOutcome late = this->AckOne(ids[1], 31, kT0 + 2s);
  EXPECT_TRUE(late.status.ok());
  EXPECT_EQ(late.transition->priority, 1);
}

TYPED_TEST(StoreContractTest, AckAfterTheLeaseExpiredAndWasPromoted) {
  RowId id = this->InsertOne(Item("t", 4, kT0));
  this->ClaimOne(id, 41);
  std::vector<ItemTransition> moved = Must(this->store().PromoteDue(kT0 + 31s, 10)).moved;
  ASSERT_EQ(moved.size(), 1u);
  ASSERT_EQ(moved[0].to, ItemState::kReady);
  // The work was done after all: the late ack with the lease's token still counts.
  ItemOutcome out = this->AckOne(id, 41, kT0 + 32s);
  ASSERT_TRUE(out.status.ok()) << out.status.ToString();
  ASSERT_TRUE(out.transition.has_value());
  EXPECT_EQ(out.transition->from, ItemState::kReady);
  EXPECT_EQ(out.transition->to, ItemState::kSucceeded);
  EXPECT_EQ(this->Counts("t").ready, 0u);
  EXPECT_EQ(this->Counts("t").succeeded, 1u);
}

// --- Nack ---------------------------------------------------------------------------

TYPED_TEST(StoreContractTest, NackWithoutDelayMakesTheItemReadyNow) {
  RowId id = this->InsertOne(Item("t", 3, kT0));
  this->ClaimOne(id, 1);
  ItemOutcome out = this->NackOne(id, 1, 0ms, kT0 + 5s);
  EXPECT_TRUE(out.status.ok());
  ASSERT_TRUE(out.transition.has_value());
  EXPECT_EQ(out.transition->from, ItemState::kLeased);
  EXPECT_EQ(out.transition->to, ItemState::kReady);
  EXPECT_EQ(out.transition->deliver_after, kT0 + 5s);
  EXPECT_EQ(out.transition->priority, 3);
  std::vector<ReadyKey> keys = Must(this->store().FetchReady("ns", "t", 10));
  ASSERT_EQ(keys.size(), 1u);
  EXPECT_EQ(keys[0], (ReadyKey{3, kT0 + 5s, id}));
  EXPECT_EQ(Must(this->store().NextDue()), std::nullopt);
}

TYPED_TEST(StoreContractTest, NackWithDelayMakesTheItemDelayed) {
  RowId id = this->InsertOne(Item("t", 0, kT0));
  this->ClaimOne(id, 1);
  ItemOutcome out = this->NackOne(id, 1, 5s, kT0 + 1s);
  EXPECT_TRUE(out.status.ok());
  ASSERT_TRUE(out.transition.has_value());
  EXPECT_EQ(out.transition->to, ItemState::kDelayed);
  EXPECT_EQ(out.transition->deliver_after, kT0 + 6s);
  EXPECT_TRUE(this->ReadyRows("t").empty());
  EXPECT_EQ(this->Counts("t").delayed, 1u);
  EXPECT_EQ(Must(this->store().NextDue()), kT0 + 6s);
  EXPECT_TRUE(Must(this->store().PromoteDue(kT0 + 6s - 1ms, 10)).moved.empty());
  EXPECT_EQ(Must(this->store().PromoteDue(kT0 + 6s, 10)).moved.size(), 1u);
  EXPECT_EQ(this->ReadyRows("t"), std::vector<RowId>{id});
}

TYPED_TEST(StoreContractTest, NackReplacesMetadataOnlyWhenGiven) {
  RowId id = this->InsertOne(Item("t", 0, kT0));
  this->ClaimOne(id, 1);
  ASSERT_TRUE(this->NackOne(id, 1, 0ms, kT0, "new-meta").status.ok());
  EXPECT_EQ(this->ClaimOne(id, 2).metadata, "new-meta");
  ASSERT_TRUE(this->NackOne(id, 2, 0ms, kT0).status.ok());
  LeasedItem again = this->ClaimOne(id, 3);
  EXPECT_EQ(again.metadata, "new-meta");
  EXPECT_EQ(again.payload, "p");  // the payload never changes
}

TYPED_TEST(StoreContractTest, NackIsRefusedForStaleTokensUnleasedAndMissingRows) {
  RowId id = this->InsertOne(Item("t", 0, kT0));
  RowId ready = this->InsertOne(Item("t", 1, kT0));
  this->ClaimOne(id, 1);

  std::vector<NackRequest> reqs = {
      {id, LeaseToken(2), 0ms, "x", "", false},
      {ready, LeaseToken(0), 0ms, std::nullopt, "", false},
      {RowId(555555), LeaseToken(1), 0ms, std::nullopt, "", false},
      {id, LeaseToken(1), 1s, std::nullopt, "", false},
      {id, LeaseToken(1), 0ms, std::nullopt, "", false}};
  std::vector<ItemOutcome> out = Must(this->store().Nack(reqs, kT0));
  ASSERT_EQ(out.size(), 5u);
  EXPECT_EQ(out[0].status.code(), Code::kFailedPrecondition);
  EXPECT_FALSE(out[0].transition.has_value());
  EXPECT_EQ(out[1].status.code(), Code::kFailedPrecondition);
  EXPECT_EQ(out[2].status.code(), Code::kNotFound);
  EXPECT_TRUE(out[3].status.ok());
  // The row is no longer leased once the previous request nacked it.
  EXPECT_EQ(out[4].status.code(), Code::kFailedPrecondition);
  TopicCounts c = this->Counts("t");
  EXPECT_EQ(c.delayed, 1u);
  EXPECT_EQ(c.ready, 1u);
  // The refused request did not touch the metadata.
  Must(this->store().PromoteDue(kT0 + 1s, 10));
  EXPECT_EQ(this->ClaimOne(id, 3, kT0 + 1s).metadata, "m");
}

// --- Extend -------------------------------------------------------------------------

TYPED_TEST(StoreContractTest, ExtendMovesTheDeadline) {
  RowId id = this->InsertOne(Item("t", 0, kT0, "p", 10s));
  this->ClaimOne(id, 1);
  ItemOutcome out = this->ExtendOne(id, 1, 60s, kT0 + 5s);
  EXPECT_TRUE(out.status.ok());
  EXPECT_EQ(out.new_deadline, kT0 + 65s);
  EXPECT_FALSE(out.transition.has_value());
  EXPECT_EQ(Must(this->store().NextDue()), kT0 + 65s);
  EXPECT_TRUE(Must(this->store().PromoteDue(kT0 + 10s, 10)).moved.empty());
  EXPECT_EQ(this->Counts("t").leased, 1u);
}

TYPED_TEST(StoreContractTest, ExtendIsRefusedAfterExpiryAndForStaleOrMissing) {
  RowId id = this->InsertOne(Item("t", 0, kT0, "p", 10s));
  this->ClaimOne(id, 1);
  EXPECT_EQ(this->ExtendOne(id, 2, 60s, kT0 + 1s).status.code(),
            Code::kFailedPrecondition);
  EXPECT_EQ(this->ExtendOne(RowId(9999), 1, 60s, kT0).status.code(), Code::kNotFound);
  // Expired at the deadline itself, even before PromoteDue ran.
  ItemOutcome late = this->ExtendOne(id, 1, 60s, kT0 + 10s);
  EXPECT_EQ(late.status.code(), Code::kFailedPrecondition);
  EXPECT_EQ(Must(this->store().NextDue()), kT0 + 10s);  // unchanged
  // And once promoted the item is not leased any more.
  Must(this->store().PromoteDue(kT0 + 10s, 10));
  EXPECT_EQ(this->ExtendOne(id, 1, 60s, kT0 + 9s).status.code(),
            Code::kFailedPrecondition);
}

// --- Write: a turn's acks, nacks, extensions and inserts in one transaction ---------

TYPED_TEST(StoreContractTest, WriteDoesEveryPartAsItsOwnCallWould) {
  std::vector<RowId> ids =
      this->Insert({Item("t", 0, kT0), Item("t", 1, kT0), Item("t", 2, kT0)});
  this->Claim(ids, 41);
  std::vector<AckRequest> acks{{ids[0], LeaseToken(41), "done"}};
  std::vector<NackRequest> nacks{{ids[1], LeaseToken(41), Duration(0), "m2", "boom"}};
  std::vector<ExtendRequest> extends{{ids[2], LeaseToken(41), 60s},
                                     {ids[0], LeaseToken(99), 60s}};
  std::vector<NewItem> items{Item("t", 3, kT0), Item("t", 4, kT0 + 10s)};
  Written w = Must(this->store().Write(
      {.acks = acks, .nacks = nacks, .extends = extends, .items = items}, kT0 + 1s));
  ASSERT_EQ(w.acked.size(), 1u);
  EXPECT_TRUE(w.acked[0].status.ok());
  ASSERT_TRUE(w.acked[0].transition.has_value());
  EXPECT_EQ(w.acked[0].transition->to, ItemState::kSucceeded);
  ASSERT_EQ(w.nacked.size(), 1u);
  ASSERT_TRUE(w.nacked[0].transition.has_value());
  EXPECT_EQ(w.nacked[0].transition->to, ItemState::kReady);
  ASSERT_EQ(w.extended.size(), 2u);
  EXPECT_EQ(w.extended[0].new_deadline, kT0 + 61s);
  EXPECT_EQ(w.extended[1].status.code(), Code::kFailedPrecondition);  // stale token
  ASSERT_EQ(w.inserted.size(), 2u);
  EXPECT_FALSE(w.inserted[0].deduplicated);
  EXPECT_EQ(this->Task(ids[0]).result, "done");
  EXPECT_EQ(this->Task(ids[1]).metadata, "m2");
  EXPECT_EQ(this->Task(ids[1]).last_error, "boom");
  EXPECT_EQ(this->Task(ids[2]).deliver_after, kT0 + 61s);
  EXPECT_EQ(this->Task(w.inserted[0].row).state, ItemState::kReady);
  EXPECT_EQ(this->Task(w.inserted[1].row).state, ItemState::kDelayed);
  const TopicCounts c = this->Counts("t");
  EXPECT_EQ(c.succeeded, 1u);
  EXPECT_EQ(c.ready, 2u);
  EXPECT_EQ(c.leased, 1u);
  EXPECT_EQ(c.delayed, 1u);
}

TYPED_TEST(StoreContractTest, WriteThatFailsAsAWholeChangesNothing) {
  RowId id = this->InsertOne(Item("t", 0, kT0));
  this->ClaimOne(id, 7);
  std::vector<AckRequest> acks{{id, LeaseToken(7), ""}};
  std::vector<NewItem> items{Item("t", 1, kT0), Item("t", 2, kT0)};
  items[1].task_type = std::string(kMaxTaskTypeLen + 1, 'x');  // more than the column
  EXPECT_EQ(this->store().Write({.acks = acks, .items = items}, kT0).status().code(),
            Code::kInvalidArgument);
  EXPECT_EQ(this->Task(id).state, ItemState::kLeased);
  EXPECT_EQ(this->Counts("t").ready, 0u);
  EXPECT_TRUE(this->AckOne(id, 7).status.ok());  // the lease is still good
}

// A taken dedup key makes MySQL redo its optimistic insert with a lookup (after a
// rollback of the whole transaction): the acks before it are done once, not twice.
TYPED_TEST(StoreContractTest, WriteWithATakenDedupKeyAcksOnce) {
  RowId keyed = this->InsertOne(Keyed("k"));
  RowId leased = this->InsertOne(Item("t", 5, kT0));
  this->ClaimOne(leased, 8);
  std::vector<AckRequest> acks{{leased, LeaseToken(8), "r"}};
  std::vector<NewItem> items{Keyed("k2"), Keyed("k")};
  Written w = Must(this->store().Write({.acks = acks, .items = items}, kT0 + 1s));
  ASSERT_EQ(w.acked.size(), 1u);
  EXPECT_TRUE(w.acked[0].status.ok());
  ASSERT_TRUE(w.acked[0].transition.has_value());
  EXPECT_EQ(w.acked[0].transition->from, ItemState::kLeased);
  ASSERT_EQ(w.inserted.size(), 2u);
  EXPECT_FALSE(w.inserted[0].deduplicated);
  EXPECT_TRUE(w.inserted[1].deduplicated);
  EXPECT_EQ(w.inserted[1].row, keyed);
  EXPECT_EQ(this->Task(leased).result, "r");
  EXPECT_EQ(this->Counts("t").succeeded, 1u);
  EXPECT_EQ(this->Counts("t").ready, 2u);  // "k" and "k2"
}

TYPED_TEST(StoreContractTest, WriteOfNothingIsOk) {
  Written w = Must(this->store().Write({}, kT0));
  EXPECT_TRUE(w.acked.empty() && w.nacked.empty() && w.extended.empty() &&
              w.inserted.empty());
}

// --- PromoteDue ---------------------------------------------------------------------

TYPED_TEST(StoreContractTest, PromoteDueMovesDueDelayedItemsEarliestFirst) {
  std::vector<RowId> ids = this->Insert(
      {Item("t", 0, kT0 + 2s), Item("t", 9, kT0 + 1s), Item("t", 0, kT0 + 10s)});
  Promotion promoted = Must(this->store().PromoteDue(kT0 + 5s, 10));
  EXPECT_EQ(promoted.next_due, kT0 + 10s);  // the one still delayed
  const std::vector<ItemTransition>& moved = promoted.moved;
  ASSERT_EQ(moved.size(), 2u);
  EXPECT_EQ(moved[0].row, ids[1]);
  EXPECT_EQ(moved[0].from, ItemState::kDelayed);
  EXPECT_EQ(moved[0].to, ItemState::kReady);
  EXPECT_EQ(moved[0].deliver_after, kT0 + 1s);
  EXPECT_EQ(moved[0].priority, 9);
  EXPECT_EQ(moved[1].row, ids[0]);
  EXPECT_EQ(this->Counts("t").delayed, 1u);
  EXPECT_EQ(Must(this->store().NextDue()), kT0 + 10s);
  EXPECT_EQ(this->ReadyRows("t"), (std::vector<RowId>{ids[0], ids[1]}));
  EXPECT_TRUE(Must(this->store().PromoteDue(kT0 + 5s, 10)).moved.empty());
}

TYPED_TEST(StoreContractTest, PromoteDueRespectsTheLimitAcrossStates) {
  RowId l1 = this->InsertOne(Item("t", 0, kT0, "p", 3s));  // lease ends kT0+3s
  RowId l2 = this->InsertOne(Item("t", 0, kT0, "p", 8s));  // lease ends kT0+8s
  RowId d1 = this->InsertOne(Item("t", 0, kT0 + 1s));
  RowId d2 = this->InsertOne(Item("t", 0, kT0 + 5s));
  this->Claim({l1, l2}, 1);
  Promotion first = Must(this->store().PromoteDue(kT0 + 20s, 2));
  ASSERT_EQ(first.moved.size(), 2u);
  EXPECT_EQ(first.moved[0].row, d1);
  EXPECT_EQ(first.moved[1].row, l1);
  EXPECT_EQ(first.moved[1].from, ItemState::kLeased);
  ASSERT_TRUE(first.next_due.has_value());
  EXPECT_LE(*first.next_due, kT0 + 20s);  // more are due now
  Promotion rest = Must(this->store().PromoteDue(kT0 + 20s, 2));
  ASSERT_EQ(rest.moved.size(), 2u);
  EXPECT_EQ(rest.moved[0].row, d2);
  EXPECT_EQ(rest.moved[1].row, l2);
  EXPECT_EQ(rest.next_due, std::nullopt);
  EXPECT_TRUE(Must(this->store().PromoteDue(kT0 + 20s, 0)).moved.empty());
}

TYPED_TEST(StoreContractTest, PromoteDueSaysWhenItNextHasWork) {
  RowId l1 = this->InsertOne(Item("t", 0, kT0, "p", 3s));  // lease ends kT0+3s
  RowId l2 = this->InsertOne(Item("t", 0, kT0, "p", 4s));  // lease ends kT0+4s
  RowId l3 = this->InsertOne(Item("t", 0, kT0, "p", 9s));  // lease ends kT0+9s
  this->InsertOne(Item("t", 0, kT0 + 1s));
  this->InsertOne(Item("t", 0, kT0 + 2s));
  this->InsertOne(Item("t", 0, kT0 + 7s));
  this->Claim({l1, l2, l3}, 1);
  // Nothing due: the earliest deadline of either state, as NextDue says.
  Promotion none = Must(this->store().PromoteDue(kT0, 10));
  EXPECT_TRUE(none.moved.empty());
  EXPECT_EQ(none.next_due, kT0 + 1s);
  EXPECT_EQ(Must(this->store().PromoteDue(kT0, 0)).next_due, kT0 + 1s);
  // Two due in each state, three moved: one is still due.
  Promotion cut = Must(this->store().PromoteDue(kT0 + 5s, 3));
  EXPECT_EQ(cut.moved.size(), 3u);
  ASSERT_TRUE(cut.next_due.has_value());
  EXPECT_LE(*cut.next_due, kT0 + 5s);
  // The last due one; then the delayed item at 7 s comes before the lease ending at 9 s.
  Promotion last = Must(this->store().PromoteDue(kT0 + 5s, 3));
  EXPECT_EQ(last.moved.size(), 1u);
  EXPECT_EQ(last.next_due, kT0 + 7s);
  EXPECT_EQ(Must(this->store().NextDue()), kT0 + 7s);
  Promotion delayed = Must(this->store().PromoteDue(kT0 + 7s, 3));
  EXPECT_EQ(delayed.moved.size(), 1u);
  EXPECT_EQ(delayed.next_due, kT0 + 9s);
}

TYPED_TEST(StoreContractTest, PromoteDueReadsTheLookaheadWindowAndChangesNothingThere) {
  RowId leased = this->InsertOne(Item("t", 0, kT0, "p", 5s));  // lease ends kT0+5s
  this->ClaimOne(leased, 1);
  RowId d1 = this->InsertOne(Item("u", 7, kT0 + 1s));
  RowId d2 = this->InsertOne(Item("t", 0, kT0 + 2s));
  RowId d3 = this->InsertOne(Item("t", 0, kT0 + 3s));
  this->InsertOne(Item("t", 0, kT0 + 10s));
  Promotion p = Must(this->store().PromoteDue(
      kT0, 10, {}, {.after = kT0, .until = kT0 + 3s, .limit = 10}));
  EXPECT_TRUE(p.moved.empty());
  EXPECT_EQ(p.next_due, kT0 + 1s);
  EXPECT_EQ(p.next_expiry, kT0 + 5s);
  ASSERT_EQ(p.upcoming.size(), 3u);
  EXPECT_EQ(p.upcoming[0].row, d1);
  EXPECT_EQ(p.upcoming[0].topic, "u");
  EXPECT_EQ(p.upcoming[0].priority, 7);
  EXPECT_EQ(p.upcoming[0].from, ItemState::kDelayed);
  EXPECT_EQ(p.upcoming[0].to, ItemState::kDelayed);
  EXPECT_EQ(p.upcoming[0].deliver_after, kT0 + 1s);
  EXPECT_EQ(p.upcoming[1].row, d2);
  EXPECT_EQ(p.upcoming[2].row, d3);
  EXPECT_EQ(this->Counts("t").delayed, 3u);
  EXPECT_EQ(this->Counts("u").delayed, 1u);
  // The window starts after `after`, and holds at most `limit`.
  std::vector<ItemTransition> later =
      Must(this->store().PromoteDue(kT0, 10, {},
                                    {.after = kT0 + 1s, .until = kT0 + 3s, .limit = 1}))
          .upcoming;
  ASSERT_EQ(later.size(), 1u);
  EXPECT_EQ(later[0].row, d2);
  // Without a window, nothing; and a due item is moved, not reported as upcoming.
  EXPECT_TRUE(Must(this->store().PromoteDue(kT0, 10)).upcoming.empty());
  Promotion at1 = Must(this->store().PromoteDue(
      kT0 + 1s, 10, {}, {.after = kT0, .until = kT0 + 2s, .limit = 10}));
  ASSERT_EQ(at1.moved.size(), 1u);
  EXPECT_EQ(at1.moved[0].row, d1);
  ASSERT_EQ(at1.upcoming.size(), 1u);
  EXPECT_EQ(at1.upcoming[0].row, d2);
}

TYPED_TEST(StoreContractTest, PromoteDueLeavesDelayedItemsDueAfterTheCutoff) {
  RowId l = this->InsertOne(Item("t", 0, kT0, "p", 2s));  // lease ends kT0+2s
  this->ClaimOne(l, 1);
  RowId d1 = this->InsertOne(Item("t", 0, kT0 + 1s));
  this->InsertOne(Item("t", 0, kT0 + 3s));  // due, but after the cutoff
  Promotion p =
      Must(this->store().PromoteDue(kT0 + 4s, 10, {}, {.delayed_due_by = kT0 + 2500ms}));
  ASSERT_EQ(p.moved.size(), 2u);  // the expired lease is not held back
  EXPECT_EQ(p.moved[0].row, d1);
  EXPECT_EQ(p.moved[1].row, l);
  EXPECT_EQ(p.next_due, std::nullopt);  // the one left is not the next call's work
  EXPECT_EQ(this->Counts("t").delayed, 1u);
  EXPECT_EQ(Must(this->store().PromoteDue(kT0 + 4s, 10)).moved.size(), 1u);
}

TYPED_TEST(StoreContractTest, ClaimLeasesADelayedItemOnceItIsDue) {
  RowId id = this->InsertOne(Item("t", 3, kT0 + 1s, "p", 30s));
  RowId expired = this->InsertOne(Item("t", 3, kT0 + 1s, "p", 30s, kT0 + 1s));
  EXPECT_TRUE(this->Claim({id}, 1, kT0 + 1s - 1ms).empty());  // not yet due
  std::vector<LeasedItem> got = this->Claim({id, expired}, 1, kT0 + 1s);
  ASSERT_EQ(got.size(), 1u);  // not the one past its TTL
  EXPECT_EQ(got[0].row, id);
  EXPECT_EQ(got[0].deliver_after, kT0 + 1s);
  EXPECT_EQ(got[0].lease_deadline, kT0 + 31s);
  EXPECT_EQ(got[0].attempts, 1u);
  TopicCounts c = this->Counts("t");
  EXPECT_EQ(c.delayed, 1u);  // `expired`, left for the purge
  EXPECT_EQ(c.leased, 1u);
  // Its promotion has nothing left to move; the lease acks as any other.
  Promotion p = Must(this->store().PromoteDue(kT0 + 1s, 10));
  ASSERT_EQ(p.moved.size(), 1u);
  EXPECT_EQ(p.moved[0].row, expired);
  EXPECT_TRUE(this->AckOne(id, 1, kT0 + 2s).status.ok());
}

// The release lead (shard_worker/release_schedule.h): a claim may lease a DELAYED row
// before its due time if the row is due by its request's due_by, and the lease then
// starts at the due time. Each row is held to its own due_by.
TYPED_TEST(StoreContractTest, ClaimAheadOfTheDueTimeLeasesFromTheDueTime) {
  RowId early = this->InsertOne(Item("t", 3, kT0 + 1s, "p", 30s));
  RowId later = this->InsertOne(Item("t", 3, kT0 + 2s, "p", 30s));
  RowId ready = this->InsertOne(Item("t", 3, kT0, "p", 30s));
  // Its TTL ends before its lease would start.
  RowId short_ttl = this->InsertOne(Item("t", 3, kT0 + 1s, "p", 30s, kT0 + 1s - 5ms));
  const Time now = kT0 + 1s - 10ms;
  std::vector<ClaimRequest> reqs{{early, "w1", LeaseToken(1), kT0 + 1s},
                                 {later, "w1", LeaseToken(2), kT0 + 1s},
                                 {ready, "w1", LeaseToken(3), kT0 + 3s},
                                 {short_ttl, "w1", LeaseToken(4), kT0 + 1s}};
  std::vector<LeasedItem> got = Must(this->store().Claim(reqs, LeaseToken(9), now));
  // Not `later`: due after its own due_by (though before another row's).
  ASSERT_EQ(got.size(), 2u);
  std::sort(got.begin(), got.end(),
            [](const LeasedItem& a, const LeasedItem& b) { return a.row < b.row; });
  EXPECT_EQ(got[0].row, early);
  EXPECT_EQ(got[0].deliver_after, kT0 + 1s);
  EXPECT_EQ(got[0].lease_deadline, kT0 + 31s);  // from the due time, not from `now`
  EXPECT_EQ(got[1].row, ready);
  EXPECT_EQ(got[1].lease_deadline, now + 30s);
  TaskRecord t = this->Task(early);
  EXPECT_EQ(t.state, ItemState::kLeased);
  EXPECT_EQ(t.first_delivered_at, kT0 + 1s);
  EXPECT_EQ(t.last_delivered_at, kT0 + 1s);
  ASSERT_EQ(t.history.size(), 1u);
  EXPECT_EQ(t.history[0].at, kT0 + 1s);
  EXPECT_EQ(this->Task(ready).first_delivered_at, now);
  EXPECT_EQ(this->Task(later).state, ItemState::kDelayed);
  EXPECT_EQ(this->Task(short_ttl).state, ItemState::kDelayed);
  // Without a due_by, the claim's `now` is the limit, as before.
  EXPECT_TRUE(this->Claim({later}, 4, kT0 + 2s - 1ms).empty());
  // Its lease ends a lease after the due time: `later` and `ready`'s lease move first.
  std::vector<RowId> moved;
  for (const ItemTransition& m :
       Must(this->store().PromoteDue(kT0 + 31s - 1ms, 10)).moved)
    moved.push_back(m.row);
  EXPECT_EQ(moved, (std::vector<RowId>{short_ttl, later, ready}));
  moved.clear();
  for (const ItemTransition& m : Must(this->store().PromoteDue(kT0 + 31s, 10)).moved)
    moved.push_back(m.row);
  EXPECT_EQ(moved, std::vector<RowId>{early});
}

// The LEASED rows of given lease tokens: how the shard worker finds the rows of the
// handoff leases of an insert whose answer was lost. Tokens of finished or unknown
// leases find nothing.
TYPED_TEST(StoreContractTest, LeasedRowsOfFindsTheRowsOfCurrentLeasesOnly) {
  RowId a = this->InsertOne(Item("t", 0, kT0));
  RowId b = this->InsertOne(Item("t", 1, kT0));
  this->InsertOne(Item("t", 2, kT0));
  this->ClaimOne(a, 11);
  this->ClaimOne(b, 12);
  std::vector<LeaseToken> tokens{LeaseToken(11), LeaseToken(12), LeaseToken(99)};
  auto found = Must(this->store().LeasedRowsOf(tokens));
  std::sort(found.begin(), found.end(), [](const auto& x, const auto& y) {
    return x.first.value() < y.first.value();
  });
  ASSERT_EQ(found.size(), 2u);
  EXPECT_EQ(found[0], std::make_pair(LeaseToken(11), a));
  EXPECT_EQ(found[1], std::make_pair(LeaseToken(12), b));
  ASSERT_TRUE(this->AckOne(b, 12).status.ok());
  std::vector<LeaseToken> acked{LeaseToken(12)};
  EXPECT_TRUE(Must(this->store().LeasedRowsOf(acked)).empty());
  EXPECT_TRUE(Must(this->store().LeasedRowsOf({})).empty());
}

// The server gives back a lease taken ahead of the due time whose answer it never
// sent: the attempt does not count (so even an item of one attempt is not
// dead-lettered), and the item is due again at the given time.
TYPED_TEST(StoreContractTest, ANackOfALeaseThatNeverStartedTakesItsAttemptBack) {
  RowId id = this->InsertOne(Item("t", 0, kT0 + 1s, "p", 30s, std::nullopt, "ns", 1));
  std::vector<ClaimRequest> req{{id, "w1", LeaseToken(1), kT0 + 1s}};
  ASSERT_EQ(Must(this->store().Claim(req, LeaseToken(1), kT0 + 1s - 10ms)).size(), 1u);
  NackRequest give_back{id, LeaseToken(1)};
  give_back.undelivered = true;
  give_back.unstarted_until = kT0 + 1s;
  give_back.error = "the call ended";
  std::vector<NackRequest> nacks{give_back};
  ItemOutcome out = Must(this->store().Nack(nacks, kT0 + 1s - 5ms)).at(0);
  ASSERT_TRUE(out.status.ok()) << out.status.ToString();
  ASSERT_TRUE(out.transition.has_value());
  EXPECT_EQ(out.transition->to, ItemState::kDelayed);
  EXPECT_EQ(out.transition->deliver_after, kT0 + 1s);
  TaskRecord t = this->Task(id);
  EXPECT_EQ(t.state, ItemState::kDelayed);
  EXPECT_EQ(t.attempts, 0u);
  EXPECT_EQ(t.deliver_after, kT0 + 1s);
  EXPECT_EQ(Kinds(t.history), (std::vector<std::string>{"leased", "undelivered"}));
  // Nobody had that lease: its reason is in the event, not the task's last error.
  EXPECT_EQ(t.history.back().detail, "the call ended");
  EXPECT_EQ(t.last_error, "");
  // Delivered later, it is the first attempt; a plain undelivered nack of it, which
  // counts, then dead-letters it.
  LeasedItem again = this->ClaimOne(id, 2, kT0 + 1s);
  EXPECT_EQ(again.attempts, 1u);
  // Its history tells the two leases of attempt 1 apart.
  EXPECT_EQ(Kinds(this->Task(id).history),
            (std::vector<std::string>{"leased", "undelivered", "leased"}));
  NackRequest plain{id, LeaseToken(2)};
  plain.undelivered = true;
  nacks = {plain};
  ASSERT_TRUE(Must(this->store().Nack(nacks, kT0 + 2s)).at(0).status.ok());
  t = this->Task(id);
  EXPECT_EQ(t.state, ItemState::kDead);
  EXPECT_EQ(Kinds(t.history), (std::vector<std::string>{"leased", "undelivered", "leased",
                                                        "dead_lettered"}));
}

// A due item whose answer went out without it (a held answer's re-ranking gave it
// back for a better one) is given back with its own, past, due time: READY at once,
// in its old place in the order, its attempt not counted (one attempt in all here).
TYPED_TEST(StoreContractTest,
           ANackOfALeaseThatNeverStartedWithAPastDueTimeKeepsItsPlace) {
  RowId later = this->InsertOne(Item("t", 0, kT0 + 5ms), kT0 + 5ms);
  RowId id = this->InsertOne(Item("t", 0, kT0, "p", 30s, std::nullopt, "ns", 1));
  this->ClaimOne(id, 1, kT0 + 10ms);
  NackRequest give_back{id, LeaseToken(1)};
  give_back.undelivered = true;
  give_back.unstarted_until = kT0;
  std::vector<NackRequest> nacks{give_back};
  ItemOutcome out = Must(this->store().Nack(nacks, kT0 + 20ms)).at(0);
  ASSERT_TRUE(out.status.ok()) << out.status.ToString();
  ASSERT_TRUE(out.transition.has_value());
  EXPECT_EQ(out.transition->to, ItemState::kReady);
  EXPECT_EQ(out.transition->deliver_after, kT0);
  TaskRecord t = this->Task(id);
  EXPECT_EQ(t.attempts, 0u);
  EXPECT_EQ(Kinds(t.history), (std::vector<std::string>{"leased", "undelivered"}));
  EXPECT_EQ(this->ReadyRows("t"), (std::vector<RowId>{id, later}));
}

TYPED_TEST(StoreContractTest, ExpiredLeaseBecomesReadyAndKeepsItsTokenForALateAck) {
  RowId id = this->InsertOne(Item("t", 2, kT0, "p", 30s));
  this->ClaimOne(id, 41);
  EXPECT_TRUE(Must(this->store().PromoteDue(kT0 + 30s - 1ms, 10)).moved.empty());
  std::vector<ItemTransition> moved = Must(this->store().PromoteDue(kT0 + 30s, 10)).moved;
  ASSERT_EQ(moved.size(), 1u);
  EXPECT_EQ(moved[0].from, ItemState::kLeased);
  EXPECT_EQ(moved[0].to, ItemState::kReady);
  EXPECT_EQ(moved[0].deliver_after, kT0 + 30s);
  EXPECT_EQ(this->ReadyRows("t"), std::vector<RowId>{id});
  // The consumer did finish the work: its late ack still counts.
  ItemOutcome ack = this->AckOne(id, 41);
  EXPECT_TRUE(ack.status.ok());
  ASSERT_TRUE(ack.transition.has_value());
  EXPECT_EQ(ack.transition->from, ItemState::kReady);
  EXPECT_EQ(ack.transition->to, ItemState::kSucceeded);
  EXPECT_TRUE(this->ReadyRows("t").empty());
}

TYPED_TEST(StoreContractTest, ANewClaimRetiresTheOldToken) {
  RowId id = this->InsertOne(Item("t", 0, kT0, "p", 30s));
  this->ClaimOne(id, 41);
  Must(this->store().PromoteDue(kT0 + 30s, 10));
  this->ClaimOne(id, 42, kT0 + 31s);
  EXPECT_EQ(this->AckOne(id, 41).status.code(), Code::kFailedPrecondition);
  EXPECT_TRUE(this->AckOne(id, 42).status.ok());
}

// --- PurgeExpired -------------------------------------------------------------------

TYPED_TEST(StoreContractTest, PurgeExpiredDeletesExpiredItemsInAnyLiveState) {
  RowId ready = this->InsertOne(Item("t", 0, kT0, "p", 30s, kT0 + 3s));
  RowId leased = this->InsertOne(Item("t", 1, kT0, "p", 30s, kT0 + 1s));
  RowId delayed = this->InsertOne(Item("t", 2, kT0 + 1h, "p", 30s, kT0 + 2s));
  RowId later = this->InsertOne(Item("t", 0, kT0, "p", 30s, kT0 + 1h));
  RowId never = this->InsertOne(Item("t", 0, kT0));
  this->ClaimOne(leased, 5);

  std::vector<ItemTransition> first = Must(this->store().PurgeExpired(kT0 + 10s, 2));
  ASSERT_EQ(first.size(), 2u);
  std::sort(
      first.begin(), first.end(),
      [](const ItemTransition& a, const ItemTransition& b) { return a.row < b.row; });
  EXPECT_EQ(first[0].row, leased);
  EXPECT_EQ(first[0].from, ItemState::kLeased);
  EXPECT_EQ(first[0].to, ItemState::kGone);
  EXPECT_EQ(first[0].priority, 1);
  EXPECT_EQ(first[1].row, delayed);
  EXPECT_EQ(first[1].from, ItemState::kDelayed);

  std::vector<ItemTransition> rest = Must(this->store().PurgeExpired(kT0 + 10s, 10));
  ASSERT_EQ(rest.size(), 1u);
  EXPECT_EQ(rest[0].row, ready);
  EXPECT_EQ(rest[0].from, ItemState::kReady);
  EXPECT_TRUE(Must(this->store().PurgeExpired(kT0 + 10s, 10)).empty());
  std::vector<RowId> left = this->ReadyRows("t");
  std::sort(left.begin(), left.end());
  EXPECT_EQ(left, (std::vector<RowId>{later, never}));
  // A purged lease cannot be acked: it is gone.
  EXPECT_EQ(this->AckOne(leased, 5).status.code(), Code::kNotFound);
  EXPECT_EQ(this->store().GetTask(leased, false).status().code(), Code::kNotFound);
}

// --- NextDue and CountByTopic -------------------------------------------------------

TYPED_TEST(StoreContractTest, NextDueIsTheEarliestDelayedOrLeasedTime) {
  EXPECT_EQ(Must(this->store().NextDue()), std::nullopt);
  this->InsertOne(Item("t", 0, kT0));  // ready: not "due" work
  EXPECT_EQ(Must(this->store().NextDue()), std::nullopt);
  this->InsertOne(Item("t", 0, kT0 + 50s));
  EXPECT_EQ(Must(this->store().NextDue()), kT0 + 50s);
  RowId leased = this->InsertOne(Item("t", 0, kT0, "p", 20s));
  this->ClaimOne(leased, 1);
  EXPECT_EQ(Must(this->store().NextDue()), kT0 + 20s);
  this->InsertOne(Item("u", 0, kT0 + 7s));
  EXPECT_EQ(Must(this->store().NextDue()), kT0 + 7s);
}

TYPED_TEST(StoreContractTest, CountByTopicCountsEachState) {
  this->Insert({Item("a", 0, kT0), Item("a", 0, kT0), Item("a", 0, kT0 + 1s),
                Item("b", 0, kT0 + 1s),
                Item("a", 0, kT0, "p", 30s, std::nullopt, "ns2")});
  std::vector<RowId> ready = this->ReadyRows("a");
  this->ClaimOne(ready[0], 1);
  std::vector<TopicCounts> counts = Must(this->store().CountByTopic());
  std::sort(counts.begin(), counts.end(), [](const TopicCounts& x, const TopicCounts& y) {
    return std::tie(x.ns, x.topic) < std::tie(y.ns, y.topic);
  });
  ASSERT_EQ(counts.size(), 3u);
  auto as_tuple = [](const TopicCounts& c) {
    return std::make_tuple(c.ns, c.topic, c.delayed, c.ready, c.leased);
  };
  EXPECT_EQ(as_tuple(counts[0]), std::make_tuple("ns", "a", 1u, 1u, 1u));
  EXPECT_EQ(as_tuple(counts[1]), std::make_tuple("ns", "b", 1u, 0u, 0u));
  EXPECT_EQ(as_tuple(counts[2]), std::make_tuple("ns2", "a", 0u, 1u, 0u));
}

// --- Insert: dedup keys -------------------------------------------------------------

TYPED_TEST(StoreContractTest, DedupKeyMatchesAnEarlierCallAndChangesNothing) {
  std::vector<Inserted> first = this->InsertFull({Keyed("k1", "first")});
  ASSERT_EQ(first.size(), 1u);
  EXPECT_FALSE(first[0].deduplicated);
  NewItem again = Keyed("k1", "second");
  again.priority = -5;
  again.topic = "other";
  std::vector<Inserted> second = this->InsertFull({again, Keyed("k2")}, kT0 + 1s);
  ASSERT_EQ(second.size(), 2u);
  EXPECT_TRUE(second[0].deduplicated);
  EXPECT_EQ(second[0].row, first[0].row);
  EXPECT_FALSE(second[1].deduplicated);
  EXPECT_NE(second[1].row, first[0].row);
  // The repeat changed nothing: one row per key, the first one's content.
  EXPECT_EQ(this->Counts("t").ready, 2u);
  EXPECT_EQ(this->Counts("other").ready, 0u);
  TaskRecord t = this->Task(first[0].row, true);
  EXPECT_EQ(t.payload, "first");
  EXPECT_EQ(t.enqueued_at, kT0);
  // The key stays taken while the row lives, whatever its state.
  this->ClaimOne(first[0].row, 1);
  ASSERT_TRUE(this->AckOne(first[0].row, 1).status.ok());
  std::vector<Inserted> third = this->InsertFull({Keyed("k1")});
  EXPECT_TRUE(third[0].deduplicated);
  EXPECT_EQ(third[0].row, first[0].row);
}

TYPED_TEST(StoreContractTest, DedupKeyRepeatedWithinOneCallMapsToTheFirstItem) {
  std::vector<Inserted> got =
      this->InsertFull({Keyed("a", "a1"), Item("t", 0, kT0), Keyed("a", "a2"), Keyed("b"),
                        Keyed("b"), Item("t", 0, kT0), Keyed("a", "a3")});
  ASSERT_EQ(got.size(), 7u);
  EXPECT_FALSE(got[0].deduplicated);
  EXPECT_FALSE(got[1].deduplicated);
  EXPECT_TRUE(got[2].deduplicated);
  EXPECT_EQ(got[2].row, got[0].row);
  EXPECT_FALSE(got[3].deduplicated);
  EXPECT_TRUE(got[4].deduplicated);
  EXPECT_EQ(got[4].row, got[3].row);
  EXPECT_FALSE(got[5].deduplicated);
  EXPECT_TRUE(got[6].deduplicated);
  EXPECT_EQ(got[6].row, got[0].row);
  EXPECT_LT(got[0].row, got[1].row);
  EXPECT_LT(got[3].row, got[5].row);
  EXPECT_EQ(this->Counts("t").ready, 4u);
  EXPECT_EQ(this->Task(got[0].row, true).payload, "a1");
  // Items without a key never collide.
  std::vector<Inserted> plain = this->InsertFull({Item("t", 0, kT0), Item("t", 0, kT0)});
  EXPECT_FALSE(plain[0].deduplicated);
  EXPECT_FALSE(plain[1].deduplicated);
  EXPECT_NE(plain[0].row, plain[1].row);
}

TYPED_TEST(StoreContractTest, DedupKeysOfDifferentNamespacesDoNotCollide) {
  std::vector<Inserted> got =
      this->InsertFull({Keyed("k", "p", "ns"), Keyed("k", "p", "other_ns")});
  EXPECT_FALSE(got[0].deduplicated);
  EXPECT_FALSE(got[1].deduplicated);
  EXPECT_NE(got[0].row, got[1].row);
  std::vector<Inserted> again = this->InsertFull({Keyed("k", "p", "other_ns")});
  EXPECT_TRUE(again[0].deduplicated);
  EXPECT_EQ(again[0].row, got[1].row);
}

TYPED_TEST(StoreContractTest, DedupKeyIsFreeAgainOnceTheRowIsPurged) {
  NewItem ttl = Keyed("k");
  ttl.expires_at = kT0 + 5s;
  RowId first = this->InsertOne(ttl);
  ASSERT_EQ(Must(this->store().PurgeExpired(kT0 + 5s, 10)).size(), 1u);
  std::vector<Inserted> second = this->InsertFull({Keyed("k")}, kT0 + 6s);
  EXPECT_FALSE(second[0].deduplicated);
  EXPECT_NE(second[0].row, first);
  // After a finished row's retention too.
  this->ClaimOne(second[0].row, 1, kT0 + 6s);
  ASSERT_TRUE(this->AckOne(second[0].row, 1, kT0 + 6s).status.ok());
  EXPECT_TRUE(this->InsertFull({Keyed("k")}, kT0 + 7s)[0].deduplicated);
  ASSERT_EQ(Must(this->store().PurgeExpired(kT0 + 6s + kRetention, 10)).size(), 1u);
  std::vector<Inserted> third = this->InsertFull({Keyed("k")}, kT0 + 8s + kRetention);
  EXPECT_FALSE(third[0].deduplicated);
}

// --- Insert: leased at once (the shard worker's direct handoff) ---------------------

TYPED_TEST(StoreContractTest, InsertLeasesTheItemsItIsAskedToAsAClaimWould) {
  this->InsertFull({Keyed("k")});
  std::vector<NewItem> items{Item("t", 3, kT0, "a", 20s), Item("t", 1, kT0),
                             Item("t", 0, kT0 + 1s), Keyed("k"),
                             Item("t", 0, kT0 - 1s, "p", 30s, kT0)};
  std::vector<InsertLease> leases{{0, "w1", LeaseToken(7)},
                                  {2, "w2", LeaseToken(8)},   // not due: stays DELAYED
                                  {3, "w3", LeaseToken(9)},   // deduplicated
                                  {4, "w4", LeaseToken(11)},  // expired by its TTL
                                  {0, "other", LeaseToken(10)}};  // the first one counts
  std::vector<Inserted> got = Must(this->store().Insert(items, kT0, leases));
  ASSERT_EQ(got.size(), 5u);
  EXPECT_TRUE(got[0].leased);
  EXPECT_FALSE(got[1].leased);
  EXPECT_FALSE(got[2].leased);
  EXPECT_TRUE(got[3].deduplicated);
  EXPECT_FALSE(got[3].leased);
  EXPECT_FALSE(got[4].leased);

  TaskRecord t = this->Task(got[0].row, true);
  EXPECT_EQ(t.state, ItemState::kLeased);
  EXPECT_EQ(t.token, LeaseToken(7));
  EXPECT_EQ(t.worker_id, "w1");
  EXPECT_EQ(t.attempts, 1u);
  EXPECT_EQ(t.deliver_after, kT0 + 20s);
  EXPECT_EQ(t.first_delivered_at, kT0);
  EXPECT_EQ(t.payload, "a");
  EXPECT_EQ(Kinds(t.history), (std::vector<std::string>{"leased"}));
  TopicCounts c = this->Counts("t");
  EXPECT_EQ(std::make_tuple(c.delayed, c.ready, c.leased), std::make_tuple(1u, 3u, 1u));
  std::vector<RowId> ready = this->ReadyRows("t");
  EXPECT_EQ(std::count(ready.begin(), ready.end(), got[0].row), 0);

  // It lives on as any lease: a stale token is refused, it expires on time, and the
  // right token acks it.
  EXPECT_EQ(this->AckOne(got[0].row, 10).status.code(), Code::kFailedPrecondition);
  EXPECT_EQ(Must(this->store().NextDue()), kT0 + 1s);
  Promotion p = Must(this->store().PromoteDue(kT0 + 19s, 10));
  ASSERT_EQ(p.moved.size(), 1u);  // the delayed one
  EXPECT_EQ(p.next_due, kT0 + 20s);
  EXPECT_TRUE(this->AckOne(got[0].row, 7, kT0 + 19s).status.ok());
  EXPECT_EQ(this->Task(got[0].row).state, ItemState::kSucceeded);
}

// The leases a promotion's handoff grants are LEASED rows left: they count in when the
// next call has work and when the next lease ends.
TYPED_TEST(StoreContractTest, PromoteDueCountsItsHandoffsLeasesInItsNextTimes) {
  this->InsertOne(Item("t", 0, kT0 + 10s, "p", 2s));  // a 2 s lease once leased
  this->InsertOne(Item("t", 0, kT0 + 60s));           // not due
  PromoteHandoff handoff = [](std::span<const ItemTransition>) {
    return std::vector<InsertLease>{{0, "w", LeaseToken(5)}};
  };
  Promotion p = Must(this->store().PromoteDue(kT0 + 10s, 10, handoff));
  ASSERT_EQ(p.leased.size(), 1u);
  EXPECT_EQ(p.next_due, kT0 + 12s);
  EXPECT_EQ(p.next_expiry, kT0 + 12s);
}

// A lease that expires in the same promotion becomes READY in the ready index, not
// through the handoff; a DELAYED item ranking after it is not offered either, or a
// parked dequeue would get that one while a better item is ready.
TYPED_TEST(StoreContractTest, PromoteDueOffersNoDelayedItemRankingAfterAnExpiredLease) {
  RowId lease = this->InsertOne(Item("t", 3, kT0));
  ASSERT_EQ(this->Claim({lease}, 3, kT0, "w0").size(), 1u);  // 30 s lease
  std::vector<RowId> ids = this->Insert({
      Item("t", 5, kT0 + 10s),  // ranks after the expired lease: not offered
      Item("t", 1, kT0 + 10s),  // ranks before it
      Item("u", 9, kT0 + 10s),  // another topic
  });
  std::vector<RowId> offered;
  PromoteHandoff handoff = [&](std::span<const ItemTransition> due) {
    for (const ItemTransition& t : due) offered.push_back(t.row);
    return std::vector<InsertLease>{};
  };
  Promotion p = Must(this->store().PromoteDue(kT0 + 35s, 10, handoff));
  EXPECT_EQ(p.moved.size(), 4u) << "all three due, and the expired lease";
  std::sort(offered.begin(), offered.end());
  EXPECT_EQ(offered, (std::vector<RowId>{ids[1], ids[2]}));
}

TYPED_TEST(StoreContractTest, PromoteDueLeasesWhatItsHandoffPicksAsAClaimWould) {
  std::vector<RowId> ids = this->Insert({
      Item("t", 5, kT0 + 10s, "five"), Item("t", 1, kT0 + 11s, "one", 20s),
      Item("u", 0, kT0 + 12s),
      Item("t", 0, kT0 + 10s, "ttl", 30s, kT0 + 15s),  // its TTL passes before now
      Item("t", 0, kT0 + 40s),                         // not due
  });
  // A lease that falls due too: it is promoted, but never offered to the handoff.
  RowId lease = this->InsertOne(Item("t", 9, kT0));
  ASSERT_EQ(this->Claim({lease}, 3, kT0, "w0").size(), 1u);

  std::vector<ItemTransition> offered;
  PromoteHandoff handoff = [&](std::span<const ItemTransition> due) {
    offered.assign(due.begin(), due.end());
    auto at = [&](RowId row) {
      return static_cast<size_t>(
          std::find_if(due.begin(), due.end(),
                       [&](const ItemTransition& t) { return t.row == row; }) -
          due.begin());
    };
    return std::vector<InsertLease>{{at(ids[1]), "w1", LeaseToken(7)},
                                    {at(ids[1]), "w2", LeaseToken(8)},  // first counts
                                    {at(ids[3]), "w3", LeaseToken(9)},  // TTL passed
                                    {99, "w4", LeaseToken(10)}};        // no such item
  };
  const Time now = kT0 + 35s;
  Promotion p = Must(this->store().PromoteDue(now, 10, handoff));

  // Offered: the four DELAYED items that fell due, as moves to READY, earliest first.
  ASSERT_EQ(offered.size(), 4u);
  for (const ItemTransition& t : offered) {
    EXPECT_EQ(t.from, ItemState::kDelayed);
    EXPECT_EQ(t.to, ItemState::kReady);
  }
  EXPECT_LE(offered[0].deliver_after, offered[3].deliver_after);
  EXPECT_EQ(p.moved.size(), 5u);  // and the expired lease
  EXPECT_EQ(p.next_due, kT0 + 40s);

  ASSERT_EQ(p.leased.size(), 1u);
  const LeasedItem& got = p.leased[0];
  EXPECT_EQ(got.row, ids[1]);
  EXPECT_EQ(got.token, LeaseToken(7));
  EXPECT_EQ(got.payload, "one");
  EXPECT_EQ(got.attempts, 1u);
  EXPECT_EQ(got.deliver_after, kT0 + 11s);  // when it fell due
  EXPECT_EQ(got.lease_deadline, now + 20s);
  for (const ItemTransition& t : p.moved) {
    if (t.row == ids[1]) {
      EXPECT_EQ(t.to, ItemState::kLeased);
      EXPECT_EQ(t.deliver_after, now + 20s);
    } else {
      EXPECT_EQ(t.to, ItemState::kReady) << t.row.value();
    }
  }
  TaskRecord t = this->Task(ids[1]);
  EXPECT_EQ(t.state, ItemState::kLeased);
  EXPECT_EQ(t.worker_id, "w1");
  EXPECT_EQ(t.first_delivered_at, now);
  EXPECT_EQ(this->Task(ids[3]).state, ItemState::kReady);  // not leased past its TTL
  TopicCounts c = this->Counts("t");
  EXPECT_EQ(std::make_tuple(c.delayed, c.ready, c.leased), std::make_tuple(1u, 3u, 1u));

  // It lives on as any lease: not claimable, a stale token is refused, the right
  // token acks it.
  EXPECT_TRUE(this->Claim({ids[1]}, 11, now, "w5").empty());
  EXPECT_EQ(this->AckOne(ids[1], 8, now).status.code(), Code::kFailedPrecondition);
  EXPECT_TRUE(this->AckOne(ids[1], 7, now).status.ok());
  EXPECT_EQ(this->Task(ids[1]).state, ItemState::kSucceeded);
}

TYPED_TEST(StoreContractTest, PromoteDueWithoutDueItemsDoesNotAskItsHandoff) {
  this->InsertOne(Item("t", 0, kT0 + 10s));
  bool asked = false;
  Promotion p = Must(this->store().PromoteDue(kT0, 10, [&](auto) {
    asked = true;
    return std::vector<InsertLease>{};
  }));
  EXPECT_TRUE(p.moved.empty());
  EXPECT_FALSE(asked);
}

TYPED_TEST(StoreContractTest, InsertRefusesBadLifecycleFields) {
  auto refused = [&](NewItem item) {
    return this->store().Insert(std::vector<NewItem>{item}, kT0).status().code() ==
           Code::kInvalidArgument;
  };
  NewItem item = Item("t", 0, kT0);
  item.task_type = std::string(kMaxTaskTypeLen + 1, 'x');
  EXPECT_TRUE(refused(item));
  item = Keyed(std::string(kMaxDedupKeyLen + 1, 'k'));
  EXPECT_TRUE(refused(item));
  item = Item("t", 0, kT0);
  item.max_attempts = 0;
  EXPECT_TRUE(refused(item));
  item.max_attempts = kMaxAttemptsLimit + 1;
  EXPECT_TRUE(refused(item));
  EXPECT_TRUE(Must(this->store().CountByTopic()).empty());
  // The limits themselves fit.
  item.max_attempts = kMaxAttemptsLimit;
  item.task_type = std::string(kMaxTaskTypeLen, 'x');
  item.dedup_key = std::string(kMaxDedupKeyLen, '\xff');
  RowId id = this->InsertOne(item);
  TaskRecord t = this->Task(id);
  EXPECT_EQ(t.max_attempts, kMaxAttemptsLimit);
  EXPECT_EQ(t.task_type, item.task_type);
}

// --- Claim: who and when ------------------------------------------------------------

TYPED_TEST(StoreContractTest, ClaimRecordsTheWorkerTheDeliveriesAndAnEvent) {
  NewItem item = Item("t", 0, kT0, "p", 30s, std::nullopt, "ns", 7);
  item.task_type = "resize";
  RowId id = this->InsertOne(item);
  TaskRecord before = this->Task(id);
  EXPECT_EQ(before.first_delivered_at, Time{});
  EXPECT_EQ(before.worker_id, "");
  EXPECT_TRUE(before.history.empty());  // Insert writes no event

  LeasedItem got = this->ClaimOne(id, 1, kT0 + 1s, "worker-a");
  EXPECT_EQ(got.task_type, "resize");
  EXPECT_EQ(got.max_attempts, 7u);
  TaskRecord t = this->Task(id);
  EXPECT_EQ(t.state, ItemState::kLeased);
  EXPECT_EQ(t.worker_id, "worker-a");
  EXPECT_EQ(t.first_delivered_at, kT0 + 1s);
  EXPECT_EQ(t.last_delivered_at, kT0 + 1s);
  EXPECT_EQ(t.token, LeaseToken(1));
  EXPECT_EQ(t.attempts, 1u);
  ASSERT_EQ(t.history.size(), 1u);
  EXPECT_EQ(t.history[0].kind, "leased");
  EXPECT_EQ(t.history[0].at, kT0 + 1s);
  EXPECT_EQ(t.history[0].attempt, 1u);
  EXPECT_EQ(t.history[0].worker_id, "worker-a");

  ASSERT_TRUE(this->NackOne(id, 1, 0ms, kT0 + 2s).status.ok());
  this->ClaimOne(id, 2, kT0 + 5s, "worker-b");
  t = this->Task(id);
  EXPECT_EQ(t.worker_id, "worker-b");
  EXPECT_EQ(t.first_delivered_at, kT0 + 1s);
  EXPECT_EQ(t.last_delivered_at, kT0 + 5s);
  EXPECT_EQ(Kinds(t.history), (std::vector<std::string>{"leased", "retry", "leased"}));
  EXPECT_EQ(t.history[2].attempt, 2u);
  EXPECT_EQ(t.history[2].worker_id, "worker-b");
}

TYPED_TEST(StoreContractTest, ClaimOfOneBatchForSeveralWorkers) {
  std::vector<RowId> ids =
      this->Insert({Item("t", 0, kT0), Item("t", 0, kT0), Item("t", 0, kT0)});
  std::vector<ClaimRequest> reqs = {
      {ids[0], "a"}, {ids[1], "b"}, {ids[0], "c"}, {ids[2], "a"}};
  std::vector<LeasedItem> got = Must(this->store().Claim(reqs, LeaseToken(9), kT0));
  EXPECT_EQ(got.size(), 3u);
  EXPECT_EQ(this->Task(ids[0]).worker_id, "a");  // the first request for a row wins
  EXPECT_EQ(this->Task(ids[1]).worker_id, "b");
  EXPECT_EQ(this->Task(ids[2]).worker_id, "a");
  EXPECT_EQ(this->Task(ids[1]).history.at(0).worker_id, "b");
  EXPECT_EQ(this->Task(ids[0]).history.size(), 1u);
}

TYPED_TEST(StoreContractTest, ClaimGivesEachRowItsOwnTokenWhenAsked) {
  std::vector<RowId> ids = this->Insert({Item("t", 0, kT0), Item("t", 0, kT0)});
  std::vector<ClaimRequest> reqs = {{ids[0], "a", LeaseToken(101)},
                                    {ids[1], "b", LeaseToken(202)}};
  std::vector<LeasedItem> got = Must(this->store().Claim(reqs, LeaseToken(9), kT0));
  ASSERT_EQ(got.size(), 2u);
  for (const LeasedItem& item : got) {
    EXPECT_EQ(item.token, item.row == ids[0] ? LeaseToken(101) : LeaseToken(202));
  }
  // One consumer's token does not fit the other consumer's item.
  EXPECT_EQ(this->AckOne(ids[1], 101).status.code(), Code::kFailedPrecondition);
  EXPECT_EQ(this->AckOne(ids[0], 9).status.code(), Code::kFailedPrecondition);
  EXPECT_TRUE(this->AckOne(ids[0], 101).status.ok());
  EXPECT_TRUE(this->AckOne(ids[1], 202).status.ok());
}

// --- Ack: results and final states --------------------------------------------------

TYPED_TEST(StoreContractTest, AckKeepsPerRowResultsAndPerNamespaceRetention) {
  std::vector<RowId> ids =
      this->Insert({Item("t", 0, kT0), Item("t", 0, kT0, "p", 30s, std::nullopt, "short"),
                    Item("t", 0, kT0)});
  this->Claim(ids, 3);
  std::vector<AckRequest> reqs = {{ids[0], LeaseToken(3), "r0"},
                                  {ids[1], LeaseToken(3), "r1"},
                                  {ids[2], LeaseToken(3), std::string(5000, 'x')}};
  std::vector<ItemOutcome> out = Must(this->store().Ack(reqs, kT0 + 1s));
  for (const ItemOutcome& o : out) EXPECT_TRUE(o.status.ok()) << o.status.ToString();
  EXPECT_EQ(out[0].transition->deliver_after, kT0 + 1s + kRetention);
  EXPECT_EQ(out[1].transition->deliver_after, kT0 + 1s + kShortRetention);
  EXPECT_EQ(this->Task(ids[0]).result, "r0");
  EXPECT_EQ(this->Task(ids[1]).result, "r1");
  EXPECT_EQ(this->Task(ids[1]).deliver_after, kT0 + 1s + kShortRetention);
  EXPECT_EQ(this->Task(ids[0]).deliver_after, kT0 + 1s + kRetention);
  // Too long a result is truncated, not refused (store/validation.h).
  EXPECT_EQ(this->Task(ids[2]).result, std::string(kMaxResultBytes, 'x'));
  // The same result and retention for all: the single-value form of the UPDATE.
  std::vector<RowId> more = this->Insert({Item("u", 0, kT0), Item("u", 0, kT0)});
  this->Claim(more, 4);
  std::vector<AckRequest> same = {{more[0], LeaseToken(4), "ok"},
                                  {more[1], LeaseToken(4), "ok"}};
  out = Must(this->store().Ack(same, kT0 + 2s));
  EXPECT_TRUE(out[0].status.ok() && out[1].status.ok());
  EXPECT_EQ(this->Task(more[1]).result, "ok");
  EXPECT_EQ(this->Counts("u").succeeded, 2u);
  // Empty and non-empty results in one call (MySQL leaves an empty one NULL).
  std::vector<RowId> mixed = this->Insert({Item("v", 0, kT0), Item("v", 0, kT0)});
  this->Claim(mixed, 5);
  std::vector<AckRequest> some = {{mixed[0], LeaseToken(5), ""},
                                  {mixed[1], LeaseToken(5), "kept"}};
  out = Must(this->store().Ack(some, kT0 + 3s));
  EXPECT_TRUE(out[0].status.ok() && out[1].status.ok());
  EXPECT_EQ(this->Task(mixed[0]).result, "");
  EXPECT_EQ(this->Task(mixed[1]).result, "kept");
}

TYPED_TEST(StoreContractTest, AckIsRefusedInOtherFinalStatesAndWhileDelayed) {
  RowId failed = this->InsertOne(Item("t", 0, kT0));
  this->ClaimOne(failed, 1);
  ASSERT_TRUE(this->NackOne(failed, 1, 0ms, kT0, std::nullopt, "bad", true).status.ok());
  EXPECT_EQ(this->AckOne(failed, 1).status.code(), Code::kFailedPrecondition);
  RowId dead = this->MakeDead();
  EXPECT_EQ(this->AckOne(dead, 1000 + dead.value()).status.code(),
            Code::kFailedPrecondition);
  RowId cancelled = this->InsertOne(Item("t", 0, kT0));
  ASSERT_TRUE(this->CancelOne(cancelled).status.ok());
  EXPECT_EQ(this->AckOne(cancelled, 0).status.code(), Code::kFailedPrecondition);
  // Nacked with a delay: the token matches but the item is waiting for its retry.
  RowId delayed = this->InsertOne(Item("t", 0, kT0));
  this->ClaimOne(delayed, 2);
  ASSERT_TRUE(this->NackOne(delayed, 2, 10s, kT0).status.ok());
  EXPECT_EQ(this->AckOne(delayed, 2).status.code(), Code::kFailedPrecondition);
  TopicCounts c = this->Counts("t");
  EXPECT_EQ(c.failed, 1u);
  EXPECT_EQ(c.dead, 1u);
  EXPECT_EQ(c.cancelled, 1u);
  EXPECT_EQ(c.delayed, 1u);
  EXPECT_EQ(c.succeeded, 0u);
}

// --- Nack: retry, fail, dead letter, cancel -----------------------------------------

TYPED_TEST(StoreContractTest, NackRetryRecordsTheErrorAndAnEvent) {
  RowId id = this->InsertOne(Item("t", 0, kT0));
  this->ClaimOne(id, 1, kT0, "w");
  ItemOutcome out = this->NackOne(id, 1, 3s, kT0 + 1s, std::nullopt, "timeout");
  ASSERT_TRUE(out.status.ok());
  EXPECT_EQ(out.transition->to, ItemState::kDelayed);
  TaskRecord t = this->Task(id);
  EXPECT_EQ(t.state, ItemState::kDelayed);
  EXPECT_EQ(t.last_error, "timeout");
  EXPECT_EQ(t.finished_at, Time{});
  ASSERT_EQ(t.history.size(), 2u);
  EXPECT_EQ(t.history[1].kind, "retry");
  EXPECT_EQ(t.history[1].detail, "timeout");
  EXPECT_EQ(t.history[1].attempt, 1u);
  EXPECT_EQ(t.history[1].worker_id, "w");
  EXPECT_EQ(t.history[1].at, kT0 + 1s);
  // Too long an error is truncated, not refused.
  Must(this->store().PromoteDue(kT0 + 4s, 10));
  this->ClaimOne(id, 2, kT0 + 4s);
  ASSERT_TRUE(this->NackOne(id, 2, 0ms, kT0 + 4s, std::nullopt, std::string(5000, 'e'))
                  .status.ok());
  EXPECT_EQ(this->Task(id).last_error, std::string(kMaxErrorBytes, 'e'));
}

TYPED_TEST(StoreContractTest, FatalNackFailsTheTask) {
  RowId id = this->InsertOne(Item("t", 4, kT0, "p", 30s, std::nullopt, "short"));
  this->ClaimOne(id, 1);
  ItemOutcome out = this->NackOne(id, 1, 5s, kT0 + 1s, std::nullopt, "bad input", true);
  ASSERT_TRUE(out.status.ok());
  ASSERT_TRUE(out.transition.has_value());
  EXPECT_EQ(out.transition->from, ItemState::kLeased);
  EXPECT_EQ(out.transition->to, ItemState::kFailed);
  EXPECT_EQ(out.transition->deliver_after, kT0 + 1s + kShortRetention);
  TaskRecord t = this->Task(id);
  EXPECT_EQ(t.state, ItemState::kFailed);
  EXPECT_EQ(t.finished_at, kT0 + 1s);
  EXPECT_EQ(t.last_error, "bad input");
  EXPECT_EQ(Kinds(t.history), (std::vector<std::string>{"leased", "failed"}));
  EXPECT_EQ(Must(this->store().NextDue()), std::nullopt);
  EXPECT_EQ(this->Counts("t", "short").failed, 1u);
  // Final: no more nacks.
  EXPECT_EQ(this->NackOne(id, 1, 0ms, kT0 + 2s).status.code(), Code::kFailedPrecondition);
}

TYPED_TEST(StoreContractTest, NackAfterTheLastAttemptDeadLetters) {
  RowId id = this->InsertOne(Item("t", 0, kT0, "p", 30s, std::nullopt, "ns", 2));
  this->ClaimOne(id, 1);
  ItemOutcome first = this->NackOne(id, 1, 0ms, kT0, std::nullopt, "e1");
  EXPECT_EQ(first.transition->to, ItemState::kReady);
  this->ClaimOne(id, 2, kT0 + 1s);
  ItemOutcome second = this->NackOne(id, 2, 0ms, kT0 + 2s, std::nullopt, "e2");
  ASSERT_TRUE(second.status.ok());
  EXPECT_EQ(second.transition->to, ItemState::kDead);
  EXPECT_EQ(second.transition->deliver_after, kT0 + 2s + kRetention);
  TaskRecord t = this->Task(id);
  EXPECT_EQ(t.state, ItemState::kDead);
  EXPECT_EQ(t.attempts, 2u);
  EXPECT_EQ(t.last_error, "e2");
  EXPECT_EQ(t.finished_at, kT0 + 2s);
  EXPECT_EQ(Kinds(t.history),
            (std::vector<std::string>{"leased", "retry", "leased", "dead_lettered"}));
  EXPECT_EQ(this->Counts("t").dead, 1u);
  EXPECT_TRUE(this->ReadyRows("t").empty());
}

TYPED_TEST(StoreContractTest, AnUndeliveredLeaseComesBackAtOnceAndItsAttemptCounts) {
  RowId id = this->InsertOne(Item("t", 0, kT0, "p", 30s, std::nullopt, "ns", 2));
  this->ClaimOne(id, 1, kT0, "w");
  auto give_back = [&](uint64_t token, Time now) {
    NackRequest n{id, LeaseToken(token), 0ms, std::nullopt, "not delivered", false};
    n.undelivered = true;
    return Must(this->store().Nack(std::vector<NackRequest>{n}, now)).at(0);
  };
  // A stale token gives nothing back.
  EXPECT_EQ(give_back(9, kT0).status.code(), Code::kFailedPrecondition);
  ItemOutcome first = give_back(1, kT0 + 1s);
  ASSERT_TRUE(first.status.ok());
  EXPECT_EQ(first.transition->to, ItemState::kReady);
  EXPECT_EQ(this->ReadyRows("t").size(), 1u);
  TaskRecord t = this->Task(id);
  EXPECT_EQ(t.attempts, 1u);
  EXPECT_EQ(t.last_error, "not delivered");
  EXPECT_EQ(Kinds(t.history), (std::vector<std::string>{"leased", "undelivered"}));
  EXPECT_EQ(t.history[1].attempt, 1u);
  // The attempt counted: given back again at the last attempt, the task is dead, as
  // after an expired lease.
  this->ClaimOne(id, 2, kT0 + 2s);
  EXPECT_EQ(give_back(2, kT0 + 3s).transition->to, ItemState::kDead);
  EXPECT_EQ(
      Kinds(this->Task(id).history),
      (std::vector<std::string>{"leased", "undelivered", "leased", "dead_lettered"}));
}

TYPED_TEST(StoreContractTest, CancelOfALeaseIsReportedByExtendAndEndsWithTheNack) {
  RowId id = this->InsertOne(Item("t", 0, kT0));
  this->ClaimOne(id, 1);
  ItemOutcome c = this->CancelOne(id, kT0 + 1s);
  EXPECT_TRUE(c.status.ok());
  EXPECT_TRUE(c.cancel_requested);
  EXPECT_FALSE(c.transition.has_value());
  EXPECT_EQ(this->Counts("t").leased, 1u);
  // Asking again changes nothing (no second event).
  EXPECT_TRUE(this->CancelOne(id, kT0 + 2s).status.ok());
  ItemOutcome ext = this->ExtendOne(id, 1, 30s, kT0 + 3s);
  EXPECT_TRUE(ext.status.ok());
  EXPECT_TRUE(ext.cancel_requested);
  // Even a retry request ends it as cancelled.
  ItemOutcome out = this->NackOne(id, 1, 0ms, kT0 + 4s, std::nullopt, "stopping");
  ASSERT_TRUE(out.status.ok());
  EXPECT_EQ(out.transition->to, ItemState::kCancelled);
  EXPECT_EQ(out.transition->deliver_after, kT0 + 4s + kRetention);
  TaskRecord t = this->Task(id);
  EXPECT_EQ(t.state, ItemState::kCancelled);
  EXPECT_TRUE(t.cancel_requested);
  EXPECT_EQ(t.last_error, "stopping");
  EXPECT_EQ(Kinds(t.history),
            (std::vector<std::string>{"leased", "cancel_requested", "cancelled"}));
  EXPECT_EQ(t.history[1].at, kT0 + 1s);
  // Extend of a lease that was not cancelled says so.
  RowId other = this->InsertOne(Item("t", 0, kT0));
  this->ClaimOne(other, 2);
  EXPECT_FALSE(this->ExtendOne(other, 2, 30s, kT0 + 1s).cancel_requested);
}

// --- PromoteDue: expired leases -----------------------------------------------------

TYPED_TEST(StoreContractTest, ExpiredLeasesRetryDeadLetterOrCancel) {
  RowId retry = this->InsertOne(Item("t", 0, kT0, "p", 10s));
  RowId last = this->InsertOne(Item("t", 0, kT0, "p", 11s, std::nullopt, "ns", 1));
  RowId cancel = this->InsertOne(Item("t", 0, kT0, "p", 12s, std::nullopt, "short"));
  this->Claim({retry, last, cancel}, 5, kT0, "w");
  ASSERT_TRUE(this->CancelOne(cancel, kT0 + 1s).status.ok());

  std::vector<ItemTransition> moved = Must(this->store().PromoteDue(kT0 + 20s, 10)).moved;
  ASSERT_EQ(moved.size(), 3u);
  EXPECT_EQ(moved[0].row, retry);
  EXPECT_EQ(moved[0].from, ItemState::kLeased);
  EXPECT_EQ(moved[0].to, ItemState::kReady);
  EXPECT_EQ(moved[0].deliver_after, kT0 + 10s);
  EXPECT_EQ(moved[1].row, last);
  EXPECT_EQ(moved[1].to, ItemState::kDead);
  EXPECT_EQ(moved[1].deliver_after, kT0 + 20s + kRetention);
  EXPECT_EQ(moved[2].row, cancel);
  EXPECT_EQ(moved[2].to, ItemState::kCancelled);
  EXPECT_EQ(moved[2].deliver_after, kT0 + 20s + kShortRetention);

  for (RowId id : {retry, last, cancel}) {
    TaskRecord t = this->Task(id);
    EXPECT_EQ(t.last_error, "lease expired");
    ASSERT_FALSE(t.history.empty());
    EXPECT_EQ(t.history.back().kind, "lease_expired");
    EXPECT_EQ(t.history.back().at, kT0 + 20s);
    EXPECT_EQ(t.history.back().attempt, 1u);
    EXPECT_EQ(t.history.back().worker_id, "w");
  }
  EXPECT_EQ(this->Task(retry).state, ItemState::kReady);
  EXPECT_EQ(this->Task(retry).finished_at, Time{});
  EXPECT_EQ(this->Task(last).state, ItemState::kDead);
  EXPECT_EQ(this->Task(last).finished_at, kT0 + 20s);
  EXPECT_EQ(this->Task(cancel).state, ItemState::kCancelled);
  EXPECT_EQ(this->ReadyRows("t"), std::vector<RowId>{retry});
  EXPECT_EQ(Must(this->store().NextDue()), std::nullopt);
  // Final rows are never "due" work.
  EXPECT_TRUE(Must(this->store().PromoteDue(kT0 + 10 * kRetention, 10)).moved.empty());
}

// --- PurgeExpired: retention --------------------------------------------------------

TYPED_TEST(StoreContractTest, PurgeExpiredRemovesFinalRowsOnlyAfterRetention) {
  RowId acked = this->InsertOne(Item("t", 0, kT0, "p", 30s, kT0 + 5s));  // with a TTL
  RowId failed = this->InsertOne(Item("t", 1, kT0, "p", 30s, std::nullopt, "short"));
  RowId ttl = this->InsertOne(Item("t", 2, kT0, "p", 30s, kT0 + 20s));
  this->Claim({acked, failed}, 1);
  ASSERT_TRUE(this->AckOne(acked, 1, kT0 + 1s).status.ok());
  ASSERT_TRUE(
      this->NackOne(failed, 1, 0ms, kT0 + 2s, std::nullopt, "x", true).status.ok());

  // The finished row's TTL no longer applies: retention does.
  EXPECT_TRUE(Must(this->store().PurgeExpired(kT0 + 10s, 10)).empty());
  EXPECT_EQ(this->Task(acked).state, ItemState::kSucceeded);
  // Earliest first: failed (kT0+12s), ttl (kT0+20s), then acked (kT0+1s+1h).
  std::vector<ItemTransition> first = Must(this->store().PurgeExpired(kT0 + 1h, 1));
  ASSERT_EQ(first.size(), 1u);
  EXPECT_EQ(first[0].row, failed);
  EXPECT_EQ(first[0].from, ItemState::kFailed);
  EXPECT_EQ(first[0].to, ItemState::kGone);
  EXPECT_EQ(first[0].ns, "short");
  std::vector<ItemTransition> second = Must(this->store().PurgeExpired(kT0 + 1h, 10));
  ASSERT_EQ(second.size(), 1u);
  EXPECT_EQ(second[0].row, ttl);
  EXPECT_EQ(second[0].from, ItemState::kReady);
  EXPECT_TRUE(Must(this->store().PurgeExpired(kT0 + 1s + kRetention - 1ms, 10)).empty());
  std::vector<ItemTransition> last =
      Must(this->store().PurgeExpired(kT0 + 1s + kRetention, 10));
  ASSERT_EQ(last.size(), 1u);
  EXPECT_EQ(last[0].row, acked);
  EXPECT_EQ(last[0].from, ItemState::kSucceeded);
  EXPECT_EQ(last[0].deliver_after, kT0 + 1s + kRetention);
  for (RowId id : {acked, failed, ttl}) {
    EXPECT_EQ(this->store().GetTask(id, true).status().code(), Code::kNotFound);
  }
  EXPECT_EQ(this->AckOne(acked, 1).status.code(), Code::kNotFound);
  EXPECT_TRUE(Must(this->store().CountByTopic()).empty());
}

// --- GetTask ------------------------------------------------------------------------

TYPED_TEST(StoreContractTest, GetTaskReturnsTheRowWithItsHistory) {
  NewItem item =
      Item("topic", -2, kT0 + 5s, std::string("pay\0load", 8), 30s, kT0 + 1h, "ns", 3);
  item.task_type = "email";
  item.metadata = std::string("m\0", 2);
  RowId id = this->InsertOne(item);
  TaskRecord t = this->Task(id);
  EXPECT_EQ(t.row, id);
  EXPECT_EQ(t.ns, "ns");
  EXPECT_EQ(t.topic, "topic");
  EXPECT_EQ(t.task_type, "email");
  EXPECT_EQ(t.priority, -2);
  EXPECT_EQ(t.state, ItemState::kDelayed);
  EXPECT_EQ(t.attempts, 0u);
  EXPECT_EQ(t.max_attempts, 3u);
  EXPECT_EQ(t.enqueued_at, kT0);
  EXPECT_EQ(t.deliver_after, kT0 + 5s);
  EXPECT_EQ(t.finished_at, Time{});
  EXPECT_EQ(t.token, LeaseToken(0));
  EXPECT_EQ(t.metadata, std::string("m\0", 2));
  EXPECT_EQ(t.payload, "");  // not asked for
  EXPECT_FALSE(t.cancel_requested);
  EXPECT_TRUE(t.history.empty());
  EXPECT_EQ(this->Task(id, true).payload, std::string("pay\0load", 8));

  Must(this->store().PromoteDue(kT0 + 5s, 10));
  this->ClaimOne(id, 7, kT0 + 6s, "w1");
  ASSERT_TRUE(this->NackOne(id, 7, 0ms, kT0 + 7s, std::nullopt, "oops").status.ok());
  this->ClaimOne(id, 8, kT0 + 8s, "w2");
  ASSERT_TRUE(this->AckOne(id, 8, kT0 + 9s, "done").status.ok());
  t = this->Task(id, true);
  EXPECT_EQ(t.state, ItemState::kSucceeded);
  EXPECT_EQ(t.attempts, 2u);
  EXPECT_EQ(t.token, LeaseToken(8));
  EXPECT_EQ(t.result, "done");
  EXPECT_EQ(t.last_error, "oops");
  ASSERT_EQ(t.history.size(), 4u);
  EXPECT_EQ(Kinds(t.history),
            (std::vector<std::string>{"leased", "retry", "leased", "succeeded"}));
  std::vector<Time> at;
  for (const TaskEvent& e : t.history) at.push_back(e.at);
  EXPECT_EQ(at, (std::vector<Time>{kT0 + 6s, kT0 + 7s, kT0 + 8s, kT0 + 9s}));
  EXPECT_EQ(t.history[3].worker_id, "w2");
  EXPECT_EQ(t.history[3].attempt, 2u);

  EXPECT_EQ(this->store().GetTask(RowId(987654), false).status().code(), Code::kNotFound);
}

TYPED_TEST(StoreContractTest, GetTaskReturnsTheLastHundredEvents) {
  RowId id = this->InsertOne(Item("t", 0, kT0, "p", 30s, std::nullopt, "ns", 1000));
  for (uint64_t n = 1; n <= 51; ++n) {  // 102 events
    this->ClaimOne(id, n);
    ASSERT_TRUE(this->NackOne(id, n, 0ms, kT0).status.ok());
  }
  TaskRecord t = this->Task(id);
  ASSERT_EQ(t.history.size(), 100u);
  EXPECT_EQ(t.history.front().kind, "leased");
  EXPECT_EQ(t.history.front().attempt, 2u);
  EXPECT_EQ(t.history.back().kind, "retry");
  EXPECT_EQ(t.history.back().attempt, 51u);
}

// --- Cancel -------------------------------------------------------------------------

TYPED_TEST(StoreContractTest, CancelInEachState) {
  RowId delayed = this->InsertOne(Item("t", 0, kT0 + 1h));
  RowId ready = this->InsertOne(Item("t", 3, kT0));
  ItemOutcome d = this->CancelOne(delayed, kT0 + 1s);
  EXPECT_TRUE(d.status.ok());
  ASSERT_TRUE(d.transition.has_value());
  EXPECT_EQ(d.transition->from, ItemState::kDelayed);
  EXPECT_EQ(d.transition->to, ItemState::kCancelled);
  EXPECT_EQ(d.transition->deliver_after, kT0 + 1s + kRetention);
  EXPECT_FALSE(d.cancel_requested);
  ItemOutcome r = this->CancelOne(ready, kT0 + 1s);
  ASSERT_TRUE(r.transition.has_value());
  EXPECT_EQ(r.transition->from, ItemState::kReady);
  EXPECT_EQ(r.transition->priority, 3);
  EXPECT_TRUE(this->ReadyRows("t").empty());
  EXPECT_EQ(Must(this->store().NextDue()), std::nullopt);
  EXPECT_TRUE(this->Claim({ready}, 1).empty());
  TaskRecord t = this->Task(ready);
  EXPECT_EQ(t.state, ItemState::kCancelled);
  EXPECT_EQ(t.finished_at, kT0 + 1s);
  EXPECT_EQ(Kinds(t.history), std::vector<std::string>{"cancelled"});

  // Cancelled again: OK, nothing changes.
  ItemOutcome again = this->CancelOne(ready, kT0 + 2s);
  EXPECT_TRUE(again.status.ok());
  EXPECT_FALSE(again.transition.has_value());
  EXPECT_EQ(this->Task(ready).history.size(), 1u);
  // Another final state: refused.
  RowId acked = this->InsertOne(Item("t", 0, kT0));
  this->ClaimOne(acked, 2);
  ASSERT_TRUE(this->AckOne(acked, 2).status.ok());
  ItemOutcome s = this->CancelOne(acked, kT0 + 1s);
  EXPECT_EQ(s.status.code(), Code::kFailedPrecondition);
  EXPECT_FALSE(s.transition.has_value());
  EXPECT_EQ(this->Task(acked).state, ItemState::kSucceeded);
  EXPECT_EQ(this->CancelOne(this->MakeDead()).status.code(), Code::kFailedPrecondition);
  // No such row.
  EXPECT_EQ(this->CancelOne(RowId(999999)).status.code(), Code::kNotFound);
  TopicCounts c = this->Counts("t");
  EXPECT_EQ(c.cancelled, 2u);
  EXPECT_EQ(c.succeeded, 1u);
  EXPECT_EQ(c.dead, 1u);
}

// --- Dead letters: ListDead, Redrive, PurgeDead -------------------------------------

TYPED_TEST(StoreContractTest, ListDeadFollowsTheOrderingRule) {
  RowId a = this->MakeDead("t", 5, kT0);
  RowId b = this->MakeDead("t", 1, kT0 + 2s);
  RowId c = this->MakeDead("t", 1, kT0 + 1s);
  RowId d = this->MakeDead("t", 1, kT0 + 1s);
  this->MakeDead("other", 0);
  this->InsertOne(Item("t", 0, kT0));  // live
  std::vector<TaskRecord> dead = Must(this->store().ListDead("ns", "t", 10));
  std::vector<RowId> rows;
  for (const TaskRecord& t : dead) rows.push_back(t.row);
  EXPECT_EQ(rows, (std::vector<RowId>{c, d, b, a}));
  EXPECT_EQ(dead[0].state, ItemState::kDead);
  EXPECT_EQ(dead[0].attempts, 1u);
  EXPECT_EQ(dead[0].max_attempts, 1u);
  EXPECT_EQ(dead[0].finished_at, kT0 + 1s);
  EXPECT_EQ(dead[0].topic, "t");
  EXPECT_EQ(dead[0].payload, "");
  EXPECT_TRUE(dead[0].history.empty());
  std::vector<TaskRecord> two = Must(this->store().ListDead("ns", "t", 2));
  ASSERT_EQ(two.size(), 2u);
  EXPECT_EQ(two[1].row, d);
  EXPECT_TRUE(Must(this->store().ListDead("ns", "t", 0)).empty());
  EXPECT_TRUE(Must(this->store().ListDead("ns", "nope", 10)).empty());
  EXPECT_TRUE(Must(this->store().ListDead("other_ns", "t", 10)).empty());
}

// Retention 0: a finished task is not kept, so an ack deletes the row at once.
TYPED_TEST(StoreContractTest, RetentionZeroDeletesATaskWhenItIsAcked) {
  NewItem item = Item("t", 0, kT0);
  item.ns = "ephemeral";
  RowId id = this->InsertOne(item);
  RowId other = this->InsertOne(item);
  this->Claim({id, other}, 7, kT0);
  // A nack first: its history rows go with the row too.
  ASSERT_TRUE(this->NackOne(other, 7, Duration(0), kT0).status.ok());
  this->ClaimOne(other, 8, kT0);
  ItemOutcome out = this->AckOne(id, 7, kT0 + 1s);
  ASSERT_TRUE(out.status.ok()) << out.status.ToString();
  ASSERT_TRUE(out.transition.has_value());
  EXPECT_EQ(out.transition->from, ItemState::kLeased);
  EXPECT_EQ(out.transition->to, ItemState::kGone);
  EXPECT_EQ(this->store().GetTask(id, false).status().code(), Code::kNotFound);
  EXPECT_EQ(this->AckOne(id, 7, kT0 + 2s).status.code(), Code::kNotFound)
      << "nothing is kept that a repeated ack could match";
  ASSERT_TRUE(this->AckOne(other, 8, kT0 + 2s).status.ok());
  EXPECT_EQ(this->store().GetTask(other, false).status().code(), Code::kNotFound);
  EXPECT_TRUE(Must(this->store().CountByTopic()).empty());
}

// The MySQL store keeps a lease's "leased" event (and "succeeded") in the item row
// until something else happens to the lease; the history reads the same either way.
TYPED_TEST(StoreContractTest, HistoryOfARedrivenTaskThatSucceeds) {
  RowId id = this->MakeDead("t", 0);  // leased (attempt 1), dead_lettered
  ASSERT_EQ(Must(this->store().Redrive("ns", "t", std::vector<RowId>{id}, 1, kT0 + 1s))
                .transitions.size(),
            1u);
  this->ClaimOne(id, 7, kT0 + 2s, "w2");  // attempt 1 again
  ASSERT_TRUE(this->AckOne(id, 7, kT0 + 3s).status.ok());
  TaskRecord t = this->Task(id);
  EXPECT_EQ(Kinds(t.history),
            (std::vector<std::string>{"leased", "dead_lettered", "redriven", "leased",
                                      "succeeded"}));
  ASSERT_EQ(t.history.size(), 5u);
  EXPECT_EQ(t.history[3].attempt, 1u);
  EXPECT_EQ(t.history[3].worker_id, "w2");
  EXPECT_EQ(t.history[3].at, kT0 + 2s);
  EXPECT_EQ(t.history[4].at, kT0 + 3s);
}

TYPED_TEST(StoreContractTest, HistoryOfATaskWhoseLeaseExpiredThenSucceeded) {
  RowId id = this->InsertOne(Item("t", 0, kT0));
  this->ClaimOne(id, 7, kT0, "w1");
  Must(this->store().PromoteDue(kT0 + 60s, 10));  // the lease expires
  this->ClaimOne(id, 8, kT0 + 61s, "w2");
  ASSERT_TRUE(this->AckOne(id, 8, kT0 + 62s).status.ok());
  TaskRecord t = this->Task(id);
  EXPECT_EQ(Kinds(t.history),
            (std::vector<std::string>{"leased", "lease_expired", "leased", "succeeded"}));
  ASSERT_EQ(t.history.size(), 4u);
  EXPECT_EQ(t.history[0].worker_id, "w1");
  EXPECT_EQ(t.history[0].at, kT0);
  EXPECT_EQ(t.history[2].attempt, 2u);
  EXPECT_EQ(t.history[2].worker_id, "w2");
}

TYPED_TEST(StoreContractTest, RedriveOfGivenRows) {
  RowId a = this->MakeDead("t", 0);
  RowId b = this->MakeDead("t", 0);
  RowId live = this->InsertOne(Item("t", 0, kT0));
  RowId elsewhere = this->MakeDead("other", 0);
  std::vector<RowId> rows = {a, live, elsewhere, RowId(999999), a};
  ShardStore::BulkOutcome out = Must(this->store().Redrive("ns", "t", rows, 1, kT0 + 5s));
  ASSERT_EQ(out.per_row.size(), 5u);
  EXPECT_TRUE(out.per_row[0].status.ok());
  ASSERT_TRUE(out.per_row[0].transition.has_value());
  EXPECT_EQ(out.per_row[0].transition->from, ItemState::kDead);
  EXPECT_EQ(out.per_row[0].transition->to, ItemState::kReady);
  EXPECT_EQ(out.per_row[0].transition->deliver_after, kT0 + 5s);
  EXPECT_EQ(out.per_row[1].status.code(), Code::kFailedPrecondition);  // not dead
  EXPECT_EQ(out.per_row[2].status.code(), Code::kNotFound);            // other topic
  EXPECT_EQ(out.per_row[3].status.code(), Code::kNotFound);            // no row
  EXPECT_EQ(out.per_row[4].status.code(),
            Code::kFailedPrecondition);  // redriven just now
  EXPECT_FALSE(out.per_row[4].transition.has_value());
  ASSERT_EQ(out.transitions.size(), 1u);
  EXPECT_EQ(out.transitions[0].row, a);

  TaskRecord t = this->Task(a);
  EXPECT_EQ(t.state, ItemState::kReady);
  EXPECT_EQ(t.attempts, 0u);
  EXPECT_EQ(t.deliver_after, kT0 + 5s);
  EXPECT_EQ(t.finished_at, Time{});
  EXPECT_EQ(t.history.back().kind, "redriven");
  EXPECT_EQ(t.history.back().attempt, 0u);
  EXPECT_EQ(t.history.back().at, kT0 + 5s);
  EXPECT_EQ(this->Task(b).state, ItemState::kDead);
  EXPECT_EQ(this->Task(elsewhere).state, ItemState::kDead);
  // A fresh life: attempts count from 1 again, up to max_attempts.
  std::vector<RowId> ready = this->ReadyRows("t");
  EXPECT_EQ(std::count(ready.begin(), ready.end(), a), 1);
  EXPECT_EQ(this->ClaimOne(a, 77, kT0 + 6s).attempts, 1u);
  EXPECT_EQ(this->NackOne(a, 77, 0ms, kT0 + 7s).transition->to, ItemState::kDead);
}

TYPED_TEST(StoreContractTest, RedriveOfAllDeadRowsOfATopicUpToTheLimit) {
  RowId a = this->MakeDead("t", 2);
  RowId b = this->MakeDead("t", 1);
  RowId c = this->MakeDead("t", 3);
  RowId other = this->MakeDead("u", 0);
  ShardStore::BulkOutcome first = Must(this->store().Redrive("ns", "t", {}, 2, kT0 + 1s));
  EXPECT_TRUE(first.per_row.empty());
  ASSERT_EQ(first.transitions.size(), 2u);
  EXPECT_EQ(first.transitions[0].row, b);
  EXPECT_EQ(first.transitions[1].row, a);
  TopicCounts counts = this->Counts("t");
  EXPECT_EQ(counts.ready, 2u);
  EXPECT_EQ(counts.dead, 1u);
  ShardStore::BulkOutcome rest = Must(this->store().Redrive("ns", "t", {}, 10, kT0 + 2s));
  ASSERT_EQ(rest.transitions.size(), 1u);
  EXPECT_EQ(rest.transitions[0].row, c);
  EXPECT_TRUE(
      Must(this->store().Redrive("ns", "t", {}, 10, kT0 + 3s)).transitions.empty());
  EXPECT_EQ(this->ReadyRows("t"), (std::vector<RowId>{b, a, c}));
  EXPECT_EQ(this->Task(other).state, ItemState::kDead);
}

TYPED_TEST(StoreContractTest, PurgeDeadDeletesGivenOrAllDeadRows) {
  RowId a = this->MakeDead("t", 0);
  RowId b = this->MakeDead("t", 1);
  RowId c = this->MakeDead("t", 2);
  RowId live = this->InsertOne(Item("t", 0, kT0));
  std::vector<RowId> rows = {b, live, RowId(999999), b};
  ShardStore::BulkOutcome out = Must(this->store().PurgeDead("ns", "t", rows, 10));
  ASSERT_EQ(out.per_row.size(), 4u);
  EXPECT_TRUE(out.per_row[0].status.ok());
  ASSERT_TRUE(out.per_row[0].transition.has_value());
  EXPECT_EQ(out.per_row[0].transition->from, ItemState::kDead);
  EXPECT_EQ(out.per_row[0].transition->to, ItemState::kGone);
  EXPECT_EQ(out.per_row[1].status.code(), Code::kFailedPrecondition);
  EXPECT_EQ(out.per_row[2].status.code(), Code::kNotFound);
  EXPECT_EQ(out.per_row[3].status.code(), Code::kNotFound);  // purged just now
  ASSERT_EQ(out.transitions.size(), 1u);
  EXPECT_EQ(this->store().GetTask(b, false).status().code(), Code::kNotFound);

  ShardStore::BulkOutcome all = Must(this->store().PurgeDead("ns", "t", {}, 1));
  ASSERT_EQ(all.transitions.size(), 1u);
  EXPECT_EQ(all.transitions[0].row, a);
  all = Must(this->store().PurgeDead("ns", "t", {}, 10));
  ASSERT_EQ(all.transitions.size(), 1u);
  EXPECT_EQ(all.transitions[0].row, c);
  TopicCounts counts = this->Counts("t");
  EXPECT_EQ(counts.dead, 0u);
  EXPECT_EQ(counts.ready, 1u);
  EXPECT_EQ(this->Task(live).state, ItemState::kReady);
}

TYPED_TEST(StoreContractTest, CountByTopicCountsFinalStates) {
  std::vector<RowId> ids = this->Insert(
      {Item("t", 0, kT0), Item("t", 0, kT0), Item("t", 0, kT0), Item("t", 0, kT0 + 1h)});
  this->Claim({ids[0], ids[1]}, 1);
  ASSERT_TRUE(this->AckOne(ids[0], 1).status.ok());
  ASSERT_TRUE(this->NackOne(ids[1], 1, 0ms, kT0, std::nullopt, "", true).status.ok());
  ASSERT_TRUE(this->CancelOne(ids[2]).status.ok());
  this->MakeDead("t");
  this->MakeDead("t");
  RowId ready = this->InsertOne(Item("t", 0, kT0));
  this->ClaimOne(this->InsertOne(Item("t", 0, kT0)), 3);
  TopicCounts c = this->Counts("t");
  EXPECT_EQ(c.delayed, 1u);
  EXPECT_EQ(c.ready, 1u);
  EXPECT_EQ(c.leased, 1u);
  EXPECT_EQ(c.succeeded, 1u);
  EXPECT_EQ(c.failed, 1u);
  EXPECT_EQ(c.dead, 2u);
  EXPECT_EQ(c.cancelled, 1u);
  EXPECT_EQ(this->ReadyRows("t"), std::vector<RowId>{ready});
}

// --- memory store only: fault injection ---------------------------------------------

TEST(MemoryShardStoreTest, FailNextFailsOneCallAndChangesNothing) {
  MemoryShardStore store;
  std::vector<NewItem> items{Item("t", 0, kT0)};
  store.FailNext(MemoryShardStore::Op::kInsert, Status::Unavailable("injected"));
  EXPECT_EQ(store.Insert(items, kT0).status().code(), Code::kUnavailable);
  EXPECT_EQ(store.size(), 0u);
  std::vector<Inserted> ids = Must(store.Insert(items, kT0));
  ASSERT_EQ(ids.size(), 1u);
  std::vector<ClaimRequest> claim{{ids[0].row, "w"}};

  store.FailNext(MemoryShardStore::Op::kClaim, Status::Internal("boom"));
  EXPECT_EQ(store.Claim(claim, LeaseToken(1), kT0).status().code(), Code::kInternal);
  EXPECT_EQ(Must(store.CountByTopic())[0].ready, 1u);  // other ops unaffected
  EXPECT_EQ(Must(store.Claim(claim, LeaseToken(1), kT0)).size(), 1u);

  store.FailNext(MemoryShardStore::Op::kCancel, Status::Unavailable("injected"));
  EXPECT_EQ(store.Cancel(ids[0].row, kT0).status().code(), Code::kUnavailable);
  EXPECT_FALSE(Must(store.GetTask(ids[0].row, false)).cancel_requested);
  EXPECT_TRUE(Must(store.Cancel(ids[0].row, kT0)).cancel_requested);
  EXPECT_EQ(store.calls(MemoryShardStore::Op::kCancel), 2u);
  EXPECT_EQ(store.calls(MemoryShardStore::Op::kGetTask), 1u);
}

TEST(MemoryShardStoreTest, FailAllFailsEveryCallUntilCleared) {
  MemoryShardStore store;
  RowId id = Must(store.Insert(std::vector<NewItem>{Item("t", 0, kT0)}, kT0))[0].row;
  store.FailAll(Status::Unavailable("down"));
  EXPECT_EQ(store.Open().code(), Code::kUnavailable);
  EXPECT_EQ(store.Ping().code(), Code::kUnavailable);
  EXPECT_EQ(store.FetchReady("ns", "t", 10).status().code(), Code::kUnavailable);
  std::vector<ClaimRequest> rows{{id, "w"}};
  EXPECT_EQ(store.Claim(rows, LeaseToken(1), kT0).status().code(), Code::kUnavailable);
  EXPECT_EQ(store.PromoteDue(kT0, 10).status().code(), Code::kUnavailable);
  EXPECT_EQ(store.NextDue().status().code(), Code::kUnavailable);
  EXPECT_EQ(store.GetTask(id, true).status().code(), Code::kUnavailable);
  EXPECT_EQ(store.ListDead("ns", "t", 10).status().code(), Code::kUnavailable);
  EXPECT_EQ(store.Redrive("ns", "t", {}, 10, kT0).status().code(), Code::kUnavailable);
  EXPECT_EQ(store.PurgeDead("ns", "t", {}, 10).status().code(), Code::kUnavailable);
  store.ClearFailures();
  EXPECT_TRUE(store.Ping().ok());
  EXPECT_EQ(Must(store.Claim(rows, LeaseToken(1), kT0)).size(), 1u);
}

// --- MySQL store only: a server that dies and comes back ----------------------------

TEST(MySqlShardStoreTest, RefusesABadDatabaseName) {
  MySqlShardStore store(testing::SharedMariaDb().endpoint(), "bad`name");
  EXPECT_EQ(store.Open().code(), Code::kInvalidArgument);
}

TEST(MySqlShardStoreTest, UnreachableServerIsUnavailable) {
  MysqlEndpoint ep = testing::SharedMariaDb().endpoint();
  ep.socket = "/nonexistent/mysql.sock";
  MySqlShardStore store(ep, "x");
  EXPECT_EQ(store.Open().code(), Code::kUnavailable);
  EXPECT_EQ(store.Ping().code(), Code::kUnavailable);
  EXPECT_FALSE(store.connected());
}

TEST(MySqlShardStoreTest, RecoversByItselfAfterTheServerIsKilled) {
  auto db = Must(testing::MariaDbInstance::Start());
  MySqlShardStore store(db->endpoint(), "recovery");
  ASSERT_TRUE(store.Open().ok());
  std::vector<Inserted> ids =
      Must(store.Insert(std::vector<NewItem>{Item("t", 0, kT0), Item("t", 0, kT0)}, kT0));
  std::vector<ClaimRequest> first{{ids[0].row, "w"}};
  ASSERT_EQ(Must(store.Claim(first, LeaseToken(8), kT0)).size(), 1u);

  ASSERT_TRUE(db->Kill().ok());
  std::vector<NewItem> more{Item("t", 0, kT0)};
  EXPECT_EQ(store.Insert(more, kT0).status().code(), Code::kUnavailable);
  EXPECT_FALSE(store.connected());
  EXPECT_EQ(store.Ping().code(), Code::kUnavailable);

  ASSERT_TRUE(db->StartAgain().ok());
  // No explicit Open(): the next call reconnects.
  std::vector<TopicCounts> counts = Must(store.CountByTopic());
  ASSERT_EQ(counts.size(), 1u);
  EXPECT_EQ(counts[0].ready, 1u);
  EXPECT_EQ(counts[0].leased, 1u);
  std::vector<AckRequest> ack{{ids[0].row, LeaseToken(8), ""}};
  EXPECT_TRUE(Must(store.Ack(ack, kT0))[0].status.ok());

  // A clean restart too.
  ASSERT_TRUE(db->Stop().ok());
  EXPECT_EQ(store.Ping().code(), Code::kUnavailable);
  ASSERT_TRUE(db->StartAgain().ok());
  EXPECT_EQ(Must(store.FetchReady("ns", "t", 10)).size(), 1u);
}

// Server settings a shard refuses to open on: interleaved auto-increment ids (the ids
// of one multi-row INSERT must be consecutive), and a log not flushed at each commit
// (guarantee 1: what shardq acknowledges must survive a crash of MariaDB or its host).
TEST(MySqlShardStoreTest, RefusesServerSettingsItCannotWorkWith) {
  const std::pair<std::string, std::string> refused[] = {
      {"--innodb-autoinc-lock-mode=2", "innodb_autoinc_lock_mode"},
      {"--innodb-flush-log-at-trx-commit=2", "innodb_flush_log_at_trx_commit=2"}};
  for (const auto& [setting, named] : refused) {
    SCOPED_TRACE(setting);
    auto db = Must(testing::MariaDbInstance::Start({setting}));
    MySqlShardStore store(db->endpoint(), "refused");
    Status s = store.Open();
    EXPECT_EQ(s.code(), Code::kInternal);
    EXPECT_NE(s.message().find(named), std::string::npos) << s.message();
    EXPECT_FALSE(store.connected());
  }
}

// A plain connection to the shared server, for what the store does not expose.
std::unique_ptr<DbConnection> RawConnection() {
  return std::make_unique<DbConnection>(testing::SharedMariaDb().endpoint());
}

int64_t QueryInt(DbConnection& conn, const std::string& query) {
  std::unique_ptr<DbStatement> st = conn.Prepare(query);
  DbRows& rs = st->ExecuteQuery();
  if (!rs.Next()) throw std::runtime_error("no row: " + query);
  return rs.GetInt64(1);
}

// A fresh database `db` as a shard looked before migration `version` + 1 (applied by
// hand, recorded in schema_migrations); the connection is left on that database.
void ShardAtMigration(DbConnection& conn, const std::string& db, int version) {
  conn.Execute("CREATE DATABASE `" + db + "`");
  conn.Execute("USE `" + db + "`");
  conn.Execute(schema::kMigrationsTableDdl);
  for (const schema::Migration& m : schema::AllMigrations()) {
    if (m.version > version) break;
    std::string sql(m.sql);
    for (size_t end; (end = sql.find(";\n")) != std::string::npos;
         sql.erase(0, end + 2)) {
      conn.Execute(sql.substr(0, end));
    }
    conn.Execute("INSERT INTO schema_migrations (version, name) VALUES (" +
                 std::to_string(m.version) + ", '" + std::string(m.name) + "')");
  }
}

TEST(MySqlShardStoreTest, OpenUpgradesADatabaseOfMigrationOne) {
  const std::string db = FreshDbName("upgrade");
  {
    // What a shard looked like before migration 2: the items table of 0001 only.
    std::unique_ptr<DbConnection> conn = RawConnection();
    ShardAtMigration(*conn, db, 1);
    const std::string t0 = std::to_string(ToUnixMillis(kT0));
    conn->Execute(
        "INSERT INTO items (ns, topic, priority, state, deliver_after, lease_ms, "
        "attempts, enqueued_at, payload, metadata) VALUES "
        "('ns', 't', 0, 1, " +
        t0 + ", 30000, 0, " + t0 +
        ", 'old', 'm'), "
        "('ns', 't', 1, 2, " +
        t0 + ", 30000, 1, " + t0 + ", 'leased', 'm')");
    conn->Execute("UPDATE items SET lease_token = 5 WHERE state = 2");
    conn->Execute("COMMIT");
  }
  auto owner = std::make_unique<MySqlShardStore>(testing::SharedMariaDb().endpoint(), db);
  MySqlShardStore& store = *owner;
  store.SetPolicies(TestPolicies());
  ASSERT_TRUE(store.Open().ok());
  {
    std::unique_ptr<DbConnection> conn = RawConnection();
    EXPECT_EQ(QueryInt(*conn, "SELECT MAX(version) FROM `" + db + "`.schema_migrations"),
              static_cast<int64_t>(schema::AllMigrations().back().version));
  }
  // The old rows are there, with the defaults of the new columns.
  std::vector<ReadyKey> ready = Must(store.FetchReady("ns", "t", 10));
  ASSERT_EQ(ready.size(), 1u);
  TaskRecord old = Must(store.GetTask(ready[0].row, true));
  EXPECT_EQ(old.payload, "old");
  EXPECT_EQ(old.state, ItemState::kReady);
  EXPECT_EQ(old.max_attempts, 5u);
  EXPECT_EQ(old.task_type, "");
  EXPECT_TRUE(old.history.empty());
  // And they live on under the new rules: the old lease acks into SUCCEEDED.
  std::vector<AckRequest> ack{{RowId(ready[0].row.value() + 1), LeaseToken(5), "r"}};
  std::vector<ItemOutcome> acked = Must(store.Ack(ack, kT0));
  ASSERT_TRUE(acked[0].status.ok()) << acked[0].status.ToString();
  EXPECT_EQ(acked[0].transition->to, ItemState::kSucceeded);
  std::vector<ClaimRequest> claim{{ready[0].row, "w"}};
  ASSERT_EQ(Must(store.Claim(claim, LeaseToken(6), kT0)).size(), 1u);
  EXPECT_EQ(Must(store.GetTask(ready[0].row, false)).history.size(), 1u);
  // Dedup works on the upgraded table.
  std::vector<NewItem> keyed{Keyed("k"), Keyed("k")};
  std::vector<Inserted> ins = Must(store.Insert(keyed, kT0));
  EXPECT_TRUE(ins[1].deduplicated);
  // A second Open (a restart) applies nothing again.
  owner.reset();
  ASSERT_TRUE(testing::AwaitOwnershipFreed(db));
  MySqlShardStore again(testing::SharedMariaDb().endpoint(), db);
  ASSERT_TRUE(again.Open().ok());
}

// Two servers pointed at one shard database: one owns it, the other is refused until
// the owner's connection ends, and then takes over. An owner that lost its connection
// meanwhile writes nothing more (its reconnect finds the lock held).
TEST(MySqlShardStoreTest, OneStoreAtATimeOwnsAShardDatabase) {
  const std::string db = FreshDbName("owner");
  const MysqlEndpoint ep = testing::SharedMariaDb().endpoint();
  auto first = std::make_unique<MySqlShardStore>(ep, db);
  ASSERT_TRUE(first->Open().ok());
  auto second = std::make_unique<MySqlShardStore>(ep, db);
  Status refused = second->Open();
  EXPECT_EQ(refused.code(), Code::kUnavailable);
  EXPECT_NE(refused.message().find("owned by another shardq server"), std::string::npos)
      << refused.message();
  EXPECT_FALSE(second->connected());
  std::vector<NewItem> one{Item("t", 0, kT0)};
  EXPECT_EQ(second->Insert(one, kT0).status().code(), Code::kUnavailable);
  MySqlShardStore elsewhere(ep, FreshDbName("owner"));
  EXPECT_TRUE(elsewhere.Open().ok()) << "another database has its own owner";

  // The owner's connection is lost (as when its process or host dies).
  std::unique_ptr<DbConnection> conn = RawConnection();
  const int64_t holder =
      QueryInt(*conn, "SELECT IS_USED_LOCK('" + OwnershipLockName(db) + "')");
  conn->Execute("KILL CONNECTION " + std::to_string(holder));
  ASSERT_TRUE(testing::AwaitOwnershipFreed(db));
  ASSERT_TRUE(Must(second->Insert(one, kT0))[0].row.value() > 0) << "taken over";
  // The old owner reconnects on its next call and is refused: nothing written.
  EXPECT_EQ(first->Insert(one, kT0).status().code(), Code::kUnavailable);
  std::vector<TopicCounts> counts = Must(second->CountByTopic());
  ASSERT_EQ(counts.size(), 1u);
  EXPECT_EQ(counts[0].ready, 1u);

  // The new owner stops: the old one takes the shard back on its next call.
  second.reset();
  ASSERT_TRUE(testing::AwaitOwnershipFreed(db));
  EXPECT_EQ(Must(first->CountByTopic())[0].ready, 1u);
}

TEST(MySqlShardStoreTest, OpenMovesLesseeNamesIntoWorkers) {
  const std::string db = FreshDbName("workers");
  {
    // A shard at migration 2, where items.worker_id held the lessee's name.
    std::unique_ptr<DbConnection> conn = RawConnection();
    ShardAtMigration(*conn, db, 2);
    const std::string t0 = std::to_string(ToUnixMillis(kT0));
    conn->Execute(
        "INSERT INTO items (ns, topic, priority, state, deliver_after, lease_ms, "
        "attempts, enqueued_at, payload, metadata, lease_token, worker_id, "
        "last_delivered_at) VALUES "
        "('ns', 't', 0, 2, " +
        t0 + ", 30000, 1, " + t0 + ", 'p', 'm', 7, 'old-w', " + t0 +
        "), ('ns', 't', 0, 1, " + t0 + ", 30000, 0, " + t0 + ", 'p', 'm', 0, '', 0)");
    conn->Execute("COMMIT");
  }
  MySqlShardStore store(testing::SharedMariaDb().endpoint(), db);
  store.SetPolicies(TestPolicies());
  ASSERT_TRUE(store.Open().ok());
  std::unique_ptr<DbConnection> conn = RawConnection();
  EXPECT_EQ(QueryInt(*conn,
                     "SELECT COUNT(*) FROM information_schema.columns WHERE "
                     "table_schema = '" +
                         db +
                         "' AND column_name = 'worker_id' "
                         "AND table_name = 'items'"),
            0);
  std::vector<ReadyKey> ready = Must(store.FetchReady("ns", "t", 10));
  ASSERT_EQ(ready.size(), 1u);
  const RowId leased(ready[0].row.value() - 1);
  EXPECT_EQ(Must(store.GetTask(leased, false)).worker_id, "old-w");
  EXPECT_EQ(Must(store.GetTask(ready[0].row, false)).worker_id, "");
  // The old lease's "leased" event is written with its name when the lease ends.
  std::vector<NackRequest> nack{
      {leased, LeaseToken(7), Duration(0), std::nullopt, "", false}};
  ASSERT_TRUE(Must(store.Nack(nack, kT0))[0].status.ok());
  TaskRecord t = Must(store.GetTask(leased, false));
  ASSERT_FALSE(t.history.empty());
  EXPECT_EQ(t.history[0].kind, "leased");
  EXPECT_EQ(t.history[0].worker_id, "old-w");
  // A known name is reused, a new one registered; one row per name.
  std::vector<ClaimRequest> claim{{leased, "old-w"}, {ready[0].row, "new-w"}};
  ASSERT_EQ(Must(store.Claim(claim, LeaseToken(8), kT0)).size(), 2u);
  EXPECT_EQ(Must(store.GetTask(ready[0].row, false)).worker_id, "new-w");
  EXPECT_EQ(Must(store.GetTask(leased, false)).worker_id, "old-w");
  EXPECT_EQ(QueryInt(*conn, "SELECT COUNT(*) FROM `" + db + "`.workers"), 2);
}

// A lessee's name registered inside a promotion's transaction is cached only once
// that transaction commits. Here its connection is lost first (killed while it waits
// for a table lock), so the new `workers` row rolls back. The reconnect's own commit
// (Open's migrations) must not cache the id it had: the name would never be
// registered again, and its leases would show no worker.
TEST(MySqlShardStoreTest, ALesseeNameLostWithItsConnectionIsRegisteredAgain) {
  const std::string db = FreshDbName("lostname");
  MySqlShardStore store(testing::SharedMariaDb().endpoint(), db);
  store.SetPolicies(TestPolicies());
  ASSERT_TRUE(store.Open().ok());
  // A lease that will have expired (its promotion writes event rows) and a DELAYED
  // item that will have fallen due, for the promotion's handoff.
  std::vector<NewItem> items{Item("t", 0, kT0), Item("t", 1, kT0 + 1s)};
  std::vector<Inserted> ins = Must(store.Insert(items, kT0));
  std::vector<ClaimRequest> claim{{ins[0].row, "w-old"}};
  ASSERT_EQ(Must(store.Claim(claim, LeaseToken(1), kT0)).size(), 1u);

  std::unique_ptr<DbConnection> locker = RawConnection();
  locker->Execute("USE `" + db + "`");
  locker->Execute("LOCK TABLES task_events WRITE");
  PromoteHandoff handoff = [](std::span<const ItemTransition> due) {
    std::vector<InsertLease> out;
    for (size_t i = 0; i < due.size(); ++i) out.push_back({i, "w-new", LeaseToken(2)});
    return out;
  };
  Result<Promotion> promoted = Status::Internal("not run");
  std::thread promote([&] { promoted = store.PromoteDue(kT0 + 1h, 10, handoff); });
  // The promotion waits for the table lock, "w-new" inserted but not committed: kill
  // its connection (bounded real-time wait for it to reach the lock).
  std::unique_ptr<DbConnection> killer = RawConnection();
  const std::string waiting =
      "SELECT COALESCE(MAX(ID), 0) FROM information_schema.PROCESSLIST WHERE DB = '" +
      db + "' AND STATE LIKE 'Waiting for table%'";
  int64_t waiter = 0;
  auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while ((waiter = QueryInt(*killer, waiting)) == 0 &&
         std::chrono::steady_clock::now() < until) {
    std::this_thread::yield();
  }
  EXPECT_NE(waiter, 0) << "the promotion never waited for the lock";
  if (waiter != 0) killer->Execute("KILL CONNECTION " + std::to_string(waiter));
  locker->Execute("UNLOCK TABLES");
  promote.join();
  EXPECT_EQ(promoted.status().code(), Code::kUnavailable);
  // The killed session holds the shard's ownership lock until MariaDB has ended it, a
  // moment after the KILL; a reconnect before that is refused as "owned by another".
  ASSERT_TRUE(testing::AwaitOwnershipFreed(db));

  // The next calls reconnect; a claim by "w-new" registers the name for real.
  std::vector<NewItem> more{Item("t", 2, kT0)};
  RowId next = Must(store.Insert(more, kT0))[0].row;
  std::vector<ClaimRequest> again{{next, "w-new"}};
  ASSERT_EQ(Must(store.Claim(again, LeaseToken(3), kT0 + 1h)).size(), 1u);
  EXPECT_EQ(Must(store.GetTask(next, false)).worker_id, "w-new");
}

TEST(MySqlShardStoreTest, PurgesDeleteTheHistoryRows) {
  const std::string db = FreshDbName("history");
  MySqlShardStore store(testing::SharedMariaDb().endpoint(), db);
  store.SetPolicies(TestPolicies());
  ASSERT_TRUE(store.Open().ok());
  std::vector<NewItem> items{Item("t", 0, kT0), OneShot(), OneShot(), Item("t", 0, kT0)};
  std::vector<Inserted> ins = Must(store.Insert(items, kT0));
  std::vector<ClaimRequest> claim;
  for (const Inserted& i : ins) claim.push_back({i.row, "w"});
  ASSERT_EQ(Must(store.Claim(claim, LeaseToken(1), kT0)).size(), 4u);
  std::vector<AckRequest> ack{{ins[0].row, LeaseToken(1), ""}};
  ASSERT_TRUE(Must(store.Ack(ack, kT0))[0].status.ok());
  std::vector<NackRequest> nack{
      {ins[1].row, LeaseToken(1), Duration(0), std::nullopt, "", false},
      {ins[2].row, LeaseToken(1), Duration(0), std::nullopt, "", false}};
  ASSERT_EQ(Must(store.Nack(nack, kT0))[1].transition->to, ItemState::kDead);

  std::unique_ptr<DbConnection> conn = RawConnection();
  auto events = [&](RowId row) {
    return QueryInt(*conn,
                    "SELECT COUNT(*) FROM `" + db +
                        "`.task_events WHERE item_id = " + std::to_string(row.value()));
  };
  // An acked delivery keeps its "leased" and "succeeded" events in the row (no
  // event rows); a nacked one writes both.
  EXPECT_EQ(events(ins[0].row), 0);
  EXPECT_EQ(events(ins[1].row), 2);
  ASSERT_EQ(Must(store.PurgeExpired(kT0 + kRetention, 10)).size(), 3u);
  EXPECT_EQ(events(ins[0].row), 0);
  EXPECT_EQ(events(ins[1].row), 0);
  EXPECT_EQ(events(ins[2].row), 0);
  EXPECT_EQ(events(ins[3].row), 0);  // still leased: its "leased" is in the row
  Must(store.PromoteDue(kT0 + kRetention, 10));
  EXPECT_EQ(events(ins[3].row), 2);  // expired: "leased" and "lease_expired" written
  std::vector<RowId> none;
  ASSERT_TRUE(Must(store.Redrive("ns", "t", none, 10, kT0)).transitions.empty());
  // A dead letter purged by PurgeDead takes its history along too.
  std::vector<NewItem> one{OneShot()};
  RowId dead = Must(store.Insert(one, kT0))[0].row;
  std::vector<ClaimRequest> c2{{dead, "w"}};
  ASSERT_EQ(Must(store.Claim(c2, LeaseToken(2), kT0)).size(), 1u);
  std::vector<NackRequest> n2{
      {dead, LeaseToken(2), Duration(0), std::nullopt, "", false}};
  ASSERT_TRUE(Must(store.Nack(n2, kT0))[0].status.ok());
  EXPECT_EQ(events(dead), 2);
  ASSERT_EQ(Must(store.PurgeDead("ns", "t", none, 10)).transitions.size(), 1u);
  EXPECT_EQ(events(dead), 0);
}

// Not a benchmark, a smoke measurement printed for the record: 100 rows of 1 KiB per
// Insert, the shape of the enqueue path's batches.
TEST(MySqlShardStoreTest, InsertOfHundredOneKibRowsTiming) {
  MySqlShardStore store(testing::SharedMariaDb().endpoint(), FreshDbName("timing"));
  ASSERT_TRUE(store.Open().ok());
  std::vector<NewItem> batch;
  for (int i = 0; i < 100; ++i)
    batch.push_back(Item("t", i % 10, kT0, RandomBytes(1024, i)));
  constexpr int kRounds = 30;
  Must(store.Insert(batch, kT0));  // prepares the statement
  auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < kRounds; ++i)
    ASSERT_EQ(Must(store.Insert(batch, kT0)).size(), 100u);
  auto us = std::chrono::duration_cast<std::chrono::microseconds>(
                std::chrono::steady_clock::now() - start)
                .count();
  std::printf("Insert of 100 x 1 KiB rows: %.2f ms per call (%.0f rows/s)\n",
              us / 1000.0 / kRounds, 100.0 * kRounds * 1e6 / us);
  EXPECT_EQ(Must(store.CountByTopic())[0].ready, 100u * (kRounds + 1));
}

}  // namespace
}  // namespace shardq::store
