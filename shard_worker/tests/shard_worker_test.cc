// ShardWorker on a MemoryShardStore with a FakeClock. Most tests run the strand on a
// ManualExecutor (tasks run only when the test says so), which makes batching,
// buffer limits and promotion deterministic; a few use a real ThreadPool(2).

#include "shard_worker/shard_worker.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "common/clock.h"
#include "common/executor.h"
#include "common/ticker.h"
#include "prefetch/prefetch_index.h"
#include "store/memory_store.h"
#include "tests/support/new_item.h"

namespace shardq::shard_worker {
namespace {

using store::MemoryShardStore;

constexpr auto kRealTimeout = std::chrono::seconds(20);

// Runs posted tasks only when told to: the strand's turns become explicit steps.
class ManualExecutor final : public Executor {
 public:
  void Post(std::function<void()> task) override {
    std::lock_guard lock(mu_);
    tasks_.push_back(std::move(task));
  }
  size_t queued() const {
    std::lock_guard lock(mu_);
    return tasks_.size();
  }
  // Runs one queued task; false if there was none.
  bool RunOne() {
    std::function<void()> task;
    {
      std::lock_guard lock(mu_);
      if (tasks_.empty()) return false;
      task = std::move(tasks_.front());
      tasks_.pop_front();
    }
    task();
    return true;
  }
  // Runs tasks (including those they post) until none is left; returns how many ran.
  size_t RunAll() {
    size_t n = 0;
    while (RunOne()) ++n;
    return n;
  }

 private:
  mutable std::mutex mu_;
  std::deque<std::function<void()>> tasks_;
};

// The row ids of an Insert's results.
std::vector<RowId> Rows(const std::vector<store::Inserted>& inserted) {
  std::vector<RowId> out;
  for (const store::Inserted& i : inserted) out.push_back(i.row);
  return out;
}

using ::shardq::testing::Item;

// Starts a worker that runs on a real pool; true once it has opened (bounded wait).
bool StartAndAwaitOpen(ShardWorker& worker) {
  worker.Start();
  auto until = std::chrono::steady_clock::now() + kRealTimeout;
  while (!worker.Health().open && std::chrono::steady_clock::now() < until) {
    std::this_thread::yield();
  }
  return worker.Health().open;
}

struct EnqueueOutcome {
  Result<std::vector<store::Inserted>> rows = Status::Internal("not called");
  size_t untried = 0;  // items handed back: the shard did not try them
  int calls = 0;
};

// Options that keep the purge out of the way (it would cap Tick's answer), and
// promotions at the items' due times (no read-ahead: see the ReadAhead tests).
WorkerOptions QuietOptions() {
  WorkerOptions o;
  o.purge_interval = Duration(3'600'000);
  o.lookahead = Duration(0);
  return o;
}

class ShardWorkerTest : public ::testing::Test {
 protected:
  void TearDown() override {
    // A queued strand turn keeps the worker "running": let it finish first.
    io_.RunAll();
    worker_.reset();
  }

  void MakeWorker(WorkerOptions options = QuietOptions()) {
    auto s = std::make_unique<MemoryShardStore>();
    store_ = s.get();
    worker_ = std::make_unique<ShardWorker>(0, ShardId(1), std::move(s), io_, clock_,
                                            index_, options);
    worker_->SetTicker(&ticker_);
  }

  // Starts the worker and lets it open, recover and run its first promotion.
  void StartWorker() {
    worker_->Start();
    io_.RunAll();
    ASSERT_TRUE(worker_->Health().open);
    worker_->Tick(clock_.Now());  // the post-recovery promotion (and purge) fall due now
    io_.RunAll();
  }

  // A started worker whose promotions read `lookahead` ahead (release_schedule.h).
  void StartReadingAhead(Duration lookahead,
                         size_t promote_batch = WorkerOptions{}.promote_batch) {
    WorkerOptions options = QuietOptions();
    options.lookahead = lookahead;
    options.promote_batch = promote_batch;
    MakeWorker(options);
    StartWorker();
  }

  // A started worker whose breaker opens at the first failure and probes kCooldown
  // later.
  void StartWithATouchyBreaker() {
    WorkerOptions o = QuietOptions();
    o.breaker.min_samples = 1;
    o.breaker.failure_ratio = 0.1;
    o.breaker.cooldown = kCooldown;
    MakeWorker(o);
    StartWorker();
  }

  // An open breaker's cool-down (kCooldown) passes and the ticker's probe runs; true
  // if it closed the breaker.
  bool ProbeAfterTheCooldown() {
    clock_.Advance(kCooldown);
    worker_->Tick(clock_.Now());
    io_.RunAll();
    return worker_->Health().breaker == BreakerState::kClosed;
  }

  static constexpr Duration kCooldown{500};  // the breaker's, in the outage tests

  // `times` ticks at the current time, each followed by the strand turns it posted.
  void TickAndRun(int times) {
    for (int i = 0; i < times; ++i) {
      worker_->Tick(clock_.Now());
      io_.RunAll();
    }
  }

  // Enqueues without running the strand; the outcome fills in when it does.
  std::shared_ptr<EnqueueOutcome> EnqueueAsync(std::vector<NewItem> items) {
    auto out = std::make_shared<EnqueueOutcome>();
    worker_->Enqueue(std::move(items), [out](Result<std::vector<store::Inserted>> rows,
                                             std::vector<NewItem> untried) {
      out->rows = std::move(rows);
      out->untried = untried.size();
      ++out->calls;
    });
    return out;
  }

  std::shared_ptr<prefetch::TopicBuffer> Buffer(const std::string& topic) {
    return index_.GetOrCreate("ns", topic);
  }

  // Enqueues `items`, runs the strand, and loads the window of topic "t", as many
  // tests begin; false if the enqueue failed.
  bool EnqueueAndLoad(std::vector<NewItem> items) {
    auto out = EnqueueAsync(std::move(items));
    io_.RunAll();
    if (!out->rows.ok()) return false;
    LoadWindow("t");
    return true;
  }

  // Loads the window of `topic` from the store (a refill), as a first dequeue would.
  void LoadWindow(const std::string& topic) {
    auto buffer = Buffer(topic);
    if (buffer->ClaimRefill(0)) worker_->Refill(buffer);
    io_.RunAll();
  }

  // Takes (reserves) up to `n` keys of `topic` from the index, as a dequeue does, and
  // asks for the refills the window wants.
  std::vector<ReadyKey> TakeKeys(const std::string& topic, size_t n) {
    auto buffer = Buffer(topic);
    std::vector<size_t> refill;
    bool blocked = false;
    auto taken = buffer->Take(n, &refill, &blocked);
    for (size_t i = 0; i < refill.size(); ++i) worker_->Refill(buffer);
    std::vector<ReadyKey> keys;
    for (const auto& t : taken) keys.push_back(t.key);
    return keys;
  }

  // Takes up to `n` keys of `topic` and claims them; returns what was leased.
  std::vector<LeasedItem> TakeAndClaim(const std::string& topic, size_t n) {
    std::vector<ReadyKey> keys = TakeKeys(topic, n);
    std::vector<LeasedItem> got;
    int calls = 0;
    worker_->Claim(Buffer(topic), keys, "test-worker",
                   [&](std::vector<LeasedItem> items) {
                     got = std::move(items);
                     ++calls;
                   });
    io_.RunAll();
    EXPECT_EQ(calls, 1);
    return got;
  }

  // Enqueues one item of topic "t", loads the window and claims it: a leased item
  // whose ack or nack a test can then send.
  LeasedItem LeaseOne() {
    EXPECT_TRUE(EnqueueAndLoad({Item("t", 1)}));
    std::vector<LeasedItem> leased = TakeAndClaim("t", 1);
    EXPECT_EQ(leased.size(), 1u);
    return leased.empty() ? LeasedItem{} : leased[0];
  }

  // Sends an ack of `item`; its outcomes land in the result once the strand runs.
  std::shared_ptr<std::vector<store::ItemOutcome>> AckAsync(const LeasedItem& item) {
    auto out = std::make_shared<std::vector<store::ItemOutcome>>();
    worker_->Ack({{item.row, item.token}},
                 [out](std::vector<store::ItemOutcome> o) { *out = std::move(o); });
    return out;
  }

  // After a resync reset the window of `topic`: a first Take finds it unknown and asks
  // for its refill; then takes up to `n` keys and claims them.
  std::vector<LeasedItem> TakeAfterReset(const std::string& topic, size_t n) {
    EXPECT_TRUE(TakeKeys(topic, n).empty()) << "the window was not reset";
    io_.RunAll();
    return TakeAndClaim(topic, n);
  }

