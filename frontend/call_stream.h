#pragma once
// CallStream: the server's end of a stream of calls (EnqueueStream, ConsumeStream;
// callback API, no thread of its own). Each message read is one call, run at once; its
// answer is written, tagged with the call's id, when the call completes. Reads run at
// most kMaxCallsAhead calls ahead of their written answers (the client's backpressure:
// a call still running and an answer waiting to be written both count, so a client
// that sends without reading holds a bounded amount of the server's memory); answers
// are written one at a time, in the order they are ready. Answers are bounded in bytes
// too: a client that leaves more than `max_unread_bytes` of answers waiting behind the
// one being written (it does not read them: a stopped process, a dead link) has its
// stream cancelled, as Redis disconnects a client past its output buffer limit.
//
// An answer that is never written (the stream was cancelled before its turn) is handed
// to the `dropped` hook, so that what it leased is given back at once. The answer being
// written when the stream ends is not: its bytes may have reached the client.
//
// Lifetime: gRPC deletes the reactor after Finish, and Finish waits until no read or
// write is outstanding and every call read has been answered, so the engine never
// calls back into a deleted reactor. On a cancellation (client gone, server shutdown)
// the calls still running are cancelled (a parked dequeue ends at once), answers are
// dropped, and the reactor still waits for them. One call can be cancelled alone
// (CancelCall, for a client that gave up on it).

#include <grpcpp/grpcpp.h>
#include <grpcpp/impl/codegen/proto_utils.h>
#include <grpcpp/support/proto_buffer_reader.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "frontend/status_mapping.h"

namespace shardq::frontend {

template <typename StreamReq, typename StreamResp>
class CallStream final
    : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  // Answers the call; call it exactly once, from any thread.
  using AnswerFn = std::function<void(StreamResp)>;
  // Runs one call (its call_id is echoed by the reactor) read from `stream`. Returns
  // how to cancel it while it runs, or an empty function if it cannot be cancelled.
  using RunFn = std::function<std::function<void()>(const StreamReq&, AnswerFn,
                                                    CallStream& stream)>;
  // Told of each answer that will never be written; runs on any thread, without mu_.
  using DroppedFn = std::function<void(const StreamResp&)>;
  static constexpr size_t kMaxCallsAhead = 1000;
  // Whether another call may be read, with `running` calls not answered yet and
  // `unwritten` answers (the one being written included) not yet written.
  static constexpr bool MayReadAhead(size_t running, size_t unwritten) {
    return running + unwritten < kMaxCallsAhead;
  }

  // `context` is the stream's (to cancel it); `max_unread_bytes` bounds its answers,
  // and `cuts` counts the streams cancelled for it.
  CallStream(grpc::CallbackServerContext* context, size_t max_unread_bytes,
             std::atomic<uint64_t>* cuts, RunFn run, DroppedFn dropped = nullptr)
      : context_(context),
        max_unread_bytes_(max_unread_bytes),
        cuts_(cuts),
        run_(std::move(run)),
        dropped_(std::move(dropped)) {
    reading_ = true;
    StartRead(&in_);
  }

  void OnReadDone(bool ok) override {
    auto req = std::make_shared<StreamReq>();
    bool parsed = false;
    if (ok) {
      grpc::ProtoBufferReader reader(&in_);
      parsed = req->ParseFromZeroCopyStream(&reader);
    }
    Next next;
    uint64_t seq = 0;
    {
      std::lock_guard lock(mu_);
      reading_ = false;
      if (!parsed) {
        // Half-close, cancellation, or bytes that are not a request: no more calls.
        reads_done_ = true;
        if (ok) {
          end_status_ = Unparsable("message", StreamReq::descriptor()->full_name());
        }
      } else {
        seq = next_seq_++;
        running_.emplace(seq, Running{req->call_id()});
      }
      PlanLocked(next);
    }
    Start(next);
    if (!parsed) return;
    // `req` stays alive until the answer: the engine may answer on another thread.
    std::function<void()> cancel = run_(
        *req,
        [this, req, seq](StreamResp out) {
          out.set_call_id(req->call_id());
          Answer(seq, out);
        },
        *this);
    if (!cancel) return;
    {
      std::lock_guard lock(mu_);
      auto it = running_.find(seq);
      if (it == running_.end()) return;  // already answered
      if (!cancelled_ && !it->second.cancel_asked) {
        it->second.cancel = std::move(cancel);
        return;
      }
    }
    cancel();  // the stream or the call was cancelled while the call started
  }

