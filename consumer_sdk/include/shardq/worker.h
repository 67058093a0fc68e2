#pragma once
// Worker: runs handlers for the tasks of one namespace's topics.
//
//   2 controller threads: long-poll Dequeue (with worker_id) into a small local
//                      buffer: one asks for every free slot once half the buffer is
//                      free (slots asked for count as taken), so while one ask is on
//                      its way the other can already ask for the slots freed since;
//                      each backs off (capped, jittered) while the server is
//                      unreachable, and resumes by itself. The buffer grows (up to
//                      max_buffer_size) while fast handlers wait on the fetches,
//                      and shrinks back when tasks wait on the handlers.
//   executor threads (concurrency): take buffered tasks, run the handler of their
//                      task_type, hand the outcome to the reporter and take the next
//                      task at once (held back only while 1,000 outcomes wait).
//   reporter thread:   sends the outcomes: Ack (with the result) or Nack (retry with
//                      full-jitter backoff, or fatal); everything handed over while a
//                      call is in flight goes in the next call. A task's lease is
//                      extended until its outcome is sent.
//   heartbeat thread:  every heartbeat_interval, one batched ExtendLease for every task
//                      the worker holds, and sooner when a lease is two thirds
//                      through (one enqueued with a short lease); a lost lease or
//                      cancel_requested flags the task's TaskContext so its handler
//                      can stop. It also keeps each lease's end on the worker's clock
//                      (from the server's time in the answers), so a lease that runs
//                      out while the server is out of reach flags its task too: by
//                      then it may run elsewhere.
//
// So a Worker uses exactly 4 + concurrency threads (plus gRPC's own). Stop() stops
// fetching at once, hands buffered tasks back (Nack, delay 0), lets running handlers
// finish within its timeout (then flags them cancelled), reports their outcomes and
// joins every thread. A handler may call Stop() too: fetching stops at once and the
// rest runs on one extra thread, so the handler can return; Wait() returns when done.

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "shardq/backoff.h"
#include "shardq/clock.h"
#include "shardq/connection.h"

namespace shardq::sdk {

// Why a handler is asked to stop.
enum class StopReason {
  kNone = 0,         // keep going
  kCancelRequested,  // CancelTask was called for this task
  kLeaseLost,        // the lease expired or was taken over: the task may run elsewhere
  kShutdown,         // Worker::Stop's timeout ran out
};

// Readable name of a StopReason ("none", "cancel_requested", ...).
const char* StopReasonName(StopReason reason);

// What a handler returns.
class Outcome {
 public:
  // Which way the task went.
  enum class Kind { kSuccess, kRetry, kFatal };

  // Done: Ack, keeping `result` for GetTask (its first 4 KiB: the server's limit).
  static Outcome Success(std::string result = {});
  // Failed, try again later: Nack with `error` and a full-jitter backoff delay (or
  // `delay` if given, brought within 0 .. 366 days). Past max_attempts the server
  // dead-letters the task. The error becomes the task's last_error: its first 4 KiB
  // (the server's limit; cut between characters), with each byte that is not UTF-8
  // replaced by U+FFFD (it travels as a proto3 string).
  static Outcome Retry(std::string error, std::optional<Millis> delay = std::nullopt);
  // Failed for good: Nack with fatal = true (`error` as for Retry).
  static Outcome Fatal(std::string error);

  // Which kind of outcome this is.
  Kind kind() const { return kind_; }
  // The result bytes of a Success.
  const std::string& result() const { return text_; }
  // The error text of a Retry or Fatal.
  const std::string& error() const { return text_; }
  // The explicit delay of a Retry, if any.
  const std::optional<Millis>& delay() const { return delay_; }

