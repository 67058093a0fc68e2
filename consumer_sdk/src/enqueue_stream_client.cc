#include "enqueue_stream_client.h"

#include <utility>
#include <vector>

namespace shardq::sdk {

std::shared_ptr<EnqueueStreamClient> EnqueueStreamClient::Open(
    v1::Queue::Stub& stub, std::function<void()> on_done) {
  std::shared_ptr<EnqueueStreamClient> s(new EnqueueStreamClient(std::move(on_done)));
  s->self_ = s;
  stub.async()->EnqueueStream(&s->ctx_, s.get());
  // Send() starts writes from the producer's threads: the hold keeps the stream from
  // completing until no more writes can come.
  s->AddHold();
  s->StartRead(&s->read_);
  s->StartCall();
  return s;
}

bool EnqueueStreamClient::Send(uint64_t call_id, v1::EnqueueRequest request,
                               Answer answer) {
  Next next;
  bool taken = false;
  {
    std::lock_guard lock(mu_);
    if (!ended_ && !closing_) {
      taken = true;
      waiting_.emplace(call_id, std::move(answer));
      v1::EnqueueStreamRequest& msg = writes_.emplace_back();
      msg.set_call_id(call_id);
      *msg.mutable_request() = std::move(request);
      next = PlanLocked();
    }
  }
  if (!taken) {  // the stream is over
    answer(grpc::Status(grpc::StatusCode::UNAVAILABLE, "enqueue stream closed"), nullptr);
    return false;
  }
  Start(next);
  return true;
}

void EnqueueStreamClient::Abandon(uint64_t call_id, const grpc::Status& status) {
  Answer answer;
  {
    std::lock_guard lock(mu_);
    auto it = waiting_.find(call_id);
    if (it == waiting_.end()) return;
    answer = std::move(it->second);
    waiting_.erase(it);
  }
  answer(status, nullptr);
}

void EnqueueStreamClient::CloseWrites() {
  Next next;
  {
    std::lock_guard lock(mu_);
    closing_ = true;
    next = PlanLocked();
  }
  Start(next);
}

bool EnqueueStreamClient::closed() const {
  std::lock_guard lock(mu_);
  return ended_ || closing_;
}

void EnqueueStreamClient::OnWriteDone(bool ok) {
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

void EnqueueStreamClient::OnReadDone(bool ok) {
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
  Answer answer;
  {
    std::lock_guard lock(mu_);
    auto it = waiting_.find(read_.call_id());
    if (it != waiting_.end()) {  // else abandoned (deadline) or unknown: dropped
      answer = std::move(it->second);
      waiting_.erase(it);
    }
  }
  if (answer) answer(grpc::Status::OK, &read_);
  StartRead(&read_);
}

void EnqueueStreamClient::OnDone(const grpc::Status& status) {
  std::map<uint64_t, Answer> left;
  {
    std::lock_guard lock(mu_);
    ended_ = true;
    left.swap(waiting_);
  }
  const grpc::Status end = status.ok()
                               ? grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                              "enqueue stream ended before the answer")
                               : status;
  for (auto& [id, answer] : left) answer(end, nullptr);
  auto on_done = std::move(on_done_);
  auto self = std::move(self_);  // this may be deleted when `self` goes
  if (on_done) on_done();
}

EnqueueStreamClient::Next EnqueueStreamClient::PlanLocked() {
  Next next;
  if (!writing_ && !ended_ && !writes_.empty()) {
    writing_ = true;
    // A deque keeps references to its elements valid across emplace_back.
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

void EnqueueStreamClient::Start(const Next& next) {
  if (next.write != nullptr) StartWrite(next.write);
  if (next.writes_done) StartWritesDone();
  if (next.remove_hold) RemoveHold();
}

}  // namespace shardq::sdk
