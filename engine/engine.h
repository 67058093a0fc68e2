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
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/clock.h"
#include "common/executor.h"
#include "common/ids.h"
#include "common/item.h"
#include "common/status.h"
#include "common/ticker.h"
#include "engine/wait_list.h"
#include "prefetch/prefetch_index.h"
#include "shard_worker/shard_worker.h"
#include "store/store_api.h"

namespace shardq::engine {

struct EngineOptions {
  size_t io_threads = 8;         // the shared pool that runs all shard strands
  size_t window_capacity = 512;  // ready keys kept per (shard, topic)
  shard_worker::WorkerOptions worker;
};

struct ShardSpec {
  ShardId id;
  std::unique_ptr<store::ShardStore> store;
};

struct Delivered {
  ShardId shard;
  LeasedItem item;
  ItemId id() const { return {shard, item.row}; }
};

struct TopicAsk {
  std::string topic;
  size_t count = 0;
};

struct LeaseOp {
  ItemId id;
  LeaseToken token;
};
struct NackOp {
  ItemId id;
  LeaseToken token;
  Duration delay{};
  std::optional<std::string> metadata;
};
struct ExtendOp {
  ItemId id;
  LeaseToken token;
  Duration extension{};
};

struct TopicInfo {
  std::string topic;
  prefetch::StateCounts counts;
};

// Turns a shard's per-item outcome into what a caller of Engine sees.
template <typename Out>
Out ToOut(store::ItemOutcome o);

class Engine {
 public:
  using EnqueueDone = std::function<void(std::vector<Result<ItemId>>)>;
  using DequeueDone = std::function<void(std::vector<Delivered>)>;
  using StatusesDone = std::function<void(std::vector<Status>)>;
  using ExtendDone = std::function<void(std::vector<Result<Time>>)>;

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
  // item, in order, once every item is committed or has failed.
  void Enqueue(std::vector<NewItem> items, EnqueueDone done);

  // A handle to cancel a parked long poll (e.g. the client went away).
  class DequeueHandle {
   public:
    virtual ~DequeueHandle() = default;
    virtual void Cancel() = 0;
  };
  std::shared_ptr<DequeueHandle> Dequeue(std::string ns, std::vector<TopicAsk> asks,
                                         Duration wait, DequeueDone done);

  void Ack(std::vector<LeaseOp> ops, StatusesDone done);
  void Nack(std::vector<NackOp> ops, StatusesDone done);
  void Extend(std::vector<ExtendOp> ops, ExtendDone done);

  std::vector<TopicInfo> ActiveTopics(const std::string& ns) const;
  // Waits (real time, at most `timeout`) until every shard has opened and recovered;
  // false on timeout. For start-up readiness checks and tests.
  bool AwaitShardsOpen(std::chrono::milliseconds timeout) const;
  // Dequeue calls parked right now (waiting for items).
  int ParkedCalls() const { return parked_calls_.load(); }
  std::vector<shard_worker::ShardHealth> Health() const;
  bool HasShard(ShardId id) const { return position_.contains(id); }
  size_t shard_count() const { return workers_.size(); }
  size_t io_threads() const { return io_.size(); }

 private:
  friend class DequeueOp;
  // Tries shards start+attempt, start+attempt+1, ... (mod n) that accept enqueues.
  void EnqueueOn(size_t attempt, size_t start, std::vector<NewItem> items,
                 std::function<void(Result<std::vector<ItemId>>)> done,
                 Status last_refusal = Status::Ok());
  // Groups per-item ops by shard, runs `send` once per shard and gathers the results.
  template <typename Op, typename Out, typename Send>
  void Route(std::vector<Op> ops, Out unknown_shard,
             std::function<void(std::vector<Out>)> done, Send send);

  Clock& clock_;
  const EngineOptions options_;
  prefetch::PrefetchIndex index_;
  ThreadPool io_;
  std::vector<std::unique_ptr<shard_worker::ShardWorker>> workers_;
  std::map<ShardId, size_t> position_;
  WaitList waits_;
  Ticker ticker_;
  std::atomic<size_t> next_shard_{0};
  std::atomic<int> parked_calls_{0};
};

}  // namespace shardq::engine
