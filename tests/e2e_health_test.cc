// The standard gRPC health service (grpc.health.v1.Health) reports the engine's
// readiness: NOT_SERVING while no shard can take calls, SERVING once one can.

#include <grpcpp/create_channel.h>
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "grpc/health/v1/health.grpc.pb.h"
#include "tests/e2e_support.h"
#include "tests/support/mariadb_instance.h"

namespace shardq::testing {
namespace {

using grpc::health::v1::HealthCheckResponse;

HealthCheckResponse::ServingStatus Check(int port, const std::string& service) {
  auto stub = grpc::health::v1::Health::NewStub(grpc::CreateChannel(
      "127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials()));
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  HealthCheckResponse response;
  grpc::ClientContext context;
  SetDeadline(context, 5'000);
  grpc::Status status = stub->Check(&context, request, &response);
  EXPECT_TRUE(status.ok()) << status.error_message();
  return response.status();
}

// Polls (real time, bounded) for something the server does asynchronously.
template <typename Pred>
bool Eventually(Pred pred) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (!pred()) {
    if (std::chrono::steady_clock::now() >= until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

TEST(E2EHealthTest, NotServingWhileNoShardCanBeOpened) {
  FakeClock clock;  // never advanced: the breakers' probes do not come round
  auto server = frontend::Server::Start(FreshConfig("/nonexistent/mysql.sock", 2), clock);
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  ASSERT_TRUE(Eventually([&] {
    for (const auto& h : (*server)->engine().Health()) {
      if (h.starting) return false;
    }
    return true;
  }));
  EXPECT_EQ(Check((*server)->port(), ""), HealthCheckResponse::NOT_SERVING);
  EXPECT_EQ(Check((*server)->port(), "shardq.v1.Queue"),
            HealthCheckResponse::NOT_SERVING);
}

TEST(E2EHealthTest, ServingOnceTheShardsAreOpen) {
  FakeClock clock;
  auto server = frontend::Server::Start(FreshConfig(SharedMariaDb().socket(), 2), clock);
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  ASSERT_TRUE((*server)->engine().AwaitShardsOpen(std::chrono::seconds(30)));
  const int port = (*server)->port();
  EXPECT_TRUE(
      Eventually([&] { return Check(port, "") == HealthCheckResponse::SERVING; }));
  EXPECT_EQ(Check(port, "shardq.v1.Queue"), HealthCheckResponse::SERVING);
}

// Not health, but the same start-up path: a listen address gRPC cannot bind is an
// error value, not a crash in the tear-down of the half-started server.
TEST(E2EHealthTest, AnAddressThatCannotBeBoundIsAnError) {
  FakeClock clock;
  frontend::ServerConfig config = FreshConfig(SharedMariaDb().socket(), 1);
  config.listen = "256.0.0.1:1";
  auto server = frontend::Server::Start(config, clock);
  ASSERT_FALSE(server.ok());
  EXPECT_EQ(server.status().code(), Code::kUnavailable);
}

}  // namespace
}  // namespace shardq::testing
