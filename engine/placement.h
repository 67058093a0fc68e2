#pragma once
// Placement: which shard an enqueued item goes to.
//
// Enqueues made at about the same time go to the same shard. One shard then commits
// them in few, larger transactions while the others rest, instead of every shard
// committing a sliver of them at once: much of a commit's CPU, in MariaDB and in
// shardq, is paid per commit rather than per row, and on a busy machine CPU is the
// limit (BENCHMARKS.md, fifteenth round: one item per call +40 %, 100 per call no
// slower). Over time the slots spread the items evenly over the shards; the prefetch
// index merges all shards, so placement never changes the order of delivery.
//
//   - no dedup key: the shard of the slot the server's clock is in;
//   - a time-ordered key ("~" then 12 hex digits of unix ms, as the SDK generates
//     for its retries): the shard of the slot that time is in;
//   - any other key: a hash of (namespace, key).
//
// A key's shard depends on the key and the shard list only, so a repeat of the key
// meets the first item on the same shard, also after a restart.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

#include "common/clock.h"

namespace shardq::engine {

// How long the enqueues of one namespace keep going to one shard. Part of the
// placement of time-ordered keys: changing it moves them (as changing the shard list
// does), so it is a constant, not a setting.
inline constexpr Duration kPlacementSlot{32};

// The unix ms a time-ordered key starts with; nullopt for any other key.
std::optional<int64_t> KeyTimeMs(std::string_view key);

// The shard position (0..shards-1) for enqueues of `ns` made at `unix_ms`.
size_t SlotPosition(std::string_view ns, int64_t unix_ms, size_t shards);

// The shard position (0..shards-1) that holds `key` in `ns`.
size_t KeyPosition(std::string_view ns, std::string_view key, size_t shards);

}  // namespace shardq::engine