 private:
  Outcome(Kind kind, std::string text, std::optional<Millis> delay)
      : kind_(kind), text_(std::move(text)), delay_(delay) {}
  Kind kind_;
  std::string text_;
  std::optional<Millis> delay_;
};

class Worker;

// One delivery of a task, as seen by its handler. Valid during the handler call only.
class TaskContext {
 public:
  // The task's id.
  const std::string& id() const;
  // The topic it came from.
  const std::string& topic() const;
  // Its task type (may be empty).
  const std::string& task_type() const;
  // The payload.
  const std::string& payload() const;
  // Its metadata at delivery.
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // Its priority.
  int32_t priority() const;
  // This delivery's number (1 = first).
  uint32_t attempt() const;
  // Deliveries allowed (0 if the server did not say); attempt() == max_attempts() is
  // the last try.
  uint32_t max_attempts() const;
  // When it was enqueued (unix ms, server time).
  int64_t enqueued_at_ms() const;
  // When this delivery became due (unix ms, server time): the task's deliver-after
  // time (for an item without a delay, when the server read the enqueue), or for a
  // redelivery the end of its nack's delay or of its last lease, or its redrive. The
  // handler's start minus this is how late the task ran, on the server's clock (a
  // worker on another host adds the hosts' clock offset).
  int64_t due_at_ms() const;

  // True once the handler should stop (see stop_reason()). Cheap; poll it.
  bool cancelled() const { return stop_reason() != StopReason::kNone; }
  // Why the handler should stop, or kNone.
  StopReason stop_reason() const;
  // Blocks until cancelled() or `timeout` passed on the worker's clock; returns
  // cancelled(). Use it instead of sleeping in a handler.
  bool WaitCancelled(Millis timeout) const;

  // Replaces the task's metadata if this delivery ends in a Retry/Fatal Nack (e.g. to
  // carry progress to the next attempt); {} clears it. Returns false, and changes
  // nothing, if a key or value is not valid UTF-8 (proto3 strings: the server could
  // not read the Nack): the Nack then carries what an earlier call set, or leaves
  // the task's metadata as it is.
  bool SetRetryMetadata(std::map<std::string, std::string> metadata);

  struct State;  // the worker's view of the delivery (implementation detail)
  TaskContext(std::shared_ptr<State> state, Worker* worker);

