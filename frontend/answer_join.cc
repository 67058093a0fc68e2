#include "frontend/answer_join.h"

#include <google/protobuf/io/coded_stream.h>
#include <grpcpp/support/slice.h>

#include <cstdint>
#include <vector>

#include "shardq/v1/stream_batching.h"

namespace shardq::frontend {
namespace {

using google::protobuf::io::CodedOutputStream;

// The key of an entry of `more`: field 15, length-delimited (wire type 2).
constexpr uint32_t kMoreKey = (v1::kMoreFieldNumber << 3) | 2;

// The key and length that introduce one entry of `more` holding `length` bytes.
grpc::Slice EntryHeader(size_t length) {
  uint8_t head[20];  // two varints of at most 10 bytes each
  uint8_t* end = CodedOutputStream::WriteVarint32ToArray(kMoreKey, head);
  end = CodedOutputStream::WriteVarint64ToArray(length, end);
  return grpc::Slice(head, static_cast<size_t>(end - head));
}

// The bytes one entry of `more` holding `length` bytes adds to a message.
size_t EntryBytes(size_t length) {
  return CodedOutputStream::VarintSize32(kMoreKey) +
         CodedOutputStream::VarintSize64(length) + length;
}

void Append(const grpc::ByteBuffer& bytes, std::vector<grpc::Slice>* slices) {
  std::vector<grpc::Slice> part;  // Dump replaces what its vector holds
  // Cannot fail: these are answers this server serialized, never compressed ones.
  (void)bytes.Dump(&part);
  for (grpc::Slice& slice : part) slices->push_back(std::move(slice));
}

}  // namespace

Joined JoinAnswers(std::deque<grpc::ByteBuffer>& queue, size_t max_count,
                   size_t max_bytes, grpc::ByteBuffer* out) {
  Joined joined{1, queue.front().Length()};
  size_t total = joined.answer_bytes;
  while (joined.count < queue.size() && joined.count < max_count) {
    size_t length = queue[joined.count].Length();
    size_t entry = EntryBytes(length);
    if (total + entry > max_bytes) break;
    total += entry;
    joined.answer_bytes += length;
    ++joined.count;
  }
  if (joined.count == 1) {
    out->Swap(&queue.front());
    queue.pop_front();
    return joined;
  }
  std::vector<grpc::Slice> slices;
  Append(queue.front(), &slices);
  for (size_t i = 1; i < joined.count; ++i) {
    slices.push_back(EntryHeader(queue[i].Length()));
    Append(queue[i], &slices);
  }
  queue.erase(queue.begin(), queue.begin() + static_cast<std::ptrdiff_t>(joined.count));
  grpc::ByteBuffer message(slices.data(), slices.size());
  out->Swap(&message);
  return joined;
}

}  // namespace shardq::frontend
