#include "store/mysql_store.h"

#include <algorithm>
#include <exception>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <utility>

#include "schema/migrations.h"
#include "store/db_client.h"
#include "store/validation.h"

namespace shardq::store {
namespace {

// A multi-row INSERT carries any count of rows up to kExactInsertRows, or else a power
// of two rows up to kMaxRowsPerInsert (see InsertChunk); a batch is split into several
// statements inside the same transaction.
constexpr size_t kExactInsertRows = 16;
constexpr size_t kMaxRowsPerInsert = 256;
// Prepared statements are cached per SQL text. Id lists are padded and INSERTs split to
// powers of two, so only a few shapes exist; past this many (a backstop) the cache is
// dropped (at the start of an operation, never in the middle of one).
constexpr size_t kMaxCachedStatements = 256;
// Worker name -> workers.id entries kept in memory; past this many the cache restarts.
constexpr size_t kMaxCachedWorkers = 10'000;
// Rows leased through this store whose topic and priority it remembers for the acks'
// fast path (a few MiB at most); past this many it starts afresh.
constexpr size_t kMaxRememberedLeases = 65'536;

constexpr int kDelayed = static_cast<int>(ItemState::kDelayed);
constexpr int kReady = static_cast<int>(ItemState::kReady);
constexpr int kLeased = static_cast<int>(ItemState::kLeased);

// Client errors that mean the connection is gone (CR_CONNECTION_ERROR,
// CR_CONN_HOST_ERROR, CR_SERVER_GONE_ERROR, CR_SERVER_LOST, CR_SERVER_LOST_EXTENDED),
// and server errors sent just before it hangs up (ER_SERVER_SHUTDOWN,
// ER_CONNECTION_KILLED, ER_CLIENT_INTERACTION_TIMEOUT).
bool IsConnectionError(int code) {
  switch (code) {
    case 2002:
    case 2003:
    case 2006:
    case 2013:
    case 2055:
    case 1053:
    case 1927:
    case 4031:
      return true;
    default:
      return false;
  }
}

bool IsRetryableTxnError(int code) {
  return code == 1213 /* deadlock */ || code == 1205 /* lock wait timeout */;
}

size_t PaddedCount(size_t n) {
  size_t p = 1;
  while (p < n) p <<= 1;
  return p;
}

// Rows for the next multi-row INSERT of `remaining`: all of them if that is at most
// kExactInsertRows, else the largest power of two up to kMaxRowsPerInsert. Each row
// count is a distinct prepared statement, and a cached statement keeps parameter
// metadata for all its placeholders (hundreds of bytes each): with any count allowed,
// the cache grew to about a gigabyte under a bulk load. The small counts are exact
// because they are the common case of single enqueues (a few rows per commit), where
// a split into 2 + 1 rows cost a second round trip; together they are 136 rows of
// placeholders.
size_t InsertChunk(size_t remaining) {
  if (remaining <= kExactInsertRows) return remaining;
  size_t n = 1;
  while (n * 2 <= std::min(remaining, kMaxRowsPerInsert)) n *= 2;
  return n;
}

// "?,?,?" with n placeholders.
std::string Placeholders(size_t n) {
  std::string s;
  s.reserve(2 * n);
  for (size_t i = 0; i < n; ++i) s += i == 0 ? "?" : ",?";
  return s;
}

// Binds ids to parameters first..first+padded-1, repeating the last id as padding
// (duplicates in an IN list change nothing). Returns the next parameter index.
unsigned BindIds(DbStatement& st, unsigned first, const std::vector<uint64_t>& ids) {
  size_t padded = PaddedCount(ids.size());
  for (size_t i = 0; i < padded; ++i) {
    st.SetUInt64(first + i, ids[std::min(i, ids.size() - 1)]);
  }
  return first + static_cast<unsigned>(padded);
}

std::vector<uint64_t> UniqueIds(std::vector<uint64_t> ids) {
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  return ids;
}

bool IsBlankOrComment(std::string_view line) {
  size_t i = line.find_first_not_of(" \t\r");
  return i == std::string_view::npos || line.substr(i, 2) == "--" || line[i] == '#';
}

// Splits a migration into statements on ';' at the end of a line. Whole-line comments
// are dropped first: they may themselves end with ';' (0001_items.sql does).
std::vector<std::string> SplitStatements(std::string_view sql) {
  std::vector<std::string> out;
  std::string cur;
  while (!sql.empty()) {
    size_t nl = sql.find('\n');
    std::string_view line = sql.substr(0, nl);
    sql = nl == std::string_view::npos ? std::string_view() : sql.substr(nl + 1);
    if (IsBlankOrComment(line)) continue;
    cur.append(line).push_back('\n');
    size_t last = line.find_last_not_of(" \t\r");
    if (line[last] == ';') {
      cur.erase(cur.find_last_of(';'));
      out.push_back(std::move(cur));
      cur.clear();
    }
  }
  if (cur.find_first_not_of(" \t\r\n") != std::string::npos)
    out.push_back(std::move(cur));
  return out;
}

bool IsPlainIdentifier(const std::string& s) {
  return !s.empty() && s.size() <= 64 && std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '_';
  });
}

std::string Str(const DbRows& rs, uint32_t col) { return rs.GetString(col); }

ItemTransition TransitionFromRow(const DbRows& rs, ItemState to) {
  // Columns: id, ns, topic, priority, state, deliver_after.
  ItemTransition t;
  t.row = RowId(rs.GetUInt64(1));
  t.ns = Str(rs, 2);
  t.topic = Str(rs, 3);
  t.priority = rs.GetInt(4);
  t.from = static_cast<ItemState>(rs.GetUInt(5));
  t.to = to;
  t.deliver_after = FromUnixMillis(rs.GetInt64(6));
  return t;
}

}  // namespace

MySqlShardStore::MySqlShardStore(MysqlEndpoint ep, std::string database)
    : ep_(std::move(ep)), database_(std::move(database)) {}

MySqlShardStore::~MySqlShardStore() { Disconnect(); }

template <typename R, typename F>
R MySqlShardStore::Run(const char* op, F&& body) {
  Status open = EnsureOpen();
  if (!open.ok()) return open;
  if (stmts_.size() > kMaxCachedStatements) {
    used_.clear();
    stmts_.clear();
  }
  // A statement keeps its bound values and rows until released: 1 KiB payloads times
  // the rows of a multi-row INSERT, in every cached statement.
  struct ReleaseStatements {
    MySqlShardStore* store;
    ~ReleaseStatements() { store->ReleaseStatements(); }
  } release{this};
  uncommitted_refs_.clear();  // left by a transaction that did not commit
  try {
    return body();
  } catch (const DbError& e) {
    return ErrorToStatus(op, e);
  } catch (const std::exception& e) {
    Disconnect();  // the connection's state is unknown: start afresh next time
    return Status::Internal(std::string(op) + ": " + e.what());
  }
}

Status MySqlShardStore::EnsureOpen() { return conn_ ? Status::Ok() : Open(); }

Status MySqlShardStore::Open() {
  if (conn_) return Status::Ok();
  if (!IsPlainIdentifier(database_)) {
    return Status::InvalidArgument("bad database name '" + database_ + "'");
  }
  try {
    Connect();
    if (std::optional<Status> taken = TakeOwnership()) {
      Disconnect();
      return *taken;
    }
    if (std::optional<Status> refused = CheckServerSettings()) {
      Disconnect();
      return *refused;
    }
    ApplyMigrations();
    return Status::Ok();
  } catch (const DbError& e) {
    Status s = ErrorToStatus("open", e);
    Disconnect();  // Open either completes or leaves nothing behind
    return s;
  } catch (const std::exception& e) {
    Disconnect();
    return Status::Internal(std::string("open: ") + e.what());
  }
}

std::optional<Status> MySqlShardStore::CheckServerSettings() {
  int autoinc_lock_mode = 0;
  int flush_at_commit = 1;
  {
    auto st = conn_->Prepare(
        "SELECT @@innodb_autoinc_lock_mode, @@innodb_flush_log_at_trx_commit");
    DbRows& rs = st->ExecuteQuery();
    if (rs.Next()) {
      autoinc_lock_mode = rs.GetInt(1);
      flush_at_commit = rs.GetInt(2);
    }
  }
  if (autoinc_lock_mode == 2) {
    return Status::Internal(
        "innodb_autoinc_lock_mode=2 (interleaved) is not supported: shardq expects the "
        "ids of one multi-row INSERT to be consecutive; set it to 0 or 1");
  }
  // shardq acknowledges an enqueue, ack or nack once it is committed, so a commit must
  // be on disk when COMMIT returns: 1 (or 3, which MariaDB treats alike). With 0 a
  // MariaDB crash loses up to a second of acknowledged commits; with 2 a host crash
  // does.
  if (flush_at_commit != 1 && flush_at_commit != 3) {
    return Status::Internal(
        "innodb_flush_log_at_trx_commit=" + std::to_string(flush_at_commit) +
        " is not supported: a commit shardq acknowledges could be lost in a crash; set "
        "it to 1");
  }
  return std::nullopt;
}

void MySqlShardStore::Connect() {
  // No automatic reconnect (DbConnection): a silent one would lose the session
  // settings below and the open transaction; reconnecting is done here, explicitly,
  // by the next EnsureOpen.
  conn_ = std::make_unique<DbConnection>(ep_);
  // Every column is binary (VARBINARY/BLOB): no charset conversion of any byte.
  conn_->Execute("SET NAMES binary");
  conn_->Execute("SET SESSION autocommit = 0");
  // READ COMMITTED: no gap locks, and each statement sees the latest commits.
  conn_->Execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED");
  // Stay below the client read timeout, so a lock wait fails as 1205, not as a lost
  // connection.
  conn_->Execute("SET SESSION innodb_lock_wait_timeout = 10");
  // Refuse (instead of truncating) values that do not fit.
  conn_->Execute(
      "SET SESSION sql_mode = "
      "'STRICT_ALL_TABLES,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION'");
  conn_->Execute("CREATE DATABASE IF NOT EXISTS `" + database_ + "`");
  conn_->Execute("USE `" + database_ + "`");
}

