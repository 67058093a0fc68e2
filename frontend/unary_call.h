#pragma once
// UnaryCall: one RPC in flight, as the handlers see it. Requests arrive as raw bytes
// and are parsed here, so that bytes that are not a valid message (garbage, or a
// string field that is not UTF-8) get INVALID_ARGUMENT with a reason; left to gRPC
// they would get a bare UNIMPLEMENTED, which misleads. The reactor owns the typed
// request and response and deletes itself when gRPC is done with it.

#include <grpcpp/grpcpp.h>
#include <grpcpp/impl/codegen/proto_utils.h>
#include <grpcpp/support/proto_buffer_reader.h>

#include <functional>
#include <mutex>

#include "common/status.h"
#include "frontend/status_mapping.h"

namespace shardq::frontend {

template <typename Req, typename Resp>
class UnaryCall final : public grpc::ServerUnaryReactor {
 public:
  // Parses `in`; on failure answers INVALID_ARGUMENT at once and returns the call
  // with ok() == false (the caller must not touch it further).
  UnaryCall(grpc::CallbackServerContext* context, const grpc::ByteBuffer* in,
            grpc::ByteBuffer* out)
      : context_(context), out_(out) {
    grpc::ByteBuffer copy = *in;  // shares the slices; the reader consumes the copy
    grpc::ProtoBufferReader reader(&copy);
    parsed_ = request_.ParseFromZeroCopyStream(&reader);
    if (!parsed_) {
      grpc::ServerUnaryReactor::Finish(
          Unparsable("request", Req::descriptor()->full_name()));
    }
  }

  bool ok() const { return parsed_; }
  const Req& request() const { return request_; }
  Resp* response() { return &response_; }

  // Sends the response (if `status` is OK) or the error. Call exactly once.
  void Finish(const Status& status) {
    if (status.ok()) {
      bool own = false;
      grpc::Status st = grpc::SerializationTraits<Resp>::Serialize(response_, out_, &own);
      answered_ = st.ok();
      grpc::ServerUnaryReactor::Finish(st);
      return;
    }
    grpc::ServerUnaryReactor::Finish(ToGrpcStatus(status));
  }

  // Runs `fn` if the client cancels (deadline, disconnect) before Finish.
  void OnCancelled(std::function<void()> fn) {
    std::lock_guard lock(mu_);
    on_cancel_ = std::move(fn);
  }
  void OnCancel() override {
    std::function<void()> fn;
    {
      std::lock_guard lock(mu_);
      fn = std::move(on_cancel_);
    }
    if (fn) fn();
  }
  // Runs `fn` with the response if Finish answered OK but the client never got that
  // answer: gRPC ended the call before its status was sent (IsCancelled: deadline,
  // disconnect), and a client takes no response without an OK status. Set before
  // Finish.
  void OnUndelivered(std::function<void(const Resp&)> fn) {
    on_undelivered_ = std::move(fn);
  }

  void OnDone() override {
    if (answered_ && on_undelivered_ && context_->IsCancelled()) {
      on_undelivered_(response_);
    }
    delete this;
  }

 private:
  grpc::CallbackServerContext* const context_;
  grpc::ByteBuffer* out_;
  Req request_;
  Resp response_;
  bool parsed_ = false;
  bool answered_ = false;  // Finish sent an OK response
  std::function<void(const Resp&)> on_undelivered_;
  std::mutex mu_;
  std::function<void()> on_cancel_;
};

}  // namespace shardq::frontend
