#pragma once
// ShardStore in memory: the same semantics as MySqlShardStore (the contract tests run
// against both) without any I/O. Used by tests of the layers above the store, which
// can also inject failures to exercise retries and circuit breakers.
//
// Unlike other stores it is thread-safe (one mutex), so that a test can inject
// failures or read counters while a shard worker's strand uses it.

#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "store/store_api.h"

namespace shardq::store {

class MemoryShardStore final : public ShardStore {
 public:
  // One value per ShardStore method, for fault injection.
  enum class Op {
    kOpen,
    kPing,
    kWrite,  // counted only: every Write (its parts count as kInsert, kAck, ...)
    kInsert,
    kFetchReady,
    kClaim,
    kAck,
    kNack,
    kExtend,
    kPromoteDue,
    kPurgeExpired,
    kNextDue,
    kCountByTopic,
    kSetPolicies,  // counted only: it cannot fail
    kGetTask,
    kCancel,
    kListDead,
    kRedrive,
    kPurgeDead,
    kLeasedRowsOf,
    kCount_,  // number of ops
  };

  // The next call of `op` returns `s` (must not be OK) and changes nothing. For
  // kInsert, kAck, kNack and kExtend: the next Write with that part, all of which
  // fails (one transaction).
  void FailNext(Op op, Status s);
  // Every call returns `s` and changes nothing, until ClearFailures().
  void FailAll(Status s);
  // The next successful call of `op` (Claim, PromoteDue, Cancel, Redrive, PurgeDead,
  // or a Write with an Insert, Ack, Nack or Extend part) makes its change and then
  // returns UNAVAILABLE, as MySQL's does when the connection dies after the COMMIT
  // and before its answer: the caller cannot know the outcome (store_api.h), and the
  // change is there.
  void LoseNextReply(Op op);
  void ClearFailures();

  void SetPolicies(NamespacePolicies policies) override;
  Status Open() override;
  Status Ping() override;
  Result<Written> Write(const Writes& writes, Time now) override;
  Result<std::vector<ReadyKey>> FetchReady(const std::string& ns,
                                           const std::string& topic,
                                           size_t limit) override;
  Result<std::vector<LeasedItem>> Claim(std::span<const ClaimRequest> rows,
                                        LeaseToken token, Time now) override;
  Result<Promotion> PromoteDue(Time now, size_t limit, const PromoteHandoff& handoff = {},
                               const Lookahead& look = {}) override;
  Result<std::vector<ItemTransition>> PurgeExpired(Time now, size_t limit) override;
  Result<std::optional<Time>> NextDue() override;
  Result<std::vector<std::pair<LeaseToken, RowId>>> LeasedRowsOf(
      std::span<const LeaseToken> tokens) override;
  Result<std::vector<TopicCounts>> CountByTopic() override;
  Result<TaskRecord> GetTask(RowId row, bool include_payload) override;
  Result<ItemOutcome> Cancel(RowId row, Time now) override;
  Result<std::vector<TaskRecord>> ListDead(const std::string& ns,
                                           const std::string& topic,
                                           size_t limit) override;
  Result<BulkOutcome> Redrive(const std::string& ns, const std::string& topic,
                              std::span<const RowId> rows, size_t limit,
                              Time now) override;
  Result<BulkOutcome> PurgeDead(const std::string& ns, const std::string& topic,
                                std::span<const RowId> rows, size_t limit) override;

  // Number of stored rows.
  size_t size() const;
  // How many times `op` was called (failed calls included).
  size_t calls(Op op) const;
  // Runs `hook` at the start of every call of `op` (Insert, Claim, Redrive or PurgeDead),
  // before the store's lock is taken: a test can block there to hold a call in flight.
  void SetBeforeCall(Op op, std::function<void()> hook);

 private:
  // One row of the items table.
  struct Row {
    std::string ns;
    std::string topic;
    int32_t priority = 0;
    ItemState state = ItemState::kReady;
    Time deliver_after{};
    Duration lease{};
    uint64_t lease_token = 0;
    uint32_t attempts = 0;
    Time enqueued_at{};
    std::optional<Time> expires_at;
    std::string payload;
    std::string metadata;
    std::string task_type;
    uint32_t max_attempts = 5;
    std::string dedup_key;  // empty = none
    std::string worker_id;
    Time first_delivered_at{};
    Time last_delivered_at{};
    Time finished_at{};
    std::string last_error;
    std::string result;
    bool cancel_requested = false;
    std::vector<TaskEvent> events;  // oldest first
  };

