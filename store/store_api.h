#pragma once
// ShardStore: the narrow interface to one shard's database. One implementation talks
// to MySQL (mysql_store.h), one keeps everything in memory (memory_store.h); the same
// typed contract tests (store/tests/store_contract_test.cc) run against both.
//
// Threading: a ShardStore is NOT thread-safe. Exactly one shard worker strand uses a
// given store at a time (see shard_worker/README.md).
//
// Every mutating call is one transaction: when it returns OK, its effect is committed
// (durable); when it returns an error, nothing of it is committed, or -- only for
// kUnavailable after a lost connection -- the outcome is unknown.

#include <cstddef>
#include <functional>
#include <iterator>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/clock.h"
#include "common/ids.h"
#include "common/item.h"
#include "common/namespace_policy.h"
#include "common/ordering.h"
#include "common/status.h"

namespace shardq::store {

struct AckRequest {
  RowId row;
  LeaseToken token;
  std::string result;  // kept for GetTask; may be empty
};

struct NackRequest {
  RowId row;
  LeaseToken token;
  Duration delay{};                     // redeliver after now + delay (0 = at once)
  std::optional<std::string> metadata;  // replaces the metadata when set
  std::string error;                    // becomes last_error; may be empty
  bool fatal = false;                   // FAILED for good instead of a retry
  // Not the consumer's nack: the server gives the lease back because the answer that
  // carried it was never sent (the client went away). The event is "undelivered"
  // instead of "retry"; the attempt still counts, as for an expired lease.
  bool undelivered = false;
  // Set when the server knows no consumer got the lease: the answer that carried it
  // was never sent (engine::DequeueOp: the call ended first, a better item took its
  // place in a held answer, or the hold would have spent its lease), or the claim,
  // promotion or insert that leased it lost its own answer (ShardWorker::OweGiveBack).
  // The attempt does
  // not count (attempts - 1, so this nack never dead-letters the item), and the item is
  // redelivered from this time on (absolute; `delay` is ignored): the item's own due
  // time, so a time already past makes it READY in its old place in the order. Event
  // "undelivered" as above, with `error` as its detail; the task's last_error is left as
  // it was (no handler failed).
  std::optional<Time> unstarted_until;
};

// One row to lease, and who leases it.
struct ClaimRequest {
  RowId row;
  std::string worker_id;  // may be empty
  // This row's new lease token; 0 = the call's `token`. Callers batching several
  // consumers' claims give each row its own, so no consumer can present a token
  // that also fits another consumer's item.
  LeaseToken token{};
  // A DELAYED row is leased if it is due by this time, even if that is after the
  // claim's `now` (the release lead: shard_worker/release_schedule.h); its lease then
  // starts at its due time. {} = the claim's `now`.
  Time due_by{};
};

// A new item to store LEASED instead of READY, in its insert's transaction: the
// direct handoff of an item to a consumer that is waiting for one, which saves the
// claim's transaction (shard_worker/ decides when that keeps the ordering rule).
// PromoteDue takes the same for items falling due (PromoteHandoff).
struct InsertLease {
  size_t item = 0;        // index into Insert's `items` (PromoteHandoff: into `due`)
  std::string worker_id;  // may be empty
  LeaseToken token;
};

// Asked by PromoteDue, inside its transaction, with the DELAYED items it is moving to
// READY that may be handed off (DelayedMoves; as transitions to kReady, earliest due
// first): returns those to lease at once instead, as a claim of them would, in the
// same transaction (the direct handoff of items that fall due). Must not call the
// store.
using PromoteHandoff =
    std::function<std::vector<InsertLease>(std::span<const ItemTransition> due)>;

// What a PromoteHandoff is asked about: the moves from DELAYED among a promotion's
// `moved`, and where each one is in `moved`. Both stores use it, so both ask about the
// same items in the same order.
//
// A lease that expired in the same promotion becomes READY too, but goes to the ready
// index, not to the handoff. So a DELAYED item that ranks after such an item of its
// topic (ordering rule) is not offered either: a parked dequeue would get it while a
// better item is ready.
struct DelayedMoves {
  std::vector<ItemTransition> due;
  std::vector<size_t> moved_at;  // due[k] is moved[moved_at[k]]

