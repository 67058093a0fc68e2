#pragma once
// Engine: the queue's logic between the gRPC handlers and the shards. It routes
// enqueues to healthy shards, serves dequeues from the prefetch index and has the
// shard workers persist each lease before answering, routes acks/nacks/extensions by
// the shard id in the item id, parks long polls without a thread each, and drives
// every deadline from one ticker thread.
//
// Threads: all methods are thread-safe and non-blocking; callbacks run on I/O pool
// threads (or inline on the caller's thread when the answer is known at once). The
// thread count is io_threads + 1 (ticker), whatever the number of shards or topics.

#include <atomic>
#include <chrono>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "common/clock.h"
#include "common/executor.h"
#include "common/ids.h"
#include "common/item.h"
#include "common/namespace_policy.h"
#include "common/ordering.h"
#include "common/status.h"
#include "common/ticker.h"
#include "engine/enqueue_quotas.h"
#include "engine/wait_list.h"
#include "prefetch/prefetch_index.h"
#include "shard_worker/shard_worker.h"
#include "store/store_api.h"

namespace shardq::engine {

struct EngineOptions {
  size_t io_threads = 8;         // the shared pool that runs all shard strands
  size_t window_capacity = 512;  // ready keys kept per (shard, topic)
  // How often idle topics leave the index (prefetch::IndexSweeper).
  Duration index_sweep_interval{60'000};
  shard_worker::WorkerOptions worker;
  // Retention (given to every store) and enqueue quotas (EnqueueQuotas).
  NamespacePolicies policies;
  // Redrive/PurgeDead of a whole topic act on at most this many rows per shard per
  // call (one transaction each); the answer's count tells whether to call again.
  size_t bulk_limit = 10'000;
  // Bytes of enqueued items the server may hold before they commit, over all shards
  // (their buffers and the inserts in flight): past it, an enqueue is answered
  // RESOURCE_EXHAUSTED at once (load shedding), so memory does not grow with
  // producers or shards while MariaDB falls behind. A call is taken when nothing is
  // held, whatever its size.
  size_t max_buffered_enqueue_bytes = 256 << 20;
  // Called when Ready() changes (first with true once the server becomes ready), on a
  // shard strand; calls are serialized. For the gRPC health service.
  std::function<void(bool ready)> on_readiness;
};

struct ShardSpec {
  ShardId id;
  std::unique_ptr<store::ShardStore> store;
};

struct Delivered {
  ShardId shard;
  LeasedItem item;
  ItemId id() const { return {shard, item.row}; }
  // Where it stands in the ordering rule (as it was when claimed).
  OrderKey order_key() const { return {item.priority, item.deliver_after, id()}; }
  static bool Before(const Delivered& a, const Delivered& b) {
    return a.order_key() < b.order_key();
  }
};

struct TopicAsk {
  std::string topic;
  size_t count = 0;
};

// At most this many items per Dequeue call, over all its topics: the answer must fit
// gRPC's 16 MiB message (1,000 x (10 KiB payload + 2 KiB metadata)), or items would be
// leased and then not delivered. Topics are served in request order.
inline constexpr size_t kMaxItemsPerDequeue = 1000;

struct EnqueueOutcome {
  ItemId id;
  bool deduplicated = false;  // the dedup key matched: `id` is the existing item
};

struct LeaseOp {
  ItemId id;
  LeaseToken token;
  std::string result;  // ack only
};
struct NackOp {
  ItemId id;
  LeaseToken token;
  Duration delay{};
  std::optional<std::string> metadata;
  std::string error;
  bool fatal = false;
  // The server gives back a lease whose answer it never sent (store::NackRequest).
  bool undelivered = false;
  // ... and which no consumer got, due again at this time (its own due time):
  // store::NackRequest::unstarted_until.
  std::optional<Time> unstarted_until;
};
struct ExtendOp {
  ItemId id;
  LeaseToken token;
  Duration extension{};
};

struct ExtendOutcome {
  Time deadline{};
  bool cancel_requested = false;
};

struct TopicInfo {
  std::string topic;
  prefetch::StateCounts counts;
};

// A task as operators see it: its shard and its stored record.
struct ShardTask {
  ShardId shard;
  store::TaskRecord task;
  ItemId id() const { return {shard, task.row}; }
};

struct BulkResult {
  uint64_t count = 0;          // rows changed
  std::vector<Status> per_id;  // when ids were given: one per id, in order
};

// Turns a shard's per-item outcome into what a caller of Engine sees.
template <typename Out>
Out ToOut(store::ItemOutcome o);

class Engine {
 public:
  using EnqueueDone = std::function<void(std::vector<Result<EnqueueOutcome>>)>;
  using DequeueDone = std::function<void(std::vector<Delivered>)>;
  using StatusesDone = std::function<void(std::vector<Status>)>;
  using ExtendDone = std::function<void(std::vector<Result<ExtendOutcome>>)>;
  using TaskDone = std::function<void(Result<ShardTask>)>;
  using TasksDone = std::function<void(Result<std::vector<ShardTask>>)>;
  using BulkDone = std::function<void(Result<BulkResult>)>;

