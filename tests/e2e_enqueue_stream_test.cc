// EnqueueStream over real gRPC: answers by call id once committed, call-level errors
// answered in the stream, garbage ends the stream with INVALID_ARGUMENT, calls batched
// in one message each committed and answered.

#include <gtest/gtest.h>

#include <map>
#include <set>

#include "shardq/v1/stream_batching.h"
#include "tests/e2e_support.h"

namespace shardq::testing {
namespace {

constexpr char kNs[] = "stream";

class EnqueueStreamTest : public LiveServerTest {
 protected:
  static v1::EnqueueStreamRequest Call(uint64_t id, const std::string& ns,
                                       const std::vector<std::string>& topics) {
    v1::EnqueueStreamRequest call;
    call.set_call_id(id);
    call.mutable_request()->set_namespace_(ns);
    for (const std::string& topic : topics) {
      v1::EnqueueItem* item = call.mutable_request()->add_items();
      item->set_topic(topic);
      item->set_payload("p");
    }
    return call;
  }

  // Writes `calls`, half-closes, and returns the answers by call id and the status.
  std::map<uint64_t, v1::EnqueueStreamResponse> RunStream(
      const std::vector<v1::EnqueueStreamRequest>& calls, grpc::Status* status) {
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    auto stream = client_->stub().EnqueueStream(&ctx);
    for (const auto& call : calls) EXPECT_TRUE(stream->Write(call));
    EXPECT_TRUE(stream->WritesDone());
    std::map<uint64_t, v1::EnqueueStreamResponse> answers;
    v1::EnqueueStreamResponse answer;
    while (stream->Read(&answer)) {
      EXPECT_TRUE(answers.emplace(answer.call_id(), answer).second)
          << "call " << answer.call_id() << " answered twice";
    }
    *status = stream->Finish();
    return answers;
  }
};

TEST_F(EnqueueStreamTest, EveryCallIsAnsweredOnceByItsIdWithItsItemsCommitted) {
  std::vector<v1::EnqueueStreamRequest> calls;
  for (uint64_t id = 100; id < 150; ++id) calls.push_back(Call(id, kNs, {"a", "b"}));
  grpc::Status status;
  auto answers = RunStream(calls, &status);
  EXPECT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(answers.size(), calls.size());
  std::set<std::string> ids;
  for (const auto& [id, answer] : answers) {
    EXPECT_GE(id, 100u);
    EXPECT_LT(id, 150u);
    EXPECT_EQ(answer.status().code(), 0);
    ASSERT_EQ(answer.response().results_size(), 2);
    for (const auto& result : answer.response().results()) {
      EXPECT_EQ(result.status().code(), 0);
      ids.insert(result.id());
    }
  }
  EXPECT_EQ(ids.size(), 100u) << "every item got its own id";
  // Answered means committed: all of them are there to dequeue.
  EXPECT_EQ(client_->Dequeue(kNs, "a", 100).size(), 50u);
  EXPECT_EQ(client_->Dequeue(kNs, "b", 100).size(), 50u);
}

TEST_F(EnqueueStreamTest, ARefusedCallIsAnsweredAndTheStreamGoesOn) {
  v1::EnqueueStreamRequest bad_item = Call(3, kNs, {"ok", "no spaces allowed"});
  grpc::Status status;
  auto answers = RunStream({Call(1, "bad namespace!", {"t"}), Call(2, kNs, {}), bad_item,
                            Call(4, kNs, {"ok"})},
                           &status);
  EXPECT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(answers.size(), 4u);
  EXPECT_EQ(answers[1].status().code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_FALSE(answers[1].status().message().empty());
  EXPECT_EQ(answers[1].response().results_size(), 0);
  EXPECT_EQ(answers[2].status().code(), grpc::StatusCode::INVALID_ARGUMENT) << "no items";
  // A bad item is refused on its own; the call and its other item go ahead.
  EXPECT_EQ(answers[3].status().code(), 0);
  ASSERT_EQ(answers[3].response().results_size(), 2);
  EXPECT_EQ(answers[3].response().results(0).status().code(), 0);
  EXPECT_EQ(answers[3].response().results(1).status().code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(answers[4].status().code(), 0);
  EXPECT_EQ(client_->Dequeue(kNs, "ok", 10).size(), 2u);
}

TEST_F(EnqueueStreamTest, AClientGoneMidStreamLeavesTheServerServing) {
  for (int round = 0; round < 5; ++round) {
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    auto stream = client_->stub().EnqueueStream(&ctx);
    for (uint64_t id = 0; id < 50; ++id) stream->Write(Call(id, kNs, {"gone"}));
    ctx.TryCancel();  // the answers of calls still committing have nobody to go to
    EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  // Calls the server read before the cancellation were still committed, and it serves.
  EXPECT_TRUE(client_->EnqueueOne(kNs, "after").ok());
  EXPECT_EQ(client_->Dequeue(kNs, "after", 10).size(), 1u);
  EXPECT_LE(client_->Dequeue(kNs, "gone", 1000).size(), 250u);
}

TEST_F(EnqueueStreamTest, GarbageEndsTheStreamWithInvalidArgumentAfterEarlierAnswers) {
  grpc::Status status = WriteGarbageOnStream(server_->port(), "EnqueueStream",
                                             Call(7, kNs, {"g"}).SerializeAsString());
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(status.error_message().find("EnqueueStreamRequest"), std::string::npos)
      << status.error_message();
  EXPECT_EQ(client_->Dequeue(kNs, "g", 10).size(), 1u) << "the call before the garbage";
}

TEST_F(EnqueueStreamTest, CallsBatchedInOneMessageAreEachCommittedAndAnswered) {
  grpc::ClientContext ctx;
  SetDeadline(ctx);
  ctx.AddMetadata(v1::kBatchingHeader, "1");
  auto stream = client_->stub().EnqueueStream(&ctx);
  v1::EnqueueStreamRequest message = Call(1, kNs, {"batched"});
  for (uint64_t id = 2; id <= 10; ++id) *message.add_more() = Call(id, kNs, {"batched"});
  *message.add_more() = Call(11, "bad namespace!", {"batched"});
  EXPECT_TRUE(stream->Write(message));
  EXPECT_TRUE(stream->WritesDone());
  std::map<uint64_t, v1::EnqueueStreamResponse> answers;
  v1::EnqueueStreamResponse answer;
  while (stream->Read(&answer)) {
    for (const auto& more : answer.more()) answers.emplace(more.call_id(), more);
    answer.clear_more();
    EXPECT_TRUE(answers.emplace(answer.call_id(), answer).second);
  }
  grpc::Status status = stream->Finish();
  EXPECT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(answers.size(), 11u);
  for (uint64_t id = 1; id <= 10; ++id) {
    EXPECT_EQ(answers[id].status().code(), 0);
    EXPECT_EQ(answers[id].response().results_size(), 1);
  }
  EXPECT_EQ(answers[11].status().code(), grpc::StatusCode::INVALID_ARGUMENT)
      << "a refused call in a batch is refused alone";
  EXPECT_EQ(client_->Dequeue(kNs, "batched", 100).size(), 10u);
}

}  // namespace
}  // namespace shardq::testing