  // The store's own counts of the one topic (as MySQL would say).
  store::TopicCounts StoredCounts() {
    auto counts = store_->CountByTopic();
    EXPECT_TRUE(counts.ok() && counts->size() == 1);
    return counts.ok() && counts->size() == 1 ? (*counts)[0] : store::TopicCounts{};
  }

  FakeClock clock_;
  Ticker ticker_{clock_};  // never started: Poke() only raises a flag
  ManualExecutor io_;
  prefetch::PrefetchIndex index_{1, 64};
  MemoryShardStore* store_ = nullptr;
  std::unique_ptr<ShardWorker> worker_;
};

TEST_F(ShardWorkerTest, StartRecoversCountsFromTheStore) {
  MakeWorker();
  Time now = clock_.Now();
  auto ids =
      store_->Insert(std::vector<NewItem>{Item("t"), Item("t"),
                                          Item("t", 0, now + Duration(50)), Item("t")},
                     now);
  ASSERT_TRUE(ids.ok());
  // One finished task: final states are counted too.
  store::ClaimRequest claim{(*ids)[3].row, "w", LeaseToken(5)};
  ASSERT_EQ(store_->Claim({&claim, 1}, LeaseToken(5), now)->size(), 1u);
  store::AckRequest ack{(*ids)[3].row, LeaseToken(5), "done"};
  ASSERT_TRUE(store_->Ack({&ack, 1}, now).ok());
  EXPECT_FALSE(worker_->AcceptsEnqueues());  // not open yet
  EXPECT_FALSE(worker_->Health().open);
  worker_->Start();
  EXPECT_EQ(io_.queued(), 1u);
  io_.RunAll();
  ShardHealth h = worker_->Health();
  EXPECT_TRUE(h.open);
  EXPECT_EQ(h.id, ShardId(1));
  EXPECT_EQ(h.breaker, BreakerState::kClosed);
  EXPECT_TRUE(worker_->AcceptsEnqueues());
  prefetch::StateCounts c = Buffer("t")->Counts();
  EXPECT_EQ(c.ready, 2);
  EXPECT_EQ(c.delayed, 1);
  EXPECT_EQ(c.leased, 0);
  EXPECT_EQ(c.succeeded, 1);
}

TEST_F(ShardWorkerTest, StartFailureOpensBreakerAndProbeRecovers) {
  WorkerOptions o = QuietOptions();
  o.breaker.cooldown = Duration(500);
  MakeWorker(o);
  store_->FailNext(MemoryShardStore::Op::kOpen, Status::Unavailable("down"));
  worker_->Start();
  io_.RunAll();
  EXPECT_FALSE(worker_->Health().open);
  EXPECT_EQ(worker_->Health().breaker, BreakerState::kOpen);
  EXPECT_FALSE(worker_->Health().last_error.empty());
  EXPECT_FALSE(worker_->AcceptsEnqueues());
  // Not before the cool-down: Tick says how long to wait, and posts nothing.
  EXPECT_EQ(worker_->Tick(clock_.Now()), Duration(500));
  EXPECT_EQ(io_.queued(), 0u);
  clock_.Advance(Duration(500));
  worker_->Tick(clock_.Now());
  EXPECT_EQ(io_.queued(), 1u);
  io_.RunAll();
  EXPECT_TRUE(worker_->Health().open);
  EXPECT_EQ(worker_->Health().breaker, BreakerState::kClosed);
  EXPECT_TRUE(worker_->AcceptsEnqueues());
}

TEST_F(ShardWorkerTest, EnqueueCallbackGetsRowIdsOnThreadPool) {
  ThreadPool pool(2, "test-io");
  auto s = std::make_unique<MemoryShardStore>();
  MemoryShardStore* st = s.get();
  ShardWorker worker(0, ShardId(4), std::move(s), pool, clock_, index_, QuietOptions());
  ASSERT_TRUE(StartAndAwaitOpen(worker));

  std::promise<std::pair<Result<std::vector<store::Inserted>>, bool>> p;
  auto f = p.get_future();
  worker.Enqueue(
      {Item("t"), Item("t"), Item("t")},
      [&p](Result<std::vector<store::Inserted>> rows, std::vector<NewItem> untried) {
        p.set_value({std::move(rows), untried.empty()});
      });
  ASSERT_EQ(f.wait_for(kRealTimeout), std::future_status::ready);
  auto [rows, attempted] = f.get();
  ASSERT_TRUE(rows.ok()) << rows.status().ToString();
  EXPECT_TRUE(attempted);
  EXPECT_EQ(Rows(*rows), (std::vector<RowId>{RowId(1), RowId(2), RowId(3)}));
  EXPECT_EQ(st->size(), 3u);
}

TEST_F(ShardWorkerTest, ConcurrentEnqueuesFromManyThreadsGetDistinctIds) {
  ThreadPool pool(2, "test-io");
  auto s = std::make_unique<MemoryShardStore>();
  MemoryShardStore* st = s.get();
  ShardWorker worker(0, ShardId(4), std::move(s), pool, clock_, index_, QuietOptions());
  ASSERT_TRUE(StartAndAwaitOpen(worker));

  constexpr int kThreads = 4, kPerThread = 50;
  std::mutex mu;
  std::condition_variable cv;
  std::vector<RowId> all;
  int done = 0, failures = 0;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < kPerThread; ++i) {
        worker.Enqueue({Item("t")}, [&](Result<std::vector<store::Inserted>> rows,
                                        std::vector<NewItem>) {
          std::lock_guard lock(mu);
          if (rows.ok() && rows->size() == 1) {
            all.push_back((*rows)[0].row);
          } else {
            ++failures;
          }
          ++done;
          cv.notify_all();
        });
      }
    });
  }
  for (auto& t : threads) t.join();
  std::unique_lock lock(mu);
  ASSERT_TRUE(
      cv.wait_for(lock, kRealTimeout, [&] { return done == kThreads * kPerThread; }));
  EXPECT_EQ(failures, 0);
  std::set<RowId> distinct(all.begin(), all.end());
  EXPECT_EQ(distinct.size(), static_cast<size_t>(kThreads * kPerThread));
  EXPECT_EQ(st->size(), static_cast<size_t>(kThreads * kPerThread));
  // Group commit: fewer inserts than calls is likely but not guaranteed; at most one
  // each.
  EXPECT_LE(st->calls(MemoryShardStore::Op::kInsert), kThreads * kPerThread);
  EXPECT_EQ(Buffer("t")->Counts().ready, kThreads * kPerThread);
}

TEST_F(ShardWorkerTest, ManyEnqueuesShareOneInsert) {
  MakeWorker();
  StartWorker();
  int inserts_before = store_->calls(MemoryShardStore::Op::kInsert);
  std::vector<std::shared_ptr<EnqueueOutcome>> outs;
  for (int i = 0; i < 10; ++i) {
    outs.push_back(EnqueueAsync({Item("t"), Item("t"), Item("t")}));
  }
  for (const auto& o : outs) EXPECT_EQ(o->calls, 0);  // nothing ran yet
  EXPECT_EQ(io_.queued(), 1u);                        // one strand turn for all of them
  EXPECT_EQ(io_.RunAll(), 1u);
  EXPECT_EQ(store_->calls(MemoryShardStore::Op::kInsert) - inserts_before, 1);
  uint64_t expected = 1;
  for (const auto& o : outs) {
    EXPECT_EQ(o->calls, 1);
    EXPECT_EQ(o->untried, 0u);
    ASSERT_TRUE(o->rows.ok()) << o->rows.status().ToString();
    ASSERT_EQ(o->rows->size(), 3u);
    // One batch: consecutive ids, handed back in call order.
    for (RowId r : Rows(*o->rows)) EXPECT_EQ(r.value(), expected++);
  }
  EXPECT_EQ(Buffer("t")->Counts().ready, 30);
}

TEST_F(ShardWorkerTest, MaxBatchSplitsInserts) {
  WorkerOptions o = QuietOptions();
  o.max_batch = 5;
  MakeWorker(o);
  StartWorker();
  int inserts_before = store_->calls(MemoryShardStore::Op::kInsert);
  std::vector<std::shared_ptr<EnqueueOutcome>> outs;
  for (int i = 0; i < 4; ++i) outs.push_back(EnqueueAsync({Item("t"), Item("t")}));
  EXPECT_EQ(io_.RunAll(), 1u);
  // 2+2 fit in 5, a third call would not: two statements of 4 rows each.
  EXPECT_EQ(store_->calls(MemoryShardStore::Op::kInsert) - inserts_before, 2);
  uint64_t expected = 1;
  for (const auto& out : outs) {
    ASSERT_TRUE(out->rows.ok());
    for (RowId r : Rows(*out->rows)) EXPECT_EQ(r.value(), expected++);
  }
  EXPECT_EQ(store_->size(), 8u);
}

