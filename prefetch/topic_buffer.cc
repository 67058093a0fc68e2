#include "prefetch/topic_buffer.h"

#include <algorithm>

#include "prefetch/kway_merge.h"

namespace shardq::prefetch {

TopicBuffer::TopicBuffer(std::string ns, std::string topic, size_t shards,
                         size_t window_capacity)
    : ns_(std::move(ns)),
      topic_(std::move(topic)),
      windows_(shards, ShardWindow(window_capacity)),
      counts_(shards) {}

std::vector<TopicBuffer::Taken> TopicBuffer::Take(size_t count,
                                                  std::vector<size_t>* refill,
                                                  bool* blocked) {
  std::vector<Taken> out;
  std::lock_guard lock(mu_);
  auto blocked_now = [&] {
    for (const ShardWindow& w : windows_) {
      if (w.Blocking()) return true;
    }
    return false;
  };
  std::vector<ShardWindow*> sources;
  sources.reserve(windows_.size());
  for (ShardWindow& w : windows_) sources.push_back(&w);
  KWayMerge merge(std::move(sources), ReadyKeyLess{});
  bool stopped = false;
  while (out.size() < count && !merge.Done() && !(stopped = blocked_now())) {
    out.push_back({merge.TopSource(), merge.Top()});
    merge.Pop();
  }
  if (out.size() < count && (stopped || blocked_now())) *blocked = true;
  ClaimRefillsLocked(refill);
  return out;
}

std::vector<TopicBuffer::Taken> TopicBuffer::TakeDueBefore(
    const Taken& bound, Time due_by, size_t count, std::vector<size_t>* refill,
    const std::function<bool(size_t shard, RowId row)>& skip) {
  std::vector<Taken> out;
  std::lock_guard lock(mu_);
  // Each window gives at most `count` (its best due ones before the bound); the best
  // `count` of those are the answer. Windows are small (capacity), and so is this.
  for (size_t s = 0; s < windows_.size(); ++s) {
    size_t found = 0;
    for (const ReadyKey& key : windows_[s].keys()) {
      if (found == count || !RanksBefore({s, key}, bound)) break;
      if (key.deliver_after > due_by || (skip && skip(s, key.row))) continue;
      out.push_back({s, key});
      ++found;
    }
  }
  std::sort(out.begin(), out.end(), RanksBefore);
  if (out.size() > count) out.resize(count);
  for (const Taken& t : out) windows_[t.shard].Reserve(t.key);
  ClaimRefillsLocked(refill);
  return out;
}

std::vector<size_t> TopicBuffer::ClaimRefills() {
  std::vector<size_t> out;
  std::lock_guard lock(mu_);
  ClaimRefillsLocked(&out);
  return out;
}

void TopicBuffer::ClaimRefillsLocked(std::vector<size_t>* shards) {
  for (size_t s = 0; s < windows_.size(); ++s) {
    if (windows_[s].ClaimRefill()) shards->push_back(s);
  }
}

bool TopicBuffer::ClaimRefill(size_t shard) {
  std::lock_guard lock(mu_);
  return windows_[shard].ClaimRefill();
}

void TopicBuffer::OnReady(size_t shard, std::span<const ReadyKey> keys) {
  std::unique_lock lock(mu_);
  bool any = false;
  for (const ReadyKey& key : keys) any = windows_[shard].Offer(key) || any;
  if (any) WakeAll(lock);
}

void TopicBuffer::OnRemoved(size_t shard, RowId row) {
  std::lock_guard lock(mu_);
  windows_[shard].Remove(row);
}

void TopicBuffer::ApplyRefill(size_t shard, const std::vector<ReadyKey>& keys) {
  std::unique_lock lock(mu_);
  windows_[shard].refill_pending = false;
  windows_[shard].ApplyRefill(keys);
  // Wake even when empty: a waiter blocked on this shard can now decide.
  WakeAll(lock);
}

void TopicBuffer::RefillFailed(size_t shard) {
  std::unique_lock lock(mu_);
  windows_[shard].refill_pending = false;
  windows_[shard].MarkUnavailable();
  // Wake even if it was unavailable already: a waiter's next Take asks for the next
  // refill, and nothing else would. Each is a real store call, and failures count
  // against the breaker, which soon opens (ShardDown) if they go on.
  WakeAll(lock);
}

void TopicBuffer::Reset(size_t shard) {
  std::unique_lock lock(mu_);
  windows_[shard].Reset();
  WakeAll(lock);
}

void TopicBuffer::ShardDown(size_t shard) {
  std::unique_lock lock(mu_);
  windows_[shard].refill_pending = false;
  if (windows_[shard].MarkUnavailable(/*shard_down=*/true)) WakeAll(lock);
}

bool TopicBuffer::ShardUp(size_t shard) {
  std::lock_guard lock(mu_);
  windows_[shard].MarkShardUp();
  return windows_[shard].ClaimRefill();
}

void TopicBuffer::Unreserve(size_t shard, RowId row) {
  std::lock_guard lock(mu_);
  windows_[shard].Unreserve(row);
}

int64_t* StateCounts::Of(ItemState s) {
  switch (s) {
    case ItemState::kDelayed:
      return &delayed;
    case ItemState::kReady:
      return &ready;
    case ItemState::kLeased:
      return &leased;
    case ItemState::kSucceeded:
      return &succeeded;
    case ItemState::kFailed:
      return &failed;
    case ItemState::kDead:
      return &dead;
    case ItemState::kCancelled:
      return &cancelled;
    case ItemState::kGone:
      return nullptr;
  }
  return nullptr;
}

StateCounts& StateCounts::operator+=(const StateCounts& o) {
  delayed += o.delayed;
  ready += o.ready;
  leased += o.leased;
  succeeded += o.succeeded;
  failed += o.failed;
  dead += o.dead;
  cancelled += o.cancelled;
  return *this;
}

void TopicBuffer::CountTransition(size_t shard, ItemState from, ItemState to) {
  std::lock_guard lock(mu_);
  if (int64_t* c = counts_[shard].Of(from)) --*c;
  if (int64_t* c = counts_[shard].Of(to)) ++*c;
}

void TopicBuffer::SetCounts(size_t shard, StateCounts counts) {
  std::lock_guard lock(mu_);
  counts_[shard] = counts;
}

StateCounts TopicBuffer::Counts() const {
  std::lock_guard lock(mu_);
  StateCounts total;
  for (const StateCounts& c : counts_) total += c;
  return total;
}

size_t TopicBuffer::WindowSize(size_t shard) const {
  std::lock_guard lock(mu_);
  return windows_[shard].size();
}

size_t TopicBuffer::WaiterEntries() const {
  std::lock_guard lock(mu_);
  return waiters_.size();
}

void TopicBuffer::AddWaiter(std::weak_ptr<Waiter> w) {
  std::lock_guard lock(mu_);
  // Calls that finished while waiting leave dead entries; on an idle topic nothing
  // else would clear them. Pruning when the list doubles keeps this amortised O(1).
  if (waiters_.size() >= 2 * waiters_pruned_size_ + 16) {
    std::erase_if(waiters_, [](const std::weak_ptr<Waiter>& x) { return x.expired(); });
    waiters_pruned_size_ = waiters_.size();
  }
  waiters_.push_back(std::move(w));
}

std::vector<std::shared_ptr<Waiter>> TopicBuffer::IdleWaiters() const {
  std::lock_guard lock(mu_);
  std::vector<std::shared_ptr<Waiter>> out;
  if (waiters_.empty()) return out;
  for (const ShardWindow& w : windows_) {
    if (!w.Empty() || w.Blocking()) return out;
  }
  for (const auto& weak : waiters_) {
    if (auto w = weak.lock()) out.push_back(std::move(w));
  }
  return out;
}

bool TopicBuffer::Idle() const {
  std::lock_guard lock(mu_);
  for (const StateCounts& c : counts_) {
    if (c.total() != 0) return false;
  }
  for (const ShardWindow& w : windows_) {
    if (w.refill_pending || !w.Empty()) return false;
  }
  for (const auto& weak : waiters_) {
    if (!weak.expired()) return false;
  }
  return true;
}

void TopicBuffer::WakeAll(std::unique_lock<std::mutex>& lock) {
  if (waiters_.empty()) return;
  std::vector<std::weak_ptr<Waiter>> waiters;
  waiters.swap(waiters_);
  lock.unlock();
  for (auto& weak : waiters) {
    if (auto w = weak.lock()) w->Wake(*this);
  }
}

}  // namespace shardq::prefetch
