#include "store/memory_store.h"

#include <algorithm>
#include <cassert>
#include <tuple>
#include <utility>

#include "store/validation.h"

namespace shardq::store {
namespace {

// How many events GetTask returns (the newest ones).
constexpr size_t kMaxHistory = 100;

}  // namespace

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
  lose_reply_.clear();
}

void MemoryShardStore::LoseNextReply(Op op) {
  std::lock_guard lock(mu_);
  lose_reply_.insert(op);
}

template <typename T>
Result<T> MemoryShardStore::Reply(Op op, Result<T> result) {
  std::lock_guard lock(mu_);
  if (!result.ok() || lose_reply_.erase(op) == 0) return result;
  return Status::Unavailable("memory store: the reply was lost after the change");
}

Result<Written> MemoryShardStore::Write(const Writes& w, Time now) {
  std::vector<Op> ops;  // the parts, as the ops whose failures they take
  if (!w.acks.empty()) ops.push_back(Op::kAck);
  if (!w.nacks.empty()) ops.push_back(Op::kNack);
  if (!w.extends.empty()) ops.push_back(Op::kExtend);
  if (!w.items.empty()) ops.push_back(Op::kInsert);
  if (!w.items.empty()) BeforeCall(Op::kInsert);
  std::lock_guard lock(mu_);
  ++calls_[static_cast<size_t>(Op::kWrite)];
  // One transaction: a failure injected into any part fails all of it.
  Status failure = Status::Ok();
  for (Op op : ops) {
    ++calls_[static_cast<size_t>(op)];
    Status s = TakeFailure(op);
    if (failure.ok()) failure = std::move(s);
  }
  SHARDQ_RETURN_IF_ERROR(failure);
  for (const NewItem& item : w.items) SHARDQ_RETURN_IF_ERROR(ValidateNewItem(item));
  for (const NackRequest& n : w.nacks) {
    if (n.metadata) SHARDQ_RETURN_IF_ERROR(ValidateMetadata(*n.metadata));
  }
  Written out;
  out.acked = ApplyAcks(w.acks, now);
  out.nacked = ApplyNacks(w.nacks, now);
  out.extended = ApplyExtends(w.extends, now);
  out.inserted = ApplyInserts(w.items, now, w.leases);
  bool lost = false;
  for (Op op : ops) lost = lose_reply_.erase(op) > 0 || lost;
  if (lost)
    return Status::Unavailable("memory store: the reply was lost after the change");
  return out;
}

Result<std::vector<LeasedItem>> MemoryShardStore::Claim(
    std::span<const ClaimRequest> rows, LeaseToken token, Time now) {
  BeforeCall(Op::kClaim);
  return Reply(Op::kClaim, DoClaim(rows, token, now));
}

Result<Promotion> MemoryShardStore::PromoteDue(Time now, size_t limit,
                                               const PromoteHandoff& handoff,
                                               const Lookahead& look) {
  return Reply(Op::kPromoteDue, DoPromoteDue(now, limit, handoff, look));
}

Status MemoryShardStore::TakeFailure(Op op) {
  if (fail_all_) return *fail_all_;
  auto it = fail_next_.find(op);
  if (it == fail_next_.end()) return Status::Ok();
  Status s = std::move(it->second);
  fail_next_.erase(it);
  return s;
}

ItemTransition MemoryShardStore::Changed(uint64_t id, const Row& r, ItemState from) {
  return ItemTransition{RowId(id), r.ns,    r.topic,        r.priority,
                        from,      r.state, r.deliver_after};
}

ItemTransition MemoryShardStore::Deleted(uint64_t id, const Row& r) {
  return ItemTransition{RowId(id),        r.ns,           r.topic, r.priority, r.state,
                        ItemState::kGone, r.deliver_after};
}

void MemoryShardStore::Finish(Row& r, ItemState to, Time now) const {
  r.state = to;
  r.finished_at = now;
  r.deliver_after = now + policies_.For(r.ns).retention;
  // Retention, not the TTL, decides when a final row goes (see mysql_store.cc).
  r.expires_at.reset();
}

