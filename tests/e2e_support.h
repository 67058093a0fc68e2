#pragma once
// Helpers for the end-to-end tests: a real shardq server (in-process, real gRPC on a
// free port, real MariaDB, injected clock) and a small synchronous client.

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "common/clock.h"
#include "frontend/config.h"
#include "frontend/server.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "shardq/v1/queue.grpc.pb.h"

namespace shardq::testing {

// A config of `shards` fresh databases (unique names per call) on one socket.
frontend::ServerConfig FreshConfig(const std::string& socket, size_t shards);

class QueueClient {
 public:
  // Takes messages of up to v1::kMaxMessageBytes, as the SDK's channels do.
  explicit QueueClient(int port);
  v1::Queue::Stub& stub() { return *stub_; }

  struct EnqueueOptions {
    int32_t priority = 0;
    int64_t delay_ms = 0;
    int64_t lease_ms = 0;
    std::string payload = "x";
    std::string dedup_key;  // none if empty
  };
  // Enqueues one item; the id, or the per-item / RPC error as a Status.
  Result<std::string> EnqueueOne(const std::string& ns, const std::string& topic,
                                 EnqueueOptions options);
  Result<std::string> EnqueueOne(const std::string& ns, const std::string& topic,
                                 int32_t priority = 0) {
    return EnqueueOne(ns, topic, EnqueueOptions{.priority = priority});
  }
  std::vector<v1::DequeuedItem> Dequeue(const std::string& ns, const std::string& topic,
                                        int count, int64_t wait_ms = 0,
                                        grpc::Status* status = nullptr);
  // Per-item status code of a one-item Ack / Nack / ExtendLease.
  grpc::StatusCode Ack(const std::string& id, const std::string& token);
  grpc::StatusCode Nack(const std::string& id, const std::string& token,
                        int64_t delay_ms);
  grpc::StatusCode Extend(const std::string& id, const std::string& token,
                          int64_t extension_ms);
  // GetTask; an empty Task (state UNSPECIFIED) if the call failed, its status in
  // `status` when given.
  v1::Task GetTask(const std::string& id, grpc::Status* status = nullptr);
  // RedriveDeadLetters of `topic` (of the given ids only, if any); a failed call
  // fails the test and answers nothing.
  v1::RedriveDeadLettersResponse Redrive(const std::string& ns, const std::string& topic,
                                         const std::vector<std::string>& ids = {});

 private:
  std::unique_ptr<v1::Queue::Stub> stub_;
};

// Sets a generous real-time deadline on a context, so that a broken test fails
// instead of hanging.
void SetDeadline(grpc::ClientContext& ctx, int64_t ms = 20'000);

// Opens the Queue's bidi-stream `method` (e.g. "EnqueueStream") raw on the server at
// `port`, writes `good` (a serialized call) and reads its answer, then writes bytes
// that are no message; returns the status the stream ends with.
grpc::Status WriteGarbageOnStream(int port, const std::string& method,
                                  const std::string& good);

// The standard health service's answer for `service` ("" = the whole server) from
// the server at `port`; a failed call fails the test.
grpc::health::v1::HealthCheckResponse::ServingStatus HealthCheck(
    int port, const std::string& service = "");

// Moves `clock` a placement slot at a time (engine/placement.h) until enqueues
// without a dedup key in `ns` go to the shard in `position` (of `shards`, in ShardId
// order). A frozen clock keeps every such enqueue on one shard.
void AdvanceToSlotOf(FakeClock& clock, const std::string& ns, size_t position,
                     size_t shards);

// Waits (real time, bounded) until every shard of `engine` has finished its first
// open attempt, whether it opened or not; false on timeout.
bool AwaitFirstOpenAttempts(const engine::Engine& engine);

// Polls (real time, bounded) for something the server does asynchronously.
template <typename Pred>
bool Eventually(Pred pred, std::chrono::seconds limit = std::chrono::seconds(30)) {
  const auto until = std::chrono::steady_clock::now() + limit;
  while (!pred()) {
    if (std::chrono::steady_clock::now() >= until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

// A fixture with a fresh 2-shard server (fresh databases on the shared MariaDB, every
// shard open) on a FakeClock, and a client of it.
class LiveServerTest : public ::testing::Test {
 protected:
  void SetUp() override;
  // The server's limits, and changes to its config (policies, a metrics listener):
  // a fixture overrides these to test one of them.
  virtual frontend::Limits ServerLimits() const { return {}; }
  virtual void Configure(frontend::ServerConfig&) {}

  FakeClock clock_;
  std::unique_ptr<frontend::Server> server_;
  std::unique_ptr<QueueClient> client_;
};

}  // namespace shardq::testing
