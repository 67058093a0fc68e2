#include "frontend/metrics.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <climits>
#include <cstring>
#include <memory>
#include <tuple>

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

// The label of one shard's lines.
std::string ShardLabel(const shard_worker::ShardHealth& h) {
  return fmt::format("shard=\"{}\"", h.id.value());
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
         "1 while the shard is open and its breaker closed (as shardqctl shards).");
  for (const auto& h : health) {
    const bool up = h.open && h.breaker == shard_worker::BreakerState::kClosed;
    line("shardq_shard_up", ShardLabel(h), up ? 1 : 0);
  }
  Header(out, "shardq_shard_breaker", "gauge",
         "The shard's circuit breaker: 1 for its current state.");
  for (const auto& h : health) {
    for (auto state :
         {shard_worker::BreakerState::kClosed, shard_worker::BreakerState::kOpen,
          shard_worker::BreakerState::kHalfOpen}) {
      line("shardq_shard_breaker",
           fmt::format("{},state=\"{}\"", ShardLabel(h),
                       shard_worker::BreakerStateName(state)),
           h.breaker == state ? 1 : 0);
    }
  }
  Header(out, "shardq_shard_release_lead_seconds", "gauge",
         "How long before their due time the shard releases delayed items now.");
  for (const auto& h : health) {
    line("shardq_shard_release_lead_seconds", ShardLabel(h),
         std::chrono::duration<double>(h.release_lead).count());
  }
  // Each shard's counters: rates, and the store calls' mean and percentiles, are the
  // scraper's to compute.
  using Counters = shard_worker::ShardCounters;
  const std::tuple<const char*, const char*, uint64_t Counters::*> counters[] = {
      {"shardq_shard_enqueued_total",
       "Items stored by enqueues (a deduplicated retry stores nothing).",
       &Counters::enqueued},
      {"shardq_shard_leased_total",
       "Leases given: claims by dequeues, and handoffs to waiting dequeues.",
       &Counters::leased},
      {"shardq_shard_acked_total", "Acks that finished their lease.", &Counters::acked},
      {"shardq_shard_nacked_total",
       "Consumers' nacks that ended their lease (not the server's give-backs).",
       &Counters::nacked},
      {"shardq_shard_store_failures_total",
       "Store calls that failed for the shard (connection lost, server error).",
       &Counters::store_failures}};
  for (const auto& [name, help, field] : counters) {
    Header(out, name, "counter", help);
    for (const auto& h : health) line(name, ShardLabel(h), h.counters.*field);
  }
  Header(out, "shardq_shard_store_call_seconds", "histogram",
         "Calls to the shard's store (MySQL; its probes while it is down included), "
         "by how long they took.");
  for (const auto& h : health) {
    const std::string shard = ShardLabel(h);
    uint64_t calls = 0;  // the buckets are cumulative in the exposition format
    for (size_t i = 0; i < shard_worker::kStoreTimeBounds.size(); ++i) {
      calls += h.counters.store_time_buckets[i];
      line("shardq_shard_store_call_seconds_bucket",
           fmt::format(
               "{},le=\"{}\"", shard,
               std::chrono::duration<double>(shard_worker::kStoreTimeBounds[i]).count()),
           calls);
    }
    calls += h.counters.store_time_buckets.back();
    line("shardq_shard_store_call_seconds_bucket", shard + ",le=\"+Inf\"", calls);
    line("shardq_shard_store_call_seconds_sum", shard,
         std::chrono::duration<double>(h.counters.store_time).count());
    line("shardq_shard_store_call_seconds_count", shard, calls);
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

Result<std::pair<std::string, int>> ParseHostPort(const std::string& address) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == address.size()) {
    return Status::InvalidArgument("not host:port: " + address);
  }
  std::string host = address.substr(0, colon);
  if (host.front() == '[') {
    if (host.size() < 3 || host.back() != ']') {
      return Status::InvalidArgument("not [IPv6 host]:port: " + address);
    }
    host = host.substr(1, host.size() - 2);
  } else if (host.find(':') != std::string::npos) {
    return Status::InvalidArgument("an IPv6 host goes in brackets, [::1]:9464: " +
                                   address);
  }
  int port = -1;
  const char* first = address.data() + colon + 1;
  const char* last = address.data() + address.size();
  const auto [end, error] = std::from_chars(first, last, port);
  if (error != std::errc() || end != last || port < 0 || port > 65535) {
    return Status::InvalidArgument("the port is not 0..65535: " + address);
  }
  return std::make_pair(host, port);
}

