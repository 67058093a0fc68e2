#include "frontend/answer_join.h"

#include <grpcpp/support/slice.h>

#include <cstdint>
#include <vector>

#include "shardq/v1/stream_batching.h"

namespace shardq::frontend {
namespace {

// The key and length that introduce one entry of `more` (field 15, length-delimited).
grpc::Slice EntryHeader(size_t length) {
  uint8_t head[11];
  size_t n = 0;
  head[n++] = static_cast<uint8_t>((v1::kMoreFieldNumber << 3) | 2);
  do {
    uint8_t low = length & 0x7F;
    length >>= 7;
    head[n++] = low | (length != 0 ? 0x80 : 0);
  } while (length != 0);
  return grpc::Slice(head, n);
}

size_t VarintBytes(size_t length) {
  size_t n = 1;
  while (length >= 0x80) {
    length >>= 7;
    ++n;
  }
  return n;
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
    size_t entry = 1 + VarintBytes(length) + length;
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
