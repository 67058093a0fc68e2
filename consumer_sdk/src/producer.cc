#include "shardq/producer.h"

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <deque>
#include <map>
#include <optional>
#include <thread>
#include <utility>

#include "call_stream_client.h"
#include "server_limits.h"
#include "shardq/v1/queue.grpc.pb.h"
#include "utf8.h"

namespace shardq::sdk {

using EnqueueStreamClient =
    CallStreamClient<v1::EnqueueStreamRequest, v1::EnqueueStreamResponse>;
namespace {

// Codes worth another attempt: the server could not take the item now.
bool Retriable(int code) {
  return code == grpc::StatusCode::UNAVAILABLE ||
         code == grpc::StatusCode::RESOURCE_EXHAUSTED;
}

// Why `task` cannot be sent, if a string of it that goes in a proto3 `string` field is
// not valid UTF-8: the server could not parse the message, and would end the stream
// and every other call on it. The task is refused here instead (its data is not
// altered behind the caller's back).
std::optional<std::string> NotUtf8(const NewTask& task) {
  if (!IsValidUtf8(task.topic)) return "topic is not valid UTF-8";
  if (!IsValidUtf8(task.task_type)) return "task_type is not valid UTF-8";
  if (!IsValidUtf8(task.dedup_key)) return "dedup_key is not valid UTF-8";
  for (const auto& [key, value] : task.metadata) {
    if (!IsValidUtf8(key)) return "a metadata key is not valid UTF-8";
    if (!IsValidUtf8(value)) return "metadata['" + key + "'] is not valid UTF-8";
  }
  return std::nullopt;
}

v1::EnqueueItem ToProto(const NewTask& task) {
  v1::EnqueueItem item;
  item.set_topic(task.topic);
  item.set_priority(task.priority);
  item.set_payload(task.payload);
  for (const auto& [k, v] : task.metadata)
    (*item.mutable_metadata()->mutable_entries())[k] = v;
  if (task.deliver_after_ms) {
    item.set_deliver_after_ms(*task.deliver_after_ms);
  } else if (task.delay.count() > 0) {
    item.set_delay_ms(task.delay.count());
  }
  item.set_lease_ms(task.lease.count());
  item.set_ttl_ms(task.ttl.count());
  item.set_task_type(task.task_type);
  item.set_dedup_key(task.dedup_key);
  item.set_max_attempts(task.max_attempts);
  return item;
}

}  // namespace

struct BatchOp;

// An attempt waiting for its answer on an EnqueueStream, by deadline.
struct StreamCall {
  std::weak_ptr<EnqueueStreamClient> stream;
  uint64_t id = 0;
  std::weak_ptr<BatchOp> op;
};
using StreamDeadlines = std::multimap<Millis, StreamCall>;

// One asynchronous Enqueue call and its retries.
struct BatchOp {
  std::vector<v1::EnqueueItem> items;
  std::vector<EnqueueResult> results;
  std::vector<size_t> pending;  // indices of items still to send
  int attempt = 0;
  int max_attempts = 1;
  Millis clock_deadline{0};                        // on the producer's clock
  std::chrono::system_clock::time_point deadline;  // real time, for gRPC
  std::function<void(std::vector<EnqueueResult>)> done;
  // Set while an attempt waits on a stream (guarded by the producer's mutex).
  std::optional<StreamDeadlines::iterator> stream_deadline;
};

// One Enqueue RPC carrying attempts of several ops (Impl::Dispatch).
struct SharedCall {
  // Lets the producer's Close() proceed (Impl::CallGuard). The first member, so it
  // goes last: after ctx, which holds a reference to the channel that Close() lets
  // the Impl release (the last reference must not go on a gRPC thread).
  std::shared_ptr<void> guard;
  grpc::ClientContext ctx;
  v1::EnqueueRequest request;
  v1::EnqueueResponse response;
  std::vector<std::shared_ptr<BatchOp>> ops;  // in request order; cleared on reply
};

class Producer::Impl : public std::enable_shared_from_this<Impl> {
 public:
  explicit Impl(ProducerOptions options)
      : options_(std::move(options)),
        clock_(options_.clock ? *options_.clock : RealClock::Instance()),
        jitter_(options_.seed) {}

  void Init() {
    channel_ = MakeChannel(options_.connection);
    stub_ = v1::Queue::NewStub(channel_);
    std::weak_ptr<Impl> weak = weak_from_this();
    listener_id_ = clock_.AddListener([weak] {
      if (auto self = weak.lock()) {
        { std::lock_guard lock(self->mu_); }
        self->cv_.notify_all();
      }
    });
    timer_ = std::thread([this] { TimerLoop(); });
  }