  explicit DelayedMoves(const std::vector<ItemTransition>& moved) {
    auto key = [](const ItemTransition& t) {
      return OrderKey{t.priority, t.deliver_after, ItemId{ShardId(0), t.row}};
    };
    std::map<std::pair<std::string, std::string>, OrderKey> best_ready;
    for (const ItemTransition& t : moved) {
      if (t.from != ItemState::kLeased || t.to != ItemState::kReady) continue;
      auto [it, added] = best_ready.try_emplace({t.ns, t.topic}, key(t));
      if (!added && key(t) < it->second) it->second = key(t);
    }
    for (size_t i = 0; i < moved.size(); ++i) {
      if (moved[i].from != ItemState::kDelayed) continue;
      auto ready = best_ready.find({moved[i].ns, moved[i].topic});
      if (ready != best_ready.end() && ready->second < key(moved[i])) continue;
      due.push_back(moved[i]);
      moved_at.push_back(i);
    }
  }
};

// What PromoteDue moved, and when it next has work.
struct Promotion {
  // Earliest first. An item leased by the handoff is a move from kDelayed to kLeased
  // with deliver_after = its lease deadline.
  std::vector<ItemTransition> moved;
  std::vector<LeasedItem> leased;  // what the handoff leased, in `moved`'s order
  // The earliest deliver_after among the DELAYED and LEASED items left (<= now if
  // more were due than the call's limit), or nullopt if there are none.
  std::optional<Time> next_due;
  // The earliest lease deadline after `now` among the LEASED items (so the caller
  // can tell whether next_due is a lease's end or a DELAYED item's due time).
  std::optional<Time> next_expiry;
  // The DELAYED items falling due in the call's Lookahead window, earliest first,
  // unchanged (from = to = kDelayed): the shard worker releases each into the ready
  // index at its time, where a claim can lease it before any promotion runs.
  std::vector<ItemTransition> upcoming;
};

// Which DELAYED items PromoteDue also reports as `upcoming`: those with
// after < deliver_after <= until (and > now). Empty (until <= after) by default.
struct Lookahead {
  Time after{};
  Time until{};
  size_t limit = 0;
  // If set, a DELAYED item is moved only if due by this time (it may be before now):
  // the worker released the ones due since then to claims, which lease them DELAYED.
  std::optional<Time> delayed_due_by;
};

// One row's result of Insert, in input order.
struct Inserted {
  RowId row;
  bool deduplicated = false;  // dedup_key matched an existing row: `row` is that one
  bool leased = false;        // stored LEASED, as an InsertLease asked
};

// What happened to a task, for its history (task_events).
struct TaskEvent {
  Time at{};
  std::string kind;  // "leased", "succeeded", "retry", "undelivered", "failed",
                     // "lease_expired", "dead_lettered", "cancelled",
                     // "cancel_requested", "redriven"
  uint32_t attempt = 0;
  std::string worker_id;
  std::string detail;
};

// Everything stored about one item (GetTask, dead-letter listings).
struct TaskRecord {
  RowId row;
  std::string ns;
  std::string topic;
  std::string task_type;
  int32_t priority = 0;
  ItemState state = ItemState::kReady;
  uint32_t attempts = 0;
  uint32_t max_attempts = 0;
  Time enqueued_at{};
  Time first_delivered_at{};  // epoch = never
  Time last_delivered_at{};
  Time finished_at{};
  Time deliver_after{};  // see schema/0001_items.sql and 0002
  LeaseToken token;
  std::string worker_id;
  std::string last_error;
  std::string result;
  std::string metadata;
  std::string payload;  // only when asked for
  bool cancel_requested = false;
  std::vector<TaskEvent> history;  // oldest first, at most the last 100; only when asked
};

struct ExtendRequest {
  RowId row;
  LeaseToken token;
  Duration extension{};  // the new deadline is now + extension
};

// Per-item outcome of Ack/Nack/Extend (and Cancel, Redrive, PurgeDead):
//  - OK: done. A repeated ack of a SUCCEEDED row with its token is OK (no transition).
//  - kFailedPrecondition: the token is not the item's current one, or the item is not
//    in a state the call applies to (nack/extend: not leased; ack: another final
//    state, or DELAYED).
//  - kNotFound: no such row (for an ack: it was purged).
// Per-item refusals are in `status`; the call's Result fails only as a whole.
struct ItemOutcome {
  Status status;
  std::optional<ItemTransition> transition;  // set when the item changed state
  Time new_deadline{};                       // extend: the new lease deadline
  bool cancel_requested = false;             // extend: CancelTask was called
};

struct TopicCounts {
  std::string ns;
  std::string topic;
  uint64_t delayed = 0;
  uint64_t ready = 0;
  uint64_t leased = 0;
  uint64_t succeeded = 0;
  uint64_t failed = 0;
  uint64_t dead = 0;
  uint64_t cancelled = 0;

