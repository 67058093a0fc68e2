#pragma once
// CallStreamClient: the client's end of one stream of calls (EnqueueStream,
// ConsumeStream; gRPC callback API, no thread of its own). Send() writes a call at
// once, behind the write in flight; each answer goes to its call's callback on a gRPC
// thread. When the stream ends, every call still waiting gets the end status
// (UNAVAILABLE if the server closed the stream cleanly), and so does every later
// Send(), at once, so the caller opens a new stream for its retries.
//
// Batching (queue.proto, "Batched messages"): a stream opened with Answers::kBatched
// asks the server for its answers batched (the producer's does, for A1's throughput;
// a worker's do not: on them batched answers lengthened the delay phase's tail), and
// any answer in a message's `more` goes to its own call. Calls still go one per
// message: joining the calls queued behind a write gained little over batched
// answers and lengthened the latency tails (docs/BENCHMARKS.md, nineteenth round).

#include <grpcpp/grpcpp.h>
#include <grpcpp/support/client_callback.h>

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <utility>

#include "shardq/v1/queue.pb.h"
#include "shardq/v1/stream_batching.h"

namespace shardq::sdk {

template <typename StreamReq, typename StreamResp>
class CallStreamClient final : public grpc::ClientBidiReactor<StreamReq, StreamResp> {
  using Base = grpc::ClientBidiReactor<StreamReq, StreamResp>;

 public:
  // `response` is null unless `status` is OK; it is valid during the call only.
  using Answer = std::function<void(const grpc::Status& status, StreamResp* response)>;
  // Starts the RPC on the stub, e.g. stub.async()->EnqueueStream(ctx, reactor).
  using StartRpc = std::function<void(grpc::ClientContext*, Base*)>;

  // Whether to ask the server for its answers batched (queue.proto, "Batched
  // messages"). Answers that come batched are handed out one by one either way.
  enum class Answers { kOnePerMessage, kBatched };

  // Starts a stream; `on_done` runs once, after the stream ended, every answer ran and
  // the stream object is gone (on whichever thread let go of it last).
  static std::shared_ptr<CallStreamClient> Open(
      const StartRpc& start, std::function<void()> on_done,
      Answers answers = Answers::kOnePerMessage) {
    std::shared_ptr<CallStreamClient> s(new CallStreamClient(std::move(on_done)));
    s->self_ = s;
    if (answers == Answers::kBatched) s->ctx_.AddMetadata(v1::kBatchingHeader, "1");
    start(&s->ctx_, s.get());
    // Send() starts writes from the caller's threads: the hold keeps the stream from
    // completing until no more writes can come.
    s->AddHold();
    s->StartRead(&s->read_);
    s->StartCall();
    return s;
  }

  // Sends `call` (its call_id set by the caller). False if the stream is over: then
  // `answer` has already run, with the stream's end status (UNAVAILABLE if it ended
  // cleanly or was closed by CloseWrites()).
  bool Send(StreamReq call, Answer answer) {
    Next next;
    bool taken = false;
    grpc::Status over(grpc::StatusCode::UNAVAILABLE, "call stream closed");
    const uint64_t call_id = call.call_id();
    {
      std::lock_guard lock(mu_);
      if (closing_) {
        // Closed by its owner (CloseWrites): no more calls, whatever the stream's end
        // status; the owner sends them on a new stream.
      } else if (done_) {
        over = end_;
      } else {
        taken = true;
        waiting_.emplace(call_id, std::move(answer));
        // Ended but not done yet (a read or write failed, OnDone still to come): the
        // call waits for the end status. It must see why the stream ended: a server
        // without this stream (UNIMPLEMENTED) ends a new stream at once, often before
        // the first call is sent, and UNAVAILABLE would hide that.
        if (!ended_) {
          writes_.push_back(std::move(call));
          next = PlanLocked();
        }
      }
    }
    if (!taken) {
      answer(over, nullptr);
      return false;
    }
    Start(next);
    return true;
  }

  // Answers the call with `status` if it is still waiting (then true); its late answer
  // is dropped.
  bool Abandon(uint64_t call_id, const grpc::Status& status) {
    Answer answer;
    {
      std::lock_guard lock(mu_);
      auto it = waiting_.find(call_id);
      if (it == waiting_.end()) return false;
      answer = std::move(it->second);
      waiting_.erase(it);
    }
    answer(status, nullptr);
    return true;
  }

  // Half-closes: the server ends the stream once it has answered what it read.
  void CloseWrites() {
    Next next;
    {
      std::lock_guard lock(mu_);
      closing_ = true;
      next = PlanLocked();
    }
    Start(next);
  }

  // Ends the stream now; calls still waiting get CANCELLED.
  void Cancel() { ctx_.TryCancel(); }

  // True once Send() can no longer reach the server on this stream.
  bool closed() const {
    std::lock_guard lock(mu_);
    return ended_ || closing_;
  }

 private:
  explicit CallStreamClient(std::function<void()> on_done)
      : done_signal_{std::move(on_done)} {}