std::optional<Status> MySqlShardStore::TakeOwnership() {
  // One owner per shard database: a named lock of this connection's session, which
  // MariaDB frees when the connection ends, however the owner died. Every write of
  // the shard goes over this connection, so whoever holds the lock is the only
  // writer: a second server pointed at the same database (a copied config) gets
  // UNAVAILABLE here, and its shard worker keeps probing, so it takes the shard over
  // once the first one is gone. Taken before the migrations, so two servers never
  // run them at once either.
  const std::string name = OwnershipLockName(database_);
  auto st = conn_->Prepare("SELECT GET_LOCK(?, 0), IS_USED_LOCK(?)");
  st->SetString(1, name);
  st->SetString(2, name);
  DbRows& rs = st->ExecuteQuery();
  std::string holder = "?";
  if (rs.Next()) {
    const int got = rs.GetInt(1);  // 1 taken, 0 held by another session, NULL error
    if (!rs.WasNull() && got == 1) return std::nullopt;
    const uint64_t connection = rs.GetUInt64(2);
    if (!rs.WasNull()) holder = std::to_string(connection);
  }
  return Status::Unavailable("shard database `" + database_ +
                             "` is owned by another shardq server (MariaDB connection " +
                             holder + " holds the lock '" + name +
                             "'); it opens here once that one stops");
}

void MySqlShardStore::ApplyMigrations() {
  conn_->Execute(schema::kMigrationsTableDdl);
  std::set<int> applied;
  {
    auto st = conn_->Prepare("SELECT version FROM schema_migrations");
    DbRows& rs = st->ExecuteQuery();
    while (rs.Next()) applied.insert(rs.GetInt(1));
  }
  for (const schema::Migration& m : schema::AllMigrations()) {
    if (applied.count(m.version)) continue;
    for (const std::string& stmt : SplitStatements(m.sql)) conn_->Execute(stmt);
    auto rec = conn_->Prepare(
        "INSERT IGNORE INTO schema_migrations (version, name) VALUES (?, ?)");
    rec->SetInt(1, m.version);
    rec->SetString(2, m.name);
    rec->ExecuteUpdate();
    Commit();
  }
  Commit();
}

void MySqlShardStore::ReleaseStatements() {
  for (DbStatement* st : used_) st->Release();
  used_.clear();
}

void MySqlShardStore::Disconnect() {
  // Statements belong to the connection: free them first.
  used_.clear();
  stmts_.clear();
  worker_refs_.clear();  // the next connection may see another database
  // Names registered in a transaction the lost connection took with it: the next
  // Open()'s own commit must not cache their ids.
  uncommitted_refs_.clear();
  leased_.clear();
  conn_.reset();
}

Status MySqlShardStore::ErrorToStatus(const char* op, const DbError& e) {
  const int code = e.code();
  std::string msg = std::string(op) + ": MySQL error " + std::to_string(code) + " (" +
                    e.sqlstate() + "): " + e.what();
  bool alive = conn_ && !IsConnectionError(code) && conn_->Ping();
  if (alive) {
    try {
      Rollback();
    } catch (const DbError&) {
      alive = false;
    }
  }
  if (!alive) {
    Disconnect();
    return Status::Unavailable(msg);
  }
  if (IsRetryableTxnError(code)) return Status::Unavailable(msg);
  return Status::Internal(msg);
}

DbStatement& MySqlShardStore::Stmt(const std::string& sql) {
  auto it = stmts_.find(sql);
  if (it == stmts_.end()) it = stmts_.emplace(sql, conn_->Prepare(sql)).first;
  used_.push_back(it->second.get());
  return *it->second;
}

// A plain COMMIT reports the server's answer: if the server died before it answered,
// the caller learns the outcome was not a commit, and nothing is acknowledged.
void MySqlShardStore::Commit() {
  conn_->Execute("COMMIT");
  CacheWorkerRefs(uncommitted_refs_);
  uncommitted_refs_.clear();
}

void MySqlShardStore::Rollback() {
  uncommitted_refs_.clear();
  conn_->Execute("ROLLBACK");
}

Status MySqlShardStore::Ping() {
  return Run<Status>("ping", [&]() -> Status {
    DbRows& rs = Stmt("SELECT 1").ExecuteQuery();
    rs.Next();
    Commit();
    return Status::Ok();
  });
}

// --- helpers of the task lifecycle ---------------------------------------------------

namespace detail {

// One task_events row.
struct PendingEvent {
  uint64_t item = 0;
  int64_t at_ms = 0;
  std::string_view kind;  // a literal
  uint32_t attempt = 0;
  std::string worker_id;
  std::string detail;
};

// The fields of a locked row that the per-item calls classify in memory. Calls update
// it as they go, so that a later request for the same row in a batch sees the change.
struct LockedRow {
  std::string ns;
  std::string topic;
  int32_t priority = 0;
  int state = 0;
  uint64_t token = 0;
  int64_t deliver_after = 0;
  uint32_t attempts = 0;
  uint32_t max_attempts = 0;
  bool cancel_requested = false;
  std::string worker_id;
  int64_t last_delivered_at = 0;
};

struct DeadRow {
  size_t index = 0;  // in the given rows; npos when selected by the topic
  uint64_t id = 0;
  LockedRow row;
};

}  // namespace detail

namespace {

using detail::DeadRow;
using detail::LockedRow;
using detail::PendingEvent;

constexpr int kSucceeded = static_cast<int>(ItemState::kSucceeded);
constexpr int kCancelled = static_cast<int>(ItemState::kCancelled);
constexpr int kDead = static_cast<int>(ItemState::kDead);
constexpr size_t kNpos = static_cast<size_t>(-1);
// Id lists longer than this are split over several statements of one transaction.
constexpr size_t kMaxIdsPerStatement = 1024;
// `ids` in slices of at most kMaxIdsPerStatement: one statement each.
std::vector<std::vector<uint64_t>> IdChunks(const std::vector<uint64_t>& ids) {
  std::vector<std::vector<uint64_t>> chunks;
  for (size_t begin = 0; begin < ids.size(); begin += kMaxIdsPerStatement) {
    const size_t end = std::min(ids.size(), begin + kMaxIdsPerStatement);
    chunks.emplace_back(ids.begin() + static_cast<ptrdiff_t>(begin),
                        ids.begin() + static_cast<ptrdiff_t>(end));
  }
  return chunks;
}

// ER_DUP_ENTRY: a unique key refused a row.
constexpr int kErDupEntry = 1062;
// How many events GetTask returns (the newest ones).
constexpr int kMaxHistory = 100;

// The last lessee's name, read through the row's reference (migration 3).
const std::string kWorkerName =
    "COALESCE((SELECT name FROM workers WHERE workers.id = items.worker), '')";

// The columns LockRows and SelectDead read, in ReadLocked's order.
const std::string kLockCols =
    "id, ns, topic, priority, state, lease_token, deliver_after, attempts, max_attempts, "
    "cancel_requested, " +
    kWorkerName + ", last_delivered_at";

// A dedup key in its namespace, as views into the items of an Insert.
using DedupKey = std::pair<std::string_view, std::string_view>;
struct DedupKeyHash {
  size_t operator()(const DedupKey& k) const {
    const size_t h = std::hash<std::string_view>()(k.first);
    return h ^ (std::hash<std::string_view>()(k.second) + 0x9e3779b97f4a7c15ULL +
                (h << 6) + (h >> 2));
  }
};

uint64_t ReadLocked(const DbRows& rs, LockedRow& r) {
  r.ns = Str(rs, 2);
  r.topic = Str(rs, 3);
  r.priority = rs.GetInt(4);
  r.state = static_cast<int>(rs.GetUInt(5));
  r.token = rs.GetUInt64(6);
  r.deliver_after = rs.GetInt64(7);
  r.attempts = rs.GetUInt(8);
  r.max_attempts = rs.GetUInt(9);
  r.cancel_requested = rs.GetUInt(10) != 0;
  r.worker_id = Str(rs, 11);
  r.last_delivered_at = rs.GetInt64(12);
  return rs.GetUInt64(1);
}

// The columns of a TaskRecord, in ReadRecord's order (payload, when read, follows).
const std::string kRecordCols =
    "id, ns, topic, task_type, priority, state, attempts, max_attempts, enqueued_at, "
    "first_delivered_at, last_delivered_at, finished_at, deliver_after, lease_token, " +
    kWorkerName + ", last_error, result, metadata, cancel_requested";

TaskRecord ReadRecord(const DbRows& rs) {
  TaskRecord t;
  t.row = RowId(rs.GetUInt64(1));
  t.ns = Str(rs, 2);
  t.topic = Str(rs, 3);
  t.task_type = Str(rs, 4);
  t.priority = rs.GetInt(5);
  t.state = static_cast<ItemState>(rs.GetUInt(6));
  t.attempts = rs.GetUInt(7);
  t.max_attempts = rs.GetUInt(8);
  t.enqueued_at = FromUnixMillis(rs.GetInt64(9));
  t.first_delivered_at = FromUnixMillis(rs.GetInt64(10));
  t.last_delivered_at = FromUnixMillis(rs.GetInt64(11));
  t.finished_at = FromUnixMillis(rs.GetInt64(12));
  t.deliver_after = FromUnixMillis(rs.GetInt64(13));
  t.token = LeaseToken(rs.GetUInt64(14));
  t.worker_id = Str(rs, 15);
  t.last_error = Str(rs, 16);
  t.result = Str(rs, 17);  // NULL reads as ""
  t.metadata = Str(rs, 18);
  t.cancel_requested = rs.GetUInt(19) != 0;
  return t;
}

PendingEvent Event(uint64_t id, const LockedRow& r, int64_t at_ms, std::string_view kind,
                   std::string detail = "") {
  return PendingEvent{id, at_ms, kind, r.attempts, r.worker_id, std::move(detail)};
}

ItemTransition MakeTransition(uint64_t id, const LockedRow& r, ItemState from,
                              ItemState to, int64_t deliver_after) {
  return ItemTransition{
      RowId(id), r.ns, r.topic, r.priority, from, to, FromUnixMillis(deliver_after)};
}

// "CASE id WHEN ? THEN ? ... ELSE <col> END" with n pairs: a per-row value in one
// UPDATE. Bound with BindCase.
std::string CaseById(size_t n, const std::string& col) {
  std::string s = "CASE id";
  for (size_t i = 0; i < n; ++i) s += " WHEN ? THEN ?";
  return s + " ELSE " + col + " END";
}

// Binds PaddedCount(n) (id, value) pairs, repeating the last as padding.
template <typename SetValue>
unsigned BindCase(DbStatement& st, unsigned p, size_t n,
                  const std::function<uint64_t(size_t)>& id, SetValue&& set_value) {
  const size_t padded = PaddedCount(n);
  for (size_t i = 0; i < padded; ++i) {
    const size_t k = std::min(i, n - 1);
    st.SetUInt64(p++, id(k));
    set_value(p++, k);
  }
  return p;
}

// Checks a nack/extend request against the locked row; OK if it may proceed.
Status CheckLease(const char* op, uint64_t row, uint64_t token,
                  const std::map<uint64_t, LockedRow>& rows) {
  auto it = rows.find(row);
  if (it == rows.end()) {
    return Status::NotFound(std::string(op) + ": no row " + std::to_string(row));
  }
  if (it->second.token != token || token == 0) {
    return Status::FailedPrecondition(std::string(op) + " of row " + std::to_string(row) +
                                      ": stale lease token");
  }
  if (it->second.state != kLeased) {
    return Status::FailedPrecondition(std::string(op) + " of row " + std::to_string(row) +
                                      ": not leased");
  }
  return Status::Ok();
}

}  // namespace

