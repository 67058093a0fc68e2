#pragma once
// Prometheus metrics: GET /metrics on an HTTP port of their own (config
// `metrics_listen`, flag --metrics-listen; off when empty), in the text exposition
// format. What an operator alerts on: readiness, each shard's state and breaker,
// items by namespace and state, parked long polls, enqueue bytes held, the
// counters of cut streams and leases given back, and each shard's counters (items
// stored, leased, acked, nacked; failed store calls; store call times, as a
// histogram). A scrape reads memory only (the engine's index and counters), never
// MySQL; per-topic counts are GetActiveTopics'.
//
// The listener is a small HTTP/1.0 responder of its own, not a web server: one
// connection at a time, each with one deadline for the whole exchange (rendering and
// sending the page included: a page too large to send in time is cut short) and a
// bounded request, then closed. So a client that connects and sends nothing, or trickles
// its request, holds it for one deadline at most, others wait in the kernel's
// bounded accept backlog, and neither memory nor descriptors grow with clients.
// Not authenticated: bind it to a private address.
//
// Threads: one of its own when enabled, named "shardq-metrics"; it does not depend
// on shards, topics or clients.

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <utility>

#include "common/status.h"
#include "engine/engine.h"

namespace shardq::frontend {

class QueueService;

// The metrics page.
std::string RenderMetrics(const engine::Engine& engine, const QueueService& service);

// "host:port" (an IPv6 host in brackets: "[::1]:9464"; port 0 = a free one).
Result<std::pair<std::string, int>> ParseHostPort(const std::string& address);

class MetricsServer {
 public:
  // Listens at `listen` and answers GET /metrics with `render()`, which runs on the
  // server's thread. `deadline`: how long one connection may take, in all.
  static Result<std::unique_ptr<MetricsServer>> Start(
      const std::string& listen, std::function<std::string()> render,
      std::chrono::milliseconds deadline = std::chrono::seconds(2));
  // Stops at once (a connection being served is closed), and joins the thread.
  ~MetricsServer();
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  int port() const { return port_; }

  // The largest request read; a longer one is answered 431 and closed.
  static constexpr size_t kMaxRequestBytes = 8192;

 private:
  MetricsServer() = default;
  void Run();
  void Serve(int fd);
  // Waits up to `ms` for the stop; true if it came (a pause that ends at the stop).
  bool StopWithin(int ms) const;
  std::function<std::string()> render_;
  std::chrono::milliseconds deadline_{};
  int listen_fd_ = -1;
  int wake_[2] = {-1, -1};  // a byte on wake_[1] stops the thread
  std::thread thread_;
  int port_ = 0;
};

}  // namespace shardq::frontend
