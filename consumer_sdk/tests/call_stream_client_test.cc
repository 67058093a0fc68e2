// CallStreamClient and ConsumeCalls against in-process gRPC servers (no MariaDB): what
// a call sent on a stream that is over is answered with; a call given up on is
// cancelled on the server.

#include "consumer_sdk/src/call_stream_client.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <thread>

#include "consumer_sdk/src/consume_calls.h"
#include "shardq/v1/queue.grpc.pb.h"

namespace shardq::sdk {
namespace {

using namespace std::chrono_literals;
using Stream = CallStreamClient<v1::ConsumeStreamRequest, v1::ConsumeStreamResponse>;

// A server from before ConsumeStream: every method is UNIMPLEMENTED.
struct OldServer {
  OldServer() {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(&service);
    server = builder.BuildAndStart();
    channel = grpc::CreateChannel("127.0.0.1:" + std::to_string(port),
                                  grpc::InsecureChannelCredentials());
    stub = v1::Queue::NewStub(channel);
  }
  ~OldServer() { server->Shutdown(); }

  std::shared_ptr<Stream> Open(std::promise<void>* done) {
    return Stream::Open(
        [this](grpc::ClientContext* ctx, auto* reactor) {
          stub->async()->ConsumeStream(ctx, reactor);
        },
        [done] { done->set_value(); });
  }

  v1::Queue::Service service;
  int port = 0;
  std::unique_ptr<grpc::Server> server;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::Queue::Stub> stub;
};

// Sends one call and waits for its answer's status.
grpc::StatusCode SendAndWait(Stream& stream, uint64_t call_id, bool* sent) {
  std::promise<grpc::StatusCode> answered;
  v1::ConsumeStreamRequest call;
  call.set_call_id(call_id);
  call.mutable_ack();
  *sent = stream.Send(std::move(call), [&](const grpc::Status& s, auto*) {
    answered.set_value(s.error_code());
  });
  auto future = answered.get_future();
  EXPECT_EQ(future.wait_for(30s), std::future_status::ready);
  return future.get();
}

// Polls `pred` until it holds or 30 s (real time) ran out.
template <typename Pred>
bool Eventually(Pred pred) {
  auto until = std::chrono::steady_clock::now() + 30s;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

// The server ends the stream before the caller's first call is sent (the race a
// worker's fallback to unary calls once lost): the call must hear UNIMPLEMENTED,
// which is what makes the caller fall back, not UNAVAILABLE, which it retries.
TEST(CallStreamClientTest, CallSentAfterTheServerEndedTheStreamGetsTheEndStatus) {
  OldServer old;
  std::promise<void> done;
  std::shared_ptr<Stream> stream = old.Open(&done);
  ASSERT_TRUE(Eventually([&] { return stream->closed(); }));
  bool sent = false;
  EXPECT_EQ(SendAndWait(*stream, 1, &sent), grpc::StatusCode::UNIMPLEMENTED);
  // After the end (the answer above comes from OnDone) too.
  EXPECT_EQ(SendAndWait(*stream, 2, &sent), grpc::StatusCode::UNIMPLEMENTED);
  EXPECT_FALSE(sent);
  stream.reset();
  EXPECT_EQ(done.get_future().wait_for(30s), std::future_status::ready);
}

TEST(CallStreamClientTest, CallSentAfterCloseWritesIsRefusedAsUnavailable) {
  OldServer old;
  std::promise<void> done;
  std::shared_ptr<Stream> stream = old.Open(&done);
  stream->CloseWrites();
  bool sent = true;
  EXPECT_EQ(SendAndWait(*stream, 1, &sent), grpc::StatusCode::UNAVAILABLE);
  EXPECT_FALSE(sent);
  stream.reset();
  EXPECT_EQ(done.get_future().wait_for(30s), std::future_status::ready);
}

// The end callback tells its owner it may let go of the channel. It must come after
// the stream object (whose ClientContext holds a channel reference) is destroyed, or
// the owner's release could leave the last reference to a gRPC thread, which gRPC
// 1.51 does not survive (a rare double free in a bench client's teardown).
TEST(CallStreamClientTest, TheEndCallbackRunsOnlyOnceTheStreamIsDestroyed) {
  OldServer old;
  std::weak_ptr<Stream> weak;
  std::promise<bool> gone_at_done;
  std::shared_ptr<Stream> stream = Stream::Open(
      [&](grpc::ClientContext* ctx, auto* reactor) {
        old.stub->async()->ConsumeStream(ctx, reactor);
      },
      // Cannot run before `weak` is set: `stream` holds the object until the reset.
      [&] { gone_at_done.set_value(weak.expired()); });
  weak = stream;
  ASSERT_TRUE(Eventually([&] { return stream->closed(); }));
  // A call's answer comes from OnDone at the latest, so once one was answered, a call
  // after it is refused at once: OnDone has run.
  bool sent = true;
  SendAndWait(*stream, 1, &sent);
  SendAndWait(*stream, 2, &sent);
  ASSERT_FALSE(sent);
  std::future<bool> gone = gone_at_done.get_future();
  // gRPC is done with the stream, but the caller still holds it.
  EXPECT_EQ(gone.wait_for(0s), std::future_status::timeout);
  stream.reset();
  ASSERT_EQ(gone.wait_for(30s), std::future_status::ready);
  EXPECT_TRUE(gone.get());
}

// A ConsumeStream server that never answers a dequeue and notes each cancel call.
class SilentDequeues final : public v1::Queue::Service {
 public:
  grpc::Status ConsumeStream(
      grpc::ServerContext*,
      grpc::ServerReaderWriter<v1::ConsumeStreamResponse, v1::ConsumeStreamRequest>* s)
      override {
    v1::ConsumeStreamRequest call;
    while (s->Read(&call)) {
      if (call.call_case() != v1::ConsumeStreamRequest::kCancel) continue;
      cancelled = call.cancel().call_id();
      v1::ConsumeStreamResponse answer;
      answer.set_call_id(call.call_id());
      s->Write(answer);
    }
    return grpc::Status::OK;
  }
  std::atomic<uint64_t> cancelled{0};
};

TEST(ConsumeCallsTest, ACallGivenUpAtItsDeadlineIsCancelledOnTheServer) {
  SilentDequeues service;
  int port = 0;
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  auto stub = v1::Queue::NewStub(grpc::CreateChannel("127.0.0.1:" + std::to_string(port),
                                                     grpc::InsecureChannelCredentials()));
  {
    ConsumeCalls calls(*stub);
    v1::DequeueResponse resp;
    // The first call on the stream gets call_id 1.
    grpc::Status s = calls.Dequeue(v1::DequeueRequest(), &resp, 20ms);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
    EXPECT_TRUE(Eventually([&] { return service.cancelled.load() == 1; }));
  }
  server->Shutdown();
}

}  // namespace
}  // namespace shardq::sdk