// Group commit across kinds: an ack and an enqueue waiting in the same turn are one
// store Write (one transaction, one commit), and each caller gets its own answer.
TEST_F(ShardWorkerTest, AnAckAndAnEnqueueOfOneTurnShareOneWrite) {
  MakeWorker();
  StartWorker();
  const LeasedItem leased = LeaseOne();
  auto calls = [&](MemoryShardStore::Op op) { return store_->calls(op); };
  const size_t writes = calls(MemoryShardStore::Op::kWrite);
  const size_t inserts = calls(MemoryShardStore::Op::kInsert);
  const size_t acks = calls(MemoryShardStore::Op::kAck);
  auto acked = AckAsync(leased);
  auto second = EnqueueAsync({Item("t", 2)});
  EXPECT_EQ(io_.queued(), 1u);  // one strand turn for both
  io_.RunAll();
  EXPECT_EQ(calls(MemoryShardStore::Op::kWrite) - writes, 1u);
  EXPECT_EQ(calls(MemoryShardStore::Op::kInsert) - inserts, 1u);
  EXPECT_EQ(calls(MemoryShardStore::Op::kAck) - acks, 1u);
  ASSERT_EQ(acked->size(), 1u);
  EXPECT_TRUE((*acked)[0].status.ok());
  ASSERT_TRUE(second->rows.ok());
  ASSERT_EQ(second->rows->size(), 1u);
  EXPECT_EQ(Buffer("t")->Counts().succeeded, 1);
  EXPECT_EQ(Buffer("t")->Counts().ready, 1);
}

// What is queued when a worker is to be destroyed (which drops it) still runs if the
// owner drains the worker first: DrainUntil returns once the strand has run it, and
// says whether there was anything to wait for.
TEST_F(ShardWorkerTest, DrainUntilWaitsForWhatIsQueued) {
  MakeWorker();
  StartWorker();
  const LeasedItem leased = LeaseOne();
  EXPECT_TRUE(worker_->DrainUntil(std::chrono::steady_clock::now()));  // idle
  auto acked = AckAsync(leased);  // queued: the strand's turn has not run
  EXPECT_FALSE(worker_->DrainUntil(std::chrono::steady_clock::now()));

  size_t acked_when_drained = 0;
  std::thread drain([&] {
    worker_->DrainUntil(std::chrono::steady_clock::now() + kRealTimeout);
    acked_when_drained = acked->size();
  });
  io_.RunAll();  // the strand's turn, on this thread
  drain.join();
  EXPECT_EQ(acked_when_drained, 1u);
  EXPECT_EQ(Buffer("t")->Counts().succeeded, 1);
}

// The other side of sharing a transaction: when it fails, it fails for every caller
// in it, and none of them is told otherwise.
TEST_F(ShardWorkerTest, AFailedWriteFailsEveryCallerInIt) {
  MakeWorker();
  StartWorker();
  const LeasedItem leased = LeaseOne();
  store_->FailNext(MemoryShardStore::Op::kAck, Status::Internal("disk on fire"));
  auto acked = AckAsync(leased);
  auto second = EnqueueAsync({Item("t", 2)});
  io_.RunAll();
  ASSERT_EQ(acked->size(), 1u);
  EXPECT_EQ((*acked)[0].status.code(), Code::kInternal);
  EXPECT_EQ(second->rows.status().code(), Code::kInternal);
  EXPECT_EQ(second->untried, 0u);  // tried: not for another shard to redo
  EXPECT_EQ(store_->size(), 1u);
  EXPECT_EQ(Buffer("t")->Counts().leased, 1);
  EXPECT_EQ(Buffer("t")->Counts().ready, 0);
}

// A request the store would refuse as a whole is answered on its own, before the
// transaction, so it does not fail the callers who would have shared it.
TEST_F(ShardWorkerTest, AnInvalidEnqueueDoesNotFailTheAckOfItsTurn) {
  MakeWorker();
  StartWorker();
  const LeasedItem leased = LeaseOne();
  auto acked = AckAsync(leased);
  NewItem bad = Item("t", 2);
  bad.task_type = std::string(shardq::kMaxTaskTypeLen + 1, 'x');
  auto refused = EnqueueAsync({Item("t", 3), bad});
  auto good = EnqueueAsync({Item("t", 4)});
  io_.RunAll();
  ASSERT_EQ(acked->size(), 1u);
  EXPECT_TRUE((*acked)[0].status.ok());
  EXPECT_EQ(refused->rows.status().code(), Code::kInvalidArgument);
  EXPECT_EQ(refused->untried, 0u);  // no other shard would take it either
  ASSERT_TRUE(good->rows.ok());
  EXPECT_EQ(store_->size(), 2u);  // the first item and the good enqueue's
  EXPECT_EQ(Buffer("t")->Counts().succeeded, 1);
}

// Claims, acks and nacks from many callers are split the same way, so no statement's id
// list grows with the number of callers waiting.
TEST_F(ShardWorkerTest, MaxBatchSplitsClaimsAndAcks) {
  WorkerOptions o = QuietOptions();
  o.max_batch = 2;
  MakeWorker(o);
  StartWorker();
  auto in = EnqueueAsync({Item("t", 1), Item("t", 2), Item("t", 3)});
  io_.RunAll();
  ASSERT_TRUE(in->rows.ok());
  LoadWindow("t");
  auto buffer = Buffer("t");
  std::vector<std::vector<LeasedItem>> got(3);
  for (int i = 0; i < 3; ++i) {
    worker_->Claim(buffer, TakeKeys("t", 1), "w",
                   [&got, i](std::vector<LeasedItem> l) { got[i] = l; });
  }
  const int claims_before = store_->calls(MemoryShardStore::Op::kClaim);
  io_.RunAll();
  EXPECT_EQ(store_->calls(MemoryShardStore::Op::kClaim) - claims_before, 2);  // 2 + 1
  std::vector<std::vector<store::ItemOutcome>> acked(3);
  for (int i = 0; i < 3; ++i) {
    ASSERT_EQ(got[i].size(), 1u) << i;
    worker_->Ack({{got[i][0].row, got[i][0].token}},
                 [&acked, i](std::vector<store::ItemOutcome> o) { acked[i] = o; });
  }
  const int acks_before = store_->calls(MemoryShardStore::Op::kAck);
  io_.RunAll();
  EXPECT_EQ(store_->calls(MemoryShardStore::Op::kAck) - acks_before, 2);
  for (int i = 0; i < 3; ++i) {
    ASSERT_EQ(acked[i].size(), 1u) << i;
    EXPECT_TRUE(acked[i][0].status.ok()) << i;
  }
  EXPECT_EQ(buffer->Counts().succeeded, 3);
}

// An exclusive step's caller is answered (in `then`) after the index shows its
// transitions: a redriven item can be dequeued as soon as the redrive answers.
TEST_F(ShardWorkerTest, ExclusiveStepAnswersAfterTheIndexChanged) {
  MakeWorker();
  StartWorker();
  auto in = EnqueueAsync({Item("t", 1)});
  io_.RunAll();
  ASSERT_TRUE(in->rows.ok());
  LoadWindow("t");
  auto buffer = Buffer("t");
  std::vector<LeasedItem> leased = TakeAndClaim("t", 1);
  ASSERT_EQ(leased.size(), 1u);
  ASSERT_EQ(buffer->WindowSize(0), 0u);
  size_t window_when_answered = 99;
  worker_->RunExclusive([&](store::ShardStore* s) {
    // A nack through the store directly stands in for a redrive: LEASED -> READY.
    std::vector<store::NackRequest> nack{{leased[0].row, leased[0].token}};
    auto out = s->Nack(nack, clock_.Now());
    ShardWorker::Exclusive done;
    if (out.ok() && (*out)[0].transition)
      done.transitions.push_back(*(*out)[0].transition);
    done.then = [&] { window_when_answered = buffer->WindowSize(0); };
    return done;
  });
  io_.RunAll();
  EXPECT_EQ(window_when_answered, 1u);
}

