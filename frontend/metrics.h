#pragma once
// Prometheus metrics: GET /metrics on an HTTP port of their own (config
// `metrics_listen`, flag --metrics-listen; off when empty), in the text exposition
// format. What an operator alerts on: readiness, each shard's state and breaker,
// items by namespace and state, parked long polls, enqueue bytes held, and the
// counters of cut streams and leases given back. A scrape reads memory only (the
// engine's index and counters), never MySQL; per-topic counts are GetActiveTopics'.
//
// Threads: when enabled, two of its own, named "shardq-metrics" (the listener and
// the one thread that answers requests, one at a time); their number does not depend
// on shards, topics or clients.

#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "common/status.h"
#include "engine/engine.h"

namespace httplib {
class Server;
}

namespace shardq::frontend {

class QueueService;

// The metrics page.
std::string RenderMetrics(const engine::Engine& engine, const QueueService& service);

class MetricsServer {
 public:
  // Listens at `listen` ("host:port", port 0 = a free one) and answers GET /metrics
  // with `render()`, which runs on the server's request thread.
  static Result<std::unique_ptr<MetricsServer>> Start(
      const std::string& listen, std::function<std::string()> render);
  // Stops listening, and returns once its threads have ended.
  ~MetricsServer();
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  int port() const { return port_; }

 private:
  MetricsServer() = default;
  std::unique_ptr<httplib::Server> http_;
  std::thread listener_;
  int port_ = 0;
};

}  // namespace shardq::frontend
