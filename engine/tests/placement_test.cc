// Placement (engine/placement.h): which shard an enqueue goes to. Pure functions,
// no engine.

#include "engine/placement.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <map>
#include <string>

namespace shardq::engine {
namespace {

// 1'700'000'000'000 ms as the SDK writes it: 12 hex digits.
constexpr char kTimeHex[] = "018bcfe56800";
constexpr int64_t kTime = 1'700'000'000'000;

TEST(PlacementTest, ATimeOrderedKeyNamesItsTime) {
  EXPECT_EQ(KeyTimeMs(std::string("~") + kTimeHex + "9f3a0c"), kTime);
  EXPECT_EQ(KeyTimeMs(std::string("~") + "018BCFE56800"), kTime) << "upper case";
  EXPECT_EQ(KeyTimeMs(std::string(kTimeHex) + "9f3a0c"), std::nullopt) << "no ~";
  EXPECT_EQ(KeyTimeMs("~018bcfe5680"), std::nullopt) << "11 digits";
  EXPECT_EQ(KeyTimeMs("~-18bcfe56800"), std::nullopt) << "a sign is not a digit";
  EXPECT_EQ(KeyTimeMs("~018bcfe5680g"), std::nullopt);
  EXPECT_EQ(KeyTimeMs("order-17"), std::nullopt);
  EXPECT_EQ(KeyTimeMs(""), std::nullopt);
}

TEST(PlacementTest, KeysMadeInOneSlotShareAShard) {
  const int64_t slot_start = kTime - kTime % kPlacementSlot.count();
  const size_t shard = SlotPosition("shop", slot_start, 64);
  for (int64_t ms = slot_start; ms < slot_start + kPlacementSlot.count(); ++ms) {
    EXPECT_EQ(SlotPosition("shop", ms, 64), shard) << ms;
  }
  char hex[13];
  std::snprintf(hex, sizeof hex, "%012llx",
                static_cast<unsigned long long>(slot_start + 5));
  EXPECT_EQ(KeyPosition("shop", std::string("~") + hex + "aaaa", 64), shard);
  EXPECT_EQ(KeyPosition("shop", std::string("~") + hex + "bbbb", 64), shard)
      << "the random part does not move a key";
}

TEST(PlacementTest, SlotsSpreadOverEveryShardEvenly) {
  constexpr int kSlots = 4000;
  std::map<size_t, int> per_shard;
  for (int s = 0; s < kSlots; ++s) {
    ++per_shard[SlotPosition("shop", kTime + s * kPlacementSlot.count(), 4)];
  }
  ASSERT_EQ(per_shard.size(), 4u);
  for (const auto& [shard, slots] : per_shard) {
    EXPECT_GT(slots, kSlots / 4 * 9 / 10) << "shard " << shard;
    EXPECT_LT(slots, kSlots / 4 * 11 / 10) << "shard " << shard;
  }
}

TEST(PlacementTest, NamespacesInOneSlotUseDifferentShards) {
  std::map<size_t, int> per_shard;
  for (int n = 0; n < 64; ++n)
    ++per_shard[SlotPosition("ns" + std::to_string(n), kTime, 4)];
  EXPECT_EQ(per_shard.size(), 4u);
}

// Two namespaces meet on a shard by chance (a quarter of the slots of 4 shards), not
// in every slot: a plain FNV-1a `% 4` walked "a" and "e" through the shards together.
TEST(PlacementTest, NamespacesDoNotMoveInLockstep) {
  int together = 0;
  for (int s = 0; s < 1000; ++s) {
    const int64_t ms = kTime + s * kPlacementSlot.count();
    together += SlotPosition("a", ms, 4) == SlotPosition("e", ms, 4) ? 1 : 0;
  }
  EXPECT_GT(together, 150);
  EXPECT_LT(together, 350);
}

// Placement is stored state: a dedup key's first item sits on the shard computed when
// it was enqueued, and a repeat, perhaps after an upgrade, must compute the same one.
// These values are pinned; a change to them breaks deduplication of stored keys.
TEST(PlacementTest, PlacementNeverChangesBetweenBuilds) {
  EXPECT_EQ(KeyPosition("shop", "order-17", 64), 40u);
  EXPECT_EQ(SlotPosition("shop", kTime, 64), 7u);
  EXPECT_EQ(KeyPosition("shop", std::string("~") + kTimeHex + "00", 64), 7u);
}

}  // namespace
}  // namespace shardq::engine