// A claim that comes in while a strand turn is under way runs before the turn's next
// transaction, not after the whole turn: a consumer waits for one transaction at most.
TEST_F(ShardWorkerTest, AClaimArrivingMidTurnRunsBeforeTheTurnsNextStep) {
  MakeWorker();
  StartWorker();
  auto in = EnqueueAsync({Item("t", 1), Item("t", 2)});
  io_.RunAll();
  ASSERT_TRUE(in->rows.ok());
  LoadWindow("t");
  std::vector<LeasedItem> first = TakeAndClaim("t", 1);
  ASSERT_EQ(first.size(), 1u);

  auto buffer = Buffer("t");
  std::vector<std::string> order;
  // The ack's callback runs on the strand, mid-turn; the claim it makes stands in for
  // a dequeue that arrives from another thread at that moment.
  worker_->Ack({{first[0].row, first[0].token}}, [&](std::vector<store::ItemOutcome>) {
    order.push_back("ack");
    worker_->Claim(buffer, TakeKeys("t", 1), "w", [&](std::vector<LeasedItem> leased) {
      order.push_back("claim " + std::to_string(leased.size()));
    });
  });
  worker_->RunExclusive([&](store::ShardStore*) {
    order.push_back("exclusive");
    return ShardWorker::Exclusive{};
  });
  ASSERT_TRUE(io_.RunOne());  // one strand turn
  EXPECT_EQ(order, (std::vector<std::string>{"ack", "claim 1", "exclusive"}));
  EXPECT_EQ(io_.queued(), 0u) << "nothing was left for another turn";
  EXPECT_EQ(buffer->Counts().leased, 1);
  EXPECT_EQ(buffer->Counts().succeeded, 1);
}

// Stopped, a worker runs nothing more, and what is queued later stays queued: the
// engine stops all its workers before it destroys any, since one's strand can queue
// work on another (a claim's give-back).
TEST_F(ShardWorkerTest, AStoppedWorkerRunsNothingMore) {
  MakeWorker();
  StartWorker();
  ASSERT_TRUE(EnqueueAndLoad({Item("t")}));
  std::vector<LeasedItem> leased = TakeAndClaim("t", 1);
  ASSERT_EQ(leased.size(), 1u);
  worker_->Stop();
  bool answered = false;
  worker_->Ack({{leased[0].row, leased[0].token}},
               [&](std::vector<store::ItemOutcome>) { answered = true; });
  io_.RunAll();
  EXPECT_FALSE(answered);
  EXPECT_EQ(store_->calls(MemoryShardStore::Op::kAck), 0);
  EXPECT_EQ(StoredCounts().leased, 1u);
}

TEST_F(ShardWorkerTest, AnEmptyEnqueueIsAnsweredAtOnceWithNoRows) {
  MakeWorker(QuietOptions());
  StartWorker();
  auto out = EnqueueAsync({});
  EXPECT_EQ(out->calls, 1);
  ASSERT_TRUE(out->rows.ok()) << out->rows.status().ToString();
  EXPECT_TRUE(out->rows->empty());
  EXPECT_EQ(store_->calls(MemoryShardStore::Op::kInsert), 0);
}

