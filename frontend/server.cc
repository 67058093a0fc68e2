#include "frontend/server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/resource_quota.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_builder.h>
#include <spdlog/spdlog.h>

#include <map>

#include "frontend/executor_warmup.h"
#include "shardq/v1/keepalive.h"
#include "shardq/v1/message_limits.h"

namespace shardq::frontend {

Result<std::unique_ptr<Server>> Server::Start(const ServerConfig& config, Clock& clock,
                                              Limits limits) {
  SHARDQ_RETURN_IF_ERROR(ValidateConfig(config));
  std::map<std::string, store::MysqlEndpoint> endpoints;
  for (const auto& s : config.mysql_servers) endpoints[s.name] = s.endpoint;
  std::vector<engine::ShardSpec> shards;
  for (const auto& s : config.shards) {
    shards.push_back({s.id, std::make_unique<store::MySqlShardStore>(
                                endpoints.at(s.server), s.database)});
  }
  engine::EngineOptions options;
  options.io_threads = config.io_threads;
  options.window_capacity = config.window_capacity;
  options.worker.lookahead = Duration(config.delay_lookahead_ms);
  options.worker.release_gap = Duration(config.delay_release_gap_ms);
  options.worker.max_release_lead = Duration(config.delay_release_max_lead_ms);
  options.policies = config.policies;
  options.max_buffered_enqueue_bytes = config.max_buffered_enqueue_mb << 20;

  std::unique_ptr<Server> server(new Server());
  Server* raw = server.get();  // outlives the engine (Shutdown resets it first)
  options.on_readiness = [raw](bool ready) { raw->SetReady(ready); };
  server->engine_ = std::make_unique<engine::Engine>(std::move(shards), clock, options);
  server->engine_->Start();
  server->service_ = std::make_unique<QueueService>(*server->engine_, clock, limits);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(config.listen, grpc::InsecureServerCredentials(),
                           &server->port_);
  builder.RegisterService(server->service_.get());
  // Reflection (for operators' tools such as grpcurl) is a synchronous service in
  // gRPC 1.51: each open stream of it holds a thread of the sync server's pool, which
  // grows without bound unless a quota caps it (guarantee 6). Past the cap a call is
  // answered RESOURCE_EXHAUSTED. The queue's service and health are callback ones and
  // take no thread of that pool.
  grpc::ResourceQuota quota("shardqd");
  quota.SetMaxThreads(kMaxSyncServerThreads);
  builder.SetResourceQuota(quota);
  // 1000 items of 10 KiB fit; larger calls get RESOURCE_EXHAUSTED from gRPC itself.
  builder.SetMaxReceiveMessageSize(v1::kMaxMessageBytes);
  builder.SetMaxSendMessageSize(v1::kMaxMessageBytes);
  // Pings find a client that vanished without a TCP reset within a minute or so, and
  // end its streams (its parked calls answer, their leases go back); the SDK's own
  // pings are accepted (shardq/v1/keepalive.h).
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, v1::kServerPingIntervalMs);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, v1::kPingTimeoutMs);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
                             v1::kServerMinPingIntervalMs);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);  // no cap
  server->grpc_ = builder.BuildAndStart();
  if (!server->grpc_ || server->port_ == 0) {
    return Status::Unavailable("cannot listen on " + config.listen);
  }
  if (!config.metrics_listen.empty()) {
    Server* raw_server = server.get();
    auto metrics = MetricsServer::Start(config.metrics_listen, [raw_server] {
      return RenderMetrics(*raw_server->engine_, *raw_server->service_);
    });
    if (!metrics.ok()) return metrics.status();
    server->metrics_ = std::move(*metrics);
  }
  {
    // What the engine reported so far (it reports each change, from "not ready").
    std::lock_guard lock(server->health_mu_);
    server->health_ = server->grpc_->GetHealthCheckService();
    server->ApplyHealthLocked();
  }
  // Only now that the server holds gRPC up: with no gRPC object alive, gRPC shuts
  // down, its executor included, and a later object starts a fresh one-thread pool.
  const ExecutorWarmup warmup = GrowGrpcExecutor();
  // Short of the bound, the thread count will still grow with the load: worth a warning.
  const auto level =
      warmup.threads < GrpcExecutorBound() ? spdlog::level::warn : spdlog::level::info;
  spdlog::log(level,
              "shardq listening on port {} with {} shards, {} I/O threads; gRPC's "
              "default executor has {} of its {} threads{}",
              server->port_, config.shards.size(), config.io_threads, warmup.threads,
              GrpcExecutorBound(), warmup.timed_out ? " (its warm-up timed out)" : "");
  return server;
}

void Server::SetReady(bool ready) {
  std::lock_guard lock(health_mu_);
  ready_ = ready;
  if (health_ != nullptr) ApplyHealthLocked();
}

void Server::ApplyHealthLocked() {
  health_->SetServingStatus("", ready_);
  health_->SetServingStatus(std::string(v1::Queue::service_full_name()), ready_);
}

Server::~Server() { Shutdown(); }

void Server::Shutdown() {
  if (shut_down_) return;
  shut_down_ = true;
  metrics_.reset();  // its scrapes read the engine
  // Parked long polls answer now, so the gRPC shutdown below does not wait on them.
  engine_->Shutdown();
  // Null when Start failed to listen.
  if (grpc_) grpc_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  engine_.reset();
}

}  // namespace shardq::frontend
