#pragma once
// Producer: enqueues tasks, one or a batch per call, synchronously or asynchronously
// (std::future or a callback). Each call has a deadline that bounds all its attempts;
// UNAVAILABLE / RESOURCE_EXHAUSTED answers are retried with capped full-jitter
// exponential backoff. With retries on, every item carries a dedup_key (unless the
// caller gave one: "~", a millisecond timestamp, then 76 random bits, see
// Jitter::TimeOrderedKey), so a retry of an enqueue that did
// commit is deduplicated by the server instead of creating a second task.
//
// The strings of a task that go in proto3 `string` fields (topic, task_type,
// dedup_key, metadata keys and values, and the namespace) must be valid UTF-8: the
// server could not read a message with other bytes, and would end the stream it came
// on, failing the other calls on it too. A task with such a string is refused here,
// unsent: its result is INVALID_ARGUMENT with attempts 0 (the other tasks of a batch
// go on as usual). Bytes go in the payload.
//
// Each attempt goes out at once as one message of the Producer's EnqueueStream (opened
// on first use, and again after it broke) and is answered as soon as its items are
// committed. Against a server without that stream (UNIMPLEMENTED) the Producer falls
// back to Enqueue RPCs: calls made while two are in flight wait for one of them to
// return and then travel together in one RPC (each caller still gets its own items'
// answers). Retries take the same way.
//
// Threads: one timer thread per Producer runs the retries of asynchronous calls and
// ends attempts that get no answer by their deadline; gRPC runs the completion
// callbacks on its own threads, so a callback that blocks holds up the answers of the
// calls behind it.

#include <grpcpp/support/status.h>

#include <cstdint>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "shardq/backoff.h"
#include "shardq/clock.h"
#include "shardq/connection.h"

namespace shardq::sdk {

// One task to enqueue (see EnqueueItem in proto/shardq/v1/queue.proto).
struct NewTask {
  // The topic (one priority queue) in the producer's namespace.
  std::string topic{};
  // The immutable body, at most 10 KiB.
  std::string payload{};
  // Routes the task to a worker's handler; may be empty.
  std::string task_type{};
  // Lower runs sooner.
  int32_t priority = 0;
  // Initial metadata.
  std::map<std::string, std::string> metadata{};
  // Run no earlier than now + delay (0 = now). Ignored when deliver_after_ms is set.
  Millis delay{0};
  // Run no earlier than this absolute time (unix ms), if set.
  std::optional<int64_t> deliver_after_ms{};
  // Lease length once dequeued (0 = the server default, 30 s).
  Millis lease{0};
  // Drop the task if not finished within this time (0 = keep).
  Millis ttl{0};
  // Idempotency key (1..128 bytes); empty = a random one when retries are on.
  std::string dedup_key{};
  // Deliveries before the task is dead-lettered (0 = the namespace default).
  int32_t max_attempts = 0;
};

// What happened to one enqueued task.
struct EnqueueResult {
  // OK, or why the task was not enqueued (after the last attempt).
  grpc::Status status{};
  // The task's id when status is OK.
  std::string id{};
  // True when the server matched dedup_key to an existing task (`id` is that one's).
  bool deduplicated = false;
  // The dedup key sent with the task (the caller's or the generated one; empty if none).
  std::string dedup_key{};
  // How many RPC attempts it took (0: refused before sending, see the file comment).
  int attempts = 0;

  // Shorthand for status.ok().
  bool ok() const { return status.ok(); }
};

// Retry behaviour of the producer's calls.
struct RetryPolicy {
  // Attempts per call, the first included; 1 = no retries (and no generated dedup keys).
  int max_attempts = 5;
  // Waits between attempts: uniform(0, min(cap, base * 2^(n-1))) before retry n.
  Backoff backoff{.base = Millis(100), .cap = Millis(5'000)};
};

// Everything a Producer needs.
struct ProducerOptions {
  // The server and the channel.
  ConnectionOptions connection{};
  // The namespace tasks go to.
  std::string ns = "default";
  // Default deadline of a call, all attempts and backoff waits included.
  Millis deadline{10'000};
  // Default retry policy.
  RetryPolicy retry{};
  // Times the backoff waits; null = RealClock. Must outlive the Producer.
  Clock* clock = nullptr;
  // Seed of the jitter and dedup-key generator; 0 = nondeterministic.
  uint64_t seed = 0;
};

// Per-call overrides of ProducerOptions.
struct CallOptions {
  // This call's deadline instead of ProducerOptions::deadline.
  std::optional<Millis> deadline{};
  // This call's attempts instead of RetryPolicy::max_attempts.
  std::optional<int> max_attempts{};
};

// Enqueues tasks. Thread-safe; cheap to share. The destructor waits for outstanding
// asynchronous calls (pending retries end at once with CANCELLED).
class Producer {
 public:
  // Connects lazily (the first call opens the channel).
  explicit Producer(ProducerOptions options);
  ~Producer();
  Producer(const Producer&) = delete;
  Producer& operator=(const Producer&) = delete;

  // Enqueues one task and waits for the outcome.
  EnqueueResult Enqueue(const NewTask& task, const CallOptions& call = {});
  // Enqueues up to 1000 tasks in one call (retries only the items that need it);
  // one result per task, in order.
  std::vector<EnqueueResult> EnqueueBatch(const std::vector<NewTask>& tasks,
                                          const CallOptions& call = {});

  // Enqueue without blocking; the future resolves with the outcome.
  std::future<EnqueueResult> EnqueueAsync(const NewTask& task,
                                          const CallOptions& call = {});
  // EnqueueBatch without blocking.
  std::future<std::vector<EnqueueResult>> EnqueueBatchAsync(
      const std::vector<NewTask>& tasks, const CallOptions& call = {});
  // Enqueue without blocking; `done` runs once with the outcome, on a gRPC or the
  // producer's timer thread (keep it short; it must not destroy the Producer).
  void EnqueueAsync(const NewTask& task, std::function<void(EnqueueResult)> done,
                    const CallOptions& call = {});
  // EnqueueBatch without blocking; `done` as for EnqueueAsync.
  void EnqueueBatchAsync(const std::vector<NewTask>& tasks,
                         std::function<void(std::vector<EnqueueResult>)> done,
                         const CallOptions& call = {});

  class Impl;  // implementation detail

 private:
  std::shared_ptr<Impl> impl_;
};

}  // namespace shardq::sdk
