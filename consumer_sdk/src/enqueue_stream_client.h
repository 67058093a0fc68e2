#pragma once
// EnqueueStreamClient: a producer's end of one EnqueueStream (gRPC callback API, no
// thread of its own). Send() writes a call at once, behind the write in flight; each
// answer goes to its call's callback on a gRPC thread. When the stream ends, every
// call still waiting gets the end status (UNAVAILABLE if the server closed the stream
// cleanly), and Send() answers UNAVAILABLE at once from then on, so the producer opens
// a new stream for its retries.

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>

#include "shardq/v1/queue.grpc.pb.h"

namespace shardq::sdk {

class EnqueueStreamClient final
    : public grpc::ClientBidiReactor<v1::EnqueueStreamRequest,
                                     v1::EnqueueStreamResponse> {
 public:
  // `response` is null unless `status` is OK; it is valid during the call only.
  using Answer = std::function<void(const grpc::Status& status,
                                    v1::EnqueueStreamResponse* response)>;

  // Starts a stream; `on_done` runs once, after the stream ended and every answer ran.
  static std::shared_ptr<EnqueueStreamClient> Open(v1::Queue::Stub& stub,
                                                   std::function<void()> on_done);

  // False if the stream is over: then `answer` has already run (UNAVAILABLE).
  bool Send(uint64_t call_id, v1::EnqueueRequest request, Answer answer);
  // Answers the call with `status` if it is still waiting; its late answer is dropped.
  void Abandon(uint64_t call_id, const grpc::Status& status);
  // Half-closes: the server ends the stream once it has answered what it read.
  void CloseWrites();
  // Ends the stream now; calls still waiting get CANCELLED.
  void Cancel() { ctx_.TryCancel(); }
  // True once Send() can no longer reach the server on this stream.
  bool closed() const;

 private:
  EnqueueStreamClient(std::function<void()> on_done) : on_done_(std::move(on_done)) {}

  void OnWriteDone(bool ok) override;
  void OnReadDone(bool ok) override;
  void OnDone(const grpc::Status& status) override;
  // Requires mu_. The next write (or half-close) to start, and whether to drop the hold
  // that lets Send() start writes from outside gRPC's reactions.
  struct Next {
    v1::EnqueueStreamRequest* write = nullptr;
    bool writes_done = false;
    bool remove_hold = false;
  };
  Next PlanLocked();
  void Start(const Next& next);

  grpc::ClientContext ctx_;
  std::function<void()> on_done_;
  v1::EnqueueStreamResponse read_;
  std::shared_ptr<EnqueueStreamClient> self_;  // alive until OnDone

  mutable std::mutex mu_;
  std::deque<v1::EnqueueStreamRequest> writes_;  // the front is being written
  std::map<uint64_t, Answer> waiting_;
  bool writing_ = false;
  bool ended_ = false;    // a read or write failed: the stream is over
  bool closing_ = false;  // CloseWrites() was called
  bool writes_done_started_ = false;
  bool holding_ = true;
};

}  // namespace shardq::sdk