void MySqlShardStore::SetPolicies(NamespacePolicies policies) {
  policies_ = std::move(policies);
}

int64_t MySqlShardStore::PurgeTime(const std::string& ns, int64_t now_ms) const {
  return now_ms + policies_.For(ns).retention.count();
}

void MySqlShardStore::AppendEvents(const std::vector<PendingEvent>& events) {
  for (size_t begin = 0, n = 0; begin < events.size(); begin += n) {
    n = InsertChunk(events.size() - begin);
    std::string sql =
        "INSERT INTO task_events (item_id, at_ms, kind, attempt, worker_id, detail) "
        "VALUES ";
    for (size_t i = 0; i < n; ++i) sql += i == 0 ? "(?,?,?,?,?,?)" : ",(?,?,?,?,?,?)";
    DbStatement& st = Stmt(sql);
    unsigned p = 1;
    for (size_t i = begin; i < begin + n; ++i) {
      const PendingEvent& e = events[i];
      st.SetUInt64(p++, e.item);
      st.SetInt64(p++, e.at_ms);
      st.SetString(p++, std::string(e.kind));
      st.SetUInt(p++, e.attempt);
      st.SetString(p++, e.worker_id);
      st.SetString(p++, e.detail);
    }
    st.ExecuteUpdate();
  }
}

std::vector<PendingEvent> MySqlShardStore::LeaseEventsToWrite(
    const std::vector<std::pair<uint64_t, LockedRow>>& rows,
    std::vector<PendingEvent> events) {
  if (rows.empty()) return events;
  std::map<uint64_t, const LockedRow*> current;  // id -> the row's current attempt
  for (const auto& [id, r] : rows) current.emplace(id, &r);
  std::vector<uint64_t> ids;
  for (const auto& [id, r] : current) ids.push_back(id);
  // Written already: a "leased" event of the current attempt since the last
  // "redriven" (a redrive restarts the attempt count) or "undelivered" (a lease given
  // back unstarted takes its attempt back, so the next lease has the same number).
  std::set<uint64_t> written;
  for (const std::vector<uint64_t>& chunk : IdChunks(ids)) {
    DbStatement& st =
        Stmt("SELECT item_id, kind, attempt FROM task_events WHERE item_id IN (" +
             Placeholders(PaddedCount(chunk.size())) + ") ORDER BY item_id, seq");
    BindIds(st, 1, chunk);
    DbRows& rs = st.ExecuteQuery();
    while (rs.Next()) {
      const uint64_t id = rs.GetUInt64(1);
      const std::string kind = Str(rs, 2);
      if (kind == "redriven" || kind == "undelivered") {
        written.erase(id);
      } else if (kind == "leased" && rs.GetUInt(3) == current[id]->attempts) {
        written.insert(id);
      }
    }
  }
  std::vector<PendingEvent> out;
  for (const auto& [id, r] : current) {
    if (written.count(id) || r->attempts == 0) continue;
    out.push_back(
        PendingEvent{id, r->last_delivered_at, "leased", r->attempts, r->worker_id, ""});
  }
  out.insert(out.end(), std::make_move_iterator(events.begin()),
             std::make_move_iterator(events.end()));
  return out;
}

int MySqlShardStore::ExecuteForIds(const std::string& sql_head,
                                   const std::vector<uint64_t>& ids,
                                   const std::function<unsigned(DbStatement&)>& bind) {
  int changed = 0;
  for (const std::vector<uint64_t>& chunk : IdChunks(ids)) {
    DbStatement& st =
        Stmt(sql_head + "(" + Placeholders(PaddedCount(chunk.size())) + ")");
    const unsigned p = bind ? bind(st) : 1;
    BindIds(st, p, chunk);
    changed += st.ExecuteUpdate();
  }
  return changed;
}

std::map<uint64_t, LockedRow> MySqlShardStore::LockRows(
    const std::vector<uint64_t>& ids) {
  std::map<uint64_t, LockedRow> rows;
  for (const std::vector<uint64_t>& chunk : IdChunks(ids)) {
    DbStatement& st = Stmt("SELECT " + kLockCols + " FROM items WHERE id IN (" +
                           Placeholders(PaddedCount(chunk.size())) + ") FOR UPDATE");
    BindIds(st, 1, chunk);
    DbRows& rs = st.ExecuteQuery();
    while (rs.Next()) {
      LockedRow r;
      const uint64_t id = ReadLocked(rs, r);
      rows.emplace(id, std::move(r));
    }
  }
  return rows;
}

std::map<std::string, uint32_t> MySqlShardStore::WorkerRefs(
    const std::map<uint64_t, std::string>& names, bool commit) {
  std::map<std::string, uint32_t> refs;
  std::vector<std::string> missing;
  for (const auto& [row, name] : names) {
    if (refs.count(name)) continue;
    auto it = worker_refs_.find(name);
    if (name.empty()) {
      refs[name] = 0;
    } else if (it != worker_refs_.end()) {
      refs[name] = it->second;
    } else {
      refs[name] = 0;
      missing.push_back(name);
    }
  }
  if (missing.empty()) return refs;
  // A new name is registered in a transaction of its own, committed before the claim
  // that uses it, so a cached id always names a committed row; without `commit` it is
  // part of the caller's transaction, and cached only when that commits (it may yet
  // roll back).
  for (size_t begin = 0, n = 0; begin < missing.size(); begin += n) {
    n = InsertChunk(missing.size() - begin);
    std::string sql = "INSERT IGNORE INTO workers (name) VALUES (?)";
    for (size_t i = 1; i < n; ++i) sql += ",(?)";
    DbStatement& ins = Stmt(sql);
    for (size_t i = 0; i < n; ++i) {
      ins.SetString(static_cast<unsigned>(i + 1), missing[begin + i]);
    }
    ins.ExecuteUpdate();
  }
  for (size_t begin = 0; begin < missing.size(); begin += kMaxIdsPerStatement) {
    const size_t n = std::min(kMaxIdsPerStatement, missing.size() - begin);
    const size_t padded = PaddedCount(n);
    DbStatement& sel =
        Stmt("SELECT id, name FROM workers WHERE name IN (" + Placeholders(padded) + ")");
    for (size_t i = 0; i < padded; ++i) {
      sel.SetString(static_cast<unsigned>(i + 1), missing[begin + std::min(i, n - 1)]);
    }
    DbRows& rs = sel.ExecuteQuery();
    while (rs.Next()) refs[Str(rs, 2)] = rs.GetUInt(1);
  }
  for (const std::string& name : missing) uncommitted_refs_[name] = refs[name];
  if (commit) Commit();
  return refs;
}

void MySqlShardStore::CacheWorkerRefs(
    const std::unordered_map<std::string, uint32_t>& refs) {
  if (worker_refs_.size() + refs.size() > kMaxCachedWorkers) worker_refs_.clear();
  for (const auto& [name, id] : refs) worker_refs_[name] = id;
}

int MySqlShardStore::MarkSucceeded(const std::vector<SucceededRow>& done, int64_t now_ms,
                                   bool cas) {
  // One UPDATE; per-row values (purge time per namespace, result) only when they
  // differ between the rows.
  const size_t n = done.size();
  const bool one_purge =
      std::all_of(done.begin(), done.end(),
                  [&](const SucceededRow& d) { return d.purge_at == done[0].purge_at; });
  const bool one_result =
      std::all_of(done.begin(), done.end(),
                  [&](const SucceededRow& d) { return d.result == done[0].result; });
  // An empty result is left NULL (it reads as ""): writing '' would lengthen the row,
  // and a row that changes length is not updated in place (migration 3).
  const bool no_result = one_result && done[0].result.empty();
  std::string set_result;
  if (!no_result) {
    set_result = ", result = " +
                 (one_result ? std::string("?") : CaseById(PaddedCount(n), "result"));
  }
  // The compare-and-swap form changes only rows still LEASED with the given token.
  const std::string cas_where =
      cas ? " AND state = 2 AND lease_token = " + CaseById(PaddedCount(n), "0") : "";
  DbStatement& st = Stmt(
      "UPDATE items SET state = 3, finished_at = ?, expires_at = NULL, deliver_after = " +
      (one_purge ? std::string("?") : CaseById(PaddedCount(n), "deliver_after")) +
      set_result + " WHERE id IN (" + Placeholders(PaddedCount(n)) + ")" + cas_where);
  auto id_of = [&](size_t k) { return done[k].id; };
  unsigned p = 1;
  st.SetInt64(p++, now_ms);
  if (one_purge) {
    st.SetInt64(p++, done[0].purge_at);
  } else {
    p = BindCase(st, p, n, id_of,
                 [&](unsigned at, size_t k) { st.SetInt64(at, done[k].purge_at); });
  }
  if (one_result) {
    if (!no_result) st.SetString(p++, done[0].result);
  } else {
    p = BindCase(st, p, n, id_of, [&](unsigned at, size_t k) {
      if (done[k].result.empty()) {
        st.SetNull(at);
      } else {
        st.SetString(at, done[k].result);
      }
    });
  }
  std::vector<uint64_t> done_ids;
  for (const SucceededRow& d : done) done_ids.push_back(d.id);
  p = BindIds(st, p, done_ids);
  if (cas) {
    BindCase(st, p, n, id_of,
             [&](unsigned at, size_t k) { st.SetUInt64(at, done[k].token); });
  }
  return st.ExecuteUpdate();
}

std::optional<std::vector<ItemOutcome>> MySqlShardStore::AckLeased(
    std::span<const AckRequest> acks, const std::vector<uint64_t>& unique_ids,
    int64_t now_ms) {
  // Only for the common case: every row was leased through this store (so its topic
  // and priority are known without reading it), none twice, none with retention 0.
  if (unique_ids.size() != acks.size()) return std::nullopt;
  std::vector<SucceededRow> done;
  std::vector<ItemOutcome> out(acks.size());
  for (size_t i = 0; i < acks.size(); ++i) {
    const uint64_t id = acks[i].row.value();
    auto it = leased_.find(id);
    if (it == leased_.end() || acks[i].token.value() == 0) return std::nullopt;
    const int64_t purge_at = PurgeTime(it->second.ns, now_ms);
    if (purge_at <= now_ms) return std::nullopt;
    done.push_back({id, purge_at, TruncateTo(acks[i].result, kMaxResultBytes),
                    acks[i].token.value()});
    out[i].transition = ItemTransition{acks[i].row,
                                       it->second.ns,
                                       it->second.topic,
                                       it->second.priority,
                                       ItemState::kLeased,
                                       ItemState::kSucceeded,
                                       FromUnixMillis(purge_at)};
  }
  if (MarkSucceeded(done, now_ms, /*cas=*/true) != static_cast<int>(done.size())) {
    // Some row is not LEASED with that token any more (a stale token, an expired lease,
    // a repeated ack): undo, and let the general path tell each request its outcome.
    Rollback();
    return std::nullopt;
  }
  return out;
}

