// The contract of store/store_api.h, run against both stores (typed tests), plus a few
// tests of what only one store has: the memory store's fault injection and the MySQL
// store's recovery after the server is killed.
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
#include <tuple>
#include <vector>

#include "common/clock.h"
#include "common/item.h"
#include "store/memory_store.h"
#include "store/mysql_store.h"
#include "store/store_api.h"
#include "tests/support/mariadb_instance.h"

namespace shardq::store {
namespace {

using namespace std::chrono_literals;

const Time kT0 = FromUnixMillis(1'700'000'000'000);

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
             std::string ns = "ns") {
  NewItem item;
  item.ns = std::move(ns);
  item.topic = std::move(topic);
  item.priority = priority;
  item.payload = std::move(payload);
  item.metadata = "m";
  item.deliver_after = due;
  item.lease = lease;
  item.expires_at = expires_at;
  return item;
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
};

template <typename Env>
class StoreContractTest : public ::testing::Test {
 protected:
  void SetUp() override {
    store_ = env_.Make();
    ASSERT_TRUE(store_->Open().ok());
  }

  ShardStore& store() { return *store_; }

  // "Restarts" the store: a new object on the same database for MySQL (the recovery
  // path); for the memory store, whose data lives in the object, Open() again.
  void Reopen() {
    if constexpr (Env::kSeparateReopen) {
      store_.reset();
      store_ = env_.Make();
    }
    MustOk(store_->Open());
  }

  std::vector<RowId> Insert(std::vector<NewItem> items, Time now = kT0) {
    return Must(store().Insert(items, now));
  }
  RowId InsertOne(NewItem item, Time now = kT0) {
    return Insert({std::move(item)}, now)[0];
  }

  std::vector<LeasedItem> Claim(std::vector<RowId> rows, uint64_t token, Time now = kT0) {
    return Must(store().Claim(rows, LeaseToken(token), now));
  }
  LeasedItem ClaimOne(RowId row, uint64_t token, Time now = kT0) {
    std::vector<LeasedItem> got = Claim({row}, token, now);
    if (got.size() != 1) throw std::runtime_error("claim did not lease the row");
    return got[0];
  }

