#pragma once
// QueueService: the gRPC handlers of shardq.v1.Queue (callback API). Each handler
// decodes and validates (validation.h), calls the Engine, and encodes the answer;
// no queue logic lives here. No handler blocks: answers are sent from the engine's
// callbacks, and a long poll holds no thread while it waits.

#include "common/clock.h"
#include "engine/engine.h"
#include "frontend/validation.h"
#include "shardq/v1/queue.grpc.pb.h"

namespace shardq::frontend {

class QueueService final : public v1::Queue::CallbackService {
 public:
  QueueService(engine::Engine& engine, Clock& clock, Limits limits = {})
      : engine_(engine), clock_(clock), limits_(limits) {}

  grpc::ServerUnaryReactor* Enqueue(grpc::CallbackServerContext* ctx,
                                    const v1::EnqueueRequest* req,
                                    v1::EnqueueResponse* resp) override;
  grpc::ServerUnaryReactor* Dequeue(grpc::CallbackServerContext* ctx,
                                    const v1::DequeueRequest* req,
                                    v1::DequeueResponse* resp) override;
  grpc::ServerUnaryReactor* Ack(grpc::CallbackServerContext* ctx, const v1::AckRequest* req,
                                v1::AckResponse* resp) override;
  grpc::ServerUnaryReactor* Nack(grpc::CallbackServerContext* ctx, const v1::NackRequest* req,
                                 v1::NackResponse* resp) override;
  grpc::ServerUnaryReactor* ExtendLease(grpc::CallbackServerContext* ctx,
                                        const v1::ExtendLeaseRequest* req,
                                        v1::ExtendLeaseResponse* resp) override;
  grpc::ServerUnaryReactor* GetActiveTopics(grpc::CallbackServerContext* ctx,
                                            const v1::GetActiveTopicsRequest* req,
                                            v1::GetActiveTopicsResponse* resp) override;

 private:
  engine::Engine& engine_;
  Clock& clock_;
  const Limits limits_;
};

}  // namespace shardq::frontend