// --- the queue ----------------------------------------------------------------------

Result<Written> MySqlShardStore::Write(const Writes& w, Time now) {
  using R = Result<Written>;
  for (const NewItem& item : w.items) SHARDQ_RETURN_IF_ERROR(ValidateNewItem(item));
  for (const NackRequest& n : w.nacks) {
    if (n.metadata) SHARDQ_RETURN_IF_ERROR(ValidateMetadata(*n.metadata));
  }
  if (w.empty()) return Written{};
  const int64_t now_ms = ToUnixMillis(now);
  // The items stored LEASED (InsertLease): index -> the lease, and lessees' names.
  std::map<size_t, const InsertLease*> lease_of;
  std::map<uint64_t, std::string> lessee;  // by item index, for WorkerRefs
  for (const InsertLease& l : w.leases) {
    if (l.item >= w.items.size()) continue;
    const NewItem& it = w.items[l.item];
    const bool expired = it.expires_at && ToUnixMillis(*it.expires_at) <= now_ms;
    if (ToUnixMillis(it.deliver_after) > now_ms || expired) continue;
    if (lease_of.emplace(l.item, &l).second) {
      lessee.emplace(l.item, TruncateTo(l.worker_id, kMaxWorkerIdLen));
    }
  }
  auto ids_of = [](auto reqs) {
    std::vector<uint64_t> ids;
    for (const auto& r : reqs) ids.push_back(r.row.value());
    return UniqueIds(std::move(ids));
  };
  const std::vector<uint64_t> ack_ids = ids_of(w.acks);
  const std::vector<uint64_t> nack_ids = ids_of(w.nacks);
  const std::vector<uint64_t> extend_ids = ids_of(w.extends);
  std::map<size_t, uint32_t> worker_ref;  // by item index
  // One attempt; `look_up_keys` = read which dedup keys are already taken first.
  // The acks go first: their fast path rolls back its own compare-and-swap when a
  // row does not match, which must not take other parts with it.
  auto attempt = [&](bool look_up_keys) -> R {
    Written out;
    if (!w.acks.empty()) out.acked = AckRows(w.acks, ack_ids, now_ms);
    if (!w.nacks.empty()) out.nacked = NackRows(w.nacks, nack_ids, now);
    if (!w.extends.empty()) out.extended = ExtendRows(w.extends, extend_ids, now);
    if (!w.items.empty()) {
      auto inserted = InsertRows(w.items, now_ms, lease_of, worker_ref, look_up_keys);
      if (!inserted.ok()) {
        Rollback();
        return inserted.status();
      }
      out.inserted = std::move(*inserted);
    }
    Commit();
    // Only now: a rollback (a later part's error, the redo for a taken key) would
    // leave the acked rows LEASED, and their next ack would miss the fast path.
    for (size_t i = 0; i < w.acks.size(); ++i) {
      if (out.acked[i].transition) leased_.erase(w.acks[i].row.value());
    }
    for (size_t i = 0; i < w.items.size(); ++i) {
      if (out.inserted[i].leased) {
        RememberLeased(out.inserted[i].row.value(), w.items[i].ns, w.items[i].topic,
                       w.items[i].priority);
      }
    }
    return out;
  };
  // The op's name in error messages: the part's, when there is one.
  const int parts =
      !w.acks.empty() + !w.nacks.empty() + !w.extends.empty() + !w.items.empty();
  const char* op = parts > 1          ? "write"
                   : !w.items.empty() ? "insert"
                   : !w.acks.empty()  ? "ack"
                   : !w.nacks.empty() ? "nack"
                                      : "extend";
  return Run<R>(op, [&]() -> R {
    // Lessees' names are registered (committed) before the transaction, as for a
    // claim.
    if (!lessee.empty()) {
      const std::map<std::string, uint32_t> refs = WorkerRefs(lessee);
      for (const auto& [i, name] : lessee) worker_ref[i] = refs.at(name);
    }
    // Optimistic: a key is almost always new (a producer's retry is the exception),
    // so insert without reading the keys first; the unique key `dedup` refuses a
    // taken one (1062), and then the whole transaction is redone with the lookup.
    const bool has_keys =
        std::any_of(w.items.begin(), w.items.end(),
                    [](const NewItem& i) { return !i.dedup_key.empty(); });
    if (has_keys) {
      try {
        return attempt(false);
      } catch (const DbError& e) {
        if (e.code() != kErDupEntry) throw;
        Rollback();
      }
    }
    return attempt(true);
  });
}

// The inserts of a Write, in its transaction (see Write for lease_of and worker_ref).
Result<std::vector<Inserted>> MySqlShardStore::InsertRows(
    std::span<const NewItem> items, int64_t now_ms,
    const std::map<size_t, const InsertLease*>& lease_of,
    const std::map<size_t, uint32_t>& worker_ref, bool look_up_keys) {
  std::vector<Inserted> out(items.size());
  // Dedup keys: the first item of this call with each (ns, key) (views into
  // `items`: no copies on the common path), and (when looking them up) the rows
  // that already hold one, by that first item.
  std::unordered_map<DedupKey, size_t, DedupKeyHash> first;
  std::vector<size_t> first_of(items.size(), 0);
  std::vector<const DedupKey*> lookup;
  for (size_t i = 0; i < items.size(); ++i) {
    if (items[i].dedup_key.empty()) continue;
    auto [it, added] = first.emplace(DedupKey(items[i].ns, items[i].dedup_key), i);
    if (added) lookup.push_back(&it->first);
    first_of[i] = it->second;
  }
  std::unordered_map<size_t, uint64_t> owner;  // first item -> the row holding its key
  // One `ns = ? AND dedup_key IN (...)` per namespace and chunk: a range read of the
  // unique key `dedup`. (An OR of (ns, key) pairs made the range optimizer take
  // ~100 ms for 100 keys.)
  std::map<std::string_view, std::vector<std::string_view>> keys_by_ns;
  if (look_up_keys) {
    for (const DedupKey* k : lookup) keys_by_ns[k->first].push_back(k->second);
  }
  for (const auto& [ns, keys] : keys_by_ns) {
    for (size_t begin = 0; begin < keys.size(); begin += kMaxIdsPerStatement) {
      // The single writer of a shard is this store, so nothing can take a key
      // between this read and the INSERT; the unique key `dedup` would refuse it.
      const size_t n = std::min(kMaxIdsPerStatement, keys.size() - begin);
      const size_t padded = PaddedCount(n);
      DbStatement& st =
          Stmt("SELECT id, dedup_key FROM items WHERE ns = ? AND dedup_key IN (" +
               Placeholders(padded) + ")");
      st.SetString(1, ns);
      for (size_t i = 0; i < padded; ++i) {
        st.SetString(static_cast<unsigned>(i + 2), keys[begin + std::min(i, n - 1)]);
      }
      DbRows& rs = st.ExecuteQuery();
      while (rs.Next()) {
        const std::string key = Str(rs, 2);
        if (auto f = first.find(DedupKey(ns, key)); f != first.end()) {
          owner[f->second] = rs.GetUInt64(1);
        }
      }
    }
  }
  std::vector<size_t> fresh;  // the items to insert, in input order
  fresh.reserve(items.size());
  for (size_t i = 0; i < items.size(); ++i) {
    if (items[i].dedup_key.empty()) {
      fresh.push_back(i);
      continue;
    }
    if (first_of[i] == i && !owner.count(i)) fresh.push_back(i);
  }
  size_t got = 0;
  for (size_t begin = 0, n = 0; begin < fresh.size(); begin += n) {
    n = InsertChunk(fresh.size() - begin);
    // One shape for every row, READY, DELAYED or LEASED (the claim's columns are
    // 0 unless leased), so one prepared statement serves each row count.
    std::string sql =
        "INSERT INTO items (ns, topic, priority, state, deliver_after, lease_ms, "
        "enqueued_at, expires_at, payload, metadata, task_type, max_attempts, "
        "dedup_key, lease_token, worker, attempts, first_delivered_at, "
        "last_delivered_at) VALUES ";
    const std::string tuple = "(" + Placeholders(18) + ")";
    for (size_t i = 0; i < n; ++i) sql += i == 0 ? tuple : "," + tuple;
    // RETURNING gives the ids in one round trip (no SELECT LAST_INSERT_ID()), in
    // the order of the VALUES.
    sql += " RETURNING id";
    DbStatement& st = Stmt(sql);
    unsigned p = 1;
    for (size_t j = begin; j < begin + n; ++j) {
      const NewItem& it = items[fresh[j]];
      const int64_t due = ToUnixMillis(it.deliver_after);
      auto lease = lease_of.find(fresh[j]);
      const bool leased = lease != lease_of.end();
      st.SetString(p++, it.ns);
      st.SetString(p++, it.topic);
      st.SetInt(p++, it.priority);
      st.SetInt(p++, leased ? kLeased : due <= now_ms ? kReady : kDelayed);
      st.SetInt64(p++, leased ? now_ms + it.lease.count() : due);
      st.SetUInt(p++, static_cast<uint32_t>(it.lease.count()));
      st.SetInt64(p++, now_ms);
      if (it.expires_at) {
        st.SetInt64(p++, ToUnixMillis(*it.expires_at));
      } else {
        st.SetNull(p++);
      }
      // std::string carries its length: NUL and high bytes are sent as they are.
      st.SetString(p++, it.payload);
      st.SetString(p++, it.metadata);
      st.SetString(p++, it.task_type);
      st.SetUInt(p++, it.max_attempts);
      // NULL, not '', when there is no key: the unique key ignores NULLs.
      if (it.dedup_key.empty()) {
        st.SetNull(p++);
      } else {
        st.SetString(p++, it.dedup_key);
      }
      st.SetUInt64(p++, leased ? lease->second->token.value() : 0);
      st.SetUInt(p++, leased ? worker_ref.at(fresh[j]) : 0);
      st.SetUInt(p++, leased ? 1 : 0);
      st.SetInt64(p++, leased ? now_ms : 0);
      st.SetInt64(p++, leased ? now_ms : 0);
    }
    DbRows& rs = st.ExecuteQuery();
    while (rs.Next()) {
      if (got < fresh.size()) {
        out[fresh[got]] = {RowId(rs.GetUInt64(1)), false, lease_of.count(fresh[got]) > 0};
      }
      ++got;
    }
  }
  if (got != fresh.size()) {  // Write rolls the whole transaction back
    return Status::Internal("insert: got " + std::to_string(got) + " ids for " +
                            std::to_string(fresh.size()) + " rows");
  }
  for (size_t i = 0; i < items.size(); ++i) {
    if (items[i].dedup_key.empty()) continue;
    const size_t f = first_of[i];
    if (auto o = owner.find(f); o != owner.end()) {
      out[i] = {RowId(o->second), true};
    } else if (f != i) {
      out[i] = {out[f].row, true};
    }
  }
  return out;
}

