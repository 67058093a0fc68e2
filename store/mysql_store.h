#pragma once
// ShardStore on one MySQL/MariaDB database (one shard). Every public call runs on one
// connection as one explicit transaction (autocommit off, READ COMMITTED) and turns
// every driver exception into a Status (see README.md for the mapping). The connection
// is opened lazily and dropped after a connection-level error, so a store recovers by
// itself once the server is back: each call re-opens it first if needed.
//
// Not thread-safe, like every ShardStore.

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "store/db_client.h"
#include "store/store_api.h"

namespace shardq::store {

class DbConnection;
class DbError;
class DbStatement;

namespace detail {
struct PendingEvent;  // defined in mysql_store.cc
struct LockedRow;
struct DeadRow;
}  // namespace detail

// Where a shard's MySQL is. Client-side timeouts (seconds): the read timeout bounds
// how long a call can hang on a server that stopped answering; it must exceed
// innodb_lock_wait_timeout (the store sets that to 10 s for its session).
using MysqlEndpoint = DbEndpoint;

// The MariaDB named lock whose holder owns shard database `database` (see
// MySqlShardStore::TakeOwnership). MariaDB frees it when the holder's session ends.
inline std::string OwnershipLockName(const std::string& database) {
  return "shardq:" + database;
}

class MySqlShardStore final : public ShardStore {
 public:
  // `database` is created if missing; it must be a plain identifier ([A-Za-z0-9_]).
  MySqlShardStore(MysqlEndpoint ep, std::string database);
  ~MySqlShardStore() override;
  MySqlShardStore(const MySqlShardStore&) = delete;
  MySqlShardStore& operator=(const MySqlShardStore&) = delete;

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

  // True while a connection is held (for tests of the reconnect path).
  bool connected() const { return conn_ != nullptr; }
  const std::string& database() const { return database_; }

 private:
  // Runs `body` (which returns Status or Result<T>) after EnsureOpen, converting
  // driver exceptions with ErrorToStatus. Defined in mysql_store.cc.
  template <typename R, typename F>
  R Run(const char* op, F&& body);

  Status EnsureOpen();
  void Connect();  // throws DbError
  // Nothing once this connection owns the shard database, else why not (throws
  // DbError).
  std::optional<Status> TakeOwnership();
  // Nothing if the MariaDB server's settings suit shardq, else why not (throws
  // DbError).
  std::optional<Status> CheckServerSettings();
  void ApplyMigrations();  // throws DbError
  void Disconnect();
  Status ErrorToStatus(const char* op, const DbError& e);
  // The cached prepared statement for `sql` (prepared on first use).
  DbStatement& Stmt(const std::string& sql);
  // Frees the values bound to the statements used since the last call, and their
  // rows (Run does it after each call).
  void ReleaseStatements();
  void Commit();
  void Rollback();

