#pragma once
// Server: wires a config into running parts -- one MySQL store per shard, the
// Engine, the gRPC service with health checking and reflection -- and tears them
// down in order. Used by shardqd's main() and, in-process, by the end-to-end tests.

#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/server.h>

#include <memory>
#include <mutex>

#include "common/clock.h"
#include "engine/engine.h"
#include "frontend/config.h"
#include "frontend/metrics.h"
#include "frontend/queue_service.h"

namespace shardq::frontend {

class Server {
 public:
  // Starts listening at config.listen (port 0 picks a free port). Shards that cannot
  // be reached yet are retried in the background; the server still starts.
  static Result<std::unique_ptr<Server>> Start(const ServerConfig& config, Clock& clock,
                                               Limits limits = {});
  ~Server();

  // The cap on gRPC's sync-server thread pool, which only reflection uses: its poller
  // and the streams open at once (3 here; more get RESOURCE_EXHAUSTED).
  static constexpr int kMaxSyncServerThreads = 4;

  int port() const { return port_; }
  // The metrics listener's port; 0 when config.metrics_listen is empty.
  int metrics_port() const { return metrics_ ? metrics_->port() : 0; }
  engine::Engine& engine() { return *engine_; }
  QueueService& service() { return *service_; }
  // Stops taking calls, answers parked long polls, stops the engine.
  void Shutdown();
  void Wait() { grpc_->Wait(); }

 private:
  Server() = default;
  std::unique_ptr<engine::Engine> engine_;
  std::unique_ptr<QueueService> service_;
  // The engine's readiness, as the gRPC health service reports it ("" and
  // shardq.v1.Queue: NOT_SERVING until ready). The engine may report before the gRPC
  // server exists; the status is applied once it does.
  void SetReady(bool ready);
  void ApplyHealthLocked();  // health_mu_ held, health_ set
  std::mutex health_mu_;
  bool ready_ = false;
  grpc::HealthCheckServiceInterface* health_ = nullptr;

  std::unique_ptr<grpc::Server> grpc_;
  int port_ = 0;
  std::unique_ptr<MetricsServer> metrics_;
  bool shut_down_ = false;
};

}  // namespace shardq::frontend