void MemoryShardStore::AddEvent(Row& r, Time at, std::string kind, std::string detail) {
  r.events.push_back(
      TaskEvent{at, std::move(kind), r.attempts, r.worker_id, std::move(detail)});
}

void MemoryShardStore::Erase(std::map<uint64_t, Row>::iterator it) {
  if (!it->second.dedup_key.empty()) dedup_.erase({it->second.ns, it->second.dedup_key});
  rows_.erase(it);
}

TaskRecord MemoryShardStore::Record(uint64_t id, const Row& r,
                                    bool with_payload_and_history) {
  TaskRecord t;
  t.row = RowId(id);
  t.ns = r.ns;
  t.topic = r.topic;
  t.task_type = r.task_type;
  t.priority = r.priority;
  t.state = r.state;
  t.attempts = r.attempts;
  t.max_attempts = r.max_attempts;
  t.enqueued_at = r.enqueued_at;
  t.first_delivered_at = r.first_delivered_at;
  t.last_delivered_at = r.last_delivered_at;
  t.finished_at = r.finished_at;
  t.deliver_after = r.deliver_after;
  t.token = LeaseToken(r.lease_token);
  t.worker_id = r.worker_id;
  t.last_error = r.last_error;
  t.result = r.result;
  t.metadata = r.metadata;
  t.cancel_requested = r.cancel_requested;
  if (with_payload_and_history) {
    t.payload = r.payload;
    const size_t skip = r.events.size() > kMaxHistory ? r.events.size() - kMaxHistory : 0;
    t.history.assign(r.events.begin() + static_cast<ptrdiff_t>(skip), r.events.end());
  }
  return t;
}