void MySqlShardStore::RememberLeased(uint64_t row, const std::string& ns,
                                     const std::string& topic, int32_t priority) {
  if (leased_.size() >= kMaxRememberedLeases) leased_.clear();
  leased_[row] = {ns, topic, priority};
}

Result<std::vector<ReadyKey>> MySqlShardStore::FetchReady(const std::string& ns,
                                                          const std::string& topic,
                                                          size_t limit) {
  using R = Result<std::vector<ReadyKey>>;
  if (limit == 0) return std::vector<ReadyKey>{};
  return Run<R>("fetch_ready", [&]() -> R {
    // Reads the ready_order index in order; stops after `limit` entries.
    DbStatement& st = Stmt(
        "SELECT priority, deliver_after, id FROM items WHERE ns = ? AND topic = ? AND "
        "state = 1 ORDER BY " +
        std::string(kSqlOrderBy) + " LIMIT ?");
    st.SetString(1, ns);
    st.SetString(2, topic);
    st.SetUInt64(3, limit);
    std::vector<ReadyKey> out;
    {
      DbRows& rs = st.ExecuteQuery();
      while (rs.Next()) {
        out.push_back(
            {rs.GetInt(1), FromUnixMillis(rs.GetInt64(2)), RowId(rs.GetUInt64(3))});
      }
    }
    Commit();
    return out;
  });
}

Result<std::vector<LeasedItem>> MySqlShardStore::Claim(std::span<const ClaimRequest> rows,
                                                       LeaseToken token, Time now) {
  using R = Result<std::vector<LeasedItem>>;
  // The first request for a row wins (a repeated row is skipped, as not READY).
  std::map<uint64_t, std::string> worker;
  std::map<uint64_t, uint64_t> token_of;
  std::map<uint64_t, Time> due_by;
  for (const ClaimRequest& r : rows) {
    worker.emplace(r.row.value(), TruncateTo(r.worker_id, kMaxWorkerIdLen));
    token_of.emplace(r.row.value(),
                     r.token.value() != 0 ? r.token.value() : token.value());
    due_by.emplace(r.row.value(), std::max(now, r.due_by));
  }
  if (worker.empty()) return std::vector<LeasedItem>{};
  return Run<R>("claim", [&]() -> R {
    R out = LeaseRows(worker, token_of, &due_by, kReady, /*names_apart=*/true, now);
    if (!out.ok()) {
      Rollback();
      return out;
    }
    Commit();
    for (const LeasedItem& item : *out) {
      RememberLeased(item.row.value(), item.ns, item.topic, item.priority);
    }
    return out;
  });
}

Result<std::vector<LeasedItem>> MySqlShardStore::LeaseRows(
    const std::map<uint64_t, std::string>& worker,
    const std::map<uint64_t, uint64_t>& token_of, const std::map<uint64_t, Time>* due_by,
    int from_state, bool names_apart, Time now) {
  // Every field a lease writes has a fixed size, so InnoDB updates the row in place:
  // the lessee is a reference, its name is in `workers`.
  const std::map<std::string, uint32_t> refs = WorkerRefs(worker, names_apart);
  std::map<uint64_t, uint32_t> worker_ref;
  std::vector<uint64_t> ids;
  for (const auto& [id, name] : worker) {
    worker_ref.emplace(id, refs.at(name));
    ids.push_back(id);
  }
  const int64_t now_ms = ToUnixMillis(now);
  const std::string in = "(" + Placeholders(PaddedCount(ids.size())) + ")";
  // Lock the rows that are still leasable. The SELECT comes first (not an UPDATE
  // then a SELECT) because LeasedItem.deliver_after is the pre-claim due time,
  // which the UPDATE overwrites. Under READ COMMITTED rows that fail the WHERE are
  // not kept locked.
  // A claim (from READY) also takes a DELAYED row due by its due_by: the shard
  // worker releases those into the ready index at their time (or a release lead
  // before it), ahead of their promotion. The SELECT asks for the latest due_by; each
  // row's own is checked below. The TTL must outlast the lease's start.
  const bool claim = due_by != nullptr;
  Time latest = now;
  if (claim) {
    for (const auto& [id, t] : *due_by) latest = std::max(latest, t);
  }
  DbStatement& sel = Stmt(
      "SELECT id, ns, topic, priority, deliver_after, lease_ms, attempts, enqueued_at, "
      "payload, metadata, task_type, max_attempts, state FROM items WHERE id IN " +
      in +
      (claim ? " AND (state = " + std::to_string(from_state) + " OR (state = " +
                   std::to_string(kDelayed) + " AND deliver_after <= ?))"
             : " AND state = " + std::to_string(from_state)) +
      " AND (expires_at IS NULL OR expires_at > GREATEST(deliver_after, ?)) FOR UPDATE");
  unsigned p = BindIds(sel, 1, ids);
  if (claim) sel.SetInt64(p++, ToUnixMillis(latest));
  sel.SetInt64(p, now_ms);
  std::vector<LeasedItem> out;
  std::vector<uint64_t> locked;
  {
    DbRows& rs = sel.ExecuteQuery();
    while (rs.Next()) {
      LeasedItem item;
      item.row = RowId(rs.GetUInt64(1));
      item.deliver_after = FromUnixMillis(rs.GetInt64(5));
      // Locked by the SELECT all the same; the claim's COMMIT follows at once.
      if (claim && rs.GetInt(13) == kDelayed &&
          item.deliver_after > due_by->at(item.row.value())) {
        continue;
      }
      item.ns = Str(rs, 2);
      item.topic = Str(rs, 3);
      item.priority = rs.GetInt(4);
      // The lease starts at the later of now and the row's due time.
      item.lease_deadline = std::max(now, item.deliver_after) + Duration(rs.GetUInt(6));
      item.attempts = rs.GetUInt(7) + 1;
      item.enqueued_at = FromUnixMillis(rs.GetInt64(8));
      item.payload = Str(rs, 9);
      item.metadata = Str(rs, 10);
      item.task_type = Str(rs, 11);
      item.max_attempts = rs.GetUInt(12);
      item.token = LeaseToken(token_of.at(item.row.value()));
      locked.push_back(item.row.value());
      out.push_back(std::move(item));
    }
  }
  if (!locked.empty()) {
    const size_t n = locked.size();
    const bool one_worker = std::all_of(locked.begin(), locked.end(), [&](uint64_t id) {
      return worker_ref.at(id) == worker_ref.at(locked[0]);
    });
    const bool one_token = std::all_of(locked.begin(), locked.end(), [&](uint64_t id) {
      return token_of.at(id) == token_of.at(locked[0]);
    });
    // The lease starts at GREATEST(deliver_after, now): the delivery times are set
    // before deliver_after, since MariaDB assigns left to right and later
    // assignments see the new value.
    DbStatement& upd =
        Stmt("UPDATE items SET state = 2, lease_token = " +
             (one_token ? std::string("?") : CaseById(PaddedCount(n), "lease_token")) +
             ", attempts = attempts + 1, worker = " +
             (one_worker ? std::string("?") : CaseById(PaddedCount(n), "worker")) +
             ", first_delivered_at = IF(first_delivered_at = 0, "
             "GREATEST(deliver_after, ?), first_delivered_at), "
             "last_delivered_at = GREATEST(deliver_after, ?), "
             "deliver_after = GREATEST(deliver_after, ?) + lease_ms WHERE id IN (" +
             Placeholders(PaddedCount(n)) + ")");
    unsigned q = 1;
    if (one_token) {
      upd.SetUInt64(q++, token_of.at(locked[0]));
    } else {
      q = BindCase(
          upd, q, n, [&](size_t k) { return locked[k]; },
          [&](unsigned at, size_t k) { upd.SetUInt64(at, token_of.at(locked[k])); });
    }
    if (one_worker) {
      upd.SetUInt(q++, worker_ref.at(locked[0]));
    } else {
      q = BindCase(
          upd, q, n, [&](size_t k) { return locked[k]; },
          [&](unsigned at, size_t k) { upd.SetUInt(at, worker_ref.at(locked[k])); });
    }
    upd.SetInt64(q++, now_ms);
    upd.SetInt64(q++, now_ms);
    upd.SetInt64(q++, now_ms);
    BindIds(upd, q, locked);
    int changed = upd.ExecuteUpdate();
    if (changed != static_cast<int>(n)) {
      return Status::Internal("lease: locked " + std::to_string(n) +
                              " rows but updated " + std::to_string(changed));
    }
    // No "leased" event row here: the row holds it (see LeaseEventsToWrite).
  }
  return out;
}

