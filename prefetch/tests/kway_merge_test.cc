// KWayMerge against a model (std::sort of the concatenation), in the style of
// RocksDB's merger_test: many random trials with fixed seeds, plus the ordering rule
// of common/ordering.h that the merge is used with.

#include "prefetch/kway_merge.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "common/ids.h"
#include "common/item.h"
#include "common/ordering.h"
#include "prefetch/shard_window.h"

namespace shardq::prefetch {
namespace {

// A sorted source over a vector, with the interface KWayMerge expects.
class VectorSource {
 public:
  explicit VectorSource(std::vector<ReadyKey> keys) : keys_(std::move(keys)) {}
  bool Empty() const { return pos_ == keys_.size(); }
  const ReadyKey& Front() const { return keys_.at(pos_); }
  void Pop() {
    ASSERT_FALSE(Empty()) << "Pop() on an empty source";
    ++pos_;
  }
  size_t remaining() const { return keys_.size() - pos_; }

 private:
  std::vector<ReadyKey> keys_;
  size_t pos_ = 0;
};

ReadyKey Key(int32_t priority, int64_t deliver_after_ms, uint64_t row) {
  return ReadyKey{priority, FromUnixMillis(deliver_after_ms), RowId(row)};
}

// Random keys with many ties on priority and deliver_after (tiny domains), and rows
// from a small domain too so that equal keys appear in different sources.
ReadyKey RandomKey(std::mt19937_64& rng) {
  std::uniform_int_distribution<int32_t> prio(-2, 2);
  std::uniform_int_distribution<int64_t> due(0, 3);
  std::uniform_int_distribution<uint64_t> row(1, 40);
  return Key(prio(rng), 1'700'000'000'000 + due(rng), row(rng));
}

struct Trial {
  std::vector<std::vector<ReadyKey>> sources;  // each sorted
  std::vector<ReadyKey> all;                   // sorted concatenation (the model)
};

Trial MakeTrial(std::mt19937_64& rng, size_t k) {
  Trial t;
  std::uniform_int_distribution<int> len(0, 30);
  std::bernoulli_distribution empty(0.2);
  for (size_t s = 0; s < k; ++s) {
    std::vector<ReadyKey> keys;
    int n = empty(rng) ? 0 : len(rng);
    for (int i = 0; i < n; ++i) keys.push_back(RandomKey(rng));
    std::sort(keys.begin(), keys.end(), ReadyKeyLess{});
    t.all.insert(t.all.end(), keys.begin(), keys.end());
    t.sources.push_back(std::move(keys));
  }
  std::sort(t.all.begin(), t.all.end(), ReadyKeyLess{});
  return t;
}

using Merge = KWayMerge<VectorSource, ReadyKeyLess>;

// Merges up to `limit` keys, checking TopSource()/Top() consistency on the way.
std::vector<ReadyKey> Drain(Merge& merge, std::vector<VectorSource>& srcs, size_t limit) {
  std::vector<ReadyKey> out;
  while (out.size() < limit && !merge.Done()) {
    size_t s = merge.TopSource();
    EXPECT_LT(s, srcs.size());
    EXPECT_FALSE(srcs[s].Empty());
    EXPECT_EQ(merge.Top(), srcs[s].Front()) << "Top() is not the front of TopSource()";
    // Top() is not beaten by the front of any other source.
    for (const VectorSource& other : srcs) {
      if (!other.Empty()) {
        EXPECT_FALSE(ReadyKeyLess{}(other.Front(), merge.Top()));
      }
    }
    out.push_back(merge.Top());
    size_t before = srcs[s].remaining();
    merge.Pop();
    EXPECT_EQ(srcs[s].remaining(), before - 1) << "Pop() must pop TopSource()";
  }
  return out;
}

std::vector<VectorSource*> Pointers(std::vector<VectorSource>& srcs) {
  std::vector<VectorSource*> p;
  for (VectorSource& s : srcs) p.push_back(&s);
  return p;
}

std::string Describe(const ReadyKey& k) {
  return "{" + std::to_string(k.priority) + "," +
         std::to_string(ToUnixMillis(k.deliver_after)) + "," +
         std::to_string(k.row.value()) + "}";
}

TEST(KWayMergeTest, NoSourcesIsDone) {
  std::vector<VectorSource*> none;
  Merge merge(none, ReadyKeyLess{});
  EXPECT_TRUE(merge.Done());
}

TEST(KWayMergeTest, OnlyEmptySourcesIsDone) {
  std::vector<VectorSource> srcs(5, VectorSource({}));
  Merge merge(Pointers(srcs), ReadyKeyLess{});
  EXPECT_TRUE(merge.Done());
}

TEST(KWayMergeTest, SingleSourceComesOutUnchanged) {
  std::vector<ReadyKey> keys = {Key(0, 1, 5), Key(0, 1, 7), Key(0, 2, 1), Key(3, 0, 2)};
  std::vector<VectorSource> srcs{VectorSource(keys)};
  Merge merge(Pointers(srcs), ReadyKeyLess{});
  EXPECT_EQ(Drain(merge, srcs, SIZE_MAX), keys);
  EXPECT_TRUE(merge.Done());
}

TEST(KWayMergeTest, EmptySourcesAmongFullOnesAreSkipped) {
  std::vector<VectorSource> srcs{VectorSource({}), VectorSource({Key(1, 0, 2)}),
                                 VectorSource({}), VectorSource({Key(0, 0, 9)}),
                                 VectorSource({})};
  Merge merge(Pointers(srcs), ReadyKeyLess{});
  ASSERT_FALSE(merge.Done());
  EXPECT_EQ(merge.TopSource(), 3u);
  std::vector<ReadyKey> want = {Key(0, 0, 9), Key(1, 0, 2)};
  EXPECT_EQ(Drain(merge, srcs, SIZE_MAX), want);
}

TEST(KWayMergeTest, HandPickedTies) {
  // Same priority everywhere; deliver_after then row decide.
  std::vector<VectorSource> srcs{
      VectorSource({Key(1, 10, 3), Key(1, 20, 1)}),
      VectorSource({Key(1, 10, 1), Key(1, 10, 4), Key(1, 20, 0)}),
      VectorSource({Key(0, 99, 99), Key(1, 10, 2)}),
  };
  Merge merge(Pointers(srcs), ReadyKeyLess{});
  std::vector<ReadyKey> want = {Key(0, 99, 99), Key(1, 10, 1), Key(1, 10, 2),
                                Key(1, 10, 3),  Key(1, 10, 4), Key(1, 20, 0),
                                Key(1, 20, 1)};
  EXPECT_EQ(Drain(merge, srcs, SIZE_MAX), want);
}

TEST(KWayMergeTest, RandomFullMergeMatchesSortedConcatenation) {
  for (uint64_t seed = 1; seed <= 200; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    std::mt19937_64 rng(seed);
    size_t k = std::uniform_int_distribution<size_t>(0, 16)(rng);
    Trial t = MakeTrial(rng, k);
    std::vector<VectorSource> srcs;
    for (auto& keys : t.sources) srcs.emplace_back(keys);
    Merge merge(Pointers(srcs), ReadyKeyLess{});
    std::vector<ReadyKey> got = Drain(merge, srcs, SIZE_MAX);
    ASSERT_EQ(got.size(), t.all.size()) << "k=" << k;
    for (size_t i = 0; i < got.size(); ++i) {
      ASSERT_EQ(got[i], t.all[i]) << "k=" << k << " position " << i << ": got "
                                  << Describe(got[i]) << " want " << Describe(t.all[i]);
    }
    EXPECT_TRUE(merge.Done());
    for (const VectorSource& s : srcs) EXPECT_TRUE(s.Empty());
  }
}

TEST(KWayMergeTest, RandomPartialTakesYieldTheSortedPrefix) {
  // Sources are fixed once merging starts, so: take a random number of items at a
  // time, and after each take the output so far must be the sorted prefix, and the
  // items still in the sources must be exactly the sorted suffix.
  for (uint64_t seed = 1001; seed <= 1200; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    std::mt19937_64 rng(seed);
    size_t k = std::uniform_int_distribution<size_t>(0, 16)(rng);
    Trial t = MakeTrial(rng, k);
    std::vector<VectorSource> srcs;
    for (auto& keys : t.sources) srcs.emplace_back(keys);
    Merge merge(Pointers(srcs), ReadyKeyLess{});
    std::vector<ReadyKey> got;
    std::uniform_int_distribution<size_t> step(0, 12);
    while (!merge.Done()) {
      std::vector<ReadyKey> chunk = Drain(merge, srcs, step(rng));
      got.insert(got.end(), chunk.begin(), chunk.end());
      ASSERT_LE(got.size(), t.all.size());
      ASSERT_TRUE(std::equal(got.begin(), got.end(), t.all.begin()))
          << "prefix of " << got.size() << " differs (k=" << k << ")";
      size_t left = 0;
      for (const VectorSource& s : srcs) left += s.remaining();
      ASSERT_EQ(left, t.all.size() - got.size());
      if (!merge.Done()) {
        EXPECT_EQ(merge.Top(), t.all[got.size()]);
      }
    }
    EXPECT_EQ(got, t.all);
  }
}

TEST(KWayMergeTest, ManyIdenticalKeysAcrossSources) {
  // The extreme tie: every source holds the same key several times.
  std::vector<VectorSource> srcs;
  for (int s = 0; s < 8; ++s) srcs.emplace_back(std::vector<ReadyKey>(5, Key(0, 0, 1)));
  Merge merge(Pointers(srcs), ReadyKeyLess{});
  std::vector<ReadyKey> got = Drain(merge, srcs, SIZE_MAX);
  EXPECT_EQ(got, std::vector<ReadyKey>(40, Key(0, 0, 1)));
}

TEST(KWayMergeTest, WorksWithShardWindowsAsSources) {
  // The production source: complete windows filled by ApplyRefill.
  std::mt19937_64 rng(77);
  for (int trial = 0; trial < 50; ++trial) {
    SCOPED_TRACE("trial " + std::to_string(trial));
    size_t k = std::uniform_int_distribution<size_t>(1, 8)(rng);
    std::vector<ShardWindow> windows(k, ShardWindow(64));
    std::vector<ReadyKey> all;
    for (size_t s = 0; s < k; ++s) {
      std::vector<ReadyKey> keys;
      int n = std::uniform_int_distribution<int>(0, 20)(rng);
      for (int i = 0; i < n; ++i) {
        ReadyKey key = RandomKey(rng);
        key.row = RowId(s * 1000 + i);  // rows are unique within a shard
        keys.push_back(key);
      }
      windows[s].ApplyRefill(keys);
      all.insert(all.end(), keys.begin(), keys.end());
    }
    std::sort(all.begin(), all.end(), ReadyKeyLess{});
    std::vector<ShardWindow*> ptrs;
    for (ShardWindow& w : windows) ptrs.push_back(&w);
    KWayMerge merge(std::move(ptrs), ReadyKeyLess{});
    std::vector<ReadyKey> got;
    while (!merge.Done()) {
      got.push_back(merge.Top());
      merge.Pop();
    }
    EXPECT_EQ(got, all);
  }
}

// --- The ordering rule itself (common/ordering.h) -------------------------------

OrderKey OK(int32_t priority, int64_t due, uint32_t shard, uint64_t row) {
  return OrderKey{priority, FromUnixMillis(due), ItemId{ShardId(shard), RowId(row)}};
}

TEST(OrderingRuleTest, SqlOrderByNamesTheRule) {
  EXPECT_EQ(kSqlOrderBy, "priority, deliver_after, id");
}

TEST(OrderingRuleTest, LowerPriorityNumberFirst) {
  EXPECT_TRUE(OK(0, 100, 5, 100) < OK(1, 0, 0, 0));
  EXPECT_FALSE(OK(1, 0, 0, 0) < OK(0, 100, 5, 100));
  EXPECT_TRUE(OK(-5, 100, 0, 1) < OK(-4, 0, 0, 1));
}

TEST(OrderingRuleTest, ThenEarlierDeliverAfter) {
  EXPECT_TRUE(OK(3, 10, 9, 900) < OK(3, 11, 0, 1));
  EXPECT_FALSE(OK(3, 11, 0, 1) < OK(3, 10, 9, 900));
}

TEST(OrderingRuleTest, ThenLowerId) {
  // Same shard: the lower row first.
  EXPECT_TRUE(OK(3, 10, 2, 5) < OK(3, 10, 2, 6));
  EXPECT_FALSE(OK(3, 10, 2, 6) < OK(3, 10, 2, 5));
  // Same row: the shard decides, so the order is total.
  EXPECT_TRUE(OK(3, 10, 1, 5) < OK(3, 10, 2, 5));
  EXPECT_FALSE(OK(3, 10, 2, 5) < OK(3, 10, 1, 5));
  // Across shards OrderKey compares the row BEFORE the shard (unlike ItemId's own
  // operator<=>, which compares the shard first): this is what the cross-shard merge
  // (ReadyKeyLess, row only) is consistent with.
  EXPECT_TRUE(OK(3, 10, 2, 5) < OK(3, 10, 1, 6));
  EXPECT_TRUE((ItemId{ShardId(1), RowId(6)} < ItemId{ShardId(2), RowId(5)}));
  // Equal keys are not less than each other.
  EXPECT_FALSE(OK(3, 10, 2, 5) < OK(3, 10, 2, 5));
  EXPECT_EQ(OK(3, 10, 2, 5), OK(3, 10, 2, 5));
}

TEST(OrderingRuleTest, IsAStrictTotalOrderOnRandomKeys) {
  std::mt19937_64 rng(4242);
  std::uniform_int_distribution<int32_t> prio(0, 2);
  std::uniform_int_distribution<int64_t> due(0, 2);
  std::uniform_int_distribution<uint32_t> shard(0, 2);
  std::uniform_int_distribution<uint64_t> row(0, 2);
  std::vector<OrderKey> keys;
  for (int i = 0; i < 120; ++i)
    keys.push_back(OK(prio(rng), due(rng), shard(rng), row(rng)));
  for (const OrderKey& a : keys) {
    EXPECT_FALSE(a < a);
    for (const OrderKey& b : keys) {
      // Exactly one of a<b, b<a, a==b.
      int n = (a < b) + (b < a) + (a == b);
      ASSERT_EQ(n, 1);
      // Lexicographic: priority, then deliver_after, then the id (row, then shard).
      if (a.priority != b.priority) {
        ASSERT_EQ(a < b, a.priority < b.priority);
      } else if (a.deliver_after != b.deliver_after) {
        ASSERT_EQ(a < b, a.deliver_after < b.deliver_after);
      } else {
        ASSERT_EQ(a < b, std::tie(a.id.row, a.id.shard) < std::tie(b.id.row, b.id.shard));
      }
      for (const OrderKey& c : keys) {
        if (a < b && b < c) {
          ASSERT_TRUE(a < c);
        }
      }
    }
  }
}

TEST(OrderingRuleTest, ReadyKeyLessIsTheRuleWithinOneShard) {
  std::mt19937_64 rng(99);
  for (int i = 0; i < 2000; ++i) {
    ReadyKey a = RandomKey(rng), b = RandomKey(rng);
    ShardId shard(std::uniform_int_distribution<uint32_t>(0, 7)(rng));
    ASSERT_EQ(ReadyKeyLess{}(a, b), a.ToOrderKey(shard) < b.ToOrderKey(shard))
        << Describe(a) << " vs " << Describe(b);
    // And it is lexicographic on (priority, deliver_after, row).
    ASSERT_EQ(ReadyKeyLess{}(a, b), std::tie(a.priority, a.deliver_after, a.row) <
                                        std::tie(b.priority, b.deliver_after, b.row));
  }
}

TEST(OrderingRuleTest, ToOrderKeyCarriesEveryField) {
  ReadyKey k = Key(-3, 1234, 77);
  OrderKey o = k.ToOrderKey(ShardId(9));
  EXPECT_EQ(o.priority, -3);
  EXPECT_EQ(ToUnixMillis(o.deliver_after), 1234);
  EXPECT_EQ(o.id.shard, ShardId(9));
  EXPECT_EQ(o.id.row, RowId(77));
}

}  // namespace
}  // namespace shardq::prefetch
