#include "frontend/enqueue_stream.h"

#include <grpcpp/impl/codegen/proto_utils.h>
#include <grpcpp/support/proto_buffer_reader.h>

#include <memory>
#include <utility>

#include "frontend/status_mapping.h"

namespace shardq::frontend {

EnqueueStreamCall::EnqueueStreamCall(RunFn run) : run_(std::move(run)) {
  reading_ = true;
  StartRead(&in_);
}

void EnqueueStreamCall::OnReadDone(bool ok) {
  auto req = std::make_shared<v1::EnqueueStreamRequest>();
  bool parsed = false;
  if (ok) {
    grpc::ProtoBufferReader reader(&in_);
    parsed = req->ParseFromZeroCopyStream(&reader);
  }
  Next next;
  {
    std::lock_guard lock(mu_);
    reading_ = false;
    if (!parsed) {
      // Half-close, cancellation, or bytes that are not a request: no more calls.
      reads_done_ = true;
      if (ok) {
        end_status_ = grpc::Status(
            grpc::StatusCode::INVALID_ARGUMENT,
            "message is not a valid shardq.v1.EnqueueStreamRequest (malformed bytes, or "
            "a string field that is not UTF-8)");
      }
    } else {
      ++unanswered_;
    }
    next = PlanLocked();
  }
  Start(next);
  if (!parsed) return;
  auto out = std::make_shared<v1::EnqueueResponse>();
  // `req` stays alive until the answer: the engine may answer on another thread.
  run_(req->request(), out.get(), [this, req, out](const Status& status) {
    Answer(req->call_id(), status, std::move(*out));
  });
}

void EnqueueStreamCall::Answer(uint64_t call_id, const Status& status,
                               v1::EnqueueResponse out) {
  v1::EnqueueStreamResponse answer;
  answer.set_call_id(call_id);
  ToItemStatus(status, answer.mutable_status());
  if (status.ok()) *answer.mutable_response() = std::move(out);
  grpc::ByteBuffer bytes;
  bool own = false;
  grpc::Status serialized =
      grpc::SerializationTraits<v1::EnqueueStreamResponse>::Serialize(answer, &bytes,
                                                                      &own);
  Next next;
  {
    std::lock_guard lock(mu_);
    --unanswered_;
    if (!cancelled_ && serialized.ok()) answers_.push_back(std::move(bytes));
    next = PlanLocked();
  }
  Start(next);
}

void EnqueueStreamCall::OnWriteDone(bool ok) {
  Next next;
  {
    std::lock_guard lock(mu_);
    writing_ = false;
    answers_.pop_front();
    if (!ok) {  // the client is gone: nobody reads the other answers
      cancelled_ = true;
      answers_.clear();
    }
    next = PlanLocked();
  }
  Start(next);
}

void EnqueueStreamCall::OnCancel() {
  Next next;
  {
    std::lock_guard lock(mu_);
    cancelled_ = true;
    // Keep only the answer being written (its OnWriteDone pops it).
    while (answers_.size() > (writing_ ? 1u : 0u)) answers_.pop_back();
    next = PlanLocked();
  }
  Start(next);
}

EnqueueStreamCall::Next EnqueueStreamCall::PlanLocked() {
  Next next;
  // Cancelled: no read starts again, so once none is in flight the reads are over.
  // (A read in flight may still complete with a message, not only with ok = false.)
  if (cancelled_ && !reading_) reads_done_ = true;
  if (!reading_ && !reads_done_ && !cancelled_ && unanswered_ < kMaxCallsAhead) {
    reading_ = true;
    next.read = true;
  }
  if (!writing_ && !answers_.empty()) {
    writing_ = true;
    // A deque keeps references to its elements valid across push_back.
    next.write = &answers_.front();
  }
  if (!finished_ && reads_done_ && !reading_ && !writing_ && unanswered_ == 0 &&
      answers_.empty()) {
    finished_ = true;
    next.finish = end_status_;
  }
  return next;
}

void EnqueueStreamCall::Start(const Next& next) {
  if (next.read) StartRead(&in_);
  if (next.write != nullptr) StartWrite(next.write);
  // Last: after Finish gRPC may delete this reactor at any moment.
  if (next.finish) Finish(*next.finish);
}

}  // namespace shardq::frontend
