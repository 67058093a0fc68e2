#pragma once
// QueueService: the gRPC handlers of shardq.v1.Queue (callback API). Each handler
// decodes and validates (validation.h), calls the Engine, and encodes the answer;
// no queue logic lives here. No handler blocks: answers are sent from the engine's
// callbacks, and a long poll holds no thread while it waits.
//
// The methods are registered raw (bytes in, bytes out) and parsed by UnaryCall (and
// EnqueueStreamCall), so a request that does not parse gets INVALID_ARGUMENT with a
// reason.

#include "common/clock.h"
#include "engine/engine.h"
#include "frontend/unary_call.h"
#include "frontend/validation.h"
#include "shardq/v1/queue.grpc.pb.h"

namespace shardq::frontend {

// Every method raw (bytes in, bytes out), in the proto's order.
using RawQueueService = v1::Queue::WithRawCallbackMethod_Enqueue<
    v1::Queue::WithRawCallbackMethod_EnqueueStream<
        v1::Queue::WithRawCallbackMethod_Dequeue<
            v1::Queue::WithRawCallbackMethod_Ack<v1::Queue::WithRawCallbackMethod_Nack<
                v1::Queue::WithRawCallbackMethod_ExtendLease<
                    v1::Queue::WithRawCallbackMethod_GetActiveTopics<
                        v1::Queue::WithRawCallbackMethod_GetTask<
                            v1::Queue::WithRawCallbackMethod_CancelTask<
                                v1::Queue::WithRawCallbackMethod_ListDeadLetters<
                                    v1::Queue::WithRawCallbackMethod_RedriveDeadLetters<
                                        v1::Queue::WithRawCallbackMethod_PurgeDeadLetters<
                                            v1::Queue::Service>>>>>>>>>>>>;

class QueueService final : public RawQueueService {
 public:
  QueueService(engine::Engine& engine, Clock& clock, Limits limits = {})
      : engine_(engine), clock_(clock), limits_(limits) {}

  using Raw = grpc::ServerUnaryReactor*;
  Raw Enqueue(grpc::CallbackServerContext*, const grpc::ByteBuffer* in,
              grpc::ByteBuffer* out) override;
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* EnqueueStream(
      grpc::CallbackServerContext*) override;
  Raw Dequeue(grpc::CallbackServerContext*, const grpc::ByteBuffer* in,
              grpc::ByteBuffer* out) override;
  Raw Ack(grpc::CallbackServerContext*, const grpc::ByteBuffer* in,
          grpc::ByteBuffer* out) override;
  Raw Nack(grpc::CallbackServerContext*, const grpc::ByteBuffer* in,
           grpc::ByteBuffer* out) override;
  Raw ExtendLease(grpc::CallbackServerContext*, const grpc::ByteBuffer* in,
                  grpc::ByteBuffer* out) override;
  Raw GetActiveTopics(grpc::CallbackServerContext*, const grpc::ByteBuffer* in,
                      grpc::ByteBuffer* out) override;
  Raw GetTask(grpc::CallbackServerContext*, const grpc::ByteBuffer* in,
              grpc::ByteBuffer* out) override;
  Raw CancelTask(grpc::CallbackServerContext*, const grpc::ByteBuffer* in,
                 grpc::ByteBuffer* out) override;
  Raw ListDeadLetters(grpc::CallbackServerContext*, const grpc::ByteBuffer* in,
                      grpc::ByteBuffer* out) override;
  Raw RedriveDeadLetters(grpc::CallbackServerContext*, const grpc::ByteBuffer* in,
                         grpc::ByteBuffer* out) override;
  Raw PurgeDeadLetters(grpc::CallbackServerContext*, const grpc::ByteBuffer* in,
                       grpc::ByteBuffer* out) override;

 private:
  // One Enqueue call, unary or from the stream: validates, enqueues, fills `out` and
  // calls `done` once (with the call-level status) when every item is answered.
  void RunEnqueue(const v1::EnqueueRequest& req, v1::EnqueueResponse* out,
                  std::function<void(const Status&)> done);
  // The typed handlers: each finishes its call exactly once.
  void HandleEnqueue(UnaryCall<v1::EnqueueRequest, v1::EnqueueResponse>* call);
  void HandleDequeue(UnaryCall<v1::DequeueRequest, v1::DequeueResponse>* call);
  void HandleAck(UnaryCall<v1::AckRequest, v1::AckResponse>* call);
  void HandleNack(UnaryCall<v1::NackRequest, v1::NackResponse>* call);
  void HandleExtend(UnaryCall<v1::ExtendLeaseRequest, v1::ExtendLeaseResponse>* call);
  void HandleActiveTopics(
      UnaryCall<v1::GetActiveTopicsRequest, v1::GetActiveTopicsResponse>* call);
  void HandleGetTask(UnaryCall<v1::GetTaskRequest, v1::GetTaskResponse>* call);
  void HandleCancelTask(UnaryCall<v1::CancelTaskRequest, v1::CancelTaskResponse>* call);
  void HandleListDead(
      UnaryCall<v1::ListDeadLettersRequest, v1::ListDeadLettersResponse>* call);
  void HandleRedrive(
      UnaryCall<v1::RedriveDeadLettersRequest, v1::RedriveDeadLettersResponse>* call);
  void HandlePurgeDead(
      UnaryCall<v1::PurgeDeadLettersRequest, v1::PurgeDeadLettersResponse>* call);

  engine::Engine& engine_;
  Clock& clock_;
  const Limits limits_;
};

}  // namespace shardq::frontend
