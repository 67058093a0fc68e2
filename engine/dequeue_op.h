#pragma once
// DequeueOp: one Dequeue call in flight. It takes the best items of each requested
// topic from the prefetch index, has their shards persist the leases (claims), and
// answers when it has at least one item or its wait runs out. While it waits it is
// only an entry in the topic buffers' waiter lists and in the WaitList -- no thread.
//
// A parked call may also be handed new or newly due items directly: a shard worker
// leases them to it in their insert's or promotion's transaction
// (prefetch::Waiter::OfferHandoff), which it then treats as one more claim in flight.
//
// An item released a lead before its due time (shard_worker/release_schedule.h) is
// leased from its due time; the call then holds its answer until its latest item is
// due (an entry in the WaitList, like a park), so no item is delivered early. Every
// lease a held call gives back is one no consumer got: its attempt does not count
// and it is due again at its own due time (NackOp::unstarted_until), READY in its old
// place in the order if that has passed, DELAYED until then otherwise. A call that
// ends (cancelled, server shutting down) while it holds, or while its claims are in
// flight, gives all its leases back, those of its claims when they land, and answers
// nothing. A hold may not spend more than half of what is left of a lease (from when
// its claim landed, or the item's due time; a lease of a few milliseconds): if it
// would for a due item, the call does not hold but gives back the items not yet due
// and answers the due ones at once; if it would for an item due before the latest,
// that item goes back, and the hold does not take it again.
//
// While it holds, the call stays a waiter of the topics it holds items of: an item
// that becomes ready, or is released, due by the end of the hold and ranking before
// the worst held item of its topic is claimed too (it does not make the hold longer),
// and the answer keeps the best, as many as the call asked for; the others go back.
// So the answer is ordered when it is sent, not only when its items were taken
// (guarantee 4), except for what comes within one claim turn of the end of the hold,
// beyond a window's loaded part, or to another parked call by a direct handoff. The
// answer goes at the end of the hold in any case: if a look's claims have not all
// landed by then, what they brought is given back (the rest when it lands), so
// nothing goes out unranked or unchecked.
//
// Threads: Attempt() runs on whichever thread woke it (a gRPC thread, a shard strand
// after new items, the ticker at the deadline); its own mutex serialises them.

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "engine/wait_list.h"
#include "prefetch/topic_buffer.h"