  // Appends `events` to task_events with multi-row INSERTs (kMaxRowsPerInsert each).
  void AppendEvents(const std::vector<detail::PendingEvent>& events);
  // A lease's "leased" event is not written when it is granted (that would be an
  // event row per delivery): the item row holds it (attempts, last_delivered_at,
  // worker_id) and GetTask shows it from there, as it shows "succeeded" from
  // finished_at. When a lease ends other than by an ack, or an event is recorded
  // during it, this returns `events` preceded by the "leased" events of `rows` (id
  // and row as locked, before the change) that are not written yet.
  std::vector<detail::PendingEvent> LeaseEventsToWrite(
      const std::vector<std::pair<uint64_t, detail::LockedRow>>& rows,
      std::vector<detail::PendingEvent> events);
  // The workers.id of each name in `names` (0 for ""), registering new names in a
  // transaction of their own (committed on return); with commit = false, in the
  // caller's transaction instead, and cached once that transaction commits.
  std::map<std::string, uint32_t> WorkerRefs(const std::map<uint64_t, std::string>& names,
                                             bool commit = true);
  // Adds committed name -> workers.id pairs to worker_refs_ (bounded).
  void CacheWorkerRefs(const std::unordered_map<std::string, uint32_t>& refs);
  // PromoteDue's handoff, in its transaction, before its UPDATE to READY: leases the
  // DELAYED items of `out.moved` that `handoff` picks, updates `out`, and takes the
  // leased rows out of `to_ready`.
  Status HandOff(const PromoteHandoff& handoff, Time now, Promotion& out,
                 std::vector<uint64_t>& to_ready);
  // A claim's work inside the caller's transaction: locks the rows of `worker` (row
  // -> lessee name) that are in `from_state` (READY for a claim, which also takes a
  // DELAYED row due by its due_by[row]; DELAYED for a promotion's handoff, `due_by`
  // null) and not TTL-expired, leases each to its lessee with token_of[row] from the
  // later of `now` and its due time, and returns them. New lessee names are
  // registered by WorkerRefs: committed apart first (`names_apart`), or in the
  // caller's transaction.
  Result<std::vector<LeasedItem>> LeaseRows(const std::map<uint64_t, std::string>& worker,
                                            const std::map<uint64_t, uint64_t>& token_of,
                                            const std::map<uint64_t, Time>* due_by,
                                            int from_state, bool names_apart, Time now);
  // The parts of Write, each inside its transaction (throw DbError; `ids`: the
  // requests' rows, each once). InsertRows' `lease_of` names the items stored LEASED
  // and `worker_ref` their lessees' workers.id; `look_up_keys` reads which dedup keys
  // are taken before inserting. On its error, Write rolls the transaction back.
  Result<std::vector<Inserted>> InsertRows(
      std::span<const NewItem> items, int64_t now_ms,
      const std::map<size_t, const InsertLease*>& lease_of,
      const std::map<size_t, uint32_t>& worker_ref, bool look_up_keys);
  std::vector<ItemOutcome> AckRows(std::span<const AckRequest> acks,
                                   const std::vector<uint64_t>& ids, int64_t now_ms);
  std::vector<ItemOutcome> NackRows(std::span<const NackRequest> nacks,
                                    const std::vector<uint64_t>& ids, Time now);
  std::vector<ItemOutcome> ExtendRows(std::span<const ExtendRequest> reqs,
                                      const std::vector<uint64_t>& ids, Time now);
  // A row an ack moves to SUCCEEDED (MarkSucceeded).
  struct SucceededRow {
    uint64_t id = 0;
    int64_t purge_at = 0;
    std::string result;
    uint64_t token = 0;  // the lease token the ack presented
  };
  // One UPDATE of `done` to SUCCEEDED; with `cas`, only of rows that are still LEASED
  // with their token. Returns the rows changed.
  int MarkSucceeded(const std::vector<SucceededRow>& done, int64_t now_ms, bool cas);
  // The acks' fast path: when every row was leased through this store (topic and
  // priority remembered in leased_), one compare-and-swap UPDATE without reading the
  // rows first. nullopt when it does not apply or a row did not match (then nothing
  // is changed and the caller takes the general path).
  std::optional<std::vector<ItemOutcome>> AckLeased(
      std::span<const AckRequest> acks, const std::vector<uint64_t>& unique_ids,
      int64_t now_ms);
  // Remembers a row this store leased (claim or insert) for the acks' fast path.
  void RememberLeased(uint64_t row, const std::string& ns, const std::string& topic,
                      int32_t priority);
  // Locks (SELECT ... FOR UPDATE) those of the rows `ids` that exist.
  std::map<uint64_t, detail::LockedRow> LockRows(const std::vector<uint64_t>& ids);
  // The rows Redrive/PurgeDead act on, locked: the given ones (each gets an outcome in
  // `per_row`: kNotFound if it is not in ns/topic, kFailedPrecondition if it is not
  // DEAD) or, when `rows` is empty, the first `limit` DEAD rows in ordering-rule
  // order. `deleting`: a repeated row is then kNotFound, else kFailedPrecondition.
  std::vector<detail::DeadRow> SelectDead(const std::string& ns, const std::string& topic,
                                          std::span<const RowId> rows, size_t limit,
                                          bool deleting,
                                          std::vector<ItemOutcome>& per_row);
  // Runs `sql_head` + "(ids...)" for each chunk of ids, with `bind` binding the
  // parameters before the id list (it returns the next parameter index).
  int ExecuteForIds(const std::string& sql_head, const std::vector<uint64_t>& ids,
                    const std::function<unsigned(DbStatement&)>& bind);
  // The purge time of a row of `ns` that reaches a final state at `now_ms`.
  int64_t PurgeTime(const std::string& ns, int64_t now_ms) const;

  MysqlEndpoint ep_;
  std::string database_;
  std::unique_ptr<DbConnection> conn_;
  std::unordered_map<std::string, std::unique_ptr<DbStatement>> stmts_;
  std::vector<DbStatement*> used_;  // by Stmt() since ReleaseStatements()
  std::unordered_map<std::string, uint32_t> worker_refs_;  // committed workers rows
  // Names the open transaction registered: cached by Commit(), dropped by any other
  // end of the transaction (the next Run() starts without them).
  std::unordered_map<std::string, uint32_t> uncommitted_refs_;
  // What the acks' fast path needs of rows this store leased (immutable per row, so an
  // entry never goes wrong, only stale; the compare-and-swap catches that).
  struct LeasedRowInfo {
    std::string ns;
    std::string topic;
    int32_t priority = 0;
  };
  std::unordered_map<uint64_t, LeasedRowInfo> leased_;
  NamespacePolicies policies_;
};

}  // namespace shardq::store