  // Counts `n` more items in state `s` (kGone: none).
  void Add(ItemState s, uint64_t n) {
    uint64_t* slots[] = {&delayed, &ready, &leased,   &succeeded,
                         &failed,  &dead,  &cancelled};
    auto i = static_cast<size_t>(s);
    if (i < std::size(slots)) *slots[i] += n;
  }
};

// What ShardStore::Write does in one transaction (any part may be empty).
struct Writes {
  std::span<const AckRequest> acks;
  std::span<const NackRequest> nacks;
  std::span<const ExtendRequest> extends;
  std::span<const NewItem> items;
  std::span<const InsertLease> leases;  // indexes into `items`

  bool empty() const {
    return acks.empty() && nacks.empty() && extends.empty() && items.empty();
  }
};

// Write's results: one per request of each part, in request order.
struct Written {
  std::vector<ItemOutcome> acked;
  std::vector<ItemOutcome> nacked;
  std::vector<ItemOutcome> extended;
  std::vector<Inserted> inserted;
};

// Every transition below appends a TaskEvent to the item's history in the same
// transaction (task_events). Final states set finished_at = now and deliver_after =
// now + the namespace's retention (the purge time), from `policies`.
// Also: Insert and the promotion DELAYED -> READY record no event (enqueued_at and
// deliver_after are the record). A row that reaches a final state drops its TTL
// (expires_at): retention decides when it goes, and a redriven row has no TTL.
// Texts that only describe an outcome (Nack.error, Ack.result, worker ids) are
// truncated to their limits (kMaxErrorBytes, ...), never refused.
class ShardStore {
 public:
  virtual ~ShardStore() = default;

  // The namespace settings used for retention (set once, before Open()).
  virtual void SetPolicies(NamespacePolicies policies) = 0;

  // Connects if needed and applies the schema migrations (idempotent). Called at
  // start-up and again after a failure; cheap when already open.
  virtual Status Open() = 0;
  // A cheap round trip, used by the circuit breaker's probe.
  virtual Status Ping() = 0;

  // The writes of one shard-worker turn, in ONE transaction: the acks, then the
  // nacks, then the extensions, then the inserts, each as the call of that name below
  // describes, but committed together, so a turn that has enqueues and acks waiting
  // pays one commit (one log write) for both. Any part may be empty. The whole call
  // fails, and nothing of it is committed, if any part fails as a whole (a bad item
  // or metadata: kInvalidArgument before anything runs; the database: kUnavailable or
  // kInternal); per-item refusals are in the outcomes, as for the single calls.
  virtual Result<Written> Write(const Writes& writes, Time now) = 0;

