// The Prometheus page (frontend/metrics.h) over a real socket: what it shows, and that
// clients who misbehave on its port (idle, an unfinished request, oversized or
// malformed requests, other methods) hold it for one deadline at most and never stop
// the server from shutting down.

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <future>
#include <memory>
#include <string>

#include "frontend/metrics.h"
#include "tests/e2e_support.h"
#include "tests/support/mariadb_instance.h"

namespace shardq::testing {
namespace {

// A TCP connection to 127.0.0.1:port (-1 if refused).
int Connect(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

// Sends `request` on a new connection and reads the whole answer (to the server's
// close, at most 20 s of real time).
std::string Exchange(int port, const std::string& request) {
  const int fd = Connect(port);
  if (fd < 0) return "";
  send(fd, request.data(), request.size(), MSG_NOSIGNAL);
  std::string answer;
  char buf[4096];
  for (;;) {
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, 20'000) <= 0) break;
    const ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    answer.append(buf, static_cast<size_t>(n));
  }
  close(fd);
  return answer;
}

// A server (LiveServerTest's) with its metrics page on a free port.
class MetricsPageTest : public LiveServerTest {
 protected:
  void Configure(frontend::ServerConfig& config) override {
    config.metrics_listen = "127.0.0.1:0";
  }
  void SetUp() override {
    LiveServerTest::SetUp();
    ASSERT_GT(server_->metrics_port(), 0);
  }
};

TEST_F(MetricsPageTest, TheMetricsPageShowsShardsItemsAndCounters) {
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(client_->EnqueueOne("metered", "t", i).ok());
  ASSERT_EQ(client_->Dequeue("metered", "t", 1).size(), 1u);

  const std::string page =
      Exchange(server_->metrics_port(), "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_EQ(page.rfind("HTTP/1.0 200 OK\r\n", 0), 0u) << page;
  EXPECT_NE(page.find("Content-Type: text/plain; version=0.0.4"), std::string::npos);
  for (const char* expected :
       {"# TYPE shardq_ready gauge\nshardq_ready 1\n", "shardq_shard_up{shard=\"0\"} 1\n",
        "shardq_shard_up{shard=\"1\"} 1\n",
        "shardq_shard_breaker{shard=\"0\",state=\"closed\"} 1\n",
        "shardq_shard_breaker{shard=\"0\",state=\"open\"} 0\n",
        "shardq_items{namespace=\"metered\",state=\"ready\"} 2\n",
        "shardq_items{namespace=\"metered\",state=\"leased\"} 1\n",
        "shardq_items{namespace=\"metered\",state=\"dead\"} 0\n",
        "shardq_parked_dequeues 0\n", "# TYPE shardq_leases_given_back_total counter\n",
        "shardq_leases_given_back_total 0\n"}) {
    EXPECT_NE(page.find(expected), std::string::npos) << expected << "\nin:\n" << page;
  }
}

// The sum over the page's lines of `metric` (one per shard), of those whose labels
// hold `label` if given.
double SumOf(const std::string& page, const std::string& metric,
             const std::string& label = "") {
  double sum = 0;
  size_t at = 0;
  const std::string start = metric + "{shard=\"";
  while ((at = page.find("\n" + start, at)) != std::string::npos) {
    at += 1;
    const size_t space = page.find(' ', at);
    const size_t end = page.find('\n', space);
    if (label.empty() || page.substr(at, space - at).find(label) != std::string::npos)
      sum += std::stod(page.substr(space + 1, end - space - 1));
    at = end;
  }
  return sum;
}

TEST_F(MetricsPageTest, EachShardCountsWhatItStoredLeasedAckedAndNacked) {
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(client_->EnqueueOne("counted", "t", i).ok());
  // A retry with the same dedup key stores nothing, so it is not counted.
  ASSERT_TRUE(client_->EnqueueOne("counted", "t", {.dedup_key = "k"}).ok());
  ASSERT_TRUE(client_->EnqueueOne("counted", "t", {.dedup_key = "k"}).ok());
  auto got = client_->Dequeue("counted", "t", 2);
  ASSERT_EQ(got.size(), 2u);
  ASSERT_EQ(client_->Ack(got[0].id(), got[0].lease_token()), grpc::StatusCode::OK);
  ASSERT_EQ(client_->Nack(got[1].id(), got[1].lease_token(), 60'000),
            grpc::StatusCode::OK);
  // A stale token is refused, and a repeated ack succeeds: neither ends a lease, so
  // neither is counted.
  ASSERT_NE(client_->Ack(got[1].id(), got[1].lease_token()), grpc::StatusCode::OK);
  ASSERT_EQ(client_->Ack(got[0].id(), got[0].lease_token()), grpc::StatusCode::OK);

  const std::string page =
      Exchange(server_->metrics_port(), "GET /metrics HTTP/1.0\r\n\r\n");
  EXPECT_EQ(SumOf(page, "shardq_shard_enqueued_total"), 4) << page;
  EXPECT_EQ(SumOf(page, "shardq_shard_leased_total"), 2) << page;
  EXPECT_EQ(SumOf(page, "shardq_shard_acked_total"), 1) << page;
  EXPECT_EQ(SumOf(page, "shardq_shard_nacked_total"), 1) << page;
  EXPECT_EQ(SumOf(page, "shardq_shard_store_failures_total"), 0) << page;
  // At least the 5 enqueues' writes, the claim, the ack and the nack; the +Inf
  // bucket holds every call, and the buckets only grow.
  const double calls = SumOf(page, "shardq_shard_store_call_seconds_count");
  EXPECT_GE(calls, 5) << page;
  EXPECT_EQ(SumOf(page, "shardq_shard_store_call_seconds_bucket", "le=\"+Inf\""), calls);
  double below = 0;
  for (const char* le : {"0.0005", "0.001", "0.01", "0.1", "1", "2.5"}) {
    const std::string label = std::string("le=\"") + le + "\"";
    EXPECT_NE(
        page.find("shardq_shard_store_call_seconds_bucket{shard=\"0\"," + label + "} "),
        std::string::npos)
        << label;
    const double n = SumOf(page, "shardq_shard_store_call_seconds_bucket", label);
    EXPECT_GE(n, below) << le;
    EXPECT_LE(n, calls) << le;
    below = n;
  }
  EXPECT_GT(SumOf(page, "shardq_shard_store_call_seconds_sum"), 0) << page;
  EXPECT_NE(page.find("# TYPE shardq_shard_store_call_seconds histogram\n"),
            std::string::npos);
  EXPECT_NE(page.find("# TYPE shardq_shard_acked_total counter\n"), std::string::npos);
}

TEST(E2EMetricsTest, NoListenerUnlessConfiguredAndABadAddressIsRefusedByTheConfig) {
  FakeClock clock;
  frontend::ServerConfig config = FreshConfig(SharedMariaDb().socket(), 1);
  auto plain = frontend::Server::Start(config, clock);
  ASSERT_TRUE(plain.ok()) << plain.status().ToString();
  EXPECT_EQ((*plain)->metrics_port(), 0);
  plain->reset();

  for (const char* bad :
       {"no-port-here", "h:12abc", "h:70000", "h:-5", "::1", "[::1", ":9464", "h:"}) {
    config.metrics_listen = bad;
    EXPECT_EQ(frontend::ValidateConfig(config).code(), Code::kInvalidArgument) << bad;
  }
  auto parsed = frontend::ParseHostPort("[::1]:9464");
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_EQ(parsed->first, "::1");
  EXPECT_EQ(parsed->second, 9464);
}

// Against the listener alone: a page that counts its scrapes.
class MetricsListenerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto started = frontend::MetricsServer::Start(
        "127.0.0.1:0", [this] { return "scrapes " + std::to_string(++scrapes_) + "\n"; },
        std::chrono::milliseconds(300));
    ASSERT_TRUE(started.ok()) << started.status().ToString();
    metrics_ = std::move(*started);
  }
  std::unique_ptr<frontend::MetricsServer> metrics_;
  std::atomic<int> scrapes_{0};
};

TEST_F(MetricsListenerTest, OtherPathsMethodsAndOversizedRequestsAreRefused) {
  const int port = metrics_->port();
  EXPECT_EQ(Exchange(port, "GET /other HTTP/1.0\r\n\r\n").rfind("HTTP/1.0 404", 0), 0u);
  EXPECT_EQ(Exchange(port, "POST /metrics HTTP/1.0\r\nContent-Length: 5\r\n\r\nhello")
                .rfind("HTTP/1.0 405", 0),
            0u);
  const std::string refused = Exchange(port, "PUT /metrics HTTP/1.0\r\n\r\n");
  EXPECT_NE(refused.find("\r\nAllow: GET\r\n"), std::string::npos) << refused;
  EXPECT_EQ(Exchange(port, "GET\r\n\r\n").rfind("HTTP/1.0 400", 0), 0u);
  EXPECT_EQ(Exchange(port, "GET metrics HTTP/1.0\r\n\r\n").rfind("HTTP/1.0 400", 0), 0u);
  const std::string huge = "GET /metrics HTTP/1.0\r\nX: " +
                           std::string(frontend::MetricsServer::kMaxRequestBytes, 'x');
  EXPECT_EQ(Exchange(port, huge).rfind("HTTP/1.0 431", 0), 0u);
  EXPECT_EQ(scrapes_, 0) << "none of them rendered the page";
  const std::string page = Exchange(port, "GET /metrics HTTP/1.0\r\n\r\n");
  EXPECT_NE(page.find("\r\n\r\nscrapes 1\n"), std::string::npos) << page;
  const std::string query = Exchange(port, "GET /metrics?x=1 HTTP/1.0\r\n\r\n");
  EXPECT_NE(query.find("\r\n\r\nscrapes 2\n"), std::string::npos) << query;
  const std::string absolute =
      Exchange(port, "GET http://localhost:9464/metrics HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_NE(absolute.find("\r\n\r\nscrapes 3\n"), std::string::npos) << absolute;
}

TEST_F(MetricsListenerTest, AnIdleClientHoldsTheListenerForOneDeadlineAtMost) {
  const int idle = Connect(metrics_->port());  // connects, and sends nothing
  ASSERT_GE(idle, 0);
  // Served after the idle one's deadline (300 ms here), not never.
  const std::string page = Exchange(metrics_->port(), "GET /metrics HTTP/1.0\r\n\r\n");
  EXPECT_NE(page.find("scrapes 1\n"), std::string::npos) << page;
  close(idle);
}

TEST_F(MetricsListenerTest, AnUnfinishedRequestIsClosedUnansweredAtTheDeadline) {
  // The request line, and never the blank line that ends the request.
  EXPECT_EQ(Exchange(metrics_->port(), "GET /metrics HTTP/1.0\r\nX: 1\r\n"), "");
  EXPECT_EQ(scrapes_, 0);
  EXPECT_NE(Exchange(metrics_->port(), "GET /metrics HTTP/1.0\r\n\r\n").find("scrapes 1"),
            std::string::npos);
}

TEST(MetricsListenerStopTest, StoppingEndsTheExchangeInProgress) {
  // A page far larger than the socket's buffers, to a client that never reads it,
  // with a deadline far beyond the test's bound: the listener is certainly waiting
  // to send when it is stopped, and only the stop can end that wait.
  std::promise<void> rendering;
  auto started = frontend::MetricsServer::Start(
      "127.0.0.1:0",
      [&rendering] {
        rendering.set_value();
        return std::string(64 << 20, 'x');
      },
      std::chrono::hours(1));
  ASSERT_TRUE(started.ok()) << started.status().ToString();
  const int reader = Connect((*started)->port());
  ASSERT_GE(reader, 0);
  const std::string request = "GET /metrics HTTP/1.0\r\n\r\n";
  ASSERT_EQ(send(reader, request.data(), request.size(), MSG_NOSIGNAL),
            static_cast<ssize_t>(request.size()));
  ASSERT_EQ(rendering.get_future().wait_for(std::chrono::seconds(20)),
            std::future_status::ready);
  auto stopped = std::async(std::launch::async, [&] { started->reset(); });
  EXPECT_EQ(stopped.wait_for(std::chrono::seconds(20)), std::future_status::ready);
  stopped.wait();
  close(reader);
}

}  // namespace
}  // namespace shardq::testing
