#include "shard_worker/handoff.h"

#include <algorithm>
#include <string>
#include <unordered_map>

namespace shardq::shard_worker {

HandoffPlan::HandoffPlan(std::span<const NewItem> rows, Time now,
                         prefetch::PrefetchIndex& index) {
  // The due rows of each topic. A batch is mostly one topic, so this map is small.
  std::map<TopicKey, Candidates> due;
  for (size_t k = 0; k < rows.size(); ++k) {
    const NewItem& item = rows[k];
    if (item.deliver_after > now || (item.expires_at && *item.expires_at <= now))
      continue;
    // Not stored yet: the batch's order stands in for the row ids, which follow it.
    due[{item.ns, item.topic}].emplace_back(
        k, OrderKey{item.priority, item.deliver_after, ItemId{ShardId(0), RowId(k)}});
  }
  OfferAll(due, index);
}

HandoffPlan::HandoffPlan(std::span<const ItemTransition> due, ShardId shard,
                         prefetch::PrefetchIndex& index) {
  std::map<TopicKey, Candidates> by_topic;
  for (size_t k = 0; k < due.size(); ++k) {
    const ItemTransition& t = due[k];
    by_topic[{t.ns, t.topic}].emplace_back(
        k, OrderKey{t.priority, t.deliver_after, ItemId{shard, t.row}});
  }
  OfferAll(by_topic, index);
  for (const store::InsertLease& l : leases_) {
    lease_rows_.push_back(due[l.item].row);
    lease_dues_.push_back(due[l.item].deliver_after);
  }
}

std::vector<std::pair<LeaseToken, Time>> HandoffPlan::InsertLeases(
    std::span<const NewItem> rows) const {
  std::vector<std::pair<LeaseToken, Time>> out;
  for (const store::InsertLease& l : leases_) {
    out.emplace_back(l.token, rows[l.item].deliver_after);
  }
  return out;
}

std::vector<HandoffPlan::PlannedLease> HandoffPlan::PromotionLeases() const {
  std::vector<PlannedLease> out;
  for (size_t i = 0; i < lease_rows_.size(); ++i) {
    out.push_back({lease_rows_[i], leases_[i].token, lease_dues_[i]});
  }
  return out;
}

void HandoffPlan::OfferAll(std::map<TopicKey, Candidates>& by_topic,
                           prefetch::PrefetchIndex& index) {
  for (auto& [topic, candidates] : by_topic) {
    auto buffer = index.Find(std::string(topic.first), std::string(topic.second));
    if (!buffer) continue;  // nobody has asked for this topic
    std::vector<std::shared_ptr<prefetch::Waiter>> waiters = buffer->IdleWaiters();
    if (waiters.empty()) continue;
    // The best first: the ordering rule.
    std::sort(candidates.begin(), candidates.end(),
              [](const auto& a, const auto& b) { return a.second < b.second; });
    size_t next = 0;
    for (auto& waiter : waiters) {
      if (next == candidates.size()) break;
      std::string worker_id;
      const size_t n =
          waiter->OfferHandoff(*buffer, candidates.size() - next, &worker_id);
      if (n == 0) continue;
      offers_.push_back({std::move(waiter), buffer, leases_.size(), n});
      for (size_t i = 0; i < n; ++i) {
        leases_.push_back({candidates[next++].first, worker_id, NewLeaseToken()});
      }
    }
  }
}

void HandoffPlan::Deliver(std::span<NewItem> rows,
                          const Result<std::vector<store::Inserted>>& ids, Time now,
                          ShardId shard) {
  for (Offer& offer : offers_) {
    std::vector<LeasedItem> items;
    for (size_t i = offer.first; i < offer.first + offer.count; ++i) {
      const store::InsertLease& l = leases_[i];
      const size_t k = l.item;
      if (!ids.ok() || !(*ids)[k].leased) continue;
      NewItem& row = rows[k];
      LeasedItem item;
      item.row = (*ids)[k].row;
      item.ns = row.ns;
      item.topic = row.topic;
      item.priority = row.priority;
      item.payload = std::move(row.payload);
      item.metadata = std::move(row.metadata);
      item.token = l.token;
      item.lease_deadline = now + row.lease;
      item.attempts = 1;
      item.enqueued_at = now;
      item.deliver_after = row.deliver_after;
      item.task_type = row.task_type;
      item.max_attempts = row.max_attempts;
      items.push_back(std::move(item));
    }
    offer.waiter->Handed(*offer.buffer, shard, std::move(items));
  }
}

void HandoffPlan::Deliver(Result<store::Promotion>& promoted, ShardId shard) {
  std::unordered_map<uint64_t, LeasedItem*> by_row;
  if (promoted.ok()) {
    for (LeasedItem& item : promoted->leased) by_row[item.row.value()] = &item;
  }
  for (Offer& offer : offers_) {
    std::vector<LeasedItem> items;
    for (size_t i = offer.first; i < offer.first + offer.count; ++i) {
      // A row is in one lease of a plan; not leased if its TTL had passed.
      auto it = by_row.find(lease_rows_[i].value());
      if (it != by_row.end()) items.push_back(std::move(*it->second));
    }
    offer.waiter->Handed(*offer.buffer, shard, std::move(items));
  }
}

}  // namespace shardq::shard_worker