  // Write with one part: conveniences for callers that have one kind of work.
  //
  // Insert: returns the items' row ids in input order.
  // An item whose deliver_after <= now is stored READY, otherwise DELAYED.
  // Dedup: an item whose non-empty dedup_key is already used by a row of the same
  // namespace in this shard (or by an earlier item of the same call) is not inserted;
  // its result is that row's id with deduplicated = true.
  // An item named by one of `leases` is stored LEASED, as Claim would lease it at
  // `now` (its token and lessee, attempts 1, deliver_after = now + its lease) -- unless
  // it is deduplicated, not due at `now` or expired by its TTL; then the entry is
  // ignored. The first entry for an item counts.
  Result<std::vector<Inserted>> Insert(std::span<const NewItem> items, Time now,
                                       std::span<const InsertLease> leases = {}) {
    return Part(Writes{.items = items, .leases = leases}, now, &Written::inserted);
  }
  // One outcome per request, in request order.
  // Ack: LEASED (or READY after an expired lease, token still matching) -> SUCCEEDED
  // with the result; event "succeeded". Acking a SUCCEEDED row with its token again
  // is OK (idempotent). A row that is gone: kNotFound.
  Result<std::vector<ItemOutcome>> Ack(std::span<const AckRequest> acks, Time now) {
    return Part(Writes{.acks = acks}, now, &Written::acked);
  }
  // Nack of a LEASED row (token must match):
  //  - cancel_requested -> CANCELLED (event "cancelled");
  //  - fatal -> FAILED (event "failed");
  //  - attempts >= max_attempts -> DEAD (event "dead_lettered");
  //  - otherwise READY (delay 0) or DELAYED until now + delay (event "retry", or
  //    "undelivered" for a lease the server gives back).
  // The error text becomes last_error, except for a lease nobody had
  // (unstarted_until), whose reason goes only in its event.
  Result<std::vector<ItemOutcome>> Nack(std::span<const NackRequest> nacks, Time now) {
    return Part(Writes{.nacks = nacks}, now, &Written::nacked);
  }
  // Refused (kFailedPrecondition) if the lease has already expired at `now`. The
  // outcome carries cancel_requested.
  Result<std::vector<ItemOutcome>> Extend(std::span<const ExtendRequest> reqs, Time now) {
    return Part(Writes{.extends = reqs}, now, &Written::extended);
  }

  // The best `limit` READY items of a topic, in ordering-rule order.
  virtual Result<std::vector<ReadyKey>> FetchReady(const std::string& ns,
                                                   const std::string& topic,
                                                   size_t limit) = 0;

  // Leases the given rows if they are still READY, or DELAYED and due by their
  // `due_by` (compare-and-swap), and not past their TTL when the lease starts. The
  // lease starts at the later of `now` and the row's due time (so a row leased ahead
  // of its due time by the release lead is leased from then, and its caller answers
  // then): state LEASED, lease_token = token, attempts + 1, worker_id, deliver_after =
  // start + the item's lease duration, first (if unset) and last delivered = start;
  // event "leased". Returns the rows that were leased (others are skipped), in any
  // order, with payload and metadata. (Each row carries its own worker_id: one batch
  // serves many callers.)
  virtual Result<std::vector<LeasedItem>> Claim(std::span<const ClaimRequest> rows,
                                                LeaseToken token, Time now) = 0;

  // Moves up to `limit` items that are due at `now`, earliest first:
  //  - DELAYED with deliver_after <= now -> READY;
  //  - LEASED whose lease expired (deliver_after <= now), event "lease_expired" and
  //    last_error "lease expired": -> CANCELLED if cancel_requested, else DEAD if
  //    attempts >= max_attempts, else READY. The lease token is kept until the next
  //    claim, so a late ack of work that was in fact done still succeeds.
  // Also says when the next call has work (what NextDue would say after this call, or
  // a time <= now when more than `limit` items were due), so the shard worker learns
  // it in the same transaction. `handoff`, if set, picks DELAYED items to lease
  // instead (see PromoteHandoff); the first lease of an item counts, and one whose
  // TTL has passed is not leased. `look` asks for the items falling due soon
  // (Promotion::upcoming), read in the same round trip; nothing changes for them. With
  // look.delayed_due_by, DELAYED items due after it (by now) are neither moved nor
  // counted in next_due.
  virtual Result<Promotion> PromoteDue(Time now, size_t limit,
                                       const PromoteHandoff& handoff = {},
                                       const Lookahead& look = {}) = 0;

