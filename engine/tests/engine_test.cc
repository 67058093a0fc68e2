// Engine over MemoryShardStores with a FakeClock: routing and re-routing of enqueues
// under circuit breakers, the global dequeue order, long polls, leases and delays
// driven by the ticker, bounded threads, ack/nack/extend routing, claim failures.
//
// Time only moves through FakeClock::Advance(); the tests never sleep. They wait (with
// a generous real-time bound) for callbacks and for conditions such as ParkedCalls().

#include "engine/engine.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "common/clock.h"
#include "common/ordering.h"
#include "engine/placement.h"
#include "engine/wait_list.h"
#include "store/memory_store.h"
#include "tests/support/new_item.h"

namespace shardq::engine {
namespace {

using shard_worker::BreakerState;
using store::MemoryShardStore;

constexpr auto kRealTimeout = std::chrono::seconds(20);
// For answers that should come at once (inline): failing tests fail fast.
constexpr auto kShortTimeout = std::chrono::seconds(3);
constexpr Duration kLongWait{60'000};

// Holds Insert calls of one store (through MemoryShardStore's hook) until opened.
class InsertGate {
 public:
  void Attach(MemoryShardStore& store) {
    store.SetBeforeCall(MemoryShardStore::Op::kInsert, [this] { Pass(); });
  }
  void Close() {
    std::lock_guard lock(mu_);
    closed_ = true;
  }
  void Open() {
    {
      std::lock_guard lock(mu_);
      closed_ = false;
    }
    cv_.notify_all();
  }
  // True once an Insert is held at the gate.
  bool AwaitHeld() {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, kRealTimeout, [&] { return held_ > 0; });
  }

 private:
  void Pass() {
    std::unique_lock lock(mu_);
    if (!closed_) return;
    ++held_;
    cv_.notify_all();
    cv_.wait(lock, [&] { return !closed_; });
    --held_;
  }
  std::mutex mu_;
  std::condition_variable cv_;
  bool closed_ = false;
  int held_ = 0;
};

// Counts of one topic in a store (empty if the store is set to fail).
store::TopicCounts Counts(MemoryShardStore& m, const std::string& topic) {
  auto all = m.CountByTopic();
  store::TopicCounts out;
  if (!all.ok()) return out;
  for (const auto& c : *all) {
    if (c.topic == topic) out = c;
  }
  return out;
}

using ::shardq::testing::Item;

// Waits (real time, bounded) until pred() holds.
template <typename Pred>
bool WaitUntil(Pred pred, std::chrono::milliseconds timeout = kRealTimeout) {
  auto until = std::chrono::steady_clock::now() + timeout;
  while (!pred()) {
    if (std::chrono::steady_clock::now() >= until) return false;
    std::this_thread::yield();
  }
  return true;
}

// A callback's answer, delivered once; waiting is bounded.
template <typename T>
class Answer {
 public:
  Answer() : state_(std::make_shared<State>()) {}
  std::function<void(T)> Callback() {
    return [s = state_](T value) {
      std::lock_guard lock(s->mu);
      ++s->calls;
      if (!s->value) s->value.emplace(std::move(value));
      s->cv.notify_all();
    };
  }
  // The answer, or nullopt if none came within `timeout`.
  std::optional<T> Get(std::chrono::milliseconds timeout = kRealTimeout) {
    std::unique_lock lock(state_->mu);
    if (!state_->cv.wait_for(lock, timeout, [&] { return state_->value.has_value(); })) {
      return std::nullopt;
    }
    return state_->value;
  }
  bool ready() {
    std::lock_guard lock(state_->mu);
    return state_->value.has_value();
  }
  int calls() {
    std::lock_guard lock(state_->mu);
    return state_->calls;
  }

 private:
  struct State {
    std::mutex mu;
    std::condition_variable cv;
    std::optional<T> value;
    int calls = 0;
  };
  std::shared_ptr<State> state_;
};

using EnqueueAnswer = Answer<std::vector<Result<EnqueueOutcome>>>;
using DequeueAnswer = Answer<std::vector<Delivered>>;
using StatusesAnswer = Answer<std::vector<Status>>;
using ExtendAnswer = Answer<std::vector<Result<ExtendOutcome>>>;

// A ShardStore that forwards to a MemoryShardStore it does not own, so a test can
// read the store after the engine is gone.
class StoreRef final : public store::ShardStore {
 public:
  explicit StoreRef(MemoryShardStore& m) : m_(m) {}
  void SetPolicies(NamespacePolicies p) override { m_.SetPolicies(std::move(p)); }
  Status Open() override { return m_.Open(); }
  Status Ping() override { return m_.Ping(); }
  Result<store::Written> Write(const store::Writes& w, Time now) override {
    return m_.Write(w, now);
  }
  Result<std::vector<ReadyKey>> FetchReady(const std::string& ns,
                                           const std::string& topic,
                                           size_t limit) override {
    return m_.FetchReady(ns, topic, limit);
  }
  Result<std::vector<LeasedItem>> Claim(std::span<const store::ClaimRequest> rows,
                                        LeaseToken token, Time now) override {
    return m_.Claim(rows, token, now);
  }
  Result<store::Promotion> PromoteDue(Time now, size_t limit,
                                      const store::PromoteHandoff& handoff,
                                      const store::Lookahead& look) override {
    return m_.PromoteDue(now, limit, handoff, look);
  }
  Result<std::vector<ItemTransition>> PurgeExpired(Time now, size_t limit) override {
    return m_.PurgeExpired(now, limit);
  }
  Result<std::optional<Time>> NextDue() override { return m_.NextDue(); }
  Result<std::vector<std::pair<LeaseToken, RowId>>> LeasedRowsOf(
      std::span<const LeaseToken> tokens) override {
    return m_.LeasedRowsOf(tokens);
  }
  Result<std::vector<store::TopicCounts>> CountByTopic() override {
    return m_.CountByTopic();
  }
  Result<store::TaskRecord> GetTask(RowId row, bool include_payload) override {
    return m_.GetTask(row, include_payload);
  }
  Result<store::ItemOutcome> Cancel(RowId row, Time now) override {
    return m_.Cancel(row, now);
  }
  Result<std::vector<store::TaskRecord>> ListDead(const std::string& ns,
                                                  const std::string& topic,
                                                  size_t limit) override {
    return m_.ListDead(ns, topic, limit);
  }
  Result<BulkOutcome> Redrive(const std::string& ns, const std::string& topic,
                              std::span<const RowId> rows, size_t limit,
                              Time now) override {
    return m_.Redrive(ns, topic, rows, limit, now);
  }
  Result<BulkOutcome> PurgeDead(const std::string& ns, const std::string& topic,
                                std::span<const RowId> rows, size_t limit) override {
    return m_.PurgeDead(ns, topic, rows, limit);
  }

 private:
  MemoryShardStore& m_;
};

// An engine over `ids.size()` MemoryShardStores, started and open. The clock and the
// stores outlive it.
class Harness {
 public:
  explicit Harness(std::vector<uint32_t> ids, EngineOptions options = DefaultOptions()) {
    std::vector<ShardSpec> specs;
    for (uint32_t id : ids) {
      auto& s = stores_[id];
      s = std::make_unique<MemoryShardStore>();
      gates_[id].Attach(*s);
      specs.push_back({ShardId(id), std::make_unique<StoreRef>(*s)});
    }
    engine_ = std::make_unique<Engine>(std::move(specs), clock_, options);
    engine_->Start();
    EXPECT_TRUE(engine_->AwaitShardsOpen(kRealTimeout));
  }
  ~Harness() { engine_.reset(); }
  // Destroys the engine (shutting it down); the stores stay readable.
  void DestroyEngine() { engine_.reset(); }

  static EngineOptions DefaultOptions() {
    EngineOptions o;
    o.io_threads = 2;
    return o;
  }

  Engine& engine() { return *engine_; }
  FakeClock& clock() { return clock_; }
  // Moves the clock, a placement slot at a time, until unkeyed enqueues of namespace
  // "ns" start at the shard in `position` (engine/placement.h).
  void AdvanceToSlotOf(size_t position) {
    for (int i = 0; i < 1000; ++i) {
      if (SlotPosition("ns", ToUnixMillis(clock_.Now()), stores_.size()) == position)
        return;
      clock_.Advance(kPlacementSlot);
    }
    ADD_FAILURE() << "no slot of position " << position;
  }
  MemoryShardStore& store(uint32_t id) { return *stores_.at(id); }
  InsertGate& gate(uint32_t id) { return gates_.at(id); }

  std::vector<Result<ItemId>> Enqueue(std::vector<NewItem> items) {
    size_t n = items.size();
    EnqueueAnswer a;
    engine_->Enqueue(std::move(items), a.Callback());
    auto got = a.Get();
    if (!got) {
      ADD_FAILURE() << "enqueue got no answer";
      return {};
    }
    EXPECT_EQ(got->size(), n);
    return Ids(*got);
  }
  // The ids of enqueue outcomes (errors stay errors).
  static std::vector<Result<ItemId>> Ids(const std::vector<Result<EnqueueOutcome>>& got) {
    std::vector<Result<ItemId>> out;
    for (const auto& r : got) {
      if (r.ok()) {
        out.emplace_back(r->id);
      } else {
        out.emplace_back(r.status());
      }
    }
    return out;
  }
  // One item; fails the test if it was not stored.
  ItemId EnqueueOk(NewItem item) {
    auto r = Enqueue({std::move(item)});
    if (r.size() != 1 || !r[0].ok()) {
      ADD_FAILURE() << "enqueue failed: " << (r.empty() ? "" : r[0].status().ToString());
      return {};
    }
    return *r[0];
  }
  std::vector<Delivered> Dequeue(std::vector<TopicAsk> asks,
                                 Duration wait = Duration(0)) {
    DequeueAnswer a;
    // The caller keeps the handle until the answer (as the frontend's reactor does).
    auto handle =
        engine_->Dequeue("ns", std::move(asks), wait, "test-worker", a.Callback());
    auto got = a.Get();
    if (!got) {
      ADD_FAILURE() << "dequeue got no answer";
      handle->Cancel();
      return {};
    }
    return *got;
  }
  std::vector<Delivered> Dequeue(const std::string& topic, size_t count,
                                 Duration wait = Duration(0)) {
    return Dequeue({{topic, count}}, wait);
  }
  std::vector<Status> Ack(std::vector<LeaseOp> ops) {
    StatusesAnswer a;
    engine_->Ack(std::move(ops), a.Callback());
    auto got = a.Get();
    if (!got) ADD_FAILURE() << "ack got no answer";
    return got.value_or(std::vector<Status>{});
  }
  std::vector<Status> Nack(std::vector<NackOp> ops) {
    StatusesAnswer a;
    engine_->Nack(std::move(ops), a.Callback());
    auto got = a.Get();
    if (!got) ADD_FAILURE() << "nack got no answer";
    return got.value_or(std::vector<Status>{});
  }
  std::vector<Result<Time>> Extend(std::vector<ExtendOp> ops) {
    ExtendAnswer a;
    engine_->Extend(std::move(ops), a.Callback());
    auto got = a.Get();
    if (!got) {
      ADD_FAILURE() << "extend got no answer";
      return {};
    }
    std::vector<Result<Time>> out;
    for (const auto& r : *got) {
      if (r.ok()) {
        out.emplace_back(r->deadline);
      } else {
        out.emplace_back(r.status());
      }
    }
    return out;
  }
  BreakerState Breaker(size_t position) { return engine_->Health().at(position).breaker; }