  // Ends pending retries with CANCELLED, waits for the calls in flight (the timer
  // thread still ends those that pass their deadline), then closes the stream.
  void Close() {
    {
      std::lock_guard lock(mu_);
      closing_ = true;
    }
    cv_.notify_all();
    {
      std::unique_lock lock(mu_);
      done_cv_.wait(lock, [&] { return in_flight_ == 0; });
      timer_stop_ = true;
    }
    cv_.notify_all();
    timer_.join();
    clock_.RemoveListener(listener_id_);
    // Only a weak reference is kept: the stream's guard goes when the stream object
    // does, so holding it here would wait on ourselves.
    std::weak_ptr<EnqueueStreamClient> closing;
    if (std::shared_ptr<EnqueueStreamClient> stream = stream_.Close()) {
      stream->CloseWrites();
      closing = stream;
    }
    std::unique_lock lock(mu_);
    // Nothing is waiting, so the server ends the stream at once; one that does not
    // (hung) is cut off rather than holding the producer's destructor.
    if (!done_cv_.wait_for(lock, std::chrono::seconds(5),
                           [&] { return callbacks_ == 0; })) {
      lock.unlock();
      // Released before relocking: the last reference runs the guard, which locks mu_.
      if (std::shared_ptr<EnqueueStreamClient> stream = closing.lock()) stream->Cancel();
      lock.lock();
    }
    done_cv_.wait(lock, [&] { return callbacks_ == 0; });
  }