// Acks, nacks and extensions that pile up while the strand is busy (a stalled store)
// are capped too: past max_pending_reports they are answered RESOURCE_EXHAUSTED at
// once, and taken again once the strand has drained what waits.
TEST_F(ShardWorkerTest, ReportsPastTheBufferAreResourceExhaustedUntilItDrains) {
  WorkerOptions o = QuietOptions();
  o.max_pending_reports = 1;
  MakeWorker(o);
  StartWorker();
  ASSERT_TRUE(EnqueueAndLoad({Item("t"), Item("t")}));
  std::vector<LeasedItem> leased = TakeAndClaim("t", 2);
  ASSERT_EQ(leased.size(), 2u);
  auto first = AckAsync(leased[0]);  // waits for the strand
  auto refused = AckAsync(leased[1]);
  ASSERT_EQ(refused->size(), 1u) << "answered at once";
  EXPECT_EQ((*refused)[0].status.code(), Code::kResourceExhausted);
  std::vector<store::ItemOutcome> extend;
  worker_->Extend({{leased[1].row, leased[1].token, Duration(1'000)}},
                  [&](std::vector<store::ItemOutcome> out) { extend = std::move(out); });
  ASSERT_EQ(extend.size(), 1u);
  EXPECT_EQ(extend[0].status.code(), Code::kResourceExhausted);
  io_.RunAll();
  ASSERT_EQ(first->size(), 1u);
  EXPECT_TRUE((*first)[0].status.ok());
  auto again = AckAsync(leased[1]);
  io_.RunAll();
  ASSERT_EQ(again->size(), 1u);
  EXPECT_TRUE((*again)[0].status.ok());
  EXPECT_EQ(StoredCounts().succeeded, 2u);
}

TEST_F(ShardWorkerTest, FullBufferIsResourceExhausted) {
  WorkerOptions o = QuietOptions();
  o.max_pending_enqueues = 4;
  MakeWorker(o);
  StartWorker();
  auto first = EnqueueAsync({Item("t"), Item("t"), Item("t")});
  auto refused = EnqueueAsync({Item("t"), Item("t")});  // 3 + 2 > 4
  // Refused at once, on the caller's thread, without trying the store.
  EXPECT_EQ(refused->calls, 1);
  EXPECT_EQ(refused->rows.status().code(), Code::kResourceExhausted);
  EXPECT_EQ(refused->untried, 2u) << "the items come back for another shard";
  auto fits = EnqueueAsync({Item("t")});  // 3 + 1 == 4
  EXPECT_EQ(fits->calls, 0);
  io_.RunAll();
  ASSERT_TRUE(first->rows.ok());
  ASSERT_TRUE(fits->rows.ok());
  EXPECT_EQ(store_->size(), 4u);
  // Once the strand took the batch, the buffer has room again.
  auto again = EnqueueAsync({Item("t"), Item("t"), Item("t"), Item("t")});
  EXPECT_EQ(again->calls, 0);
  io_.RunAll();
  EXPECT_TRUE(again->rows.ok());
  EXPECT_EQ(store_->size(), 8u);
}

TEST_F(ShardWorkerTest, CountsFollowEnqueueClaimAckNack) {
  MakeWorker();
  StartWorker();
  Time now = clock_.Now();
  auto out = EnqueueAsync(
      {Item("t", 2), Item("t", 1), Item("t", 3), Item("t", 0, now + Duration(400))});
  io_.RunAll();
  ASSERT_TRUE(out->rows.ok());
  auto buffer = Buffer("t");
  prefetch::StateCounts c = buffer->Counts();
  EXPECT_EQ(c.ready, 3);
  EXPECT_EQ(c.delayed, 1);
  EXPECT_EQ(c.leased, 0);

  LoadWindow("t");
  EXPECT_EQ(buffer->WindowSize(0), 3u);
  std::vector<LeasedItem> leased = TakeAndClaim("t", 2);
  ASSERT_EQ(leased.size(), 2u);
  // The best two by priority: rows 2 (p1) and 1 (p2).
  std::set<RowId> rows{leased[0].row, leased[1].row};
  EXPECT_EQ(rows, (std::set<RowId>{RowId(1), RowId(2)}));
  for (const LeasedItem& l : leased) {
    EXPECT_EQ(l.attempts, 1u);
    EXPECT_EQ(l.lease_deadline, now + Duration(30'000));
  }
  c = buffer->Counts();
  EXPECT_EQ(c.ready, 1);
  EXPECT_EQ(c.leased, 2);
  EXPECT_EQ(buffer->WindowSize(0), 1u);

  std::vector<store::ItemOutcome> acked;
  worker_->Ack({{leased[0].row, leased[0].token}},
               [&](std::vector<store::ItemOutcome> o) { acked = std::move(o); });
  io_.RunAll();
  ASSERT_EQ(acked.size(), 1u);
  EXPECT_TRUE(acked[0].status.ok());
  c = buffer->Counts();
  EXPECT_EQ(c.leased, 1);
  EXPECT_EQ(c.ready, 1);

  std::vector<store::ItemOutcome> nacked;
  worker_->Nack({{leased[1].row, leased[1].token, Duration(0), std::nullopt}},
                [&](std::vector<store::ItemOutcome> o) { nacked = std::move(o); });
  io_.RunAll();
  ASSERT_EQ(nacked.size(), 1u);
  EXPECT_TRUE(nacked[0].status.ok());
  c = buffer->Counts();
  EXPECT_EQ(c.leased, 0);
  EXPECT_EQ(c.ready, 2);
  EXPECT_EQ(c.delayed, 1);
  EXPECT_EQ(buffer->WindowSize(0), 2u);  // the nacked item is back in the window
}

// The turn's `now` is rounded down, maybe to before the nack came in: a retry delay
// counts from the millisecond rounded up, so the item is never due before the nack's
// arrival plus its delay. A nack with no delay stays READY at once.
TEST_F(ShardWorkerTest, ANackDelayCountsFromTheMillisecondRoundedUp) {
  MakeWorker();
  StartWorker();
  ASSERT_TRUE(EnqueueAndLoad({Item("t", 1), Item("t", 2)}));
  std::vector<LeasedItem> leased = TakeAndClaim("t", 2);
  ASSERT_EQ(leased.size(), 2u);
  clock_.SetBetweenMilliseconds(true);
  const Time now = clock_.Now();
  std::vector<store::ItemOutcome> nacked;
  worker_->Nack({{leased[0].row, leased[0].token, Duration(500), std::nullopt},
                 {leased[1].row, leased[1].token, Duration(0), std::nullopt}},
                [&](std::vector<store::ItemOutcome> o) { nacked = std::move(o); });
  io_.RunAll();
  ASSERT_EQ(nacked.size(), 2u);
  EXPECT_TRUE(nacked[0].status.ok());
  EXPECT_TRUE(nacked[1].status.ok());
  auto later = store_->GetTask(leased[0].row, false);
  ASSERT_TRUE(later.ok());
  EXPECT_EQ(later->state, ItemState::kDelayed);
  EXPECT_EQ(later->deliver_after, now + Duration(501));
  auto at_once = store_->GetTask(leased[1].row, false);
  ASSERT_TRUE(at_once.ok());
  EXPECT_EQ(at_once->state, ItemState::kReady);
  EXPECT_EQ(at_once->deliver_after, now);
}

// The index is updated before a caller is told the outcome, so a dequeue that follows
// an answered enqueue finds the item.
TEST_F(ShardWorkerTest, EnqueuedItemIsInTheWindowWhenTheCallbackRuns) {
  MakeWorker();
  StartWorker();
  LoadWindow("t");  // complete (and empty): new items go straight in
  auto buffer = Buffer("t");
  size_t window_in_callback = 99;
  worker_->Enqueue({Item("t")},
                   [&](Result<std::vector<store::Inserted>> rows, std::vector<NewItem>) {
                     EXPECT_TRUE(rows.ok());
                     window_in_callback = buffer->WindowSize(0);
                   });
  io_.RunAll();
  EXPECT_EQ(window_in_callback, 1u);
}

// The same for a nack. RunBatches (before RunWrites) called `done` before
// ReadyBatch::Flush, so the item was not in the window yet when the caller learned
// the nack succeeded.
TEST_F(ShardWorkerTest, NackedItemIsInTheWindowWhenTheCallbackRuns) {
  MakeWorker();
  StartWorker();
  ASSERT_TRUE(EnqueueAndLoad({Item("t")}));
  auto leased = TakeAndClaim("t", 1);
  ASSERT_EQ(leased.size(), 1u);
  auto buffer = Buffer("t");
  ASSERT_EQ(buffer->WindowSize(0), 0u);
  size_t window_in_callback = 99;
  worker_->Nack({{leased[0].row, leased[0].token, Duration(0), std::nullopt}},
                [&](std::vector<store::ItemOutcome> o) {
                  ASSERT_EQ(o.size(), 1u);
                  EXPECT_TRUE(o[0].status.ok());
                  window_in_callback = buffer->WindowSize(0);
                });
  io_.RunAll();
  EXPECT_EQ(window_in_callback, 1u);
  EXPECT_EQ(buffer->WindowSize(0), 1u);
}

TEST_F(ShardWorkerTest, TickPromotesDelayedItemExactlyAtItsTime) {
  MakeWorker();
  StartWorker();
  Time now = clock_.Now();
  auto out = EnqueueAsync(
      {Item("t", 0, now + Duration(300)), Item("t", 0, now + Duration(700))});
  io_.RunAll();
  ASSERT_TRUE(out->rows.ok());
  LoadWindow("t");
  auto buffer = Buffer("t");
  EXPECT_EQ(buffer->Counts().delayed, 2);

  // The answer is the time to the next delayed item.
  EXPECT_EQ(worker_->Tick(clock_.Now()), Duration(300));
  EXPECT_EQ(io_.queued(), 0u);
  clock_.Advance(Duration(299));
  EXPECT_EQ(worker_->Tick(clock_.Now()), Duration(1));
  EXPECT_EQ(io_.queued(), 0u);  // not 1 ms early
  EXPECT_EQ(buffer->Counts().delayed, 2);

  clock_.Advance(Duration(1));
  worker_->Tick(clock_.Now());
  EXPECT_EQ(io_.queued(), 1u);
  io_.RunAll();
  prefetch::StateCounts c = buffer->Counts();
  EXPECT_EQ(c.delayed, 1);
  EXPECT_EQ(c.ready, 1);
  EXPECT_EQ(buffer->WindowSize(0), 1u);
  // After the promotion the next deadline is the second item's.
  EXPECT_EQ(worker_->Tick(clock_.Now()), Duration(400));
  EXPECT_EQ(io_.queued(), 0u);

  clock_.Advance(Duration(400));
  worker_->Tick(clock_.Now());
  io_.RunAll();
  c = buffer->Counts();
  EXPECT_EQ(c.delayed, 0);
  EXPECT_EQ(c.ready, 2);
  // Nothing due any more: the backstop.
  EXPECT_EQ(worker_->Tick(clock_.Now()), Ticker::kMaxSleep);
}

// With read-ahead, a promotion reads the DELAYED items falling due soon; the ticker
// releases each into the ready index at its time, and a claim leases it while MySQL
// still says DELAYED: no promotion stands between its due time and its delivery.
TEST_F(ShardWorkerTest, ReadAheadReleasesADelayedItemAtItsTimeForAClaim) {
  StartReadingAhead(Duration(100));
  auto out = EnqueueAsync({Item("t", 0, clock_.Now() + Duration(300))});
  io_.RunAll();
  ASSERT_TRUE(out->rows.ok());
  const RowId row = (*out->rows)[0].row;
  LoadWindow("t");
  auto buffer = Buffer("t");
  // The promotion that reads it comes a lookahead before its time.
  EXPECT_EQ(worker_->Tick(clock_.Now()), Duration(200));
  clock_.Advance(Duration(200));
  worker_->Tick(clock_.Now());
  io_.RunAll();
  EXPECT_EQ(buffer->Counts().delayed, 1);
  EXPECT_EQ(buffer->WindowSize(0), 0u);
  // Next: reading on at half the window (+250), then its release (+300).
  EXPECT_EQ(worker_->Tick(clock_.Now()), Duration(50));
  clock_.Advance(Duration(50));
  worker_->Tick(clock_.Now());
  io_.RunAll();
  EXPECT_EQ(worker_->Tick(clock_.Now()), Duration(50));

  clock_.Advance(Duration(49));
  worker_->Tick(clock_.Now());
  EXPECT_EQ(buffer->WindowSize(0), 0u);  // not 1 ms early
  clock_.Advance(Duration(1));
  worker_->Tick(clock_.Now());
  EXPECT_EQ(buffer->WindowSize(0), 1u);  // released, before any strand turn ran
  EXPECT_EQ(buffer->Counts().delayed, 0);
  EXPECT_EQ(buffer->Counts().ready, 1);

  const size_t promotions = store_->calls(MemoryShardStore::Op::kPromoteDue);
  std::vector<LeasedItem> leased = TakeAndClaim("t", 1);
  ASSERT_EQ(leased.size(), 1u);
  EXPECT_EQ(leased[0].row, row);
  EXPECT_EQ(leased[0].deliver_after, clock_.Now());
  prefetch::StateCounts c = buffer->Counts();
  EXPECT_EQ(c.delayed, 0);
  EXPECT_EQ(c.ready, 0);
  EXPECT_EQ(c.leased, 1);
  // The claim ran first in its turn; a promotion after it found nothing to move.
  EXPECT_LE(store_->calls(MemoryShardStore::Op::kPromoteDue), promotions + 1);
  EXPECT_EQ(StoredCounts().leased, 1u);
}

// More items due in one millisecond than a promotion reads (a batch enqueued with one
// delay): the read gets stuck on that millisecond, and the promotions must wait for
// it, not come back at once to read the same rows (a busy loop of transactions until
// then, before the fix); at that time one promotion makes them all READY.
TEST_F(ShardWorkerTest, ReadAheadOfABatchDueInOneMillisecondWaitsForIt) {
  StartReadingAhead(Duration(100), 2);
  const Time due = clock_.Now() + Duration(300);
  auto out = EnqueueAsync({Item("t", 0, due), Item("t", 0, due), Item("t", 0, due),
                           Item("t", 0, due), Item("t", 0, due)});
  io_.RunAll();
  ASSERT_TRUE(out->rows.ok());
  LoadWindow("t");
  auto buffer = Buffer("t");
  EXPECT_EQ(worker_->Tick(clock_.Now()), Duration(200));
  clock_.Advance(Duration(200));
  const size_t before = store_->calls(MemoryShardStore::Op::kPromoteDue);
  TickAndRun(10);
  // One read up to the last millisecond before, one that found it full: then a wait.
  EXPECT_LE(store_->calls(MemoryShardStore::Op::kPromoteDue), before + 2);
  EXPECT_EQ(worker_->Tick(clock_.Now()), Duration(100));
  EXPECT_EQ(buffer->Counts().delayed, 5);

  clock_.Advance(Duration(100));
  TickAndRun(3);
  prefetch::StateCounts c = buffer->Counts();
  EXPECT_EQ(c.delayed, 0);
  EXPECT_EQ(c.ready, 5);
  EXPECT_EQ(StoredCounts().ready, 5u);
}

TEST_F(ShardWorkerTest, ReadAheadReleasedItemNoClaimTookIsPromotedAndCountedOnce) {
  StartReadingAhead(Duration(100));
  ASSERT_TRUE(EnqueueAndLoad({Item("t", 0, clock_.Now() + Duration(50))}));
  auto buffer = Buffer("t");
  // Due within the window the start-up promotion read: scheduled at its enqueue.
  EXPECT_EQ(worker_->Tick(clock_.Now()), Duration(50));
  clock_.Advance(Duration(50));
  worker_->Tick(clock_.Now());
  EXPECT_EQ(buffer->Counts().ready, 1);
  EXPECT_EQ(buffer->WindowSize(0), 1u);
  // The promotion due now (half the read-ahead window is used) reads on and leaves
  // the released item to claims for a lookahead; the one after that makes the store
  // say READY, without counting the item a second time.
  EXPECT_EQ(io_.queued(), 1u);
  io_.RunAll();
  EXPECT_EQ(StoredCounts().delayed, 1u);
  EXPECT_EQ(worker_->Tick(clock_.Now()), Duration(100));
  clock_.Advance(Duration(100));
  worker_->Tick(clock_.Now());
  io_.RunAll();
  store::TopicCounts stored = StoredCounts();
  EXPECT_EQ(stored.ready, 1u);
  EXPECT_EQ(stored.delayed, 0u);
  prefetch::StateCounts c = buffer->Counts();
  EXPECT_EQ(c.ready, 1);
  EXPECT_EQ(c.delayed, 0);
  EXPECT_EQ(buffer->WindowSize(0), 1u);
  EXPECT_EQ(TakeAndClaim("t", 1).size(), 1u);
  EXPECT_EQ(buffer->Counts().leased, 1);
}

TEST_F(ShardWorkerTest, ReadAheadReleasedItemStaysInTheWindowThroughARefill) {
  StartReadingAhead(Duration(200));
  auto out = EnqueueAsync({Item("t", 5), Item("t", 0, clock_.Now() + Duration(50))});
  io_.RunAll();
  ASSERT_TRUE(out->rows.ok());
  const RowId delayed = (*out->rows)[1].row;
  LoadWindow("t");
  auto buffer = Buffer("t");
  clock_.Advance(Duration(50));
  // Released; its promotion waits until half the 200 ms window is used (+100).
  EXPECT_EQ(worker_->Tick(clock_.Now()), Duration(50));
  EXPECT_EQ(io_.queued(), 0u);
  EXPECT_EQ(buffer->WindowSize(0), 2u);
  // A refill reads READY rows only; the released key is offered again after it.
  worker_->Refill(buffer);
  io_.RunAll();
  EXPECT_EQ(StoredCounts().delayed, 1u);
  EXPECT_EQ(buffer->WindowSize(0), 2u);
  std::vector<LeasedItem> first = TakeAndClaim("t", 1);
  ASSERT_EQ(first.size(), 1u);
  EXPECT_EQ(first[0].row, delayed);  // priority 0 before 5
}

TEST_F(ShardWorkerTest, DueItemsArePromotedBeforeTheTurnsEnqueuesAndAcks) {
  MakeWorker();
  StartWorker();
  Time now = clock_.Now();
  ASSERT_TRUE(EnqueueAndLoad({Item("t", 1), Item("d", 0, now + Duration(100))}));
  std::vector<LeasedItem> leased = TakeAndClaim("t", 1);
  ASSERT_EQ(leased.size(), 1u);

  clock_.Advance(Duration(100));
  worker_->Tick(clock_.Now());  // the delayed item fell due: a promotion is pending
  auto due = Buffer("d");
  std::vector<std::string> order;
  worker_->Enqueue({Item("t", 2)}, [&](Result<std::vector<store::Inserted>>,
                                       std::vector<NewItem>) {
    order.push_back("enqueue, ready due items: " + std::to_string(due->Counts().ready));
  });
  worker_->Ack({{leased[0].row, leased[0].token}}, [&](std::vector<store::ItemOutcome>) {
    order.push_back("ack, ready due items: " + std::to_string(due->Counts().ready));
  });
  ASSERT_TRUE(io_.RunOne());  // one strand turn
  EXPECT_EQ(order, (std::vector<std::string>{"enqueue, ready due items: 1",
                                             "ack, ready due items: 1"}));
}

TEST_F(ShardWorkerTest, PromotionOfMoreThanABatchGoesOnAtOnceInOneTransactionEach) {
  WorkerOptions options = QuietOptions();
  options.promote_batch = 2;
  MakeWorker(options);
  StartWorker();
  Time now = clock_.Now();
  auto out = EnqueueAsync(
      {Item("t", 0, now + Duration(100)), Item("t", 0, now + Duration(100)),
       Item("t", 0, now + Duration(100)), Item("t", 0, now + Duration(900))});
  io_.RunAll();
  ASSERT_TRUE(out->rows.ok());
  auto buffer = Buffer("t");
  const size_t next_due_queries = store_->calls(MemoryShardStore::Op::kNextDue);

  clock_.Advance(Duration(100));
  worker_->Tick(clock_.Now());
  io_.RunAll();
  EXPECT_EQ(buffer->Counts().ready, 2);
  // One more is due: the next tick, at the same time, posts it.
  worker_->Tick(clock_.Now());
  EXPECT_EQ(io_.queued(), 1u);
  io_.RunAll();
  EXPECT_EQ(buffer->Counts().ready, 3);
  EXPECT_EQ(worker_->Tick(clock_.Now()), Duration(800));
  // The promotion itself said when it next has work: no separate query.
  EXPECT_EQ(store_->calls(MemoryShardStore::Op::kNextDue), next_due_queries);
}

TEST_F(ShardWorkerTest, ExpiredLeaseIsPromotedAndRedelivered) {
  MakeWorker();
  StartWorker();
  ASSERT_TRUE(EnqueueAndLoad({Item("t", 0, Time{}, Duration(500))}));
  auto first = TakeAndClaim("t", 1);
  ASSERT_EQ(first.size(), 1u);
  EXPECT_EQ(first[0].attempts, 1u);
  EXPECT_EQ(worker_->Tick(clock_.Now()), Duration(500));

  clock_.Advance(Duration(499));
  worker_->Tick(clock_.Now());
  EXPECT_EQ(io_.queued(), 0u);
  EXPECT_EQ(Buffer("t")->Counts().leased, 1);

  clock_.Advance(Duration(1));
  worker_->Tick(clock_.Now());
  io_.RunAll();
  prefetch::StateCounts c = Buffer("t")->Counts();
  EXPECT_EQ(c.leased, 0);
  EXPECT_EQ(c.ready, 1);
  auto second = TakeAndClaim("t", 1);
  ASSERT_EQ(second.size(), 1u);
  EXPECT_EQ(second[0].row, first[0].row);
  EXPECT_EQ(second[0].attempts, 2u);
  EXPECT_NE(second[0].token, first[0].token);
}

// A cold start of many shards takes a while; enqueues pinned to a starting shard (by
// their dedup key) wait for its first open instead of failing.
TEST_F(ShardWorkerTest, EnqueuesTakenWhileStartingWaitForTheFirstOpen) {
  MakeWorker();
  worker_->Start();  // the open has not run yet
  EXPECT_FALSE(worker_->Health().open);
  EXPECT_TRUE(worker_->AcceptsEnqueues());
  auto out = EnqueueAsync({Item("t"), Item("t")});
  EXPECT_EQ(out->calls, 0);
  io_.RunAll();
  EXPECT_TRUE(worker_->Health().open);
  ASSERT_EQ(out->calls, 1);
  ASSERT_TRUE(out->rows.ok()) << out->rows.status().ToString();
  EXPECT_EQ(out->rows->size(), 2u);
  EXPECT_EQ(store_->calls(MemoryShardStore::Op::kInsert), 1);
}

TEST_F(ShardWorkerTest, EnqueuesTakenWhileStartingAreNotAttemptedIfTheOpenFails) {
  MakeWorker();
  store_->FailAll(Status::Unavailable("db down"));
  worker_->Start();
  auto out = EnqueueAsync({Item("t")});
  io_.RunAll();
  EXPECT_FALSE(worker_->Health().open);
  ASSERT_EQ(out->calls, 1);
  EXPECT_EQ(out->rows.status().code(), Code::kUnavailable);
  EXPECT_EQ(out->untried, 1u) << "nothing written: the engine may use another shard";
  EXPECT_EQ(store_->calls(MemoryShardStore::Op::kInsert), 0);
  EXPECT_FALSE(worker_->AcceptsEnqueues()) << "started, and down";
}

TEST_F(ShardWorkerTest, OpenBreakerRefusesEnqueuesWithoutAttemptingThem) {
  WorkerOptions o = QuietOptions();
  o.breaker.min_samples = 2;
  o.breaker.failure_ratio = 0.5;
  o.breaker.cooldown = kCooldown;
  MakeWorker(o);
  worker_->Start();
  io_.RunAll();  // recovery only: no samples in the breaker yet
  store_->FailAll(Status::Unavailable("db down"));

  auto first = EnqueueAsync({Item("t")});
  io_.RunAll();
  EXPECT_EQ(first->rows.status().code(), Code::kUnavailable);
  EXPECT_EQ(first->untried, 0u);  // the insert was tried and failed
  // Its outcome unknown, the next turn's resync read the store, and failed too: two
  // failures of two samples.
  EXPECT_EQ(store_->calls(MemoryShardStore::Op::kCountByTopic), 2u);  // start, resync
  EXPECT_EQ(worker_->Health().breaker, BreakerState::kOpen);
  EXPECT_FALSE(worker_->AcceptsEnqueues());
  int inserts = store_->calls(MemoryShardStore::Op::kInsert);

  // Queued before or after the trip, the strand now refuses without trying.
  auto out = EnqueueAsync({Item("t")});
  io_.RunAll();
  EXPECT_EQ(out->rows.status().code(), Code::kUnavailable);
  EXPECT_EQ(out->untried, 1u) << "not tried";
  EXPECT_EQ(store_->calls(MemoryShardStore::Op::kInsert), inserts);

  store_->ClearFailures();
  EXPECT_TRUE(ProbeAfterTheCooldown());
  auto ok = EnqueueAsync({Item("t")});
  io_.RunAll();
  EXPECT_TRUE(ok->rows.ok());
  EXPECT_EQ(store_->size(), 1u);
}

// An item that falls due while the breaker is open is promoted once the shard is back.
// Today Tick() clears next_due_ and asks for a promotion, RunWork() drops it (circuit
// open) and nothing re-arms it after the probe succeeds: the item stays DELAYED until
// some unrelated event notes a new deadline.
TEST_F(ShardWorkerTest, PromotionDueDuringOutageRunsAfterRecovery) {
  StartWithATouchyBreaker();
  Time now = clock_.Now();
  ASSERT_TRUE(EnqueueAndLoad({Item("t", 0, now + Duration(300))}));
  auto buffer = Buffer("t");

  // The shard goes down and the breaker opens.
  store_->FailAll(Status::Unavailable("db down"));
  auto failed = EnqueueAsync({Item("t")});
  io_.RunAll();
  ASSERT_EQ(failed->rows.status().code(), Code::kUnavailable);
  ASSERT_EQ(worker_->Health().breaker, BreakerState::kOpen);

  // The item falls due during the outage.
  clock_.Advance(Duration(300));
  worker_->Tick(clock_.Now());
  io_.RunAll();
  EXPECT_EQ(buffer->Counts().delayed, 1);

  // The shard comes back: probe after the cool-down.
  store_->ClearFailures();
  ASSERT_TRUE(ProbeAfterTheCooldown());

  // The next ticks promote it.
  TickAndRun(3);
  prefetch::StateCounts c = buffer->Counts();
  EXPECT_EQ(c.delayed, 0);
  EXPECT_EQ(c.ready, 1);
}

// A parked dequeue, as engine/dequeue_op.cc runs one: each wake re-registers it and
// takes again, which asks for the refills the windows want.
class RetakingWaiter : public prefetch::Waiter,
                       public std::enable_shared_from_this<RetakingWaiter> {
 public:
  RetakingWaiter(std::shared_ptr<prefetch::TopicBuffer> buffer, ShardWorker& worker)
      : buffer_(std::move(buffer)), worker_(worker) {}
  void Wake(const prefetch::TopicBuffer&) override {
    ++wakes;
    Attempt();
  }
  void Attempt() {
    buffer_->AddWaiter(weak_from_this());
    std::vector<size_t> refill;
    bool blocked = false;
    taken += buffer_->Take(1, &refill, &blocked).size();
    for (size_t i = 0; i < refill.size(); ++i) worker_.Refill(buffer_);
  }
  int wakes = 0;
  size_t taken = 0;

 private:
  std::shared_ptr<prefetch::TopicBuffer> buffer_;
  ShardWorker& worker_;
};

// While the circuit is open every refill is refused at once. A refused refill used to
// wake the parked dequeues, whose takes asked for the next one: a loop that kept a
// pool thread busy for the whole cool-down. Now a down shard's window asks for no
// refill until the probe succeeds, and then gets one.
TEST_F(ShardWorkerTest, AParkedDequeueIsNotWokenOverAndOverWhileTheShardIsDown) {
  StartWithATouchyBreaker();
  store_->FailAll(Status::Unavailable("db down"));
  auto failed = EnqueueAsync({Item("other")});
  io_.RunAll();
  ASSERT_EQ(worker_->Health().breaker, BreakerState::kOpen);

  // A dequeue on a topic first seen during the outage: its window starts unknown.
  auto waiter = std::make_shared<RetakingWaiter>(Buffer("t"), *worker_);
  waiter->Attempt();
  size_t turns = 0;
  while (turns < 100 && io_.RunOne()) ++turns;
  EXPECT_LT(turns, 5u) << "the strand kept running refills for the parked dequeue";
  EXPECT_LE(waiter->wakes, 1) << "woken once, when the window became unavailable";
  EXPECT_EQ(waiter->taken, 0u);

  // The shard is back: the probe's turn refills the window (its refill is the one the
  // parked dequeue's wake asks for), and the dequeue gets the next item stored.
  store_->ClearFailures();
  ASSERT_TRUE(ProbeAfterTheCooldown());
  auto now_stored = EnqueueAsync({Item("t")});
  io_.RunAll();
  ASSERT_TRUE(now_stored->rows.ok());
  EXPECT_EQ(waiter->taken, 1u);
}

// The circuit opens during a turn (an earlier step failed) that also runs a refill.
// The refill itself succeeds, but the window must stay unavailable: dequeues would
// take its keys, the open circuit would refuse their claims and drop the keys, and the
// window (complete, now empty) would never be refilled -- READY items nobody sees.
TEST_F(ShardWorkerTest, ARefillInTheTurnThatOpensTheCircuitLeavesTheWindowToTheProbe) {
  StartWithATouchyBreaker();
  auto out = EnqueueAsync({Item("t", 1), Item("t", 2), Item("t", 3)});
  io_.RunAll();
  ASSERT_TRUE(out->rows.ok());
  auto buffer = Buffer("t");

  // One turn: an insert that fails (the circuit opens), then the window's refill.
  store_->FailNext(MemoryShardStore::Op::kInsert, Status::Unavailable("lost connection"));
  auto failed = EnqueueAsync({Item("other")});
  ASSERT_TRUE(buffer->ClaimRefill(0));
  worker_->Refill(buffer);
  io_.RunAll();
  ASSERT_EQ(failed->rows.status().code(), Code::kUnavailable);
  ASSERT_EQ(worker_->Health().breaker, BreakerState::kOpen);
  EXPECT_EQ(buffer->WindowSize(0), 0u);
  EXPECT_TRUE(TakeAndClaim("t", 3).empty()) << "nothing to take while the shard is down";

  // The probe closes the circuit and refills the window: all three are delivered.
  ASSERT_TRUE(ProbeAfterTheCooldown());
  EXPECT_EQ(TakeAndClaim("t", 3).size(), 3u);
}

TEST_F(ShardWorkerTest, AFailedClaimLeavesItsItemsReadyAndTheWindowIsReloaded) {
  MakeWorker();
  StartWorker();
  ASSERT_TRUE(EnqueueAndLoad({Item("t", 1), Item("t", 2)}));
  auto buffer = Buffer("t");
  ASSERT_EQ(buffer->WindowSize(0), 2u);

  store_->FailNext(MemoryShardStore::Op::kClaim, Status::Unavailable("lost connection"));
  EXPECT_TRUE(TakeAndClaim("t", 2).empty());
  prefetch::StateCounts c = buffer->Counts();
  EXPECT_EQ(c.ready, 2);
  EXPECT_EQ(c.leased, 0);
  EXPECT_EQ(worker_->Health().breaker, BreakerState::kClosed);  // one failure only
  // Its outcome unknown, the claim made the next turn resync: the window is reset.
  EXPECT_EQ(buffer->WindowSize(0), 0u);
  auto leased = TakeAfterReset("t", 2);
  ASSERT_EQ(leased.size(), 2u);
  EXPECT_EQ(buffer->Counts().leased, 2);
  EXPECT_EQ(buffer->WindowSize(0), 0u);
}

// Two claims of one row in one batch (a window can hold a stale key of a row beside
// its current one): the store leases it once, and only one caller may get it.
TEST_F(ShardWorkerTest, ARowClaimedTwiceInOneBatchGoesToOneCallerOnly) {
  MakeWorker();
  StartWorker();
  ASSERT_TRUE(EnqueueAndLoad({Item("t")}));
  const std::vector<ReadyKey> keys = TakeKeys("t", 1);
  ASSERT_EQ(keys.size(), 1u);
  std::vector<LeasedItem> got[2];
  for (int i = 0; i < 2; ++i) {
    worker_->Claim(
        Buffer("t"), keys, "w" + std::to_string(i),
        [&got, i](std::vector<LeasedItem> items) { got[i] = std::move(items); });
  }
  io_.RunAll();
  EXPECT_EQ(got[0].size() + got[1].size(), 1u);
  prefetch::StateCounts c = Buffer("t")->Counts();
  EXPECT_EQ(c.leased, 1);
  EXPECT_EQ(c.ready, 0);
}

// The connection dies after the COMMIT and before its answer: the insert is stored,
// its caller got UNAVAILABLE, and the window (complete and empty) knew nothing of it.
TEST_F(ShardWorkerTest, AnEnqueueWhoseReplyWasLostIsDeliveredAfterTheResync) {
  MakeWorker();
  StartWorker();
  LoadWindow("t");  // complete and empty: it would never look at the store again
  NewItem item = Item("t");
  item.dedup_key = "k";
  store_->LoseNextReply(MemoryShardStore::Op::kInsert);
  auto lost = EnqueueAsync({item});
  io_.RunAll();  // the insert's turn, then the resync's
  ASSERT_EQ(lost->calls, 1);
  EXPECT_EQ(lost->rows.status().code(), Code::kUnavailable);
  EXPECT_EQ(store_->size(), 1u);

  // The producer's retry is deduplicated to the stored row...
  auto retry = EnqueueAsync({item});
  io_.RunAll();
  ASSERT_TRUE(retry->rows.ok());
  ASSERT_TRUE((*retry->rows)[0].deduplicated);
  EXPECT_EQ(Buffer("t")->Counts().ready, 1);  // re-read from the store
  // ...and that row is delivered.
  auto got = TakeAfterReset("t", 1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].row, (*retry->rows)[0].row);
}

// A claim that committed but whose answer was lost leases the item to nobody: the
// worker gives that lease back as never started (it knows the token), so the item is
// READY again at once, its attempt not counted -- an item of one attempt is not
// dead-lettered by a lease nobody had.
TEST_F(ShardWorkerTest, AClaimWhoseReplyWasLostIsGivenBackAtOnce) {
  MakeWorker();
  StartWorker();
  NewItem item = Item("t", 0, Time{}, Duration(500));
  item.max_attempts = 1;
  ASSERT_TRUE(EnqueueAndLoad({item}));
  store_->LoseNextReply(MemoryShardStore::Op::kClaim);
  EXPECT_TRUE(TakeAndClaim("t", 1).empty());  // and the turns it queued: resync, nack
  store::TopicCounts stored = StoredCounts();
  EXPECT_EQ(stored.ready, 1u);
  EXPECT_EQ(stored.leased, 0u);
  EXPECT_EQ(Buffer("t")->Counts().ready, 1);
  auto again = TakeAfterReset("t", 1);
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0].attempts, 1u);
}

// The shard goes down with a claim whose reply was lost (its breaker opens): the
// give-back is owed, not dropped, and goes once the shard is up again, after the
// resync it waits for.
TEST_F(ShardWorkerTest, AGiveBackOwedWhileTheShardIsDownGoesOnceItIsUp) {
  StartWithATouchyBreaker();
  NewItem item = Item("t", 0, Time{}, Duration(500));
  item.max_attempts = 1;
  ASSERT_TRUE(EnqueueAndLoad({item}));
  store_->LoseNextReply(MemoryShardStore::Op::kClaim);
  EXPECT_TRUE(TakeAndClaim("t", 1).empty());  // the breaker opens at it
  ASSERT_EQ(worker_->Health().breaker, BreakerState::kOpen);
  EXPECT_EQ(store_->calls(MemoryShardStore::Op::kNack), 0);
  EXPECT_EQ(StoredCounts().leased, 1u);

  ASSERT_TRUE(ProbeAfterTheCooldown());
  io_.RunAll();
  store::TopicCounts stored = StoredCounts();
  EXPECT_EQ(stored.ready, 1u);
  EXPECT_EQ(stored.leased, 0u);
  auto again = TakeAndClaim("t", 1);  // the probe's refill loaded the window
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0].attempts, 1u);
}

