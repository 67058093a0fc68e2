#include "frontend/metrics.h"

#include <fmt/format.h>
#include <httplib.h>
#include <pthread.h>

#include <atomic>
#include <chrono>
#include <memory>

#include "frontend/queue_service.h"

namespace shardq::frontend {

namespace {

// One metric's HELP and TYPE lines.
void Header(std::string& out, const char* name, const char* type, const char* help) {
  fmt::format_to(std::back_inserter(out), "# HELP {} {}\n# TYPE {} {}\n", name, help,
                 name, type);
}

// A label value, escaped as the exposition format asks (namespaces are validated
// names, but the page must stay parseable whatever it is given).
std::string Escaped(const std::string& value) {
  std::string out;
  for (char c : value) {
    if (c == '\\' || c == '"') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

}  // namespace

std::string RenderMetrics(const engine::Engine& engine, const QueueService& service) {
  std::string out;
  auto line = [&out](std::string_view name, std::string_view labels, auto value) {
    fmt::format_to(std::back_inserter(out), "{}{}{}{} {}\n", name,
                   labels.empty() ? "" : "{", labels, labels.empty() ? "" : "}", value);
  };
  Header(out, "shardq_ready", "gauge",
         "1 while the server takes calls (its gRPC health status is SERVING).");
  line("shardq_ready", "", engine.Ready() ? 1 : 0);

  const auto health = engine.Health();
  Header(out, "shardq_shard_up", "gauge",
         "1 while the shard is open and its breaker lets calls through.");
  for (const auto& h : health) {
    const bool up = h.open && h.breaker != shard_worker::BreakerState::kOpen;
    line("shardq_shard_up", fmt::format("shard=\"{}\"", h.id.value()), up ? 1 : 0);
  }
  Header(out, "shardq_shard_breaker", "gauge",
         "The shard's circuit breaker: 1 for its current state.");
  for (const auto& h : health) {
    for (auto state :
         {shard_worker::BreakerState::kClosed, shard_worker::BreakerState::kOpen,
          shard_worker::BreakerState::kHalfOpen}) {
      line("shardq_shard_breaker",
           fmt::format("shard=\"{}\",state=\"{}\"", h.id.value(),
                       shard_worker::BreakerStateName(state)),
           h.breaker == state ? 1 : 0);
    }
  }
  Header(out, "shardq_shard_release_lead_seconds", "gauge",
         "How long before their due time the shard releases delayed items now.");
  for (const auto& h : health) {
    line("shardq_shard_release_lead_seconds", fmt::format("shard=\"{}\"", h.id.value()),
         std::chrono::duration<double>(h.release_lead).count());
  }

  Header(out, "shardq_items", "gauge",
         "Items by namespace and state (finished ones while they are kept).");
  for (const auto& [ns, c] : engine.NamespaceTotals()) {
    const std::pair<const char*, int64_t> states[] = {
        {"delayed", c.delayed},     {"ready", c.ready},   {"leased", c.leased},
        {"succeeded", c.succeeded}, {"failed", c.failed}, {"dead", c.dead},
        {"cancelled", c.cancelled}};
    for (const auto& [state, n] : states) {
      line("shardq_items",
           fmt::format("namespace=\"{}\",state=\"{}\"", Escaped(ns), state), n);
    }
  }

  Header(out, "shardq_parked_dequeues", "gauge", "Long polls waiting for items.");
  line("shardq_parked_dequeues", "", engine.ParkedCalls());
  Header(
      out, "shardq_buffered_enqueue_bytes", "gauge",
      "Bytes of enqueued items taken and not yet committed (the enqueue budget's use).");
  line("shardq_buffered_enqueue_bytes", "", engine.BufferedEnqueueBytes());
  Header(out, "shardq_indexed_topics", "gauge", "Topics in the in-memory index.");
  line("shardq_indexed_topics", "", engine.IndexedTopics());
  Header(out, "shardq_streams_cut_total", "counter",
         "Streams cancelled because their client left too many answers unread.");
  line("shardq_streams_cut_total", "", service.StreamsCut());
  Header(out, "shardq_leases_given_back_total", "counter",
         "Leases given back because the answer that carried them was never sent.");
  line("shardq_leases_given_back_total", "", service.LeasesGivenBack());
  return out;
}

Result<std::unique_ptr<MetricsServer>> MetricsServer::Start(
    const std::string& listen, std::function<std::string()> render) {
  const size_t colon = listen.rfind(':');
  if (colon == std::string::npos || colon == 0) {
    return Status::InvalidArgument("metrics address is not host:port: " + listen);
  }
  std::string host = listen.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  int port = 0;
  try {
    port = std::stoi(listen.substr(colon + 1));
  } catch (const std::exception&) {
    return Status::InvalidArgument("metrics address has no port: " + listen);
  }
  std::unique_ptr<MetricsServer> server(new MetricsServer());
  server->http_ = std::make_unique<httplib::Server>();
  httplib::Server& http = *server->http_;
  // One request at a time, each short: a scrape reads memory only.
  http.new_task_queue = [] { return new httplib::ThreadPool(1); };
  http.set_keep_alive_max_count(1);
  http.set_read_timeout(std::chrono::seconds(2));
  http.set_write_timeout(std::chrono::seconds(2));
  http.Get("/metrics", [render = std::move(render)](const httplib::Request&,
                                                    httplib::Response& response) {
    response.set_content(render(), "text/plain; version=0.0.4; charset=utf-8");
  });
  server->port_ = port == 0 ? http.bind_to_any_port(host)
                            : (http.bind_to_port(host, port) ? port : -1);
  if (server->port_ <= 0) {
    return Status::Unavailable("cannot listen for metrics on " + listen);
  }
  auto ended = std::make_shared<std::atomic<bool>>(false);
  server->listener_ = std::thread([&http, ended] {
    // The request thread, started from here, takes the same name.
    pthread_setname_np(pthread_self(), "shardq-metrics");
    http.listen_after_bind();
    ended->store(true);
  });
  // Until it runs, a stop() would be lost and the destructor would wait for ever.
  while (!http.is_running() && !ended->load()) std::this_thread::yield();
  return server;
}

MetricsServer::~MetricsServer() {
  if (http_) http_->stop();
  if (listener_.joinable()) listener_.join();
}

}  // namespace shardq::frontend