  void Submit(const std::vector<NewTask>& tasks, const CallOptions& call,
              std::function<void(std::vector<EnqueueResult>)> done) {
    auto op = std::make_shared<BatchOp>();
    op->max_attempts =
        std::max(1, call.max_attempts.value_or(options_.retry.max_attempts));
    const Millis deadline = Bounded(call.deadline.value_or(options_.deadline));
    op->clock_deadline = clock_.Now() + deadline;
    op->deadline = std::chrono::system_clock::now() + deadline;
    op->done = std::move(done);
    op->results.resize(tasks.size());
    // One time for the whole call: its generated keys then share a placement slot,
    // so the server commits the call on one shard, in one transaction.
    const int64_t now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                               std::chrono::system_clock::now().time_since_epoch())
                               .count();
    const bool ns_ok = IsValidUtf8(options_.ns);
    for (size_t i = 0; i < tasks.size(); ++i) {
      std::optional<std::string> refused = NotUtf8(tasks[i]);
      if (!ns_ok) refused = "namespace is not valid UTF-8";
      if (refused) {
        op->items.emplace_back();  // keeps items[i] the i-th task's; never sent
        op->results[i].status =
            grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, std::move(*refused));
        op->results[i].dedup_key = tasks[i].dedup_key;  // the caller's, if any
        continue;
      }
      op->items.push_back(ToProto(tasks[i]));
      if (op->max_attempts > 1 && tasks[i].dedup_key.empty()) {
        op->items.back().set_dedup_key(jitter_.TimeOrderedKey(now_ms));
      }
      op->results[i].dedup_key = op->items.back().dedup_key();
      op->pending.push_back(i);
    }
    {
      std::lock_guard lock(mu_);
      ++in_flight_;
    }
    if (op->pending.empty()) {  // no tasks, or all refused
      Finish(op);
      return;
    }
    Dispatch(op);
  }

 private:
  // Counts the completion callbacks gRPC still holds.
  struct CallGuard {
    explicit CallGuard(Impl* impl) : impl(impl) {
      std::lock_guard lock(impl->mu_);
      ++impl->callbacks_;
    }
    ~CallGuard() {
      std::lock_guard lock(impl->mu_);
      if (--impl->callbacks_ == 0) impl->done_cv_.notify_all();
    }
    Impl* impl;
  };

  // An attempt made while kMaxSharedCalls Enqueue RPCs are on their way waits
  // for one of them to return, then goes out with every other waiting op in one RPC
  // (up to kMaxItemsPerCall items and kMaxBytesPerCall bytes, so a shared call stays
  // well under the server's 16 MiB message limit). So concurrent one-item calls travel as
  // batches -- one gRPC call and a bigger commit on the server for many items -- without
  // any added wait when the producer is idle. Retries take the same way.
  static constexpr int kMaxSharedCalls = 2;
  static constexpr size_t kMaxItemsPerCall = server_limits::kMaxItemsPerCall;
  static constexpr size_t kMaxBytesPerCall = 4 << 20;

  // The request bytes of an op's pending items (about: payload and metadata).
  static size_t PendingBytes(const BatchOp& op) {
    size_t bytes = 0;
    for (size_t i : op.pending) bytes += op.items[i].ByteSizeLong();
    return bytes;
  }

  // Every attempt goes out at once as one message of the producer's EnqueueStream
  // (one message each way per call instead of a whole RPC). Against a server without
  // EnqueueStream the producer falls back to shared Enqueue RPCs (SendShared).
  void Dispatch(const std::shared_ptr<BatchOp>& op) {
    if (!unary_only_) {
      SendOnStream(op);
      return;
    }
    {
      std::lock_guard lock(mu_);
      if (shared_calls_ >= kMaxSharedCalls) {
        waiting_.push_back(op);
        return;
      }
      ++shared_calls_;
    }
    SendShared({op});
  }

  void SendOnStream(const std::shared_ptr<BatchOp>& op) {
    v1::EnqueueStreamRequest call;
    v1::EnqueueRequest& request = *call.mutable_request();
    request.set_namespace_(options_.ns);
    ++op->attempt;
    for (size_t i : op->pending) {
      *request.add_items() = op->items[i];
      op->results[i].attempts = op->attempt;
    }
    std::shared_ptr<EnqueueStreamClient> stream = stream_.Current([this] {
      // Close() waits for the stream's end, after its last answer.
      auto guard = std::make_shared<CallGuard>(this);
      return EnqueueStreamClient::Open(
          [this](grpc::ClientContext* ctx, auto* reactor) {
            stub_->async()->EnqueueStream(ctx, reactor);
          },
          [guard] {}, EnqueueStreamClient::Answers::kBatched);
    });
    if (!stream) {
      return OnStreamAnswer(
          op, grpc::Status(grpc::StatusCode::CANCELLED, "producer closed"), nullptr);
    }
    const uint64_t id = next_call_id_.fetch_add(1) + 1;
    call.set_call_id(id);
    const bool sent = stream->Send(
        std::move(call),
        [this, op](const grpc::Status& status, v1::EnqueueStreamResponse* resp) {
          OnStreamAnswer(op, status, resp);
        });
    if (!sent) return;  // answered (UNAVAILABLE): a retry opens a new stream
    // The deadline is registered after the call: if the answer came first, the entry
    // only finds nothing to abandon.
    {
      std::lock_guard lock(mu_);
      op->stream_deadline = stream_deadlines_.emplace(
          op->clock_deadline, StreamCall{stream, id, std::weak_ptr<BatchOp>(op)});
    }
    cv_.notify_all();  // the timer thread may have to wake earlier
  }

  void OnStreamAnswer(const std::shared_ptr<BatchOp>& op, const grpc::Status& status,
                      v1::EnqueueStreamResponse* resp) {
    {
      std::lock_guard lock(mu_);
      if (op->stream_deadline) {
        stream_deadlines_.erase(*op->stream_deadline);
        op->stream_deadline.reset();
      }
    }
    if (status.error_code() == grpc::StatusCode::UNIMPLEMENTED) {
      // A server from before EnqueueStream: shared Enqueue RPCs from now on.
      unary_only_ = true;
      --op->attempt;
      Dispatch(op);
      return;
    }
    if (!status.ok()) return OnReply(op, v1::EnqueueResponse(), status);
    // A refused call (its status) has no response.
    OnReply(op, resp->response(), CallStatus(resp->status()));
  }

  void SendShared(std::vector<std::shared_ptr<BatchOp>> ops) {
    auto call = std::make_shared<SharedCall>();
    call->request.set_namespace_(options_.ns);
    // The earliest deadline of the ops: a later op loses at most the few
    // milliseconds by which it was made after the first.
    auto deadline = ops[0]->deadline;
    for (const auto& op : ops) {
      ++op->attempt;
      for (size_t i : op->pending) {
        *call->request.add_items() = op->items[i];
        op->results[i].attempts = op->attempt;
      }
      deadline = std::min(deadline, op->deadline);
    }
    call->ops = std::move(ops);
    call->ctx.set_deadline(deadline);
    // The guard lives as long as `call` (its context included), which the callback
    // holds; Close() waits for it, so the Impl (and the channel) is never destroyed
    // on a gRPC thread.
    call->guard = std::make_shared<CallGuard>(this);
    stub_->async()->Enqueue(
        &call->ctx, &call->request, &call->response,
        [this, call](grpc::Status status) { OnSharedReply(call.get(), status); });
  }

  void OnSharedReply(SharedCall* call, const grpc::Status& status) {
    // First put the next shared call on its way: the ops that waited meanwhile.
    std::vector<std::shared_ptr<BatchOp>> next;
    {
      std::lock_guard lock(mu_);
      size_t items = 0, bytes = 0;
      while (!waiting_.empty()) {
        const size_t n = waiting_.front()->pending.size();
        const size_t b = PendingBytes(*waiting_.front());
        if (!next.empty() &&
            (items + n > kMaxItemsPerCall || bytes + b > kMaxBytesPerCall)) {
          break;
        }
        items += n;
        bytes += b;
        next.push_back(std::move(waiting_.front()));
        waiting_.pop_front();
      }
      if (next.empty()) --shared_calls_;
    }
    if (!next.empty()) SendShared(std::move(next));
    // Then each op gets its slice of the answer.
    std::vector<std::shared_ptr<BatchOp>> ops;
    ops.swap(call->ops);
    size_t total = 0;
    for (const auto& op : ops) total += op->pending.size();
    const bool counts_match =
        status.ok() && static_cast<size_t>(call->response.results_size()) == total;
    int offset = 0;
    for (const auto& op : ops) {
      v1::EnqueueResponse part;  // a wrong count makes OnReply answer INTERNAL
      const int n = static_cast<int>(op->pending.size());
      for (int k = 0; counts_match && k < n; ++k) {
        *part.add_results() = call->response.results(offset + k);
      }
      offset += n;
      OnReply(op, part, status);
    }
  }

  void OnReply(const std::shared_ptr<BatchOp>& op, const v1::EnqueueResponse& response,
               const grpc::Status& status) {
    std::vector<size_t> again;
    if (!status.ok()) {
      for (size_t i : op->pending) op->results[i].status = status;
      if (status.error_code() == grpc::StatusCode::UNAVAILABLE) again = op->pending;
    } else if (static_cast<size_t>(response.results_size()) != op->pending.size()) {
      for (size_t i : op->pending) {
        op->results[i].status = grpc::Status(grpc::StatusCode::INTERNAL,
                                             "server answered a wrong result count");
      }
    } else {
      for (size_t k = 0; k < op->pending.size(); ++k) {
        size_t i = op->pending[k];
        const v1::EnqueueResult& r = response.results(static_cast<int>(k));
        EnqueueResult& out = op->results[i];
        if (r.status().code() == 0) {
          out.status = grpc::Status::OK;
          out.id = r.id();
          out.deduplicated = r.deduplicated();
        } else {
          out.status = grpc::Status(static_cast<grpc::StatusCode>(r.status().code()),
                                    r.status().message());
          if (Retriable(r.status().code())) again.push_back(i);
        }
      }
    }
    op->pending = std::move(again);
    if (op->pending.empty() || op->attempt >= op->max_attempts) {
      Finish(op);
      return;
    }
    // Bounded: a cap near Millis::max() must not overflow the times below.
    const Millis wait = Bounded(
        jitter_.Delay(options_.retry.backoff, static_cast<uint32_t>(op->attempt)));
    Millis due = clock_.Now() + wait;
    bool in_time = due < op->clock_deadline &&
                   std::chrono::system_clock::now() + wait < op->deadline;
    {
      std::lock_guard lock(mu_);
      if (in_time && !closing_) {
        timers_.emplace(due, op);
        cv_.notify_all();
        return;
      }
    }
    Finish(op);
  }

  // Runs the callback, then lets Close() proceed.
  void Finish(const std::shared_ptr<BatchOp>& op) {
    auto done = std::move(op->done);
    if (done) done(std::move(op->results));
    std::lock_guard lock(mu_);
    if (--in_flight_ == 0) done_cv_.notify_all();
  }

  // Runs retries when due, and ends stream calls that pass their deadline. Once the
  // producer is closing, pending retries end with CANCELLED at once.
  void TimerLoop() {
    std::unique_lock lock(mu_);
    while (!timer_stop_) {
      if (closing_ && !timers_.empty()) {
        auto left = std::move(timers_);
        timers_.clear();
        lock.unlock();
        for (auto& [due, op] : left) {
          for (size_t i : op->pending) {
            op->results[i].status = grpc::Status(grpc::StatusCode::CANCELLED,
                                                 "producer closed before a retry");
          }
          Finish(op);
        }
        lock.lock();
        continue;
      }
      std::optional<Millis> next;
      if (!timers_.empty()) next = timers_.begin()->first;
      if (!stream_deadlines_.empty() &&
          (!next || stream_deadlines_.begin()->first < *next)) {
        next = stream_deadlines_.begin()->first;
      }
      if (!next) {
        cv_.wait(lock);
        continue;
      }
      if (*next > clock_.Now()) {
        clock_.WaitUntil(cv_, lock, *next);
        continue;
      }
      if (!stream_deadlines_.empty() &&
          stream_deadlines_.begin()->first <= clock_.Now()) {
        auto first_deadline = stream_deadlines_.begin();
        StreamCall call = first_deadline->second;
        // The op may point at a newer entry already (a stale entry of an early answer).
        if (auto op = call.op.lock(); op && op->stream_deadline == first_deadline) {
          op->stream_deadline.reset();
        }
        stream_deadlines_.erase(first_deadline);
        lock.unlock();
        if (auto stream = call.stream.lock()) {
          stream->Abandon(call.id, grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                                                "no answer before the call's deadline"));
        }
        lock.lock();
        continue;
      }
      auto first = timers_.begin();
      auto op = first->second;
      timers_.erase(first);
      lock.unlock();
      Dispatch(op);
      lock.lock();
    }
  }

  ProducerOptions options_;
  Clock& clock_;
  Jitter jitter_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Queue::Stub> stub_;
  int listener_id_ = 0;

  std::mutex mu_;
  std::condition_variable cv_;       // the timer thread
  std::condition_variable done_cv_;  // Close() waiting for in_flight_ == 0
  bool closing_ = false;
  bool timer_stop_ = false;
  int in_flight_ = 0;  // calls not finished
  int callbacks_ = 0;  // completion callbacks gRPC still holds
  std::multimap<Millis, std::shared_ptr<BatchOp>> timers_;
  int shared_calls_ = 0;                          // SharedCalls in flight
  std::deque<std::shared_ptr<BatchOp>> waiting_;  // first attempts waiting for one
  StreamSlot<EnqueueStreamClient> stream_;
  std::atomic<bool> unary_only_{false};  // the server has no EnqueueStream
  std::atomic<uint64_t> next_call_id_{0};
  StreamDeadlines stream_deadlines_;  // stream calls waiting, by deadline
  std::thread timer_;
};