// The same give-back after a claim that did not commit (the connection died before
// the COMMIT reached MariaDB) finds the token unknown and changes nothing.
TEST_F(ShardWorkerTest, AGiveBackOfAClaimThatDidNotCommitChangesNothing) {
  MakeWorker();
  StartWorker();
  ASSERT_TRUE(EnqueueAndLoad({Item("t")}));
  store_->FailNext(MemoryShardStore::Op::kClaim, Status::Unavailable("connection lost"));
  EXPECT_TRUE(TakeAndClaim("t", 1).empty());
  EXPECT_EQ(store_->calls(MemoryShardStore::Op::kNack), 1);  // the give-back
  EXPECT_EQ(StoredCounts().ready, 1u);
  auto got = TakeAfterReset("t", 1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].attempts, 1u);
}

// A nack that committed (the row is READY) but whose answer was lost.
TEST_F(ShardWorkerTest, ANackWhoseReplyWasLostIsDeliveredAfterTheResync) {
  MakeWorker();
  StartWorker();
  ASSERT_TRUE(EnqueueAndLoad({Item("t")}));
  auto leased = TakeAndClaim("t", 1);
  ASSERT_EQ(leased.size(), 1u);
  store_->LoseNextReply(MemoryShardStore::Op::kNack);
  std::vector<store::ItemOutcome> outcome;
  worker_->Nack({{leased[0].row, leased[0].token, Duration(0), std::nullopt}},
                [&](std::vector<store::ItemOutcome> o) { outcome = std::move(o); });
  io_.RunAll();
  ASSERT_EQ(outcome.size(), 1u);
  EXPECT_EQ(outcome[0].status.code(), Code::kUnavailable);
  prefetch::StateCounts c = Buffer("t")->Counts();
  EXPECT_EQ(c.ready, 1);
  EXPECT_EQ(c.leased, 0);
  auto again = TakeAfterReset("t", 1);
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0].row, leased[0].row);
}