  ItemOutcome AckOne(RowId row, uint64_t token) {
    std::vector<AckRequest> req{{row, LeaseToken(token)}};
    return Must(store().Ack(req)).at(0);
  }
  ItemOutcome NackOne(RowId row, uint64_t token, Duration delay, Time now,
                      std::optional<std::string> metadata = std::nullopt) {
    std::vector<NackRequest> req{{row, LeaseToken(token), delay, std::move(metadata)}};
    return Must(store().Nack(req, now)).at(0);
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

TYPED_TEST(StoreContractTest, InsertRefusesWhatTheTableCannotHoldAndStoresNothing) {
  Result<std::vector<RowId>> r = this->store().Insert(
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

TYPED_TEST(StoreContractTest, AckDeletesAndReportsTheTransition) {
  RowId id = this->InsertOne(Item("t", 7, kT0));
  this->ClaimOne(id, 11);
  ItemOutcome out = this->AckOne(id, 11);
  EXPECT_TRUE(out.status.ok());
  ASSERT_TRUE(out.transition.has_value());
  EXPECT_EQ(out.transition->row, id);
  EXPECT_EQ(out.transition->ns, "ns");
  EXPECT_EQ(out.transition->topic, "t");
  EXPECT_EQ(out.transition->priority, 7);
  EXPECT_EQ(out.transition->from, ItemState::kLeased);
  EXPECT_EQ(out.transition->to, ItemState::kGone);
  EXPECT_TRUE(Must(this->store().CountByTopic()).empty());
  EXPECT_TRUE(this->Claim({id}, 12).empty());
}

TYPED_TEST(StoreContractTest, AckIsIdempotent) {
  RowId id = this->InsertOne(Item("t", 0, kT0));
  this->ClaimOne(id, 11);
  ASSERT_TRUE(this->AckOne(id, 11).status.ok());
  ItemOutcome again = this->AckOne(id, 11);
  EXPECT_TRUE(again.status.ok());
  EXPECT_FALSE(again.transition.has_value());
  ItemOutcome never = this->AckOne(RowId(424242), 3);
  EXPECT_TRUE(never.status.ok());
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
  std::vector<AckRequest> reqs = {{ids[2], LeaseToken(21)},
                                  {ids[0], LeaseToken(99)},
                                  {RowId(777777), LeaseToken(21)},
                                  {ids[1], LeaseToken(21)},
                                  {ids[2], LeaseToken(21)}};
  std::vector<ItemOutcome> out = Must(this->store().Ack(reqs));
  ASSERT_EQ(out.size(), 5u);
  EXPECT_TRUE(out[0].status.ok());
  ASSERT_TRUE(out[0].transition.has_value());
  EXPECT_EQ(out[0].transition->row, ids[2]);
  EXPECT_EQ(out[1].status.code(), Code::kFailedPrecondition);
  EXPECT_TRUE(out[2].status.ok());
  EXPECT_FALSE(out[2].transition.has_value());
  EXPECT_TRUE(out[3].status.ok());
  ASSERT_TRUE(out[3].transition.has_value());
  EXPECT_EQ(out[3].transition->row, ids[1]);
  EXPECT_TRUE(out[4].status.ok());  // a duplicate of an ack that just succeeded
  EXPECT_FALSE(out[4].transition.has_value());
  EXPECT_EQ(this->Counts("t").leased, 1u);
  EXPECT_TRUE(Must(this->store().Ack({})).empty());
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
  EXPECT_TRUE(Must(this->store().PromoteDue(kT0 + 6s - 1ms, 10)).empty());
  EXPECT_EQ(Must(this->store().PromoteDue(kT0 + 6s, 10)).size(), 1u);
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

  std::vector<NackRequest> reqs = {{id, LeaseToken(2), 0ms, "x"},
                                   {ready, LeaseToken(0), 0ms, std::nullopt},
                                   {RowId(555555), LeaseToken(1), 0ms, std::nullopt},
                                   {id, LeaseToken(1), 1s, std::nullopt},
                                   {id, LeaseToken(1), 0ms, std::nullopt}};
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
  EXPECT_TRUE(Must(this->store().PromoteDue(kT0 + 10s, 10)).empty());
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

// --- PromoteDue ---------------------------------------------------------------------

TYPED_TEST(StoreContractTest, PromoteDueMovesDueDelayedItemsEarliestFirst) {
  std::vector<RowId> ids = this->Insert(
      {Item("t", 0, kT0 + 2s), Item("t", 9, kT0 + 1s), Item("t", 0, kT0 + 10s)});
  std::vector<ItemTransition> moved = Must(this->store().PromoteDue(kT0 + 5s, 10));
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
  EXPECT_TRUE(Must(this->store().PromoteDue(kT0 + 5s, 10)).empty());
}

TYPED_TEST(StoreContractTest, PromoteDueRespectsTheLimitAcrossStates) {
  RowId l1 = this->InsertOne(Item("t", 0, kT0, "p", 3s));  // lease ends kT0+3s
  RowId l2 = this->InsertOne(Item("t", 0, kT0, "p", 8s));  // lease ends kT0+8s
  RowId d1 = this->InsertOne(Item("t", 0, kT0 + 1s));
  RowId d2 = this->InsertOne(Item("t", 0, kT0 + 5s));
  this->Claim({l1, l2}, 1);
  std::vector<ItemTransition> first = Must(this->store().PromoteDue(kT0 + 20s, 2));
  ASSERT_EQ(first.size(), 2u);
  EXPECT_EQ(first[0].row, d1);
  EXPECT_EQ(first[1].row, l1);
  EXPECT_EQ(first[1].from, ItemState::kLeased);
  std::vector<ItemTransition> rest = Must(this->store().PromoteDue(kT0 + 20s, 2));
  ASSERT_EQ(rest.size(), 2u);
  EXPECT_EQ(rest[0].row, d2);
  EXPECT_EQ(rest[1].row, l2);
  EXPECT_TRUE(Must(this->store().PromoteDue(kT0 + 20s, 0)).empty());
}

TYPED_TEST(StoreContractTest, ExpiredLeaseBecomesReadyAndKeepsItsTokenForALateAck) {
  RowId id = this->InsertOne(Item("t", 2, kT0, "p", 30s));
  this->ClaimOne(id, 41);
  EXPECT_TRUE(Must(this->store().PromoteDue(kT0 + 30s - 1ms, 10)).empty());
  std::vector<ItemTransition> moved = Must(this->store().PromoteDue(kT0 + 30s, 10));
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

TYPED_TEST(StoreContractTest, PurgeExpiredDeletesExpiredItemsInAnyState) {
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
  // A purged lease cannot be acked as stale: it is simply gone.
  EXPECT_TRUE(this->AckOne(leased, 5).status.ok());
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

// --- memory store only: fault injection ---------------------------------------------

TEST(MemoryShardStoreTest, FailNextFailsOneCallAndChangesNothing) {
  MemoryShardStore store;
  std::vector<NewItem> items{Item("t", 0, kT0)};
  store.FailNext(MemoryShardStore::Op::kInsert, Status::Unavailable("injected"));
  EXPECT_EQ(store.Insert(items, kT0).status().code(), Code::kUnavailable);
  EXPECT_EQ(store.size(), 0u);
  std::vector<RowId> ids = Must(store.Insert(items, kT0));
  ASSERT_EQ(ids.size(), 1u);

  store.FailNext(MemoryShardStore::Op::kClaim, Status::Internal("boom"));
  EXPECT_EQ(store.Claim(ids, LeaseToken(1), kT0).status().code(), Code::kInternal);
  EXPECT_EQ(Must(store.CountByTopic())[0].ready, 1u);  // other ops unaffected
  EXPECT_EQ(Must(store.Claim(ids, LeaseToken(1), kT0)).size(), 1u);
}

TEST(MemoryShardStoreTest, FailAllFailsEveryCallUntilCleared) {
  MemoryShardStore store;
  RowId id = Must(store.Insert(std::vector<NewItem>{Item("t", 0, kT0)}, kT0))[0];
  store.FailAll(Status::Unavailable("down"));
  EXPECT_EQ(store.Open().code(), Code::kUnavailable);
  EXPECT_EQ(store.Ping().code(), Code::kUnavailable);
  EXPECT_EQ(store.FetchReady("ns", "t", 10).status().code(), Code::kUnavailable);
  std::vector<RowId> rows{id};
  EXPECT_EQ(store.Claim(rows, LeaseToken(1), kT0).status().code(), Code::kUnavailable);
  EXPECT_EQ(store.PromoteDue(kT0, 10).status().code(), Code::kUnavailable);
  EXPECT_EQ(store.NextDue().status().code(), Code::kUnavailable);
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
  std::vector<RowId> ids =
      Must(store.Insert(std::vector<NewItem>{Item("t", 0, kT0), Item("t", 0, kT0)}, kT0));
  std::vector<RowId> first{ids[0]};
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
  std::vector<AckRequest> ack{{ids[0], LeaseToken(8)}};
  EXPECT_TRUE(Must(store.Ack(ack))[0].status.ok());

  // A clean restart too.
  ASSERT_TRUE(db->Stop().ok());
  EXPECT_EQ(store.Ping().code(), Code::kUnavailable);
  ASSERT_TRUE(db->StartAgain().ok());
  EXPECT_EQ(Must(store.FetchReady("ns", "t", 10)).size(), 1u);
}

TEST(MySqlShardStoreTest, RefusesInterleavedAutoincLockMode) {
  auto db = Must(testing::MariaDbInstance::Start({"--innodb-autoinc-lock-mode=2"}));
  MySqlShardStore store(db->endpoint(), "autoinc");
  Status s = store.Open();
  EXPECT_EQ(s.code(), Code::kInternal);
  EXPECT_NE(s.message().find("innodb_autoinc_lock_mode"), std::string::npos)
      << s.message();
  EXPECT_FALSE(store.connected());
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
