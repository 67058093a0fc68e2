#include "shardq/worker.h"

#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <exception>
#include <iterator>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <unordered_set>
#include <utility>

#include "consume_calls.h"
#include "fetch_window.h"
#include "server_limits.h"
#include "shardq/v1/queue.grpc.pb.h"
#include "utf8.h"

namespace shardq::sdk {

namespace {

constexpr size_t kMaxBatch = server_limits::kMaxItemsPerCall;  // per Ack / Nack / Extend
using server_limits::kMaxErrorBytes;
using server_limits::kMaxLeaseExtension;
using server_limits::kMaxResultBytes;
using server_limits::kMaxRetryDelay;
using server_limits::kMaxWorkerIdBytes;

std::string DefaultWorkerId(Jitter& jitter) {
  char host[256] = {};
  if (gethostname(host, sizeof(host) - 1) != 0) host[0] = '\0';
  return std::string(host[0] ? host : "worker") + "-" + std::to_string(getpid()) + "-" +
         jitter.RandomHex128().substr(0, 8);
}

// Per-item codes that mean "the item is no longer ours".
bool LeaseGone(int code) {
  return code == grpc::StatusCode::FAILED_PRECONDITION ||
         code == grpc::StatusCode::NOT_FOUND;
}

bool RetriableRpc(grpc::StatusCode code) {
  return code == grpc::StatusCode::UNAVAILABLE ||
         code == grpc::StatusCode::DEADLINE_EXCEEDED ||
         code == grpc::StatusCode::RESOURCE_EXHAUSTED;
}

}  // namespace

const char* StopReasonName(StopReason reason) {
  switch (reason) {
    case StopReason::kNone:
      return "none";
    case StopReason::kCancelRequested:
      return "cancel_requested";
    case StopReason::kLeaseLost:
      return "lease_lost";
    case StopReason::kShutdown:
      return "shutdown";
  }
  return "unknown";
}

Outcome Outcome::Success(std::string result) {
  return Outcome(Kind::kSuccess, std::move(result), std::nullopt);
}
Outcome Outcome::Retry(std::string error, std::optional<Millis> delay) {
  return Outcome(Kind::kRetry, std::move(error), delay);
}
Outcome Outcome::Fatal(std::string error) {
  return Outcome(Kind::kFatal, std::move(error), std::nullopt);
}

// One delivery held by the worker (buffered or running). Fields other than `item`
// are guarded by Worker::Impl::mu_ (stop is atomic for cheap polling).
struct TaskContext::State {
  v1::DequeuedItem item;
  std::atomic<StopReason> stop{StopReason::kNone};
  bool reporting = false;  // its Ack/Nack is being sent: heartbeat answers are moot
  // When the lease has run out at the latest, on the worker's clock (see
  // LocalLeaseEnd); max() when an older server did not say its time.
  Millis lease_until = Millis::max();
  // When the heartbeat should extend it, whatever its interval: two thirds into the
  // lease it has (a task may be enqueued with a lease shorter than the interval).
  Millis renew_at = Millis::max();
  bool extending = false;  // in the heartbeat's ExtendLease call now
  std::optional<std::map<std::string, std::string>> retry_metadata;
};
using State = TaskContext::State;

// When a lease has run out at the latest, on the worker's clock: the server's answer
// left it `deadline - server_now` and arrived at `received`. (Not the time the call was
// sent: a long poll may wait long before it leases anything.) So a worker that cannot
// reach the server still knows when a task may be running elsewhere; it is late by the
// answer's transit only, and early only if an extension reached the server but its
// answer did not reach the worker.
Millis LocalLeaseEnd(Millis received, int64_t server_now_ms, int64_t deadline_ms) {
  if (server_now_ms <= 0 || deadline_ms <= 0) return Millis::max();
  return received + Bounded(Millis(deadline_ms - server_now_ms));
}

// Under Worker::Impl::mu_: records a lease the worker was given at `received`, ending
// at `until` on its clock.
void SetLease(State& st, Millis received, Millis until) {
  st.lease_until = until;
  st.renew_at = until == Millis::max()
                    ? until
                    : received + std::max(Millis(1), (until - received) * 2 / 3);
}

// The worker whose executor runs on this thread, if any (Stop from a handler).
thread_local const void* tl_executor_of = nullptr;

struct HandlerEntry {
  Handler handler;
  HandlerOptions options;
};

class Worker::Impl : public std::enable_shared_from_this<Impl> {
 public:
  explicit Impl(WorkerOptions options)
      : options_(std::move(options)),
        clock_(options_.clock ? *options_.clock : RealClock::Instance()),
        jitter_(options_.seed) {
    options_.concurrency = std::max(1, options_.concurrency);
    if (options_.buffer_size <= 0) options_.buffer_size = options_.concurrency;
    const auto buffer = static_cast<size_t>(options_.buffer_size);
    window_ = FetchWindow(buffer, options_.max_buffer_size <= 0
                                      ? kDefaultWindowGrowth * buffer
                                      : static_cast<size_t>(options_.max_buffer_size));
    // Durations within what the server takes (an extension it refuses would let
    // every lease run out) and what the clocks can add without overflow (Bounded).
    options_.lease_extension =
        std::clamp(options_.lease_extension, Millis(1), kMaxLeaseExtension);
    options_.heartbeat_interval = options_.heartbeat_interval <= Millis(0)
                                      ? std::max(Millis(1), options_.lease_extension / 3)
                                      : Bounded(options_.heartbeat_interval);
    options_.poll_wait = std::clamp(options_.poll_wait, Millis(0), Millis(60'000));
    options_.rpc_deadline = std::max(Millis(1), Bounded(options_.rpc_deadline));
    options_.report_budget = Bounded(options_.report_budget);
    if (options_.worker_id.empty()) options_.worker_id = DefaultWorkerId(jitter_);
    // It goes in every Dequeue: bytes that are not UTF-8, or a character cut in half,
    // would make them all unreadable to the server.
    options_.worker_id = ValidUtf8(options_.worker_id, kMaxWorkerIdBytes);
  }

  // ---- registration and lifecycle (called by Worker) ----

  void Handle(const std::string& type, Handler h, std::optional<HandlerOptions> o) {
    handlers_[type] =
        HandlerEntry{std::move(h), o.value_or(options_.default_handler_options)};
  }
  void HandleOther(Handler h, std::optional<HandlerOptions> o) {
    other_ = HandlerEntry{std::move(h), o.value_or(options_.default_handler_options)};
  }

  void Start() {
    {
      std::lock_guard lock(mu_);
      if (started_) return;
      started_ = true;
      // Under mu_: Stop may come at once and shut the dequeue stream.
      stub_ = v1::Queue::NewStub(MakeChannel(options_.connection));
      // Two streams: Stop ends the dequeue stream (and so a parked dequeue) at once,
      // while the outcomes still to send go on the other.
      dequeue_calls_ = std::make_unique<ConsumeCalls>(*stub_);
      report_calls_ = std::make_unique<ConsumeCalls>(*stub_);
    }
    std::weak_ptr<Impl> weak = weak_from_this();
    listener_id_ = clock_.AddListener([weak] {
      if (auto self = weak.lock()) self->Wake();
    });
    auto started = [this] {
      {
        std::lock_guard lock(mu_);
        threads_started_ = true;
      }
      cv_.notify_all();
    };
    try {
      for (int i = 0; i < kControllers; ++i) {
        controllers_.emplace_back([this] { ControllerLoop(); });
      }
      heartbeat_ = std::thread([this] { HeartbeatLoop(); });
      reporter_ = std::thread([this] { ReporterLoop(); });
      for (int i = 0; i < options_.concurrency; ++i) {
        executors_.emplace_back([this] { ExecutorLoop(); });
      }
    } catch (...) {
      started();  // a Stop joins the threads that did start
      throw;
    }
    started();
  }

  void Stop(Millis timeout) {
    {
      std::unique_lock lock(mu_);
      if (stopping_) {
        // Begun elsewhere (e.g. by a handler): wait for its end, unless this is a
        // handler, whose return the shutdown waits for.
        if (tl_executor_of != this) cv_.wait(lock, [&] { return stopped_; });
        return;
      }
      stopping_ = true;
      if (!started_) {
        stopped_ = true;
        WakeAll();
        return;
      }
      dequeue_calls_->Shutdown();  // a parked dequeue returns at once
    }
    WakeAll();
    if (tl_executor_of == this) {
      // Called by a handler: the rest joins the executors, this one included, so it
      // runs on a thread of its own while the handler returns and its outcome is
      // reported as usual. Wait() returns when it is done; the destructor joins it.
      stopper_ = std::thread([this, timeout] { FinishStop(timeout); });
      return;
    }
    FinishStop(timeout);
  }

  void Wait() {
    // A handler cannot wait for a shutdown that waits for it to return.
    if (tl_executor_of == this) return;
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return stopped_; });
  }

