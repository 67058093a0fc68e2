#pragma once
// JoinAnswers: several serialized stream answers as one message (queue.proto, "Batched
// messages"). The first answer's bytes, then each next one appended as an entry of
// field 15 (`more`): tag, length, the answer's own bytes. Protobuf reads a repeated
// field's entries wherever they stand in a message, so nothing is parsed or
// serialized again; the slices are shared, not copied.

#include <grpcpp/support/byte_buffer.h>

#include <cstddef>
#include <deque>

namespace shardq::frontend {

struct Joined {
  size_t count = 0;         // answers taken from the queue
  size_t answer_bytes = 0;  // their own sizes, summed (the message adds a few per entry)
};

// Takes answers from the front of `queue` (at least one; `queue` must not be empty)
// while there are at most `max_count` and, past the first, the message stays within
// `max_bytes`. Puts the message in `out`.
Joined JoinAnswers(std::deque<grpc::ByteBuffer>& queue, size_t max_count,
                   size_t max_bytes, grpc::ByteBuffer* out);

}  // namespace shardq::frontend
