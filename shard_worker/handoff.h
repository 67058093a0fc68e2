#pragma once
// Direct handoff: the due items of an insert batch go straight to the consumers parked
// on their topics, leased in the insert's own transaction. At low load, where a
// consumer is usually waiting, that saves an item its claim: a transaction and a
// commit on the way from the producer to the handler.
//
// It keeps the ordering rule: a topic's waiters are offered items only when nothing of
// the topic is ready in memory and no window is still loading
// (TopicBuffer::IdleWaiters), and then the batch's best items first.
//
// Threads: the shard worker's strand, around one store Insert.

#include <memory>
#include <span>
#include <vector>

#include "common/clock.h"
#include "common/ids.h"
#include "common/item.h"
#include "common/status.h"
#include "prefetch/prefetch_index.h"
#include "store/store_api.h"

namespace shardq::shard_worker {

class HandoffPlan {
 public:
  // Offers the items of `rows` (an insert batch at `now`) that are due to the idle
  // waiters of their topics.
  HandoffPlan(std::span<const NewItem> rows, Time now, prefetch::PrefetchIndex& index);

  // For the store's Insert.
  std::span<const store::InsertLease> leases() const { return leases_; }

  // After the insert: hands each waiter what was leased to it (nothing if the insert
  // failed). Moves the payloads and metadata of the leased rows out of `rows`.
  void Deliver(std::span<NewItem> rows, const Result<std::vector<store::Inserted>>& ids,
               Time now, ShardId shard);

 private:
  // One waiter's items: leases_[first, first + count).
  struct Offer {
    std::shared_ptr<prefetch::Waiter> waiter;
    std::shared_ptr<prefetch::TopicBuffer> buffer;
    size_t first = 0;
    size_t count = 0;
  };
  std::vector<Offer> offers_;
  std::vector<store::InsertLease> leases_;
};

}  // namespace shardq::shard_worker
