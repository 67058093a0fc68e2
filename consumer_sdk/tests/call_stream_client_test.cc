// CallStreamClient against an in-process gRPC server (no MariaDB): what a call sent
// on a stream that is over is answered with.

#include "consumer_sdk/src/call_stream_client.h"

#include <gtest/gtest.h>

#include <chrono>
#include <future>
#include <thread>

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
  ASSERT_EQ(done.get_future().wait_for(30s), std::future_status::ready);
  // After the end too.
  EXPECT_EQ(SendAndWait(*stream, 2, &sent), grpc::StatusCode::UNIMPLEMENTED);
  EXPECT_FALSE(sent);
}

TEST(CallStreamClientTest, CallSentAfterCloseWritesIsRefusedAsUnavailable) {
  OldServer old;
  std::promise<void> done;
  std::shared_ptr<Stream> stream = old.Open(&done);
  stream->CloseWrites();
  bool sent = true;
  EXPECT_EQ(SendAndWait(*stream, 1, &sent), grpc::StatusCode::UNAVAILABLE);
  EXPECT_FALSE(sent);
  EXPECT_EQ(done.get_future().wait_for(30s), std::future_status::ready);
}

}  // namespace
}  // namespace shardq::sdk
