#include "engine/placement.h"

#include <charconv>

namespace shardq::engine {

namespace {

// FNV-1a: a hash that is the same in every build, so a key keeps its shard across
// restarts and upgrades (as long as the shard list does not change).
uint64_t StableHash(std::string_view a, std::string_view b) {
  uint64_t h = 1469598103934665603ull;
  auto mix = [&](std::string_view s) {
    for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
    h = (h ^ 0xff) * 1099511628211ull;  // separator: ("ab","c") != ("a","bc")
  };
  mix(a);
  mix(b);
  return h;
}

constexpr size_t kTimeDigits = 12;

}  // namespace

std::optional<int64_t> KeyTimeMs(std::string_view key) {
  if (key.size() < 1 + kTimeDigits || key[0] != '~') return std::nullopt;
  const char* first = key.data() + 1;
  const char* last = first + kTimeDigits;
  for (const char* p = first; p != last; ++p) {
    const bool hex =
        (*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f') || (*p >= 'A' && *p <= 'F');
    if (!hex) return std::nullopt;  // from_chars alone would accept a sign or stop early
  }
  int64_t ms = 0;
  std::from_chars(first, last, ms, 16);
  return ms;
}

size_t SlotPosition(std::string_view ns, int64_t unix_ms, size_t shards) {
  // FNV-1a's low bits see only the low bits of each byte, so `% 4` of it would walk
  // every namespace through the shards in the same lockstep; splitmix64's finaliser
  // spreads the slot number over all 64 bits first. No string is built per item.
  uint64_t h =
      StableHash(ns, "~") ^ static_cast<uint64_t>(unix_ms / kPlacementSlot.count());
  h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9ull;
  h = (h ^ (h >> 27)) * 0x94d049bb133111ebull;
  h ^= h >> 31;
  return h % shards;
}

size_t KeyPosition(std::string_view ns, std::string_view key, size_t shards) {
  if (std::optional<int64_t> ms = KeyTimeMs(key)) return SlotPosition(ns, *ms, shards);
  return StableHash(ns, key) % shards;
}

}  // namespace shardq::engine
