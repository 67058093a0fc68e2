#pragma once
// THE ordering rule of shardq, in one place: lower priority number first, then the
// earlier deliver_after, then the lower id -- the row key, then (only across shards)
// the lower shard id. The SQL ORDER BY, the prefetch windows,
// the k-way merge across shards and the tests all use what is defined here.

#include <cstdint>
#include <string_view>
#include <tuple>

#include "common/clock.h"
#include "common/ids.h"

namespace shardq {

struct OrderKey {
  int32_t priority = 0;
  Time deliver_after{};
  ItemId id{};

  friend bool operator<(const OrderKey& a, const OrderKey& b) {
    return std::tie(a.priority, a.deliver_after, a.id.row, a.id.shard) <
           std::tie(b.priority, b.deliver_after, b.id.row, b.id.shard);
  }
  friend bool operator==(const OrderKey& a, const OrderKey& b) = default;
};

// The same rule for rows of one shard (the shard is constant there). The ready index
// `ready_order` in schema/0001_items.sql lists these columns in this order, so the
// query reads the index in order and stops after LIMIT rows.
inline constexpr std::string_view kSqlOrderBy = "priority, deliver_after, id";

}  // namespace shardq