  void OnWriteDone(bool ok) override {
    Next next;
    {
      std::lock_guard lock(mu_);
      writing_ = false;
      writes_.pop_front();
      if (!ok) {
        // The stream is broken; the calls not written stay in waiting_ for OnDone.
        ended_ = true;
        writes_.clear();
      }
      next = PlanLocked();
    }
    Start(next);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      Next next;
      {
        std::lock_guard lock(mu_);
        ended_ = true;
        writes_.erase(writes_.begin() + (writing_ ? 1 : 0), writes_.end());
        next = PlanLocked();
      }
      Start(next);
      return;
    }
    // The answers in `more` first leave the message: an answer's callback may move
    // its response away, `more` and all.
    google::protobuf::RepeatedPtrField<StreamResp> more;
    more.Swap(read_.mutable_more());
    Deliver(&read_);
    for (StreamResp& answer : more) Deliver(&answer);
    this->StartRead(&read_);
  }

  // Runs the callback of the call `response` answers, if it still waits.
  void Deliver(StreamResp* response) {
    Answer answer;
    {
      std::lock_guard lock(mu_);
      auto it = waiting_.find(response->call_id());
      if (it != waiting_.end()) {  // else abandoned (deadline) or unknown: dropped
        answer = std::move(it->second);
        waiting_.erase(it);
      }
    }
    if (answer) answer(grpc::Status::OK, response);
  }

  void OnDone(const grpc::Status& status) override {
    const grpc::Status end = status.ok()
                                 ? grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                                "call stream ended before the answer")
                                 : status;
    std::map<uint64_t, Answer> left;
    {
      std::lock_guard lock(mu_);
      ended_ = true;
      done_ = true;
      end_ = end;
      left.swap(waiting_);
    }
    for (auto& [id, answer] : left) answer(end, nullptr);
    // This may be deleted here; if so, done_signal_ runs on this gRPC thread.
    self_.reset();
  }

  // Requires mu_. The next write (or half-close) to start, and whether to drop the
  // hold that lets Send() start writes from outside gRPC's reactions.
  struct Next {
    StreamReq* write = nullptr;
    bool writes_done = false;
    bool remove_hold = false;
  };
  Next PlanLocked() {
    Next next;
    if (!writing_ && !ended_ && !writes_.empty()) {
      writing_ = true;
      // A deque keeps references to its elements valid across push_back.
      next.write = &writes_.front();
    }
    if (!writing_ && !ended_ && closing_ && !writes_done_started_) {
      writes_done_started_ = true;
      next.writes_done = true;
    }
    // No write can start from outside a reaction any more.
    if (holding_ && !writing_ && (ended_ || writes_done_started_)) {
      holding_ = false;
      next.remove_hold = true;
    }
    return next;
  }

  void Start(const Next& next) {
    if (next.write != nullptr) this->StartWrite(next.write);
    if (next.writes_done) this->StartWritesDone();
    if (next.remove_hold) this->RemoveHold();
  }

  // Runs on_done from the destructor, after every other member is gone. Why: ctx_
  // holds a reference to the channel. An owner told "done" while ctx_ still lived
  // could release its own reference first, and the channel would then be destroyed
  // here, on a gRPC callback thread, which gRPC 1.51 does not survive (its callback
  // queue joins its own threads, this one included, and frees the queue under it).
  struct DoneSignal {
    std::function<void()> fn;
    ~DoneSignal() {
      if (fn) fn();
    }
  };
  DoneSignal done_signal_;  // first member: destroyed last
  grpc::ClientContext ctx_;
  StreamResp read_;
  std::shared_ptr<CallStreamClient> self_;  // alive until OnDone

  mutable std::mutex mu_;
  std::deque<StreamReq> writes_;  // the front is being written
  std::map<uint64_t, Answer> waiting_;
  bool writing_ = false;
  bool ended_ = false;  // a read or write failed: the stream is over
  bool done_ = false;   // OnDone ran; end_ is the status every call got
  grpc::Status end_;
  bool closing_ = false;  // CloseWrites() was called
  bool writes_done_started_ = false;
  bool holding_ = true;
};

// The stream a client keeps for its calls: opened on first use and again once the
// last one is over (broken, or ended by the server). Thread-safe.
template <typename Stream>
class StreamSlot {
 public:
  // The open stream, or a new one from `open()`; null once Close() was called.
  template <typename Open>
  std::shared_ptr<Stream> Current(const Open& open) {
    std::lock_guard lock(mu_);
    if (closed_) return nullptr;
    if (!stream_ || stream_->closed()) stream_ = open();
    return stream_;
  }
  // No stream from now on; returns the last one (to close or cancel), if any.
  std::shared_ptr<Stream> Close() {
    std::lock_guard lock(mu_);
    closed_ = true;
    return std::move(stream_);
  }

 private:
  std::mutex mu_;
  std::shared_ptr<Stream> stream_;
  bool closed_ = false;
};

// A stream answer's status for its whole call, as the unary RPC would have answered.
inline grpc::Status CallStatus(const v1::ItemStatus& status) {
  if (status.code() == 0) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), status.message());
}

}  // namespace shardq::sdk