  // For the destructor: the shutdown is over, and so is the thread a handler's Stop
  // started for it.
  void AwaitStopped() {
    Wait();
    if (stopper_.joinable()) stopper_.join();
  }

 private:
  // Stop after fetching has stopped: hand back, let handlers finish, join.
  void FinishStop(Millis timeout) {
    {
      // A handler may stop the worker while Start() is still creating executors.
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return threads_started_; });
    }
    for (auto& t : controllers_) t.join();  // Start adds only started threads

    // Buffered tasks never started: give them back at once.
    std::deque<std::shared_ptr<State>> buffered;
    {
      std::lock_guard lock(mu_);
      buffered.swap(buffer_);
      stats_.buffered = 0;
    }
    HandBack(buffered);

    // Running handlers get `timeout` to finish, then are asked to stop.
    {
      std::unique_lock lock(mu_);
      Millis until = clock_.Now() + Bounded(timeout);
      while (!running_.empty() && clock_.Now() < until)
        clock_.WaitUntil(cv_, lock, until);
      if (!running_.empty()) {
        for (const auto& st : running_) {
          StopReason none = StopReason::kNone;
          st->stop.compare_exchange_strong(none, StopReason::kShutdown);
        }
        abort_reports_ = true;
      }
    }
    WakeAll();
    for (auto& t : executors_) t.join();
    // The executors are gone: the reporter sends what they left, then exits.
    {
      std::lock_guard lock(mu_);
      stop_reporter_ = true;
    }
    WakeAll();
    if (reporter_.joinable()) reporter_.join();  // not started if Start failed
    {
      std::lock_guard lock(mu_);
      stop_heartbeat_ = true;
    }
    WakeAll();
    if (heartbeat_.joinable()) heartbeat_.join();
    report_calls_->Shutdown();  // nothing is left to send
    clock_.RemoveListener(listener_id_);
    // Under mu_: a Wait() that returns may destroy the worker at once, so nothing of
    // it may be touched after mu_ is released.
    std::lock_guard lock(mu_);
    stopped_ = true;
    WakeAll();
  }

 public:
  WorkerStats stats() const {
    std::lock_guard lock(mu_);
    WorkerStats s = stats_;
    s.buffered = buffer_.size();
    s.window = window_.size();
    s.running = running_.size();
    return s;
  }

  const std::string& worker_id() const { return options_.worker_id; }

  // ---- used by TaskContext ----

  bool WaitCancelled(const State& st, Millis timeout) {
    std::unique_lock lock(mu_);
    Millis until = clock_.Now() + Bounded(timeout);
    while (st.stop.load() == StopReason::kNone && clock_.Now() < until) {
      clock_.WaitUntil(cv_, lock, until);
    }
    return st.stop.load() != StopReason::kNone;
  }

  bool SetRetryMetadata(State& st, std::map<std::string, std::string> m) {
    // Not valid UTF-8: the server could not read the Nack (and would end the stream
    // of every report with it). The handler's data is not altered: refused.
    for (const auto& [key, value] : m) {
      if (!IsValidUtf8(key) || !IsValidUtf8(value)) return false;
    }
    std::lock_guard lock(mu_);
    st.retry_metadata = std::move(m);
    return true;
  }

 private:
  void Wake() {
    { std::lock_guard lock(mu_); }
    cv_.notify_all();
  }

  // Every waiter of every kind (Stop changed a flag they all check).
  void WakeAll() {
    cv_.notify_all();
    executor_cv_.notify_all();
    controller_cv_.notify_all();
    reporter_cv_.notify_all();
  }

  // Waits `wait` on the worker's clock unless `interrupted()` (under mu_) turns true.
  // Returns false if interrupted.
  template <typename Pred>
  bool BackoffWait(std::unique_lock<std::mutex>& lock, Millis wait, Pred interrupted) {
    Millis until = clock_.Now() + Bounded(wait);
    while (!interrupted() && clock_.Now() < until) clock_.WaitUntil(cv_, lock, until);
    return !interrupted();
  }

  // ---- controller: fetches into the buffer ----

  // Under mu_: the window's slots that are neither filled nor asked for.
  size_t FreeSlots() const { return window_.Free(buffer_.size() + asked_); }
  size_t RefillAt() const { return window_.RefillAt(); }

  // Each controller asks for every free slot once at least half the buffer is free
  // (not at every free slot: one Dequeue, one lease transaction per shard, then brings
  // many tasks). With two controllers a second ask goes out while the first is on its
  // way, so a fast handler's executors do not run dry while they wait for a refill.
  void ControllerLoop() {
    uint32_t failures = 0;
    std::unique_lock lock(mu_);
    while (!stopping_) {
      if (FreeSlots() < RefillAt()) {
        controller_cv_.wait(lock, [&] { return stopping_ || FreeSlots() >= RefillAt(); });
        continue;
      }
      v1::DequeueRequest request = BuildDequeue(FreeSlots());
      size_t ask = 0;
      for (const auto& t : request.topics()) ask += static_cast<size_t>(t.count());
      asked_ += ask;
      v1::DequeueResponse response;
      lock.unlock();
      grpc::Status status = dequeue_calls_->Dequeue(
          request, &response, options_.poll_wait + options_.rpc_deadline);
      const Millis received = clock_.Now();
      lock.lock();
      asked_ -= ask;                // the answer's items go into the buffer below
      controller_cv_.notify_one();  // slots asked for and not filled are free again
      if (status.ok()) {
        failures = 0;
        window_.OnAnswer(ask > 0 && static_cast<size_t>(response.items_size()) >= ask,
                         buffer_.size());
        for (auto& item : *response.mutable_items()) {
          // A new lease of an item we still hold: the old lease ran out.
          MarkSupersededLost(item.id());
          auto st = std::make_shared<State>();
          SetLease(*st, received,
                   LocalLeaseEnd(received, response.server_time_ms(),
                                 item.lease_deadline_ms()));
          st->item = std::move(item);
          buffer_.push_back(std::move(st));
          ++stats_.fetched;
        }
        // The heartbeat sleeps until the next lease end it knows of.
        if (response.items_size() > 0) cv_.notify_all();
        if (response.items_size() == 1) {
          executor_cv_.notify_one();
        } else if (response.items_size() > 1) {
          executor_cv_.notify_all();
        }
        if (response.items_size() == 0 && options_.poll_wait == Millis(0)) {
          // No long poll: do not spin on an empty queue.
          BackoffWait(lock, options_.reconnect_backoff.base, [&] { return stopping_; });
        }
        continue;
      }
      if (stopping_) break;
      if (status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED &&
          options_.poll_wait > Millis(0)) {
        // The long poll outlived its real-time deadline (the server's clock is slower
        // than ours, e.g. a test's fake clock): just poll again. Without a long poll
        // (a tiny rpc_deadline) this is a failure, backed off, not a spin.
        continue;
      }
      ++failures;
      ++stats_.dequeue_errors;
      stats_.backing_off = true;
      BackoffWait(lock, jitter_.Delay(options_.reconnect_backoff, failures),
                  [&] { return stopping_; });
      stats_.backing_off = false;
    }
  }

  // Under mu_: flags the delivery's lease lost, counted once; false if it was already.
  // The caller wakes cv_ if a handler may be waiting on it (WaitCancelled).
  bool FlagLost(State& st) {
    if (st.stop.load() == StopReason::kLeaseLost) return false;
    st.stop.store(StopReason::kLeaseLost);
    ++stats_.lease_lost;
    return true;
  }

  // Under mu_: flags held deliveries of `id` as lost (it was delivered again).
  void MarkSupersededLost(const std::string& id) {
    auto mark = [&](const std::shared_ptr<State>& st) {
      if (st->item.id() == id && FlagLost(*st)) cv_.notify_all();
    };
    for (const auto& st : buffer_) mark(st);
    for (const auto& st : running_) {
      if (!st->reporting) mark(st);
    }
  }

  // Asks for `free` items in all, at most kMaxItemsPerCall (a grown window could
  // otherwise ask for more than one answer should carry), spread over at most that
  // many topics (rotating).
  v1::DequeueRequest BuildDequeue(size_t free) {
    free = std::min(free, server_limits::kMaxItemsPerCall);
    v1::DequeueRequest request;
    request.set_namespace_(options_.ns);
    request.set_wait_ms(options_.poll_wait.count());
    request.set_worker_id(options_.worker_id);
    const size_t n = options_.topics.size();
    if (n == 0) return request;
    size_t k = std::min(n, free);
    for (size_t j = 0; j < k; ++j) {
      auto* t = request.add_topics();
      t->set_topic(options_.topics[(topic_offset_ + j) % n]);
      size_t count = free / k + (j < free % k ? 1 : 0);
      t->set_count(
          static_cast<int32_t>(std::min(count, server_limits::kMaxCountPerTopic)));
    }
    topic_offset_ = (topic_offset_ + k) % n;
    return request;
  }

  // ---- executors: run handlers, report outcomes ----

  void ExecutorLoop() {
    tl_executor_of = this;
    std::unique_lock lock(mu_);
    bool ran = false;  // this executor has just run a task
    for (;;) {
      // Done with a task and nothing fetched to take: the executors outrun the
      // fetches, and the window may grow (FetchWindow).
      if (ran && buffer_.empty()) window_.ExecutorIdled();
      ran = false;
      // A reporter far behind (server slow or down) holds the executors back, so
      // outcomes waiting to be sent stay bounded.
      executor_cv_.wait(lock, [&] {
        return stopping_ || (!buffer_.empty() && reports_.size() < kMaxBatch);
      });
      if (stopping_) return;
      auto st = buffer_.front();
      buffer_.pop_front();
      // Half free: a controller fetches (see ControllerLoop).
      if (FreeSlots() >= RefillAt()) {
        controller_cv_.notify_one();
      }
      if (st->stop.load() == StopReason::kLeaseLost) continue;
      // It waited past its lease (and no extension of it is on its way): not ours now.
      if (!st->extending && st->lease_until <= clock_.Now()) {
        FlagLost(*st);
        continue;
      }
      running_.insert(st);
      ++stats_.started;
      ran = true;
      lock.unlock();
      Outcome outcome = Run(st);
      PendingReport report = ToReport(st, outcome);
      lock.lock();
      // The task stays in running_ (its lease is still extended) until the reporter
      // has sent its outcome; this executor takes the next task at once.
      if (st->stop.load() == StopReason::kLeaseLost) {
        running_.erase(st);  // someone else has it now: nothing to report
        if (running_.empty()) cv_.notify_all();  // Stop may be waiting for this
      } else {
        st->reporting = true;
        report.metadata = st->retry_metadata;
        reports_.push_back(std::move(report));
        reporter_cv_.notify_one();
      }
    }
  }

  const HandlerEntry* Find(const std::string& type) const {
    auto it = handlers_.find(type);
    if (it != handlers_.end()) return &it->second;
    return other_ ? &*other_ : nullptr;
  }

  Outcome Run(const std::shared_ptr<State>& st) {
    const HandlerEntry* entry = Find(st->item.task_type());
    if (!entry)
      return Outcome::Retry("no handler for task type '" + st->item.task_type() + "'");
    TaskContext ctx(st, owner_);
    try {
      return entry->handler(ctx);
    } catch (const std::exception& e) {
      return Outcome::Retry(e.what());
    } catch (...) {
      return Outcome::Retry("handler threw a non-standard exception");
    }
  }

  // An outcome on its way to the server (sent by the reporter thread).
  struct PendingReport {
    std::shared_ptr<State> st;
    Outcome::Kind kind = Outcome::Kind::kSuccess;
    std::string text;  // the result (success) or the error
    Millis delay{0};   // retry delay (kRetry)
    std::optional<std::map<std::string, std::string>> metadata;
  };

  PendingReport ToReport(const std::shared_ptr<State>& st, const Outcome& outcome) {
    PendingReport r{st, outcome.kind(), {}, Millis(0), std::nullopt};
    if (outcome.kind() == Outcome::Kind::kSuccess) {
      // The server refuses a longer result (and the task would run again and again
      // until dead-lettered), so it is cut here, as Outcome::Success documents.
      r.text = outcome.result().substr(0, kMaxResultBytes);
    } else {
      // The server keeps 4 KiB of it, but the whole Nack must fit its message limit
      // and parse: a proto3 string, so any bytes that are not UTF-8 are replaced.
      r.text = ValidUtf8(outcome.error(), kMaxErrorBytes);
    }
    if (outcome.kind() == Outcome::Kind::kRetry) {
      const HandlerEntry* entry = Find(st->item.task_type());
      const Backoff& b = entry ? entry->options.retry_backoff
                               : options_.default_handler_options.retry_backoff;
      r.delay = std::clamp(
          outcome.delay().value_or(
              jitter_.Delay(b, std::max<uint32_t>(1, st->item.attempts()))),
          Millis(0), kMaxRetryDelay);  // the server refuses a delay out of this range
    }
    return r;
  }

  // ---- reporter: sends outcomes, many per call ----

  // Executors hand their outcomes over and go on to the next task; this thread sends
  // every outcome queued by then in one Ack call (and one Nack call), so a handler's
  // next task never waits for the previous one's round trip, and calls grow with the
  // load. After Stop has joined the executors, it sends what is left and exits.
  void ReporterLoop() {
    std::unique_lock lock(mu_);
    for (;;) {
      reporter_cv_.wait(lock, [&] { return stop_reporter_ || !reports_.empty(); });
      if (reports_.empty()) return;
      const bool was_full = reports_.size() >= kMaxBatch;
      std::vector<PendingReport> batch;
      // A task at most once per call (the server refuses a call that names an item
      // twice): the outcomes of an old delivery and of its redelivery go in turn.
      std::unordered_set<std::string> ids;
      std::deque<PendingReport> later;
      while (!reports_.empty() && batch.size() < kMaxBatch) {
        PendingReport r = std::move(reports_.front());
        reports_.pop_front();
        if (ids.insert(r.st->item.id()).second) {
          batch.push_back(std::move(r));
        } else {
          later.push_back(std::move(r));
        }
      }
      reports_.insert(reports_.begin(), std::make_move_iterator(later.begin()),
                      std::make_move_iterator(later.end()));
      if (was_full) executor_cv_.notify_all();  // they may take tasks again
      lock.unlock();
      std::vector<int> codes = Send(batch);
      lock.lock();
      for (size_t i = 0; i < batch.size(); ++i) Record(batch[i], codes[i]);
      // Only Stop waits (on cv_) for running_ to empty; the handlers of these tasks
      // have returned, so none waits in WaitCancelled.
      if (running_.empty()) cv_.notify_all();
    }
  }

  // Sends the acks of `batch` in one call and its nacks in another; returns each
  // report's code.
  std::vector<int> Send(const std::vector<PendingReport>& batch) {
    std::vector<size_t> acks, nacks;
    for (size_t i = 0; i < batch.size(); ++i) {
      (batch[i].kind == Outcome::Kind::kSuccess ? acks : nacks).push_back(i);
    }
    std::vector<int> codes(batch.size(), static_cast<int>(grpc::StatusCode::INTERNAL));
    SendPart<v1::AckRequest, v1::AckResponse>(
        batch, acks, codes,
        [](v1::AckRequest& req, const PendingReport& r) {
          auto* a = req.add_items();
          a->set_id(r.st->item.id());
          a->set_lease_token(r.st->item.lease_token());
          a->set_result(r.text);
        },
        [&](const v1::AckRequest& req, v1::AckResponse* resp) {
          return report_calls_->Ack(req, resp, options_.rpc_deadline);
        });
    SendPart<v1::NackRequest, v1::NackResponse>(
        batch, nacks, codes,
        [](v1::NackRequest& req, const PendingReport& r) {
          auto* n = req.add_items();
          n->mutable_item()->set_id(r.st->item.id());
          n->mutable_item()->set_lease_token(r.st->item.lease_token());
          n->set_error(r.text);
          if (r.kind == Outcome::Kind::kFatal) {
            n->set_fatal(true);
          } else {
            n->set_delay_ms(r.delay.count());
          }
          if (r.metadata) {
            // Set even when empty: a set metadata replaces the task's, so {} clears it.
            auto& entries = *n->mutable_metadata()->mutable_entries();
            for (const auto& [key, v] : *r.metadata) entries[key] = v;
          }
        },
        [&](const v1::NackRequest& req, v1::NackResponse* resp) {
          return report_calls_->Nack(req, resp, options_.rpc_deadline);
        });
    return codes;
  }

  // Sends the reports batch[part[k]] in one call (SendWithRetries) and puts their
  // codes into `codes`.
  template <typename Req, typename Resp, typename Add, typename Rpc>
  void SendPart(const std::vector<PendingReport>& batch, const std::vector<size_t>& part,
                std::vector<int>& codes, const Add& add, const Rpc& rpc) {
    if (part.empty()) return;
    std::vector<int> c = SendWithRetries<Req, Resp>(
        part.size(), [&](Req& req, size_t k) { add(req, batch[part[k]]); }, rpc);
    for (size_t k = 0; k < part.size(); ++k) codes[part[k]] = c[k];
  }

  // Under mu_: counts a sent outcome and lets go of its task.
  void Record(const PendingReport& r, int code) {
    if (code == 0) {
      if (r.kind == Outcome::Kind::kSuccess) {
        ++stats_.succeeded;
      } else if (r.kind == Outcome::Kind::kFatal) {
        ++stats_.failed;
      } else {
        ++stats_.retried;
      }
    } else if (LeaseGone(code)) {
      FlagLost(*r.st);
    } else {
      ++stats_.report_errors;
    }
    running_.erase(r.st);
  }

  // Sends `n` items in one call (`add(request, i)` adds item i) and sends again the
  // ones that could not be taken (UNAVAILABLE / RESOURCE_EXHAUSTED, or a retriable
  // RPC failure), with backoff, for up to report_budget (cut short once Stop's timeout
  // ran out). Returns each item's code (or the last RPC error's).
  template <typename Req, typename Resp, typename Add, typename Rpc>
  std::vector<int> SendWithRetries(size_t n, const Add& add, const Rpc& rpc) {
    std::vector<int> codes(n, static_cast<int>(grpc::StatusCode::INTERNAL));
    std::vector<size_t> left;
    for (size_t i = 0; i < n; ++i) left.push_back(i);
    const Millis give_up = clock_.Now() + options_.report_budget;
    for (uint32_t attempt = 1; !left.empty(); ++attempt) {
      Req req;
      for (size_t i : left) add(req, i);
      Resp resp;
      grpc::Status s = rpc(req, &resp);
      const bool answered =
          s.ok() && resp.results_size() == static_cast<int>(left.size());
      std::vector<size_t> again;
      for (size_t k = 0; k < left.size(); ++k) {
        int code = !s.ok()    ? s.error_code()
                   : answered ? resp.results(static_cast<int>(k)).code()
                              : static_cast<int>(grpc::StatusCode::INTERNAL);
        codes[left[k]] = code;
        bool retry = s.ok() ? code == grpc::StatusCode::UNAVAILABLE ||
                                  code == grpc::StatusCode::RESOURCE_EXHAUSTED
                            : RetriableRpc(s.error_code());
        if (retry) again.push_back(left[k]);
      }
      left.swap(again);
      if (left.empty()) break;
      std::unique_lock lock(mu_);
      const Millis wait = Bounded(jitter_.Delay(options_.reconnect_backoff, attempt));
      if (abort_reports_ || clock_.Now() + wait >= give_up) break;
      if (!BackoffWait(lock, wait, [&] { return abort_reports_; })) break;
    }
    return codes;
  }

  // Nacks buffered, never started tasks with delay 0 so they are redelivered at once.
  void HandBack(const std::deque<std::shared_ptr<State>>& tasks) {
    std::vector<std::shared_ptr<State>> live;
    for (const auto& st : tasks) {
      if (st->stop.load() != StopReason::kLeaseLost) live.push_back(st);
    }
    for (size_t from = 0; from < live.size(); from += kMaxBatch) {
      size_t to = std::min(live.size(), from + kMaxBatch);
      v1::NackRequest req;
      for (size_t i = from; i < to; ++i) {
        auto* n = req.add_items();
        n->mutable_item()->set_id(live[i]->item.id());
        n->mutable_item()->set_lease_token(live[i]->item.lease_token());
        n->set_delay_ms(0);
        n->set_error("handed back unstarted: worker " + options_.worker_id + " stopping");
      }
      v1::NackResponse resp;
      grpc::Status s = report_calls_->Nack(req, &resp, options_.rpc_deadline);
      std::lock_guard lock(mu_);
      for (size_t i = from; i < to; ++i) {
        bool ok = s.ok() && resp.results_size() == static_cast<int>(to - from) &&
                  resp.results(static_cast<int>(i - from)).code() == 0;
        if (ok) {
          ++stats_.handed_back;
        } else {
          ++stats_.report_errors;  // it comes back when its lease runs out
        }
      }
    }
  }

  // ---- heartbeat: extends every held lease ----

  void HeartbeatLoop() {
    std::unique_lock lock(mu_);
    Millis next = clock_.Now() + options_.heartbeat_interval;
    while (!stop_heartbeat_) {
      const Millis now = clock_.Now();
      // A lease due for renewal (two thirds through) brings the beat forward.
      const LeaseTimes due = ExpireLeasesLocally(now);
      if (now < next && now < due.renew) {
        clock_.WaitUntil(cv_, lock, std::min({next, due.renew, due.end}));
        continue;
      }
      next = now + options_.heartbeat_interval;
      // A task held twice (an old delivery still running and its redelivery) is
      // extended once, by its latest delivery: the server refuses a call that names an
      // item twice, and the old delivery's token is stale anyway (so it is never due).
      std::map<std::string, std::shared_ptr<State>> latest;
      auto hold = [&](const std::shared_ptr<State>& st) {
        if (st->stop.load() == StopReason::kLeaseLost) return;
        auto [it, added] = latest.try_emplace(st->item.id(), st);
        if (added) return;
        std::shared_ptr<State> older = st;
        if (st->item.attempts() > it->second->item.attempts())
          std::swap(older, it->second);
        older->renew_at = Millis::max();
      };
      for (const auto& st : buffer_) hold(st);
      for (const auto& st : running_) hold(st);
      if (latest.empty()) continue;
      std::vector<std::shared_ptr<State>> held;
      for (auto& [id, st] : latest) {
        st->extending = true;  // an executor must not drop it for its old lease end
        held.push_back(std::move(st));
      }
      lock.unlock();
      for (size_t from = 0; from < held.size(); from += kMaxBatch) {
        size_t to = std::min(held.size(), from + kMaxBatch);
        Extend(
            std::vector<std::shared_ptr<State>>(held.begin() + from, held.begin() + to));
      }
      lock.lock();
    }
  }

  struct LeaseTimes {
    Millis end = Millis::max();    // the next lease end of a task not yet reporting
    Millis renew = Millis::max();  // the next renewal of a held lease
  };

  // Under mu_: flags the held tasks whose lease may have run out by the worker's clock
  // (the server was out of reach for the heartbeats that would have extended it), so
  // that a handler stops rather than run on while the task is delivered elsewhere.
  // Returns when the next of the other leases runs out and is due for renewal.
  LeaseTimes ExpireLeasesLocally(Millis now) {
    LeaseTimes next;
    bool flagged = false;
    auto check = [&](const std::shared_ptr<State>& st) {
      if (st->stop.load() == StopReason::kLeaseLost) return;
      next.renew = std::min(next.renew, st->renew_at);
      if (st->reporting) return;  // its outcome decides; the lease is still extended
      if (st->lease_until > now) {
        next.end = std::min(next.end, st->lease_until);
        return;
      }
      flagged = FlagLost(*st) || flagged;
    };
    for (const auto& st : buffer_) check(st);
    for (const auto& st : running_) check(st);
    if (flagged) cv_.notify_all();  // handlers in WaitCancelled
    return next;
  }

  void Extend(const std::vector<std::shared_ptr<State>>& batch) {
    v1::ExtendLeaseRequest req;
    for (const auto& st : batch) {
      auto* e = req.add_items();
      e->mutable_item()->set_id(st->item.id());
      e->mutable_item()->set_lease_token(st->item.lease_token());
      e->set_extension_ms(options_.lease_extension.count());
    }
    v1::ExtendLeaseResponse resp;
    grpc::Status s = report_calls_->ExtendLease(req, &resp, options_.rpc_deadline);
    // Each new deadline is the server's now + extension, and its now came before this.
    const Millis received = clock_.Now();
    const bool answered = s.ok() && resp.results_size() == static_cast<int>(batch.size());
    // A renewal that failed is tried again this much later (or at the next beat).
    const Millis retry_at =
        received + std::min(options_.heartbeat_interval, Millis(1000));
    bool changed = false;
    {
      std::lock_guard lock(mu_);
      for (size_t i = 0; i < batch.size(); ++i) {
        State& st = *batch[i];
        st.extending = false;
        const int code = answered ? resp.results(static_cast<int>(i)).status().code()
                                  : grpc::StatusCode::UNAVAILABLE;
        if (code != 0) {
          st.renew_at = std::max(st.renew_at, retry_at);
          if (LeaseGone(code) && !st.reporting && FlagLost(st)) changed = true;
          continue;
        }
        const v1::ExtendResult& r = resp.results(static_cast<int>(i));
        ++stats_.extends_ok;
        SetLease(st, received, received + options_.lease_extension);
        if (r.cancel_requested()) {
          StopReason none = StopReason::kNone;
          if (st.stop.compare_exchange_strong(none, StopReason::kCancelRequested)) {
            ++stats_.cancel_requested;
            changed = true;
          }
        }
      }
    }
    if (changed) cv_.notify_all();
  }

 public:
  Worker* owner_ = nullptr;

 private:
  WorkerOptions options_;
  Clock& clock_;
  Jitter jitter_;
  std::unique_ptr<v1::Queue::Stub> stub_;
  std::unique_ptr<ConsumeCalls> dequeue_calls_;  // the controller's
  std::unique_ptr<ConsumeCalls> report_calls_;   // reporter's, heartbeat's, hand-back's
  std::map<std::string, HandlerEntry> handlers_;
  std::optional<HandlerEntry> other_;
  int listener_id_ = 0;

  mutable std::mutex mu_;
  // Each kind of thread waits on its own condition, so that a new task wakes one
  // executor, not every thread of the worker. cv_ is for the timed waits on the
  // worker's clock (heartbeat, backoff, Stop, WaitCancelled).
  std::condition_variable cv_;
  std::condition_variable executor_cv_;    // a task is buffered (or room for reports)
  std::condition_variable controller_cv_;  // half the buffer is free
  std::condition_variable reporter_cv_;    // an outcome is waiting to be sent
  std::deque<std::shared_ptr<State>> buffer_;
  std::set<std::shared_ptr<State>> running_;  // started, outcome not yet sent
  std::deque<PendingReport> reports_;         // outcomes for the reporter
  size_t topic_offset_ = 0;
  size_t asked_ = 0;          // slots asked for by the dequeues in flight
  FetchWindow window_{1, 1};  // tasks kept ahead of the executors (set by the ctor)
  bool started_ = false;
  bool stopping_ = false;
  bool abort_reports_ = false;
  bool stop_heartbeat_ = false;
  bool stop_reporter_ = false;
  bool stopped_ = false;
  bool threads_started_ = false;  // Start() is done creating threads (or failed to)
  WorkerStats stats_;

  static constexpr int kControllers = 2;
  // max_buffer_size 0: the window grows up to this many times buffer_size.
  static constexpr size_t kDefaultWindowGrowth = 8;
  std::vector<std::thread> controllers_;
  std::thread heartbeat_;
  std::thread reporter_;
  std::vector<std::thread> executors_;
  std::thread stopper_;  // runs a Stop that a handler began
};

