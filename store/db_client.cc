#include "store/db_client.h"

#include <mysql.h>

#include <algorithm>
#include <charconv>

namespace shardq::store {
namespace {

// A statement's buffers above these sizes are given back after each use; below them
// they are kept, so that a warm statement binds and reads without allocating. (A
// shard caches a statement per multi-row INSERT shape: keeping a 256-row INSERT's
// ~300 KiB of payloads in each would cost tens of MiB over 64 shards, for saving one
// allocation per 256 rows.)
constexpr size_t kKeptArenaBytes = 64 << 10;
constexpr size_t kKeptColumnBytes = 64 << 10;

bool IsIntegerField(enum_field_types t) {
  switch (t) {
    case MYSQL_TYPE_TINY:
    case MYSQL_TYPE_SHORT:
    case MYSQL_TYPE_INT24:
    case MYSQL_TYPE_LONG:
    case MYSQL_TYPE_LONGLONG:
    case MYSQL_TYPE_YEAR:
      return true;
    default:
      return false;
  }
}

template <typename T>
T Parse(const std::string& s) {
  T v = 0;
  std::from_chars(s.data(), s.data() + s.size(), v);  // "12.00" (a DECIMAL) reads 12
  return v;
}

// The library's global state is set up once, before any connection (mysql_init
// would do it lazily, but not thread-safely).
void InitLibraryOnce() {
  static const bool ok = mysql_library_init(0, nullptr, nullptr) == 0;
  if (!ok) throw DbError(2008, "HY000", "mysql_library_init failed");
}

}  // namespace

// One result column: integers arrive as 64-bit values, everything else as bytes.
struct DbRows::Column {
  bool is_int = false;
  bool is_unsigned = false;
  int64_t value = 0;
  std::string bytes;
  unsigned long length = 0;
  my_bool is_null = 0;
  my_bool error = 0;
};

// One parameter's value (strings live in the statement's arena, at `offset`).
struct DbStatement::Param {
  enum class Kind : uint8_t { kUnset, kInt, kString, kNull };
  Kind kind = Kind::kUnset;
  int64_t value = 0;
  size_t offset = 0;
  unsigned long length = 0;
};

DbRows::DbRows() = default;
DbRows::~DbRows() = default;

bool DbRows::Next() {
  if (!stmt_ || columns_.empty()) return false;
  const int r = mysql_stmt_fetch(stmt_);
  if (r == 0) return true;
  if (r == MYSQL_NO_DATA) return false;
  if (r == MYSQL_DATA_TRUNCATED) {
    // Buffers are sized by the result's max_length, so this is a bug, not bad data.
    throw DbError(0, "HY000", "fetch: a column did not fit its buffer");
  }
  throw DbError(static_cast<int>(mysql_stmt_errno(stmt_)), mysql_stmt_sqlstate(stmt_),
                std::string("fetch: ") + mysql_stmt_error(stmt_));
}

const DbRows::Column& DbRows::At(unsigned col) const {
  if (col < 1 || col > columns_.size()) {
    throw DbError(0, "HY000", "no column " + std::to_string(col));
  }
  const Column& c = columns_[col - 1];
  was_null_ = c.is_null != 0;
  return c;
}

int64_t DbRows::GetInt64(unsigned col) const {
  const Column& c = At(col);
  if (c.is_null) return 0;
  return c.is_int ? c.value : Parse<int64_t>(GetString(col));
}

uint64_t DbRows::GetUInt64(unsigned col) const {
  const Column& c = At(col);
  if (c.is_null) return 0;
  return c.is_int ? static_cast<uint64_t>(c.value) : Parse<uint64_t>(GetString(col));
}

std::string DbRows::GetString(unsigned col) const {
  const Column& c = At(col);
  if (c.is_null) return {};
  if (c.is_int) {
    return c.is_unsigned ? std::to_string(static_cast<uint64_t>(c.value))
                         : std::to_string(c.value);
  }
  return std::string(c.bytes.data(), c.length);
}

DbStatement::DbStatement(st_mysql_stmt* stmt, std::string sql)
    : stmt_(stmt), sql_(std::move(sql)) {
  const size_t n = mysql_stmt_param_count(stmt_);
  params_.resize(n);
  binds_.assign(n, MYSQL_BIND{});  // zeroed: unused fields must be 0
}

DbStatement::~DbStatement() { mysql_stmt_close(stmt_); }

DbStatement::Param& DbStatement::At(unsigned param) {
  if (param < 1 || param > params_.size()) {
    throw DbError(
        0, "HY000",
        "no parameter " + std::to_string(param) + " in: " + sql_.substr(0, 200));
  }
  return params_[param - 1];
}

void DbStatement::SetInt64(unsigned param, int64_t v) {
  Param& p = At(param);
  p.kind = Param::Kind::kInt;
  p.value = v;
  MYSQL_BIND& b = binds_[param - 1];
  b.buffer_type = MYSQL_TYPE_LONGLONG;
  b.buffer = &p.value;
  b.is_unsigned = 0;
}

void DbStatement::SetUInt64(unsigned param, uint64_t v) {
  SetInt64(param, static_cast<int64_t>(v));
  binds_[param - 1].is_unsigned = 1;
}

void DbStatement::SetString(unsigned param, std::string_view v) {
  Param& p = At(param);
  p.kind = Param::Kind::kString;
  p.offset = arena_.size();
  p.length = v.size();
  arena_.append(v);
  MYSQL_BIND& b = binds_[param - 1];
  b.buffer_type = MYSQL_TYPE_STRING;
  b.length = &p.length;  // buffer is set in Run: the arena may still move
}

void DbStatement::SetNull(unsigned param) {
  At(param).kind = Param::Kind::kNull;
  binds_[param - 1].buffer_type = MYSQL_TYPE_NULL;
}

void DbStatement::Run() {
  if (has_result_) {
    mysql_stmt_free_result(stmt_);
    has_result_ = false;
  }
  for (size_t i = 0; i < params_.size(); ++i) {
    const Param& p = params_[i];
    if (p.kind == Param::Kind::kUnset) {
      throw DbError(
          0, "HY000",
          "parameter " + std::to_string(i + 1) + " not set in: " + sql_.substr(0, 200));
    }
    if (p.kind == Param::Kind::kString) {
      binds_[i].buffer = arena_.data() + p.offset;
      binds_[i].buffer_length = p.length;
    }
  }
  if (!params_.empty() && mysql_stmt_bind_param(stmt_, binds_.data())) Fail("bind");
  if (mysql_stmt_execute(stmt_)) Fail("execute");
}

uint64_t DbStatement::ExecuteUpdate() {
  Run();
  if (mysql_stmt_field_count(stmt_) > 0) {
    // Rows nobody asked for (a RETURNING run for its effect): read and drop them.
    if (mysql_stmt_store_result(stmt_)) Fail("store result");
    has_result_ = true;
  }
  return mysql_stmt_affected_rows(stmt_);
}

DbRows& DbStatement::ExecuteQuery() {
  Run();
  rows_.stmt_ = stmt_;
  const unsigned n = mysql_stmt_field_count(stmt_);
  rows_.columns_.resize(n);  // kept from the last run: their buffers are warm
  if (n == 0) return rows_;
  if (mysql_stmt_store_result(stmt_)) Fail("store result");
  has_result_ = true;
  MYSQL_RES* meta = mysql_stmt_result_metadata(stmt_);
  if (!meta) Fail("result metadata");
  const MYSQL_FIELD* fields = mysql_fetch_fields(meta);
  rows_.binds_.assign(n, MYSQL_BIND{});
  for (unsigned c = 0; c < n; ++c) {
    DbRows::Column& col = rows_.columns_[c];
    MYSQL_BIND& b = rows_.binds_[c];
    col.is_int = IsIntegerField(fields[c].type);
    col.is_unsigned = (fields[c].flags & UNSIGNED_FLAG) != 0;
    if (col.is_int) {
      b.buffer_type = MYSQL_TYPE_LONGLONG;
      b.buffer = &col.value;
      b.is_unsigned = col.is_unsigned;
    } else {
      // STMT_ATTR_UPDATE_MAX_LENGTH made store_result measure the longest value.
      col.bytes.resize(std::max<size_t>(fields[c].max_length, 1));
      b.buffer_type = MYSQL_TYPE_STRING;
      b.buffer = col.bytes.data();
      b.buffer_length = col.bytes.size();
    }
    b.length = &col.length;
    b.is_null = &col.is_null;
    b.error = &col.error;
  }
  mysql_free_result(meta);
  if (mysql_stmt_bind_result(stmt_, rows_.binds_.data())) Fail("bind result");
  return rows_;
}

void DbStatement::Release() {
  if (has_result_) {
    mysql_stmt_free_result(stmt_);
    has_result_ = false;
  }
  for (Param& p : params_) p.kind = Param::Kind::kUnset;
  arena_.clear();
  if (arena_.capacity() > kKeptArenaBytes) std::string().swap(arena_);
  for (DbRows::Column& c : rows_.columns_) {
    if (c.bytes.capacity() > kKeptColumnBytes) std::string().swap(c.bytes);
  }
  rows_.stmt_ = nullptr;  // no rows until the next run
}

void DbStatement::Fail(const char* what) const {
  throw DbError(static_cast<int>(mysql_stmt_errno(stmt_)), mysql_stmt_sqlstate(stmt_),
                std::string(what) + ": " + mysql_stmt_error(stmt_));
}

DbConnection::DbConnection(const DbEndpoint& ep) {
  InitLibraryOnce();
  mysql_ = mysql_init(nullptr);
  if (!mysql_) throw DbError(2008, "HY000", "connect: out of memory");
  const unsigned connect_s = ep.connect_timeout_s, read_s = ep.read_timeout_s,
                 write_s = ep.write_timeout_s;
  const my_bool reconnect = 0;
  mysql_options(mysql_, MYSQL_OPT_CONNECT_TIMEOUT, &connect_s);
  mysql_options(mysql_, MYSQL_OPT_READ_TIMEOUT, &read_s);
  mysql_options(mysql_, MYSQL_OPT_WRITE_TIMEOUT, &write_s);
  mysql_options(mysql_, MYSQL_OPT_RECONNECT, &reconnect);
  const bool unix_socket = !ep.socket.empty();
  if (!mysql_real_connect(mysql_, unix_socket ? "localhost" : ep.host.c_str(),
                          ep.user.c_str(), ep.password.c_str(), nullptr,
                          unix_socket ? 0 : static_cast<unsigned>(ep.port),
                          unix_socket ? ep.socket.c_str() : nullptr, 0)) {
    DbError e(static_cast<int>(mysql_errno(mysql_)), mysql_sqlstate(mysql_),
              std::string("connect: ") + mysql_error(mysql_));
    mysql_close(mysql_);
    throw e;
  }
}

DbConnection::~DbConnection() { mysql_close(mysql_); }

void DbConnection::Execute(std::string_view sql) {
  if (mysql_real_query(mysql_, sql.data(), sql.size())) Fail("query");
  if (MYSQL_RES* rows = mysql_store_result(mysql_)) {
    mysql_free_result(rows);
  } else if (mysql_field_count(mysql_) != 0) {
    Fail("store result");
  }
}

std::unique_ptr<DbStatement> DbConnection::Prepare(const std::string& sql) {
  MYSQL_STMT* stmt = mysql_stmt_init(mysql_);
  if (!stmt) Fail("prepare");
  if (mysql_stmt_prepare(stmt, sql.data(), sql.size())) {
    DbError e(static_cast<int>(mysql_stmt_errno(stmt)), mysql_stmt_sqlstate(stmt),
              std::string("prepare: ") + mysql_stmt_error(stmt));
    mysql_stmt_close(stmt);
    throw e;
  }
  const my_bool on = 1;
  mysql_stmt_attr_set(stmt, STMT_ATTR_UPDATE_MAX_LENGTH, &on);
  return std::unique_ptr<DbStatement>(new DbStatement(stmt, sql));
}

bool DbConnection::Ping() { return mysql_ping(mysql_) == 0; }

void DbConnection::Fail(const char* what) const {
  throw DbError(static_cast<int>(mysql_errno(mysql_)), mysql_sqlstate(mysql_),
                std::string(what) + ": " + mysql_error(mysql_));
}

}  // namespace shardq::store