namespace shardq::engine {

class DequeueOp final : public prefetch::Waiter,
                        public Expirable,
                        public Engine::DequeueHandle,
                        public std::enable_shared_from_this<DequeueOp> {
 public:
  // How long a call with no wait may still wait for a window's first refill (so an
  // empty answer means "nothing ready", not "not loaded yet").
  static constexpr Duration kMaxRefillWait{5'000};

  DequeueOp(Engine& engine, std::string ns, std::vector<TopicAsk> asks,
            std::string worker_id, Time deadline, Engine::DequeueDone done);

  // Takes what is available and claims it; parks the call if there is nothing.
  void Attempt();
  void Wake(const prefetch::TopicBuffer& topic) override;
  // Takes a handoff only while parked: it then counts as a claim in flight.
  size_t OfferHandoff(const prefetch::TopicBuffer& topic, size_t max,
                      std::string* worker_id) override;
  void Handed(const prefetch::TopicBuffer& topic, ShardId shard,
              std::vector<LeasedItem> items) override;
  void Expire(Time deadline, bool forced) override;
  void Cancel() override;

 private:
  struct Topic {
    TopicAsk ask;
    std::shared_ptr<prefetch::TopicBuffer> buffer;
    std::vector<Delivered> got;
    size_t keep = 0;          // while holding: how many of `got` the answer may carry
    bool registered = false;  // in buffer's waiter list (until it wakes us)
    // While holding: what the claims of a look brought, until the last of them lands
    // and it is ranked and checked with `got` (FinishOrHoldLocked).
    std::vector<Delivered> landed;
  };
  // Requires mu_. Registers with `t`'s buffer as a waiter unless still registered, so
  // that repeated looks do not pile up entries (each a wake, and a look, per event).
  void RegisterLocked(Topic& t);
  // Requires mu_. Has the shards lease `taken` (items of topics_[topic]), one claim
  // per shard; each counts in claims_in_flight_ until OnClaimed.
  void ClaimLocked(size_t topic, const std::vector<prefetch::TopicBuffer::Taken>& taken);
  void OnClaimed(size_t topic, ShardId shard, std::vector<LeasedItem> items);
  // Requires mu_, expired_ set (and ended_ if the call ended); unlocks if it answers.
  // Answers the call, or gives a hold's leases back if it ended, unless claims of a
  // call not holding are in flight (the last to land answers).
  void CloseLocked(std::unique_lock<std::mutex>& lock);
  // Requires mu_, no claim in flight, something got. Gives back what a hold's
  // ranking displaced (TrimLocked), then answers the call now, or holds the answer
  // until its latest item is due.
  void FinishOrHoldLocked(std::unique_lock<std::mutex>& lock);
  // Requires mu_; unlocks. Holds (or goes on holding) the answer until `due`, and
  // looks for better items (LookDuringHoldLocked). On the first call, sets each
  // topic's `keep`.
  void HoldLocked(std::unique_lock<std::mutex>& lock, Time due);
  // Requires mu_, holding, no claim in flight. Registers as a waiter (if a wake used
  // that up) and claims the items due by the end of the hold that rank before the
  // worst held item of their topic (prefetch::TopicBuffer::TakeDueBefore). Nothing
  // once the end of the hold has come.
  void LookDuringHoldLocked();
  // Requires mu_. While holding: the items past each topic's `keep`, worst first
  // out of `got`, as give-backs.
  std::vector<NackOp> TrimLocked();
  // Requires mu_. Whether holding the answer until `hold_until` would leave a due
  // item (whose lease started at its claim) less than half of its remaining lease.
  // A lease shorter than a hold would otherwise run out before its consumer got it,
  // and the item could be leased to another meanwhile (guarantee 3).
  bool HoldWouldSpendLeasesLocked(Time now, Time hold_until) const;
  // Requires mu_. Moves the items not due yet whose lease (from their due time) the
  // hold would spend more than half of into `back` as give-backs. (The latest item's
  // lease starts when the hold ends: it is never among them.)
  void TakeOutShortLeasesLocked(Time now, Time hold_until, std::vector<NackOp>* back);
  // Requires mu_. Gives back the items got (see above), or only those not yet due,
  // and answers with the rest (nothing, or the due ones).
  void GiveBackLocked(std::unique_lock<std::mutex>& lock, bool only_not_due);
  // A nack that gives back `d`, which no consumer got (the answer that carried it was
  // never sent): its attempt does not count and it is due again at its own due time
  // (NackOp::unstarted_until), READY in its old place if that has passed.
  static NackOp GiveBack(const Delivered& d, std::string error);
  // Requires mu_. The items of `landed`, as give-backs: at the end of a hold whose
  // look still has claims in flight, and as each of them lands after it.
  std::vector<NackOp> GiveBackLandedLocked();
  // Sends give-backs (no lock needed); a refused one comes back when its lease ends.
  void SendGiveBacks(std::vector<NackOp> ops);
  // The index in topics_ of `buffer`'s topic, or topics_.size(). No lock: the
  // topics and their buffers are fixed at construction.
  size_t TopicOf(const prefetch::TopicBuffer& buffer) const;
  // Requires mu_. Answers the call (once).
  void FinishLocked(std::unique_lock<std::mutex>& lock);
  size_t GotLocked() const;

  Engine& engine_;
  const std::string ns_;
  const std::string worker_id_;
  const Time start_;
  const Time wait_deadline_;  // start + the caller's wait
  Engine::DequeueDone done_;

  std::mutex mu_;
  std::vector<Topic> topics_;
  size_t claims_in_flight_ = 0;
  bool expired_ = false;
  bool ended_ = false;  // cancelled, or the engine is shutting down
  bool finished_ = false;
  Time parked_until_{};   // the deadline last registered in the WaitList
  bool parked_ = false;   // counted in Engine::parked_calls_
  bool holding_ = false;  // the answer waits for its items' due time (parked_until_)
  // Items this hold gave back for their short leases (TakeOutShortLeasesLocked): a
  // look passes over them, or a release gap of 0 would have them claimed and given
  // back again and again until the hold ends.
  std::vector<ItemId> short_leases_;
  // Set while parked: the call lives until it is answered, even if the caller dropped
  // its handle (the WaitList and the topic buffers hold only weak references).
  std::shared_ptr<DequeueOp> keep_alive_;
};

}  // namespace shardq::engine
