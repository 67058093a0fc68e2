#pragma once
// CallStream: the server's end of a stream of calls (EnqueueStream, ConsumeStream;
// callback API, no thread of its own). Each call read is run at once; its answer is
// written, tagged with the call's id, when the call completes. Reads run at most
// kMaxCallsAhead calls ahead of their written answers (the client's backpressure: a
// call still running and an answer waiting to be written both count, so a client that
// sends without reading holds a bounded amount of the server's memory); answers are
// written one message at a time, in the order they are ready.
//
// Batching (queue.proto, "Batched messages"): a message read may carry up to 100 calls,
// each run as if it had come alone. For a client that asked for it, the answers waiting
// when a write starts go out as one message (up to 100 answers, about 1 MiB), so the
// answers that complete together (the calls of one commit) cost one write and one
// wake-up of the client. Nothing waits for a batch to fill.
//
// Answers are bounded in bytes too: a client that leaves more than `max_unread_bytes`
// of answers waiting behind the message being written (it does not read them: a
// stopped process, a dead link) has its stream cancelled, as Redis disconnects a client
// past its output buffer limit.
//
// An answer that is never written (the stream was cancelled before its turn) is handed
// to the `dropped` hook, so that what it leased is given back at once. The answers in
// the message being written when the stream ends are not: their bytes may have
// reached the client.
//
// Lifetime: gRPC deletes the reactor after Finish, and Finish waits until no read,
// write or header send is outstanding and every call read has been answered, so the
// engine never calls back into a deleted reactor. On a cancellation (client gone, server
// shutdown) the calls still running are cancelled (a parked dequeue ends at once),
// answers are dropped, and the reactor still waits for them. One call can be cancelled
// alone (CancelCall, for a client that gave up on it).

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

