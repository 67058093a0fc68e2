#pragma once
// ReleaseSchedule: the DELAYED items of one shard that fall due soon, so the shard
// worker can make each one dequeueable at its due time without a round trip to MySQL.
//
// Why: a promotion (DELAYED -> READY in MySQL) waits its turn behind the shard's other
// transactions, so an item became visible a whole turn after its due time. Instead
// each promotion also reads the DELAYED rows due within the next `lookahead`
// (Lookahead, Promotion::upcoming); at its due time the ticker releases the item into
// the ready index (a claim leases a DELAYED row once it is due), and the promotion
// that follows only makes MySQL say READY for what no claim took meanwhile.
// On when WorkerOptions::lookahead is set (config delay_lookahead_ms, 100 ms by default).
//
// The in-memory view of a released row is READY while MySQL still says DELAYED, so
// the worker asks Forget() on every transition out of DELAYED: a released row then
// counts as leaving READY. Thread-safe (the ticker releases, the strand learns and
// forgets); never calls out while holding its lock.
#include <algorithm>
#include <map>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "common/clock.h"
#include "common/ids.h"
#include "common/item.h"
#include "shard_worker/latency_estimate.h"
#include "store/store_api.h"

namespace shardq::shard_worker {

class ReleaseSchedule {
 public:
  // `lookahead` 0 turns it off: Window() asks for nothing. Releases come at most one
  // per `gap`, each a lead (SetLead) ahead of its items' due time: see TakeDue().
  ReleaseSchedule(Duration lookahead, size_t limit, Duration gap = Duration(0),
                  Duration max_lead = Duration(0))
      : lookahead_(lookahead),
        limit_(limit),
        gap_(gap),
        max_lead_(std::clamp(max_lead, Duration(0), lookahead / 2)) {}

  // How long before their due time items are released from `now` on: `lead`, within
  // [0, max_lead] (at most half the lookahead, so a release never passes the part
  // read). It holds for LatencyEstimate::kQuiet, then falls back to 0 until set again:
  // a lead measured under a load that has gone would only hold answers.
  void SetLead(Duration lead, Time now);
  Duration lead(Time now) const;

  // What a promotion at `now` should read ahead: the part of (now, now + lookahead]
  // not read yet; and which due DELAYED items it should leave to claims: those
  // released less than a lookahead ago (a promotion marking them READY would only
  // add a write for items a claim is about to lease).
  store::Lookahead Window(Time now) const;
  // How long a released item is left to claims before a promotion marks it READY.
  Duration grace() const { return lookahead_; }
  // A promotion read `asked` and found `upcoming` (earliest first, at most asked.limit).
  void Learned(const store::Lookahead& asked, std::span<const ItemTransition> upcoming);
  // A row became DELAYED (insert, nack): scheduled if its due time is in the part
  // already read (a later read would not see it again). True if it was scheduled.
  bool MaybeAdd(const ItemTransition& t);
  // When to promote for the DELAYED item due next at `next_delayed`: early enough
  // that the lookahead reads it before it is due; once it is scheduled, when half the
  // read-ahead window is used (to read on before the window runs out).
  Time PromoteAt(Time next_delayed) const;
  // When the promotion that asked for `look` at `now` and answered `done` should be
  // followed by the next: at once if more are due, at a lease's end, PromoteAt() for
  // a DELAYED item, and a grace() after the oldest released item it left to claims
  // (Settle), whichever comes first. nullopt: nothing to wait for.
  std::optional<Time> NextPromotion(const store::Lookahead& look,
                                    const store::Promotion& done, Time now);

  // Removes the scheduled items due by `now` + lead and marks them released; returns
  // them. Nothing if the last release was less than a gap ago: under load the items
  // falling due then go out together, so a parked dequeue takes many in one claim
  // instead of one claim (and one transaction) per millisecond's few; when items are
  // sparse the first one goes out a lead before its due time.
  //
  // Why the lead: a released item still has to be claimed (a transaction behind the
  // shard's current one) and answered. Released early, its claim commits a lease
  // that starts at its due time (store::ClaimRequest::due_by), and the dequeue holds
  // the answer until then (engine::DequeueOp), so the claim is off the item's
  // lateness. The shard worker sets the lead to its claims' recent latency: a longer
  // one would only hold answers, and with them the consumers' capacity.
  std::vector<ItemTransition> TakeDue(Time now);
  // When TakeDue() next has something to release (asked at `now`).
  std::optional<Time> NextRelease(Time now) const;
  // After a promotion that left DELAYED items due after `cutoff` to claims and moved
  // everything due by it: a released item due by `cutoff` is not DELAYED any more
  // (its claim's outcome was lost, say), so it is dropped. Returns the earliest due
  // time among the released items left: the next promotion is due a grace() later.
  std::optional<Time> Settle(Time cutoff);
  // The released items of a topic: a refill reads READY rows only, so the worker
  // offers these again after one.
  std::vector<ReadyKey> ReleasedOf(const std::string& ns, const std::string& topic) const;
  // The row left DELAYED (promoted, leased, cancelled, purged) or was re-enqueued:
  // drops it. Returns true if it had been released (the worker counts it as READY).
  bool Forget(RowId row);
  // The shard was (re)opened: MySQL is the truth again.
  void Clear();

  size_t scheduled() const;
  size_t released() const;

 private:
  // Settle() after a promotion that left released items to claims: when to promote
  // them.
  std::optional<Time> Settled(const store::Lookahead& look);
  // Requires mu_. When the gap after the last release ends; nullopt if there was no
  // release, or only one after `now` (the clock stepped back).
  std::optional<Time> GapEndLocked(Time now) const;
  // Requires mu_. The lead at `now` (SetLead).
  Duration LeadLocked(Time now) const;

  const Duration lookahead_;
  const size_t limit_;
  const Duration gap_;
  const Duration max_lead_;
  mutable std::mutex mu_;
  Duration lead_{0};
  Time lead_set_{};  // when lead_ was set
  std::map<std::pair<Time, RowId>, ItemTransition> by_time_;
  std::unordered_map<RowId, Time> at_;
  std::unordered_map<RowId, ItemTransition> released_;
  std::optional<Time> last_release_;  // TakeDue() returned items then
  // Every DELAYED row due in (known_from_, known_until_] is scheduled or released.
  std::optional<Time> known_from_;
  Time known_until_{};
  // The last read was full of rows due at this one millisecond and got no further.
  std::optional<Time> stuck_at_;
};

}  // namespace shardq::shard_worker
