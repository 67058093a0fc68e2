// Guarantee 6: the server's threads are bounded. shardqd (a child process, so that
// its threads are its own) runs the same load with 4 shards and with 32; afterwards
// both have shardq's fixed threads, gRPC's default executor at its bound, and no more
// of gRPC's other threads than its pools allow.

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "tests/e2e_support.h"
#include "tests/support/mariadb_instance.h"
#include "tests/support/server_process.h"

namespace shardq::testing {
namespace {

constexpr int kIoThreads = 4;
constexpr int kClients = 4;
constexpr int kItemsPerClient = 250;

// Enqueues from kClients threads at once, then drains with as many, acking each.
void RunLoad(int port) {
  std::atomic<int> enqueued{0}, acked{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&, c] {
      QueueClient client(port);
      for (int i = 0; i < kItemsPerClient; ++i) {
        if (client.EnqueueOne("threads", "load", (c + i) % 10).ok()) ++enqueued;
      }
    });
  }
  for (auto& t : clients) t.join();
  clients.clear();
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&] {
      QueueClient client(port);
      for (;;) {
        auto items = client.Dequeue("threads", "load", 100);
        if (items.empty()) return;
        for (const auto& item : items) {
          if (client.Ack(item.id(), item.lease_token()) == grpc::StatusCode::OK) ++acked;
        }
      }
    });
  }
  for (auto& t : clients) t.join();
  EXPECT_EQ(enqueued.load(), kClients * kItemsPerClient);
  EXPECT_EQ(acked.load(), enqueued.load());
}

// The server's threads after RunLoad, counted by name.
std::map<std::string, int> ThreadsAfterLoad(const std::string& socket, int shards) {
  auto server = ServerProcess::Start({.binary = SHARDQD_PATH,
                                      .socket = socket,
                                      .shards = shards,
                                      .io_threads = kIoThreads});
  EXPECT_TRUE(server.ok()) << server.status().ToString();
  if (!server.ok()) return {};
  const int port = server->port();
  EXPECT_TRUE(Eventually(
      [&] { return HealthCheck(port) == grpc::health::v1::HealthCheckResponse::SERVING; },
      std::chrono::seconds(120)))
      << "shardqd's " << shards << " shards did not open";
  RunLoad(port);
  std::map<std::string, int> threads = server->ThreadNames();
  server->Stop();
  // The next server takes over the same databases once MariaDB has freed each
  // shard's ownership lock, a moment after the connection closed.
  for (const auto& shard : frontend::EmbeddedConfig(socket, shards).shards) {
    EXPECT_TRUE(AwaitOwnershipFreed(shard.database));
  }
  return threads;
}

std::string Describe(const std::map<std::string, int>& threads) {
  std::string out;
  for (const auto& [name, count] : threads)
    out += name + " x" + std::to_string(count) + " ";
  return out;
}

// Linux keeps the first 15 characters of a thread's name.
int Named(const std::map<std::string, int>& threads, const std::string& name) {
  const auto it = threads.find(name);
  return it == threads.end() ? 0 : it->second;
}

int All(const std::map<std::string, int>& threads) {
  int all = 0;
  for (const auto& [name, count] : threads) all += count;
  return all;
}

// What gRPC 1.51 can have, whatever the shards: a few fixed threads (the callback
// queue's pollers, timers, the resolver, the sync server reflection runs on), its
// default executor (twice the cores, grown at start-up) and its event-engine
// pool (a reserve of the cores, at least 2, plus threads lent while it is busy).
int GrpcThreadsAtMost() {
  const int cores = std::max<int>(1, sysconf(_SC_NPROCESSORS_CONF));
  return 8 + 2 * cores + 2 * std::max(2, cores);
}

TEST(ServerThreadsTest, ThreadsDoNotGrowWithTheShards) {
  const auto four = ThreadsAfterLoad(SharedMariaDb().socket(), 4);
  const auto thirty_two = ThreadsAfterLoad(SharedMariaDb().socket(), 32);

  // shardq's own: the I/O pool, the ticker and main, with 4 shards and with 32.
  EXPECT_EQ(ServerProcess::ShardqThreads(four), kIoThreads + 2) << Describe(four);
  EXPECT_EQ(ServerProcess::ShardqThreads(thirty_two), kIoThreads + 2)
      << Describe(thirty_two);
  // gRPC's default executor is grown to its bound before the first call
  // (frontend/executor_warmup.h), so it is the same whatever the load has been.
  const int twice_the_cores = 2 * std::max(1u, std::thread::hardware_concurrency());
  EXPECT_EQ(Named(four, "default-executo"), twice_the_cores) << Describe(four);
  EXPECT_EQ(Named(thirty_two, "default-executo"), twice_the_cores)
      << Describe(thirty_two);
  // gRPC's other pools grow with the load, not with the shards, and only so far. (28 more
  // shards would be 28 more threads if anything started one per shard.)
  EXPECT_LE(All(four) - ServerProcess::ShardqThreads(four), GrpcThreadsAtMost())
      << Describe(four);
  EXPECT_LE(All(thirty_two) - ServerProcess::ShardqThreads(thirty_two),
            GrpcThreadsAtMost())
      << Describe(thirty_two);
}

}  // namespace
}  // namespace shardq::testing
