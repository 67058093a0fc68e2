#pragma once
// The shard schema as numbered migrations, compiled into the binary from the
// NNNN_name.sql files in this directory (see CMakeLists.txt). The store applies the
// ones a shard database has not recorded in its schema_migrations table, in order.

#include <span>
#include <string_view>

namespace shardq::schema {

struct Migration {
  int version;            // NNNN of the file name; strictly increasing
  std::string_view name;  // the file name
  std::string_view sql;   // statements separated by ';' at the end of a line
};

std::span<const Migration> AllMigrations();

// The bookkeeping table, created before any migration runs.
inline constexpr std::string_view kMigrationsTableDdl =
    "CREATE TABLE IF NOT EXISTS schema_migrations ("
    " version INT NOT NULL PRIMARY KEY,"
    " name VARCHAR(255) NOT NULL,"
    " applied_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP"
    ") ENGINE=InnoDB COMMENT='written by the store at start-up: applied migrations'";

}  // namespace shardq::schema
