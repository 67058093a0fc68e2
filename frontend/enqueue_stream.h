#pragma once
// EnqueueStreamCall: one producer's EnqueueStream (callback API, no thread of its own).
// Each message read is one Enqueue call, run at once; its answer is written, tagged
// with the call's id, when its items are committed. Reads run at most kMaxCallsAhead
// calls ahead of their answers (the producer's backpressure); answers are written one
// at a time, in the order they are ready.
//
// Lifetime: gRPC deletes the reactor after Finish, and Finish waits until no read or
// write is outstanding and every call read has been answered, so the engine never
// calls back into a deleted reactor. After a cancellation (client gone, server
// shutdown) answers are dropped, but the reactor still waits for them.

#include <grpcpp/grpcpp.h>

#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>

#include "common/status.h"
#include "shardq/v1/queue.pb.h"

namespace shardq::frontend {

class EnqueueStreamCall final
    : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  // Runs one call: fills the response and calls `done` once with the call's status.
  using RunFn = std::function<void(const v1::EnqueueRequest&, v1::EnqueueResponse*,
                                   std::function<void(const Status&)>)>;
  static constexpr size_t kMaxCallsAhead = 1000;

  explicit EnqueueStreamCall(RunFn run);

  void OnReadDone(bool ok) override;
  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override { delete this; }

 private:
  // What to start once mu_ is released (gRPC calls must not run under it).
  struct Next {
    bool read = false;
    grpc::ByteBuffer* write = nullptr;
    std::optional<grpc::Status> finish;
  };
  void Answer(uint64_t call_id, const Status& status, v1::EnqueueResponse out);
  // Requires mu_. Decides the next read, write or Finish.
  Next PlanLocked();
  void Start(const Next& next);

  const RunFn run_;
  grpc::ByteBuffer in_;  // the message being read

  std::mutex mu_;
  std::deque<grpc::ByteBuffer> answers_;  // not yet written; the front is being written
  bool reading_ = false;
  bool writing_ = false;
  bool reads_done_ = false;  // the client half-closed, sent garbage, or went away
  bool cancelled_ = false;   // answers are dropped from now on
  bool finished_ = false;
  size_t unanswered_ = 0;    // calls read and not answered yet
  grpc::Status end_status_;  // OK, or why the stream ends (garbage)
};

}  // namespace shardq::frontend
