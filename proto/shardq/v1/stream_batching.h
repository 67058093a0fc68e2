#pragma once
// Batched stream messages (queue.proto, "Batched messages"): the header both ends use
// to agree on them, and their bounds.

#include <cstddef>

namespace shardq::v1 {

// Request and response header (initial metadata) key; its value is "1".
inline constexpr char kBatchingHeader[] = "shardq-batching";
// Calls (or answers) in one message: the message's own and those in `more`.
inline constexpr size_t kMaxCallsPerMessage = 100;
// A sender adds calls or answers to a message while it stays under this many bytes
// (a single call or answer may be bigger and goes alone): far below kMaxMessageBytes,
// and small enough that one message never holds a reader up for long.
inline constexpr size_t kBatchBytes = 1024 * 1024;
// The field number of `more` in the four stream messages.
inline constexpr int kMoreFieldNumber = 15;

}  // namespace shardq::v1
