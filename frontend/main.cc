// shardqd: the shardq server.
//
//   shardqd --config shardq.json
//   shardqd --mysql-socket /tmp/shardq/mysql.sock --shards 4 --listen 127.0.0.1:50051
//
// Start-up is recovery: it opens every shard, applies schema migrations, and rebuilds
// its in-memory index from MySQL. There is no separate recovery mode.

#include <absl/synchronization/mutex.h>
#include <signal.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <fstream>

#include "common/clock.h"
#include "frontend/config.h"
#include "frontend/server.h"

int main(int argc, char** argv) {
  // Debian's Abseil is built without NDEBUG, so every absl::Mutex (gRPC's locks) runs
  // the debug deadlock detector: a global graph under a global lock, 2-3 % of the
  // server's CPU in perf. Production servers do not pay for a debug check.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  CLI::App app{"shardqd: durable priority queue on sharded MySQL"};
  std::string config_path, socket, listen = "127.0.0.1:50051";
  std::string port_file;
  size_t shards = 4, io_threads = 8;
  app.add_option("--config", config_path,
                 "JSON config file (see docs/config.example.json)");
  app.add_option("--mysql-socket", socket, "embedded default: one MariaDB socket");
  app.add_option("--shards", shards, "embedded default: shard databases on that socket");
  app.add_option("--listen", listen, "gRPC address (overrides the config)");
  std::string metrics_listen;
  app.add_option("--metrics-listen", metrics_listen,
                 "Prometheus metrics at http://ADDRESS/metrics, e.g. 127.0.0.1:9464 "
                 "(overrides the config; empty = off)");
  app.add_option("--io-threads", io_threads,
                 "threads for MySQL I/O (all shards share them)");
  int64_t retention_ms = -1;
  app.add_option("--retention-ms", retention_ms,
                 "embedded default: how long finished tasks are kept (0 = none: an ack "
                 "deletes the task)")
      ->check(CLI::Range(int64_t{0}, int64_t{366LL * 24 * 3600 * 1000}));
  int64_t lookahead_ms = -1;
  app.add_option("--delay-lookahead-ms", lookahead_ms,
                 "how far ahead delayed items are read, to be released on time (0 = "
                 "off; overrides the config)")
      ->check(CLI::Range(int64_t{0}, int64_t{60'000}));
  int64_t release_gap_ms = -1;
  app.add_option("--delay-release-gap-ms", release_gap_ms,
                 "at most one release of due delayed items per shard per this many ms "
                 "(overrides the config)")
      ->check(CLI::Range(int64_t{0}, int64_t{1'000}));
  int64_t max_lead_ms = -1;
  app.add_option("--delay-release-max-lead-ms", max_lead_ms,
                 "release delayed items up to this many ms early (by the recent claim "
                 "latency), to be claimed by their due time (0 = off; overrides the "
                 "config)")
      ->check(CLI::Range(int64_t{0}, int64_t{30'000}));
  app.add_option("--port-file", port_file,
                 "write the bound port here once listening (for --listen host:0)");
  CLI11_PARSE(app, argc, argv);

  shardq::Result<shardq::frontend::ServerConfig> config =
      !config_path.empty() ? shardq::frontend::LoadConfig(config_path)
      : !socket.empty() ? shardq::Result(shardq::frontend::EmbeddedConfig(socket, shards))
                        : shardq::Result<shardq::frontend::ServerConfig>(
                              shardq::Status::InvalidArgument(
                                  "give --config FILE or --mysql-socket PATH"));
  if (!config.ok()) {
    spdlog::error("{}", config.status().ToString());
    return 2;
  }
  if (app.count("--listen") || config_path.empty()) config->listen = listen;
  if (app.count("--metrics-listen")) config->metrics_listen = metrics_listen;
  if (app.count("--io-threads") || config_path.empty()) config->io_threads = io_threads;
  if (lookahead_ms >= 0) config->delay_lookahead_ms = lookahead_ms;
  if (release_gap_ms >= 0) config->delay_release_gap_ms = release_gap_ms;
  if (max_lead_ms >= 0) config->delay_release_max_lead_ms = max_lead_ms;
  if (retention_ms >= 0 && !config_path.empty()) {
    spdlog::error(
        "--retention-ms is for the embedded default; with --config set "
        "namespace_defaults.retention_ms in the file");
    return 2;
  }
  if (retention_ms >= 0) {
    shardq::NamespacePolicy defaults = config->policies.defaults();
    defaults.retention = shardq::Duration(retention_ms);
    config->policies = shardq::NamespacePolicies(defaults, {});
  }

  // Block the stop signals in every thread; this one waits for them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  auto server = shardq::frontend::Server::Start(*config, shardq::SystemClock::Instance());
  if (!server.ok()) {
    spdlog::error("{}", server.status().ToString());
    return 1;
  }
  if (!port_file.empty()) {
    // Written to a temp name and renamed, so a reader never sees a partial file.
    std::string tmp = port_file + ".tmp";
    std::ofstream(tmp) << (*server)->port() << "\n";
    std::rename(tmp.c_str(), port_file.c_str());
  }
  int sig = 0;
  sigwait(&signals, &sig);
  spdlog::info("signal {}: shutting down", sig);
  (*server)->Shutdown();
  return 0;
}