// ---- TaskContext ----

TaskContext::TaskContext(std::shared_ptr<State> state, Worker* worker)
    : state_(std::move(state)), worker_(worker) {
  for (const auto& [k, v] : state_->item.metadata().entries()) metadata_[k] = v;
}
const std::string& TaskContext::id() const { return state_->item.id(); }
const std::string& TaskContext::topic() const { return state_->item.topic(); }
const std::string& TaskContext::task_type() const { return state_->item.task_type(); }
const std::string& TaskContext::payload() const { return state_->item.payload(); }
int32_t TaskContext::priority() const { return state_->item.priority(); }
uint32_t TaskContext::attempt() const { return state_->item.attempts(); }
uint32_t TaskContext::max_attempts() const { return state_->item.max_attempts(); }
int64_t TaskContext::enqueued_at_ms() const { return state_->item.enqueued_at_ms(); }
int64_t TaskContext::due_at_ms() const { return state_->item.deliver_after_ms(); }
StopReason TaskContext::stop_reason() const { return state_->stop.load(); }
bool TaskContext::WaitCancelled(Millis timeout) const {
  return worker_->impl_->WaitCancelled(*state_, timeout);
}
bool TaskContext::SetRetryMetadata(std::map<std::string, std::string> metadata) {
  return worker_->impl_->SetRetryMetadata(*state_, std::move(metadata));
}

// ---- Worker ----

Worker::Worker(WorkerOptions options)
    : impl_(std::make_shared<Impl>(std::move(options))) {
  impl_->owner_ = this;
}
Worker::~Worker() {
  impl_->Stop(Millis(30'000));
  impl_->AwaitStopped();  // a Stop begun by a handler finishes on a thread of its own
}
Worker& Worker::Handle(const std::string& task_type, Handler handler,
                       std::optional<HandlerOptions> options) {
  impl_->Handle(task_type, std::move(handler), options);
  return *this;
}
Worker& Worker::HandleOther(Handler handler, std::optional<HandlerOptions> options) {
  impl_->HandleOther(std::move(handler), options);
  return *this;
}
void Worker::Start() { impl_->Start(); }
void Worker::Stop(Millis timeout) { impl_->Stop(timeout); }
void Worker::Wait() { impl_->Wait(); }
const std::string& Worker::worker_id() const { return impl_->worker_id(); }
WorkerStats Worker::stats() const { return impl_->stats(); }

}  // namespace shardq::sdk
