#pragma once
// Server configuration: where the MySQL servers are and which shard databases live on
// each. Shard ids are stable: an id names one database for ever (item ids carry it).
//
// JSON form (see docs/config.example.json):
//   {"listen": "127.0.0.1:50051", "metrics_listen": "127.0.0.1:9464",
//    "io_threads": 8, "window_capacity": 512,
//    "delay_lookahead_ms": 100, "delay_release_gap_ms": 5,
//    "delay_release_max_lead_ms": 10, "max_buffered_enqueue_mb": 256,
//    "mysql_servers": [{"name": "a", "socket": "/run/a.sock"},
//                      {"name": "b", "host": "10.0.0.2", "port": 3306,
//                       "user": "shardq", "password": "..."}],
//    "shards": [{"id": 0, "server": "a", "database": "shardq_0"}, ...],
//    "namespace_defaults": {"max_attempts": 5, "retention_ms": 604800000},
//    "namespaces": {"billing": {"max_attempts": 20},
//                   "crawler": {"enqueue_rate": 2000, "enqueue_burst": 10000}}}

#include <string>
#include <vector>

#include "common/ids.h"
#include "common/namespace_policy.h"
#include "common/status.h"
#include "engine/engine.h"
#include "store/mysql_store.h"

namespace shardq::frontend {

struct MysqlServerConfig {
  std::string name;
  store::MysqlEndpoint endpoint;
};

struct ShardConfig {
  ShardId id;
  std::string server;  // a MysqlServerConfig name
  std::string database;
};

namespace detail {
// The engine's own defaults: the settings below that map onto engine::EngineOptions
// start from them, so a default is changed in one place.
inline const engine::EngineOptions& EngineDefaults() {
  static const engine::EngineOptions defaults;
  return defaults;
}
}  // namespace detail

struct ServerConfig {
  std::string listen = "127.0.0.1:50051";
  // Prometheus metrics (frontend/metrics.h): "host:port" of their HTTP listener;
  // empty = none. Bind it to a private address: it is not authenticated.
  std::string metrics_listen;
  size_t io_threads = detail::EngineDefaults().io_threads;
  size_t window_capacity = detail::EngineDefaults().window_capacity;
  // How far ahead each shard reads delayed items, to release them into the index at
  // their due time (shard_worker/release_schedule.h); 0 = only promotions do.
  int64_t delay_lookahead_ms = detail::EngineDefaults().worker.lookahead.count();
  // At most one such release per shard per gap: under load the items falling due
  // meanwhile go out together, in fewer and bigger claims.
  int64_t delay_release_gap_ms = detail::EngineDefaults().worker.release_gap.count();
  // Each release comes up to this long before its items' due time (at most half the
  // lookahead), by the shard's recent claim latency: their claims commit meanwhile,
  // leases that start at the due time, and the dequeues answer then, so a claim's
  // transaction no longer makes items late.
  int64_t delay_release_max_lead_ms =
      detail::EngineDefaults().worker.max_release_lead.count();
  // MiB of enqueued items held before they commit, over all shards: past it,
  // enqueues are answered RESOURCE_EXHAUSTED (engine::EngineOptions).
  size_t max_buffered_enqueue_mb =
      detail::EngineDefaults().max_buffered_enqueue_bytes >> 20;
  std::vector<MysqlServerConfig> mysql_servers;
  std::vector<ShardConfig> shards;
  // Task lifecycle settings per namespace (max attempts, retention).
  NamespacePolicies policies;
};

Result<ServerConfig> ParseConfig(const std::string& json_text);
Result<ServerConfig> LoadConfig(const std::string& path);
// The embedded default: `shards` databases shardq_0.. on one MariaDB socket.
ServerConfig EmbeddedConfig(const std::string& socket, size_t shards);
// Checks ids unique, servers known, database names [A-Za-z0-9_]{1,64}.
Status ValidateConfig(const ServerConfig& config);

}  // namespace shardq::frontend
