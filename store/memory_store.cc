#include "store/memory_store.h"

#include <algorithm>
#include <cassert>
#include <tuple>
#include <utility>

#include "store/validation.h"

namespace shardq::store {

void MemoryShardStore::FailNext(Op op, Status s) {
  std::lock_guard lock(mu_);
  assert(!s.ok());
  fail_next_[op] = std::move(s);
}

void MemoryShardStore::FailAll(Status s) {
  std::lock_guard lock(mu_);
  assert(!s.ok());
  fail_all_ = std::move(s);
}

void MemoryShardStore::ClearFailures() {
  std::lock_guard lock(mu_);
  fail_next_.clear();
  fail_all_.reset();
}

Status MemoryShardStore::TakeFailure(Op op) {
  if (fail_all_) return *fail_all_;
  auto it = fail_next_.find(op);
  if (it == fail_next_.end()) return Status::Ok();
  Status s = std::move(it->second);
  fail_next_.erase(it);
  return s;
}

ItemTransition MemoryShardStore::Transition(uint64_t id, const Row& r, ItemState to) {
  return ItemTransition{RowId(id), r.ns, r.topic,        r.priority,
                        r.state,   to,   r.deliver_after};
}

Status MemoryShardStore::Open() {
  std::lock_guard lock(mu_);
  ++calls_[static_cast<size_t>(Op::kOpen)];
  return TakeFailure(Op::kOpen);
}

Status MemoryShardStore::Ping() {
  std::lock_guard lock(mu_);
  ++calls_[static_cast<size_t>(Op::kPing)];
  return TakeFailure(Op::kPing);
}

void MemoryShardStore::SetBeforeInsert(std::function<void()> hook) {
  std::lock_guard lock(mu_);
  before_insert_ = std::move(hook);
}

size_t MemoryShardStore::calls(Op op) const {
  std::lock_guard lock(mu_);
  return calls_[static_cast<size_t>(op)];
}

size_t MemoryShardStore::size() const {
  std::lock_guard lock(mu_);
  return rows_.size();
}

Result<std::vector<RowId>> MemoryShardStore::Insert(std::span<const NewItem> items,
                                                    Time now) {
  std::function<void()> hook;
  {
    std::lock_guard lock(mu_);
    hook = before_insert_;
  }
  if (hook) hook();  // outside the lock: a test may hold the caller here
  std::lock_guard lock(mu_);
  ++calls_[static_cast<size_t>(Op::kInsert)];
  SHARDQ_RETURN_IF_ERROR(TakeFailure(Op::kInsert));
  for (const NewItem& item : items) SHARDQ_RETURN_IF_ERROR(ValidateNewItem(item));
  std::vector<RowId> ids;
  ids.reserve(items.size());
  for (const NewItem& item : items) {
    Row r;
    r.ns = item.ns;
    r.topic = item.topic;
    r.priority = item.priority;
    r.state = item.deliver_after <= now ? ItemState::kReady : ItemState::kDelayed;
    r.deliver_after = item.deliver_after;
    r.lease = item.lease;
    r.enqueued_at = now;
    r.expires_at = item.expires_at;
    r.payload = item.payload;
    r.metadata = item.metadata;
    const uint64_t id = next_id_++;
    rows_.emplace(id, std::move(r));
    ids.push_back(RowId(id));
  }
  return ids;
}

Result<std::vector<ReadyKey>> MemoryShardStore::FetchReady(const std::string& ns,
                                                           const std::string& topic,
                                                           size_t limit) {
  std::lock_guard lock(mu_);
  ++calls_[static_cast<size_t>(Op::kFetchReady)];
  SHARDQ_RETURN_IF_ERROR(TakeFailure(Op::kFetchReady));
  std::vector<ReadyKey> keys;
  for (const auto& [id, r] : rows_) {
    if (r.state == ItemState::kReady && r.ns == ns && r.topic == topic) {
      keys.push_back({r.priority, r.deliver_after, RowId(id)});
    }
  }
  // The ordering rule of common/ordering.h: priority, deliver_after, id.
  std::sort(keys.begin(), keys.end(), [](const ReadyKey& a, const ReadyKey& b) {
    return std::tie(a.priority, a.deliver_after, a.row) <
           std::tie(b.priority, b.deliver_after, b.row);
  });
  if (keys.size() > limit) keys.resize(limit);
  return keys;
}

Result<std::vector<LeasedItem>> MemoryShardStore::Claim(std::span<const RowId> rows,
                                                        LeaseToken token, Time now) {
  std::lock_guard lock(mu_);
  ++calls_[static_cast<size_t>(Op::kClaim)];
  SHARDQ_RETURN_IF_ERROR(TakeFailure(Op::kClaim));
  std::vector<LeasedItem> out;
  for (RowId id : rows) {
    auto it = rows_.find(id.value());
    if (it == rows_.end()) continue;
    Row& r = it->second;
    if (r.state != ItemState::kReady) continue;  // also skips a duplicate in `rows`
    if (r.expires_at && *r.expires_at <= now) continue;
    LeasedItem item;
    item.row = id;
    item.ns = r.ns;
    item.topic = r.topic;
    item.priority = r.priority;
    item.payload = r.payload;
    item.metadata = r.metadata;
    item.token = token;
    item.lease_deadline = now + r.lease;
    item.attempts = ++r.attempts;
    item.enqueued_at = r.enqueued_at;
    item.deliver_after = r.deliver_after;
    r.state = ItemState::kLeased;
    r.lease_token = token.value();
    r.deliver_after = item.lease_deadline;
    out.push_back(std::move(item));
  }
  return out;
}

Result<std::vector<ItemOutcome>> MemoryShardStore::Ack(std::span<const AckRequest> acks) {
  std::lock_guard lock(mu_);
  ++calls_[static_cast<size_t>(Op::kAck)];
  SHARDQ_RETURN_IF_ERROR(TakeFailure(Op::kAck));
  std::vector<ItemOutcome> out(acks.size());
  for (size_t i = 0; i < acks.size(); ++i) {
    auto it = rows_.find(acks[i].row.value());
    if (it == rows_.end()) continue;  // already gone: acks are idempotent
    // Token 0 means "never leased" and never matches.
    if (acks[i].token.value() == 0 || it->second.lease_token != acks[i].token.value()) {
      out[i].status = Status::FailedPrecondition(
          "ack of row " + std::to_string(acks[i].row.value()) + ": stale lease token");
      continue;
    }
    out[i].transition = Transition(it->first, it->second, ItemState::kGone);
    rows_.erase(it);
  }
  return out;
}

namespace {

template <typename Rows>
Status CheckLease(const char* op, const Rows& rows, RowId row, LeaseToken token) {
  auto it = rows.find(row.value());
  if (it == rows.end()) {
    return Status::NotFound(std::string(op) + ": no row " + std::to_string(row.value()));
  }
  if (token.value() == 0 || it->second.lease_token != token.value()) {
    return Status::FailedPrecondition(std::string(op) + " of row " +
                                      std::to_string(row.value()) +
                                      ": stale lease token");
  }
  if (it->second.state != ItemState::kLeased) {
    return Status::FailedPrecondition(std::string(op) + " of row " +
                                      std::to_string(row.value()) + ": not leased");
  }
  return Status::Ok();
}

}  // namespace

Result<std::vector<ItemOutcome>> MemoryShardStore::Nack(
    std::span<const NackRequest> nacks, Time now) {
  std::lock_guard lock(mu_);
  ++calls_[static_cast<size_t>(Op::kNack)];
  SHARDQ_RETURN_IF_ERROR(TakeFailure(Op::kNack));
  for (const NackRequest& n : nacks) {
    if (n.metadata) SHARDQ_RETURN_IF_ERROR(ValidateMetadata(*n.metadata));
  }
  std::vector<ItemOutcome> out(nacks.size());
  for (size_t i = 0; i < nacks.size(); ++i) {
    const NackRequest& n = nacks[i];
    out[i].status = CheckLease("nack", rows_, n.row, n.token);
    if (!out[i].status.ok()) continue;
    Row& r = rows_[n.row.value()];
    const Time due = now + std::max(n.delay, Duration(0));
    const ItemState to = due <= now ? ItemState::kReady : ItemState::kDelayed;
    r.state = to;
    r.deliver_after = due;
    if (n.metadata) r.metadata = *n.metadata;
    out[i].transition =
        ItemTransition{n.row, r.ns, r.topic, r.priority, ItemState::kLeased, to, due};
  }
  return out;
}

Result<std::vector<ItemOutcome>> MemoryShardStore::Extend(
    std::span<const ExtendRequest> reqs, Time now) {
  std::lock_guard lock(mu_);
  ++calls_[static_cast<size_t>(Op::kExtend)];
  SHARDQ_RETURN_IF_ERROR(TakeFailure(Op::kExtend));
  std::vector<ItemOutcome> out(reqs.size());
  for (size_t i = 0; i < reqs.size(); ++i) {
    const ExtendRequest& e = reqs[i];
    out[i].status = CheckLease("extend", rows_, e.row, e.token);
    if (!out[i].status.ok()) continue;
    Row& r = rows_[e.row.value()];
    if (r.deliver_after <= now) {
      out[i].status = Status::FailedPrecondition(
          "extend of row " + std::to_string(e.row.value()) + ": lease already expired");
      continue;
    }
    r.deliver_after = now + std::max(e.extension, Duration(0));
    out[i].new_deadline = r.deliver_after;
  }
  return out;
}

Result<std::vector<ItemTransition>> MemoryShardStore::PromoteDue(Time now, size_t limit) {
  std::lock_guard lock(mu_);
  ++calls_[static_cast<size_t>(Op::kPromoteDue)];
  SHARDQ_RETURN_IF_ERROR(TakeFailure(Op::kPromoteDue));
  std::vector<std::pair<Time, uint64_t>> due;
  for (const auto& [id, r] : rows_) {
    if ((r.state == ItemState::kDelayed || r.state == ItemState::kLeased) &&
        r.deliver_after <= now) {
      due.emplace_back(r.deliver_after, id);
    }
  }
  std::sort(due.begin(), due.end());
  if (due.size() > limit) due.resize(limit);
  std::vector<ItemTransition> out;
  for (const auto& [when, id] : due) {
    Row& r = rows_[id];
    out.push_back(Transition(id, r, ItemState::kReady));
    // deliver_after and the lease token stay (see store_api.h).
    r.state = ItemState::kReady;
  }
  return out;
}

Result<std::vector<ItemTransition>> MemoryShardStore::PurgeExpired(Time now,
                                                                   size_t limit) {
  std::lock_guard lock(mu_);
  ++calls_[static_cast<size_t>(Op::kPurgeExpired)];
  SHARDQ_RETURN_IF_ERROR(TakeFailure(Op::kPurgeExpired));
  std::vector<std::pair<Time, uint64_t>> expired;
  for (const auto& [id, r] : rows_) {
    if (r.expires_at && *r.expires_at <= now) expired.emplace_back(*r.expires_at, id);
  }
  std::sort(expired.begin(), expired.end());
  if (expired.size() > limit) expired.resize(limit);
  std::vector<ItemTransition> out;
  for (const auto& [when, id] : expired) {
    auto it = rows_.find(id);
    out.push_back(Transition(id, it->second, ItemState::kGone));
    rows_.erase(it);
  }
  return out;
}

Result<std::optional<Time>> MemoryShardStore::NextDue() {
  std::lock_guard lock(mu_);
  ++calls_[static_cast<size_t>(Op::kNextDue)];
  SHARDQ_RETURN_IF_ERROR(TakeFailure(Op::kNextDue));
  std::optional<Time> next;
  for (const auto& [id, r] : rows_) {
    if (r.state != ItemState::kDelayed && r.state != ItemState::kLeased) continue;
    if (!next || r.deliver_after < *next) next = r.deliver_after;
  }
  return next;
}

Result<std::vector<TopicCounts>> MemoryShardStore::CountByTopic() {
  std::lock_guard lock(mu_);
  ++calls_[static_cast<size_t>(Op::kCountByTopic)];
  SHARDQ_RETURN_IF_ERROR(TakeFailure(Op::kCountByTopic));
  std::map<std::pair<std::string, std::string>, TopicCounts> counts;
  for (const auto& [id, r] : rows_) {
    TopicCounts& c = counts[{r.ns, r.topic}];
    c.ns = r.ns;
    c.topic = r.topic;
    switch (r.state) {
      case ItemState::kDelayed:
        ++c.delayed;
        break;
      case ItemState::kReady:
        ++c.ready;
        break;
      case ItemState::kLeased:
        ++c.leased;
        break;
      case ItemState::kGone:
        break;
    }
  }
  std::vector<TopicCounts> out;
  for (auto& [key, c] : counts) out.push_back(std::move(c));
  return out;
}

}  // namespace shardq::store