void MemoryShardStore::SetPolicies(NamespacePolicies policies) {
  std::lock_guard lock(mu_);
  ++calls_[static_cast<size_t>(Op::kSetPolicies)];
  policies_ = std::move(policies);
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

void MemoryShardStore::SetBeforeCall(Op op, std::function<void()> hook) {
  std::lock_guard lock(mu_);
  before_call_[static_cast<size_t>(op)] = std::move(hook);
}

void MemoryShardStore::BeforeCall(Op op) {
  std::function<void()> hook;
  {
    std::lock_guard lock(mu_);
    hook = before_call_[static_cast<size_t>(op)];
  }
  if (hook) hook();  // outside the lock: a test may hold the caller here
}

size_t MemoryShardStore::calls(Op op) const {
  std::lock_guard lock(mu_);
  return calls_[static_cast<size_t>(op)];
}

size_t MemoryShardStore::size() const {
  std::lock_guard lock(mu_);
  return rows_.size();
}

std::vector<Inserted> MemoryShardStore::ApplyInserts(
    std::span<const NewItem> items, Time now, std::span<const InsertLease> leases) {
  std::map<size_t, const InsertLease*> lease_of;
  for (const InsertLease& l : leases) lease_of.emplace(l.item, &l);
  std::vector<Inserted> out;
  out.reserve(items.size());
  for (size_t i = 0; i < items.size(); ++i) {
    const NewItem& item = items[i];
    if (!item.dedup_key.empty()) {
      // Covers earlier items of this call too: they are in dedup_ already.
      auto dup = dedup_.find({item.ns, item.dedup_key});
      if (dup != dedup_.end()) {
        out.push_back({RowId(dup->second), true});
        continue;
      }
    }
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
    r.task_type = item.task_type;
    r.max_attempts = item.max_attempts;
    r.dedup_key = item.dedup_key;
    const uint64_t id = next_id_++;
    if (!item.dedup_key.empty()) dedup_[{item.ns, item.dedup_key}] = id;
    auto lease = lease_of.find(i);
    const bool leased = lease != lease_of.end() && Leasable(r, now);
    if (leased) Lease(r, lease->second->worker_id, lease->second->token, now);
    rows_.emplace(id, std::move(r));
    out.push_back({RowId(id), false, leased});
  }
  return out;
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

Result<std::vector<LeasedItem>> MemoryShardStore::DoClaim(
    std::span<const ClaimRequest> rows, LeaseToken token, Time now) {
  std::lock_guard lock(mu_);
  ++calls_[static_cast<size_t>(Op::kClaim)];
  SHARDQ_RETURN_IF_ERROR(TakeFailure(Op::kClaim));
  std::vector<LeasedItem> out;
  for (const ClaimRequest& req : rows) {
    const RowId id = req.row;
    auto it = rows_.find(id.value());
    if (it == rows_.end()) continue;
    Row& r = it->second;
    // Also skips a duplicate in `rows`: the first one leased it.
    if (!Leasable(r, now, std::max(now, req.due_by))) continue;
    out.push_back(
        LeaseOut(id, r, req.worker_id, req.token.value() != 0 ? req.token : token, now));
  }
  return out;
}

LeasedItem MemoryShardStore::LeaseOut(RowId id, Row& r, const std::string& worker_id,
                                      LeaseToken token, Time now) {
  LeasedItem item;
  item.row = id;
  item.ns = r.ns;
  item.topic = r.topic;
  item.priority = r.priority;
  item.payload = r.payload;
  item.metadata = r.metadata;
  item.token = token;
  item.enqueued_at = r.enqueued_at;
  item.deliver_after = r.deliver_after;  // the time it became due
  item.task_type = r.task_type;
  item.max_attempts = r.max_attempts;
  Lease(r, worker_id, token, now);
  item.lease_deadline = r.deliver_after;
  item.attempts = r.attempts;
  return item;
}

bool MemoryShardStore::Leasable(const Row& r, Time now, Time due_by) {
  const bool due = r.state == ItemState::kReady ||
                   (r.state == ItemState::kDelayed && r.deliver_after <= due_by);
  // The TTL must outlast the lease's start (Lease).
  return due && !(r.expires_at && *r.expires_at <= std::max(now, r.deliver_after));
}

void MemoryShardStore::Lease(Row& r, const std::string& worker_id, LeaseToken token,
                             Time now) {
  // Leased ahead of its due time (the release lead): the lease starts then.
  const Time start = std::max(now, r.deliver_after);
  r.state = ItemState::kLeased;
  r.lease_token = token.value();
  r.deliver_after = start + r.lease;
  ++r.attempts;
  r.worker_id = TruncateTo(worker_id, kMaxWorkerIdLen);
  if (r.first_delivered_at == Time{}) r.first_delivered_at = start;
  r.last_delivered_at = start;
  AddEvent(r, start, "leased");
}

std::vector<ItemOutcome> MemoryShardStore::ApplyAcks(std::span<const AckRequest> acks,
                                                     Time now) {
  std::vector<ItemOutcome> out(acks.size());
  for (size_t i = 0; i < acks.size(); ++i) {
    const std::string row = std::to_string(acks[i].row.value());
    auto it = rows_.find(acks[i].row.value());
    if (it == rows_.end()) {
      out[i].status = Status::NotFound("ack: no row " + row);
      continue;
    }
    Row& r = it->second;
    // Token 0 means "never leased" and never matches.
    const bool token_ok =
        acks[i].token.value() != 0 && r.lease_token == acks[i].token.value();
    if (r.state == ItemState::kSucceeded && token_ok) continue;  // a repeated ack
    if (IsFinal(r.state)) {
      out[i].status = Status::FailedPrecondition("ack of row " + row + ": already " +
                                                 ItemStateName(r.state));
      continue;
    }
    if (!token_ok) {
      out[i].status =
          Status::FailedPrecondition("ack of row " + row + ": stale lease token");
      continue;
    }
    if (r.state != ItemState::kLeased && r.state != ItemState::kReady) {
      out[i].status = Status::FailedPrecondition("ack of row " + row + ": not leased");
      continue;
    }
    if (policies_.For(r.ns).retention <= Duration(0)) {
      // Retention 0: nothing of a finished task is kept, so it goes at once.
      out[i].transition = Deleted(it->first, r);
      Erase(it);
      continue;
    }
    const ItemState from = r.state;
    r.result = TruncateTo(acks[i].result, kMaxResultBytes);
    Finish(r, ItemState::kSucceeded, now);
    AddEvent(r, now, "succeeded");
    out[i].transition = Changed(it->first, r, from);
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

std::vector<ItemOutcome> MemoryShardStore::ApplyNacks(std::span<const NackRequest> nacks,
                                                      Time now) {
  std::vector<ItemOutcome> out(nacks.size());
  for (size_t i = 0; i < nacks.size(); ++i) {
    const NackRequest& n = nacks[i];
    out[i].status = CheckLease("nack", rows_, n.row, n.token);
    if (!out[i].status.ok()) continue;
    Row& r = rows_[n.row.value()];
    std::string error = TruncateTo(n.error, kMaxErrorBytes);
    // A lease nobody had is no error of the task's: its reason goes in the event.
    if (!n.unstarted_until) r.last_error = error;
    if (n.metadata) r.metadata = *n.metadata;
    if (r.cancel_requested) {
      Finish(r, ItemState::kCancelled, now);
      AddEvent(r, now, "cancelled", std::move(error));
    } else if (n.unstarted_until) {
      // No consumer got the lease: its attempt is taken back (a past due time keeps
      // the item's place in the order).
      const Time due = *n.unstarted_until;
      r.state = due <= now ? ItemState::kReady : ItemState::kDelayed;
      r.deliver_after = due;
      AddEvent(r, now, "undelivered", std::move(error));
      --r.attempts;
    } else if (n.fatal) {
      Finish(r, ItemState::kFailed, now);
      AddEvent(r, now, "failed", std::move(error));
    } else if (r.attempts >= r.max_attempts) {
      Finish(r, ItemState::kDead, now);
      AddEvent(r, now, "dead_lettered", std::move(error));
    } else {
      const Time due = now + std::max(n.delay, Duration(0));
      r.state = due <= now ? ItemState::kReady : ItemState::kDelayed;
      r.deliver_after = due;
      AddEvent(r, now, n.undelivered ? "undelivered" : "retry", std::move(error));
    }
    out[i].transition = Changed(n.row.value(), r, ItemState::kLeased);
  }
  return out;
}

std::vector<ItemOutcome> MemoryShardStore::ApplyExtends(
    std::span<const ExtendRequest> reqs, Time now) {
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
    out[i].cancel_requested = r.cancel_requested;
  }
  return out;
}

Result<Promotion> MemoryShardStore::DoPromoteDue(Time now, size_t limit,
                                                 const PromoteHandoff& handoff,
                                                 const Lookahead& look) {
  std::lock_guard lock(mu_);
  ++calls_[static_cast<size_t>(Op::kPromoteDue)];
  SHARDQ_RETURN_IF_ERROR(TakeFailure(Op::kPromoteDue));
  const Time delayed_due_by = std::min(now, look.delayed_due_by.value_or(now));
  std::vector<std::pair<Time, uint64_t>> due;
  for (const auto& [id, r] : rows_) {
    if ((r.state == ItemState::kDelayed && r.deliver_after <= delayed_due_by) ||
        (r.state == ItemState::kLeased && r.deliver_after <= now)) {
      due.emplace_back(r.deliver_after, id);
    }
  }
  std::sort(due.begin(), due.end());
  if (due.size() > limit) due.resize(limit);
  Promotion out;
  for (const auto& [when, id] : due) {
    Row& r = rows_[id];
    const ItemState from = r.state;
    if (from == ItemState::kDelayed) {
      r.state = ItemState::kReady;  // deliver_after stays: the time it became due
    } else {
      // An expired lease. The lease token stays (see store_api.h).
      r.last_error = "lease expired";
      if (r.cancel_requested) {
        Finish(r, ItemState::kCancelled, now);
        AddEvent(r, now, "lease_expired", "cancelled");
      } else if (r.attempts >= r.max_attempts) {
        Finish(r, ItemState::kDead, now);
        AddEvent(r, now, "lease_expired", "dead_lettered");
      } else {
        r.state = ItemState::kReady;
        AddEvent(r, now, "lease_expired");
      }
    }
    out.moved.push_back(Changed(id, r, from));
  }
  if (handoff) HandOff(handoff, now, out);
  // One pass over what is left: when the next call has work (not counting DELAYED
  // items left to claims: due after delayed_due_by, by now), the next lease to end,
  // and the lookahead window.
  auto earliest = [](std::optional<Time>& slot, Time t) {
    if (!slot || t < *slot) slot = t;
  };
  std::vector<std::pair<Time, uint64_t>> soon;
  for (const auto& [id, r] : rows_) {
    const Time at = r.deliver_after;
    if (r.state == ItemState::kLeased) {
      earliest(out.next_due, at);
      if (at > now) earliest(out.next_expiry, at);
    } else if (r.state == ItemState::kDelayed) {
      if (at <= delayed_due_by || at > now) earliest(out.next_due, at);
      if (at > std::max(now, look.after) && at <= look.until) soon.emplace_back(at, id);
    }
  }
  std::sort(soon.begin(), soon.end());
  if (soon.size() > look.limit) soon.resize(look.limit);
  for (const auto& [when, id] : soon) {
    out.upcoming.push_back(Changed(id, rows_.at(id), ItemState::kDelayed));
  }
  return out;
}

void MemoryShardStore::HandOff(const PromoteHandoff& handoff, Time now, Promotion& out) {
  const DelayedMoves candidates(out.moved);
  const std::vector<ItemTransition>& due = candidates.due;
  const std::vector<size_t>& moved_at = candidates.moved_at;
  if (due.empty()) return;
  std::vector<std::pair<size_t, LeasedItem>> leased;  // by index into out.moved
  for (const InsertLease& l : handoff(due)) {
    if (l.item >= due.size()) continue;
    ItemTransition& t = out.moved[moved_at[l.item]];
    Row& r = rows_[t.row.value()];
    // Also skips a second lease of the same item: the first one leased it.
    if (!Leasable(r, now)) continue;
    leased.emplace_back(moved_at[l.item], LeaseOut(t.row, r, l.worker_id, l.token, now));
    t.to = ItemState::kLeased;
    t.deliver_after = r.deliver_after;  // the lease deadline
  }
  std::sort(leased.begin(), leased.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  for (auto& [at, item] : leased) out.leased.push_back(std::move(item));
}

Result<std::vector<ItemTransition>> MemoryShardStore::PurgeExpired(Time now,
                                                                   size_t limit) {
  std::lock_guard lock(mu_);
  ++calls_[static_cast<size_t>(Op::kPurgeExpired)];
  SHARDQ_RETURN_IF_ERROR(TakeFailure(Op::kPurgeExpired));
  std::vector<std::pair<Time, uint64_t>> expired;
  for (const auto& [id, r] : rows_) {
    if (IsFinal(r.state)) {
      if (r.deliver_after <= now) expired.emplace_back(r.deliver_after, id);
    } else if (r.expires_at && *r.expires_at <= now) {
      expired.emplace_back(*r.expires_at, id);
    }
  }
  std::sort(expired.begin(), expired.end());
  if (expired.size() > limit) expired.resize(limit);
  std::vector<ItemTransition> out;
  for (const auto& [when, id] : expired) {
    auto it = rows_.find(id);
    out.push_back(Deleted(id, it->second));
    Erase(it);
  }
  return out;
}

Result<std::optional<Time>> MemoryShardStore::NextDue() {
  std::lock_guard lock(mu_);
  ++calls_[static_cast<size_t>(Op::kNextDue)];
  SHARDQ_RETURN_IF_ERROR(TakeFailure(Op::kNextDue));
  return NextDueLocked();
}

Result<std::vector<std::pair<LeaseToken, RowId>>> MemoryShardStore::LeasedRowsOf(
    std::span<const LeaseToken> tokens) {
  std::lock_guard lock(mu_);
  ++calls_[static_cast<size_t>(Op::kLeasedRowsOf)];
  SHARDQ_RETURN_IF_ERROR(TakeFailure(Op::kLeasedRowsOf));
  std::vector<std::pair<LeaseToken, RowId>> out;
  for (const auto& [id, r] : rows_) {
    if (r.state != ItemState::kLeased) continue;
    for (LeaseToken t : tokens) {
      if (t.value() == r.lease_token) out.emplace_back(t, RowId(id));
    }
  }
  return out;
}

std::optional<Time> MemoryShardStore::NextDueLocked() const {
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
    c.Add(r.state, 1);
  }
  std::vector<TopicCounts> out;
  for (auto& [key, c] : counts) out.push_back(std::move(c));
  return out;
}

Result<TaskRecord> MemoryShardStore::GetTask(RowId row, bool include_payload) {
  std::lock_guard lock(mu_);
  ++calls_[static_cast<size_t>(Op::kGetTask)];
  SHARDQ_RETURN_IF_ERROR(TakeFailure(Op::kGetTask));
  auto it = rows_.find(row.value());
  if (it == rows_.end()) {
    return Status::NotFound("get_task: no row " + std::to_string(row.value()));
  }
  TaskRecord t = Record(it->first, it->second, true);
  if (!include_payload) t.payload.clear();
  return t;
}

Result<ItemOutcome> MemoryShardStore::Cancel(RowId row, Time now) {
  return Reply(Op::kCancel, DoCancel(row, now));
}

Result<ItemOutcome> MemoryShardStore::DoCancel(RowId row, Time now) {
  std::lock_guard lock(mu_);
  ++calls_[static_cast<size_t>(Op::kCancel)];
  SHARDQ_RETURN_IF_ERROR(TakeFailure(Op::kCancel));
  ItemOutcome out;
  auto it = rows_.find(row.value());
  if (it == rows_.end()) {
    out.status = Status::NotFound("cancel: no row " + std::to_string(row.value()));
    return out;
  }
  Row& r = it->second;
  switch (r.state) {
    case ItemState::kDelayed:
    case ItemState::kReady: {
      const ItemState from = r.state;
      Finish(r, ItemState::kCancelled, now);
      AddEvent(r, now, "cancelled");
      out.transition = Changed(it->first, r, from);
      break;
    }
    case ItemState::kLeased:
      if (!r.cancel_requested) {
        r.cancel_requested = true;
        AddEvent(r, now, "cancel_requested");
      }
      out.cancel_requested = true;
      break;
    case ItemState::kCancelled:
      break;
    default:
      out.status =
          Status::FailedPrecondition("cancel of row " + std::to_string(row.value()) +
                                     ": already " + ItemStateName(r.state));
      break;
  }
  return out;
}

std::vector<uint64_t> MemoryShardStore::DeadInOrder(const std::string& ns,
                                                    const std::string& topic,
                                                    size_t limit) const {
  std::vector<std::tuple<int32_t, Time, uint64_t>> keys;
  for (const auto& [id, r] : rows_) {
    if (r.state == ItemState::kDead && r.ns == ns && r.topic == topic)
      keys.emplace_back(r.priority, r.deliver_after, id);
  }
  std::sort(keys.begin(), keys.end());
  if (keys.size() > limit) keys.resize(limit);
  std::vector<uint64_t> ids;
  for (const auto& k : keys) ids.push_back(std::get<2>(k));
  return ids;
}

Result<std::vector<TaskRecord>> MemoryShardStore::ListDead(const std::string& ns,
                                                           const std::string& topic,
                                                           size_t limit) {
  std::lock_guard lock(mu_);
  ++calls_[static_cast<size_t>(Op::kListDead)];
  SHARDQ_RETURN_IF_ERROR(TakeFailure(Op::kListDead));
  std::vector<TaskRecord> out;
  for (uint64_t id : DeadInOrder(ns, topic, limit)) {
    out.push_back(Record(id, rows_.at(id), false));
  }
  return out;
}

template <typename F>
void MemoryShardStore::ForGivenDead(const std::string& ns, const std::string& topic,
                                    std::span<const RowId> rows, BulkOutcome& out,
                                    F&& apply) {
  for (RowId row : rows) {
    ItemOutcome o;
    auto it = rows_.find(row.value());
    if (it == rows_.end() || it->second.ns != ns || it->second.topic != topic) {
      o.status = Status::NotFound("no row " + std::to_string(row.value()) + " in " + ns +
                                  "/" + topic);
    } else if (it->second.state != ItemState::kDead) {
      o.status =
          Status::FailedPrecondition("row " + std::to_string(row.value()) + " is " +
                                     ItemStateName(it->second.state) + ", not dead");
    } else {
      o.transition = apply(it);
      out.transitions.push_back(*o.transition);
    }
    out.per_row.push_back(std::move(o));
  }
}

Result<ShardStore::BulkOutcome> MemoryShardStore::Redrive(const std::string& ns,
                                                          const std::string& topic,
                                                          std::span<const RowId> rows,
                                                          size_t limit, Time now) {
  BeforeCall(Op::kRedrive);
  return Reply(Op::kRedrive, DoRedrive(ns, topic, rows, limit, now));
}

Result<ShardStore::BulkOutcome> MemoryShardStore::DoRedrive(const std::string& ns,
                                                            const std::string& topic,
                                                            std::span<const RowId> rows,
                                                            size_t limit, Time now) {
  std::lock_guard lock(mu_);
  ++calls_[static_cast<size_t>(Op::kRedrive)];
  SHARDQ_RETURN_IF_ERROR(TakeFailure(Op::kRedrive));
  auto redrive = [&](std::map<uint64_t, Row>::iterator it) {
    Row& r = it->second;
    r.state = ItemState::kReady;
    r.attempts = 0;
    r.deliver_after = now;
    r.finished_at = Time{};
    r.cancel_requested = false;
    AddEvent(r, now, "redriven");
    return Changed(it->first, r, ItemState::kDead);
  };
  BulkOutcome out;
  if (rows.empty()) {
    for (uint64_t id : DeadInOrder(ns, topic, limit))
      out.transitions.push_back(redrive(rows_.find(id)));
  } else {
    ForGivenDead(ns, topic, rows, out, redrive);
  }
  return out;
}

Result<ShardStore::BulkOutcome> MemoryShardStore::PurgeDead(const std::string& ns,
                                                            const std::string& topic,
                                                            std::span<const RowId> rows,
                                                            size_t limit) {
  BeforeCall(Op::kPurgeDead);
  return Reply(Op::kPurgeDead, DoPurgeDead(ns, topic, rows, limit));
}

Result<ShardStore::BulkOutcome> MemoryShardStore::DoPurgeDead(const std::string& ns,
                                                              const std::string& topic,
                                                              std::span<const RowId> rows,
                                                              size_t limit) {
  std::lock_guard lock(mu_);
  ++calls_[static_cast<size_t>(Op::kPurgeDead)];
  SHARDQ_RETURN_IF_ERROR(TakeFailure(Op::kPurgeDead));
  auto purge = [&](std::map<uint64_t, Row>::iterator it) {
    ItemTransition t = Deleted(it->first, it->second);
    Erase(it);
    return t;
  };
  BulkOutcome out;
  if (rows.empty()) {
    for (uint64_t id : DeadInOrder(ns, topic, limit))
      out.transitions.push_back(purge(rows_.find(id)));
  } else {
    ForGivenDead(ns, topic, rows, out, purge);
  }
  return out;
}

}  // namespace shardq::store
