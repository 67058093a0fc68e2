#include "store/mysql_store.h"

#include <cppconn/datatype.h>
#include <cppconn/exception.h>
#include <cppconn/prepared_statement.h>
#include <cppconn/resultset.h>
#include <cppconn/statement.h>
#include <mysql_connection.h>
#include <mysql_driver.h>

#include <algorithm>
#include <exception>
#include <map>
#include <set>
#include <string_view>
#include <utility>

#include "schema/migrations.h"
#include "store/validation.h"

namespace shardq::store {
namespace {

// A multi-row INSERT carries at most this many rows; larger batches are split into
// several statements inside the same transaction.
constexpr size_t kMaxRowsPerInsert = 500;
// Prepared statements are cached per SQL text. Id lists are padded to a power of two
// so only a few shapes exist, but multi-row INSERTs are per batch size: past this many
// the cache is dropped (at the start of an operation, never in the middle of one).
constexpr size_t kMaxCachedStatements = 256;

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

// "?,?,?" with n placeholders.
std::string Placeholders(size_t n) {
  std::string s;
  s.reserve(2 * n);
  for (size_t i = 0; i < n; ++i) s += i == 0 ? "?" : ",?";
  return s;
}

// Binds ids to parameters first..first+padded-1, repeating the last id as padding
// (duplicates in an IN list change nothing). Returns the next parameter index.
unsigned BindIds(sql::PreparedStatement& st, unsigned first,
                 const std::vector<uint64_t>& ids) {
  size_t padded = PaddedCount(ids.size());
  for (size_t i = 0; i < padded; ++i) {
    st.setUInt64(first + i, ids[std::min(i, ids.size() - 1)]);
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

std::string Str(const sql::ResultSet& rs, uint32_t col) { return rs.getString(col); }

ItemTransition TransitionFromRow(const sql::ResultSet& rs, ItemState to) {
  // Columns: id, ns, topic, priority, state, deliver_after.
  ItemTransition t;
  t.row = RowId(rs.getUInt64(1));
  t.ns = Str(rs, 2);
  t.topic = Str(rs, 3);
  t.priority = rs.getInt(4);
  t.from = static_cast<ItemState>(rs.getUInt(5));
  t.to = to;
  t.deliver_after = FromUnixMillis(rs.getInt64(6));
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
  if (stmts_.size() > kMaxCachedStatements) stmts_.clear();
  try {
    return body();
  } catch (const sql::SQLException& e) {
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
    int autoinc_lock_mode = 0;
    {
      std::unique_ptr<sql::Statement> st(conn_->createStatement());
      std::unique_ptr<sql::ResultSet> rs(
          st->executeQuery("SELECT @@innodb_autoinc_lock_mode"));
      if (rs->next()) autoinc_lock_mode = rs->getInt(1);
    }
    if (autoinc_lock_mode == 2) {
      Disconnect();
      return Status::Internal(
          "innodb_autoinc_lock_mode=2 (interleaved) is not supported: shardq expects the "
          "ids of one multi-row INSERT to be consecutive; set it to 0 or 1");
    }
    ApplyMigrations();
    return Status::Ok();
  } catch (const sql::SQLException& e) {
    Status s = ErrorToStatus("open", e);
    Disconnect();  // Open either completes or leaves nothing behind
    return s;
  } catch (const std::exception& e) {
    Disconnect();
    return Status::Internal(std::string("open: ") + e.what());
  }
}

void MySqlShardStore::Connect() {
  // The driver singleton's first use is not thread-safe; a magic static is.
  static sql::mysql::MySQL_Driver* const driver = sql::mysql::get_mysql_driver_instance();
  sql::ConnectOptionsMap opts;
  opts["hostName"] =
      ep_.socket.empty()
          ? sql::SQLString("tcp://" + ep_.host + ":" + std::to_string(ep_.port))
          : sql::SQLString("unix://" + ep_.socket);
  opts["userName"] = sql::SQLString(ep_.user);
  opts["password"] = sql::SQLString(ep_.password);
  opts["OPT_CONNECT_TIMEOUT"] = ep_.connect_timeout_s;
  opts["OPT_READ_TIMEOUT"] = ep_.read_timeout_s;
  opts["OPT_WRITE_TIMEOUT"] = ep_.write_timeout_s;
  // A silent driver reconnect would lose the session settings below and the open
  // transaction; reconnecting is done here, explicitly, by the next EnsureOpen.
  opts["OPT_RECONNECT"] = false;
  conn_.reset(driver->connect(opts));

  std::unique_ptr<sql::Statement> st(conn_->createStatement());
  // Every column is binary (VARBINARY/BLOB): no charset conversion of any byte.
  st->execute("SET NAMES binary");
  st->execute("SET SESSION autocommit = 0");
  // READ COMMITTED: no gap locks, and each statement sees the latest commits.
  st->execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED");
  // Stay below the client read timeout, so a lock wait fails as 1205, not as a lost
  // connection.
  st->execute("SET SESSION innodb_lock_wait_timeout = 10");
  // Refuse (instead of truncating) values that do not fit.
  st->execute(
      "SET SESSION sql_mode = "
      "'STRICT_ALL_TABLES,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION'");
  st->execute("CREATE DATABASE IF NOT EXISTS `" + database_ + "`");
  st->execute("USE `" + database_ + "`");
}

void MySqlShardStore::ApplyMigrations() {
  std::unique_ptr<sql::Statement> st(conn_->createStatement());
  st->execute(std::string(schema::kMigrationsTableDdl));
  std::set<int> applied;
  {
    std::unique_ptr<sql::ResultSet> rs(
        st->executeQuery("SELECT version FROM schema_migrations"));
    while (rs->next()) applied.insert(rs->getInt(1));
  }
  for (const schema::Migration& m : schema::AllMigrations()) {
    if (applied.count(m.version)) continue;
    for (const std::string& stmt : SplitStatements(m.sql)) st->execute(stmt);
    std::unique_ptr<sql::PreparedStatement> rec(conn_->prepareStatement(
        "INSERT IGNORE INTO schema_migrations (version, name) VALUES (?, ?)"));
    rec->setInt(1, m.version);
    rec->setString(2, std::string(m.name));
    rec->executeUpdate();
    Commit();
  }
  Commit();
}

void MySqlShardStore::Disconnect() {
  // Statements belong to the connection: free them first.
  stmts_.clear();
  if (!conn_) return;
  try {
    conn_->close();
  } catch (...) {
  }
  conn_.reset();
}

Status MySqlShardStore::ErrorToStatus(const char* op, const sql::SQLException& e) {
  const int code = e.getErrorCode();
  std::string msg = std::string(op) + ": MySQL error " + std::to_string(code) + " (" +
                    e.getSQLState() + "): " + e.what();
  bool alive = false;
  if (conn_ && !IsConnectionError(code)) {
    try {
      alive = !conn_->isClosed() && conn_->isValid();
    } catch (...) {
      alive = false;
    }
  }
  if (alive) {
    try {
      Rollback();
    } catch (...) {
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

sql::PreparedStatement& MySqlShardStore::Stmt(const std::string& sql) {
  auto it = stmts_.find(sql);
  if (it == stmts_.end()) {
    std::unique_ptr<sql::PreparedStatement> st(conn_->prepareStatement(sql));
    it = stmts_.emplace(sql, std::move(st)).first;
  }
  return *it->second;
}

// Connector/C++ 1.1's Connection::commit() ignores the server's answer: a COMMIT that
// failed because the server died would look committed, and we would acknowledge an
// enqueue that is lost (the crash test caught exactly that). A plain statement throws
// on any error, so the caller learns the outcome was not a commit.
void MySqlShardStore::Commit() {
  std::unique_ptr<sql::Statement> st(conn_->createStatement());
  st->execute("COMMIT");
}

void MySqlShardStore::Rollback() {
  std::unique_ptr<sql::Statement> st(conn_->createStatement());
  st->execute("ROLLBACK");
}

Status MySqlShardStore::Ping() {
  return Run<Status>("ping", [&]() -> Status {
    std::unique_ptr<sql::ResultSet> rs(Stmt("SELECT 1").executeQuery());
    rs->next();
    Commit();
    return Status::Ok();
  });
}

Result<std::vector<RowId>> MySqlShardStore::Insert(std::span<const NewItem> items,
                                                   Time now) {
  using R = Result<std::vector<RowId>>;
  for (const NewItem& item : items) SHARDQ_RETURN_IF_ERROR(ValidateNewItem(item));
  if (items.empty()) return std::vector<RowId>{};
  return Run<R>("insert", [&]() -> R {
    std::vector<RowId> ids;
    ids.reserve(items.size());
    const int64_t now_ms = ToUnixMillis(now);
    for (size_t begin = 0; begin < items.size(); begin += kMaxRowsPerInsert) {
      const size_t n = std::min(kMaxRowsPerInsert, items.size() - begin);
      std::string sql =
          "INSERT INTO items (ns, topic, priority, state, deliver_after, lease_ms, "
          "enqueued_at, expires_at, payload, metadata) VALUES ";
      for (size_t i = 0; i < n; ++i)
        sql += i == 0 ? "(?,?,?,?,?,?,?,?,?,?)" : ",(?,?,?,?,?,?,?,?,?,?)";
      // RETURNING gives the ids in one round trip (no SELECT LAST_INSERT_ID()).
      sql += " RETURNING id";
      sql::PreparedStatement& st = Stmt(sql);
      unsigned p = 1;
      for (size_t i = begin; i < begin + n; ++i) {
        const NewItem& it = items[i];
        const int64_t due = ToUnixMillis(it.deliver_after);
        st.setString(p++, it.ns);
        st.setString(p++, it.topic);
        st.setInt(p++, it.priority);
        st.setInt(p++, due <= now_ms ? kReady : kDelayed);
        st.setInt64(p++, due);
        st.setUInt(p++, static_cast<uint32_t>(it.lease.count()));
        st.setInt64(p++, now_ms);
        if (it.expires_at) {
          st.setInt64(p++, ToUnixMillis(*it.expires_at));
        } else {
          st.setNull(p++, sql::DataType::BIGINT);
        }
        // std::string carries its length: NUL and high bytes are sent as they are.
        st.setString(p++, it.payload);
        st.setString(p++, it.metadata);
      }
      std::unique_ptr<sql::ResultSet> rs(st.executeQuery());
      while (rs->next()) ids.push_back(RowId(rs->getUInt64(1)));
    }
    if (ids.size() != items.size()) {
      Rollback();
      return Status::Internal("insert: got " + std::to_string(ids.size()) + " ids for " +
                              std::to_string(items.size()) + " rows");
    }
    Commit();
    return ids;
  });
}

Result<std::vector<ReadyKey>> MySqlShardStore::FetchReady(const std::string& ns,
                                                          const std::string& topic,
                                                          size_t limit) {
  using R = Result<std::vector<ReadyKey>>;
  if (limit == 0) return std::vector<ReadyKey>{};
  return Run<R>("fetch_ready", [&]() -> R {
    // Reads the ready_order index in order; stops after `limit` entries.
    sql::PreparedStatement& st = Stmt(
        "SELECT priority, deliver_after, id FROM items WHERE ns = ? AND topic = ? AND "
        "state = 1 ORDER BY " +
        std::string(kSqlOrderBy) + " LIMIT ?");
    st.setString(1, ns);
    st.setString(2, topic);
    st.setUInt64(3, limit);
    std::vector<ReadyKey> out;
    {
      std::unique_ptr<sql::ResultSet> rs(st.executeQuery());
      while (rs->next()) {
        out.push_back(
            {rs->getInt(1), FromUnixMillis(rs->getInt64(2)), RowId(rs->getUInt64(3))});
      }
    }
    Commit();
    return out;
  });
}

Result<std::vector<LeasedItem>> MySqlShardStore::Claim(std::span<const RowId> rows,
                                                       LeaseToken token, Time now) {
  using R = Result<std::vector<LeasedItem>>;
  std::vector<uint64_t> ids;
  for (RowId r : rows) ids.push_back(r.value());
  ids = UniqueIds(std::move(ids));
  if (ids.empty()) return std::vector<LeasedItem>{};
  return Run<R>("claim", [&]() -> R {
    const int64_t now_ms = ToUnixMillis(now);
    const std::string in = "(" + Placeholders(PaddedCount(ids.size())) + ")";
    // Lock the rows that are still claimable. The SELECT comes first (not an UPDATE
    // then a SELECT) because LeasedItem.deliver_after is the pre-claim due time,
    // which the UPDATE overwrites. Under READ COMMITTED rows that fail the WHERE are
    // not kept locked.
    sql::PreparedStatement& sel = Stmt(
        "SELECT id, ns, topic, priority, deliver_after, lease_ms, attempts, enqueued_at, "
        "payload, metadata FROM items WHERE id IN " +
        in + " AND state = 1 AND (expires_at IS NULL OR expires_at > ?) FOR UPDATE");
    unsigned p = BindIds(sel, 1, ids);
    sel.setInt64(p, now_ms);
    std::vector<LeasedItem> out;
    std::vector<uint64_t> locked;
    {
      std::unique_ptr<sql::ResultSet> rs(sel.executeQuery());
      while (rs->next()) {
        LeasedItem item;
        item.row = RowId(rs->getUInt64(1));
        item.ns = Str(*rs, 2);
        item.topic = Str(*rs, 3);
        item.priority = rs->getInt(4);
        item.deliver_after = FromUnixMillis(rs->getInt64(5));
        item.lease_deadline = now + Duration(rs->getUInt(6));
        item.attempts = rs->getUInt(7) + 1;
        item.enqueued_at = FromUnixMillis(rs->getInt64(8));
        item.payload = Str(*rs, 9);
        item.metadata = Str(*rs, 10);
        item.token = token;
        locked.push_back(item.row.value());
        out.push_back(std::move(item));
      }
    }
    if (!locked.empty()) {
      const std::string lin = "(" + Placeholders(PaddedCount(locked.size())) + ")";
      sql::PreparedStatement& upd = Stmt(
          "UPDATE items SET state = 2, lease_token = ?, deliver_after = ? + lease_ms, "
          "attempts = attempts + 1 WHERE id IN " +
          lin);
      upd.setUInt64(1, token.value());
      upd.setInt64(2, now_ms);
      BindIds(upd, 3, locked);
      int changed = upd.executeUpdate();
      if (changed != static_cast<int>(locked.size())) {
        Rollback();
        return Status::Internal("claim: locked " + std::to_string(locked.size()) +
                                " rows but updated " + std::to_string(changed));
      }
    }
    Commit();
    return out;
  });
}

Result<std::vector<ItemOutcome>> MySqlShardStore::Ack(std::span<const AckRequest> acks) {
  using R = Result<std::vector<ItemOutcome>>;
  if (acks.empty()) return std::vector<ItemOutcome>{};
  return Run<R>("ack", [&]() -> R {
    // Token 0 is "never leased": it must never match, so it is not sent to the DELETE.
    std::vector<const AckRequest*> live;
    for (const AckRequest& a : acks) {
      if (a.token.value() != 0) live.push_back(&a);
    }
    // (row, token) -> transition of the deleted row, consumed by the first request.
    std::map<std::pair<uint64_t, uint64_t>, ItemTransition> deleted;
    if (!live.empty()) {
      const size_t padded = PaddedCount(live.size());
      std::string sql = "DELETE FROM items WHERE ";
      for (size_t i = 0; i < padded; ++i) {
        sql +=
            i == 0 ? "(id = ? AND lease_token = ?)" : " OR (id = ? AND lease_token = ?)";
      }
      sql += " RETURNING id, ns, topic, priority, state, deliver_after, lease_token";
      sql::PreparedStatement& st = Stmt(sql);
      for (size_t i = 0; i < padded; ++i) {
        const AckRequest& a = *live[std::min(i, live.size() - 1)];
        st.setUInt64(static_cast<unsigned>(2 * i + 1), a.row.value());
        st.setUInt64(static_cast<unsigned>(2 * i + 2), a.token.value());
      }
      std::unique_ptr<sql::ResultSet> rs(st.executeQuery());
      while (rs->next()) {
        ItemTransition t = TransitionFromRow(*rs, ItemState::kGone);
        deleted.emplace(std::make_pair(t.row.value(), rs->getUInt64(7)), std::move(t));
      }
    }
    std::vector<ItemOutcome> out(acks.size());
    std::vector<uint64_t> unresolved;
    for (size_t i = 0; i < acks.size(); ++i) {
      auto it = deleted.find({acks[i].row.value(), acks[i].token.value()});
      if (it != deleted.end()) {
        out[i].transition = std::move(it->second);
        deleted.erase(it);
      } else {
        unresolved.push_back(acks[i].row.value());
      }
    }
    if (!unresolved.empty()) {
      // Not deleted: either gone already (acks are idempotent) or another token.
      std::vector<uint64_t> ids = UniqueIds(unresolved);
      sql::PreparedStatement& st = Stmt("SELECT id FROM items WHERE id IN (" +
                                        Placeholders(PaddedCount(ids.size())) + ")");
      BindIds(st, 1, ids);
      std::set<uint64_t> present;
      {
        std::unique_ptr<sql::ResultSet> rs(st.executeQuery());
        while (rs->next()) present.insert(rs->getUInt64(1));
      }
      for (size_t i = 0; i < acks.size(); ++i) {
        if (!out[i].transition && present.count(acks[i].row.value())) {
          out[i].status = Status::FailedPrecondition("ack of row " +
                                                     std::to_string(acks[i].row.value()) +
                                                     ": stale lease token");
        }
      }
    }
    Commit();
    return out;
  });
}

namespace {

// The fields of a row that Nack and Extend classify in memory.
struct LockedRow {
  std::string ns;
  std::string topic;
  int32_t priority = 0;
  int state = 0;
  uint64_t token = 0;
  int64_t deliver_after = 0;
};

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

// Locks the rows of `ids` and reads what Nack/Extend classify.
std::map<uint64_t, LockedRow> LockRows(sql::PreparedStatement& st,
                                       const std::vector<uint64_t>& ids) {
  BindIds(st, 1, ids);
  std::map<uint64_t, LockedRow> rows;
  std::unique_ptr<sql::ResultSet> rs(st.executeQuery());
  while (rs->next()) {
    LockedRow& r = rows[rs->getUInt64(1)];
    r.ns = Str(*rs, 2);
    r.topic = Str(*rs, 3);
    r.priority = rs->getInt(4);
    r.state = static_cast<int>(rs->getUInt(5));
    r.token = rs->getUInt64(6);
    r.deliver_after = rs->getInt64(7);
  }
  return rows;
}

}  // namespace

Result<std::vector<ItemOutcome>> MySqlShardStore::Nack(std::span<const NackRequest> nacks,
                                                       Time now) {
  using R = Result<std::vector<ItemOutcome>>;
  for (const NackRequest& n : nacks) {
    if (n.metadata) SHARDQ_RETURN_IF_ERROR(ValidateMetadata(*n.metadata));
  }
  if (nacks.empty()) return std::vector<ItemOutcome>{};
  return Run<R>("nack", [&]() -> R {
    std::vector<uint64_t> ids;
    for (const NackRequest& n : nacks) ids.push_back(n.row.value());
    ids = UniqueIds(std::move(ids));
    std::map<uint64_t, LockedRow> rows =
        LockRows(Stmt("SELECT id, ns, topic, priority, state, lease_token, deliver_after "
                      "FROM items "
                      "WHERE id IN (" +
                      Placeholders(PaddedCount(ids.size())) + ") FOR UPDATE"),
                 ids);
    std::vector<ItemOutcome> out(nacks.size());
    for (size_t i = 0; i < nacks.size(); ++i) {
      const NackRequest& n = nacks[i];
      out[i].status = CheckLease("nack", n.row.value(), n.token.value(), rows);
      if (!out[i].status.ok()) continue;
      LockedRow& r = rows[n.row.value()];
      const Time due = now + std::max(n.delay, Duration(0));
      const ItemState to = due <= now ? ItemState::kReady : ItemState::kDelayed;
      sql::PreparedStatement& st =
          n.metadata ? Stmt(
                           "UPDATE items SET state = ?, deliver_after = ?, metadata = ? "
                           "WHERE id = ?")
                     : Stmt("UPDATE items SET state = ?, deliver_after = ? WHERE id = ?");
      unsigned p = 1;
      st.setInt(p++, static_cast<int>(to));
      st.setInt64(p++, ToUnixMillis(due));
      if (n.metadata) st.setString(p++, *n.metadata);
      st.setUInt64(p++, n.row.value());
      st.executeUpdate();
      // Later requests for the same row in this batch see the new state.
      r.state = static_cast<int>(to);
      r.deliver_after = ToUnixMillis(due);
      out[i].transition =
          ItemTransition{n.row, r.ns, r.topic, r.priority, ItemState::kLeased, to, due};
    }
    Commit();
    return out;
  });
}

Result<std::vector<ItemOutcome>> MySqlShardStore::Extend(
    std::span<const ExtendRequest> reqs, Time now) {
  using R = Result<std::vector<ItemOutcome>>;
  if (reqs.empty()) return std::vector<ItemOutcome>{};
  return Run<R>("extend", [&]() -> R {
    std::vector<uint64_t> ids;
    for (const ExtendRequest& e : reqs) ids.push_back(e.row.value());
    ids = UniqueIds(std::move(ids));
    std::map<uint64_t, LockedRow> rows =
        LockRows(Stmt("SELECT id, ns, topic, priority, state, lease_token, deliver_after "
                      "FROM items "
                      "WHERE id IN (" +
                      Placeholders(PaddedCount(ids.size())) + ") FOR UPDATE"),
                 ids);
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
      sql::PreparedStatement& st =
          Stmt("UPDATE items SET deliver_after = ? WHERE id = ?");
      st.setInt64(1, ToUnixMillis(deadline));
      st.setUInt64(2, e.row.value());
      st.executeUpdate();
      r.deliver_after = ToUnixMillis(deadline);
      out[i].new_deadline = deadline;
    }
    Commit();
    return out;
  });
}

Result<std::vector<ItemTransition>> MySqlShardStore::PromoteDue(Time now, size_t limit) {
  using R = Result<std::vector<ItemTransition>>;
  if (limit == 0) return std::vector<ItemTransition>{};
  return Run<R>("promote_due", [&]() -> R {
    // One index range of `due` per state, merged: earliest first overall.
    sql::PreparedStatement& sel = Stmt(
        "SELECT id, ns, topic, priority, state, deliver_after FROM items WHERE state = ? "
        "AND "
        "deliver_after <= ? ORDER BY deliver_after, id LIMIT ? FOR UPDATE");
    std::vector<ItemTransition> due;
    for (int state : {kDelayed, kLeased}) {
      sel.setInt(1, state);
      sel.setInt64(2, ToUnixMillis(now));
      sel.setUInt64(3, limit);
      std::unique_ptr<sql::ResultSet> rs(sel.executeQuery());
      while (rs->next()) due.push_back(TransitionFromRow(*rs, ItemState::kReady));
    }
    std::sort(
        due.begin(), due.end(), [](const ItemTransition& a, const ItemTransition& b) {
          return std::tie(a.deliver_after, a.row) < std::tie(b.deliver_after, b.row);
        });
    if (due.size() > limit) due.resize(limit);
    if (!due.empty()) {
      std::vector<uint64_t> ids;
      for (const ItemTransition& t : due) ids.push_back(t.row.value());
      // deliver_after stays: for READY it is the time the item became due. The lease
      // token stays too, so a late ack of an expired lease still matches.
      sql::PreparedStatement& upd = Stmt("UPDATE items SET state = 1 WHERE id IN (" +
                                         Placeholders(PaddedCount(ids.size())) + ")");
      BindIds(upd, 1, ids);
      upd.executeUpdate();
    }
    Commit();
    return due;
  });
}

Result<std::vector<ItemTransition>> MySqlShardStore::PurgeExpired(Time now,
                                                                  size_t limit) {
  using R = Result<std::vector<ItemTransition>>;
  if (limit == 0) return std::vector<ItemTransition>{};
  return Run<R>("purge_expired", [&]() -> R {
    // One statement on the `expiry` index.
    sql::PreparedStatement& st = Stmt(
        "DELETE FROM items WHERE expires_at <= ? ORDER BY expires_at, id LIMIT ? "
        "RETURNING id, ns, topic, priority, state, deliver_after");
    st.setInt64(1, ToUnixMillis(now));
    st.setUInt64(2, limit);
    std::vector<ItemTransition> out;
    {
      std::unique_ptr<sql::ResultSet> rs(st.executeQuery());
      while (rs->next()) out.push_back(TransitionFromRow(*rs, ItemState::kGone));
    }
    Commit();
    return out;
  });
}

Result<std::optional<Time>> MySqlShardStore::NextDue() {
  using R = Result<std::optional<Time>>;
  return Run<R>("next_due", [&]() -> R {
    // Two MIN()s that the optimizer answers from the ends of the `due` index.
    sql::PreparedStatement& st = Stmt(
        "SELECT (SELECT MIN(deliver_after) FROM items WHERE state = 0), "
        "(SELECT MIN(deliver_after) FROM items WHERE state = 2)");
    std::optional<Time> next;
    {
      std::unique_ptr<sql::ResultSet> rs(st.executeQuery());
      if (rs->next()) {
        for (uint32_t col : {1u, 2u}) {
          int64_t v = rs->getInt64(col);
          if (rs->wasNull()) continue;
          if (!next || FromUnixMillis(v) < *next) next = FromUnixMillis(v);
        }
      }
    }
    Commit();
    return next;
  });
}

Result<std::vector<TopicCounts>> MySqlShardStore::CountByTopic() {
  using R = Result<std::vector<TopicCounts>>;
  return Run<R>("count_by_topic", [&]() -> R {
    sql::PreparedStatement& st = Stmt(
        "SELECT ns, topic, state, COUNT(*) FROM items GROUP BY ns, topic, state "
        "ORDER BY ns, topic, state");
    std::vector<TopicCounts> out;
    {
      std::unique_ptr<sql::ResultSet> rs(st.executeQuery());
      while (rs->next()) {
        std::string ns = Str(*rs, 1);
        std::string topic = Str(*rs, 2);
        if (out.empty() || out.back().ns != ns || out.back().topic != topic) {
          out.push_back(TopicCounts{std::move(ns), std::move(topic)});
        }
        const uint64_t n = rs->getUInt64(4);
        switch (static_cast<int>(rs->getUInt(3))) {
          case kDelayed:
            out.back().delayed += n;
            break;
          case kReady:
            out.back().ready += n;
            break;
          case kLeased:
            out.back().leased += n;
            break;
          default:
            break;
        }
      }
    }
    Commit();
    return out;
  });
}

}  // namespace shardq::store
