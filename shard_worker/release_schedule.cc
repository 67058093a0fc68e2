#include "shard_worker/release_schedule.h"

#include <algorithm>

namespace shardq::shard_worker {

store::Lookahead ReleaseSchedule::Window(Time now) const {
  if (lookahead_ <= Duration(0)) return {};
  std::lock_guard lock(mu_);
  store::Lookahead look{
      .after = std::max(known_until_, now), .until = now + lookahead_, .limit = limit_};
  // Items due by known_from_ were never scheduled: those are promoted as they fall due.
  // Nor were those due after known_until_: if now is past it (the promotion came late,
  // or the clock jumped), everything due is promoted.
  if (known_from_ && known_until_ >= now) {
    look.delayed_due_by = std::max(*known_from_, now - grace());
  }
  return look;
}

void ReleaseSchedule::Learned(const store::Lookahead& asked,
                              std::span<const ItemTransition> upcoming) {
  if (asked.limit == 0) return;
  std::lock_guard lock(mu_);
  // The part read is contiguous from known_from_: after a gap, it starts again here.
  if (!known_from_ || asked.after > known_until_) known_from_ = asked.after;
  for (const ItemTransition& t : upcoming) {
    if (released_.contains(t.row) || at_.contains(t.row)) continue;
    by_time_.emplace(std::pair(t.deliver_after, t.row), t);
    at_.emplace(t.row, t.deliver_after);
  }
  // A full answer may have left rows of its last millisecond unread: read that one
  // again next time (what is already scheduled is skipped above).
  const bool full = upcoming.size() >= asked.limit;
  const Time read_until =
      full ? upcoming.back().deliver_after - Duration(1) : asked.until;
  // More rows share that millisecond than one read returns (a batch enqueued with one
  // delay): reading again gets no further, so the reads wait for it to be due, when
  // its promotion moves them all.
  if (full && read_until <= asked.after) {
    stuck_at_ = upcoming.back().deliver_after;
  } else {
    stuck_at_.reset();
  }
  known_until_ = std::max(known_until_, read_until);
}

bool ReleaseSchedule::MaybeAdd(const ItemTransition& t) {
  if (lookahead_ <= Duration(0)) return false;
  std::lock_guard lock(mu_);
  if (t.deliver_after > known_until_ || released_.contains(t.row) ||
      at_.contains(t.row)) {
    return false;
  }
  by_time_.emplace(std::pair(t.deliver_after, t.row), t);
  at_.emplace(t.row, t.deliver_after);
  return true;
}

Time ReleaseSchedule::PromoteAt(Time next_delayed) const {
  if (lookahead_ <= Duration(0)) return next_delayed;
  std::lock_guard lock(mu_);
  // Not read ahead yet: promote early enough that the lookahead reads it. Scheduled
  // for release (every DELAYED row due by known_until_ is): claims lease it from the
  // ready index, so the next promotion is only for reading further ahead, once half
  // the window is used (so the read is done before the window runs out); it also
  // marks READY the released items no claim took within a lookahead.
  const Time at = next_delayed > known_until_ ? next_delayed - lookahead_
                                              : known_until_ - lookahead_ / 2;
  // Unless the reads are stuck (Learned): then not before that millisecond, or each
  // promotion would read the same rows again at once.
  return stuck_at_ ? std::max(at, *stuck_at_) : at;
}

std::optional<Time> ReleaseSchedule::NextPromotion(const store::Lookahead& look,
                                                   const store::Promotion& done,
                                                   Time now) {
  if (!done.next_due) return look.delayed_due_by ? Settled(look) : std::nullopt;
  const Time next = *done.next_due;
  if (next <= now) return next;  // more were due than one call moves
  std::optional<Time> at = next == done.next_expiry ? next : PromoteAt(next);
  // PromoteAt() of a DELAYED item already read ahead is later than the item (half
  // the window on): a lease ending before then must not wait for it.
  if (done.next_expiry && *done.next_expiry < *at) at = done.next_expiry;
  if (auto settled = Settled(look); settled && *settled < *at) at = settled;
  return at;
}

std::optional<Time> ReleaseSchedule::Settled(const store::Lookahead& look) {
  if (!look.delayed_due_by) return std::nullopt;
  auto oldest = Settle(*look.delayed_due_by);
  if (!oldest) return std::nullopt;
  return *oldest + grace();
}

void ReleaseSchedule::SetLead(Duration lead, Time now) {
  std::lock_guard lock(mu_);
  lead_ = std::clamp(lead, Duration(0), max_lead_);
  lead_set_ = now;
}

Duration ReleaseSchedule::lead(Time now) const {
  std::lock_guard lock(mu_);
  return LeadLocked(now);
}

Duration ReleaseSchedule::LeadLocked(Time now) const {
  return now - lead_set_ <= LatencyEstimate::kQuiet ? lead_ : Duration(0);
}

std::vector<ItemTransition> ReleaseSchedule::TakeDue(Time now) {
  std::vector<ItemTransition> due;
  std::lock_guard lock(mu_);
  if (auto end = GapEndLocked(now); end && now < *end) return due;
  const Duration lead = LeadLocked(now);
  while (!by_time_.empty() && by_time_.begin()->first.first <= now + lead) {
    auto node = by_time_.extract(by_time_.begin());
    at_.erase(node.mapped().row);
    released_.emplace(node.mapped().row, node.mapped());
    due.push_back(std::move(node.mapped()));
  }
  if (!due.empty()) last_release_ = now;
  return due;
}

std::optional<Time> ReleaseSchedule::NextRelease(Time now) const {
  std::lock_guard lock(mu_);
  if (by_time_.empty()) return std::nullopt;
  const Time at = by_time_.begin()->first.first - LeadLocked(now);
  auto end = GapEndLocked(now);
  return end ? std::max(at, *end) : at;
}

std::optional<Time> ReleaseSchedule::GapEndLocked(Time now) const {
  // A last release after now: the clock stepped back; the gap counts from now on.
  if (!last_release_ || *last_release_ > now) return std::nullopt;
  return *last_release_ + gap_;
}

std::optional<Time> ReleaseSchedule::Settle(Time cutoff) {
  std::optional<Time> oldest;
  std::lock_guard lock(mu_);
  std::erase_if(released_,
                [&](const auto& entry) { return entry.second.deliver_after <= cutoff; });
  for (const auto& [row, t] : released_) {
    if (!oldest || t.deliver_after < *oldest) oldest = t.deliver_after;
  }
  return oldest;
}

std::vector<ReadyKey> ReleaseSchedule::ReleasedOf(const std::string& ns,
                                                  const std::string& topic) const {
  std::vector<ReadyKey> keys;
  std::lock_guard lock(mu_);
  for (const auto& [row, t] : released_) {
    if (t.ns == ns && t.topic == topic)
      keys.push_back({t.priority, t.deliver_after, row});
  }
  return keys;
}

bool ReleaseSchedule::Forget(RowId row) {
  std::lock_guard lock(mu_);
  if (auto it = at_.find(row); it != at_.end()) {
    by_time_.erase(std::pair(it->second, row));
    at_.erase(it);
  }
  return released_.erase(row) > 0;
}

void ReleaseSchedule::Clear() {
  std::lock_guard lock(mu_);
  by_time_.clear();
  at_.clear();
  released_.clear();
  known_from_.reset();
  known_until_ = {};
  stuck_at_.reset();
  last_release_.reset();
}

size_t ReleaseSchedule::scheduled() const {
  std::lock_guard lock(mu_);
  return by_time_.size();
}

size_t ReleaseSchedule::released() const {
  std::lock_guard lock(mu_);
  return released_.size();
}

}  // namespace shardq::shard_worker
