#include "common/ids.h"

#include <charconv>
#include <random>

namespace shardq {

LeaseToken NewLeaseToken() {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  uint64_t v = 0;
  while (v == 0) v = rng();
  return LeaseToken(v);
}

std::string ItemId::ToString() const {
  return std::to_string(shard.value()) + "-" + std::to_string(row.value());
}

std::optional<ItemId> ItemId::Parse(std::string_view text) {
  auto dash = text.find('-');
  if (dash == std::string_view::npos || dash == 0 || dash + 1 >= text.size()) {
    return std::nullopt;
  }
  uint32_t shard = 0;
  uint64_t row = 0;
  const char* b = text.data();
  auto r1 = std::from_chars(b, b + dash, shard);
  if (r1.ec != std::errc() || r1.ptr != b + dash) return std::nullopt;
  auto r2 = std::from_chars(b + dash + 1, b + text.size(), row);
  if (r2.ec != std::errc() || r2.ptr != b + text.size() || row == 0) return std::nullopt;
  return ItemId{ShardId(shard), RowId(row)};
}

}  // namespace shardq