namespace {

// A listening TCP socket at host:port, non-blocking; its fd and bound port.
Result<std::pair<int, int>> Listen(const std::string& host, int port) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  const std::string service = std::to_string(port);
  if (const int error = getaddrinfo(host.c_str(), service.c_str(), &hints, &found);
      error != 0 || !found) {
    return Status::InvalidArgument("cannot resolve metrics host " + host + ": " +
                                   gai_strerror(error));
  }
  std::unique_ptr<addrinfo, decltype(&freeaddrinfo)> addresses(found, freeaddrinfo);
  // The first address that binds ("localhost" may resolve to ::1 on a host without
  // IPv6, or to both families).
  int fd = -1;
  std::string why = "no address";
  for (const addrinfo* a = found; a != nullptr && fd < 0; a = a->ai_next) {
    fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      why = std::strerror(errno);
      continue;
    }
    const int on = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    // A short backlog: clients past it wait in their connect, not in our memory.
    if (bind(fd, a->ai_addr, a->ai_addrlen) != 0 || listen(fd, 16) != 0) {
      why = std::strerror(errno);
      close(fd);
      fd = -1;
    }
  }
  if (fd < 0) {
    return Status::Unavailable("cannot listen for metrics on " + host + ":" + service +
                               ": " + why);
  }
  sockaddr_storage bound{};
  socklen_t length = sizeof bound;
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &length) != 0) {
    close(fd);
    return Status::Unavailable(std::string("getsockname: ") + std::strerror(errno));
  }
  const int bound_port = ntohs(bound.ss_family == AF_INET6
                                   ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                                   : reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  return std::make_pair(fd, bound_port);
}

std::string Response(const char* status, const std::string& type, const std::string& body,
                     const char* extra_header = "") {
  return fmt::format(
      "HTTP/1.0 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{}Connection: "
      "close\r\n\r\n{}",
      status, type, body.size(), extra_header, body);
}

// The path of a request's first line ("GET /metrics?x HTTP/1.0" -> "/metrics"; an
// absolute URI's scheme and authority dropped), or "" if the line is malformed.
std::string RequestPath(const std::string& request) {
  const size_t line_end = request.find_first_of("\r\n");
  const std::string line = request.substr(0, line_end);
  const size_t first = line.find(' ');
  if (first == std::string::npos) return "";
  const size_t start = line.find_first_not_of(' ', first);
  if (start == std::string::npos) return "";
  std::string target = line.substr(start, line.find(' ', start) - start);
  if (const size_t scheme = target.find("://"); scheme != std::string::npos) {
    const size_t path = target.find('/', scheme + 3);
    target = path == std::string::npos ? "/" : target.substr(path);
  }
  if (target.empty() || target.front() != '/') return "";
  return target.substr(0, target.find('?'));  // a query is ignored
}

}  // namespace

Result<std::unique_ptr<MetricsServer>> MetricsServer::Start(
    const std::string& listen, std::function<std::string()> render,
    std::chrono::milliseconds deadline) {
  auto address = ParseHostPort(listen);
  if (!address.ok()) return address.status();
  auto listening = Listen(address->first, address->second);
  if (!listening.ok()) return listening.status();
  std::unique_ptr<MetricsServer> server(new MetricsServer());
  server->listen_fd_ = listening->first;
  server->port_ = listening->second;
  server->render_ = std::move(render);
  server->deadline_ = deadline;
  if (pipe2(server->wake_, O_CLOEXEC | O_NONBLOCK) != 0) {
    return Status::Unavailable(std::string("pipe2: ") + std::strerror(errno));
  }
  server->thread_ = std::thread([raw = server.get()] { raw->Run(); });
  return server;
}

