#pragma once
// TopicBuffer: everything the process keeps in memory about one (namespace, topic):
// one ShardWindow per shard, per-shard item counts by state, and the long-poll
// waiters. Take() k-way-merges the windows so a dequeue gets the best items across
// all shards without touching MySQL.
//
// Threads: shard-worker strands call the On*/Apply* methods; frontend (gRPC) threads
// call Take(); the ticker reads counts. One mutex guards it all and is never held
// across I/O or while calling a waiter.

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "common/item.h"
#include "prefetch/shard_window.h"

namespace shardq::prefetch {

class TopicBuffer;

// Something waiting for items of this topic (a long-polling Dequeue). Its methods are
// called without any TopicBuffer lock held and must not block.
class Waiter {
 public:
  virtual ~Waiter() = default;
  // The waiter's registration with `topic` (AddWaiter) is used up: it is woken once.
  virtual void Wake(const TopicBuffer& topic) = 0;
  // Direct handoff (TopicBuffer::IdleWaiters): up to `max` new or newly due items of
  // `topic`, which the shard worker will lease to this waiter in the transaction that
  // inserts or promotes them. Returns how many it takes, and if any, sets `worker_id`
  // and waits for exactly one Handed() call.
  virtual size_t OfferHandoff(const TopicBuffer& /*topic*/, size_t /*max*/,
                              std::string* /*worker_id*/) {
    return 0;
  }
  // The end of an accepted handoff: what was leased to it, by the shard `shard`
  // (none if the insert or promotion failed, or the items were duplicates or past
  // their TTL).
  virtual void Handed(const TopicBuffer& /*topic*/, ShardId /*shard*/,
                      std::vector<LeasedItem> /*items*/) {}
};

// Items of one topic by state. Final states count rows kept for retention.
struct StateCounts {
  int64_t delayed = 0;
  int64_t ready = 0;
  int64_t leased = 0;
  int64_t succeeded = 0;
  int64_t failed = 0;
  int64_t dead = 0;
  int64_t cancelled = 0;
  int64_t total() const {
    return delayed + ready + leased + succeeded + failed + dead + cancelled;
  }
  // The counter of `s` (nullptr for kGone).
  int64_t* Of(ItemState s);
  StateCounts& operator+=(const StateCounts& o);
};

class TopicBuffer {
 public:
  TopicBuffer(std::string ns, std::string topic, size_t shards, size_t window_capacity);

  const std::string& ns() const { return ns_; }
  const std::string& topic() const { return topic_; }

  struct Taken {
    size_t shard;  // position in the engine's shard list
    ReadyKey key;
  };
  // Removes and returns up to `count` items, best first across shards. Stops early
  // rather than look past a shard whose window is empty but incomplete (that would
  // break the ordering rule). Taken items are reserved until Unreserve().
  // `refill` receives the shards whose window should be refilled now; they are
  // marked pending, so the caller must request exactly those refills.
  // `blocked` is set when fewer than `count` came back because a shard's window is
  // still unknown (empty, incomplete); it is left alone otherwise.
  std::vector<Taken> Take(size_t count, std::vector<size_t>* refill, bool* blocked);
  // The ordering rule between taken items of any shards. Positions stand in for shard
  // ids: the engine lists its shards in ShardId order.
  static bool RanksBefore(const Taken& a, const Taken& b) {
    return a.key.ToOrderKey(ShardId(static_cast<uint32_t>(a.shard))) <
           b.key.ToOrderKey(ShardId(static_cast<uint32_t>(b.shard)));
  }
  // For an answer held until its items' due time (engine::DequeueOp): removes and
  // returns up to `count` items that are due by `due_by` (the hold's end) and rank
  // before `bound` (the answer's worst item), best first: better items that became
  // ready, or were released, during the hold. Unlike Take() it passes over items due
  // later (they would make the hold longer), and it does not stop at a blocking
  // shard: anything it finds ranks before an item of the answer, so taking it can
  // only improve the answer. It passes over the items `skip` names (by shard
  // position and row) too. Reservation and `refill` as with Take().
  std::vector<Taken> TakeDueBefore(
      const Taken& bound, Time due_by, size_t count, std::vector<size_t>* refill,
      const std::function<bool(size_t shard, RowId row)>& skip = {});

  // Shards whose windows want a refill (marked pending, as with Take).
  std::vector<size_t> ClaimRefills();
  // The same for one shard: true if its window wants a refill (now marked pending).
  bool ClaimRefill(size_t shard);

  // --- Called by the shard worker of `shard` (its strand) -------------------
  // Items became READY. Wakes waiters (once) if the window took any.
  void OnReady(size_t shard, const ReadyKey& key) { OnReady(shard, std::span(&key, 1)); }
  void OnReady(size_t shard, std::span<const ReadyKey> keys);
  // An item left READY other than through Take (ack of an expired lease, purge).
  void OnRemoved(size_t shard, RowId row);
  void ApplyRefill(size_t shard, const std::vector<ReadyKey>& keys);
  // A refill failed while the shard is up: the window is unavailable, and the next
  // Take asks again. Wakes the waiters, whose Takes do.
  void RefillFailed(size_t shard);
  // The window may be wrong (a store call's outcome is unknown): it knows nothing, as
  // before its first refill, and so holds merges back (the ordering rule) until the
  // refill that the next Take asks for. Wakes the waiters, whose Takes do.
  void Reset(size_t shard);
  // The shard's circuit opened (or it could not be opened): the window is unavailable
  // and wants no refill until ShardUp(), so that a parked dequeue's Take does not ask
  // for one refill after another, each refused at once and each waking it again.
  void ShardDown(size_t shard);
  // The shard's circuit closed: true if its window now wants a refill (then marked
  // pending, as with ClaimRefill).
  bool ShardUp(size_t shard);
  void Unreserve(size_t shard, RowId row);
  // Moves one item between states in the counts (kGone = not counted).
  void CountTransition(size_t shard, ItemState from, ItemState to);
  void SetCounts(size_t shard, StateCounts counts);

  // --- Observers --------------------------------------------------------------
  StateCounts Counts() const;
  size_t WindowSize(size_t shard) const;
  // Entries in the waiter list (AddWaiter since the last wake), dead ones included.
  size_t WaiterEntries() const;
  // Nothing of this topic on any shard, no window loading, nobody waiting: the index
  // may drop it (PrefetchIndex::EvictIdle), and recreates it on next use.
  bool Idle() const;

  // One-shot: the waiter is woken once (then dropped) at the next new item.
  void AddWaiter(std::weak_ptr<Waiter> w);
  // Direct handoff. When nothing of this topic is ready in memory and no window is
  // still loading -- what a waiter's Take would find right now -- a new item is the
  // best READY item there is, so it may be leased straight to a waiter in its insert's
  // transaction instead of going through READY and a claim. Then this returns the
  // waiters in the order they came (to be offered items, see Waiter); otherwise none.
  // They stay registered: one that takes a handoff ignores a wake until it is handed
  // its items, and one that declines still gets the next wake.
  std::vector<std::shared_ptr<Waiter>> IdleWaiters() const;

 private:
  void WakeAll(std::unique_lock<std::mutex>& lock);
  // Under mu_: appends the shards whose windows now have a refill claimed.
  void ClaimRefillsLocked(std::vector<size_t>* shards);

  const std::string ns_;
  const std::string topic_;
  mutable std::mutex mu_;
  std::vector<ShardWindow> windows_;
  std::vector<StateCounts> counts_;
  std::vector<std::weak_ptr<Waiter>> waiters_;
  size_t waiters_pruned_size_ = 0;
};

}  // namespace shardq::prefetch