// A promotion that committed but whose answer was lost, of an item released early
// (read ahead): READY in the store, READY in memory; counted once, delivered once.
TEST_F(ShardWorkerTest, APromotionWhoseReplyWasLostIsCountedAndDeliveredOnce) {
  StartReadingAhead(Duration(100));
  const Time due = clock_.Now() + Duration(50);
  auto out = EnqueueAsync({Item("t", 0, due)});
  io_.RunAll();
  ASSERT_TRUE(out->rows.ok());
  clock_.Advance(Duration(50));
  TickAndRun(1);  // released into the index, DELAYED in the store
  ASSERT_EQ(Buffer("t")->Counts().ready, 1);

  store_->LoseNextReply(MemoryShardStore::Op::kPromoteDue);
  clock_.Advance(Duration(100));  // no claim took it: a promotion marks it READY
  TickAndRun(2);
  ASSERT_EQ(StoredCounts().ready, 1u);
  prefetch::StateCounts c = Buffer("t")->Counts();
  EXPECT_EQ(c.ready, 1);
  EXPECT_EQ(c.delayed, 0);
  auto got = TakeAfterReset("t", 2);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].row, (*out->rows)[0].row);
  EXPECT_EQ(Buffer("t")->Counts().leased, 1);
}

}  // namespace
}  // namespace shardq::shard_worker
