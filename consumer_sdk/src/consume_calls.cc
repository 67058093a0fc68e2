#include "consume_calls.h"

#include <utility>

namespace shardq::sdk {

ConsumeCalls::~ConsumeCalls() {
  Shutdown();
  std::unique_lock lock(open_->mu);
  open_->done.wait_for(lock, std::chrono::seconds(5),
                       [&] { return open_->streams == 0; });
}

void ConsumeCalls::Shutdown() {
  if (std::shared_ptr<Stream> stream = stream_.Close()) stream->Cancel();
}

std::optional<grpc::Status> ConsumeCalls::OnStream(v1::ConsumeStreamRequest call,
                                                   std::chrono::milliseconds deadline,
                                                   v1::ConsumeStreamResponse* out) {
  std::shared_ptr<Stream> stream = stream_.Current([this] {
    {
      std::lock_guard lock(open_->mu);
      ++open_->streams;
    }
    // The end callback holds `open_`, not `this`: after the destructor's 5 s a stream
    // may still end later.
    return Stream::Open(
        [this](grpc::ClientContext* ctx, auto* reactor) {
          stub_.async()->ConsumeStream(ctx, reactor);
        },
        [open = open_] {
          std::lock_guard lock(open->mu);
          --open->streams;
          open->done.notify_all();
        });
  });
  if (!stream) return grpc::Status(grpc::StatusCode::CANCELLED, "worker stopping");
  const uint64_t id = next_call_id_.fetch_add(1) + 1;
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
    // Answers DEADLINE_EXCEEDED unless the answer came meanwhile, and tells the server,
    // as a unary call's deadline would: a parked dequeue stops there, leasing nothing
    // more. What it leased before the cancel comes back when those leases run out. (A
    // dequeue's deadline is the worker's poll_wait + rpc_deadline, past the server's
    // own wait, so this takes a server far behind.) The cancel's own answer is not
    // waited for.
    if (stream->Abandon(
            id, grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                             "no answer on the consume stream by the deadline"))) {
      v1::ConsumeStreamRequest cancel;
      cancel.set_call_id(next_call_id_.fetch_add(1) + 1);
      cancel.mutable_cancel()->set_call_id(id);
      stream->Send(std::move(cancel),
                   [](const grpc::Status&, v1::ConsumeStreamResponse*) {});
    }
    lock.lock();
    // Not abandoned: the answer was taken meanwhile (read, or the stream's end) and
    // is running on a gRPC thread; it sets `done` without waiting on anything.
    waiter->cv.wait(lock, [&] { return waiter->done; });
  }
  if (waiter->status.error_code() == grpc::StatusCode::UNIMPLEMENTED) {
    unary_only_ = true;
    return std::nullopt;
  }
  if (!waiter->status.ok()) return waiter->status;
  grpc::Status status = CallStatus(waiter->response.status());
  if (status.ok()) *out = std::move(waiter->response);
  return status;
}

template <typename Req, typename Resp, typename SetCall, typename TakeAnswer,
          typename Unary>
grpc::Status ConsumeCalls::Call(const Req& req, Resp* resp,
                                std::chrono::milliseconds deadline, SetCall set_call,
                                TakeAnswer take, Unary unary) {
  if (!unary_only_) {
    v1::ConsumeStreamRequest call;
    set_call(call) = req;
    v1::ConsumeStreamResponse answer;
    if (std::optional<grpc::Status> s = OnStream(std::move(call), deadline, &answer)) {
      if (s->ok()) *resp = std::move(take(answer));
      return *s;
    }
  }
  // A server from before ConsumeStream.
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + deadline);
  return unary(&ctx, req, resp);
}

// Each call kind: its request and response types, its field in the stream messages,
// and its unary method for the fallback.
#define SHARDQ_CONSUME_CALL(Method, Req, Resp, field)                                \
  grpc::Status ConsumeCalls::Method(const v1::Req& req, v1::Resp* resp,              \
                                    std::chrono::milliseconds deadline) {            \
    return Call(                                                                     \
        req, resp, deadline,                                                         \
        [](v1::ConsumeStreamRequest & c) -> auto& { return *c.mutable_##field(); },  \
        [](v1::ConsumeStreamResponse & a) -> auto& { return *a.mutable_##field(); }, \
        [this](grpc::ClientContext* c, const v1::Req& r, v1::Resp* out) {            \
          return stub_.Method(c, r, out);                                            \
        });                                                                          \
  }
SHARDQ_CONSUME_CALL(Dequeue, DequeueRequest, DequeueResponse, dequeue)
SHARDQ_CONSUME_CALL(Ack, AckRequest, AckResponse, ack)
SHARDQ_CONSUME_CALL(Nack, NackRequest, NackResponse, nack)
SHARDQ_CONSUME_CALL(ExtendLease, ExtendLeaseRequest, ExtendLeaseResponse, extend_lease)
#undef SHARDQ_CONSUME_CALL

}  // namespace shardq::sdk