Producer::Producer(ProducerOptions options)
    : impl_(std::make_shared<Impl>(std::move(options))) {
  impl_->Init();
}

Producer::~Producer() { impl_->Close(); }

std::vector<EnqueueResult> Producer::EnqueueBatch(const std::vector<NewTask>& tasks,
                                                  const CallOptions& call) {
  return EnqueueBatchAsync(tasks, call).get();
}

EnqueueResult Producer::Enqueue(const NewTask& task, const CallOptions& call) {
  return EnqueueAsync(task, call).get();
}

std::future<std::vector<EnqueueResult>> Producer::EnqueueBatchAsync(
    const std::vector<NewTask>& tasks, const CallOptions& call) {
  auto promise = std::make_shared<std::promise<std::vector<EnqueueResult>>>();
  auto future = promise->get_future();
  impl_->Submit(tasks, call, [promise](std::vector<EnqueueResult> results) {
    promise->set_value(std::move(results));
  });
  return future;
}

std::future<EnqueueResult> Producer::EnqueueAsync(const NewTask& task,
                                                  const CallOptions& call) {
  auto promise = std::make_shared<std::promise<EnqueueResult>>();
  auto future = promise->get_future();
  impl_->Submit({task}, call, [promise](std::vector<EnqueueResult> results) {
    promise->set_value(std::move(results.at(0)));
  });
  return future;
}

void Producer::EnqueueAsync(const NewTask& task, std::function<void(EnqueueResult)> done,
                            const CallOptions& call) {
  impl_->Submit({task}, call,
                [done = std::move(done)](std::vector<EnqueueResult> results) {
                  done(std::move(results.at(0)));
                });
}

void Producer::EnqueueBatchAsync(const std::vector<NewTask>& tasks,
                                 std::function<void(std::vector<EnqueueResult>)> done,
                                 const CallOptions& call) {
  impl_->Submit(tasks, call, std::move(done));
}

}  // namespace shardq::sdk
