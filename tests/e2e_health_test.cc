// The standard gRPC health service (grpc.health.v1.Health) reports the engine's
// readiness: NOT_SERVING while no shard can take calls, SERVING once one can.

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>

#include "grpc/health/v1/health.grpc.pb.h"
#include "tests/e2e_support.h"
#include "tests/support/mariadb_instance.h"

namespace shardq::testing {
namespace {

using grpc::health::v1::HealthCheckResponse;

v1::GetShardsResponse Shards(QueueClient& client) {
  v1::GetShardsResponse response;
  grpc::ClientContext context;
  SetDeadline(context, 5'000);
  grpc::Status status = client.stub().GetShards(&context, {}, &response);
  EXPECT_TRUE(status.ok()) << status.error_message();
  return response;
}

TEST(E2EHealthTest, NotServingWhileNoShardCanBeOpened) {
  FakeClock clock;  // never advanced: the breakers' probes do not come round
  auto server = frontend::Server::Start(FreshConfig("/nonexistent/mysql.sock", 2), clock);
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  ASSERT_TRUE(AwaitFirstOpenAttempts((*server)->engine()));
  EXPECT_EQ(HealthCheck((*server)->port(), ""), HealthCheckResponse::NOT_SERVING);
  EXPECT_EQ(HealthCheck((*server)->port(), "shardq.v1.Queue"),
            HealthCheckResponse::NOT_SERVING);
}

TEST(E2EHealthTest, ServingOnceTheShardsAreOpen) {
  FakeClock clock;
  auto server = frontend::Server::Start(FreshConfig(SharedMariaDb().socket(), 2), clock);
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  ASSERT_TRUE((*server)->engine().AwaitShardsOpen(std::chrono::seconds(30)));
  const int port = (*server)->port();
  EXPECT_TRUE(
      Eventually([&] { return HealthCheck(port, "") == HealthCheckResponse::SERVING; }));
  EXPECT_EQ(HealthCheck(port, "shardq.v1.Queue"), HealthCheckResponse::SERVING);
  QueueClient client(port);
  v1::GetShardsResponse shards = Shards(client);
  ASSERT_EQ(shards.shards_size(), 2);
  for (int i = 0; i < 2; ++i) {
    const v1::ShardInfo& s = shards.shards(i);
    EXPECT_EQ(s.id(), static_cast<uint32_t>(i));
    EXPECT_TRUE(s.open());
    EXPECT_FALSE(s.starting());
    EXPECT_EQ(s.breaker(), v1::CLOSED);
    EXPECT_EQ(s.last_error(), "");
  }
}

// Two servers given the same shards (a copied config): the second finds every shard
// owned by the first and serves none; once the first stops, the second's probes take
// the shards over, with what the first committed.
TEST(E2EHealthTest, ASecondServerOnTheSameShardsTakesThemOverWhenTheFirstStops) {
  const frontend::ServerConfig config = FreshConfig(SharedMariaDb().socket(), 2);
  FakeClock first_clock, second_clock;
  auto first = frontend::Server::Start(config, first_clock);
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  ASSERT_TRUE((*first)->engine().AwaitShardsOpen(std::chrono::seconds(30)));
  std::vector<std::string> ids;
  {
    QueueClient client((*first)->port());
    for (int i = 0; i < 4; ++i) {
      auto id = client.EnqueueOne("own", "t");
      ASSERT_TRUE(id.ok()) << id.status().ToString();
      ids.push_back(*id);
    }
  }

  auto second = frontend::Server::Start(config, second_clock);
  ASSERT_TRUE(second.ok()) << second.status().ToString();
  auto& engine = (*second)->engine();
  ASSERT_TRUE(AwaitFirstOpenAttempts(engine));
  for (const auto& h : engine.Health()) {
    EXPECT_FALSE(h.open);
    EXPECT_NE(h.last_error.find("owned by another shardq server"), std::string::npos)
        << h.last_error;
  }
  EXPECT_EQ(HealthCheck((*second)->port(), ""), HealthCheckResponse::NOT_SERVING);
  QueueClient client((*second)->port());
  // What an operator sees (shardqctl shards): which shards are down, and why.
  const v1::GetShardsResponse down = Shards(client);
  ASSERT_EQ(down.shards_size(), 2);
  for (const v1::ShardInfo& s : down.shards()) {
    EXPECT_FALSE(s.open());
    EXPECT_EQ(s.breaker(), v1::OPEN);
    EXPECT_NE(s.last_error().find("owned by another shardq server"), std::string::npos)
        << s.last_error();
  }
  auto refused = client.EnqueueOne("own", "t");
  // The item is refused UNAVAILABLE (gRPC code 14): no shard to take it.
  EXPECT_NE(refused.status().message().find("item code 14"), std::string::npos)
      << refused.status().ToString();

  first->reset();  // stops: its connections close, and their locks go with them
  // Past the cool-down the breakers probe and open the shards (the probes take real
  // time, hence the real-time bound).
  ASSERT_TRUE(Eventually([&] {
    second_clock.Advance(Duration(100));
    for (const auto& h : engine.Health()) {
      if (!h.open || h.breaker != shard_worker::BreakerState::kClosed) return false;
    }
    return true;
  }));
  EXPECT_EQ(HealthCheck((*second)->port(), ""), HealthCheckResponse::SERVING);
  const v1::GetShardsResponse up = Shards(client);
  ASSERT_EQ(up.shards_size(), 2);
  for (const v1::ShardInfo& s : up.shards()) {
    EXPECT_TRUE(s.open());
    EXPECT_EQ(s.breaker(), v1::CLOSED);
    EXPECT_EQ(s.last_error(), "");
  }
  std::vector<v1::DequeuedItem> got = client.Dequeue("own", "t", 10);
  std::vector<std::string> got_ids;
  for (const auto& item : got) got_ids.push_back(item.id());
  std::sort(got_ids.begin(), got_ids.end());
  std::sort(ids.begin(), ids.end());
  EXPECT_EQ(got_ids, ids);
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