 private:
  friend class Worker;
  std::shared_ptr<State> state_;
  Worker* worker_;
  std::map<std::string, std::string> metadata_;
};

// A handler: runs one task and says how it went. Throwing counts as
// Outcome::Retry(e.what()).
using Handler = std::function<Outcome(TaskContext&)>;

// Per-task-type settings.
struct HandlerOptions {
  // Nack delay of Outcome::Retry without an explicit delay:
  // uniform(0, min(cap, base * 2^(attempt-1))).
  Backoff retry_backoff{.base = Millis(1'000), .cap = Millis(5 * 60'000)};
};

// Counters, for monitoring and tests (a consistent snapshot).
struct WorkerStats {
  uint64_t fetched = 0;           // tasks received from Dequeue
  uint64_t started = 0;           // handler runs started
  uint64_t succeeded = 0;         // acked
  uint64_t retried = 0;           // nacked for a retry
  uint64_t failed = 0;            // nacked fatal
  uint64_t handed_back = 0;       // buffered tasks given back at Stop
  uint64_t lease_lost = 0;        // tasks whose lease was lost
  uint64_t cancel_requested = 0;  // tasks whose cancellation was requested
  uint64_t extends_ok = 0;        // successful per-task lease extensions
  uint64_t dequeue_errors = 0;    // failed Dequeue calls
  uint64_t report_errors = 0;     // Ack/Nack that failed for good
  size_t buffered = 0;            // tasks fetched, not started
  size_t window = 0;              // tasks it fetches ahead now (see buffer_size)
  size_t running = 0;             // handlers running (or reporting their outcome)
  bool backing_off = false;       // the controller is waiting to retry the server
};

// Everything a Worker needs.
struct WorkerOptions {
  // The server and the channel.
  ConnectionOptions connection{};
  // The namespace of the topics.
  std::string ns = "default";
  // The topics to consume (1..100).
  std::vector<std::string> topics{};
  // Sent with every Dequeue (DequeueRequest.worker_id, recorded with each lease);
  // empty = "<host>-<pid>-<random>". Made what the server reads: bytes that are not
  // UTF-8 become U+FFFD, and it is cut to 128 bytes between characters.
  std::string worker_id{};
  // Handlers running at once (executor threads).
  int concurrency = 4;
  // Tasks kept ahead of the executors (fetched and not started, or asked for) at
  // first, and while the handlers are slower than a fetch's round trip; 0 =
  // concurrency. Keep it >= the number of topics (a fetch asks at most this many
  // topics at once, rotating, when the window is at this size).
  int buffer_size = 0;
  // How far that window may grow while the handlers finish faster than a fetch comes
  // back: it doubles when an answer brought all it asked for and an executor waited
  // for tasks the server had, and shrinks by the tasks left waiting when an answer
  // comes, down to buffer_size (src/fetch_window.h). 0 = 8 x buffer_size;
  // buffer_size or less = a fixed window of buffer_size (as before this option).
  // A fetch asks for at most 1,000 tasks.
  int max_buffer_size = 0;
  // Long-poll wait of a Dequeue (server time), at most 60 s.
  Millis poll_wait{20'000};
  // Each heartbeat extends leases to now + this (server time), 1 ms .. 12 h (what
  // the server takes; brought within). A lease shorter than the heartbeat interval
  // (as enqueued) is extended two thirds into it all the same (by a server that
  // sends its time with each Dequeue answer: this release's).
  Millis lease_extension{30'000};
  // Time between heartbeats; 0 = lease_extension / 3; at most kLongestWait.
  Millis heartbeat_interval{0};
  // Deadline of each unary call (Ack, Nack, ExtendLease), real time; 1 ms ..
  // kLongestWait (Millis::max() = as long as it takes).
  Millis rpc_deadline{10'000};
  // How long an Ack/Nack is retried while the server is unreachable (worker clock);
  // 0 .. kLongestWait.
  Millis report_budget{30'000};
  // Waits between failed Dequeue calls (and Ack/Nack retries).
  Backoff reconnect_backoff{.base = Millis(100), .cap = Millis(10'000)};
  // Retry backoff for task types registered without HandlerOptions.
  HandlerOptions default_handler_options{};
  // Times every wait; null = RealClock. Must outlive the Worker.
  Clock* clock = nullptr;
  // Jitter seed; 0 = nondeterministic.
  uint64_t seed = 0;
};

// Consumes tasks. Register handlers, then Start(); Stop() (or the destructor) shuts
// down gracefully. Handle*/Start/Stop are not meant to be called concurrently.
class Worker {
 public:
  // Does not connect or start threads yet.
  explicit Worker(WorkerOptions options);
  // Stop(Millis(30'000)) if still running (with a ManualClock, only an Advance ends its
  // timeout). Not from one of its own handlers (the shutdown waits for them).
  ~Worker();
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // Runs `handler` for tasks of `task_type` ("" = tasks enqueued without a type).
  // Before Start() only. Returns *this for chaining.
  Worker& Handle(const std::string& task_type, Handler handler,
                 std::optional<HandlerOptions> options = std::nullopt);
  // Runs `handler` for tasks whose type has no handler of its own. Without it such
  // tasks are nacked as retriable ("no handler for task type ...").
  Worker& HandleOther(Handler handler,
                      std::optional<HandlerOptions> options = std::nullopt);

  // Starts the threads; returns at once. The server need not be up.
  void Start();
  // Graceful shutdown (see the file comment); `timeout` on the worker's clock. Then
  // joins all threads. Idempotent: a second call waits for the first one's end. From
  // a handler it returns at once and the shutdown goes on without it (Wait() and the
  // destructor wait for its end).
  void Stop(Millis timeout = Millis(30'000));
  // Blocks until a Stop() (from another thread, a signal-driven loop or a handler) has
  // finished. From a handler it returns at once: the shutdown waits for the handler.
  void Wait();

  // The worker id sent to the server.
  const std::string& worker_id() const;
  // A snapshot of the counters.
  WorkerStats stats() const;

  class Impl;  // implementation detail

 private:
  friend class TaskContext;
  std::shared_ptr<Impl> impl_;
};

}  // namespace shardq::sdk
