#pragma once
// ShardWorker: the only code that talks to one shard's store. Requests from any
// thread (enqueue, claim, ack, nack, extend, refill) go into its buffers; a strand
// on the shared I/O pool drains them in batches -- one multi-row INSERT for the
// enqueues waiting, one claim for the dequeues waiting, and so on, each of at most
// max_batch rows -- so many callers share one commit (group commit). Each callback
// runs on the strand after its batch has committed (or failed).
//
// It also keeps the shard's part of the in-memory index true (prefetch windows and
// counts), promotes due items (delays, expired leases) when the ticker says they are
// due, purges TTL-expired items, and owns the shard's circuit breaker.
//
// Threads: public methods are thread-safe and never block on I/O. Store calls run on
// at most one pool thread at a time per shard (the strand).

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/clock.h"
#include "common/executor.h"
#include "common/ids.h"
#include "common/item.h"
#include "common/status.h"
#include "common/ticker.h"
#include "prefetch/prefetch_index.h"
#include "shard_worker/circuit_breaker.h"
#include "shard_worker/latency_estimate.h"
#include "shard_worker/release_schedule.h"
#include "store/store_api.h"

namespace shardq::shard_worker {

struct WorkerOptions {
  size_t max_batch = 500;                // rows per store call (of every kind)
  size_t max_pending_enqueues = 50'000;  // beyond this: RESOURCE_EXHAUSTED
  // Acks, nacks and extensions (items) waiting for the strand: beyond this, while the
  // store stalls, RESOURCE_EXHAUSTED (the SDK retries), not unbounded memory.
  size_t max_pending_reports = 100'000;
  size_t promote_batch = 1'000;  // due items moved per transaction
  // How far ahead a promotion reads DELAYED items, to release each into the ready
  // index at its due time (release_schedule.h); 0: only promotions make items ready.
  Duration lookahead{100};
  // With a lookahead: at most one release into the index per gap (release_schedule.h).
  Duration release_gap{5};
  // With a lookahead: at most how long before its due time an item is released, so
  // its claim commits by then and the dequeue answers at the due time; the lead used
  // is the shard's recent claim latency (release_schedule.h).
  Duration max_release_lead{10};
  Duration purge_interval{1'000};  // how often TTL purge runs
  BreakerOptions breaker;
};

// `untried` is empty when the shard tried the insert. Otherwise (breaker open, buffer
// full, shard not open) `rows` is the refusal and `untried` holds the items back:
// nothing was written, so the caller may send them to another shard without risk of
// duplicates, and needs no copy of its own. A call without items (the engine never
// makes one) is answered at once with no rows.
using EnqueueDone = std::function<void(Result<std::vector<store::Inserted>> rows,
                                       std::vector<NewItem> untried)>;
using ClaimDone = std::function<void(std::vector<LeasedItem>)>;
using OutcomesDone = std::function<void(std::vector<store::ItemOutcome>)>;

// How long store calls take: finer than Duration, since most take well under 1 ms.
using StoreTime = std::chrono::microseconds;

// The upper bounds of the store-call time histogram's buckets (Prometheus' `le`);
// one more bucket holds the calls slower than the last.
inline constexpr std::array<StoreTime, 12> kStoreTimeBounds = {
    StoreTime(500),     StoreTime(1'000),   StoreTime(2'000),     StoreTime(5'000),
    StoreTime(10'000),  StoreTime(25'000),  StoreTime(50'000),    StoreTime(100'000),
    StoreTime(250'000), StoreTime(500'000), StoreTime(1'000'000), StoreTime(2'500'000)};

// What a shard's worker has done since it started, for the metrics page (rates,
// mean latencies and percentiles are the scraper's to compute).
struct ShardCounters {
  uint64_t enqueued = 0;  // items stored (a deduplicated retry stores nothing)
  uint64_t leased = 0;    // leases given: claims, and handoffs at insert and promotion
  uint64_t acked = 0;     // acks that finished their lease
  uint64_t nacked = 0;    // consumers' nacks that ended their lease (not give-backs)
  // Store calls (transactions, reads, probes) that failed for the shard
  // (UNAVAILABLE, INTERNAL).
  uint64_t store_failures = 0;
  StoreTime store_time{0};  // the store calls' time, summed
  // How many store calls took at most kStoreTimeBounds[i] and more than the bound
  // before it (not cumulative); the last entry: slower than every bound. Their sum
  // is the number of calls.
  std::array<uint64_t, kStoreTimeBounds.size() + 1> store_time_buckets{};
};

struct ShardHealth {
  ShardId id;
  BreakerState breaker = BreakerState::kClosed;
  bool open = false;      // the store is open and recovered
  bool starting = false;  // Start() was called and its first open has not finished
  std::string last_error;
  // How long before their due time delayed items are released now: the recent claim
  // latency's bound (LatencyEstimate), at most WorkerOptions::max_release_lead.
  Duration release_lead{0};
  ShardCounters counters;
};

class ShardWorker final : public Tickable {
 public:
  ShardWorker(size_t position, ShardId id, std::unique_ptr<store::ShardStore> store,
              Executor& io, Clock& clock, prefetch::PrefetchIndex& index,
              WorkerOptions options = {});
  // Drops whatever is still queued behind the strand's current turn; see DrainUntil.
  ~ShardWorker() override;

  ShardId id() const { return id_; }
  size_t position() const { return position_; }

  // Opens the store and rebuilds this shard's part of the index (crash recovery is
  // just start-up). Asynchronous; failures are retried by the breaker's probes.
  void Start();
  // Waits (real time, until `deadline` at most) for the strand to run everything
  // queued, including what that queues here meanwhile. True if there was nothing to
  // wait for. For shutting down: the destructor drops what is still queued, and a
  // dropped give-back of a held call leaves its item LEASED with its attempt counted.
  bool DrainUntil(std::chrono::steady_clock::time_point deadline);
  // Runs nothing more: waits for a turn in progress to end. What is queued later
  // stays queued, and is dropped with the worker. Another worker's strand may still
  // queue work here meanwhile, so an owner of several stops all before it destroys
  // any (the destructor stops too).
  void Stop();
  // True when new enqueues should come here: the shard is open and its breaker lets
  // traffic through, or it is still starting (the enqueues wait in its buffer for the
  // first open, instead of failing while a cold start of many shards runs).
  bool AcceptsEnqueues() const;
  ShardHealth Health() const;

  void Enqueue(std::vector<NewItem> items, EnqueueDone done);
  // Leases the reserved items `keys` of `buffer` for `worker_id`. The callback gets
  // those that were leased; the rest are released (back into the window if still
  // READY).
  void Claim(std::shared_ptr<prefetch::TopicBuffer> buffer, std::vector<ReadyKey> keys,
             std::string worker_id, ClaimDone done);
  void Ack(std::vector<store::AckRequest> reqs, OutcomesDone done);
  void Nack(std::vector<store::NackRequest> reqs, OutcomesDone done);
  void Extend(std::vector<store::ExtendRequest> reqs, OutcomesDone done);
  // Reloads this shard's window of `buffer` from the store.
  void Refill(std::shared_ptr<prefetch::TopicBuffer> buffer);

  // Runs `fn` on the strand with the store (operators' calls: GetTask, Cancel, dead
  // letters). `fn` returns the transitions it made, which the worker then applies to
  // the index, and, if set, `then`, which it runs after that: a caller answered there
  // finds the index already changed (a redriven item can be dequeued at once). If the
  // shard is down, `fn` gets nullptr. `status` is the store's answer, taken as the
  // worker's own calls' are: a failure counts against the breaker, and an UNAVAILABLE
  // (the outcome unknown: a redrive may have committed) has the worker re-read the
  // store before its next work, since `transitions` cannot say what changed.
  struct Exclusive {
    std::vector<ItemTransition> transitions;
    std::function<void()> then;
    Status status;
  };
  using StoreFn = std::function<Exclusive(store::ShardStore*)>;
  void RunExclusive(StoreFn fn);

  // Ticker: requests promotion, purge and probes when due. The worker pokes the
  // ticker when it learns of an earlier deadline.
  Duration Tick(Time now) override;
  void SetTicker(Ticker* ticker) { ticker_ = ticker; }
  // Called (on the strand, no lock held) after each open attempt or probe and when the
  // breaker opens: Health() may have changed. Set before Start().
  void SetHealthListener(std::function<void()> listener) {
    health_listener_ = std::move(listener);
  }

 private:
  struct PendingEnqueue {
    std::vector<NewItem> items;
    EnqueueDone done;
  };
  struct PendingClaim {
    std::shared_ptr<prefetch::TopicBuffer> buffer;
    std::vector<ReadyKey> keys;
    std::string worker_id;
    ClaimDone done;
    Time arrived{};
  };
  template <typename Req>
  struct PendingBatch {
    std::vector<Req> reqs;
    OutcomesDone done;
  };
  struct Work {
    std::vector<PendingEnqueue> enqueues;
    std::vector<PendingClaim> claims;
    std::vector<PendingBatch<store::AckRequest>> acks;
    std::vector<PendingBatch<store::NackRequest>> nacks;
    std::vector<PendingBatch<store::ExtendRequest>> extends;
    std::vector<std::shared_ptr<prefetch::TopicBuffer>> refills;
    std::vector<StoreFn> exclusive;
    bool promote = false;
    bool purge = false;
    bool probe = false;
    bool resync = false;  // only a wake-up: resync_ says whether one is owed
    bool empty() const {
      return enqueues.empty() && claims.empty() && acks.empty() && nacks.empty() &&
             extends.empty() && refills.empty() && exclusive.empty() && !promote &&
             !purge && !probe && !resync;
    }
  };

  // Queues acks, nacks or extensions (`list` of pending_), or refuses them all with
  // RESOURCE_EXHAUSTED past max_pending_reports.
  template <typename Req>
  void QueueReports(std::vector<PendingBatch<Req>> Work::*list, std::vector<Req> reqs,
                    OutcomesDone done);

  // Strand.
  void ScheduleLocked();
  void Run();
  void RunWork(Work& work);
  // Both record why they failed in last_error_ (and clear it on success).
  bool Recover();
  // After a store call failed with its outcome unknown (it may have committed), this
  // shard's part of the index may be wrong; re-reads it as Recover does. False if the
  // store could not be read (resync_ stays set).
  bool Resync();
  // What Recover and Resync take from the store's counts (CountByTopic): every topic's
  // counts of this shard (0 for a topic the store has none of), the releases dropped.
  void ApplyStoredCounts(const std::vector<store::TopicCounts>& counts);
  bool Reopen();  // a probe of a shard recovered before: reconnect (Open) and Ping
  void RunProbe();
  // Claims that came in while this turn runs go before its next transaction, so a
  // consumer waits for at most one transaction, not for a whole turn of inserts and
  // acks.
  void RunNewClaims();
  void RunClaimRuns(std::vector<PendingClaim>& claims);
  // One store call (transaction) each; RunWork splits the pending requests into runs
  // of at most max_batch rows (per kind: a Write may have one run of each).
  void RunWrites(std::span<PendingEnqueue> enqueues,
                 std::span<PendingBatch<store::AckRequest>> acks,
                 std::span<PendingBatch<store::NackRequest>> nacks,
                 std::span<PendingBatch<store::ExtendRequest>> extends);
  void RunClaims(std::span<PendingClaim> pending);
  // After a claim whose outcome is unknown (UNAVAILABLE: it may have committed, under
  // tokens no consumer holds), or a promotion's handoff leases (RunPromote): owes
  // nacks of its rows as never started. If the claim
  // committed, each item is due again in its place, its attempt not counted (so an
  // item of one attempt is not dead-lettered by a lease nobody had); if not, the
  // token does not match and the nack changes nothing.
  void GiveBackUnanswered(std::span<const store::ClaimRequest> rows);
  // The same for one lease nobody got: `row` under `token`, due again at `due`.
  void OweGiveBack(RowId row, LeaseToken token, Time due);
  // Adds the owed give-backs to `work`'s nacks, unless a resync is still owed (the
  // index must be true before their transitions apply); first finds the rows of
  // those owed by token. Those whose Write fails are owed again: they wait out an
  // outage, not only one turn.
  void TakeOwedGiveBacks(Work& work);
  class ReadyBatch;
  // A Write part's outcomes, split per caller, applied to the index (`ready_keys`);
  // each caller gets the call's error if the Write failed.
  template <typename Req>
  std::vector<std::vector<store::ItemOutcome>> TakeOutcomes(
      std::span<PendingBatch<Req>> pending, Result<store::Written>& written,
      std::vector<store::ItemOutcome> store::Written::*part, ReadyBatch& ready_keys);
  void RunRefill(const std::shared_ptr<prefetch::TopicBuffer>& buffer);
  void RunPromote();
  void RunPurge();
  void FailAll(Work& work, const Status& status);
  // Answers the enqueues and nacks the store would refuse as a whole (a bad item or
  // metadata: kInvalidArgument) and takes them out of `work`, so that they do not
  // fail the callers who share their transaction.
  void RefuseInvalid(Work& work);
  void ApplyTransition(const ItemTransition& t, ReadyBatch& ready_keys);
  // Puts the scheduled DELAYED items due at `now` into the ready index (ticker).
  void ReleaseDue(Time now);
  // A row became DELAYED (t): its release, if read ahead already, and its promotion.
  void ScheduleRelease(const ItemTransition& t);
  void OnShardDown();
  void OnShardUp();
  // Records an outcome in the breaker; on a trip, marks the shard's windows down. An
  // UNAVAILABLE (its outcome unknown) also owes a Resync.
  // A store call's outcome and time: for the counters, and for the breaker (its
  // time too, unless `breaker_times` is false: calls that may be slow by nature).
  void Observe(const Status& status, StoreTime latency, bool breaker_times = true);
  // The counters' part of Observe (also for probes, whose outcome the breaker gets
  // as a probe result).
  void CountCall(bool failed, StoreTime latency);
  void NoteDeadline(Time t);

  const size_t position_;
  const ShardId id_;
  std::unique_ptr<store::ShardStore> store_;
  Executor& io_;
  Clock& clock_;
  prefetch::PrefetchIndex& index_;
  const WorkerOptions options_;
  CircuitBreaker breaker_;
  Ticker* ticker_ = nullptr;
  std::function<void()> health_listener_;

  mutable std::mutex mu_;
  std::condition_variable idle_;  // signalled when the strand stops running
  Work pending_;
  size_t pending_enqueue_items_ = 0;
  size_t pending_report_items_ = 0;  // in pending_'s acks, nacks and extends
  bool running_ = false;
  bool recovered_ = false;
  bool starting_ = false;  // Start() was called, its first open has not run yet
  bool stopping_ = false;
  std::optional<Time> next_due_;  // when to promote next (DELAYED/LEASED deadlines)
  ReleaseSchedule releases_;
  Time next_purge_{};
  bool resync_ = false;  // strand only: a Resync is owed (Observe saw UNAVAILABLE)
  // Strand only: give-backs of the leases of claims, promotions and inserts whose
  // outcome was unknown (OweGiveBack), until the store has answered them.
  std::vector<store::NackRequest> owed_give_backs_;
  // Strand only: the (token, due time) of an insert's handoff leases whose outcome
  // was unknown, until the store says which rows hold them (LeasedRowsOf).
  std::vector<std::pair<LeaseToken, Time>> owed_by_token_;
  // Strand only: the time from Claim() to its commit, which sets the release lead.
  LatencyEstimate claim_latency_;
  // Held by the ticker across a release (TakeDue to its counts and keys) and by
  // ApplyStoredCounts across resetting the releases and the counts. Taken before mu_,
  // never while holding it.
  std::mutex release_mu_;
  // The pause before a promotion after a failed one, or after a resync.
  static constexpr Duration kRetryAfterFailure{100};
  std::string last_error_;
  // ShardCounters, written on the strand only and read by Health() from any thread.
  struct {
    std::atomic<uint64_t> enqueued{0};
    std::atomic<uint64_t> leased{0};
    std::atomic<uint64_t> acked{0};
    std::atomic<uint64_t> nacked{0};
    std::atomic<uint64_t> store_failures{0};
    std::atomic<int64_t> store_time_us{0};
    std::array<std::atomic<uint64_t>, kStoreTimeBounds.size() + 1> store_time_buckets{};
  } counters_;
  static void Count(std::atomic<uint64_t>& c, uint64_t n = 1) {
    c.fetch_add(n, std::memory_order_relaxed);
  }
};

}  // namespace shardq::shard_worker