  Engine(std::vector<ShardSpec> shards, Clock& clock, EngineOptions options = {});
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Opens every shard (recovery) and starts the ticker. Returns at once; shards that
  // cannot be reached yet are retried in the background.
  void Start();
  // Answers every parked long poll (with what it has) and stops taking new ones.
  void Shutdown();

  // Items must be valid (frontend/validation.h). One callback with one result per
  // item, in order, once every item is committed or has failed. Items without a
  // dedup key go, one call together, to the shard of the current time slot, or the
  // next healthy one; an item with a key always goes to the shard of its key, so that
  // shard can tell a repeat (engine/placement.h).
  void Enqueue(std::vector<NewItem> items, EnqueueDone done);

  // A handle to cancel a call (e.g. the client went away): a parked one answers
  // nothing at once; the leases of one holding its answer, or whose claims are in
  // flight, are given back, their attempts not counted (dequeue_op.h).
  class DequeueHandle {
   public:
    virtual ~DequeueHandle() = default;
    virtual void Cancel() = 0;
  };
  std::shared_ptr<DequeueHandle> Dequeue(std::string ns, std::vector<TopicAsk> asks,
                                         Duration wait, std::string worker_id,
                                         DequeueDone done);

  void Ack(std::vector<LeaseOp> ops, StatusesDone done);
  void Nack(std::vector<NackOp> ops, StatusesDone done);
  void Extend(std::vector<ExtendOp> ops, ExtendDone done);

  // --- Operators (engine/task_ops.cc) -----------------------------------------
  void GetTask(ItemId id, bool include_payload, TaskDone done);
  // Cancels, then answers the task as it is after the cancel.
  void CancelTask(ItemId id, TaskDone done);
  // The best `limit` dead letters of a topic across shards (ordering rule).
  void ListDead(const std::string& ns, const std::string& topic, size_t limit,
                TasksDone done);
  // `ids` empty: up to bulk_limit per shard of the topic's dead letters.
  void Redrive(const std::string& ns, const std::string& topic, std::vector<ItemId> ids,
               BulkDone done);
  void PurgeDead(const std::string& ns, const std::string& topic, std::vector<ItemId> ids,
                 BulkDone done);

