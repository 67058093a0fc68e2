#pragma once
// Checks shared by both stores so that they refuse the same inputs: the column limits
// of schema/0001_items.sql and 0002_task_lifecycle.sql. Product limits
// (kMaxPayloadBytes, ...) are the frontend's job; the store only refuses what the table
// cannot hold, with kInvalidArgument instead of a storage error.
//
// Free-form texts that only describe an outcome (Nack's error, Ack's result, the
// worker id of a claim) are never refused: both stores truncate them to their limits
// (TruncateTo) -- an ack must not fail because its result is too long.

#include <cstdint>
#include <limits>
#include <string>
#include <string_view>

#include "common/item.h"
#include "common/status.h"

namespace shardq::store {

inline constexpr size_t kMaxBlobBytes = 65535;  // BLOB column

// The longest prefix of `s` of at most `max` bytes that does not end inside a UTF-8
// character. The columns are binary, but these texts come from proto3 `string` fields
// and go back out in them, and a strict client refuses a message whose strings are
// not valid UTF-8 (so does the C++ parser).
inline std::string TruncateTo(std::string_view s, size_t max) {
  if (s.size() <= max) return std::string(s);
  size_t n = max;
  // s[n] is the first byte cut off: a continuation byte means a character straddles
  // the cut, so it goes whole.
  while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80) --n;
  return std::string(s.substr(0, n));
}

inline Status ValidateMetadata(const std::string& metadata) {
  if (metadata.size() > kMaxBlobBytes) {
    return Status::InvalidArgument("metadata larger than " +
                                   std::to_string(kMaxBlobBytes));
  }
  return Status::Ok();
}

inline Status ValidateNewItem(const NewItem& item) {
  if (item.ns.size() > kMaxNamespaceLen)
    return Status::InvalidArgument("namespace too long");
  if (item.topic.size() > kMaxTopicLen) return Status::InvalidArgument("topic too long");
  if (item.payload.size() > kMaxBlobBytes) {
    return Status::InvalidArgument("payload larger than " +
                                   std::to_string(kMaxBlobBytes));
  }
  if (item.lease.count() < 0 ||
      item.lease.count() > std::numeric_limits<uint32_t>::max()) {
    return Status::InvalidArgument("lease out of range");
  }
  if (item.task_type.size() > kMaxTaskTypeLen)
    return Status::InvalidArgument("task_type too long");
  if (item.dedup_key.size() > kMaxDedupKeyLen)
    return Status::InvalidArgument("dedup_key too long");
  if (item.max_attempts < 1 || item.max_attempts > kMaxAttemptsLimit) {
    return Status::InvalidArgument("max_attempts must be in 1.." +
                                   std::to_string(kMaxAttemptsLimit));
  }
  return ValidateMetadata(item.metadata);
}

}  // namespace shardq::store