  // Deletes (with their history) up to `limit` items whose TTL (expires_at) is
  // <= now in a non-final state, or that are final with deliver_after (the purge
  // time) <= now.
  virtual Result<std::vector<ItemTransition>> PurgeExpired(Time now, size_t limit) = 0;

  // The earliest deliver_after among DELAYED and LEASED items, or nullopt if none:
  // when PromoteDue next has work. (PromoteDue reports it too; this is the query on its
  // own.)
  virtual Result<std::optional<Time>> NextDue() = 0;

  // The LEASED rows whose current lease token is one of `tokens` (any order; a token
  // that fits no LEASED row is left out): how the shard worker finds the rows of the
  // handoff leases of an insert whose answer was lost (their ids never came back).
  // Reads the LEASED rows (the `due` index's state prefix), as many as leases in
  // flight: a rare path, taken only after such a lost answer.
  virtual Result<std::vector<std::pair<LeaseToken, RowId>>> LeasedRowsOf(
      std::span<const LeaseToken> tokens) = 0;

  // Item counts per (namespace, topic, state); used once at start-up to seed the
  // in-memory counters, and by tests.
  virtual Result<std::vector<TopicCounts>> CountByTopic() = 0;

  // --- Operators' calls -------------------------------------------------------
  // One row with its history (and payload if asked); kNotFound if there is none.
  virtual Result<TaskRecord> GetTask(RowId row, bool include_payload) = 0;
  // DELAYED/READY -> CANCELLED (transition set); LEASED -> cancel_requested = 1
  // (event "cancel_requested", no transition); CANCELLED: OK, nothing changes;
  // another final state: kFailedPrecondition; no row: kNotFound.
  virtual Result<ItemOutcome> Cancel(RowId row, Time now) = 0;
  // DEAD rows of a topic in ordering-rule order (no payload, no history).
  virtual Result<std::vector<TaskRecord>> ListDead(const std::string& ns,
                                                   const std::string& topic,
                                                   size_t limit) = 0;
  // DEAD -> READY with attempts = 0, deliver_after = now, event "redriven": the given
  // rows (each must be a DEAD row of that ns/topic, else kFailedPrecondition /
  // kNotFound for it), or when `rows` is empty all of the topic's (up to `limit`).
  // One outcome per given row (empty when `rows` was empty); transitions for all.
  // A given row that does not exist or is in another ns/topic: kNotFound; one that is
  // there but not DEAD (e.g. redriven by an earlier entry of `rows`):
  // kFailedPrecondition. `limit` applies only when `rows` is empty.
  struct BulkOutcome {
    std::vector<ItemOutcome> per_row;
    std::vector<ItemTransition> transitions;
  };
  virtual Result<BulkOutcome> Redrive(const std::string& ns, const std::string& topic,
                                      std::span<const RowId> rows, size_t limit,
                                      Time now) = 0;
  // Deletes DEAD rows (with their history), with the same selection rules as Redrive
  // (a row repeated in `rows` is kNotFound the second time: it is gone).
  virtual Result<BulkOutcome> PurgeDead(const std::string& ns, const std::string& topic,
                                        std::span<const RowId> rows, size_t limit) = 0;

 private:
  template <typename T>
  Result<T> Part(const Writes& writes, Time now, T Written::*part) {
    Result<Written> written = Write(writes, now);
    if (!written.ok()) return written.status();
    return std::move(*written.*part);
  }
};

}  // namespace shardq::store
