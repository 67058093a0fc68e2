#pragma once
// Checks shared by both stores so that they refuse the same inputs: the column limits
// of schema/0001_items.sql. Product limits (kMaxPayloadBytes, ...) are the frontend's
// job; the store only refuses what the table cannot hold, with kInvalidArgument
// instead of a storage error.

#include <cstdint>
#include <limits>
#include <string>

#include "common/item.h"
#include "common/status.h"

namespace shardq::store {

inline constexpr size_t kMaxBlobBytes = 65535;  // BLOB column

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
  return ValidateMetadata(item.metadata);
}

}  // namespace shardq::store
