#pragma once
// Strong types for the identifiers that travel through the system, so that a shard
// id can never be passed where a row key or a lease token is expected.

#include <compare>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

namespace shardq {

template <typename T, typename Tag>
class StrongId {
 public:
  using value_type = T;
  constexpr StrongId() = default;
  constexpr explicit StrongId(T v) : v_(v) {}
  constexpr T value() const { return v_; }
  constexpr auto operator<=>(const StrongId&) const = default;

 private:
  T v_{};
};

// A shard's stable number, from the config. Never reused for another database.
using ShardId = StrongId<uint32_t, struct ShardIdTag>;
// The 64-bit primary key of an item's row inside its shard database.
using RowId = StrongId<uint64_t, struct RowIdTag>;
// Changes every time an item is leased; ack, nack and extend must present it.
using LeaseToken = StrongId<uint64_t, struct LeaseTokenTag>;

// A fresh random lease token; never 0, the token of a row that was never leased.
LeaseToken NewLeaseToken();

// The public id of an item: the shard that holds it and its row there. Its text form
// is "<shard>-<row>" in decimal (e.g. "3-1042"): readable in logs and the CLI, and
// routable without any lookup.
struct ItemId {
  ShardId shard;
  RowId row;
  auto operator<=>(const ItemId&) const = default;

  std::string ToString() const;
  // Parses the text form; nullopt on anything malformed (no exceptions).
  static std::optional<ItemId> Parse(std::string_view text);
};

}  // namespace shardq

template <typename T, typename Tag>
struct std::hash<shardq::StrongId<T, Tag>> {
  size_t operator()(const shardq::StrongId<T, Tag>& id) const noexcept {
    return std::hash<T>{}(id.value());
  }
};

template <>
struct std::hash<shardq::ItemId> {
  size_t operator()(const shardq::ItemId& id) const noexcept {
    return std::hash<uint64_t>{}(id.row.value() * 1000003u ^ id.shard.value());
  }
};