// The acks of a Write, in its transaction (`ids`: their rows, each once).
std::vector<ItemOutcome> MySqlShardStore::AckRows(std::span<const AckRequest> acks,
                                                  const std::vector<uint64_t>& ids,
                                                  int64_t now_ms) {
  if (auto fast = AckLeased(acks, ids, now_ms)) return std::move(*fast);
  std::map<uint64_t, LockedRow> rows = LockRows(ids);
  std::vector<SucceededRow> done;
  std::vector<uint64_t> gone;  // deleted at once (retention 0)
  std::vector<ItemOutcome> out(acks.size());
  for (size_t i = 0; i < acks.size(); ++i) {
    const uint64_t id = acks[i].row.value();
    const std::string what = "ack of row " + std::to_string(id);
    auto it = rows.find(id);
    if (it == rows.end()) {
      out[i].status = Status::NotFound("ack: no row " + std::to_string(id));
      continue;
    }
    LockedRow& r = it->second;
    // Token 0 means "never leased" and never matches.
    const bool token_ok = acks[i].token.value() != 0 && r.token == acks[i].token.value();
    if (r.state == kSucceeded && token_ok) continue;  // a repeated ack: OK, no change
    if (r.state >= kSucceeded) {
      out[i].status = Status::FailedPrecondition(
          what + ": already " + ItemStateName(static_cast<ItemState>(r.state)));
    } else if (!token_ok) {
      out[i].status = Status::FailedPrecondition(what + ": stale lease token");
    } else if (r.state != kLeased && r.state != kReady) {
      out[i].status = Status::FailedPrecondition(what + ": not leased");
    } else if (PurgeTime(r.ns, now_ms) <= now_ms) {
      // Retention 0: nothing of a finished task is kept, so the row (and any
      // history) goes now -- one DELETE instead of an UPDATE and a later purge.
      out[i].transition = MakeTransition(id, r, static_cast<ItemState>(r.state),
                                         ItemState::kGone, r.deliver_after);
      gone.push_back(id);
      rows.erase(it);  // a repeat in this batch finds no row
    } else {
      const ItemState from = static_cast<ItemState>(r.state);
      r.state = kSucceeded;
      r.deliver_after = PurgeTime(r.ns, now_ms);
      done.push_back(
          {id, r.deliver_after, TruncateTo(acks[i].result, kMaxResultBytes), r.token});
      // No event rows: GetTask derives "leased" and "succeeded" from the row.
      out[i].transition =
          MakeTransition(id, r, from, ItemState::kSucceeded, r.deliver_after);
    }
  }
  if (!done.empty()) MarkSucceeded(done, now_ms, /*cas=*/false);
  if (!gone.empty()) {
    ExecuteForIds("DELETE FROM task_events WHERE item_id IN ", gone, nullptr);
    ExecuteForIds("DELETE FROM items WHERE id IN ", gone, nullptr);
  }
  return out;
}

// The nacks of a Write, in its transaction (`ids`: their rows, each once).
std::vector<ItemOutcome> MySqlShardStore::NackRows(std::span<const NackRequest> nacks,
                                                   const std::vector<uint64_t>& ids,
                                                   Time now) {
  const int64_t now_ms = ToUnixMillis(now);
  std::map<uint64_t, LockedRow> rows = LockRows(ids);
  std::vector<PendingEvent> events;
  std::vector<std::pair<uint64_t, LockedRow>> ended;  // leases this call ends
  std::vector<ItemOutcome> out(nacks.size());
  for (size_t i = 0; i < nacks.size(); ++i) {
    const NackRequest& n = nacks[i];
    out[i].status = CheckLease("nack", n.row.value(), n.token.value(), rows);
    if (!out[i].status.ok()) continue;
    LockedRow& r = rows[n.row.value()];
    ItemState to;
    std::string_view kind;
    // A lease no consumer got (NackRequest::unstarted_until): its attempt is taken
    // back, and the item is due again at the given time (a past one keeps its place).
    const Time again =
        n.unstarted_until ? *n.unstarted_until : now + std::max(n.delay, Duration(0));
    if (r.cancel_requested) {
      to = ItemState::kCancelled;
      kind = "cancelled";
    } else if (n.unstarted_until) {
      to = again <= now ? ItemState::kReady : ItemState::kDelayed;
      kind = "undelivered";
    } else if (n.fatal) {
      to = ItemState::kFailed;
      kind = "failed";
    } else if (r.attempts >= r.max_attempts) {
      to = ItemState::kDead;
      kind = "dead_lettered";
    } else {
      to = again <= now ? ItemState::kReady : ItemState::kDelayed;
      kind = n.undelivered ? "undelivered" : "retry";
    }
    const bool final = IsFinal(to);
    const bool refund = n.unstarted_until && !final;
    const int64_t due = final ? PurgeTime(r.ns, now_ms) : ToUnixMillis(again);
    std::string error = TruncateTo(n.error, kMaxErrorBytes);
    DbStatement& st =
        n.metadata
            ? Stmt(
                  "UPDATE items SET state = ?, deliver_after = ?, finished_at = ?, "
                  "expires_at = IF(?, NULL, expires_at), "
                  "last_error = IF(?, last_error, ?), attempts = attempts - ?, "
                  "metadata = ? WHERE id = ?")
            : Stmt(
                  "UPDATE items SET state = ?, deliver_after = ?, finished_at = ?, "
                  "expires_at = IF(?, NULL, expires_at), "
                  "last_error = IF(?, last_error, ?), attempts = attempts - ? "
                  "WHERE id = ?");
    unsigned p = 1;
    st.SetInt(p++, static_cast<int>(to));
    st.SetInt64(p++, due);
    st.SetInt64(p++, final ? now_ms : 0);
    st.SetInt(p++, final ? 1 : 0);
    // A lease nobody had (given back unstarted) is no error of the task's: the
    // reason goes in its event only, and the last error stays the handler's.
    st.SetInt(p++, n.unstarted_until ? 1 : 0);
    st.SetString(p++, error);
    st.SetInt(p++, refund ? 1 : 0);
    if (n.metadata) st.SetString(p++, *n.metadata);
    st.SetUInt64(p++, n.row.value());
    st.ExecuteUpdate();
    ended.emplace_back(n.row.value(), r);
    // Later requests for the same row in this batch see the new state.
    r.state = static_cast<int>(to);
    r.deliver_after = due;
    events.push_back(Event(n.row.value(), r, now_ms, kind, std::move(error)));
    if (refund) --r.attempts;
    out[i].transition = MakeTransition(n.row.value(), r, ItemState::kLeased, to, due);
  }
  AppendEvents(LeaseEventsToWrite(ended, std::move(events)));
  return out;
}

// The extensions of a Write, in its transaction (`ids`: their rows, each once).
std::vector<ItemOutcome> MySqlShardStore::ExtendRows(std::span<const ExtendRequest> reqs,
                                                     const std::vector<uint64_t>& ids,
                                                     Time now) {
  std::map<uint64_t, LockedRow> rows = LockRows(ids);
  const int64_t now_ms = ToUnixMillis(now);
  std::vector<ItemOutcome> out(reqs.size());
  for (size_t i = 0; i < reqs.size(); ++i) {
    const ExtendRequest& e = reqs[i];
    out[i].status = CheckLease("extend", e.row.value(), e.token.value(), rows);
    if (!out[i].status.ok()) continue;
    LockedRow& r = rows[e.row.value()];
    if (r.deliver_after <= now_ms) {
      out[i].status = Status::FailedPrecondition(
          "extend of row " + std::to_string(e.row.value()) + ": lease already expired");
      continue;
    }
    const Time deadline = now + std::max(e.extension, Duration(0));
    DbStatement& st = Stmt("UPDATE items SET deliver_after = ? WHERE id = ?");
    st.SetInt64(1, ToUnixMillis(deadline));
    st.SetUInt64(2, e.row.value());
    st.ExecuteUpdate();
    r.deliver_after = ToUnixMillis(deadline);
    out[i].new_deadline = deadline;
    out[i].cancel_requested = r.cancel_requested;
  }
  return out;
}

Result<Promotion> MySqlShardStore::PromoteDue(Time now, size_t limit,
                                              const PromoteHandoff& handoff,
                                              const Lookahead& look) {
  using R = Result<Promotion>;
  if (limit == 0) {
    auto next = NextDue();
    if (!next.ok()) return next.status();
    Promotion out;
    out.next_due = *next;
    return out;
  }
  return Run<R>("promote_due", [&]() -> R {
    const int64_t now_ms = ToUnixMillis(now);
    // One round trip: per state, the due rows (a range of the `due` index, earliest
    // first) and the first row not yet due, which says when the next call has work.
    // That row is locked too; nothing else writes this shard's rows meanwhile.
    std::string sql;
    for (int state : {kDelayed, kLeased}) {
      for (const char* range : {"<= ?", "> ?"}) {
        if (!sql.empty()) sql += " UNION ALL ";
        sql += "(SELECT " + kLockCols +
               " FROM items WHERE state = " + std::to_string(state) +
               " AND deliver_after " + range +
               " ORDER BY deliver_after, id LIMIT ? FOR UPDATE)";
      }
    }
    // And the DELAYED rows of the lookahead window, read only.
    const int64_t soon_from = std::max(now_ms, ToUnixMillis(look.after));
    const int64_t soon_until = ToUnixMillis(look.until);
    const bool ahead = look.limit > 0 && soon_until > soon_from;
    if (ahead) {
      sql += " UNION ALL (SELECT " + kLockCols +
             " FROM items WHERE state = " + std::to_string(kDelayed) +
             " AND deliver_after > ? AND deliver_after <= ? ORDER BY deliver_after, id "
             "LIMIT ?)";
    }
    DbStatement& sel = Stmt(sql);
    unsigned p = 1;
    const int64_t delayed_due_by =
        look.delayed_due_by ? std::min(now_ms, ToUnixMillis(*look.delayed_due_by))
                            : now_ms;
    for (int part = 0; part < 4; ++part) {
      sel.SetInt64(p++, part == 0 ? delayed_due_by : now_ms);
      sel.SetUInt64(p++, part % 2 == 0 ? limit : 1);
    }
    if (ahead) {
      sel.SetInt64(p++, soon_from);
      sel.SetInt64(p++, soon_until);
      sel.SetUInt64(p++, look.limit);
    }
    std::set<uint64_t> soon_seen;  // the "next due" row may also be in the window
    std::vector<std::pair<uint64_t, LockedRow>> due;
    Promotion out;
    size_t due_of_state[2] = {0, 0};
    {
      DbRows& rs = sel.ExecuteQuery();
      while (rs.Next()) {
        LockedRow r;
        const uint64_t id = ReadLocked(rs, r);
        const Time at = FromUnixMillis(r.deliver_after);
        if (r.deliver_after > now_ms) {
          if (!out.next_due || at < *out.next_due) out.next_due = at;
          if (r.state == kLeased && (!out.next_expiry || at < *out.next_expiry)) {
            out.next_expiry = at;
          }
          if (ahead && r.state == kDelayed && r.deliver_after > soon_from &&
              r.deliver_after <= soon_until && soon_seen.insert(id).second) {
            out.upcoming.push_back(MakeTransition(id, r, ItemState::kDelayed,
                                                  ItemState::kDelayed, r.deliver_after));
          }
          continue;
        }
        ++due_of_state[r.state == kDelayed ? 0 : 1];
        due.emplace_back(id, std::move(r));
      }
    }
    // More due than this call moves: a state that filled its limit may have more due
    // rows than were read, and the merge keeps `limit` of both.
    if (due_of_state[0] >= limit || due_of_state[1] >= limit || due.size() > limit) {
      out.next_due = now;
    }
    std::sort(due.begin(), due.end(), [](const auto& a, const auto& b) {
      return std::tie(a.second.deliver_after, a.first) <
             std::tie(b.second.deliver_after, b.first);
    });
    if (due.size() > limit) due.resize(limit);
    std::sort(out.upcoming.begin(), out.upcoming.end(),
              [](const ItemTransition& a, const ItemTransition& b) {
                return std::tie(a.deliver_after, a.row) <
                       std::tie(b.deliver_after, b.row);
              });
    if (out.upcoming.size() > look.limit) out.upcoming.resize(look.limit);
    std::vector<uint64_t> delayed_ids, expired_ids;
    std::map<std::pair<int, int64_t>, std::vector<uint64_t>> finished;  // (state, purge)
    std::vector<PendingEvent> events;
    std::vector<std::pair<uint64_t, LockedRow>> ended;  // leases this call ends
    for (const auto& [id, r] : due) {
      if (r.state == kDelayed) {
        // deliver_after stays: for READY it is the time the item became due.
        delayed_ids.push_back(id);
        out.moved.push_back(MakeTransition(id, r, ItemState::kDelayed, ItemState::kReady,
                                           r.deliver_after));
        continue;
      }
      // An expired lease. The token stays, so a late ack of done work still matches.
      ItemState to = ItemState::kReady;
      std::string detail;
      if (r.cancel_requested) {
        to = ItemState::kCancelled;
        detail = "cancelled";
      } else if (r.attempts >= r.max_attempts) {
        to = ItemState::kDead;
        detail = "dead_lettered";
      }
      ended.emplace_back(id, r);
      events.push_back(Event(id, r, now_ms, "lease_expired", std::move(detail)));
      if (to == ItemState::kReady) {
        expired_ids.push_back(id);
        out.moved.push_back(
            MakeTransition(id, r, ItemState::kLeased, to, r.deliver_after));
      } else {
        const int64_t purge_at = PurgeTime(r.ns, now_ms);
        finished[{static_cast<int>(to), purge_at}].push_back(id);
        out.moved.push_back(MakeTransition(id, r, ItemState::kLeased, to, purge_at));
      }
    }
    // Items handed to parked consumers go DELAYED -> LEASED, not through READY.
    if (handoff && !delayed_ids.empty()) {
      Status handed = HandOff(handoff, now, out, delayed_ids);
      if (!handed.ok()) {
        Rollback();
        return handed;
      }
      // Its leases are LEASED rows left, as the contract counts them (the SELECT above
      // read those rows while they were still DELAYED).
      for (const LeasedItem& item : out.leased) {
        if (!out.next_due || item.lease_deadline < *out.next_due) {
          out.next_due = item.lease_deadline;
        }
        if (!out.next_expiry || item.lease_deadline < *out.next_expiry) {
          out.next_expiry = item.lease_deadline;
        }
      }
    }
    ExecuteForIds("UPDATE items SET state = 1 WHERE id IN ", delayed_ids, nullptr);
    ExecuteForIds("UPDATE items SET state = 1, last_error = 'lease expired' WHERE id IN ",
                  expired_ids, nullptr);
    for (const auto& [key, group] : finished) {
      ExecuteForIds(
          "UPDATE items SET state = ?, finished_at = ?, deliver_after = ?, "
          "expires_at = NULL, last_error = 'lease expired' WHERE id IN ",
          group, [&](DbStatement& st) {
            st.SetInt(1, key.first);
            st.SetInt64(2, now_ms);
            st.SetInt64(3, key.second);
            return 4u;
          });
    }
    AppendEvents(LeaseEventsToWrite(ended, std::move(events)));
    Commit();
    for (const LeasedItem& item : out.leased) {
      RememberLeased(item.row.value(), item.ns, item.topic, item.priority);
    }
    return out;
  });
}