  // The injected failure for `op`, or OK.
  Status TakeFailure(Op op);
  // `result`, or UNAVAILABLE if LoseNextReply(op) is pending (and then no more).
  template <typename T>
  Result<T> Reply(Op op, Result<T> result);
  // Write's parts, under mu_, after the failures and the validation.
  std::vector<Inserted> ApplyInserts(std::span<const NewItem> items, Time now,
                                     std::span<const InsertLease> leases);
  std::vector<ItemOutcome> ApplyAcks(std::span<const AckRequest> acks, Time now);
  std::vector<ItemOutcome> ApplyNacks(std::span<const NackRequest> nacks, Time now);
  std::vector<ItemOutcome> ApplyExtends(std::span<const ExtendRequest> reqs, Time now);
  // The other calls whose reply LoseNextReply can take away: their work, under mu_.
  Result<std::vector<LeasedItem>> DoClaim(std::span<const ClaimRequest> rows,
                                          LeaseToken token, Time now);
  Result<Promotion> DoPromoteDue(Time now, size_t limit, const PromoteHandoff& handoff,
                                 const Lookahead& look);
  Result<ItemOutcome> DoCancel(RowId row, Time now);
  Result<BulkOutcome> DoRedrive(const std::string& ns, const std::string& topic,
                                std::span<const RowId> rows, size_t limit, Time now);
  Result<BulkOutcome> DoPurgeDead(const std::string& ns, const std::string& topic,
                                  std::span<const RowId> rows, size_t limit);
  // The transition of a row that was in `from` and is now as `r` says.
  static ItemTransition Changed(uint64_t id, const Row& r, ItemState from);
  // The transition of a row about to be deleted.
  static ItemTransition Deleted(uint64_t id, const Row& r);
  // Moves `r` to the final state `to` at `now` (finished_at, purge time, no TTL).
  void Finish(Row& r, ItemState to, Time now) const;
  static void AddEvent(Row& r, Time at, std::string kind, std::string detail = "");
  // Whether a claim (or a handoff) may lease `r` at `now`: READY, or DELAYED and due
  // by `due_by`, and not past its TTL.
  static bool Leasable(const Row& r, Time now, Time due_by);
  static bool Leasable(const Row& r, Time now) { return Leasable(r, now, now); }
  // Leases the row `r` at `now`, or from its due time if that is later (Claim, and
  // Insert with an InsertLease).
  static void Lease(Row& r, const std::string& worker_id, LeaseToken token, Time now);
  // Leases `r` (row `id`) as a claim does and returns what the consumer gets.
  static LeasedItem LeaseOut(RowId id, Row& r, const std::string& worker_id,
                             LeaseToken token, Time now);
  // PromoteDue's handoff: leases the DELAYED items of `out.moved` it picks.
  void HandOff(const PromoteHandoff& handoff, Time now, Promotion& out);
  // The earliest deliver_after among DELAYED and LEASED rows (NextDue). Requires mu_.
  std::optional<Time> NextDueLocked() const;
  // Deletes the row (and its history, and frees its dedup key).
  void Erase(std::map<uint64_t, Row>::iterator it);
  static TaskRecord Record(uint64_t id, const Row& r, bool with_payload_and_history);
  // The first `limit` DEAD rows of ns/topic in ordering-rule order.
  std::vector<uint64_t> DeadInOrder(const std::string& ns, const std::string& topic,
                                    size_t limit) const;
  // Redrive/PurgeDead of the given rows: kNotFound / kFailedPrecondition for a row
  // that is not a DEAD row of ns/topic, else `apply` (which fills the transition).
  template <typename F>
  void ForGivenDead(const std::string& ns, const std::string& topic,
                    std::span<const RowId> rows, BulkOutcome& out, F&& apply);

  mutable std::mutex mu_;
  std::array<size_t, static_cast<size_t>(Op::kCount_)> calls_{};
  std::array<std::function<void()>, static_cast<size_t>(Op::kCount_)> before_call_;
  // Runs before_call_[op], outside mu_.
  void BeforeCall(Op op);
  NamespacePolicies policies_;
  std::map<uint64_t, Row> rows_;
  std::map<std::pair<std::string, std::string>, uint64_t> dedup_;  // (ns, key) -> id
  uint64_t next_id_ = 1;
  std::map<Op, Status> fail_next_;
  std::optional<Status> fail_all_;
  std::set<Op> lose_reply_;
};

}  // namespace shardq::store