  // Cancels the running calls the client tagged `call_id` (none: nothing happens).
  // Their answers are still written: the client matches them to nothing.
  void CancelCall(uint64_t call_id) {
    std::vector<std::function<void()>> cancels;
    {
      std::lock_guard lock(mu_);
      for (auto& [seq, call] : running_) {
        if (call.call_id != call_id) continue;
        call.cancel_asked = true;  // if still starting, it is cancelled once started
        if (call.cancel) cancels.push_back(std::move(call.cancel));
      }
    }
    for (auto& c : cancels) c();
  }

  void OnWriteDone(bool ok) override {
    Next next;
    Abandoned abandoned;
    {
      std::lock_guard lock(mu_);
      writing_ = false;
      unwritten_bytes_ -= answers_.front().Length();
      answers_.pop_front();
      if (!ok) abandoned = CancelLocked();  // the client is gone: nobody reads answers
      PlanLocked(next);
    }
    abandoned.Run();
    Start(next);
  }

  void OnCancel() override {
    Next next;
    Abandoned abandoned;
    {
      std::lock_guard lock(mu_);
      abandoned = CancelLocked();
      PlanLocked(next);
    }
    abandoned.Run();
    Start(next);
  }

  void OnDone() override { delete this; }

 private:
  // What to start once mu_ is released (gRPC calls must not run under it).
  struct Next {
    bool read = false;
    grpc::ByteBuffer* write = nullptr;
    std::optional<grpc::Status> finish;
  };

  // What a cancellation leaves to do once mu_ is released: cancel the calls still
  // running, and tell the hook of the answers that will not be written. Holds no
  // reference to the reactor, which another thread may finish meanwhile.
  struct Abandoned {
    std::vector<std::function<void()>> cancels;
    std::vector<grpc::ByteBuffer> answers;
    DroppedFn dropped;

    void Run() {
      for (auto& c : cancels) c();
      if (!dropped) return;
      for (grpc::ByteBuffer& bytes : answers) {
        StreamResp answer;
        grpc::ProtoBufferReader reader(&bytes);
        if (answer.ParseFromZeroCopyStream(&reader)) dropped(answer);
      }
    }
  };