Status MySqlShardStore::HandOff(const PromoteHandoff& handoff, Time now, Promotion& out,
                                std::vector<uint64_t>& to_ready) {
  const DelayedMoves candidates(out.moved);
  const std::vector<ItemTransition>& due = candidates.due;
  const std::vector<size_t>& moved_at = candidates.moved_at;
  // The first lease of an item counts (emplace keeps it).
  std::map<uint64_t, std::string> worker;
  std::map<uint64_t, uint64_t> token_of;
  std::map<uint64_t, size_t> at;  // row -> index into out.moved
  for (const InsertLease& l : handoff(due)) {
    if (l.item >= due.size()) continue;
    const uint64_t id = due[l.item].row.value();
    worker.emplace(id, TruncateTo(l.worker_id, kMaxWorkerIdLen));
    token_of.emplace(id, l.token.value());
    at.emplace(id, moved_at[l.item]);
  }
  if (worker.empty()) return Status::Ok();
  // The claim's own statements, on rows still DELAYED (locked by the promotion's
  // SELECT): each secondary-index entry moves once. One past its TTL is not leased
  // and goes READY with the rest. New lessee names are registered in this
  // transaction: a lease must not outlive a rollback of its promotion.
  auto leased =
      LeaseRows(worker, token_of, nullptr, kDelayed, /*names_apart=*/false, now);
  if (!leased.ok()) return leased.status();
  for (const LeasedItem& item : *leased) {
    to_ready.erase(std::find(to_ready.begin(), to_ready.end(), item.row.value()));
  }
  std::sort(leased->begin(), leased->end(),
            [&](const LeasedItem& a, const LeasedItem& b) {
              return at[a.row.value()] < at[b.row.value()];
            });
  for (LeasedItem& item : *leased) {
    ItemTransition& t = out.moved[at[item.row.value()]];
    t.to = ItemState::kLeased;
    t.deliver_after = item.lease_deadline;
    out.leased.push_back(std::move(item));
  }
  return Status::Ok();
}

Result<std::vector<ItemTransition>> MySqlShardStore::PurgeExpired(Time now,
                                                                  size_t limit) {
  using R = Result<std::vector<ItemTransition>>;
  if (limit == 0) return std::vector<ItemTransition>{};
  return Run<R>("purge_expired", [&]() -> R {
    const int64_t now_ms = ToUnixMillis(now);
    // The earliest `limit` candidates in one round trip: TTL-expired live rows from the
    // `expiry` index (final rows have no TTL: it is cleared when they finish), and
    // each final state's purge-time range of the `due` index.
    std::string sql =
        "(SELECT id, expires_at AS t FROM items WHERE expires_at <= ? AND state < 3 "
        "ORDER BY expires_at, id LIMIT ?)";
    for (int s = kSucceeded; s <= kCancelled; ++s) {
      sql += " UNION ALL (SELECT id, deliver_after FROM items WHERE state = " +
             std::to_string(s) +
             " AND deliver_after <= ? ORDER BY deliver_after, id LIMIT ?)";
    }
    sql += " ORDER BY t, id LIMIT ?";
    DbStatement& sel = Stmt(sql);
    unsigned p = 1;
    for (int part = 0; part < 5; ++part) {
      sel.SetInt64(p++, now_ms);
      sel.SetUInt64(p++, limit);
    }
    sel.SetUInt64(p, limit);
    std::vector<uint64_t> chosen;
    {
      DbRows& rs = sel.ExecuteQuery();
      while (rs.Next()) chosen.push_back(rs.GetUInt64(1));
    }
    std::vector<ItemTransition> out;
    if (!chosen.empty()) {
      // The DELETE re-checks the condition: what it returns is what was purged.
      DbStatement& del = Stmt(
          "DELETE FROM items WHERE id IN (" + Placeholders(PaddedCount(chosen.size())) +
          ") AND ((state < 3 AND expires_at <= ?) OR (state >= 3 AND deliver_after <= "
          "?)) RETURNING id, ns, topic, priority, state, deliver_after");
      unsigned q = BindIds(del, 1, chosen);
      del.SetInt64(q++, now_ms);
      del.SetInt64(q++, now_ms);
      std::map<uint64_t, ItemTransition> deleted;
      {
        DbRows& rs = del.ExecuteQuery();
        while (rs.Next()) {
          ItemTransition t = TransitionFromRow(rs, ItemState::kGone);
          deleted.emplace(t.row.value(), std::move(t));
        }
      }
      std::vector<uint64_t> gone;
      for (uint64_t id : chosen) {
        auto it = deleted.find(id);
        if (it == deleted.end()) continue;
        gone.push_back(id);
        out.push_back(std::move(it->second));
      }
      ExecuteForIds("DELETE FROM task_events WHERE item_id IN ", gone, nullptr);
    }
    Commit();
    return out;
  });
}

Result<std::optional<Time>> MySqlShardStore::NextDue() {
  using R = Result<std::optional<Time>>;
  return Run<R>("next_due", [&]() -> R {
    // Two MIN()s that the optimizer answers from the ends of the `due` index.
    DbStatement& st = Stmt(
        "SELECT (SELECT MIN(deliver_after) FROM items WHERE state = 0), "
        "(SELECT MIN(deliver_after) FROM items WHERE state = 2)");
    std::optional<Time> next;
    {
      DbRows& rs = st.ExecuteQuery();
      if (rs.Next()) {
        for (uint32_t col : {1u, 2u}) {
          int64_t v = rs.GetInt64(col);
          if (rs.WasNull()) continue;
          if (!next || FromUnixMillis(v) < *next) next = FromUnixMillis(v);
        }
      }
    }
    Commit();
    return next;
  });
}

Result<std::vector<std::pair<LeaseToken, RowId>>> MySqlShardStore::LeasedRowsOf(
    std::span<const LeaseToken> tokens) {
  using R = Result<std::vector<std::pair<LeaseToken, RowId>>>;
  if (tokens.empty()) return R(std::vector<std::pair<LeaseToken, RowId>>{});
  return Run<R>("leased_rows_of", [&]() -> R {
    std::vector<uint64_t> values;
    for (LeaseToken t : tokens) values.push_back(t.value());
    std::vector<std::pair<LeaseToken, RowId>> out;
    for (const std::vector<uint64_t>& chunk : IdChunks(values)) {
      // `due` starts with the state: only the LEASED rows are read.
      DbStatement& st =
          Stmt("SELECT lease_token, id FROM items WHERE state = 2 AND lease_token IN (" +
               Placeholders(PaddedCount(chunk.size())) + ")");
      BindIds(st, 1, chunk);
      DbRows& rs = st.ExecuteQuery();
      while (rs.Next())
        out.emplace_back(LeaseToken(rs.GetUInt64(1)), RowId(rs.GetUInt64(2)));
    }
    Commit();
    return out;
  });
}

