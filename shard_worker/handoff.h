#pragma once
// Direct handoff: due items go straight to the consumers parked on their topics,
// leased in the transaction that makes them due -- an insert batch's (a store Write
// with InsertLeases) or a promotion's (PromoteDue with a PromoteHandoff). At low load,
// where a consumer is usually waiting, that saves an item its claim: a transaction and
// a commit on the way from the producer (or the timer) to the handler.
//
// It keeps the ordering rule: a topic's waiters are offered items only when nothing of
// the topic is ready in memory and no window is still loading
// (TopicBuffer::IdleWaiters), and then the best items first. (An insert's Write that
// also makes an item READY by a nack hands nothing off: ShardWorker::RunWrites.)
//
// Threads: the shard worker's strand, around one store Write or PromoteDue.

#include <map>
#include <memory>
#include <span>
#include <string_view>
#include <utility>
#include <vector>

#include "common/clock.h"
#include "common/ids.h"
#include "common/item.h"
#include "common/ordering.h"
#include "common/status.h"
#include "prefetch/prefetch_index.h"
#include "store/store_api.h"

namespace shardq::shard_worker {

class HandoffPlan {
 public:
  // Offers the items of `rows` (an insert batch at `now`) that are due to the idle
  // waiters of their topics.
  HandoffPlan(std::span<const NewItem> rows, Time now, prefetch::PrefetchIndex& index);
  // Offers the items of `due` (what a promotion of shard `shard` is making READY: the
  // argument of a PromoteHandoff) to the idle waiters of their topics.
  HandoffPlan(std::span<const ItemTransition> due, ShardId shard,
              prefetch::PrefetchIndex& index);

  // For the store's Write (its inserts), or as the PromoteHandoff's answer.
  std::span<const store::InsertLease> leases() const { return leases_; }

  // After the insert: hands each waiter what was leased to it (nothing if the insert
  // failed). Moves the payloads and metadata of the leased rows out of `rows`.
  void Deliver(std::span<NewItem> rows, const Result<std::vector<store::Inserted>>& ids,
               Time now, ShardId shard);
  // After the promotion: hands each waiter what was leased to it (nothing if the
  // promotion failed). Moves the items out of `promoted->leased`.
  void Deliver(Result<store::Promotion>& promoted, ShardId shard);
  // A promotion's leases as (row, token, due time): when its outcome is unknown
  // they may have committed, and no waiter was handed them (ShardWorker gives them
  // back as never started).
  struct PlannedLease {
    RowId row;
    LeaseToken token;
    Time due;
  };
  std::vector<PlannedLease> PromotionLeases() const;
  // An insert's leases as (token, due time) of the items of `rows` (the insert's):
  // when its outcome is unknown the rows' ids never came back, only the tokens.
  std::vector<std::pair<LeaseToken, Time>> InsertLeases(
      std::span<const NewItem> rows) const;

 private:
  // The items of one topic that may be offered: (index, ordering key).
  using Candidates = std::vector<std::pair<size_t, OrderKey>>;
  using TopicKey = std::pair<std::string_view, std::string_view>;  // ns, topic
  void OfferAll(std::map<TopicKey, Candidates>& by_topic, prefetch::PrefetchIndex& index);

  // One waiter's items: leases_[first, first + count).
  struct Offer {
    std::shared_ptr<prefetch::Waiter> waiter;
    std::shared_ptr<prefetch::TopicBuffer> buffer;
    size_t first = 0;
    size_t count = 0;
  };
  std::vector<Offer> offers_;
  std::vector<store::InsertLease> leases_;
  std::vector<RowId> lease_rows_;  // a promotion's: the row of each lease
  std::vector<Time> lease_dues_;   // ... and its due time
};

}  // namespace shardq::shard_worker
