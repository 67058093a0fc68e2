// ConsumeStream over real gRPC: dequeue, ack, nack and extend calls answered by call
// id in completion order (a parked dequeue does not hold up the acks behind it),
// call-level errors answered in the stream, a cancelled stream's parked dequeue ended
// at once, one call cancelled alone, garbage ending the stream with INVALID_ARGUMENT;
// batched messages: calls in `more` each answered, answers batched only for a client
// that asked, a message past the batching rules refused.

#include <gtest/gtest.h>

#include <chrono>
#include <map>
#include <set>
#include <thread>

#include "shardq/v1/stream_batching.h"
#include "tests/e2e_support.h"

namespace shardq::testing {
namespace {

constexpr char kNs[] = "consume";

class ConsumeStreamTest : public LiveServerTest {
 protected:
  static v1::ConsumeStreamRequest DequeueCall(uint64_t id, const std::string& topic,
                                              int count, int64_t wait_ms) {
    v1::ConsumeStreamRequest call;
    call.set_call_id(id);
    v1::DequeueRequest* d = call.mutable_dequeue();
    d->set_namespace_(kNs);
    d->set_wait_ms(wait_ms);
    v1::TopicRequest* t = d->add_topics();
    t->set_topic(topic);
    t->set_count(count);
    return call;
  }

  // A call that cancels this stream's call `target`.
  static v1::ConsumeStreamRequest CancelCall(uint64_t id, uint64_t target) {
    v1::ConsumeStreamRequest call;
    call.set_call_id(id);
    call.mutable_cancel()->set_call_id(target);
    return call;
  }

