#pragma once
// QueueService: the gRPC handlers of shardq.v1.Queue (callback API). Each handler
// decodes and validates (validation.h), calls the Engine, and encodes the answer;
// no queue logic lives here. No handler blocks: answers are sent from the engine's
// callbacks, and a long poll holds no thread while it waits.
//
// The methods are registered raw (bytes in, bytes out) and parsed by UnaryCall (and
// CallStream), so a request that does not parse gets INVALID_ARGUMENT with a reason.
// EnqueueStream and ConsumeStream carry the same calls as messages of one stream:
// each kind of call has one Run* function, shared by its unary method and the stream.

#include <atomic>
#include <functional>
#include <memory>

#include "common/clock.h"
#include "engine/engine.h"
#include "frontend/unary_call.h"
#include "frontend/validation.h"
#include "shardq/v1/queue.grpc.pb.h"

namespace shardq::frontend {

// Every method raw (bytes in, bytes out), in the proto's order.
using RawQueueService = v1::Queue::WithRawCallbackMethod_Enqueue<
    v1::Queue::WithRawCallbackMethod_EnqueueStream<v1::Queue::WithRawCallbackMethod_Dequeue<
        v1::Queue::WithRawCallbackMethod_Ack<v1::Queue::WithRawCallbackMethod_Nack<
            v1::Queue::WithRawCallbackMethod_ExtendLease<
                v1::Queue::WithRawCallbackMethod_ConsumeStream<
                    v1::Queue::WithRawCallbackMethod_GetActiveTopics<
                        v1::Queue::WithRawCallbackMethod_GetTask<
                            v1::Queue::WithRawCallbackMethod_CancelTask<
                                v1::Queue::WithRawCallbackMethod_ListDeadLetters<
                                    v1::Queue::WithRawCallbackMethod_RedriveDeadLetters<
                                        v1::Queue::WithRawCallbackMethod_PurgeDeadLetters<
                                            v1::Queue::WithRawCallbackMethod_GetShards<
                                                v1::Queue::Service>>>>>>>>>>>>>>;

// Holds a parked Dequeue's handle for a cancellation that may come before or after
// the handle exists (queue_service.cc).
class CancelSlot;

class QueueService final : public RawQueueService {
 public:
  // Called once with a call's status when the call is complete.
  using Done = std::function<void(const Status&)>;

  QueueService(engine::Engine& engine, Clock& clock, Limits limits = {})
      : engine_(engine), clock_(clock), limits_(limits) {}

  // Streams cancelled so far because their client left too many answers unread
  // (Limits::max_unread_stream_bytes).
  uint64_t StreamsCut() const { return streams_cut_.load(); }
  // Leases given back so far because the answer that carried them was never sent.
  uint64_t LeasesGivenBack() const { return leases_given_back_.load(); }

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
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* ConsumeStream(
      grpc::CallbackServerContext*) override;
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
  Raw GetShards(grpc::CallbackServerContext*, const grpc::ByteBuffer* in,
                grpc::ByteBuffer* out) override;

 private:
  // One Enqueue call, unary or from the stream: validates, enqueues, fills `out` and
  // calls `done` once (with the call-level status) when every item is answered.
  void RunEnqueue(const v1::EnqueueRequest& req, v1::EnqueueResponse* out, Done done);
  // Likewise for the consumer's calls. A dequeue ends early (empty) when `slot` is
  // cancelled.
  void RunDequeue(const v1::DequeueRequest& req, v1::DequeueResponse* out,
                  std::shared_ptr<CancelSlot> slot, Done done);
  void RunAck(const v1::AckRequest& req, v1::AckResponse* out, Done done);
  void RunNack(const v1::NackRequest& req, v1::NackResponse* out, Done done);
  void RunExtend(const v1::ExtendLeaseRequest& req, v1::ExtendLeaseResponse* out,
                 Done done);
  // Gives back the leases of a Dequeue answer that was never sent (the client went
  // away first), so its items are ready again at once instead of when the leases
  // run out. The attempt counts, as for an expired lease.
  void GiveBack(const v1::DequeueResponse& unsent);
  // The typed handlers: each finishes its call exactly once.
  template <auto Run, typename Call>
  void HandleBy(Call* call) {
    (this->*Run)(call->request(), call->response(),
                 [call](const Status& status) { call->Finish(status); });
  }
  void HandleDequeue(UnaryCall<v1::DequeueRequest, v1::DequeueResponse>* call);
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
  void HandleShards(UnaryCall<v1::GetShardsRequest, v1::GetShardsResponse>* call);

  engine::Engine& engine_;
  Clock& clock_;
  const Limits limits_;
  std::atomic<uint64_t> streams_cut_{0};
  std::atomic<uint64_t> leases_given_back_{0};
};

}  // namespace shardq::frontend
