// Guarantee 6: the server's threads are bounded. shardqd (a child process, so that
// its threads are its own) runs the same load with 4 shards and with 32. Both have
// gRPC's default executor at its bound from start-up, and after the load shardq's
// fixed threads and no more of gRPC's other threads than its pools allow.

#include <grpc/support/cpu.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "frontend/executor_warmup.h"
#include "frontend/server.h"
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

using Threads = std::map<std::string, int>;  // by name

struct ServerThreads {
  Threads at_start;    // as soon as the server listens
  Threads after_load;  // after RunLoad
};

// The server's threads as it starts and after RunLoad.
ServerThreads ThreadsOfAServer(const std::string& socket, int shards) {
  // With the metrics listener on, as in production: its thread counts too.
  auto server = ServerProcess::Start({.binary = SHARDQD_PATH,
                                      .socket = socket,
                                      .shards = shards,
                                      .io_threads = kIoThreads,
                                      .extra_args = {"--metrics-listen", "127.0.0.1:0"}});
  EXPECT_TRUE(server.ok()) << server.status().ToString();
  if (!server.ok()) return {};
  ServerThreads threads;
  // shardqd writes its port file, which Start waits for, once Server::Start returns.
  threads.at_start = server->ThreadNames();
  const int port = server->port();
  EXPECT_TRUE(Eventually(
      [&] { return HealthCheck(port) == grpc::health::v1::HealthCheckResponse::SERVING; },
      std::chrono::seconds(120)))
      << "shardqd's " << shards << " shards did not open";
  RunLoad(port);
  threads.after_load = server->ThreadNames();
  server->Stop();
  // The next server takes over the same databases once MariaDB has freed each
  // shard's ownership lock, a moment after the connection closed.
  for (const auto& shard : frontend::EmbeddedConfig(socket, shards).shards) {
    EXPECT_TRUE(AwaitOwnershipFreed(shard.database));
  }
  return threads;
}

std::string Describe(const Threads& threads) {
  std::string out;
  for (const auto& [name, count] : threads)
    out += name + " x" + std::to_string(count) + " ";
  return out;
}

int ExecutorThreads(const Threads& threads) {
  const auto it = threads.find(frontend::kGrpcExecutorThreadName);
  return it == threads.end() ? 0 : it->second;
}

int All(const Threads& threads) {
  int all = 0;
  for (const auto& [name, count] : threads) all += count;
  return all;
}

// What gRPC 1.51 can have, whatever the shards: a few fixed threads (the callback
// queue's pollers, timers, the resolver, the sync server reflection runs on), its
// default executor (twice the cores, grown at start-up) and its event-engine
// pool (a reserve of the cores, at least 2, plus threads lent while it is busy).
int GrpcThreadsAtMost() {
  const int cores = static_cast<int>(gpr_cpu_num_cores());
  return 8 + 2 * cores + 2 * std::max(2, cores);
}

TEST(ServerThreadsTest, ThreadsDoNotGrowWithTheShards) {
  const ServerThreads four_shards = ThreadsOfAServer(SharedMariaDb().socket(), 4);
  const ServerThreads thirty_two_shards = ThreadsOfAServer(SharedMariaDb().socket(), 32);
  const Threads& four = four_shards.after_load;
  const Threads& thirty_two = thirty_two_shards.after_load;

  // shardq's own: the I/O pool, the ticker, main and the metrics listener, with 4
  // shards and with 32.
  EXPECT_EQ(ServerProcess::ShardqThreads(four), kIoThreads + 3) << Describe(four);
  EXPECT_EQ(ServerProcess::ShardqThreads(thirty_two), kIoThreads + 3)
      << Describe(thirty_two);
  // gRPC's default executor is at its bound as soon as the server listens
  // (frontend/executor_warmup.h) and stays there, whatever the load.
  for (const ServerThreads* server : {&four_shards, &thirty_two_shards}) {
    EXPECT_EQ(ExecutorThreads(server->at_start), frontend::GrpcExecutorBound())
        << Describe(server->at_start);
    EXPECT_EQ(ExecutorThreads(server->after_load), frontend::GrpcExecutorBound())
        << Describe(server->after_load);
  }
  // gRPC's other pools grow with the load, not with the shards, and only so far. (28
  // more shards would be 28 more threads if anything started one per shard.)
  EXPECT_LE(All(four) - ServerProcess::ShardqThreads(four), GrpcThreadsAtMost())
      << Describe(four);
  EXPECT_LE(All(thirty_two) - ServerProcess::ShardqThreads(thirty_two),
            GrpcThreadsAtMost())
      << Describe(thirty_two);
}