  // Waits (real time, bounded) until the server holds `n` parked dequeues.
  void AwaitParked(int n) {
    auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (server_->engine().ParkedCalls() != n &&
           std::chrono::steady_clock::now() < until) {
      std::this_thread::yield();
    }
    ASSERT_EQ(server_->engine().ParkedCalls(), n);
  }
};

TEST_F(ConsumeStreamTest, ACancelCallEndsOneParkedDequeueAndLeasesNothingForIt) {
  grpc::ClientContext ctx;
  SetDeadline(ctx);
  auto stream = client_->stub().ConsumeStream(&ctx);
  ASSERT_TRUE(stream->Write(DequeueCall(1, "given-up", 1, 60'000)));
  AwaitParked(1);
  ASSERT_TRUE(stream->Write(DequeueCall(2, "still-wanted", 1, 60'000)));
  AwaitParked(2);
  ASSERT_TRUE(stream->Write(CancelCall(3, 1)));
  ASSERT_TRUE(stream->Write(CancelCall(4, 99)));  // no such call: answered all the same
  std::map<uint64_t, v1::ConsumeStreamResponse> answers;
  v1::ConsumeStreamResponse answer;
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(stream->Read(&answer));
    EXPECT_TRUE(answers.emplace(answer.call_id(), answer).second);
  }
  ASSERT_EQ(answers.count(1), 1u) << "the cancelled dequeue answered without its wait";
  EXPECT_EQ(answers[1].status().code(), 0);
  EXPECT_EQ(answers[1].dequeue().items_size(), 0);
  for (uint64_t id : {3, 4}) {
    ASSERT_EQ(answers.count(id), 1u);
    EXPECT_EQ(answers[id].status().code(), 0);
    EXPECT_EQ(answers[id].response_case(), v1::ConsumeStreamResponse::RESPONSE_NOT_SET);
  }
  AwaitParked(1);  // the other one still waits

  // Nothing is leased for the cancelled call: the item is there for the next one.
  auto id = client_->EnqueueOne(kNs, "given-up");
  ASSERT_TRUE(id.ok());
  auto got = client_->Dequeue(kNs, "given-up", 1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].id(), *id);
  EXPECT_EQ(got[0].attempts(), 1u);

  ASSERT_TRUE(stream->Write(CancelCall(5, 2)));
  for (int i = 0; i < 2; ++i) ASSERT_TRUE(stream->Read(&answer));
  ASSERT_TRUE(stream->WritesDone());
  EXPECT_FALSE(stream->Read(&answer));
  grpc::Status status = stream->Finish();
  EXPECT_TRUE(status.ok()) << status.error_message();
}

// Sent right behind its call, a cancel still ends it. (The cancel may be read while
// the dequeue is still starting, before it can be cancelled; CallStream then cancels
// it once it can. This test does not make that interleaving happen reliably.)
TEST_F(ConsumeStreamTest, ACancelRightBehindItsCallStillEndsIt) {
  grpc::ClientContext ctx;
  SetDeadline(ctx);
  auto stream = client_->stub().ConsumeStream(&ctx);
  for (uint64_t id = 1; id <= 40; id += 2) {
    ASSERT_TRUE(stream->Write(DequeueCall(id, "idle", 1, 60'000)));
    ASSERT_TRUE(stream->Write(CancelCall(id + 1, id)));
  }
  ASSERT_TRUE(stream->WritesDone());
  v1::ConsumeStreamResponse answer;
  int answers = 0;
  while (stream->Read(&answer)) ++answers;
  EXPECT_EQ(answers, 40);
  grpc::Status status = stream->Finish();
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(server_->engine().ParkedCalls(), 0);
}

// A client that sends far more calls than the server reads ahead (1,000, answers not
// yet written included), reading the answers on another thread as they come: the
// server's reads stop and resume with the answers written, and every call is
// answered. (That the reads stop is CallStreamTest's, frontend/tests: a test here
// could only see it by waiting.)
TEST_F(ConsumeStreamTest, ManyMoreCallsThanTheReadAheadAreAllAnsweredOnceTheClientReads) {
  grpc::ClientContext ctx;
  SetDeadline(ctx);
  auto stream = client_->stub().ConsumeStream(&ctx);
  constexpr uint64_t kCalls = 5'000;
  std::thread writer([&] {
    for (uint64_t id = 1; id <= kCalls; ++id) {
      v1::ConsumeStreamRequest empty;  // answered at once: INVALID_ARGUMENT
      empty.set_call_id(id);
      if (!stream->Write(empty)) return;
    }
    stream->WritesDone();
  });
  v1::ConsumeStreamResponse answer;
  std::set<uint64_t> answered;
  while (stream->Read(&answer)) {
    EXPECT_EQ(answer.status().code(), grpc::StatusCode::INVALID_ARGUMENT);
    answered.insert(answer.call_id());
  }
  writer.join();
  EXPECT_EQ(answered.size(), kCalls);
  grpc::Status status = stream->Finish();
  EXPECT_TRUE(status.ok()) << status.error_message();
}

TEST_F(ConsumeStreamTest, CallsOfEveryKindAreAnsweredByIdAndOvertakeAParkedDequeue) {
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(client_->EnqueueOne(kNs, "work", i).ok());
  grpc::ClientContext ctx;
  SetDeadline(ctx);
  auto stream = client_->stub().ConsumeStream(&ctx);
  v1::ConsumeStreamResponse answer;

  ASSERT_TRUE(stream->Write(DequeueCall(1, "work", 3, 0)));
  ASSERT_TRUE(stream->Read(&answer));
  EXPECT_EQ(answer.call_id(), 1u);
  EXPECT_EQ(answer.status().code(), 0);
  ASSERT_EQ(answer.dequeue().items_size(), 3);
  const v1::DequeuedItem acked = answer.dequeue().items(0);
  const v1::DequeuedItem nacked = answer.dequeue().items(1);
  const v1::DequeuedItem extended = answer.dequeue().items(2);

  // A long poll on an empty topic parks; the calls behind it are answered anyway.
  ASSERT_TRUE(stream->Write(DequeueCall(2, "idle", 1, 60'000)));
  AwaitParked(1);
  v1::ConsumeStreamRequest ack;
  ack.set_call_id(3);
  v1::AckItem* a = ack.mutable_ack()->add_items();
  a->set_id(acked.id());
  a->set_lease_token(acked.lease_token());
  v1::ConsumeStreamRequest nack;
  nack.set_call_id(4);
  v1::NackItem* n = nack.mutable_nack()->add_items();
  n->mutable_item()->set_id(nacked.id());
  n->mutable_item()->set_lease_token(nacked.lease_token());
  v1::ConsumeStreamRequest extend;
  extend.set_call_id(5);
  v1::ExtendItem* e = extend.mutable_extend_lease()->add_items();
  e->mutable_item()->set_id(extended.id());
  e->mutable_item()->set_lease_token(extended.lease_token());
  e->set_extension_ms(5'000);
  v1::ConsumeStreamRequest stale = ack;  // the same ack with a token never issued
  stale.set_call_id(6);
  stale.mutable_ack()->mutable_items(0)->set_id(extended.id());
  for (const auto* call : {&ack, &nack, &extend, &stale})
    ASSERT_TRUE(stream->Write(*call));
  std::map<uint64_t, v1::ConsumeStreamResponse> answers;
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(stream->Read(&answer));
    EXPECT_TRUE(answers.emplace(answer.call_id(), answer).second);
  }
  ASSERT_EQ(answers.count(2), 0u) << "the parked dequeue is still parked";
  ASSERT_EQ(answers[3].ack().results_size(), 1);
  EXPECT_EQ(answers[3].ack().results(0).code(), 0);
  ASSERT_EQ(answers[4].nack().results_size(), 1);
  EXPECT_EQ(answers[4].nack().results(0).code(), 0);
  ASSERT_EQ(answers[5].extend_lease().results_size(), 1);
  EXPECT_EQ(answers[5].extend_lease().results(0).status().code(), 0);
  EXPECT_EQ(answers[5].extend_lease().results(0).lease_deadline_ms(),
            ToUnixMillis(clock_.Now()) + 5'000);
  ASSERT_EQ(answers[6].ack().results_size(), 1);
  EXPECT_EQ(answers[6].ack().results(0).code(), grpc::StatusCode::FAILED_PRECONDITION);

  // The parked dequeue answers when an item comes.
  auto id = client_->EnqueueOne(kNs, "idle");
  ASSERT_TRUE(id.ok());
  ASSERT_TRUE(stream->Read(&answer));
  EXPECT_EQ(answer.call_id(), 2u);
  ASSERT_EQ(answer.dequeue().items_size(), 1);
  EXPECT_EQ(answer.dequeue().items(0).id(), *id);

  ASSERT_TRUE(stream->WritesDone());
  EXPECT_FALSE(stream->Read(&answer));
  grpc::Status status = stream->Finish();
  EXPECT_TRUE(status.ok()) << status.error_message();

  // What the answers said was done.
  EXPECT_EQ(client_->GetTask(acked.id()).state(), v1::SUCCEEDED);
  auto again = client_->Dequeue(kNs, "work", 3);
  ASSERT_EQ(again.size(), 1u) << "the nacked item is back; the extended one is leased";
  EXPECT_EQ(again[0].id(), nacked.id());
}

TEST_F(ConsumeStreamTest, ARefusedCallIsAnsweredAndTheStreamGoesOn) {
  grpc::ClientContext ctx;
  SetDeadline(ctx);
  auto stream = client_->stub().ConsumeStream(&ctx);
  v1::ConsumeStreamRequest empty;
  empty.set_call_id(1);
  v1::ConsumeStreamRequest bad_ns = DequeueCall(2, "t", 1, 0);
  bad_ns.mutable_dequeue()->set_namespace_("bad namespace!");
  v1::ConsumeStreamRequest negative_wait = DequeueCall(3, "t", 1, -1);
  ASSERT_TRUE(client_->EnqueueOne(kNs, "t").ok());
  for (const auto& call : {empty, bad_ns, negative_wait, DequeueCall(4, "t", 1, 0)}) {
    ASSERT_TRUE(stream->Write(call));
  }
  ASSERT_TRUE(stream->WritesDone());
  std::map<uint64_t, v1::ConsumeStreamResponse> answers;
  v1::ConsumeStreamResponse answer;
  while (stream->Read(&answer)) answers[answer.call_id()] = answer;
  EXPECT_TRUE(stream->Finish().ok());
  ASSERT_EQ(answers.size(), 4u);
  for (uint64_t refused : {1, 2, 3}) {
    EXPECT_EQ(answers[refused].status().code(), grpc::StatusCode::INVALID_ARGUMENT)
        << "call " << refused;
    EXPECT_FALSE(answers[refused].status().message().empty());
    EXPECT_EQ(answers[refused].response_case(),
              v1::ConsumeStreamResponse::RESPONSE_NOT_SET);
  }
  EXPECT_EQ(answers[4].status().code(), 0);
  EXPECT_EQ(answers[4].dequeue().items_size(), 1);
}

TEST_F(ConsumeStreamTest, CancellingTheStreamEndsItsParkedDequeueAtOnce) {
  {
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    auto stream = client_->stub().ConsumeStream(&ctx);
    ASSERT_TRUE(stream->Write(DequeueCall(1, "later", 1, 60'000)));
    AwaitParked(1);
    ctx.TryCancel();
    EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  // No clock advance: only the cancellation can end the 60 s poll.
  AwaitParked(0);
  // So an item that comes now is not leased to the stream that is gone.
  auto id = client_->EnqueueOne(kNs, "later");
  ASSERT_TRUE(id.ok());
  auto got = client_->Dequeue(kNs, "later", 1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].id(), *id);
}

TEST_F(ConsumeStreamTest, GarbageEndsTheStreamWithInvalidArgumentAfterEarlierAnswers) {
  ASSERT_TRUE(client_->EnqueueOne(kNs, "g").ok());
  grpc::Status status = WriteGarbageOnStream(
      server_->port(), "ConsumeStream", DequeueCall(1, "g", 1, 0).SerializeAsString());
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(status.error_message().find("ConsumeStreamRequest"), std::string::npos)
      << status.error_message();
  EXPECT_TRUE(client_->Dequeue(kNs, "g", 1).empty()) << "the call before the garbage ran";
}

// Sends `calls` empty calls (answered at once, INVALID_ARGUMENT) in one message, the
// first call with the rest in `more`, and half-closes. Returns the answers per message
// read; `ids` gets every answered call id, `announced` whether the server's headers
// carry the batching key.
std::vector<int> SendEmptyCallsInOneMessage(v1::Queue::Stub& stub, bool ask, int calls,
                                            std::multiset<uint64_t>* ids, bool* announced,
                                            grpc::Status* status) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  if (ask) ctx.AddMetadata(v1::kBatchingHeader, "1");
  auto stream = stub.ConsumeStream(&ctx);
  v1::ConsumeStreamRequest message;
  message.set_call_id(1);
  for (int id = 2; id <= calls; ++id) message.add_more()->set_call_id(id);
  EXPECT_TRUE(stream->Write(message));
  // Not checked: a server that refused the message may have ended the stream already.
  stream->WritesDone();
  std::vector<int> per_message;
  v1::ConsumeStreamResponse answer;
  while (stream->Read(&answer)) {
    per_message.push_back(1 + answer.more_size());
    EXPECT_EQ(answer.status().code(), grpc::StatusCode::INVALID_ARGUMENT);
    ids->insert(answer.call_id());
    for (const auto& more : answer.more()) {
      EXPECT_EQ(more.status().code(), grpc::StatusCode::INVALID_ARGUMENT);
      EXPECT_EQ(more.more_size(), 0);
      ids->insert(more.call_id());
    }
  }
  *status = stream->Finish();
  *announced = ctx.GetServerInitialMetadata().count(v1::kBatchingHeader) == 1;
  return per_message;
}

std::multiset<uint64_t> Ids(uint64_t from, uint64_t to) {
  std::multiset<uint64_t> ids;
  for (uint64_t id = from; id <= to; ++id) ids.insert(id);
  return ids;
}

TEST_F(ConsumeStreamTest,
       CallsInMoreAreEachAnsweredAndAnswersReadyTogetherShareAMessage) {
  std::multiset<uint64_t> ids;
  bool announced = false;
  grpc::Status status;
  std::vector<int> per_message = SendEmptyCallsInOneMessage(
      client_->stub(), /*ask=*/true, v1::kMaxCallsPerMessage, &ids, &announced, &status);
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_TRUE(announced);
  EXPECT_EQ(ids, Ids(1, v1::kMaxCallsPerMessage)) << "each call answered once";
  // The 100 answers are made in one loop while the first is being written: the ones
  // behind it go out together.
  EXPECT_LT(per_message.size(), v1::kMaxCallsPerMessage);
}

TEST_F(ConsumeStreamTest, AClientThatDidNotAskGetsOneAnswerPerMessage) {
  std::multiset<uint64_t> ids;
  bool announced = true;
  grpc::Status status;
  std::vector<int> per_message = SendEmptyCallsInOneMessage(
      client_->stub(), /*ask=*/false, v1::kMaxCallsPerMessage, &ids, &announced, &status);
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_FALSE(announced);
  EXPECT_EQ(ids, Ids(1, v1::kMaxCallsPerMessage));
  EXPECT_EQ(per_message, std::vector<int>(v1::kMaxCallsPerMessage, 1));
}

TEST_F(ConsumeStreamTest, AMessagePastTheBatchingRulesEndsTheStreamAndRunsNothing) {
  ASSERT_TRUE(client_->EnqueueOne(kNs, "rules").ok());
  std::multiset<uint64_t> ids;
  bool announced = false;
  grpc::Status status;
  SendEmptyCallsInOneMessage(client_->stub(), true, v1::kMaxCallsPerMessage + 1, &ids,
                             &announced, &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(status.error_message().find("calls in one message"), std::string::npos)
      << status.error_message();
  EXPECT_TRUE(ids.empty());

  // A `more` inside `more`: refused the same way, and the dequeue in front of it never
  // ran.
  grpc::ClientContext ctx;
  SetDeadline(ctx);
  auto stream = client_->stub().ConsumeStream(&ctx);
  v1::ConsumeStreamRequest message = DequeueCall(1, "rules", 1, 0);
  *message.add_more() = DequeueCall(2, "rules", 1, 0);
  *message.mutable_more(0)->add_more() = DequeueCall(3, "rules", 1, 0);
  EXPECT_TRUE(stream->Write(message));
  stream->WritesDone();
  v1::ConsumeStreamResponse answer;
  EXPECT_FALSE(stream->Read(&answer));
  status = stream->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(status.error_message().find("of its own"), std::string::npos)
      << status.error_message();
  EXPECT_EQ(client_->Dequeue(kNs, "rules", 10).size(), 1u) << "nothing was leased";
}

}  // namespace
}  // namespace shardq::testing