  void Answer(uint64_t seq, const StreamResp& answer) {
    grpc::ByteBuffer bytes;
    bool own = false;
    grpc::Status serialized =
        grpc::SerializationTraits<StreamResp>::Serialize(answer, &bytes, &own);
    Next next;
    Abandoned abandoned;
    size_t waiting = 0;  // bytes behind the answer being written (or about to be)
    bool cut = false;    // a local: once Start() has run, `this` may be gone
    {
      std::unique_lock lock(mu_);
      if ((cancelled_ || !serialized.ok()) && dropped_) {
        // This answer will never be written. The hook runs while the call is still in
        // running_, so the stream cannot finish meanwhile: the server and its engine,
        // which the hook uses, outlive it. (cancelled_ stays true.)
        DroppedFn hook = dropped_;
        lock.unlock();
        hook(answer);
        lock.lock();
      }
      running_.erase(seq);
      if (!cancelled_ && serialized.ok()) {
        unwritten_bytes_ += bytes.Length();
        answers_.push_back(std::move(bytes));
        // One answer alone, however big, never ends a stream.
        waiting = unwritten_bytes_ - answers_.front().Length();
        cut = waiting > max_unread_bytes_;
        if (cut) {
          end_status_ = grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                                     "too many answers unread");
          abandoned = CancelLocked();
          // Until TryCancel has returned, the stream must not finish: OnDone would
          // delete this reactor and gRPC its context under TryCancel.
          cancel_pending_ = true;
        }
      }
      PlanLocked(next);
    }
    Start(next);
    if (!cut) return;
    // cancel_pending_ keeps the stream from finishing, so `this` stays until below.
    spdlog::warn("{}: {} bytes of answers unread, over the limit of {}: stream cancelled",
                 context_->peer(), waiting, max_unread_bytes_);
    cuts_->fetch_add(1);
    abandoned.Run();
    // Ends the write the client does not read (OnWriteDone(false)), then OnCancel.
    context_->TryCancel();
    Next after;
    {
      std::lock_guard lock(mu_);
      cancel_pending_ = false;
      PlanLocked(after);
    }
    Start(after);
  }

  // Requires mu_. Takes out the answers not being written and the cancellers of the
  // calls still running, to be run once mu_ is released.
  Abandoned CancelLocked() {
    Abandoned out;
    if (cancelled_) return out;
    cancelled_ = true;
    out.dropped = dropped_;
    // Keep only the answer being written (its OnWriteDone pops it).
    while (answers_.size() > (writing_ ? 1u : 0u)) {
      unwritten_bytes_ -= answers_.back().Length();
      out.answers.push_back(std::move(answers_.back()));
      answers_.pop_back();
    }
    for (auto& [seq, call] : running_) {
      if (call.cancel) out.cancels.push_back(std::move(call.cancel));
    }
    return out;
  }

  // Requires mu_. Decides the next read, write or Finish.
  void PlanLocked(Next& next) {
    // Cancelled: no read starts again, so once none is in flight the reads are over.
    // (A read in flight may still complete with a message, not only with ok = false.)
    if (cancelled_ && !reading_) reads_done_ = true;
    if (!reading_ && !reads_done_ && !cancelled_ &&
        MayReadAhead(running_.size(), answers_.size())) {
      reading_ = true;
      next.read = true;
    }
    if (!writing_ && !answers_.empty()) {
      writing_ = true;
      // A deque keeps references to its elements valid across push_back.
      next.write = &answers_.front();
    }
    if (!finished_ && !cancel_pending_ && reads_done_ && !reading_ && !writing_ &&
        running_.empty() && answers_.empty()) {
      finished_ = true;
      next.finish = end_status_;
    }
  }

  void Start(const Next& next) {
    if (next.read) StartRead(&in_);
    if (next.write != nullptr) StartWrite(next.write);
    // Last: after Finish gRPC may delete this reactor at any moment.
    if (next.finish) Finish(*next.finish);
  }

  grpc::CallbackServerContext* const context_;
  const size_t max_unread_bytes_;
  std::atomic<uint64_t>* const cuts_;
  const RunFn run_;
  const DroppedFn dropped_;
  grpc::ByteBuffer in_;  // the message being read

  std::mutex mu_;
  std::deque<grpc::ByteBuffer> answers_;  // not yet written; the front is being written
  size_t unwritten_bytes_ = 0;            // their sizes, summed
  // A call read and not answered yet.
  struct Running {
    uint64_t call_id = 0;          // the client's tag
    std::function<void()> cancel;  // empty: not cancellable, or not started yet
    bool cancel_asked = false;     // CancelCall came while it was starting
  };
  // By the reactor's own sequence number (call ids are the client's and may repeat).
  std::map<uint64_t, Running> running_;
  uint64_t next_seq_ = 0;
  bool reading_ = false;
  bool writing_ = false;
  bool reads_done_ = false;  // the client half-closed, sent garbage, or went away
  bool cancelled_ = false;   // answers are dropped from now on
  bool finished_ = false;
  bool cancel_pending_ = false;  // Answer is about to TryCancel: no Finish yet
  grpc::Status end_status_;      // OK, or why the stream ends (garbage, answers unread)
};

}  // namespace shardq::frontend