  const NamespacePolicies& policies() const { return options_.policies; }
  // Takes up to `n` items of `ns`'s enqueue quota (engine/enqueue_quotas.h); returns
  // how many it took: `n` when the namespace has no quota. The caller refuses the
  // rest (RESOURCE_EXHAUSTED).
  size_t TakeEnqueueQuota(const std::string& ns, size_t n) { return quotas_.Take(ns, n); }
  void RefundEnqueueQuota(const std::string& ns, size_t n) { quotas_.Refund(ns, n); }
  // The topics of `ns` that hold items, sorted: at most `limit`, of those that sort
  // after `after` (all when it is empty).
  std::vector<TopicInfo> ActiveTopics(
      const std::string& ns, const std::string& after = "",
      size_t limit = std::numeric_limits<size_t>::max()) const;
  // Item counts by state, summed over each namespace's topics in the index, sorted by
  // namespace (for metrics: one line per namespace, not per topic).
  std::vector<std::pair<std::string, prefetch::StateCounts>> NamespaceTotals() const;
  // Waits (real time, at most `timeout`) until every shard has opened and recovered;
  // false on timeout. For start-up readiness checks and tests.
  bool AwaitShardsOpen(std::chrono::milliseconds timeout) const;
  // Ready to serve: every shard has finished its first open attempt, and at least one
  // is open with its breaker closed. (A shard still opening would make enqueues wait,
  // and keyed ones pinned to a shard that failed to open are refused.)
  bool Ready() const;
  // Dequeue calls parked right now (waiting for items).
  int ParkedCalls() const { return parked_calls_.load(); }
  // Bytes of enqueued items taken and not yet committed or failed (the budget's use).
  size_t BufferedEnqueueBytes() const { return buffered_enqueue_bytes_.load(); }
  // Topics in the prefetch index (idle ones leave it every index_sweep_interval).
  size_t IndexedTopics() const { return index_.size(); }
  // Keys of a topic in the prefetch windows now, over all shards: what a Dequeue
  // would find without a refill. (An item counts READY a moment before its key
  // reaches a window.)
  size_t WindowedKeys(const std::string& ns, const std::string& topic) const;
  // Entries in a topic's waiter list: a parked or held Dequeue has one per topic
  // until a wake uses it up.
  size_t WaiterEntries(const std::string& ns, const std::string& topic) const;
  std::vector<shard_worker::ShardHealth> Health() const;
  bool HasShard(ShardId id) const { return position_.contains(id); }
  size_t shard_count() const { return workers_.size(); }
  size_t io_threads() const { return io_.size(); }

 private:
  friend class DequeueOp;
  using GroupDone = std::function<void(Result<std::vector<EnqueueOutcome>>)>;
  // Tries shards start+attempt, start+attempt+1, ... (mod n) that accept enqueues.
  void EnqueueOn(size_t attempt, size_t start, std::vector<NewItem> items, GroupDone done,
                 Status last_refusal = Status::Ok());
  // Sends items to one given shard (dedup keys), or fails them if it is down.
  void EnqueueFixed(size_t position, std::vector<NewItem> items, GroupDone done);
  // Runs `fn` with the store of `id`'s shard on that shard's strand; kNotFound if the
  // shard is unknown, kUnavailable (fn not run) if it is down. `fn` returns the
  // transitions it made and the status of its store calls (ShardWorker::Exclusive).
  using StoreCall =
      std::function<shard_worker::ShardWorker::Exclusive(store::ShardStore&)>;
  Status OnShard(ShardId shard, std::function<void(const Status&)> failed, StoreCall fn);
  // Bulk dead-letter operation (Redrive / PurgeDead) over ids or whole shards.
  using BulkCall = std::function<Result<store::ShardStore::BulkOutcome>(
      store::ShardStore&, std::span<const RowId>, size_t limit)>;
  void Bulk(const std::string& ns, const std::string& topic, std::vector<ItemId> ids,
            BulkCall call, BulkDone done);
  // Groups per-item ops by shard, runs `send` once per shard and gathers the results.
  template <typename Op, typename Out, typename Send>
  void Route(std::vector<Op> ops, Out unknown_shard,
             std::function<void(std::vector<Out>)> done, Send send);

  Clock& clock_;
  const EngineOptions options_;
  prefetch::PrefetchIndex index_;
  prefetch::IndexSweeper sweeper_;  // before ticker_, which must not outlive it
  ThreadPool io_;
  std::vector<std::unique_ptr<shard_worker::ShardWorker>> workers_;
  std::map<ShardId, size_t> position_;
  WaitList waits_;
  Ticker ticker_;
  std::atomic<int> parked_calls_{0};
  // How long the destructor lets the shard workers run what is queued (DrainUntil)
  // before it destroys them.
  static constexpr std::chrono::seconds kDrainTimeout{5};
  std::atomic<size_t> buffered_enqueue_bytes_{0};
  EnqueueQuotas quotas_{options_.policies, clock_};
  // Takes `bytes` into the enqueue budget (EngineOptions::max_buffered_enqueue_bytes);
  // false if they do not fit.
  bool TakeEnqueueBudget(size_t bytes);
  // Last readiness told to options_.on_readiness (guarded: strands race to report).
  std::mutex readiness_mu_;
  bool ready_ = false;
  bool destroying_ = false;
  void UpdateReadiness();
};

}  // namespace shardq::engine