// A server reflection stream (what grpcurl opens), through the generic stub: it asks
// for the list of services, reads the answer and stays open until destroyed. gRPC
// 1.51 runs reflection as a sync service, whose handler holds a thread for as long as
// the stream is open.
class ReflectionStream {
 public:
  explicit ReflectionStream(const std::shared_ptr<grpc::Channel>& channel)
      : stub_(channel) {
    call_ = stub_.PrepareCall(
        &context_, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        &cq_);
    call_->StartCall(this);
    if (!Next()) return;
    // ServerReflectionRequest{list_services: ""}: field 7, length-delimited, empty.
    const char kListServices[] = {0x3a, 0x00};
    grpc::Slice slice(kListServices, sizeof kListServices);
    grpc::ByteBuffer request(&slice, 1);
    call_->Write(request, this);
    if (!Next()) return;
    grpc::ByteBuffer response;
    call_->Read(&response, this);
    answered_ = Next() && response.Length() > 0;
  }
  ~ReflectionStream() {
    context_.TryCancel();
    grpc::Status status;
    call_->Finish(&status, this);
    Next();
    cq_.Shutdown();
    void* tag;
    bool ok;
    while (cq_.Next(&tag, &ok)) {
    }
  }
  bool answered() const { return answered_; }

 private:
  // The outcome of the one operation in flight (bounded wait).
  bool Next() {
    void* tag;
    bool ok = false;
    const auto deadline = std::chrono::system_clock::now() + std::chrono::seconds(10);
    return cq_.AsyncNext(&tag, &ok, deadline) == grpc::CompletionQueue::GOT_EVENT && ok;
  }
  grpc::GenericStub stub_;
  grpc::ClientContext context_;
  grpc::CompletionQueue cq_;
  std::unique_ptr<grpc::GenericClientAsyncReaderWriter> call_;
  bool answered_ = false;
};

// Guarantee 6 for clients: streams of the one sync service, reflection, each of which
// holds a server thread while open, are capped (frontend::Server::kMaxSyncServerThreads).
TEST(ServerThreadsTest, ThreadsDoNotGrowWithReflectionStreams) {
  const std::string socket = SharedMariaDb().socket();
  auto server = ServerProcess::Start(
      {.binary = SHARDQD_PATH, .socket = socket, .shards = 4, .io_threads = kIoThreads});
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  const int port = server->port();
  ASSERT_TRUE(Eventually(
      [&] { return HealthCheck(port) == grpc::health::v1::HealthCheckResponse::SERVING; },
      std::chrono::seconds(120)));
  const Threads before = server->ThreadNames();
  constexpr int kStreams = 16;
  int answered = 0;
  Threads during;
  {
    auto channel = grpc::CreateChannel("127.0.0.1:" + std::to_string(port),
                                       grpc::InsecureChannelCredentials());
    std::vector<std::unique_ptr<ReflectionStream>> streams;
    for (int i = 0; i < kStreams; ++i) {
      streams.push_back(std::make_unique<ReflectionStream>(channel));
      if (streams.back()->answered()) ++answered;
    }
    during = server->ThreadNames();
  }
  EXPECT_GE(answered, 1) << "reflection does not answer";
  EXPECT_LT(answered, kStreams) << "no stream was refused past the cap";
  EXPECT_LE(All(during) - All(before), frontend::Server::kMaxSyncServerThreads)
      << "before: " << Describe(before)
      << "; with the streams open: " << Describe(during);
  server->Stop();
  for (const auto& shard : frontend::EmbeddedConfig(socket, 4).shards) {
    EXPECT_TRUE(AwaitOwnershipFreed(shard.database));
  }
}

}  // namespace
}  // namespace shardq::testing