 private:
  FakeClock clock_;
  std::map<uint32_t, std::unique_ptr<MemoryShardStore>> stores_;  // outlive engine_
  std::map<uint32_t, InsertGate> gates_;  // before engine_: strands may be in Pass()
  std::unique_ptr<Engine> engine_;
};

EngineOptions BreakerOptions(size_t min_samples, double ratio) {
  EngineOptions o = Harness::DefaultOptions();
  o.worker.breaker.min_samples = min_samples;
  o.worker.breaker.failure_ratio = ratio;
  o.worker.breaker.cooldown = Duration(500);
  o.worker.breaker.window = Duration(10'000);
  return o;
}

// ------------------------------------------------------------ circuit breaker

TEST(EngineBreakerTest, FailingShardIsSkippedUntilItsProbeSucceeds) {
  Harness h({1, 2}, BreakerOptions(2, 0.5));
  MemoryShardStore& a = h.store(1);  // position 0
  MemoryShardStore& b = h.store(2);  // position 1
  a.FailAll(Status::Unavailable("shard A is down"));
  h.AdvanceToSlotOf(0);  // every call tries A first

  int failures = 0, successes_after_open = 0;
  bool opened = false;
  for (int i = 0; i < 40; ++i) {
    auto r = h.Enqueue({Item("t")});
    ASSERT_EQ(r.size(), 1u);
    if (!opened) {
      if (!r[0].ok()) {
        // Only an insert that A attempted fails; B is healthy.
        EXPECT_EQ(r[0].status().code(), Code::kUnavailable);
        ++failures;
      } else {
        EXPECT_EQ(r[0]->shard, ShardId(2));
      }
      opened = h.Breaker(0) == BreakerState::kOpen;
      continue;
    }
    // Once A's breaker is open, every call succeeds and lands on B.
    ASSERT_TRUE(r[0].ok()) << r[0].status().ToString();
    EXPECT_EQ(r[0]->shard, ShardId(2));
    ++successes_after_open;
  }
  ASSERT_TRUE(opened);
  // Start-up promotions and the first purge may add a few good samples before the
  // trip (min_samples 2, ratio 0.5): a handful of failures, not dozens.
  EXPECT_LE(failures, 4);
  EXPECT_GT(successes_after_open, 30);
  auto health = h.engine().Health();
  EXPECT_EQ(health[0].id, ShardId(1));
  EXPECT_EQ(health[0].breaker, BreakerState::kOpen);
  EXPECT_FALSE(health[0].last_error.empty());
  EXPECT_EQ(health[1].breaker, BreakerState::kClosed);
  EXPECT_EQ(a.size(), 0u);
  EXPECT_EQ(b.size(), 40u - static_cast<size_t>(failures));

  // A recovers; nothing happens until the cool-down passes on the fake clock.
  a.ClearFailures();
  EXPECT_EQ(h.Breaker(0), BreakerState::kOpen);
  h.clock().Advance(Duration(500));  // the jump pokes the ticker: the probe runs
  ASSERT_TRUE(WaitUntil([&] { return h.Breaker(0) == BreakerState::kClosed; }));

  // Placement again: calls in A's slots reach A, calls in B's reach B.
  for (size_t position : {0, 1, 0, 1}) {
    h.AdvanceToSlotOf(position);
    EXPECT_EQ(h.EnqueueOk(Item("t")).shard, ShardId(position == 0 ? 1 : 2));
  }
  EXPECT_EQ(a.size(), 2u);
}

// Readiness, which the gRPC health service reports: not before every shard has tried
// to open, then for as long as one shard is up; each change told once, in order.
TEST(EngineBreakerTest, ReadyOnceEveryShardTriedAndWhileOneIsUp) {
  FakeClock clock;
  auto a = std::make_unique<MemoryShardStore>();
  auto b = std::make_unique<MemoryShardStore>();
  MemoryShardStore* down = a.get();
  MemoryShardStore* up = b.get();
  down->FailAll(Status::Unavailable("A is down"));
  std::mutex mu;
  std::vector<bool> told;
  auto last_told = [&]() -> std::optional<bool> {
    std::lock_guard lock(mu);
    if (told.empty()) return std::nullopt;
    return told.back();
  };
  EngineOptions options = BreakerOptions(2, 0.5);
  options.on_readiness = [&](bool ready) {
    std::lock_guard lock(mu);
    told.push_back(ready);
  };
  std::vector<ShardSpec> specs;
  specs.push_back({ShardId(1), std::move(a)});
  specs.push_back({ShardId(2), std::move(b)});
  Engine engine(std::move(specs), clock, options);
  EXPECT_FALSE(engine.Ready()) << "not started";

  engine.Start();
  ASSERT_TRUE(WaitUntil([&] { return last_told() == true; }));
  EXPECT_TRUE(engine.Ready());
  std::vector<shard_worker::ShardHealth> health = engine.Health();
  EXPECT_FALSE(health[0].open);
  EXPECT_FALSE(health[0].starting) << "its first open failed: done trying";
  EXPECT_TRUE(health[1].open);

  // The last shard that was up goes down: its breaker trips under traffic.
  up->FailAll(Status::Unavailable("B is down too"));
  for (int i = 0; i < 20 && engine.Health()[1].breaker == BreakerState::kClosed; ++i) {
    EnqueueAnswer answer;
    engine.Enqueue({Item("t")}, answer.Callback());
    ASSERT_TRUE(answer.Get().has_value());
  }
  // The strand that tripped the breaker tells the engine right after.
  ASSERT_TRUE(WaitUntil([&] { return last_told() == false; }));
  EXPECT_FALSE(engine.Ready());

  // A comes back: its probe after the cool-down makes the server ready again.
  down->ClearFailures();
  clock.Advance(Duration(500));
  ASSERT_TRUE(WaitUntil([&] { return last_told() == true; }));
  std::lock_guard lock(mu);
  EXPECT_EQ(told, (std::vector<bool>{true, false, true}));
}

TEST(EngineBreakerTest, NoShardAvailableIsUnavailable) {
  Harness h({1, 2}, BreakerOptions(2, 0.5));
  h.store(1).FailAll(Status::Unavailable("down"));
  h.store(2).FailAll(Status::Unavailable("down"));
  bool saw_no_shard = false;
  for (int i = 0; i < 20 && !saw_no_shard; ++i) {
    auto r = h.Enqueue({Item("t"), Item("t")});
    ASSERT_EQ(r.size(), 2u);
    for (const auto& x : r) {
      ASSERT_FALSE(x.ok());
      EXPECT_EQ(x.status().code(), Code::kUnavailable);
    }
    if (r[0].status().message().find("no shard is available") != std::string::npos) {
      saw_no_shard = true;
      EXPECT_EQ(r[1].status(), r[0].status());
    }
  }
  EXPECT_TRUE(saw_no_shard);
  EXPECT_EQ(h.Breaker(0), BreakerState::kOpen);
  EXPECT_EQ(h.Breaker(1), BreakerState::kOpen);
  // Once both are open, the answer comes without any store call: at once, every time.
  auto r = h.Enqueue({Item("t")});
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].status().code(), Code::kUnavailable);
  EXPECT_NE(r[0].status().message().find("no shard is available"), std::string::npos);
  EXPECT_EQ(h.store(1).size() + h.store(2).size(), 0u);
}

TEST(EngineBreakerTest, ReroutedEnqueuesAreNotStoredTwice) {
  // One failure opens the breaker.
  Harness h({1, 2}, BreakerOptions(1, 0.25));
  MemoryShardStore& a = h.store(1);
  MemoryShardStore& b = h.store(2);
  h.AdvanceToSlotOf(0);  // every call tries A first

  // Hold A's strand inside its first insert, so later calls for A queue up behind it
  // while A still looks healthy.
  h.gate(1).Close();
  std::vector<EnqueueAnswer> answers(10);
  h.engine().Enqueue({Item("t", 0, Time{}, Duration(30'000), "item-0")},
                     answers[0].Callback());
  ASSERT_TRUE(h.gate(1).AwaitHeld());
  for (int i = 1; i < 10; ++i) {
    h.engine().Enqueue(
        {Item("t", 0, Time{}, Duration(30'000), "item-" + std::to_string(i))},
        answers[i].Callback());
  }
  EXPECT_EQ(h.Breaker(0), BreakerState::kClosed);
  // The held insert fails: A's breaker opens; the calls queued behind it were never
  // attempted there and go to B.
  a.FailAll(Status::Unavailable("A lost its connection"));
  h.gate(1).Open();

  int ok = 0;
  std::set<ItemId> ids;
  for (int i = 0; i < 10; ++i) {
    auto got = answers[i].Get();
    std::optional<std::vector<Result<ItemId>>> r;
    if (got) r = Harness::Ids(*got);
    ASSERT_TRUE(r.has_value()) << i;
    ASSERT_EQ(r->size(), 1u);
    if (i == 0) {
      // Attempted on A and failed: the caller is told (no silent retry elsewhere).
      EXPECT_EQ((*r)[0].status().code(), Code::kUnavailable);
      continue;
    }
    ASSERT_TRUE((*r)[0].ok()) << i << ": " << (*r)[0].status().ToString();
    EXPECT_EQ((*r)[0]->shard, ShardId(2)) << i;
    ids.insert(*(*r)[0]);
    ++ok;
    EXPECT_EQ(answers[i].calls(), 1);
  }
  EXPECT_EQ(ok, 9);
  EXPECT_EQ(ids.size(), 9u);
  EXPECT_EQ(h.Breaker(0), BreakerState::kOpen);
  // Every successful enqueue is stored exactly once, across both shards.
  a.ClearFailures();
  store::TopicCounts ca = Counts(a, "t");
  store::TopicCounts cb = Counts(b, "t");
  EXPECT_EQ(ca.ready + ca.delayed + ca.leased + cb.ready + cb.delayed + cb.leased,
            static_cast<uint64_t>(ok));
  EXPECT_EQ(a.size() + b.size(), static_cast<size_t>(ok));
  // And each payload once.
  auto got = h.Dequeue("t", 100);
  std::multiset<std::string> payloads;
  for (const auto& d : got) payloads.insert(d.item.payload);
  EXPECT_EQ(payloads.size(), 9u);
  EXPECT_EQ(std::set<std::string>(payloads.begin(), payloads.end()).size(), 9u);
  EXPECT_EQ(payloads.count("item-0"), 0u);
}

// ------------------------------------------------------------ dequeue order

// One Dequeue answers at most kMaxItemsPerDequeue items over all its topics (the
// answer must fit one gRPC message), serving the topics in request order.
TEST(EngineDequeueTest, ACallGetsAtMostItsTotalLimitOverAllTopics) {
  EngineOptions options = Harness::DefaultOptions();
  options.window_capacity = 2048;  // all of each topic in memory
  Harness h({1}, options);
  // Load both topics' windows (empty, complete), so what is enqueued next is in them.
  EXPECT_TRUE(h.Dequeue("a", 1).empty());
  EXPECT_TRUE(h.Dequeue("b", 1).empty());
  for (const std::string topic : {"a", "b"}) {
    std::vector<NewItem> items;
    for (int i = 0; i < 600; ++i) items.push_back(Item(topic, 0));
    for (const auto& r : h.Enqueue(std::move(items))) ASSERT_TRUE(r.ok());
  }
  std::vector<Delivered> got = h.Dequeue({{"a", 1000}, {"b", 1000}});
  ASSERT_EQ(got.size(), kMaxItemsPerDequeue);
  std::map<std::string, size_t> per_topic;
  for (const Delivered& d : got) ++per_topic[d.item.topic];
  EXPECT_EQ(per_topic["a"], 600u);
  EXPECT_EQ(per_topic["b"], 400u);
  EXPECT_EQ(h.Dequeue("b", 1000).size(), 200u) << "the rest stayed ready";
}

// Dequeues of ever new topic names must not grow the index for good: a topic with
// nothing on any shard leaves it at the next sweep; one with items stays.
TEST(EngineDequeueTest, TopicsThatNeverHadItemsLeaveTheIndexAtASweep) {
  Harness h({1, 2});
  h.EnqueueOk(Item("kept", 0));
  for (int i = 0; i < 50; ++i)
    EXPECT_TRUE(h.Dequeue("new-" + std::to_string(i), 1).empty());
  EXPECT_EQ(h.engine().IndexedTopics(), 51u);
  // A Dequeue answers before the first refill of a new topic's windows is back, and a
  // topic with a refill on its way is not idle yet: it goes at a later sweep.
  EXPECT_TRUE(WaitUntil([&] {
    if (h.engine().IndexedTopics() == 1) return true;
    h.clock().Advance(EngineOptions{}.index_sweep_interval);
    return false;
  })) << h.engine().IndexedTopics()
      << " topics indexed";
  ASSERT_EQ(h.Dequeue("kept", 1).size(), 1u);
  EXPECT_TRUE(h.Dequeue("new-0", 1).empty()) << "recreated on use";
}

TEST(EngineDequeueTest, GlobalOrderAcrossFourShards) {
  Harness h({1, 2, 3, 4});
  std::mt19937 rng(12345);
  Time now = h.clock().Now();
  std::vector<OrderKey> expected;
  std::set<ItemId> others;
  for (int i = 0; i < 120; ++i) {
    int32_t priority = static_cast<int32_t>(rng() % 4);
    Time due = now - Duration(rng() % 3);  // ties on both keys are common
    if (i % 10 == 9) {
      // Some calls carry several items (one shard, one transaction).
      auto r = h.Enqueue({Item("orders", priority, due), Item("orders", priority, due)});
      ASSERT_EQ(r.size(), 2u);
      for (const auto& x : r) {
        ASSERT_TRUE(x.ok());
        expected.push_back({priority, due, *x});
      }
    } else {
      ItemId id = h.EnqueueOk(Item("orders", priority, due));
      expected.push_back({priority, due, id});
    }
    if (i % 4 == 0) others.insert(h.EnqueueOk(Item("other", 0)));
    h.clock().Advance(kPlacementSlot);  // the next call may go to another shard
  }
  std::sort(expected.begin(), expected.end());
  std::set<ShardId> shards_used;
  for (const auto& k : expected) shards_used.insert(k.id.shard);
  EXPECT_EQ(shards_used.size(), 4u);

  std::vector<OrderKey> got;
  for (int call = 0; call < 100; ++call) {
    auto d = h.Dequeue("orders", 7);
    size_t remaining = expected.size() - got.size();
    EXPECT_EQ(d.size(), std::min<size_t>(7, remaining)) << "call " << call;
    if (d.empty()) break;
    for (const Delivered& x : d) {
      EXPECT_EQ(x.item.topic, "orders");
      EXPECT_EQ(x.item.attempts, 1u);
      got.push_back({x.item.priority, x.item.deliver_after, x.id()});
    }
  }
  ASSERT_EQ(got.size(), expected.size());
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i], expected[i]) << "position " << i;
  }

  // The other topic was untouched; one call can ask for several topics.
  auto infos = h.engine().ActiveTopics("ns");
  std::map<std::string, prefetch::StateCounts> counts;
  for (const auto& ti : infos) counts[ti.topic] = ti.counts;
  EXPECT_EQ(counts["orders"].leased, static_cast<int64_t>(expected.size()));
  EXPECT_EQ(counts["orders"].ready, 0);
  EXPECT_EQ(counts["other"].ready, static_cast<int64_t>(others.size()));
  auto mixed = h.Dequeue({{"orders", 5}, {"other", 2}});
  ASSERT_EQ(mixed.size(), 2u);
  for (const auto& x : mixed) {
    EXPECT_EQ(x.item.topic, "other");
    EXPECT_TRUE(others.contains(x.id()));
  }
  EXPECT_TRUE(h.Dequeue("nothing-here", 3).empty());
}

// ------------------------------------------------------------ long polls

TEST(EngineLongPollTest, ParkedCallIsWokenByEnqueue) {
  Harness h({1, 2});
  DequeueAnswer a;
  auto handle =
      h.engine().Dequeue("ns", {{"lp", 5}}, kLongWait, "test-worker", a.Callback());
  ASSERT_TRUE(WaitUntil([&] { return h.engine().ParkedCalls() == 1; }));
  EXPECT_FALSE(a.ready());
  ItemId id = h.EnqueueOk(Item("lp", 0, Time{}, Duration(30'000), "hello"));
  auto got = a.Get();
  ASSERT_TRUE(got.has_value());
  ASSERT_EQ(got->size(), 1u);
  EXPECT_EQ((*got)[0].id(), id);
  EXPECT_EQ((*got)[0].item.payload, "hello");
  EXPECT_TRUE(WaitUntil([&] { return h.engine().ParkedCalls() == 0; }));
  EXPECT_EQ(a.calls(), 1);
}

TEST(EngineLongPollTest, WaitExpiresWhenTheFakeClockPassesIt) {
  Harness h({1, 2});
  ASSERT_TRUE(h.Dequeue("exp", 1).empty());  // loads the (empty) windows
  DequeueAnswer a;
  auto handle = h.engine().Dequeue("ns", {{"exp", 1}}, Duration(2'000), "test-worker",
                                   a.Callback());
  ASSERT_TRUE(WaitUntil([&] { return h.engine().ParkedCalls() == 1; }));
  h.clock().Advance(Duration(1'999));
  EXPECT_FALSE(a.ready());
  EXPECT_EQ(h.engine().ParkedCalls(), 1);
  h.clock().Advance(Duration(1));
  auto got = a.Get();
  ASSERT_TRUE(got.has_value());
  EXPECT_TRUE(got->empty());
  EXPECT_TRUE(WaitUntil([&] { return h.engine().ParkedCalls() == 0; }));
  EXPECT_EQ(a.calls(), 1);
}

TEST(EngineLongPollTest, CancelAnswersAtOnce) {
  Harness h({1, 2});
  DequeueAnswer a;
  auto handle =
      h.engine().Dequeue("ns", {{"c", 1}}, kLongWait, "test-worker", a.Callback());
  ASSERT_TRUE(WaitUntil([&] { return h.engine().ParkedCalls() == 1; }));
  handle->Cancel();
  ASSERT_TRUE(a.ready());  // inline, on the cancelling thread
  EXPECT_TRUE(a.Get()->empty());
  EXPECT_EQ(h.engine().ParkedCalls(), 0);
  handle->Cancel();  // harmless
  // An item arriving later does not answer the call again.
  h.EnqueueOk(Item("c"));
  EXPECT_EQ(h.Dequeue("c", 1).size(), 1u);
  EXPECT_EQ(a.calls(), 1);
}

// A parked call whose handle the caller dropped is still answered: the handle is for
// cancelling (engine.h), and `done` is the only way the caller learns the outcome.
TEST(EngineLongPollTest, DroppedHandleStillAnswers) {
  Harness h({1, 2});
  ASSERT_TRUE(h.Dequeue("d", 1).empty());  // loads the (empty) windows
  DequeueAnswer a;
  h.engine().Dequeue("ns", {{"d", 1}}, kLongWait, "test-worker",
                     a.Callback());  // handle dropped
  ASSERT_TRUE(WaitUntil([&] { return h.engine().ParkedCalls() == 1; }));
  ItemId id = h.EnqueueOk(Item("d"));
  auto got = a.Get(kShortTimeout);
  ASSERT_TRUE(got.has_value()) << "the call vanished with its handle";
  ASSERT_EQ(got->size(), 1u);
  EXPECT_EQ((*got)[0].id(), id);
  EXPECT_TRUE(WaitUntil([&] { return h.engine().ParkedCalls() == 0; }));
}

TEST(EngineLongPollTest, ShutdownAnswersParkedCalls) {
  Harness h({1, 2});
  ASSERT_TRUE(h.Dequeue("s", 1).empty());  // loads the (empty) windows
  DequeueAnswer a;
  auto handle =
      h.engine().Dequeue("ns", {{"s", 1}}, kLongWait, "test-worker", a.Callback());
  ASSERT_TRUE(WaitUntil([&] { return h.engine().ParkedCalls() == 1; }));
  h.engine().Shutdown();
  auto got = a.Get(kShortTimeout);
  EXPECT_TRUE(got.has_value()) << "Shutdown() did not answer the parked call";
  if (got) {
    EXPECT_TRUE(got->empty());
  }
  EXPECT_EQ(h.engine().ParkedCalls(), 0);
  handle->Cancel();  // (so that a failing run does not leave it parked)
}

TEST(EngineLongPollTest, NoNewLongPollsAfterShutdown) {
  // engine.h: Shutdown() "answers every parked long poll ... and stops taking new ones".
  Harness h({1, 2});
  ASSERT_TRUE(h.Dequeue("s", 1).empty());
  h.engine().Shutdown();
  DequeueAnswer a;
  auto handle =
      h.engine().Dequeue("ns", {{"s", 1}}, kLongWait, "test-worker", a.Callback());
  auto got = a.Get(kShortTimeout);
  EXPECT_TRUE(got.has_value()) << "a long poll after Shutdown() was parked";
  EXPECT_EQ(h.engine().ParkedCalls(), 0);
  handle->Cancel();
}

// A WaitList entry is expired with its own deadline, and a call goes by that, not by
// a second read of the clock: a wall clock stepped back after the ticker read it would
// make the call's only entry (gone from the list) look early, and the call would
// never end.
TEST(EngineLongPollTest, AnEntryIsExpiredWithItsOwnDeadline) {
  struct Recorder final : Expirable {
    std::vector<std::pair<Time, bool>> got;
    void Expire(Time deadline, bool forced) override {
      got.emplace_back(deadline, forced);
    }
  };
  auto r = std::make_shared<Recorder>();
  WaitList waits;
  const Time t0 = FromUnixMillis(1'000);
  for (int ms : {5, 9, 20}) waits.Add(t0 + Duration(ms), r);
  EXPECT_EQ(waits.Tick(t0 + Duration(10)), Duration(10));
  using Got = std::vector<std::pair<Time, bool>>;
  EXPECT_EQ(r->got, (Got{{t0 + Duration(5), false}, {t0 + Duration(9), false}}));
  waits.ExpireAll();
  EXPECT_EQ(r->got.back(), std::make_pair(t0 + Duration(20), true));
}

TEST(EngineLongPollTest, AWaitEndsByItsEntrysDeadlineWhateverTheClockReadsThen) {
  Harness h({1});
  ASSERT_TRUE(h.Dequeue("w", 1).empty());  // loads the (empty) window
  DequeueAnswer a;
  const Time deadline = h.clock().Now() + Duration(2'000);
  auto handle =
      h.engine().Dequeue("ns", {{"w", 1}}, Duration(2'000), "test-worker", a.Callback());
  ASSERT_TRUE(WaitUntil([&] { return h.engine().ParkedCalls() == 1; }));
  auto entry = std::dynamic_pointer_cast<Expirable>(handle);
  ASSERT_NE(entry, nullptr);
  entry->Expire(deadline - Duration(1), /*forced=*/false);  // an older entry: stale
  EXPECT_FALSE(a.ready());
  entry->Expire(deadline, /*forced=*/false);  // the clock reads 2 s before it
  ASSERT_TRUE(a.ready());
  EXPECT_TRUE(a.Get()->empty());
  EXPECT_EQ(h.engine().ParkedCalls(), 0);
}

// ------------------------------------------------------------ leases and delays

TEST(EngineTimeTest, ExpiredLeaseIsRedeliveredThroughTheTicker) {
  Harness h({1, 2});
  ItemId id = h.EnqueueOk(Item("lease", 0, Time{}, Duration(1'000)));
  Time t0 = h.clock().Now();
  auto first = h.Dequeue("lease", 1);
  ASSERT_EQ(first.size(), 1u);
  EXPECT_EQ(first[0].id(), id);
  EXPECT_EQ(first[0].item.attempts, 1u);
  EXPECT_EQ(first[0].item.lease_deadline, t0 + Duration(1'000));

  h.clock().Advance(Duration(999));
  EXPECT_TRUE(h.Dequeue("lease", 1).empty());
  EXPECT_EQ(Counts(h.store(id.shard.value()), "lease").leased, 1u);

  h.clock().Advance(Duration(1));
  // The ticker promotes the expired lease; the long poll is woken by it.
  auto second = h.Dequeue("lease", 1, kLongWait);
  ASSERT_EQ(second.size(), 1u);
  EXPECT_EQ(second[0].id(), id);
  EXPECT_EQ(second[0].item.attempts, 2u);
  EXPECT_NE(second[0].item.token, first[0].item.token);
  EXPECT_EQ(second[0].item.lease_deadline, t0 + Duration(2'000));

  // The first consumer's token is stale now; the second one's works.
  auto acks = h.Ack({{id, first[0].item.token}, {id, second[0].item.token}});
  ASSERT_EQ(acks.size(), 2u);
  EXPECT_EQ(acks[0].code(), Code::kFailedPrecondition);
  EXPECT_TRUE(acks[1].ok()) << acks[1].ToString();
  EXPECT_EQ(Counts(h.store(id.shard.value()), "lease").succeeded, 1u);
}

TEST(EngineTimeTest, DelayedItemBecomesReadyExactlyAtItsTime) {
  Harness h({1, 2});
  Time due = h.clock().Now() + Duration(500);
  ItemId id = h.EnqueueOk(Item("later", 3, due));
  auto infos = h.engine().ActiveTopics("ns");
  ASSERT_EQ(infos.size(), 1u);
  EXPECT_EQ(infos[0].counts.delayed, 1);

  EXPECT_TRUE(h.Dequeue("later", 1).empty());
  h.clock().Advance(Duration(499));
  EXPECT_TRUE(h.Dequeue("later", 1).empty());
  EXPECT_EQ(Counts(h.store(id.shard.value()), "later").delayed, 1u);

  h.clock().Advance(Duration(1));
  auto got = h.Dequeue("later", 1, kLongWait);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].id(), id);
  EXPECT_EQ(got[0].item.deliver_after, due);
  EXPECT_EQ(got[0].item.priority, 3);
}

// ------------------------------------------------------------ the release lead

// What the store holds about `id` (a default record, and a failure, if nothing).
store::TaskRecord TaskOf(MemoryShardStore& m, ItemId id) {
  auto t = m.GetTask(id.row, false);
  if (!t.ok()) {
    ADD_FAILURE() << t.status().ToString();
    return {};
  }
  return *t;
}

// A dedup key that places its item on the shard in `position` of an engine of `shards`
// shards (engine/placement.h); `prefix` keeps keys apart.
std::string KeyAt(size_t position, size_t shards, const std::string& prefix) {
  for (int i = 0;; ++i) {
    std::string key = prefix + std::to_string(i);
    if (KeyPosition("ns", key, shards) == position) return key;
  }
}

// An item for the shard in `position` of `h`'s engine (a dedup key that places it).
NewItem ItemAt(Harness& h, size_t position, NewItem item) {
  static std::atomic<int> next{0};
  item.dedup_key = KeyAt(position, h.engine().shard_count(),
                         "at-" + std::to_string(next.fetch_add(1)) + "-");
  return item;
}

// An engine whose first shard's claims have each taken 10 ms (of the fake clock), so
// that shard releases delayed items a lead ahead of their due time
// (release_schedule.h). The other shards, if any, have no lead.
class LeadHarness : public Harness {
 public:
  explicit LeadHarness(std::vector<uint32_t> ids = {1}, EngineOptions options = Options())
      : Harness(ids, options) {
    store(ids[0]).SetBeforeCall(MemoryShardStore::Op::kClaim,
                                [this] { clock().Advance(Duration(10)); });
    for (int i = 0; i < 20; ++i) {
      EnqueueOk(ItemAt(*this, 0, Item("warm-up")));
      EXPECT_EQ(Dequeue("warm-up", 1).size(), 1u);
    }
    store(ids[0]).SetBeforeCall(MemoryShardStore::Op::kClaim, {});
    lead_ = engine().Health().at(0).release_lead;
  }
  static EngineOptions Options() {
    EngineOptions o = DefaultOptions();
    o.worker.max_release_lead = Duration(20);
    return o;
  }
  Duration lead() const { return lead_; }
  // Parks a long poll on `topic` for an item due at `due`, and moves the clock to a
  // millisecond before `due`: the item is released and leased (from `due`) meanwhile.
  // `answered_at`, if given, gets the clock's time when the call is answered.
  std::shared_ptr<Engine::DequeueHandle> ParkAndLeaseEarly(
      const std::string& topic, Time due, DequeueAnswer& a,
      std::atomic<Time>* answered_at = nullptr) {
    EXPECT_TRUE(Dequeue(topic, 1).empty());  // loads the (empty) window
    auto handle = engine().Dequeue(
        "ns", {{topic, 1}}, kLongWait, "test-worker",
        [this, answered_at, done = a.Callback()](std::vector<Delivered> got) {
          if (answered_at) answered_at->store(clock().Now());
          done(std::move(got));
        });
    EXPECT_TRUE(WaitUntil([&] { return engine().ParkedCalls() == 1; }));
    clock().Advance(due - Duration(1) - clock().Now());
    EXPECT_TRUE(WaitUntil([&] { return Counts(store(1), topic).leased == 1; }));
    return handle;
  }
  // A one-attempt item of "later", due 500 ms from now (`*due`), leased early to a
  // parked call whose answer `a` is now held.
  std::shared_ptr<Engine::DequeueHandle> HoldOneAttemptItem(DequeueAnswer& a, ItemId* id,
                                                            Time* due) {
    EXPECT_GE(lead(), Duration(2));
    *due = clock().Now() + Duration(500);
    NewItem item = Item("later", 3, *due);
    item.max_attempts = 1;
    *id = EnqueueOk(std::move(item));
    return ParkAndLeaseEarly("later", *due, a);
  }

 private:
  Duration lead_{};
};

// A lease given back by a held call: the item is in `state` again (DELAYED until `due`
// if that is still to come, READY otherwise), with its own due time `due` (so its place
// in the order), its attempt not counted, its last event "undelivered".
void ExpectGivenBack(Harness& h, ItemId id, Time due, ItemState state) {
  ASSERT_TRUE(WaitUntil([&] {
    store::TaskRecord t = TaskOf(h.store(id.shard.value()), id);
    return !t.history.empty() && t.history.back().kind == "undelivered";
  }));
  store::TaskRecord t = TaskOf(h.store(id.shard.value()), id);
  EXPECT_EQ(t.state, state);
  EXPECT_EQ(t.deliver_after, due);
  EXPECT_EQ(t.attempts, 0u);
}

// The same, and then the item is released again after the gap that follows its first
// release (5 ms by default) and delivered as its first attempt.
void ExpectGivenBackThenDelivered(LeadHarness& h, const std::string& topic, ItemId id,
                                  Time due) {
  ExpectGivenBack(h, id, due, ItemState::kDelayed);
  h.clock().Advance(due + Duration(5) - h.clock().Now());
  auto again = h.Dequeue(topic, 1, kLongWait);
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0].id(), id);
  EXPECT_EQ(again[0].item.attempts, 1u);
}

// Moves the clock to `due`, when the held answer `a` must come, carrying `ids` in that
// order.
void ExpectAnsweredAt(LeadHarness& h, DequeueAnswer& a, Time due,
                      const std::vector<ItemId>& ids) {
  h.clock().Advance(due - h.clock().Now());
  auto got = a.Get();
  ASSERT_TRUE(got.has_value());
  std::vector<ItemId> got_ids;
  for (const Delivered& d : *got) got_ids.push_back(d.id());
  EXPECT_EQ(got_ids, ids);
}

// ------------------------------------------------------------ calls that end early

// A call cancelled while its claim is in flight (the worker gave up on that call at
// its deadline, say) gives the claimed item back when the claim lands: nobody reads
// its answer. The attempt does not count, so an item of one attempt is not
// dead-lettered.
TEST(EngineCancelTest, ACallCancelledWhileItsClaimIsInFlightGivesTheItemBack) {
  std::atomic<bool> entered{false}, go{false};  // outlive h: its store's hook uses them
  Harness h({1});
  const Time due = h.clock().Now();
  NewItem item = Item("c", 0, due);
  item.max_attempts = 1;
  const ItemId id = h.EnqueueOk(std::move(item));
  h.store(1).SetBeforeCall(MemoryShardStore::Op::kClaim, [&] {
    entered = true;
    WaitUntil([&] { return go.load(); });
  });
  DequeueAnswer a;
  auto handle =
      h.engine().Dequeue("ns", {{"c", 1}}, kLongWait, "test-worker", a.Callback());
  ASSERT_TRUE(WaitUntil([&] { return entered.load(); }));
  handle->Cancel();
  go = true;
  auto got = a.Get();
  ASSERT_TRUE(got.has_value());
  EXPECT_TRUE(got->empty());
  ExpectGivenBack(h, id, due, ItemState::kReady);
  h.store(1).SetBeforeCall(MemoryShardStore::Op::kClaim, {});
  auto again = h.Dequeue("c", 1, kLongWait);  // the give-back reaches the index
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0].id(), id);
  EXPECT_EQ(again[0].item.attempts, 1u);
}

// The same for a parked call handed an item in its insert's transaction: cancelled
// while that insert is in flight, it gives the item back when the insert lands.
TEST(EngineCancelTest, ACallCancelledWhileAHandoffIsInFlightGivesTheItemBack) {
  Harness h({1});
  ASSERT_TRUE(h.Dequeue("c", 1).empty());  // loads the (empty) window
  DequeueAnswer a;
  auto handle =
      h.engine().Dequeue("ns", {{"c", 1}}, kLongWait, "test-worker", a.Callback());
  ASSERT_TRUE(WaitUntil([&] { return h.engine().ParkedCalls() == 1; }));
  h.gate(1).Close();
  const Time due = h.clock().Now();
  NewItem item = Item("c", 0, due);
  item.max_attempts = 1;
  EnqueueAnswer enqueued;
  h.engine().Enqueue({std::move(item)}, enqueued.Callback());
  ASSERT_TRUE(h.gate(1).AwaitHeld());  // the handoff was offered before the insert
  handle->Cancel();
  EXPECT_FALSE(a.ready());  // the insert in flight answers it
  h.gate(1).Open();
  auto got = a.Get();
  ASSERT_TRUE(got.has_value());
  EXPECT_TRUE(got->empty());
  auto ids = Harness::Ids(enqueued.Get().value_or(std::vector<Result<EnqueueOutcome>>{}));
  ASSERT_EQ(ids.size(), 1u);
  ASSERT_TRUE(ids[0].ok());
  ExpectGivenBack(h, *ids[0], due, ItemState::kReady);
  auto again = h.Dequeue("c", 1, kLongWait);  // the give-back reaches the index
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0].id(), *ids[0]);
  EXPECT_EQ(again[0].item.attempts, 1u);
}

// ------------------------------------------------------------ held answers

TEST(EngineLeadTest, TheLeadFollowsTheClaimsLatency) {
  LeadHarness h;
  // Ten milliseconds a claim, steady: the bound settles on it as the deviation fades.
  EXPECT_GE(h.lead(), Duration(10));
  EXPECT_LE(h.lead(), Duration(11));
}

// Released a lead early, the item is leased from its due time, and the call's answer
// is held until then: no delivery before the due time, and the whole lease after it.
TEST(EngineLeadTest, AnItemClaimedAheadIsAnsweredAtItsDueTime) {
  LeadHarness h;
  ASSERT_GE(h.lead(), Duration(2));
  const Time due = h.clock().Now() + Duration(500);
  const ItemId id = h.EnqueueOk(Item("later", 3, due, Duration(30'000)));
  DequeueAnswer a;
  std::atomic<Time> answered_at{};
  auto handle = h.ParkAndLeaseEarly("later", due, a, &answered_at);
  EXPECT_FALSE(a.ready());
  store::TaskRecord t = TaskOf(h.store(1), id);
  EXPECT_EQ(t.state, ItemState::kLeased);
  EXPECT_EQ(t.first_delivered_at, due);

  h.clock().Advance(Duration(1));
  auto got = a.Get();
  ASSERT_TRUE(got.has_value());
  ASSERT_EQ(got->size(), 1u);
  EXPECT_EQ((*got)[0].id(), id);
  EXPECT_EQ((*got)[0].item.deliver_after, due);
  EXPECT_EQ((*got)[0].item.lease_deadline, due + Duration(30'000));
  EXPECT_EQ(answered_at.load(), due);  // not a millisecond before
  EXPECT_TRUE(h.Ack({{id, (*got)[0].item.token}})[0].ok());
}

// A call that ends while it holds its answer gives the lease back, and the item stays
// DELAYED until its due time, its attempt not counted (an item of one attempt is not
// dead-lettered); then it is delivered as usual.
TEST(EngineLeadTest, ACallCancelledWhileHoldingGivesTheItemBackUntilItsDueTime) {
  LeadHarness h;
  DequeueAnswer a;
  ItemId id;
  Time due{};
  auto handle = h.HoldOneAttemptItem(a, &id, &due);
  handle->Cancel();
  auto got = a.Get(kShortTimeout);
  ASSERT_TRUE(got.has_value());
  EXPECT_TRUE(got->empty());
  ExpectGivenBackThenDelivered(h, "later", id, due);
}

TEST(EngineLeadTest, ShutdownWhileHoldingGivesTheItemBack) {
  LeadHarness h;
  DequeueAnswer a;
  ItemId id;
  Time due{};
  auto handle = h.HoldOneAttemptItem(a, &id, &due);
  h.engine().Shutdown();
  auto got = a.Get(kShortTimeout);
  ASSERT_TRUE(got.has_value());
  EXPECT_TRUE(got->empty());
  ExpectGivenBack(h, id, due, ItemState::kDelayed);
}

// A call held at shutdown gives its lease back even when the engine is destroyed at
// once and the shard's strand is still in another turn: the engine lets its workers
// run what is queued before it destroys them, which drops what is queued behind a turn.
TEST(EngineLeadTest, DestroyingTheEngineAtShutdownStillWritesTheGiveBack) {
  LeadHarness h;
  DequeueAnswer a;
  ItemId id;
  Time due{};
  auto handle = h.HoldOneAttemptItem(a, &id, &due);

  h.gate(1).Close();  // the strand's next turn waits in its insert
  std::thread enqueue([&] { h.Enqueue({Item("other")}); });
  ASSERT_TRUE(h.gate(1).AwaitHeld());
  h.engine().Shutdown();  // the give-back's nack queues behind that turn
  std::thread destroy([&] { h.DestroyEngine(); });
  h.gate(1).Open();
  destroy.join();
  enqueue.join();
  handle.reset();

  auto got = a.Get(kShortTimeout);
  ASSERT_TRUE(got.has_value());
  EXPECT_TRUE(got->empty());
  ExpectGivenBack(h, id, due, ItemState::kDelayed);
}

// An item of priority 1 in `topic`, due 500 ms from now, released ahead of that: the
// clock is left 8 ms before its due time (`*due`), within the shard's lead.
ItemId ReleasedAhead(LeadHarness& h, const std::string& topic, Time* due) {
  EXPECT_GE(h.lead(), Duration(9));
  EXPECT_TRUE(h.Dequeue(topic, 1).empty());  // loads the (empty) window
  *due = h.clock().Now() + Duration(500);
  const ItemId id = h.EnqueueOk(ItemAt(h, 0, Item(topic, 1, *due)));
  h.clock().Advance(*due - Duration(8) - h.clock().Now());
  // In the window, not only counted READY (which comes a moment before).
  EXPECT_TRUE(WaitUntil([&] { return h.engine().WindowedKeys("ns", topic) == 1; }));
  return id;
}

// One call gets an item released ahead of its due time and a due one, whose lease
// started at its claim. Holding the answer runs that lease; when the hold would spend
// more than half of it (here 8 of 5 ms), the call does not hold: it answers the due
// item at once, with its lease still running, and gives the other back DELAYED until
// its due time, its attempt not counted.
TEST(EngineLeadTest, AHoldThatWouldSpendADueItemsLeaseAnswersTheDueItemAtOnce) {
  LeadHarness h;
  Time due{};
  const ItemId later = ReleasedAhead(h, "mixed", &due);
  const ItemId short_lease = h.EnqueueOk(Item("mixed", 5, Time{}, Duration(5)));

  auto got = h.Dequeue("mixed", 2);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].id(), short_lease);
  EXPECT_EQ(got[0].item.lease_deadline, h.clock().Now() + Duration(5));
  ExpectGivenBack(h, later, due, ItemState::kDelayed);
}

// The same answer with a lease that outlasts the hold is held until the item not yet
// due is due, and then carries both.
TEST(EngineLeadTest, AHoldThatLeavesMostOfTheDueItemsLeaseAnswersBothAtTheDueTime) {
  LeadHarness h;
  Time due{};
  const ItemId later = ReleasedAhead(h, "mixed", &due);
  const ItemId now_due = h.EnqueueOk(Item("mixed", 5, Time{}, Duration(1'000)));

  DequeueAnswer a;
  auto handle =
      h.engine().Dequeue("ns", {{"mixed", 2}}, Duration(0), "test-worker", a.Callback());
  ASSERT_TRUE(WaitUntil([&] { return Counts(h.store(1), "mixed").leased == 2; }));
  EXPECT_FALSE(a.ready());
  ExpectAnsweredAt(h, a, due, {later, now_due});
}

// A LeadHarness with a call of `count` items of "rank" that holds the item
// ReleasedAhead (priority 1, `held`) and nothing else: its answer `a` waits until
// `due`.
struct HeldCall {
  explicit HeldCall(size_t count, EngineOptions options = LeadHarness::Options())
      : h({1}, options) {
    held = ReleasedAhead(h, "rank", &due);
    handle = h.engine().Dequeue("ns", {{"rank", count}}, kLongWait, "test-worker",
                                a.Callback());
    EXPECT_TRUE(WaitUntil([&] { return Counts(h.store(1), "rank").leased == 1; }));
    EXPECT_FALSE(a.ready());
  }
  LeadHarness h;
  DequeueAnswer a;
  ItemId held;
  Time due{};
  std::shared_ptr<Engine::DequeueHandle> handle;
};

// A better item that becomes ready while a call holds its answer is claimed for that
// answer (guarantee 4 when the answer is sent). With no room for both, the held item
// goes back DELAYED until its due time, its attempt not counted, and the call, now
// holding nothing that is not due, answers at once.
TEST(EngineLeadTest, AHeldAnswerTakesABetterItemThatBecomesReadyInsteadOfAWorseOne) {
  HeldCall c(1);
  const ItemId better = c.h.EnqueueOk(Item("rank", 0));

  auto got = c.a.Get();
  ASSERT_TRUE(got.has_value());
  ASSERT_EQ(got->size(), 1u);
  EXPECT_EQ((*got)[0].id(), better);
  EXPECT_LT(c.h.clock().Now(), c.due);
  ExpectGivenBackThenDelivered(c.h, "rank", c.held, c.due);
}

// With room in the ask, the better item joins the held one: both at the due time,
// best first.
TEST(EngineLeadTest, AHeldAnswerWithRoomAddsTheBetterItemInOrder) {
  HeldCall c(2);
  const ItemId better = c.h.EnqueueOk(Item("rank", 0));
  ASSERT_TRUE(WaitUntil([&] { return Counts(c.h.store(1), "rank").leased == 2; }));
  // The claim is committed; an enqueue's later turn on the same strand waits for its
  // callback too. (A hold that ended before would answer without the item.)
  c.h.EnqueueOk(Item("barrier"));
  EXPECT_FALSE(c.a.ready());
  // Registered once, though it looked again when its claims landed (each entry would
  // be a wake, and a look, at every event of the topic).
  EXPECT_EQ(c.h.engine().WaiterEntries("ns", "rank"), 1u);
  ExpectAnsweredAt(c.h, c.a, c.due, {better, c.held});
}

// The hold ends while the better item's claim is in flight (the claim takes 10 ms, the
// hold 8, and it waits for the answer): the answer goes at the end of the hold
// without it, and the better item, which nobody got, goes back READY in its place,
// its attempt not counted.
TEST(EngineLeadTest, AHoldEndsOnTimeAndGivesBackWhatItsClaimBringsLate) {
  HeldCall c(2);
  c.h.store(1).SetBeforeCall(MemoryShardStore::Op::kClaim, [&c] {
    c.h.clock().Advance(Duration(10));
    EXPECT_TRUE(WaitUntil([&c] { return c.a.ready(); }));
  });
  const Time its_due = c.h.clock().Now();
  const ItemId better = c.h.EnqueueOk(Item("rank", 0, its_due));

  auto got = c.a.Get();
  ASSERT_TRUE(got.has_value());
  ASSERT_EQ(got->size(), 1u);
  EXPECT_EQ((*got)[0].id(), c.held);
  ExpectGivenBack(c.h, better, its_due, ItemState::kReady);
  c.h.store(1).SetBeforeCall(MemoryShardStore::Op::kClaim, {});  // it uses c.a
}

// A due item that the answer already held is displaced by a better one too: it goes
// back READY with its own due time, so it keeps its place, its attempt not counted.
TEST(EngineLeadTest, ADueItemDisplacedFromAHeldAnswerKeepsItsPlace) {
  LeadHarness h;
  Time due{};
  const ItemId later = ReleasedAhead(h, "rank", &due);
  const Time its_due = h.clock().Now();
  const ItemId now_due = h.EnqueueOk(Item("rank", 5, its_due));
  DequeueAnswer a;
  auto handle =
      h.engine().Dequeue("ns", {{"rank", 2}}, kLongWait, "test-worker", a.Callback());
  ASSERT_TRUE(WaitUntil([&] { return Counts(h.store(1), "rank").leased == 2; }));

  const ItemId better = h.EnqueueOk(Item("rank", 0));
  ExpectGivenBack(h, now_due, its_due, ItemState::kReady);
  ExpectAnsweredAt(h, a, due, {better, later});
}

// An item released while the call holds, due before the end of the hold with a lease
// the rest of the hold would more than half spend (2 ms, from its due time 2 ms before
// the end), is given back DELAYED until its due time; the hold goes on.
TEST(EngineLeadTest, AHeldAnswerGivesBackAnItemWhoseLeaseTheHoldWouldSpend) {
  HeldCall c(2);
  const Time short_due = c.due - Duration(2);
  const ItemId short_lease = c.h.EnqueueOk(Item("rank", 0, short_due, Duration(2)));
  c.h.clock().Advance(Duration(5));  // the release gap after the held item's release
  ExpectGivenBack(c.h, short_lease, short_due, ItemState::kDelayed);
  EXPECT_FALSE(c.a.ready());
  ExpectAnsweredAt(c.h, c.a, c.due, {c.held});
}

// With no release gap, the item given back is released again at once, and is still
// due before the end of the hold with too short a lease: the call passes over it
// instead of claiming it and giving it back again until the hold ends.
TEST(EngineLeadTest, AHeldAnswerDoesNotTakeAgainAnItemItGaveBackForItsLease) {
  EngineOptions no_gap = LeadHarness::Options();
  no_gap.worker.release_gap = Duration(0);
  HeldCall c(2, no_gap);
  const Time short_due = c.due - Duration(2);
  const ItemId short_lease = c.h.EnqueueOk(Item("rank", 0, short_due, Duration(2)));
  ExpectGivenBack(c.h, short_lease, short_due, ItemState::kDelayed);
  // Released again: in the window, where the holder leaves it.
  ASSERT_TRUE(WaitUntil([&] { return c.h.engine().WindowedKeys("ns", "rank") == 1; }));
  c.h.EnqueueOk(Item("barrier"));  // the shard's strand has run what was queued
  const auto history = TaskOf(c.h.store(1), short_lease).history;
  ASSERT_EQ(history.size(), 2u);  // leased once, given back once
  EXPECT_EQ(history[0].kind, "leased");
  EXPECT_EQ(history[1].kind, "undelivered");
  ExpectAnsweredAt(c.h, c.a, c.due, {c.held});
}

// The same item with a lease of 4 ms keeps half of it (2 ms) when the hold ends,
// counted from its due time, not from its claim: the answer carries it.
TEST(EngineLeadTest, AHeldAnswerKeepsAnItemWithHalfItsLeaseLeftAtTheEnd) {
  HeldCall c(2);
  const ItemId four_ms = c.h.EnqueueOk(Item("rank", 0, c.due - Duration(2), Duration(4)));
  c.h.clock().Advance(Duration(5));  // the release gap after the held item's release
  ASSERT_TRUE(WaitUntil([&] { return Counts(c.h.store(1), "rank").leased == 2; }));
  c.h.EnqueueOk(Item("barrier"));  // as in AHeldAnswerWithRoomAddsTheBetterItemInOrder
  ExpectAnsweredAt(c.h, c.a, c.due, {four_ms, c.held});
}

// A look that claims on two shards, and the hold ends after one claim landed and
// before the other did: the answer is what was ranked and checked (the held items and
// one that came before), and both items of that look go back READY, their attempts
// not counted. Shard 3's claim holds the look back until both items are in.
TEST(EngineLeadTest, AHoldThatEndsBetweenTwoClaimsOfALookAnswersOnlyWhatWasChecked) {
  LeadHarness h({1, 2, 3});
  ASSERT_TRUE(h.Dequeue({{"a", 1}, {"b", 1}}).empty());  // loads the windows
  const Time due = h.clock().Now() + Duration(500);
  const ItemId held_a = h.EnqueueOk(ItemAt(h, 0, Item("a", 1, due)));
  const ItemId held_b = h.EnqueueOk(ItemAt(h, 0, Item("b", 1, due)));
  h.clock().Advance(due - Duration(8) - h.clock().Now());
  ASSERT_TRUE(WaitUntil([&] {
    return h.engine().WindowedKeys("ns", "a") == 1 &&
           h.engine().WindowedKeys("ns", "b") == 1;
  }));
  DequeueAnswer a;
  auto handle = h.engine().Dequeue("ns", {{"a", 3}, {"b", 3}}, kLongWait, "test-worker",
                                   a.Callback());
  ASSERT_TRUE(WaitUntil([&] { return Counts(h.store(1), "a").leased == 1; }));
  ASSERT_TRUE(WaitUntil([&] { return Counts(h.store(1), "b").leased == 1; }));

  std::atomic<bool> go{false};
  h.store(3).SetBeforeCall(MemoryShardStore::Op::kClaim,
                           [&] { EXPECT_TRUE(WaitUntil([&] { return go.load(); })); });
  const Time now = h.clock().Now();
  const ItemId first = h.EnqueueOk(ItemAt(h, 2, Item("a", 0, now)));  // its claim waits
  const ItemId better_a = h.EnqueueOk(ItemAt(h, 0, Item("a", 0, now)));
  const ItemId better_b = h.EnqueueOk(ItemAt(h, 1, Item("b", 0, now)));
  // Shard 2's claim lets shard 1's land (an enqueue behind it on the same strand),
  // then ends the hold and waits for the answer.
  h.store(2).SetBeforeCall(MemoryShardStore::Op::kClaim, [&] {
    EXPECT_TRUE(WaitUntil([&] { return Counts(h.store(1), "a").leased == 2; }));
    h.EnqueueOk(ItemAt(h, 0, Item("barrier")));
    h.clock().Advance(due - h.clock().Now());
    EXPECT_TRUE(WaitUntil([&] { return a.ready(); }));
  });
  go = true;

  auto got = a.Get();
  ASSERT_TRUE(got.has_value());
  std::vector<ItemId> ids;
  for (const Delivered& d : *got) ids.push_back(d.id());
  EXPECT_EQ(ids, (std::vector<ItemId>{first, held_a, held_b}));
  ExpectGivenBack(h, better_a, now, ItemState::kReady);
  ExpectGivenBack(h, better_b, now, ItemState::kReady);
  // The hooks use this test's locals, which go before the engine.
  h.store(2).SetBeforeCall(MemoryShardStore::Op::kClaim, {});
  h.store(3).SetBeforeCall(MemoryShardStore::Op::kClaim, {});
}

// An item that ranks after the held one is not an inversion: the answer is the held
// item alone, at its due time, and the other stays READY.
TEST(EngineLeadTest, AHeldAnswerLeavesAWorseItemThatBecameReady) {
  HeldCall c(2);
  c.h.EnqueueOk(Item("rank", 5));
  ASSERT_TRUE(WaitUntil([&] { return c.h.engine().WindowedKeys("ns", "rank") == 1; }));
  ExpectAnsweredAt(c.h, c.a, c.due, {c.held});
  EXPECT_EQ(Counts(c.h.store(1), "rank").ready, 1u);
}

// The better item's lease starts at its claim. When the rest of the hold would spend
// more than half of it (8 of 5 ms), the call does not go on holding: it answers the
// better item at once and gives the held one back, as when its hold begins.
TEST(EngineLeadTest, AHeldAnswerThatTakesAShortLeaseAnswersItAtOnce) {
  HeldCall c(2);
  const ItemId better = c.h.EnqueueOk(Item("rank", 0, Time{}, Duration(5)));

  auto got = c.a.Get();
  ASSERT_TRUE(got.has_value());
  ASSERT_EQ(got->size(), 1u);
  EXPECT_EQ((*got)[0].id(), better);
  EXPECT_EQ((*got)[0].item.lease_deadline, c.h.clock().Now() + Duration(5));
  ExpectGivenBack(c.h, c.held, c.due, ItemState::kDelayed);
}

// ------------------------------------------------------------ direct handoff

// A parked call is handed the best item of an enqueue batch in the insert's own
// transaction: no claim. The item then lives as any lease (expiry, tokens).
TEST(EngineHandoffTest, ParkedCallGetsTheBatchsBestItemWithoutAClaim) {
  Harness h({1});
  ASSERT_TRUE(h.Dequeue("h", 1).empty());  // loads the (empty) window
  // Two parked calls, one item each: the first to come gets the best item.
  DequeueAnswer a, b;
  auto handle_a =
      h.engine().Dequeue("ns", {{"h", 1}}, kLongWait, "worker-a", a.Callback());
  ASSERT_TRUE(WaitUntil([&] { return h.engine().ParkedCalls() == 1; }));
  auto handle_b =
      h.engine().Dequeue("ns", {{"h", 1}}, kLongWait, "worker-b", b.Callback());
  ASSERT_TRUE(WaitUntil([&] { return h.engine().ParkedCalls() == 2; }));
  const Time t0 = h.clock().Now();
  auto ids = h.Enqueue({Item("h", 5, Time{}, Duration(1'000), "p5"),
                        Item("h", 1, Time{}, Duration(1'000), "p1"),
                        Item("h", 3, Time{}, Duration(1'000), "p3")});
  ASSERT_EQ(ids.size(), 3u);
  auto got = a.Get();
  ASSERT_TRUE(got.has_value());
  ASSERT_EQ(got->size(), 1u);
  const Delivered handed = (*got)[0];
  EXPECT_EQ(handed.id(), *ids[1]);
  EXPECT_EQ(handed.item.payload, "p1");
  EXPECT_EQ(handed.item.attempts, 1u);
  EXPECT_EQ(handed.item.lease_deadline, t0 + Duration(1'000));
  auto got_b = b.Get();
  ASSERT_TRUE(got_b.has_value());
  ASSERT_EQ(got_b->size(), 1u);
  EXPECT_EQ((*got_b)[0].id(), *ids[2]);
  EXPECT_NE((*got_b)[0].item.token, handed.item.token);
  EXPECT_EQ(h.store(1).calls(MemoryShardStore::Op::kClaim), 0u);
  store::TopicCounts c = Counts(h.store(1), "h");
  EXPECT_EQ(std::make_tuple(c.ready, c.leased), std::make_tuple(1u, 2u));
  EXPECT_EQ(h.engine().ActiveTopics("ns").at(0).counts.leased, 2);
  EXPECT_EQ(h.store(1).GetTask(ids[2]->row, false)->worker_id, "worker-b");

  // The rest went READY.
  auto rest = h.Dequeue("h", 5);
  ASSERT_EQ(rest.size(), 1u);
  EXPECT_EQ(rest[0].item.payload, "p5");
  // The handed lease expires on time and the item comes back; its old token is stale.
  h.clock().Advance(Duration(1'000));
  auto again = h.Dequeue("h", 1, kLongWait);
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0].id(), handed.id());
  EXPECT_EQ(again[0].item.attempts, 2u);
  auto acks =
      h.Ack({{handed.id(), handed.item.token}, {handed.id(), again[0].item.token}});
  ASSERT_EQ(acks.size(), 2u);
  EXPECT_EQ(acks[0].code(), Code::kFailedPrecondition);
  EXPECT_TRUE(acks[1].ok()) << acks[1].ToString();
}

// A parked call is handed the best item that falls due in the promotion's own
// transaction: no claim.
TEST(EngineHandoffTest, ParkedCallGetsTheBestItemFallingDueWithoutAClaim) {
  Harness h({1});
  ASSERT_TRUE(h.Dequeue("d", 1).empty());  // loads the (empty) window
  const Time t0 = h.clock().Now();
  auto ids = h.Enqueue({Item("d", 4, t0 + Duration(500), Duration(1'000), "p4"),
                        Item("d", 2, t0 + Duration(500), Duration(1'000), "p2"),
                        Item("d", 0, t0 + Duration(900), Duration(1'000), "later")});
  ASSERT_EQ(ids.size(), 3u);
  DequeueAnswer a;
  auto handle = h.engine().Dequeue("ns", {{"d", 1}}, kLongWait, "worker-a", a.Callback());
  ASSERT_TRUE(WaitUntil([&] { return h.engine().ParkedCalls() == 1; }));
  EXPECT_FALSE(a.ready());

  h.clock().Advance(Duration(500));
  auto got = a.Get();
  ASSERT_TRUE(got.has_value());
  ASSERT_EQ(got->size(), 1u);
  const Delivered handed = (*got)[0];
  EXPECT_EQ(handed.id(), *ids[1]);  // the better of the two that fell due
  EXPECT_EQ(handed.item.payload, "p2");
  EXPECT_EQ(handed.item.attempts, 1u);
  EXPECT_EQ(handed.item.deliver_after, t0 + Duration(500));
  EXPECT_EQ(handed.item.lease_deadline, t0 + Duration(1'500));
  EXPECT_EQ(h.store(1).calls(MemoryShardStore::Op::kClaim), 0u);
  EXPECT_EQ(h.store(1).GetTask(ids[1]->row, false)->worker_id, "worker-a");
  store::TopicCounts c = Counts(h.store(1), "d");
  EXPECT_EQ(std::make_tuple(c.delayed, c.ready, c.leased), std::make_tuple(1u, 1u, 1u));
  EXPECT_EQ(h.engine().ActiveTopics("ns").at(0).counts.leased, 1);

  // The other one went READY; the handed lease acks with its token.
  auto rest = h.Dequeue("d", 5);
  ASSERT_EQ(rest.size(), 1u);
  EXPECT_EQ(rest[0].item.payload, "p4");
  auto acks = h.Ack({{handed.id(), handed.item.token}});
  ASSERT_EQ(acks.size(), 1u);
  EXPECT_TRUE(acks[0].ok()) << acks[0].ToString();
}

// An insert whose answer was lost may have leased its item to a parked call in the
// INSERT itself, and the call was handed nothing: after its resync the shard finds
// the row by the lease's token and gives the lease back, and the call gets the item
// as its first attempt, even if that look fails once. The producer's retry is
// deduplicated to that row.
TEST(EngineHandoffTest, AnInsertsHandoffWhoseAnswerWasLostIsGivenBack) {
  Harness h({1});
  ASSERT_TRUE(h.Dequeue("h", 1).empty());  // loads the (empty) window
  DequeueAnswer a;
  auto handle = h.engine().Dequeue("ns", {{"h", 1}}, kLongWait, "worker-a", a.Callback());
  ASSERT_TRUE(WaitUntil([&] { return h.engine().ParkedCalls() == 1; }));
  h.store(1).LoseNextReply(MemoryShardStore::Op::kInsert);
  // The first look for the lease's row fails too (the outage goes on): it is asked
  // again after the next resync.
  h.store(1).FailNext(MemoryShardStore::Op::kLeasedRowsOf,
                      Status::Unavailable("connection lost"));
  NewItem item = Item("h", 0, h.clock().Now());
  item.max_attempts = 1;
  item.dedup_key = "lost";
  auto lost = h.Enqueue({item});
  ASSERT_EQ(lost.size(), 1u);
  EXPECT_EQ(lost[0].status().code(), Code::kUnavailable);
  auto got = a.Get();
  ASSERT_TRUE(got.has_value());
  ASSERT_EQ(got->size(), 1u);
  EXPECT_EQ((*got)[0].item.attempts, 1u);
  std::vector<std::string> kinds;
  for (const auto& e : TaskOf(h.store(1), (*got)[0].id()).history)
    kinds.push_back(e.kind);
  // Leased in the lost insert, given back, leased by the call's claim.
  EXPECT_EQ(kinds, (std::vector<std::string>{"leased", "undelivered", "leased"}));
  EXPECT_EQ(h.store(1).calls(MemoryShardStore::Op::kLeasedRowsOf), 2u);
  auto retry = h.Enqueue({item});
  ASSERT_EQ(retry.size(), 1u);
  ASSERT_TRUE(retry[0].ok()) << retry[0].status().ToString();
  EXPECT_EQ(*retry[0], (*got)[0].id());
}

// A promotion whose answer was lost (the connection died after its COMMIT) may have
// leased a falling-due item to a parked call, which was handed nothing: the shard
// gives that lease back after its resync, and the call gets the item as its first
// attempt (an item of one attempt is not dead-lettered by a lease nobody had).
TEST(EngineHandoffTest, APromotionsHandoffWhoseAnswerWasLostIsGivenBack) {
  Harness h({1});
  ASSERT_TRUE(h.Dequeue("d", 1).empty());  // loads the (empty) window
  const Time due = h.clock().Now() + Duration(500);
  NewItem item = Item("d", 0, due, Duration(1'000));
  item.max_attempts = 1;
  const ItemId id = h.EnqueueOk(std::move(item));
  DequeueAnswer a;
  auto handle = h.engine().Dequeue("ns", {{"d", 1}}, kLongWait, "worker-a", a.Callback());
  ASSERT_TRUE(WaitUntil([&] { return h.engine().ParkedCalls() == 1; }));
  h.store(1).LoseNextReply(MemoryShardStore::Op::kPromoteDue);
  h.clock().Advance(Duration(500));
  auto got = a.Get();
  ASSERT_TRUE(got.has_value());
  ASSERT_EQ(got->size(), 1u);
  EXPECT_EQ((*got)[0].id(), id);
  EXPECT_EQ((*got)[0].item.attempts, 1u);
  EXPECT_EQ((*got)[0].item.deliver_after, due);
  std::vector<std::string> kinds;
  for (const auto& e : TaskOf(h.store(1), id).history) kinds.push_back(e.kind);
  // Leased in the lost promotion, given back, leased by the call's claim.
  EXPECT_EQ(kinds, (std::vector<std::string>{"leased", "undelivered", "leased"}));
}

// A promotion that fails is retried, and the parked call gets the item then. (The
// memory store fails before it asks the handoff; a failure after the offers is
// shard_worker/tests/handoff_test.cc's.)
TEST(EngineHandoffTest, FailedPromotionIsRetriedAndTheParkedCallGetsTheItem) {
  Harness h({1});
  ASSERT_TRUE(h.Dequeue("g", 1).empty());
  const Time t0 = h.clock().Now();
  ItemId id = h.EnqueueOk(Item("g", 0, t0 + Duration(500), Duration(1'000), "due"));
  DequeueAnswer a;
  auto handle = h.engine().Dequeue("ns", {{"g", 1}}, kLongWait, "worker-a", a.Callback());
  ASSERT_TRUE(WaitUntil([&] { return h.engine().ParkedCalls() == 1; }));
  const size_t promotions = h.store(1).calls(MemoryShardStore::Op::kPromoteDue);
  h.store(1).FailNext(MemoryShardStore::Op::kPromoteDue,
                      Status::Internal("disk on fire"));
  h.clock().Advance(Duration(500));
  ASSERT_TRUE(WaitUntil(
      [&] { return h.store(1).calls(MemoryShardStore::Op::kPromoteDue) > promotions; }));
  EXPECT_FALSE(a.ready());
  // The retry comes 100 ms later.
  h.clock().Advance(Duration(100));
  auto got = a.Get();
  ASSERT_TRUE(got.has_value());
  ASSERT_EQ(got->size(), 1u);
  EXPECT_EQ((*got)[0].id(), id);
  EXPECT_EQ(a.calls(), 1);
}

// An insert that fails hands nothing: the call waits on and gets a later item.
TEST(EngineHandoffTest, FailedInsertHandsNothingAndTheCallWaitsOn) {
  Harness h({1});
  ASSERT_TRUE(h.Dequeue("f", 1).empty());
  DequeueAnswer a;
  auto handle =
      h.engine().Dequeue("ns", {{"f", 1}}, kLongWait, "test-worker", a.Callback());
  ASSERT_TRUE(WaitUntil([&] { return h.engine().ParkedCalls() == 1; }));
  h.store(1).FailNext(MemoryShardStore::Op::kInsert, Status::Internal("disk on fire"));
  auto failed = h.Enqueue({Item("f")});
  ASSERT_EQ(failed.size(), 1u);
  EXPECT_FALSE(failed[0].ok());
  // Handed nothing before the enqueue was answered, the call looked again and parked.
  EXPECT_FALSE(a.ready());
  ItemId id = h.EnqueueOk(Item("f", 0, Time{}, Duration(30'000), "second"));
  auto got = a.Get();
  ASSERT_TRUE(got.has_value());
  ASSERT_EQ(got->size(), 1u);
  EXPECT_EQ((*got)[0].id(), id);
  EXPECT_EQ(a.calls(), 1);
}

// A nack that makes a better item READY in the same transaction as an insert: the
// insert is not handed to a parked call (it would go out before the better item,
// against the order); both go READY and the call claims the better one.
TEST(EngineHandoffTest, NoHandoffWhenANackOfTheSameWriteReadiesAnItem) {
  Harness h({1});
  const ItemId better = h.EnqueueOk(Item("t", 0));
  auto leased = h.Dequeue("t", 1);
  ASSERT_EQ(leased.size(), 1u);
  ASSERT_TRUE(h.Dequeue("t", 1).empty());  // the window: complete, empty
  DequeueAnswer a;
  auto handle =
      h.engine().Dequeue("ns", {{"t", 1}}, kLongWait, "test-worker", a.Callback());
  ASSERT_TRUE(WaitUntil([&] { return h.engine().ParkedCalls() == 1; }));
  h.gate(1).Close();
  EnqueueAnswer other;
  h.engine().Enqueue({Item("other")}, other.Callback());
  ASSERT_TRUE(h.gate(1).AwaitHeld());  // the strand waits in that insert
  StatusesAnswer nacked;
  h.engine().Nack({{better, leased[0].item.token}}, nacked.Callback());  // READY at once
  EnqueueAnswer worse;
  h.engine().Enqueue({Item("t", 5)}, worse.Callback());
  h.gate(1).Open();  // the nack and the insert go in the strand's next Write
  auto got = a.Get();
  ASSERT_TRUE(got.has_value());
  ASSERT_EQ(got->size(), 1u);
  EXPECT_EQ((*got)[0].id(), better);
  ASSERT_TRUE(nacked.Get().has_value());
  EXPECT_TRUE(nacked.Get()->at(0).ok());
  ASSERT_TRUE(worse.Get().has_value());
  EXPECT_TRUE(worse.Get()->at(0).ok());
}

// ------------------------------------------------------------ threads

// The engine's threads (its pool and ticker are named "shardq-..."). Counting every
// thread of the process also counts threads that are not the engine's and come and go
// in their own time: under `ctest -j2` the total once never came back to its base.
size_t CountThreads() {
  size_t n = 0;
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/task")) {
    std::ifstream comm(e.path() / "comm");
    std::string name;
    std::getline(comm, name);
    if (name.starts_with("shardq-")) ++n;
  }
  return n;
}

TEST(EngineThreadsTest, ThreadCountDoesNotDependOnShardsOrParkedCalls) {
  constexpr size_t kIo = 3;
  EngineOptions o;
  o.io_threads = kIo;
  // A joined thread of an earlier test's engine can still be listed for a moment (the
  // kernel wakes the joiner before it removes the task), and counting it in the base
  // made the count never come back to it (once in 60 runs): count from none.
  ASSERT_TRUE(WaitUntil([] { return CountThreads() == 0; }));

  auto ids = [](uint32_t n) {
    std::vector<uint32_t> v;
    for (uint32_t i = 1; i <= n; ++i) v.push_back(i);
    return v;
  };
  size_t added_4 = 0;
  {
    Harness h(ids(4), o);
    EXPECT_EQ(h.engine().io_threads(), kIo);
    added_4 = CountThreads();
  }
  ASSERT_TRUE(WaitUntil([&] { return CountThreads() == 0; }));
  EXPECT_EQ(added_4, kIo + 1);  // the pool and the ticker

  Harness h(ids(64), o);
  EXPECT_EQ(h.engine().shard_count(), 64u);
  EXPECT_EQ(CountThreads(), added_4);

  // Many parked long polls cost no thread.
  constexpr int kCalls = 2000;
  std::atomic<int> answered{0};
  std::vector<std::shared_ptr<Engine::DequeueHandle>> handles;
  for (int i = 0; i < kCalls; ++i) {
    handles.push_back(
        h.engine().Dequeue("ns", {{"topic-" + std::to_string(i % 20), 1}}, kLongWait, "w",
                           [&answered](std::vector<Delivered>) { ++answered; }));
  }
  ASSERT_TRUE(WaitUntil([&] { return h.engine().ParkedCalls() == kCalls; }));
  EXPECT_EQ(answered.load(), 0);
  EXPECT_EQ(CountThreads(), added_4);
  for (auto& handle : handles) handle->Cancel();
  EXPECT_EQ(answered.load(), kCalls);
  EXPECT_EQ(h.engine().ParkedCalls(), 0);
}

// ------------------------------------------------------------ ack / nack / extend

// The config refuses a server without shards; an engine built without them anyway
// answers every enqueue, keyed or not, instead of placing it modulo zero.
TEST(EngineRoutingTest, AnEngineWithoutShardsRefusesEnqueues) {
  Harness h({});
  NewItem keyed = Item("t");
  keyed.dedup_key = "order-17";
  auto r = h.Enqueue({Item("t"), std::move(keyed)});
  ASSERT_EQ(r.size(), 2u);
  for (const auto& x : r) EXPECT_EQ(x.status().code(), Code::kUnavailable);
}

// A shard whose enqueue buffer is full refuses at once without trying, and hands the
// items back: the call goes to the next shard whole, and is stored once.
TEST(EngineRoutingTest, AFullBufferSendsTheCallToTheNextShard) {
  EngineOptions options = Harness::DefaultOptions();
  options.worker.max_pending_enqueues = 1;
  Harness h({1, 2}, options);
  h.AdvanceToSlotOf(0);  // every call tries A first
  h.gate(1).Close();     // A's strand holds in its first insert
  EnqueueAnswer first, second;
  h.engine().Enqueue({Item("t", 0, Time{}, Duration(30'000), "first")}, first.Callback());
  ASSERT_TRUE(h.gate(1).AwaitHeld());
  h.engine().Enqueue({Item("t", 0, Time{}, Duration(30'000), "second")},
                     second.Callback());  // fills A's buffer (1 of 1)
  // Refused by A on the caller's thread, then taken by B.
  auto third = h.Enqueue({Item("t", 0, Time{}, Duration(30'000), "third")});
  ASSERT_EQ(third.size(), 1u);
  ASSERT_TRUE(third[0].ok()) << third[0].status().ToString();
  EXPECT_EQ(third[0]->shard, ShardId(2));
  h.gate(1).Open();
  for (EnqueueAnswer* a : {&first, &second}) {
    auto got = a->Get();
    ASSERT_TRUE(got.has_value());
    ASSERT_TRUE((*got)[0].ok());
    EXPECT_EQ((*got)[0]->id.shard, ShardId(1));
  }
  EXPECT_EQ(h.store(1).size(), 2u);
  EXPECT_EQ(h.store(2).size(), 1u);
  std::multiset<std::string> payloads;
  for (const auto& d : h.Dequeue("t", 10)) payloads.insert(d.item.payload);
  EXPECT_EQ(payloads, (std::multiset<std::string>{"first", "second", "third"}));
}

// Load shedding: what the server holds of enqueues not yet committed is bounded over
// all shards, not per shard.
TEST(EngineRoutingTest, EnqueuesPastTheMemoryBudgetAreRefusedUntilHeldOnesCommit) {
  EngineOptions options = Harness::DefaultOptions();
  options.max_buffered_enqueue_bytes = 1;  // one call at a time, whatever its size
  Harness h({1, 2}, options);
  h.AdvanceToSlotOf(0);
  h.gate(1).Close();  // A's strand holds in its first insert
  EnqueueAnswer first;
  h.engine().Enqueue({Item("t", 0, Time{}, Duration(30'000), "first")}, first.Callback());
  ASSERT_TRUE(h.gate(1).AwaitHeld());
  EXPECT_GT(h.engine().BufferedEnqueueBytes(), 0u);

  // B is free, but the budget is used: refused at once, written nowhere.
  auto refused = h.Enqueue({Item("t", 0, Time{}, Duration(30'000), "second")});
  ASSERT_EQ(refused.size(), 1u);
  EXPECT_EQ(refused[0].status().code(), Code::kResourceExhausted);
  EXPECT_EQ(h.store(2).size(), 0u);

  h.gate(1).Open();
  auto got = first.Get();
  ASSERT_TRUE(got.has_value());
  ASSERT_TRUE((*got)[0].ok());
  EXPECT_EQ(h.engine().BufferedEnqueueBytes(), 0u);
  auto later = h.Enqueue({Item("t", 0, Time{}, Duration(30'000), "third")});
  ASSERT_EQ(later.size(), 1u);
  EXPECT_TRUE(later[0].ok()) << later[0].status().ToString();
}

// Pages of topics skip the idle ones (known to the index, holding nothing) without
// coming up short.
TEST(EngineTopicsTest, APageOfActiveTopicsSkipsIdleOnes) {
  Harness h({1});
  for (const char* topic : {"a", "c", "e"}) h.EnqueueOk(Item(topic));
  for (const char* topic : {"b", "d"}) ASSERT_TRUE(h.Dequeue(topic, 1).empty());
  auto names = [](const std::vector<TopicInfo>& infos) {
    std::vector<std::string> out;
    for (const TopicInfo& t : infos) out.push_back(t.topic);
    return out;
  };
  EXPECT_EQ(names(h.engine().ActiveTopics("ns", "", 2)),
            (std::vector<std::string>{"a", "c"}));
  EXPECT_EQ(names(h.engine().ActiveTopics("ns", "a", 2)),
            (std::vector<std::string>{"c", "e"}));
  EXPECT_EQ(names(h.engine().ActiveTopics("ns", "c")), (std::vector<std::string>{"e"}));
  EXPECT_EQ(h.engine().IndexedTopics(), 5u);
}

TEST(EngineRoutingTest, AckNackExtendAreRoutedByShardInRequestOrder) {
  Harness h({3, 7});  // ids that differ from positions
  h.AdvanceToSlotOf(0);
  ItemId x = h.EnqueueOk(Item("r"));
  h.AdvanceToSlotOf(1);
  ItemId y = h.EnqueueOk(Item("r"));
  ASSERT_NE(x.shard, y.shard);
  auto d = h.Dequeue("r", 2);
  ASSERT_EQ(d.size(), 2u);
  std::map<ItemId, LeaseToken> token;
  for (const auto& v : d) token[v.id()] = v.item.token;
  ASSERT_TRUE(token.contains(x) && token.contains(y));
  const ItemId unknown{ShardId(99), RowId(1)};
  const LeaseToken stale(token[x].value() + 1);

  // Extend first (while leased): [x, unknown shard, y with a bad row].
  Time now = h.clock().Now();
  auto ext = h.Extend({{x, token[x], Duration(5'000)},
                       {unknown, token[x], Duration(5'000)},
                       {{y.shard, RowId(9'999)}, token[y], Duration(5'000)},
                       {y, stale, Duration(5'000)}});
  ASSERT_EQ(ext.size(), 4u);
  ASSERT_TRUE(ext[0].ok()) << ext[0].status().ToString();
  EXPECT_EQ(*ext[0], now + Duration(5'000));
  EXPECT_EQ(ext[1].status().code(), Code::kNotFound);
  EXPECT_EQ(ext[2].status().code(), Code::kNotFound);
  EXPECT_EQ(ext[3].status().code(), Code::kFailedPrecondition);

  // Ack: [y, unknown, x with a stale token].
  auto acks = h.Ack({{y, token[y]}, {unknown, token[y]}, {x, stale}});
  ASSERT_EQ(acks.size(), 3u);
  EXPECT_TRUE(acks[0].ok()) << acks[0].ToString();
  EXPECT_EQ(acks[1].code(), Code::kNotFound);
  EXPECT_EQ(acks[2].code(), Code::kFailedPrecondition);
  // Acked rows are kept (SUCCEEDED) for the retention period.
  EXPECT_EQ(h.store(y.shard.value()).GetTask(y.row, false)->state, ItemState::kSucceeded);
  EXPECT_EQ(h.store(x.shard.value()).GetTask(x.row, false)->state, ItemState::kLeased);

  // Nack: [unknown, x with a stale token, x].
  auto nacks = h.Nack({{unknown, token[x], Duration(0), std::nullopt},
                       {x, stale, Duration(0), std::nullopt},
                       {x, token[x], Duration(0), std::string("m2")}});
  ASSERT_EQ(nacks.size(), 3u);
  EXPECT_EQ(nacks[0].code(), Code::kNotFound);
  EXPECT_EQ(nacks[1].code(), Code::kFailedPrecondition);
  EXPECT_TRUE(nacks[2].ok()) << nacks[2].ToString();
  // (A long poll: the nack's answer may come before the item is back in the window;
  // see ShardWorkerTest.NackedItemIsInTheWindowWhenTheCallbackRuns.)
  auto again = h.Dequeue("r", 2, kLongWait);
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0].id(), x);
  EXPECT_EQ(again[0].item.metadata, "m2");
  EXPECT_EQ(again[0].item.attempts, 2u);

  // Only unknown shards: answered without touching any shard.
  auto only_unknown =
      h.Ack({{unknown, token[x]}, {ItemId{ShardId(0), RowId(5)}, token[x]}});
  ASSERT_EQ(only_unknown.size(), 2u);
  EXPECT_EQ(only_unknown[0].code(), Code::kNotFound);
  EXPECT_EQ(only_unknown[1].code(), Code::kNotFound);
  EXPECT_TRUE(h.Ack({}).empty());
}

// ------------------------------------------------------------ dead-letter bulk ops

// A whole-topic redrive runs one store step per shard, each on its own strand. The
// steps must not wait for each other: a lock held across one shard's step serialised
// them, and each waiting step held a pool thread (enough shards could hold them all).
TEST(EngineBulkTest, AWholeTopicRedrivesShardStepsRunAtTheSameTime) {
  Harness h({1, 2});  // two pool threads
  std::mutex mu;
  std::condition_variable cv;
  int inside = 0;
  int met = 0;  // steps that saw the other one inside at the same time
  auto meet = [&] {
    std::unique_lock lock(mu);
    ++inside;
    cv.notify_all();
    if (cv.wait_for(lock, kShortTimeout, [&] { return inside == 2; })) ++met;
  };
  h.store(1).SetBeforeCall(MemoryShardStore::Op::kRedrive, meet);
  h.store(2).SetBeforeCall(MemoryShardStore::Op::kRedrive, meet);
  Answer<Result<BulkResult>> answer;
  h.engine().Redrive("ns", "t", {}, answer.Callback());
  auto got = answer.Get();
  ASSERT_TRUE(got.has_value());
  EXPECT_TRUE(got->ok()) << got->status().ToString();
  std::lock_guard lock(mu);
  EXPECT_EQ(met, 2);
}

// A redrive whose answer was lost (the connection died after its COMMIT) is not
// known to have happened: the shard re-reads its store, and the redriven item, READY
// there, is delivered, though the shard's window of the topic was complete and
// empty (it would never have looked at the store again).
TEST(EngineBulkTest, ARedriveWhoseAnswerWasLostIsDeliveredAfterTheResync) {
  Harness h({1});
  NewItem item = Item("r");
  item.max_attempts = 1;
  const ItemId id = h.EnqueueOk(std::move(item));
  auto leased = h.Dequeue("r", 1);
  ASSERT_EQ(leased.size(), 1u);
  NackOp fail{id, leased[0].item.token};
  ASSERT_TRUE(h.Nack({fail})[0].ok());
  ASSERT_EQ(Counts(h.store(1), "r").dead, 1u);
  ASSERT_TRUE(h.Dequeue("r", 1).empty());  // the window: complete, empty

  h.store(1).LoseNextReply(MemoryShardStore::Op::kRedrive);
  Answer<Result<BulkResult>> answer;
  h.engine().Redrive("ns", "r", {id}, answer.Callback());
  auto got = answer.Get();
  ASSERT_TRUE(got.has_value());
  ASSERT_TRUE(got->ok()) << got->status().ToString();
  ASSERT_EQ((*got)->per_id.size(), 1u);
  EXPECT_EQ((*got)->per_id[0].code(), Code::kUnavailable);
  EXPECT_EQ(Counts(h.store(1), "r").ready, 1u);  // it did commit

  auto again = h.Dequeue("r", 1, kLongWait);
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0].id(), id);
  EXPECT_EQ(h.engine().ActiveTopics("ns").at(0).counts.dead, 0);
}

// ------------------------------------------------------------ claim failure

TEST(EngineClaimTest, FailedClaimPutsItemsBack) {
  Harness h({1, 2});
  std::set<ItemId> all;
  for (int i = 0; i < 6; ++i) {
    h.AdvanceToSlotOf(i % 2);  // three items on each shard
    all.insert(h.EnqueueOk(Item("cf", i)));
  }
  ASSERT_EQ(all.size(), 6u);
  ASSERT_EQ(Counts(h.store(1), "cf").ready, 3u);
  ASSERT_EQ(Counts(h.store(2), "cf").ready, 3u);
  // The next claim on each shard fails.
  h.store(1).FailNext(MemoryShardStore::Op::kClaim,
                      Status::Unavailable("lost connection"));
  h.store(2).FailNext(MemoryShardStore::Op::kClaim,
                      Status::Unavailable("lost connection"));

  std::vector<ItemId> delivered;
  auto first = h.Dequeue("cf", 6);
  EXPECT_LE(first.size(), 6u);
  for (const auto& d : first) delivered.push_back(d.id());
  for (int i = 0; i < 10 && delivered.size() < all.size(); ++i) {
    for (const auto& d : h.Dequeue("cf", 6)) delivered.push_back(d.id());
  }
  // Nothing lost, nothing delivered twice.
  EXPECT_EQ(delivered.size(), all.size());
  EXPECT_EQ(std::set<ItemId>(delivered.begin(), delivered.end()), all);
  EXPECT_TRUE(h.Dequeue("cf", 6).empty());
  EXPECT_EQ(Counts(h.store(1), "cf").leased + Counts(h.store(2), "cf").leased, 6u);
  EXPECT_EQ(Counts(h.store(1), "cf").ready + Counts(h.store(2), "cf").ready, 0u);
  EXPECT_EQ(h.Breaker(0), BreakerState::kClosed);
  EXPECT_EQ(h.Breaker(1), BreakerState::kClosed);
}

}  // namespace
}  // namespace shardq::engine