MetricsServer::~MetricsServer() {
  if (wake_[1] >= 0) {
    const char byte = 1;
    [[maybe_unused]] ssize_t n = write(wake_[1], &byte, 1);
  }
  if (thread_.joinable()) thread_.join();
  for (int fd : {listen_fd_, wake_[0], wake_[1]}) {
    if (fd >= 0) close(fd);
  }
}

void MetricsServer::Run() {
  pthread_setname_np(pthread_self(), "shardq-metrics");
  for (;;) {
    pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {wake_[0], POLLIN, 0}};
    if (poll(fds, 2, -1) < 0) {
      // Out of memory for the poll, say: try again shortly rather than stop for good.
      if (errno != EINTR) {
        spdlog::warn("metrics listener: poll: {}", std::strerror(errno));
        if (StopWithin(100)) return;
      }
      continue;
    }
    if (fds[1].revents != 0) return;
    const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      // Out of descriptors or memory, the connection stays queued and the listening
      // socket readable: wait a little (or for the stop) rather than spin.
      if ((errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) &&
          StopWithin(100)) {
        return;
      }
      continue;  // otherwise it went away before it was taken
    }
    Serve(fd);
    close(fd);
  }
}

bool MetricsServer::StopWithin(int ms) const {
  pollfd wake{wake_[0], POLLIN, 0};
  return poll(&wake, 1, ms) > 0;
}

void MetricsServer::Serve(int fd) {
  const auto until = std::chrono::steady_clock::now() + deadline_;
  // Waits for `events` on fd until the deadline; false on timeout, error or stop.
  auto await = [&](short events) {
    for (;;) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          until - std::chrono::steady_clock::now());
      if (left.count() <= 0) return false;
      pollfd fds[2] = {{fd, events, 0}, {wake_[0], POLLIN, 0}};
      const int ready =
          poll(fds, 2, static_cast<int>(std::min<int64_t>(left.count(), INT32_MAX)));
      if (ready < 0 && errno == EINTR) continue;
      if (ready <= 0 || fds[1].revents != 0) return false;
      return (fds[0].revents & (events | POLLHUP | POLLERR)) != 0;
    }
  };
  std::string request;
  size_t scanned = 0;  // the end of the headers is not before this
  auto complete = [&] {
    const bool found = request.find("\r\n\r\n", scanned) != std::string::npos ||
                       request.find("\n\n", scanned) != std::string::npos;
    scanned = request.size() < 3 ? 0 : request.size() - 3;
    return found;
  };
  while (!complete()) {
    if (request.size() >= kMaxRequestBytes) {
      request.clear();  // answered 431 below
      break;
    }
    if (!await(POLLIN)) return;
    char buf[1024];
    const ssize_t n =
        recv(fd, buf, std::min(sizeof buf, kMaxRequestBytes - request.size()), 0);
    if (n == 0) return;  // closed before a whole request
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) continue;
      return;
    }
    request.append(buf, static_cast<size_t>(n));
  }
  std::string response;
  const std::string path = request.empty() ? "" : RequestPath(request);
  if (request.empty()) {
    response = Response("431 Request Header Fields Too Large", "text/plain", "");
  } else if (path.empty()) {
    response = Response("400 Bad Request", "text/plain", "GET /metrics\n");
  } else if (request.rfind("GET ", 0) != 0) {
    response =
        Response("405 Method Not Allowed", "text/plain", "GET only\n", "Allow: GET\r\n");
  } else if (path != "/metrics") {
    response = Response("404 Not Found", "text/plain", "GET /metrics\n");
  } else {
    response = Response("200 OK", "text/plain; version=0.0.4; charset=utf-8", render_());
  }
  size_t sent = 0;
  while (sent < response.size()) {
    const ssize_t n =
        send(fd, response.data() + sent, response.size() - sent, MSG_NOSIGNAL);
    if (n > 0) {
      sent += static_cast<size_t>(n);
    } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
      if (!await(POLLOUT)) return;
    } else {
      return;
    }
  }
  // Close gently: with unread bytes left (a body, a refused request) a plain close
  // would reset the connection, and the client might lose the answer.
  shutdown(fd, SHUT_WR);
  char drain[1024];
  while (await(POLLIN) && recv(fd, drain, sizeof drain, 0) > 0) {
  }
}

}  // namespace shardq::frontend