#include "frontend/answer_join.h"
#include "frontend/status_mapping.h"
#include "shardq/v1/stream_batching.h"

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
  // `unwritten` answers (those being written included) not yet written. One message
  // read may take it up to kMaxCallsPerMessage - 1 past the bound.
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
        dropped_(std::move(dropped)),
        batch_answers_(AskedForBatching(*context)) {
    // Every flag is set before the first operation starts: its reaction may run on
    // another thread at once.
    reading_ = true;
    metadata_pending_ = batch_answers_;
    if (batch_answers_) {
      // Said at once, not with the first answer, so the client may batch its first
      // calls too.
      context->AddInitialMetadata(v1::kBatchingHeader, "1");
      StartSendInitialMetadata();
    }
    StartRead(&in_);
  }

  void OnSendInitialMetadataDone(bool ok) override {
    Next next;
    {
      std::lock_guard lock(mu_);
      metadata_pending_ = false;
      PlanLocked(next);
    }
    Start(next);
  }

  void OnReadDone(bool ok) override {
    auto req = std::make_shared<StreamReq>();
    bool parsed = false;
    if (ok) {
      grpc::ProtoBufferReader reader(&in_);
      parsed = req->ParseFromZeroCopyStream(&reader);
    }
    std::optional<grpc::Status> refused;
    std::vector<std::shared_ptr<StreamReq>> calls;
    if (parsed) {
      refused = SplitCalls(req, &calls);
      parsed = !refused;
    }
    Next next;
    uint64_t first_seq = 0;
    {
      std::lock_guard lock(mu_);
      reading_ = false;
      if (!parsed) {
        // Half-close, cancellation, or bytes that are not a request: no more calls.
        reads_done_ = true;
        if (ok) {
          end_status_ = refused
                            ? *refused
                            : Unparsable("message", StreamReq::descriptor()->full_name());
        }
      } else {
        first_seq = next_seq_;
        for (const auto& call : calls)
          running_.emplace(next_seq_++, Running{call->call_id()});
      }
      PlanLocked(next);
    }
    Start(next);
    // The reactor cannot finish before this reaction returns: the calls may answer
    // (even inline) without the stream going away under the loop.
    for (size_t i = 0; i < calls.size(); ++i) RunCall(calls[i], first_seq + i);
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
      writing_answers_ = 0;
      writing_buf_.Clear();
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
  static bool AskedForBatching(const grpc::CallbackServerContext& context) {
    auto it = context.client_metadata().find(v1::kBatchingHeader);
    return it != context.client_metadata().end() && it->second == "1";
  }

  // The calls of one message: `req` and those in its `more`, moved out of it. A message
  // that breaks the batching rules (too many calls, `more` inside `more`) is refused.
  static std::optional<grpc::Status> SplitCalls(
      const std::shared_ptr<StreamReq>& req,
      std::vector<std::shared_ptr<StreamReq>>* calls) {
    if (static_cast<size_t>(req->more_size()) + 1 > v1::kMaxCallsPerMessage) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          "more than " + std::to_string(v1::kMaxCallsPerMessage) +
                              " calls in one message");
    }
    for (const StreamReq& more : req->more()) {
      if (more.more_size() > 0) {
        return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                            "a call in `more` has a `more` of its own");
      }
    }
    calls->reserve(1 + req->more_size());
    calls->push_back(req);
    for (StreamReq& more : *req->mutable_more()) {
      calls->push_back(std::make_shared<StreamReq>(std::move(more)));
    }
    req->clear_more();
    return std::nullopt;
  }

  void RunCall(const std::shared_ptr<StreamReq>& req, uint64_t seq) {
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
    size_t waiting = 0;  // bytes behind the message being written (or about to be)
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
        queued_bytes_ += bytes.Length();
        answers_.push_back(std::move(bytes));
        // One answer alone, however big, never ends a stream.
        waiting = queued_bytes_ - (Writing() ? 0 : answers_.front().Length());
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
    // The message being written, if any, is not among them: it is in writing_buf_.
    out.answers.assign(answers_.begin(), answers_.end());
    answers_.clear();
    queued_bytes_ = 0;
    for (auto& [seq, call] : running_) {
      if (call.cancel) out.cancels.push_back(std::move(call.cancel));
    }
    return out;
  }

  // Requires mu_. Whether a message is being written.
  bool Writing() const { return writing_answers_ > 0; }

  // Requires mu_. Decides the next read, write or Finish.
  void PlanLocked(Next& next) {
    // Cancelled: no read starts again, so once none is in flight the reads are over.
    // (A read in flight may still complete with a message, not only with ok = false.)
    if (cancelled_ && !reading_) reads_done_ = true;
    if (!reading_ && !reads_done_ && !cancelled_ &&
        MayReadAhead(running_.size(), answers_.size() + writing_answers_)) {
      reading_ = true;
      next.read = true;
    }
    if (!Writing() && !answers_.empty()) {
      static_assert(StreamResp::kMoreFieldNumber == v1::kMoreFieldNumber,
                    "answer_join.cc appends answers as this field");
      Joined joined = JoinAnswers(answers_, batch_answers_ ? v1::kMaxCallsPerMessage : 1,
                                  v1::kBatchBytes, &writing_buf_);
      writing_answers_ = joined.count;
      queued_bytes_ -= joined.answer_bytes;
      next.write = &writing_buf_;
    }
    if (!finished_ && !cancel_pending_ && !metadata_pending_ && reads_done_ &&
        !reading_ && !Writing() && running_.empty() && answers_.empty()) {
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
  const bool batch_answers_;  // the client reads answers in `more`
  grpc::ByteBuffer in_;       // the message being read

  std::mutex mu_;
  std::deque<grpc::ByteBuffer> answers_;  // one each, waiting for a write to start
  size_t queued_bytes_ = 0;               // their sizes, summed
  grpc::ByteBuffer writing_buf_;          // the message being written
  size_t writing_answers_ = 0;            // how many answers it holds; 0: no write
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
  bool reads_done_ = false;  // the client half-closed, sent garbage, or went away
  bool cancelled_ = false;   // answers are dropped from now on
  bool finished_ = false;
  bool cancel_pending_ = false;    // Answer is about to TryCancel: no Finish yet
  bool metadata_pending_ = false;  // the batching header is being sent: no Finish yet
  grpc::Status end_status_;        // OK, or why the stream ends (garbage, answers unread)
};

}  // namespace shardq::frontend
