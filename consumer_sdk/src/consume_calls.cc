#include "consume_calls.h"

#include <utility>

namespace shardq::sdk {

ConsumeCalls::~ConsumeCalls() {
  Shutdown();
  std::unique_lock lock(mu_);
  streams_done_.wait_for(lock, std::chrono::seconds(5),
                         [&] { return open_streams_ == 0; });
}

void ConsumeCalls::Shutdown() {
  std::shared_ptr<Stream> stream;
  {
    std::lock_guard lock(mu_);
    shut_down_ = true;
    stream = std::move(stream_);
  }
  if (stream) stream->Cancel();
}

std::shared_ptr<ConsumeCalls::Stream> ConsumeCalls::CurrentStream() {
  std::lock_guard lock(mu_);
  if (shut_down_) return nullptr;
  if (stream_ && !stream_->closed()) return stream_;
  ++open_streams_;
  stream_ =
      Stream::Open([this](grpc::ClientContext* ctx,
                          auto* reactor) { stub_.async()->ConsumeStream(ctx, reactor); },
                   [this] {
                     std::lock_guard lock(mu_);
                     --open_streams_;
                     streams_done_.notify_all();
                   });
  return stream_;
}

grpc::Status ConsumeCalls::OnStream(v1::ConsumeStreamRequest call,
                                    std::chrono::milliseconds deadline,
                                    v1::ConsumeStreamResponse* out, bool* unimplemented) {
  std::shared_ptr<Stream> stream = CurrentStream();
  if (!stream) return grpc::Status(grpc::StatusCode::CANCELLED, "worker stopping");
  uint64_t id;
  {
    std::lock_guard lock(mu_);
    id = ++next_call_id_;
  }
  call.set_call_id(id);
  auto waiter = std::make_shared<Waiter>();
  stream->Send(std::move(call),
               [waiter](const grpc::Status& status, v1::ConsumeStreamResponse* response) {
                 std::lock_guard lock(waiter->mu);
                 waiter->status = status;
                 if (response != nullptr) waiter->response = std::move(*response);
                 waiter->done = true;
                 waiter->cv.notify_all();
               });
  std::unique_lock lock(waiter->mu);
  if (!waiter->cv.wait_for(lock, deadline, [&] { return waiter->done; })) {
    lock.unlock();
    // Answers DEADLINE_EXCEEDED unless the answer came meanwhile.
    stream->Abandon(id, grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                                     "no answer on the consume stream by the deadline"));
    lock.lock();
  }
  if (waiter->status.error_code() == grpc::StatusCode::UNIMPLEMENTED) {
    *unimplemented = true;
    std::lock_guard guard(mu_);
    unary_only_ = true;
    return waiter->status;
  }
  if (!waiter->status.ok()) return waiter->status;
  const v1::ItemStatus& st = waiter->response.status();
  if (st.code() != 0) {
    return grpc::Status(static_cast<grpc::StatusCode>(st.code()), st.message());
  }
  *out = std::move(waiter->response);
  return grpc::Status::OK;
}

template <typename Req, typename Resp, typename SetCall, typename TakeAnswer,
          typename Unary>
grpc::Status ConsumeCalls::Call(const Req& req, Resp* resp,
                                std::chrono::milliseconds deadline, SetCall set_call,
                                TakeAnswer take, Unary unary) {
  bool unary_only;
  {
    std::lock_guard lock(mu_);
    unary_only = unary_only_;
  }
  if (!unary_only) {
    v1::ConsumeStreamRequest call;
    set_call(call) = req;
    v1::ConsumeStreamResponse answer;
    bool unimplemented = false;
    grpc::Status s = OnStream(std::move(call), deadline, &answer, &unimplemented);
    if (!unimplemented) {
      if (s.ok()) *resp = std::move(take(answer));
      return s;
    }
  }
  // A server from before ConsumeStream.
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + deadline);
  return unary(&ctx, req, resp);
}

grpc::Status ConsumeCalls::Dequeue(const v1::DequeueRequest& req,
                                   v1::DequeueResponse* resp,
                                   std::chrono::milliseconds deadline) {
  return Call(
      req, resp, deadline,
      [](v1::ConsumeStreamRequest & c) -> auto& { return *c.mutable_dequeue(); },
      [](v1::ConsumeStreamResponse & a) -> auto& { return *a.mutable_dequeue(); },
      [this](grpc::ClientContext* c, const auto& r, auto* out) {
        return stub_.Dequeue(c, r, out);
      });
}

grpc::Status ConsumeCalls::Ack(const v1::AckRequest& req, v1::AckResponse* resp,
                               std::chrono::milliseconds deadline) {
  return Call(
      req, resp, deadline,
      [](v1::ConsumeStreamRequest & c) -> auto& { return *c.mutable_ack(); },
      [](v1::ConsumeStreamResponse & a) -> auto& { return *a.mutable_ack(); },
      [this](grpc::ClientContext* c, const auto& r, auto* out) {
        return stub_.Ack(c, r, out);
      });
}

grpc::Status ConsumeCalls::Nack(const v1::NackRequest& req, v1::NackResponse* resp,
                                std::chrono::milliseconds deadline) {
  return Call(
      req, resp, deadline,
      [](v1::ConsumeStreamRequest & c) -> auto& { return *c.mutable_nack(); },
      [](v1::ConsumeStreamResponse & a) -> auto& { return *a.mutable_nack(); },
      [this](grpc::ClientContext* c, const auto& r, auto* out) {
        return stub_.Nack(c, r, out);
      });
}

grpc::Status ConsumeCalls::ExtendLease(const v1::ExtendLeaseRequest& req,
                                       v1::ExtendLeaseResponse* resp,
                                       std::chrono::milliseconds deadline) {
  return Call(
      req, resp, deadline,
      [](v1::ConsumeStreamRequest & c) -> auto& { return *c.mutable_extend_lease(); },
      [](v1::ConsumeStreamResponse & a) -> auto& { return *a.mutable_extend_lease(); },
      [this](grpc::ClientContext* c, const auto& r, auto* out) {
        return stub_.ExtendLease(c, r, out);
      });
}

}  // namespace shardq::sdk
