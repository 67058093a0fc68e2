#pragma once
// ShardWindow: the in-memory index of one shard's READY items of one topic. It holds
// at most `capacity` keys and keeps this invariant:
//
//   the window's keys are the best |window| READY items of the shard+topic
//   (ordering rule), minus those reserved by a dequeue whose claim is in flight;
//   and if `complete`, they are ALL of them.
//
// So memory is bounded by capacity, not by the backlog: when the window runs low and
// is incomplete, the shard worker refills it from MySQL (FetchReady).
//
// Not thread-safe: guarded by its TopicBuffer's mutex.

#include <cstddef>
#include <optional>
#include <set>
#include <unordered_set>
#include <vector>

#include "common/ids.h"
#include "common/item.h"

namespace shardq::prefetch {

struct ReadyKeyLess {
  bool operator()(const ReadyKey& a, const ReadyKey& b) const {
    // The ordering rule within one shard (common/ordering.h).
    return a.ToOrderKey(ShardId(0)) < b.ToOrderKey(ShardId(0));
  }
};

class ShardWindow {
 public:
  explicit ShardWindow(size_t capacity) : capacity_(capacity) {}

  // A new READY item (enqueue committed, promotion, nack). Returns true if it is now
  // in the window (false: it stays only in MySQL, found by a later refill).
  bool Offer(const ReadyKey& key);
  // The item is no longer READY (acked while ready, purged).
  void Remove(RowId row);
  // Replaces the contents with a fresh FetchReady(limit = capacity) answer.
  void ApplyRefill(const std::vector<ReadyKey>& keys);
  // The shard cannot be read: forget everything until the next refill succeeds. With
  // `shard_down` (its circuit is open) no refill is wanted until MarkShardUp(): one
  // would only fail again, at once. Returns whether the window was available.
  bool MarkUnavailable(bool shard_down = false);
  // The shard's circuit closed again: an unavailable window wants its refill now.
  void MarkShardUp() { shard_down_ = false; }
  // What the window holds may be wrong (a store call's outcome is unknown): back to
  // knowing nothing, as before its first refill, so a merge does not look past it
  // and it wants a refill. So is one whose refill failed, which merges skipped. A
  // window of a shard that is down stays as it is. Reserved rows stay reserved.
  void Reset() {
    if (shard_down_) return;
    keys_.clear();
    complete_ = false;
    available_ = true;
  }

  // Source interface for KWayMerge: Pop() moves the front to the reserved set.
  bool Empty() const { return keys_.empty(); }
  const ReadyKey& Front() const { return *keys_.begin(); }
  void Pop();
  // Moves `key` (one of keys()) to the reserved set, as Pop() does the front.
  void Reserve(const ReadyKey& key) {
    keys_.erase(key);
    reserved_.insert(key.row);
  }
  // The claim of a reserved item finished (leased, or gone).
  void Unreserve(RowId row) { reserved_.erase(row); }
  // The keys, best first.
  const std::set<ReadyKey, ReadyKeyLess>& keys() const { return keys_; }

  size_t size() const { return keys_.size(); }
  size_t capacity() const { return capacity_; }
  bool complete() const { return complete_; }
  bool available() const { return available_; }
  // Empty but MySQL may hold more: a merge must not look past this shard.
  bool Blocking() const { return available_ && keys_.empty() && !complete_; }
  // Low and incomplete, or unavailable while the shard is up: worth a refill.
  bool WantsRefill() const {
    return available_ ? (!complete_ && (keys_.empty() || keys_.size() < capacity_ / 2))
                      : !shard_down_;
  }
  bool refill_pending = false;  // set by whoever requests a refill
  // Marks a refill pending if one is wanted and none is pending yet; true if so (the
  // caller then asks the shard worker for it).
  bool ClaimRefill() {
    if (!WantsRefill() || refill_pending) return false;
    refill_pending = true;
    return true;
  }

 private:
  size_t capacity_;
  std::set<ReadyKey, ReadyKeyLess> keys_;
  std::unordered_set<RowId> reserved_;
  // Starts incomplete: nothing is known until the first refill.
  bool complete_ = false;
  bool available_ = true;
  bool shard_down_ = false;  // unavailable because the shard's circuit is open
};

}  // namespace shardq::prefetch