Result<std::vector<TopicCounts>> MySqlShardStore::CountByTopic() {
  using R = Result<std::vector<TopicCounts>>;
  return Run<R>("count_by_topic", [&]() -> R {
    DbStatement& st = Stmt(
        "SELECT ns, topic, state, COUNT(*) FROM items GROUP BY ns, topic, state "
        "ORDER BY ns, topic, state");
    std::vector<TopicCounts> out;
    {
      DbRows& rs = st.ExecuteQuery();
      while (rs.Next()) {
        std::string ns = Str(rs, 1);
        std::string topic = Str(rs, 2);
        if (out.empty() || out.back().ns != ns || out.back().topic != topic) {
          out.push_back(TopicCounts{std::move(ns), std::move(topic)});
        }
        const uint64_t n = rs.GetUInt64(4);
        TopicCounts& c = out.back();
        c.Add(static_cast<ItemState>(rs.GetUInt(3)), n);
      }
    }
    Commit();
    return out;
  });
}

// --- operators' calls ---------------------------------------------------------------

Result<TaskRecord> MySqlShardStore::GetTask(RowId row, bool include_payload) {
  using R = Result<TaskRecord>;
  return Run<R>("get_task", [&]() -> R {
    DbStatement& st =
        Stmt("SELECT " + kRecordCols + (include_payload ? ", payload" : "") +
             " FROM items WHERE id = ?");
    st.SetUInt64(1, row.value());
    std::optional<TaskRecord> t;
    {
      DbRows& rs = st.ExecuteQuery();
      if (rs.Next()) {
        t = ReadRecord(rs);
        if (include_payload) t->payload = Str(rs, 20);
      }
    }
    if (!t) {
      Commit();
      return Status::NotFound("get_task: no row " + std::to_string(row.value()));
    }
    // The newest kMaxHistory events (primary key (item_id, seq)), oldest first.
    DbStatement& ev = Stmt(
        "SELECT at_ms, kind, attempt, worker_id, detail FROM (SELECT seq, at_ms, kind, "
        "attempt, worker_id, detail FROM task_events WHERE item_id = ? ORDER BY seq DESC "
        "LIMIT " +
        std::to_string(kMaxHistory) + ") AS newest ORDER BY seq");
    ev.SetUInt64(1, row.value());
    {
      DbRows& rs = ev.ExecuteQuery();
      while (rs.Next()) {
        t->history.push_back(TaskEvent{FromUnixMillis(rs.GetInt64(1)), Str(rs, 2),
                                       rs.GetUInt(3), Str(rs, 4), Str(rs, 5)});
      }
    }
    // The events kept in the row (see LeaseEventsToWrite): the current lease's
    // "leased" unless written, and "succeeded".
    if (t->state == ItemState::kLeased || t->state == ItemState::kSucceeded) {
      bool written = false;
      for (const TaskEvent& e : t->history) {
        if (e.kind == "redriven" || e.kind == "undelivered") written = false;
        if (e.kind == "leased" && e.attempt == t->attempts) written = true;
      }
      if (!written && t->attempts > 0) {
        t->history.push_back(
            TaskEvent{t->last_delivered_at, "leased", t->attempts, t->worker_id, ""});
      }
      if (t->state == ItemState::kSucceeded) {
        t->history.push_back(
            TaskEvent{t->finished_at, "succeeded", t->attempts, t->worker_id, ""});
      }
      if (t->history.size() > kMaxHistory) {
        t->history.erase(t->history.begin(),
                         t->history.end() - static_cast<ptrdiff_t>(kMaxHistory));
      }
    }
    Commit();
    return std::move(*t);
  });
}

Result<ItemOutcome> MySqlShardStore::Cancel(RowId row, Time now) {
  using R = Result<ItemOutcome>;
  return Run<R>("cancel", [&]() -> R {
    const int64_t now_ms = ToUnixMillis(now);
    const uint64_t id = row.value();
    std::map<uint64_t, LockedRow> rows = LockRows({id});
    ItemOutcome out;
    auto it = rows.find(id);
    if (it == rows.end()) {
      out.status = Status::NotFound("cancel: no row " + std::to_string(id));
      Commit();
      return out;
    }
    LockedRow& r = it->second;
    std::vector<PendingEvent> events;
    if (r.state == kDelayed || r.state == kReady) {
      const int64_t purge_at = PurgeTime(r.ns, now_ms);
      DbStatement& st = Stmt(
          "UPDATE items SET state = 6, finished_at = ?, deliver_after = ?, "
          "expires_at = NULL WHERE id = ?");
      st.SetInt64(1, now_ms);
      st.SetInt64(2, purge_at);
      st.SetUInt64(3, id);
      st.ExecuteUpdate();
      events.push_back(Event(id, r, now_ms, "cancelled"));
      out.transition = MakeTransition(id, r, static_cast<ItemState>(r.state),
                                      ItemState::kCancelled, purge_at);
    } else if (r.state == kLeased) {
      // The holder learns it from Extend; its Nack (or the lease's expiry) ends it.
      if (!r.cancel_requested) {
        DbStatement& st = Stmt("UPDATE items SET cancel_requested = 1 WHERE id = ?");
        st.SetUInt64(1, id);
        st.ExecuteUpdate();
        events =
            LeaseEventsToWrite({{id, r}}, {Event(id, r, now_ms, "cancel_requested")});
      }
      out.cancel_requested = true;
    } else if (r.state != kCancelled) {
      out.status = Status::FailedPrecondition(
          "cancel of row " + std::to_string(id) + ": already " +
          ItemStateName(static_cast<ItemState>(r.state)));
    }
    AppendEvents(events);
    Commit();
    return out;
  });
}

Result<std::vector<TaskRecord>> MySqlShardStore::ListDead(const std::string& ns,
                                                          const std::string& topic,
                                                          size_t limit) {
  using R = Result<std::vector<TaskRecord>>;
  if (limit == 0) return std::vector<TaskRecord>{};
  return Run<R>("list_dead", [&]() -> R {
    // An exact prefix (ns, topic, state) of the ready_order index, read in order.
    DbStatement& st =
        Stmt("SELECT " + kRecordCols +
             " FROM items WHERE ns = ? AND topic = ? AND state = 5 ORDER BY " +
             std::string(kSqlOrderBy) + " LIMIT ?");
    st.SetString(1, ns);
    st.SetString(2, topic);
    st.SetUInt64(3, limit);
    std::vector<TaskRecord> out;
    {
      DbRows& rs = st.ExecuteQuery();
      while (rs.Next()) out.push_back(ReadRecord(rs));
    }
    Commit();
    return out;
  });
}

std::vector<DeadRow> MySqlShardStore::SelectDead(const std::string& ns,
                                                 const std::string& topic,
                                                 std::span<const RowId> rows,
                                                 size_t limit, bool deleting,
                                                 std::vector<ItemOutcome>& per_row) {
  std::vector<DeadRow> out;
  if (rows.empty()) {
    if (limit == 0) return out;
    DbStatement& st =
        Stmt("SELECT " + kLockCols +
             " FROM items WHERE ns = ? AND topic = ? AND state = 5 ORDER BY " +
             std::string(kSqlOrderBy) + " LIMIT ? FOR UPDATE");
    st.SetString(1, ns);
    st.SetString(2, topic);
    st.SetUInt64(3, limit);
    DbRows& rs = st.ExecuteQuery();
    while (rs.Next()) {
      DeadRow d;
      d.index = kNpos;
      d.id = ReadLocked(rs, d.row);
      out.push_back(std::move(d));
    }
    return out;
  }
  std::vector<uint64_t> ids;
  for (RowId r : rows) ids.push_back(r.value());
  std::map<uint64_t, LockedRow> locked = LockRows(UniqueIds(std::move(ids)));
  per_row.resize(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) {
    const uint64_t id = rows[i].value();
    auto it = locked.find(id);
    if (it == locked.end() || it->second.ns != ns || it->second.topic != topic) {
      per_row[i].status =
          Status::NotFound("no row " + std::to_string(id) + " in " + ns + "/" + topic);
    } else if (it->second.state != kDead) {
      per_row[i].status = Status::FailedPrecondition(
          "row " + std::to_string(id) + " is " +
          ItemStateName(static_cast<ItemState>(it->second.state)) + ", not dead");
    } else {
      out.push_back(DeadRow{i, id, it->second});
      // A repeat of this row sees what this call does to it.
      if (deleting) {
        locked.erase(it);
      } else {
        it->second.state = kReady;
      }
    }
  }
  return out;
}

Result<ShardStore::BulkOutcome> MySqlShardStore::Redrive(const std::string& ns,
                                                         const std::string& topic,
                                                         std::span<const RowId> rows,
                                                         size_t limit, Time now) {
  using R = Result<BulkOutcome>;
  return Run<R>("redrive", [&]() -> R {
    const int64_t now_ms = ToUnixMillis(now);
    BulkOutcome out;
    std::vector<DeadRow> dead = SelectDead(ns, topic, rows, limit, false, out.per_row);
    std::vector<uint64_t> ids;
    std::vector<PendingEvent> events;
    for (DeadRow& d : dead) {
      ids.push_back(d.id);
      d.row.attempts = 0;
      events.push_back(Event(d.id, d.row, now_ms, "redriven"));
      ItemTransition t =
          MakeTransition(d.id, d.row, ItemState::kDead, ItemState::kReady, now_ms);
      if (d.index != kNpos) out.per_row[d.index].transition = t;
      out.transitions.push_back(std::move(t));
    }
    ExecuteForIds(
        "UPDATE items SET state = 1, attempts = 0, deliver_after = ?, finished_at = 0, "
        "cancel_requested = 0 WHERE id IN ",
        ids, [&](DbStatement& st) {
          st.SetInt64(1, now_ms);
          return 2u;
        });
    AppendEvents(events);
    Commit();
    return out;
  });
}

Result<ShardStore::BulkOutcome> MySqlShardStore::PurgeDead(const std::string& ns,
                                                           const std::string& topic,
                                                           std::span<const RowId> rows,
                                                           size_t limit) {
  using R = Result<BulkOutcome>;
  return Run<R>("purge_dead", [&]() -> R {
    BulkOutcome out;
    std::vector<DeadRow> dead = SelectDead(ns, topic, rows, limit, true, out.per_row);
    std::vector<uint64_t> ids;
    for (const DeadRow& d : dead) {
      ids.push_back(d.id);
      ItemTransition t = MakeTransition(d.id, d.row, ItemState::kDead, ItemState::kGone,
                                        d.row.deliver_after);
      if (d.index != kNpos) out.per_row[d.index].transition = t;
      out.transitions.push_back(std::move(t));
    }
    ExecuteForIds("DELETE FROM items WHERE id IN ", ids, nullptr);
    ExecuteForIds("DELETE FROM task_events WHERE item_id IN ", ids, nullptr);
    Commit();
    return out;
  });
}

}  // namespace shardq::store
