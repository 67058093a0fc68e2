#pragma once
// ConsumeCalls: a worker's Dequeue, Ack, Nack and ExtendLease calls, made as messages
// of one ConsumeStream instead of one RPC each, for the calling thread that waits for
// the answer (the worker's threads are synchronous). The stream is opened on the first
// call and again after it breaks; against a server without ConsumeStream
// (UNIMPLEMENTED) every call goes as its unary RPC from then on. No thread of its own.

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>

#include "call_stream_client.h"
#include "shardq/v1/queue.grpc.pb.h"

namespace shardq::sdk {

class ConsumeCalls {
 public:
  explicit ConsumeCalls(v1::Queue::Stub& stub) : stub_(stub) {}
  // Ends the stream and waits (at most 5 s) until gRPC is done with it.
  ~ConsumeCalls();
  ConsumeCalls(const ConsumeCalls&) = delete;
  ConsumeCalls& operator=(const ConsumeCalls&) = delete;

  // Each blocks until the answer or `deadline` (real time from now), and answers what
  // the unary RPC would: its gRPC status, and the response when OK.
  grpc::Status Dequeue(const v1::DequeueRequest& req, v1::DequeueResponse* resp,
                       std::chrono::milliseconds deadline);
  grpc::Status Ack(const v1::AckRequest& req, v1::AckResponse* resp,
                   std::chrono::milliseconds deadline);
  grpc::Status Nack(const v1::NackRequest& req, v1::NackResponse* resp,
                    std::chrono::milliseconds deadline);
  grpc::Status ExtendLease(const v1::ExtendLeaseRequest& req,
                           v1::ExtendLeaseResponse* resp,
                           std::chrono::milliseconds deadline);

  // Ends the stream now and refuses every later call (CANCELLED): a call in flight,
  // e.g. a parked dequeue, returns at once, and the server ends it too.
  void Shutdown();

 private:
  using Stream = CallStreamClient<v1::ConsumeStreamRequest, v1::ConsumeStreamResponse>;
  // One call's answer, for the thread that waits on it.
  struct Waiter {
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    grpc::Status status;
    v1::ConsumeStreamResponse response;
  };

  // Sends `call` on the stream and waits; nothing if the server has no ConsumeStream
  // (the caller then makes the unary call).
  std::optional<grpc::Status> OnStream(v1::ConsumeStreamRequest call,
                                       std::chrono::milliseconds deadline,
                                       v1::ConsumeStreamResponse* out);
  template <typename Req, typename Resp, typename SetCall, typename TakeAnswer,
            typename Unary>
  grpc::Status Call(const Req& req, Resp* resp, std::chrono::milliseconds deadline,
                    SetCall set_call, TakeAnswer take, Unary unary);

  v1::Queue::Stub& stub_;
  StreamSlot<Stream> stream_;
  // Streams started and not yet done (OnDone), for the destructor to wait on.
  struct OpenStreams {
    std::mutex mu;
    std::condition_variable done;
    size_t streams = 0;
  };
  std::shared_ptr<OpenStreams> open_ = std::make_shared<OpenStreams>();
  std::atomic<uint64_t> next_call_id_{0};
  std::atomic<bool> unary_only_{false};  // the server has no ConsumeStream
};

}  // namespace shardq::sdk
