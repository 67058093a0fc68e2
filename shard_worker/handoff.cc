#include "shard_worker/handoff.h"

#include <algorithm>
#include <map>
#include <string>

#include "common/ordering.h"

namespace shardq::shard_worker {

HandoffPlan::HandoffPlan(std::span<const NewItem> rows, Time now,
                         prefetch::PrefetchIndex& index) {
  // The due rows of each topic. A batch is mostly one topic, so this map is small.
  std::map<std::pair<std::string_view, std::string_view>, std::vector<size_t>> due;
  for (size_t k = 0; k < rows.size(); ++k) {
    const NewItem& item = rows[k];
    if (item.deliver_after > now || (item.expires_at && *item.expires_at <= now))
      continue;
    due[{item.ns, item.topic}].push_back(k);
  }
  for (auto& [topic, candidates] : due) {
    auto buffer = index.Find(std::string(topic.first), std::string(topic.second));
    if (!buffer) continue;  // nobody has asked for this topic
    std::vector<std::shared_ptr<prefetch::Waiter>> waiters = buffer->IdleWaiters();
    if (waiters.empty()) continue;
    // The batch's best first: the ordering rule (row ids follow the batch's order).
    auto order_key = [&](size_t k) {
      return OrderKey{rows[k].priority, rows[k].deliver_after,
                      ItemId{ShardId(0), RowId(k)}};
    };
    std::sort(candidates.begin(), candidates.end(),
              [&](size_t a, size_t b) { return order_key(a) < order_key(b); });
    size_t next = 0;
    for (auto& waiter : waiters) {
      if (next == candidates.size()) break;
      std::string worker_id;
      const size_t n =
          waiter->OfferHandoff(*buffer, candidates.size() - next, &worker_id);
      if (n == 0) continue;
      offers_.push_back({std::move(waiter), buffer, leases_.size(), n});
      for (size_t i = 0; i < n; ++i) {
        leases_.push_back({candidates[next++], worker_id, NewLeaseToken()});
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

}  // namespace shardq::shard_worker
