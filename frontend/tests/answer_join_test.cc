// JoinAnswers: answers appended as `more` entries parse back as the same answers, and
// the bounds on count and bytes hold.

#include "frontend/answer_join.h"

#include <grpcpp/impl/codegen/proto_utils.h>
#include <grpcpp/support/proto_buffer_reader.h>
#include <gtest/gtest.h>

#include <deque>
#include <string>

#include "shardq/v1/queue.pb.h"
#include "shardq/v1/stream_batching.h"

namespace shardq::frontend {
namespace {

v1::ConsumeStreamResponse Answer(uint64_t call_id, size_t payload_bytes) {
  v1::ConsumeStreamResponse answer;
  answer.set_call_id(call_id);
  v1::DequeuedItem* item = answer.mutable_dequeue()->add_items();
  item->set_payload(std::string(payload_bytes, 'x'));
  return answer;
}

grpc::ByteBuffer Bytes(const v1::ConsumeStreamResponse& answer) {
  grpc::ByteBuffer bytes;
  bool own = false;
  EXPECT_TRUE(grpc::SerializationTraits<v1::ConsumeStreamResponse>::Serialize(
                  answer, &bytes, &own)
                  .ok());
  return bytes;
}

v1::ConsumeStreamResponse Parse(grpc::ByteBuffer& bytes) {
  v1::ConsumeStreamResponse message;
  grpc::ProtoBufferReader reader(&bytes);
  EXPECT_TRUE(message.ParseFromZeroCopyStream(&reader));
  return message;
}

// Joins all of `queue` within the default bounds, checks it took them all, and parses
// the message.
v1::ConsumeStreamResponse JoinAll(std::deque<grpc::ByteBuffer>& queue, size_t* bytes) {
  const size_t count = queue.size();
  grpc::ByteBuffer message;
  Joined joined = JoinAnswers(queue, v1::kMaxCallsPerMessage, v1::kBatchBytes, &message);
  EXPECT_EQ(joined.count, count);
  EXPECT_TRUE(queue.empty());
  *bytes = joined.answer_bytes;
  return Parse(message);
}

TEST(JoinAnswersTest, JoinedAnswersParseBackAsTheFirstWithTheOthersInMore) {
  std::deque<grpc::ByteBuffer> queue;
  // 20,000 bytes of payload make an entry whose length takes three varint bytes, and
  // an answer that gRPC keeps in more than one slice.
  for (uint64_t id = 1; id <= 3; ++id)
    queue.push_back(Bytes(Answer(id, id == 2 ? 20'000 : 5)));
  size_t bytes = 0;
  v1::ConsumeStreamResponse parsed = JoinAll(queue, &bytes);
  EXPECT_EQ(parsed.call_id(), 1u);
  ASSERT_EQ(parsed.dequeue().items_size(), 1);
  EXPECT_EQ(parsed.dequeue().items(0).payload(), "xxxxx");
  ASSERT_EQ(parsed.more_size(), 2);
  EXPECT_EQ(parsed.more(0).call_id(), 2u);
  EXPECT_EQ(parsed.more(0).dequeue().items(0).payload(), std::string(20'000, 'x'));
  EXPECT_EQ(parsed.more(1).call_id(), 3u);
  EXPECT_EQ(parsed.more(1).more_size(), 0);
  EXPECT_EQ(bytes, Bytes(Answer(1, 5)).Length() + Bytes(Answer(2, 20'000)).Length() +
                       Bytes(Answer(3, 5)).Length());
}

TEST(JoinAnswersTest, OneAnswerGoesAsItIs) {
  std::deque<grpc::ByteBuffer> queue;
  queue.push_back(Bytes(Answer(7, 10)));
  size_t bytes = 0;
  v1::ConsumeStreamResponse parsed = JoinAll(queue, &bytes);
  EXPECT_EQ(bytes, Bytes(Answer(7, 10)).Length());
  EXPECT_EQ(parsed.call_id(), 7u);
  EXPECT_EQ(parsed.more_size(), 0);
}

TEST(JoinAnswersTest, AMessageStopsAtTheCountAndTheByteBounds) {
  std::deque<grpc::ByteBuffer> queue;
  for (uint64_t id = 0; id < 5; ++id) queue.push_back(Bytes(Answer(id, 100)));
  grpc::ByteBuffer message;
  EXPECT_EQ(JoinAnswers(queue, 2, v1::kBatchBytes, &message).count, 2u);
  EXPECT_EQ(queue.size(), 3u);
  EXPECT_EQ(Parse(message).more_size(), 1);

  // Room for the first answer and one more entry, not two.
  const size_t one = queue.front().Length();
  EXPECT_EQ(JoinAnswers(queue, 100, 2 * one + 3 + one / 2, &message).count, 2u);
  EXPECT_EQ(queue.size(), 1u);

  // An answer bigger than the byte bound still goes, alone.
  queue.push_back(Bytes(Answer(9, 100)));
  EXPECT_EQ(JoinAnswers(queue, 100, 10, &message).count, 1u);
  EXPECT_EQ(Parse(message).call_id(), 4u);
  EXPECT_EQ(queue.size(), 1u);
}

}  // namespace
}  // namespace shardq::frontend
