#pragma once
// A thin client for MariaDB/MySQL over the MariaDB C API (libmariadb): a connection,
// prepared statements on the binary protocol, and their buffered result rows. It is
// what MySqlShardStore talks to MySQL with.
//
// Why not Connector/C++: its PreparedStatement copies every string parameter into a
// std::map of owned strings and frees them again on each execute (perf: about half of
// shardqd's CPU in a bulk enqueue went to the driver and malloc). Here a statement
// keeps its parameters in one reused byte arena and one reused bind array, so binding
// a row allocates nothing once the statement is warm.
//
// Errors are thrown as DbError (server or client error code, SQLSTATE, message); the
// store turns them into Status values at its boundary. Not thread-safe: one
// connection and its statements belong to one thread at a time.

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

struct st_mysql;
struct st_mysql_stmt;
struct st_mysql_bind;

namespace shardq::store {

class DbError : public std::runtime_error {
 public:
  DbError(int code, std::string sqlstate, const std::string& message)
      : std::runtime_error(message), code_(code), sqlstate_(std::move(sqlstate)) {}
  // The server's error number (e.g. 1062 duplicate key) or the client's (2006, 2013:
  // the connection is gone); 0 for a misuse of this API.
  int code() const { return code_; }
  const std::string& sqlstate() const { return sqlstate_; }

 private:
  int code_;
  std::string sqlstate_;
};

struct DbEndpoint {
  std::string socket;  // unix socket path; when set, host and port are ignored
  std::string host = "127.0.0.1";
  int port = 3306;
  std::string user = "root";
  std::string password;
  int connect_timeout_s = 5;
  int read_timeout_s = 30;
  int write_timeout_s = 30;
};

class DbStatement;

// The rows of one executed statement, buffered on the client (so another statement
// may run while they are read). Valid until the statement runs again or is released.
// Columns are numbered from 1, as in SQL. A NULL reads as 0 or "" and sets WasNull().
class DbRows {
 public:
  DbRows();
  ~DbRows();
  DbRows(const DbRows&) = delete;
  DbRows& operator=(const DbRows&) = delete;

  bool Next();
  int64_t GetInt64(unsigned col) const;
  uint64_t GetUInt64(unsigned col) const;
  int32_t GetInt(unsigned col) const { return static_cast<int32_t>(GetInt64(col)); }
  uint32_t GetUInt(unsigned col) const { return static_cast<uint32_t>(GetUInt64(col)); }
  std::string GetString(unsigned col) const;
  // Whether the last column read was NULL.
  bool WasNull() const { return was_null_; }

 private:
  friend class DbStatement;
  struct Column;
  const Column& At(unsigned col) const;

  st_mysql_stmt* stmt_ = nullptr;
  std::vector<Column> columns_;
  std::vector<st_mysql_bind> binds_;
  mutable bool was_null_ = false;
};

// A prepared statement. Parameters are numbered from 1 and each must be set before
// Execute*; values are copied into the statement's arena, so the caller's strings
// need not outlive the call.
class DbStatement {
 public:
  ~DbStatement();
  DbStatement(const DbStatement&) = delete;
  DbStatement& operator=(const DbStatement&) = delete;

  void SetInt64(unsigned param, int64_t v);
  void SetUInt64(unsigned param, uint64_t v);
  void SetInt(unsigned param, int32_t v) { SetInt64(param, v); }
  void SetUInt(unsigned param, uint32_t v) { SetUInt64(param, v); }
  // Any bytes, NULs included (the session is SET NAMES binary).
  void SetString(unsigned param, std::string_view v);
  void SetNull(unsigned param);

  // Runs the statement; returns the rows it changed.
  uint64_t ExecuteUpdate();
  // Runs a statement that returns rows (SELECT, ... RETURNING).
  DbRows& ExecuteQuery();
  // Drops the bound values and buffered rows, keeping modest buffers for reuse.
  void Release();

 private:
  friend class DbConnection;
  DbStatement(st_mysql_stmt* stmt, std::string sql);
  struct Param;
  Param& At(unsigned param);
  void Run();
  [[noreturn]] void Fail(const char* what) const;

  st_mysql_stmt* stmt_;
  const std::string sql_;
  std::vector<Param> params_;
  std::vector<st_mysql_bind> binds_;
  std::string arena_;  // the string parameters' bytes, back to back
  DbRows rows_;
  bool has_result_ = false;
};

class DbConnection {
 public:
  // Connects (throws DbError). No automatic reconnect: a lost connection stays lost,
  // and the owner decides when to open a new one (a silent reconnect would drop the
  // session's settings and its open transaction).
  explicit DbConnection(const DbEndpoint& ep);
  ~DbConnection();
  DbConnection(const DbConnection&) = delete;
  DbConnection& operator=(const DbConnection&) = delete;

  // Runs SQL text on the plain protocol, discarding any rows (SET, DDL, COMMIT).
  void Execute(std::string_view sql);
  std::unique_ptr<DbStatement> Prepare(const std::string& sql);
  // A round trip to the server; false if the connection is gone.
  bool Ping();

 private:
  [[noreturn]] void Fail(const char* what) const;
  st_mysql* mysql_;
};

}  // namespace shardq::store
