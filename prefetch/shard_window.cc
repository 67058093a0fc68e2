#include "prefetch/shard_window.h"

#include <algorithm>

namespace shardq::prefetch {

bool ShardWindow::Offer(const ReadyKey& key) {
  if (!available_) return false;
  // Taken by a dequeue whose claim is in flight: not ours to hand out again (a
  // released item's promotion offers it a second time).
  if (reserved_.contains(key.row)) return false;
  if (!complete_) {
    // Only a key better than our worst keeps the invariant: anything else may rank
    // behind READY rows we have not loaded.
    if (keys_.empty() || !ReadyKeyLess{}(key, *keys_.rbegin())) return false;
  }
  keys_.insert(key);
  if (keys_.size() > capacity_) {
    keys_.erase(std::prev(keys_.end()));
    complete_ = false;
  }
  return keys_.contains(key);
}

void ShardWindow::Remove(RowId row) {
  reserved_.erase(row);
  auto it = std::find_if(keys_.begin(), keys_.end(),
                         [&](const ReadyKey& k) { return k.row == row; });
  if (it != keys_.end()) keys_.erase(it);
}

void ShardWindow::ApplyRefill(const std::vector<ReadyKey>& keys) {
  keys_.clear();
  for (const ReadyKey& k : keys) {
    // A reserved row is still READY in MySQL until its claim commits; it is not ours
    // to hand out again.
    if (!reserved_.contains(k.row)) keys_.insert(k);
  }
  complete_ = keys.size() < capacity_;
  available_ = true;
  shard_down_ = false;
}

bool ShardWindow::MarkUnavailable(bool shard_down) {
  const bool was_available = available_;
  keys_.clear();
  complete_ = false;
  available_ = false;
  shard_down_ = shard_down;
  return was_available;
}

void ShardWindow::Pop() {
  reserved_.insert(keys_.begin()->row);
  keys_.erase(keys_.begin());
}

}  // namespace shardq::prefetch
