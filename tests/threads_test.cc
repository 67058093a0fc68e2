// Guarantee 6: the server's threads are bounded. shardqd (a child process, so that
// its threads are its own) runs the same load with 4 shards and with 32; afterwards
// both have the same threads, by name, and none of them is from a pool that grows
// with the load.

#include <gtest/gtest.h>

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

// The server's threads by name after RunLoad, without gRPC's event-engine pool:
// that pool lends a thread for a moment while its reserve threads are busy and
// takes it back when idle, so it is counted apart (see ThreadsLeftAfterTheLoad).
struct Threads {
  std::map<std::string, int> by_name;
  int event_engine = 0;
};

Threads ThreadsAfterLoad(const std::string& socket, int shards) {
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
  Threads threads;
  threads.by_name = server->ThreadNames();
  threads.event_engine = threads.by_name["event_engine"];
  threads.by_name.erase("event_engine");
  server->Stop();
  // The next server takes over the same databases once MariaDB has freed each
  // shard's ownership lock, a moment after the connection closed.
  for (int s = 0; s < shards; ++s) {
    EXPECT_TRUE(AwaitOwnershipFreed("shardq_" + std::to_string(s)));
  }
  return threads;
}

int Own(const std::map<std::string, int>& threads) {
  int own = 0;
  for (const auto& [name, count] : threads) {
    if (name.rfind("shardq", 0) == 0) own += count;
  }
  return own;
}

TEST(ServerThreadsTest, FourShardsAndThirtyTwoRunOnTheSameThreads) {
  const Threads four = ThreadsAfterLoad(SharedMariaDb().socket(), 4);
  const Threads thirty_two = ThreadsAfterLoad(SharedMariaDb().socket(), 32);

  // shardq's own: the I/O pool, the ticker and main.
  EXPECT_EQ(Own(four.by_name), kIoThreads + 2);
  // gRPC's default executor starts threads when its queues grow and never ends them;
  // shardqd turns it off (frontend/grpc_threads.h).
  EXPECT_FALSE(four.by_name.contains("default-executo"));
  // Every other pool, gRPC's included, has the same threads with 8 times the shards.
  EXPECT_EQ(four.by_name, thirty_two.by_name);
  // The event-engine pool's reserve is a few threads, whatever the shards.
  EXPECT_LE(four.event_engine, 4);
  EXPECT_LE(thirty_two.event_engine, 4);
}

}  // namespace
}  // namespace shardq::testing
