#include "engine/dequeue_op.h"

#include <algorithm>
#include <iterator>

namespace shardq::engine {

DequeueOp::DequeueOp(Engine& engine, std::string ns, std::vector<TopicAsk> asks,
                     std::string worker_id, Time deadline, Engine::DequeueDone done)
    : engine_(engine),
      ns_(std::move(ns)),
      worker_id_(std::move(worker_id)),
      start_(engine.clock_.Now()),
      wait_deadline_(deadline),
      done_(std::move(done)) {
  for (TopicAsk& ask : asks) {
    auto buffer = engine_.index_.GetOrCreate(ns_, ask.topic);
    topics_.push_back({std::move(ask), std::move(buffer), {}});
  }
}

size_t DequeueOp::GotLocked() const {
  size_t n = 0;
  for (const Topic& t : topics_) n += t.got.size();
  return n;
}

void DequeueOp::Wake(const prefetch::TopicBuffer& buffer) {
  {
    std::lock_guard lock(mu_);
    const size_t topic = TopicOf(buffer);
    if (topic < topics_.size()) topics_[topic].registered = false;
  }
  Attempt();
}

void DequeueOp::RegisterLocked(Topic& t) {
  if (t.registered) return;
  t.registered = true;
  t.buffer->AddWaiter(weak_from_this());
}

void DequeueOp::Attempt() {
  std::unique_lock lock(mu_);
  // A wake while claims are in flight is not lost: OnClaimed looks again.
  if (finished_ || claims_in_flight_ > 0) return;
  if (holding_) {
    LookDuringHoldLocked();
    return;
  }
  auto self = shared_from_this();
  // Register as a waiter before looking, so an item that arrives between the look and
  // the park still wakes us (wakes are one-shot; a spurious one costs a look).
  for (Topic& t : topics_) RegisterLocked(t);

  bool blocked = false;
  std::vector<std::pair<size_t, std::vector<prefetch::TopicBuffer::Taken>>> takes;
  size_t budget = kMaxItemsPerDequeue - std::min(kMaxItemsPerDequeue, GotLocked());
  for (size_t i = 0; i < topics_.size() && budget > 0; ++i) {
    Topic& t = topics_[i];
    if (t.got.size() >= t.ask.count) continue;
    std::vector<size_t> refill;
    auto taken =
        t.buffer->Take(std::min(budget, t.ask.count - t.got.size()), &refill, &blocked);
    for (size_t shard : refill) engine_.workers_[shard]->Refill(t.buffer);
    budget -= taken.size();
    if (!taken.empty()) takes.emplace_back(i, std::move(taken));
  }

  for (auto& [topic, taken] : takes) ClaimLocked(topic, taken);
  if (claims_in_flight_ > 0) return;

  // A window still loading is "unknown", not "empty": wait for it (bounded), even
  // when the caller asked for no wait.
  Time deadline =
      blocked ? std::max(wait_deadline_, start_ + kMaxRefillWait) : wait_deadline_;
  Time now = engine_.clock_.Now();
  if (GotLocked() > 0 || expired_ || now >= deadline) {
    FinishLocked(lock);
    return;
  }
  if (deadline != parked_until_) {
    if (!parked_) {
      parked_ = true;
      engine_.parked_calls_.fetch_add(1);
      keep_alive_ = self;
    }
    parked_until_ = deadline;
    lock.unlock();
    engine_.waits_.Add(deadline, weak_from_this());
  }
}

void DequeueOp::ClaimLocked(size_t topic,
                            const std::vector<prefetch::TopicBuffer::Taken>& taken) {
  // One claim per (topic, shard): each shard batches claims of all calls anyway.
  std::vector<std::vector<ReadyKey>> per_shard(engine_.workers_.size());
  for (const auto& tk : taken) per_shard[tk.shard].push_back(tk.key);
  for (size_t s = 0; s < per_shard.size(); ++s) {
    if (per_shard[s].empty()) continue;
    ++claims_in_flight_;
    ShardId shard = engine_.workers_[s]->id();
    engine_.workers_[s]->Claim(
        topics_[topic].buffer, std::move(per_shard[s]), worker_id_,
        [self = shared_from_this(), topic, shard](std::vector<LeasedItem> items) {
          self->OnClaimed(topic, shard, std::move(items));
        });
  }
}

void DequeueOp::OnClaimed(size_t topic, ShardId shard, std::vector<LeasedItem> items) {
  std::unique_lock lock(mu_);
  --claims_in_flight_;
  Topic& t = topics_[topic];
  for (LeasedItem& item : items) {
    (holding_ || finished_ ? t.landed : t.got).push_back({shard, std::move(item)});
  }
  if (finished_) {
    // A held call's look whose claim landed after the answer went, or after the call
    // ended: nobody got these.
    std::vector<NackOp> ops = GiveBackLandedLocked();
    lock.unlock();
    SendGiveBacks(std::move(ops));
    return;
  }
  if (claims_in_flight_ > 0) return;
  for (Topic& each : topics_) {
    std::move(each.landed.begin(), each.landed.end(), std::back_inserter(each.got));
    each.landed.clear();
  }
  if (GotLocked() > 0) {
    FinishOrHoldLocked(lock);
    return;
  }
  if (expired_ || finished_) {
    FinishLocked(lock);
    return;
  }
  // Every claim lost its race (items acked or leased meanwhile): look again.
  lock.unlock();
  Attempt();
}

size_t DequeueOp::TopicOf(const prefetch::TopicBuffer& buffer) const {
  size_t i = 0;
  while (i < topics_.size() && topics_[i].buffer.get() != &buffer) ++i;
  return i;
}

size_t DequeueOp::OfferHandoff(const prefetch::TopicBuffer& buffer, size_t max,
                               std::string* worker_id) {
  std::lock_guard lock(mu_);
  // Only while parked: nothing got, nothing in flight, not answering.
  if (finished_ || expired_ || claims_in_flight_ > 0 || GotLocked() > 0) return 0;
  const size_t topic = TopicOf(buffer);
  if (topic == topics_.size()) return 0;
  const size_t n = std::min({max, topics_[topic].ask.count, kMaxItemsPerDequeue});
  if (n == 0) return 0;
  ++claims_in_flight_;
  *worker_id = worker_id_;
  return n;
}

void DequeueOp::Handed(const prefetch::TopicBuffer& buffer, ShardId shard,
                       std::vector<LeasedItem> items) {
  OnClaimed(TopicOf(buffer), shard, std::move(items));
}

void DequeueOp::Expire(Time deadline, bool forced) {
  std::unique_lock lock(mu_);
  if (finished_) return;
  // A stale entry (re-parked later) -- unless the engine is shutting down.
  if (!forced && deadline < parked_until_) return;
  expired_ = true;
  ended_ = ended_ || forced;
  CloseLocked(lock);
}

void DequeueOp::Cancel() {
  std::unique_lock lock(mu_);
  if (finished_) return;
  expired_ = true;
  ended_ = true;
  CloseLocked(lock);
}

void DequeueOp::CloseLocked(std::unique_lock<std::mutex>& lock) {
  // A hold ends on time: what its look's claims brought is given back, now if it
  // landed and when it lands otherwise (OnClaimed), so a slow shard cannot delay the
  // answer and nothing goes out unranked or unchecked.
  std::vector<NackOp> landed = GiveBackLandedLocked();
  if (holding_ && ended_) {
    GiveBackLocked(lock, /*only_not_due=*/false);
  } else if (holding_ || claims_in_flight_ == 0) {
    FinishLocked(lock);
  } else {
    return;  // the last claim to land finishes the call
  }
  SendGiveBacks(std::move(landed));
}

void DequeueOp::FinishOrHoldLocked(std::unique_lock<std::mutex>& lock) {
  std::vector<NackOp> displaced = TrimLocked();
  const Time now = engine_.clock_.Now();
  Time due{};
  for (const Topic& t : topics_) {
    for (const Delivered& d : t.got) due = std::max(due, d.item.deliver_after);
  }
  if (ended_) {
    // Cancelled (or the server is shutting down) while the claims were in flight:
    // nobody reads the answer, so its leases go back, their attempts not counted.
    GiveBackLocked(lock, /*only_not_due=*/false);
  } else if (due <= now) {
    FinishLocked(lock);
  } else if (HoldWouldSpendLeasesLocked(now, due)) {
    GiveBackLocked(lock, /*only_not_due=*/true);
  } else {
    // The latest item's lease starts when the hold ends, so it stays, and so does
    // `due`.
    TakeOutShortLeasesLocked(now, due, &displaced);
    HoldLocked(lock, due);
  }
  SendGiveBacks(std::move(displaced));
}

void DequeueOp::HoldLocked(std::unique_lock<std::mutex>& lock, Time due) {
  if (!holding_) {
    holding_ = true;
    keep_alive_ = shared_from_this();
    size_t budget = kMaxItemsPerDequeue - std::min(kMaxItemsPerDequeue, GotLocked());
    for (Topic& t : topics_) {
      if (t.got.empty()) continue;  // nothing held here to rank against
      // Room left in the ask takes better items without giving a held one back.
      const size_t room =
          std::min(t.ask.count - std::min(t.ask.count, t.got.size()), budget);
      budget -= room;
      t.keep = t.got.size() + room;
    }
  }
  // Displacing the latest item makes the hold shorter; the old entry then finds the
  // call answered.
  const bool moved = due != parked_until_;
  parked_until_ = due;
  LookDuringHoldLocked();
  lock.unlock();
  if (moved) engine_.waits_.Add(due, weak_from_this());
}

void DequeueOp::LookDuringHoldLocked() {
  // The hold's end is here (the ticker is about to answer): a claim would come late.
  if (engine_.clock_.Now() >= parked_until_) return;
  // Registered first, as in Attempt(): an item that arrives after the look wakes us.
  for (Topic& t : topics_) {
    if (!t.got.empty()) RegisterLocked(t);
  }
  for (size_t i = 0; i < topics_.size(); ++i) {
    Topic& t = topics_[i];
    if (t.got.empty()) continue;
    auto worst = std::max_element(t.got.begin(), t.got.end(), Delivered::Before);
    const prefetch::TopicBuffer::Taken bound{
        engine_.position_.at(worst->shard),
        {worst->item.priority, worst->item.deliver_after, worst->item.row}};
    std::vector<size_t> refill;
    // Due by the end of the hold: taking them does not make it longer.
    auto taken = t.buffer->TakeDueBefore(
        bound, parked_until_, t.keep, &refill, [this](size_t shard, RowId row) {
          const ItemId id{engine_.workers_[shard]->id(), row};
          return std::find(short_leases_.begin(), short_leases_.end(), id) !=
                 short_leases_.end();
        });
    for (size_t shard : refill) engine_.workers_[shard]->Refill(t.buffer);
    if (!taken.empty()) ClaimLocked(i, taken);
  }
}

std::vector<NackOp> DequeueOp::TrimLocked() {
  std::vector<NackOp> ops;
  if (!holding_) return ops;  // no keep set yet
  for (Topic& t : topics_) {
    if (t.got.size() <= t.keep) continue;
    std::sort(t.got.begin(), t.got.end(), Delivered::Before);
    for (size_t i = t.keep; i < t.got.size(); ++i) {
      ops.push_back(GiveBack(t.got[i], "better items became ready before its answer"));
    }
    t.got.resize(t.keep);
  }
  return ops;
}

// Half of what is left of a lease when the call holds (from now, when its claim has
// landed, or from the item's due time) must remain when the consumer gets it.
static bool HoldSpendsLease(const Delivered& d, Time now, Time hold_until) {
  const Time start = std::max(now, d.item.deliver_after);
  return 2 * (d.item.lease_deadline - hold_until) < d.item.lease_deadline - start;
}

bool DequeueOp::HoldWouldSpendLeasesLocked(Time now, Time hold_until) const {
  for (const Topic& t : topics_) {
    for (const Delivered& d : t.got) {
      if (d.item.deliver_after <= now && HoldSpendsLease(d, now, hold_until)) return true;
    }
  }
  return false;
}

void DequeueOp::TakeOutShortLeasesLocked(Time now, Time hold_until,
                                         std::vector<NackOp>* back) {
  for (Topic& t : topics_) {
    std::erase_if(t.got, [&](const Delivered& d) {
      if (d.item.deliver_after <= now || !HoldSpendsLease(d, now, hold_until))
        return false;
      back->push_back(GiveBack(d,
                               "a hold until another item's due time would have spent "
                               "its lease"));
      short_leases_.push_back(d.id());
      return true;
    });
  }
}

NackOp DequeueOp::GiveBack(const Delivered& d, std::string error) {
  NackOp op{d.id(), d.item.token};
  op.error = std::move(error);
  op.undelivered = true;
  // Where it was in the order: READY again if that time has passed, else DELAYED.
  op.unstarted_until = d.item.deliver_after;
  return op;
}

void DequeueOp::GiveBackLocked(std::unique_lock<std::mutex>& lock, bool only_not_due) {
  const Time now = engine_.clock_.Now();
  std::vector<NackOp> ops;
  for (Topic& t : topics_) {
    std::vector<Delivered> kept;
    for (Delivered& d : t.got) {
      const bool due = d.item.deliver_after <= now;
      if (only_not_due && due) {
        kept.push_back(std::move(d));
        continue;
      }
      ops.push_back(GiveBack(d, only_not_due ? "a hold until its due time would have "
                                               "spent another item's lease"
                                             : "the call ended before its answer went"));
    }
    t.got = std::move(kept);
  }
  FinishLocked(lock);  // answers what was kept, if anything; unlocks
  SendGiveBacks(std::move(ops));
}

std::vector<NackOp> DequeueOp::GiveBackLandedLocked() {
  std::vector<NackOp> ops;
  for (Topic& t : topics_) {
    for (const Delivered& d : t.landed) {
      ops.push_back(GiveBack(d, "the call it was claimed for had answered or ended"));
    }
    t.landed.clear();
  }
  return ops;
}

void DequeueOp::SendGiveBacks(std::vector<NackOp> ops) {
  if (ops.empty()) return;
  // Refused ones (a shard that is down) come back when their leases run out.
  engine_.Nack(std::move(ops), [](std::vector<Status>) {});
}

void DequeueOp::FinishLocked(std::unique_lock<std::mutex>& lock) {
  if (finished_) return;
  finished_ = true;
  if (parked_) engine_.parked_calls_.fetch_sub(1);
  std::vector<Delivered> out;
  for (Topic& t : topics_) {
    std::sort(t.got.begin(), t.got.end(), Delivered::Before);
    for (Delivered& d : t.got) out.push_back(std::move(d));
  }
  auto done = std::move(done_);
  // Released after the answer; every caller of FinishLocked holds its own reference.
  auto keep_alive = std::move(keep_alive_);
  lock.unlock();
  done(std::move(out));
}

}  // namespace shardq::engine
