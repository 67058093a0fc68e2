// ShardWindow, TopicBuffer and PrefetchIndex: the window invariant, the cross-shard
// merge, refill bookkeeping, waiters, counts, and a randomized test against a model
// of the shards' MySQL READY rows.

#include "prefetch/topic_buffer.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "common/ids.h"
#include "common/item.h"
#include "common/ordering.h"
#include "prefetch/prefetch_index.h"
#include "prefetch/shard_window.h"

namespace shardq::prefetch {
namespace {

ReadyKey Key(int32_t priority, int64_t due_ms, uint64_t row) {
  return ReadyKey{priority, FromUnixMillis(due_ms), RowId(row)};
}

std::string Describe(const ReadyKey& k) {
  return "{p" + std::to_string(k.priority) + ",d" +
         std::to_string(ToUnixMillis(k.deliver_after)) + ",r" +
         std::to_string(k.row.value()) + "}";
}

// Pops everything out of a window (reserving it), best first.
std::vector<ReadyKey> DrainWindow(ShardWindow& w) {
  std::vector<ReadyKey> out;
  while (!w.Empty()) {
    out.push_back(w.Front());
    w.Pop();
  }
  return out;
}

std::vector<uint64_t> Rows(const std::vector<ReadyKey>& keys) {
  std::vector<uint64_t> rows;
  for (const ReadyKey& k : keys) rows.push_back(k.row.value());
  return rows;
}

std::vector<uint64_t> Rows(const std::vector<TopicBuffer::Taken>& taken) {
  std::vector<uint64_t> rows;
  for (const TopicBuffer::Taken& t : taken) rows.push_back(t.key.row.value());
  return rows;
}

// Take() with an optional `blocked` out-parameter (initialised to false, as a
// caller would).
std::vector<TopicBuffer::Taken> TakeFrom(TopicBuffer& buf, size_t count,
                                         std::vector<size_t>* refill,
                                         bool* blocked = nullptr) {
  bool ignored = false;
  return buf.Take(count, refill, blocked ? blocked : &ignored);
}

// ---------------------------------------------------------------------------
// ShardWindow
// ---------------------------------------------------------------------------

TEST(ShardWindowTest, NewWindowKnowsNothing) {
  ShardWindow w(8);
  EXPECT_EQ(w.capacity(), 8u);
  EXPECT_EQ(w.size(), 0u);
  EXPECT_TRUE(w.Empty());
  EXPECT_FALSE(w.complete());
  EXPECT_TRUE(w.available());
  EXPECT_TRUE(w.Blocking());
  EXPECT_TRUE(w.WantsRefill());
  // Empty and incomplete: any key may rank behind rows we have not loaded.
  EXPECT_FALSE(w.Offer(Key(-100, 0, 1)));
  EXPECT_EQ(w.size(), 0u);
}

TEST(ShardWindowTest, IncompleteWindowTakesOnlyKeysBetterThanItsWorst) {
  ShardWindow w(4);
  // A full answer (== capacity rows): MySQL may hold more, so incomplete.
  w.ApplyRefill({Key(1, 0, 10), Key(1, 0, 20), Key(2, 0, 30), Key(3, 0, 40)});
  ASSERT_FALSE(w.complete());
  ASSERT_EQ(w.size(), 4u);

  EXPECT_FALSE(w.Offer(Key(3, 0, 41))) << "worse than the worst: stays in MySQL";
  EXPECT_FALSE(w.Offer(Key(9, 0, 1)));
  EXPECT_EQ(w.size(), 4u);

  EXPECT_TRUE(w.Offer(Key(2, 0, 5))) << "better than the worst";
  EXPECT_EQ(w.size(), 4u) << "over capacity: the worst is evicted";
  EXPECT_FALSE(w.complete());
  EXPECT_EQ(Rows(DrainWindow(w)), (std::vector<uint64_t>{10, 20, 5, 30}));
}

TEST(ShardWindowTest, IncompleteWindowBelowCapacityGrowsWithBetterKeys) {
  ShardWindow w(4);
  w.ApplyRefill({Key(1, 0, 1), Key(1, 0, 2), Key(1, 0, 3), Key(1, 0, 4)});
  w.Pop();  // row 1 reserved; 3 left, still incomplete
  ASSERT_EQ(w.size(), 3u);
  EXPECT_TRUE(w.Offer(Key(0, 0, 9)));
  EXPECT_EQ(w.size(), 4u);
  EXPECT_FALSE(w.Offer(Key(1, 0, 5)));  // behind row 4, the worst
  EXPECT_EQ(Rows(DrainWindow(w)), (std::vector<uint64_t>{9, 2, 3, 4}));
}

TEST(ShardWindowTest, CompleteWindowTakesEverythingUntilFull) {
  ShardWindow w(3);
  w.ApplyRefill({Key(5, 0, 1)});
  ASSERT_TRUE(w.complete());
  EXPECT_FALSE(w.Blocking());
  EXPECT_FALSE(w.WantsRefill());

  EXPECT_TRUE(w.Offer(Key(9, 0, 2))) << "complete: even a worse key belongs here";
  EXPECT_TRUE(w.Offer(Key(0, 0, 3)));
  EXPECT_EQ(w.size(), 3u);
  EXPECT_TRUE(w.complete());

  // Full: a worse key is evicted at once and the window no longer holds everything.
  EXPECT_FALSE(w.Offer(Key(10, 0, 4)));
  EXPECT_FALSE(w.complete());
  EXPECT_EQ(w.size(), 3u);
  EXPECT_EQ(Rows(DrainWindow(w)), (std::vector<uint64_t>{3, 1, 2}));
}

TEST(ShardWindowTest, EvictionFromFullCompleteWindowMakesItIncomplete) {
  ShardWindow w(3);
  w.ApplyRefill({Key(1, 0, 1), Key(2, 0, 2), Key(3, 0, 3)});
  ASSERT_FALSE(w.complete()) << "3 rows for capacity 3: maybe more";
  w.ApplyRefill({Key(1, 0, 1), Key(2, 0, 2)});
  ASSERT_TRUE(w.complete());
  EXPECT_TRUE(w.Offer(Key(3, 0, 3)));
  EXPECT_TRUE(w.complete());
  EXPECT_TRUE(w.Offer(Key(0, 0, 4)));  // better; evicts row 3
  EXPECT_FALSE(w.complete());
  EXPECT_EQ(Rows(DrainWindow(w)), (std::vector<uint64_t>{4, 1, 2}));
  EXPECT_TRUE(w.Blocking()) << "empty and incomplete after draining";
}

TEST(ShardWindowTest, DuplicateOfferIsIdempotent) {
  ShardWindow w(4);
  w.ApplyRefill({Key(1, 0, 1)});
  EXPECT_TRUE(w.Offer(Key(1, 0, 2)));
  EXPECT_TRUE(w.Offer(Key(1, 0, 2)));
  EXPECT_EQ(w.size(), 2u);
}

TEST(ShardWindowTest, ApplyRefillSetsCompleteIffFewerThanCapacityRows) {
  for (size_t cap = 1; cap <= 6; ++cap) {
    for (size_t n = 0; n <= cap + 1; ++n) {
      SCOPED_TRACE("cap " + std::to_string(cap) + " rows " + std::to_string(n));
      ShardWindow w(cap);
      std::vector<ReadyKey> keys;
      for (size_t i = 0; i < n; ++i) keys.push_back(Key(0, 0, i + 1));
      w.ApplyRefill(keys);
      EXPECT_EQ(w.complete(), n < cap);
      EXPECT_TRUE(w.available());
      EXPECT_EQ(w.size(), n);
    }
  }
}

TEST(ShardWindowTest, ApplyRefillReplacesTheContents) {
  ShardWindow w(4);
  w.ApplyRefill({Key(0, 0, 1), Key(0, 0, 2)});
  w.ApplyRefill({Key(0, 0, 3)});
  EXPECT_EQ(Rows(DrainWindow(w)), (std::vector<uint64_t>{3}));
}

TEST(ShardWindowTest, ApplyRefillExcludesReservedRows) {
  ShardWindow w(4);
  w.ApplyRefill({Key(0, 0, 1), Key(0, 0, 2), Key(0, 0, 3)});
  ASSERT_EQ(w.Front().row, RowId(1));
  w.Pop();                // row 1 reserved: its claim is in flight
  w.Pop();                // row 2 reserved
  w.Unreserve(RowId(2));  // row 2's claim finished

  // MySQL still shows rows 1 and 2 as READY (say row 2's claim failed).
  w.ApplyRefill({Key(0, 0, 1), Key(0, 0, 2), Key(0, 0, 3), Key(0, 0, 4)});
  EXPECT_EQ(w.size(), 3u);
  // 4 rows fetched for capacity 4: incomplete, even though only 3 are kept.
  EXPECT_FALSE(w.complete());
  EXPECT_EQ(Rows(DrainWindow(w)), (std::vector<uint64_t>{2, 3, 4}));

  // Once unreserved, a refill brings row 1 back.
  w.Unreserve(RowId(1));
  w.ApplyRefill({Key(0, 0, 1)});
  EXPECT_TRUE(w.complete());
  EXPECT_EQ(Rows(DrainWindow(w)), (std::vector<uint64_t>{1}));
}

TEST(ShardWindowTest, RemoveDropsTheKeyAndAnyReservation) {
  ShardWindow w(8);
  w.ApplyRefill({Key(0, 0, 1), Key(0, 0, 2), Key(0, 0, 3)});
  w.Remove(RowId(2));
  EXPECT_EQ(w.size(), 2u);
  w.Remove(RowId(99));  // not there: no-op
  EXPECT_EQ(w.size(), 2u);
  w.Pop();  // reserves row 1
  w.Remove(RowId(1));
  // Row 1 is no longer reserved: if MySQL shows it again, it is taken in.
  w.ApplyRefill({Key(0, 0, 1), Key(0, 0, 3)});
  EXPECT_EQ(Rows(DrainWindow(w)), (std::vector<uint64_t>{1, 3}));
}

TEST(ShardWindowTest, MarkUnavailableForgetsEverythingUntilRefill) {
  ShardWindow w(4);
  w.ApplyRefill({Key(0, 0, 1)});
  w.MarkUnavailable();
  EXPECT_FALSE(w.available());
  EXPECT_TRUE(w.Empty());
  EXPECT_FALSE(w.complete());
  EXPECT_FALSE(w.Blocking()) << "an unavailable shard is skipped, not waited for";
  EXPECT_TRUE(w.WantsRefill());
  EXPECT_FALSE(w.Offer(Key(0, 0, 2)));
  EXPECT_TRUE(w.Empty());

  w.ApplyRefill({Key(0, 0, 2)});
  EXPECT_TRUE(w.available());
  EXPECT_TRUE(w.complete());
  EXPECT_EQ(w.size(), 1u);
}

TEST(ShardWindowTest, WantsRefillWhenLowAndIncomplete) {
  ShardWindow w(8);
  std::vector<ReadyKey> keys;
  for (uint64_t r = 1; r <= 8; ++r) keys.push_back(Key(0, 0, r));
  w.ApplyRefill(keys);
  ASSERT_FALSE(w.complete());
  EXPECT_FALSE(w.WantsRefill());  // 8 of 8
  for (int i = 0; i < 4; ++i) w.Pop();
  EXPECT_FALSE(w.WantsRefill());  // 4 of 8: not below half
  w.Pop();
  EXPECT_TRUE(w.WantsRefill());  // 3 of 8

  w.ApplyRefill({Key(0, 0, 100)});
  EXPECT_TRUE(w.complete());
  EXPECT_FALSE(w.WantsRefill()) << "complete: MySQL has nothing more";
  w.Pop();
  EXPECT_FALSE(w.WantsRefill());
  EXPECT_FALSE(w.Blocking());
}

// Liveness: a window that blocks the merge must ask for a refill, or dequeues on the
// topic stall for good. Fails for capacity 1 (WantsRefill tests size < capacity / 2,
// i.e. size < 0).
TEST(ShardWindowTest, BlockingWindowAlwaysWantsRefill) {
  for (size_t cap = 1; cap <= 8; ++cap) {
    SCOPED_TRACE("capacity " + std::to_string(cap));
    ShardWindow fresh(cap);
    ASSERT_TRUE(fresh.Blocking());
    EXPECT_TRUE(fresh.WantsRefill());

    ShardWindow drained(cap);
    std::vector<ReadyKey> keys;
    for (uint64_t r = 1; r <= cap; ++r) keys.push_back(Key(0, 0, r));
    drained.ApplyRefill(keys);
    DrainWindow(drained);
    ASSERT_TRUE(drained.Blocking());
    EXPECT_TRUE(drained.WantsRefill());
  }
}
// A shard whose circuit is open: a refill would be refused at once, so none is wanted
// until the shard is up again (else a parked dequeue asks for one after another).
TEST(ShardWindowTest, AWindowOfADownShardWantsNoRefillUntilTheShardIsUp) {
  ShardWindow w(4);
  w.ApplyRefill({Key(0, 0, 1)});
  EXPECT_TRUE(w.MarkUnavailable(/*shard_down=*/true)) << "was available";
  EXPECT_FALSE(w.available());
  EXPECT_FALSE(w.Blocking());
  EXPECT_FALSE(w.WantsRefill());
  EXPECT_FALSE(w.MarkUnavailable(/*shard_down=*/true)) << "already unavailable";
  w.MarkShardUp();
  EXPECT_TRUE(w.WantsRefill());
  w.ApplyRefill({Key(0, 0, 2)});
  EXPECT_TRUE(w.available());
  EXPECT_EQ(w.size(), 1u);
}

// ---------------------------------------------------------------------------
// TopicBuffer
// ---------------------------------------------------------------------------

class CountingWaiter : public Waiter {
 public:
  void Wake(const TopicBuffer&) override { ++wakes; }
  std::atomic<int> wakes{0};
};

// Counts through a pointer so that it can be observed after the waiter is gone.
class ExternalCountingWaiter : public Waiter {
 public:
  explicit ExternalCountingWaiter(int* counter) : counter_(counter) {}
  void Wake(const TopicBuffer&) override { ++*counter_; }

 private:
  int* counter_;
};

TEST(TopicBufferTest, NamesAndShape) {
  TopicBuffer buf("ns1", "topicA", 3, 16);
  EXPECT_EQ(buf.ns(), "ns1");
  EXPECT_EQ(buf.topic(), "topicA");
  for (size_t s = 0; s < 3; ++s) EXPECT_EQ(buf.WindowSize(s), 0u);
}

TEST(TopicBufferTest, FreshBufferTakesNothingAndAsksForEveryRefillOnce) {
  TopicBuffer buf("ns", "t", 4, 8);
  std::vector<size_t> refill;
  bool blocked = false;
  EXPECT_TRUE(TakeFrom(buf, 5, &refill, &blocked).empty());
  EXPECT_TRUE(blocked) << "nothing is known yet";
  EXPECT_EQ(refill, (std::vector<size_t>{0, 1, 2, 3}));

  refill.clear();
  EXPECT_TRUE(TakeFrom(buf, 5, &refill).empty());
  EXPECT_TRUE(refill.empty()) << "already pending";
  EXPECT_TRUE(buf.ClaimRefills().empty()) << "already pending";

  // Three shards answer; the fourth still blocks everything.
  buf.ApplyRefill(0, {Key(0, 0, 1)});
  buf.ApplyRefill(1, {Key(0, 0, 2)});
  buf.ApplyRefill(2, {});
  refill.clear();
  EXPECT_TRUE(TakeFrom(buf, 5, &refill).empty());
  EXPECT_TRUE(refill.empty());

  buf.ApplyRefill(3, {Key(0, 0, 3)});
  refill.clear();
  blocked = false;
  auto taken = TakeFrom(buf, 5, &refill, &blocked);
  EXPECT_EQ(Rows(taken), (std::vector<uint64_t>{1, 2, 3}));
  EXPECT_FALSE(blocked) << "short because everything is known and taken";
  EXPECT_TRUE(refill.empty()) << "all complete";
}

TEST(TopicBufferTest, ClaimRefillsMarksPendingLikeTake) {
  TopicBuffer buf("ns", "t", 3, 8);
  EXPECT_EQ(buf.ClaimRefills(), (std::vector<size_t>{0, 1, 2}));
  EXPECT_TRUE(buf.ClaimRefills().empty());
  std::vector<size_t> refill;
  TakeFrom(buf, 1, &refill);
  EXPECT_TRUE(refill.empty());
  // A failed refill clears pending; the unavailable shard wants a refill again.
  buf.RefillFailed(1);
  EXPECT_EQ(buf.ClaimRefills(), (std::vector<size_t>{1}));
  EXPECT_TRUE(buf.ClaimRefills().empty());
}

// A shard going down wakes the waiters once (what they wait for changed), not again
// while it stays down: each wake makes a parked dequeue take, and its Take would ask
// for a refill the open circuit refuses at once. A refill that failed while the shard
// is up wakes them every time: their Takes ask for the next one, and nothing else
// would (the failures count against the breaker, which opens if they go on).
TEST(TopicBufferTest, ADownShardWakesWaitersOnceAndAsksForNothingAFailedRefillAgain) {
  TopicBuffer buf("ns", "t", 2, 8);
  buf.ApplyRefill(0, {Key(0, 0, 1)});
  buf.ApplyRefill(1, {Key(0, 0, 2)});
  auto waiter = std::make_shared<CountingWaiter>();
  buf.AddWaiter(waiter);
  buf.ShardDown(1);
  EXPECT_EQ(waiter->wakes, 1);

  buf.AddWaiter(waiter);
  buf.ShardDown(1);
  EXPECT_EQ(waiter->wakes, 1) << "shard 1 was down already";
  buf.RefillFailed(0);
  EXPECT_EQ(waiter->wakes, 2);
  buf.AddWaiter(waiter);
  buf.RefillFailed(0);
  EXPECT_EQ(waiter->wakes, 3) << "the next refill is asked for by a waiter's Take";

  std::vector<size_t> refill;
  TakeFrom(buf, 1, &refill);
  EXPECT_EQ(refill, (std::vector<size_t>{0})) << "shard 1 is down: no refill for it";
  EXPECT_FALSE(buf.ClaimRefill(1));
  EXPECT_TRUE(buf.ShardUp(1));
  EXPECT_FALSE(buf.ShardUp(1)) << "pending";
  buf.ApplyRefill(1, {Key(0, 0, 2)});
  EXPECT_EQ(Rows(TakeFrom(buf, 2, &refill)), (std::vector<uint64_t>{2}));
}

// A window reset (its shard's store call has an unknown outcome) knows nothing
// again: unlike an unavailable one, it holds the merge back, since its shard may have
// better READY items than the others' windows show.
TEST(TopicBufferTest, AResetWindowHoldsTheMergeBackUntilItsRefill) {
  TopicBuffer buf("ns", "t", 2, 8);
  buf.ApplyRefill(0, {Key(0, 0, 1)});
  buf.ApplyRefill(1, {Key(5, 0, 2)});
  auto waiter = std::make_shared<CountingWaiter>();
  buf.AddWaiter(waiter);
  buf.Reset(0);
  EXPECT_EQ(waiter->wakes, 1) << "a waiter's Take asks for the refill";
  EXPECT_EQ(buf.WindowSize(0), 0u);

  std::vector<size_t> refill;
  bool blocked = false;
  EXPECT_TRUE(TakeFrom(buf, 1, &refill, &blocked).empty()) << "not past shard 0";
  EXPECT_TRUE(blocked);
  EXPECT_EQ(refill, (std::vector<size_t>{0}));
  buf.ApplyRefill(0, {Key(0, 0, 1), Key(1, 0, 3)});
  EXPECT_EQ(Rows(TakeFrom(buf, 3, &refill)), (std::vector<uint64_t>{1, 3, 2}));

  // A window whose refill failed is skipped by merges; reset, it holds them back too.
  // A down shard's window stays skipped.
  buf.ApplyRefill(1, {Key(5, 0, 4)});
  buf.RefillFailed(0);
  EXPECT_EQ(Rows(TakeFrom(buf, 1, &refill, &blocked)), (std::vector<uint64_t>{4}));
  buf.OnReady(1, Key(5, 0, 5));
  buf.Reset(0);
  blocked = false;
  EXPECT_TRUE(TakeFrom(buf, 1, &refill, &blocked).empty());
  EXPECT_TRUE(blocked);
  buf.ShardDown(0);
  buf.Reset(0);
  EXPECT_EQ(Rows(TakeFrom(buf, 1, &refill)), (std::vector<uint64_t>{5}));
}

TEST(TopicBufferTest, ClaimRefillOfOneShard) {
  TopicBuffer buf("ns", "t", 3, 8);
  EXPECT_TRUE(buf.ClaimRefill(1));
  EXPECT_FALSE(buf.ClaimRefill(1)) << "pending";
  EXPECT_EQ(buf.ClaimRefills(), (std::vector<size_t>{0, 2}));
  EXPECT_FALSE(buf.ClaimRefill(0));
  buf.ApplyRefill(1, {Key(0, 0, 1)});  // complete: wants nothing
  EXPECT_FALSE(buf.ClaimRefill(1));
  buf.RefillFailed(2);
  EXPECT_TRUE(buf.ClaimRefill(2));
  std::vector<size_t> refill;
  TakeFrom(buf, 10, &refill);
  EXPECT_TRUE(refill.empty()) << "everything that wants a refill is pending";
}

TEST(TopicBufferTest, TakeMergesFourShardsInGlobalOrder) {
  constexpr size_t kShards = 4;
  std::mt19937_64 rng(123);
  TopicBuffer buf("ns", "t", kShards, 64);
  std::vector<OrderKey> all;
  uint64_t next_row = 1;
  for (size_t s = 0; s < kShards; ++s) {
    std::vector<ReadyKey> keys;
    for (int i = 0; i < 20; ++i) {
      ReadyKey k = Key(std::uniform_int_distribution<int>(0, 2)(rng),
                       std::uniform_int_distribution<int>(0, 2)(rng), next_row++);
      keys.push_back(k);
      all.push_back(k.ToOrderKey(ShardId(static_cast<uint32_t>(s))));
    }
    std::shuffle(keys.begin(), keys.end(), rng);  // the window sorts
    buf.ApplyRefill(s, keys);
  }
  std::sort(all.begin(), all.end());

  std::vector<OrderKey> got;
  std::vector<size_t> refill;
  for (size_t n : {1, 7, 3, 30, 100}) {
    for (const auto& t : TakeFrom(buf, n, &refill)) {
      ASSERT_LT(t.shard, kShards);
      got.push_back(t.key.ToOrderKey(ShardId(static_cast<uint32_t>(t.shard))));
    }
  }
  EXPECT_TRUE(refill.empty());
  ASSERT_EQ(got.size(), all.size());
  EXPECT_EQ(got, all);
  for (size_t s = 0; s < kShards; ++s) EXPECT_EQ(buf.WindowSize(s), 0u);
}

TEST(TopicBufferTest, TakeRespectsCount) {
  TopicBuffer buf("ns", "t", 2, 8);
  buf.ApplyRefill(0, {Key(0, 0, 1), Key(0, 0, 3)});
  buf.ApplyRefill(1, {Key(0, 0, 2), Key(0, 0, 4)});
  std::vector<size_t> refill;
  EXPECT_TRUE(TakeFrom(buf, 0, &refill).empty());
  bool blocked = true;  // "left alone otherwise": Take never clears it
  EXPECT_EQ(Rows(TakeFrom(buf, 3, &refill, &blocked)), (std::vector<uint64_t>{1, 2, 3}));
  EXPECT_TRUE(blocked);
  blocked = false;
  EXPECT_EQ(Rows(TakeFrom(buf, 5, &refill, &blocked)), (std::vector<uint64_t>{4}));
  EXPECT_FALSE(blocked) << "short, but only because both windows are complete";
  EXPECT_EQ(buf.WindowSize(0), 0u);
  EXPECT_EQ(buf.WindowSize(1), 0u);
}

TEST(TopicBufferTest, TakeReportsTheShardOfEachItem) {
  TopicBuffer buf("ns", "t", 3, 8);
  buf.ApplyRefill(0, {Key(5, 0, 1)});
  buf.ApplyRefill(1, {Key(1, 0, 1)});
  buf.ApplyRefill(2, {Key(3, 0, 1)});
  std::vector<size_t> refill;
  auto taken = TakeFrom(buf, 3, &refill);
  ASSERT_EQ(taken.size(), 3u);
  EXPECT_EQ(taken[0].shard, 1u);
  EXPECT_EQ(taken[1].shard, 2u);
  EXPECT_EQ(taken[2].shard, 0u);
  EXPECT_EQ(taken[0].key, Key(1, 0, 1));
}

// Equal (priority, deliver_after, row) in several shards: the ordering rule
// (OrderKey) breaks the tie by shard, so the lower shard must come first.
TEST(TopicBufferTest, CrossShardTiesFollowTheOrderingRule) {
  constexpr size_t kShards = 6;
  TopicBuffer buf("ns", "t", kShards, 8);
  for (size_t s = 0; s < kShards; ++s) buf.ApplyRefill(s, {Key(0, 0, 7), Key(0, 0, 8)});
  std::vector<size_t> refill;
  auto taken = TakeFrom(buf, 2 * kShards, &refill);
  ASSERT_EQ(taken.size(), 2 * kShards);
  std::vector<OrderKey> got;
  for (const auto& t : taken) {
    got.push_back(t.key.ToOrderKey(ShardId(static_cast<uint32_t>(t.shard))));
  }
  EXPECT_TRUE(std::is_sorted(got.begin(), got.end()))
      << "items with equal keys came out in a shard order the rule does not give";
}

TEST(TopicBufferTest, TakeStopsAtABlockingShardAndReportsItsRefillOnce) {
  TopicBuffer buf("ns", "t", 4, 4);
  buf.ApplyRefill(0, {Key(0, 0, 1), Key(0, 0, 5), Key(0, 0, 9)});  // complete
  buf.ApplyRefill(1, {Key(0, 0, 2), Key(0, 0, 3), Key(0, 0, 4), Key(0, 0, 6)});  // full
  buf.ApplyRefill(2, {});              // complete
  buf.ApplyRefill(3, {Key(0, 0, 7)});  // complete

  std::vector<size_t> refill;
  // Shard 1's window ends at row 6; MySQL may hold rows that rank right after it, so
  // nothing past row 6 may be handed out until shard 1 is refilled.
  bool blocked = false;
  auto taken = TakeFrom(buf, 100, &refill, &blocked);
  EXPECT_EQ(Rows(taken), (std::vector<uint64_t>{1, 2, 3, 4, 5, 6}));
  EXPECT_TRUE(blocked);
  EXPECT_EQ(refill, (std::vector<size_t>{1}));
  EXPECT_EQ(buf.WindowSize(0), 1u);
  EXPECT_EQ(buf.WindowSize(3), 1u);

  refill.clear();
  EXPECT_TRUE(TakeFrom(buf, 100, &refill).empty()) << "still blocked";
  EXPECT_TRUE(refill.empty()) << "refill already requested";

  // The refill: row 8 was in MySQL; rows 2,3,4,6 are reserved and still READY there.
  buf.ApplyRefill(1, {Key(0, 0, 2), Key(0, 0, 3), Key(0, 0, 4), Key(0, 0, 6)});
  EXPECT_EQ(buf.WindowSize(1), 0u) << "all four fetched rows are reserved";
  refill.clear();
  EXPECT_TRUE(TakeFrom(buf, 100, &refill).empty()) << "blocked: the refill was full";
  EXPECT_EQ(refill, (std::vector<size_t>{1}));

  for (uint64_t r : {2, 3, 4, 6}) buf.Unreserve(1, RowId(r));  // leased: not READY
  buf.ApplyRefill(1, {Key(0, 0, 8)});
  refill.clear();
  blocked = false;
  EXPECT_EQ(Rows(TakeFrom(buf, 100, &refill, &blocked)),
            (std::vector<uint64_t>{7, 8, 9}));
  EXPECT_TRUE(refill.empty());
  EXPECT_FALSE(blocked);
}

// For a call whose held answer has `bound` as its worst item: only items due by the
// hold's end that rank before it are taken, best first across shards (ties by
// shard), at most `count`, and they are reserved like Take()'s.
TEST(TopicBufferTest, TakeDueBeforeTakesOnlyDueItemsThatRankBeforeTheBound) {
  TopicBuffer buf("ns", "t", 2, 8);
  const Time now = FromUnixMillis(200);
  buf.ApplyRefill(0, {Key(1, 100, 1), Key(2, 300, 2), Key(3, 100, 3), Key(5, 100, 4)});
  buf.ApplyRefill(1, {Key(1, 100, 1), Key(4, 100, 5), Key(4, 150, 6)});
  // The bound is an item of shard 0: shard 1's equal key ranks after it.
  const TopicBuffer::Taken bound{0, Key(4, 100, 5)};
  std::vector<size_t> refill;

  auto two = buf.TakeDueBefore(bound, now, 2, &refill);
  ASSERT_EQ(two.size(), 2u);
  EXPECT_EQ(two[0].shard, 0u);
  EXPECT_EQ(two[0].key, Key(1, 100, 1));
  EXPECT_EQ(two[1].shard, 1u);
  EXPECT_EQ(two[1].key, Key(1, 100, 1));

  // Priority 2 is not due until 300 ms; (4, 100, 5) on shard 1 ties with the bound
  // but for the shard, which ranks it after.
  auto rest = buf.TakeDueBefore(bound, now, 10, &refill);
  ASSERT_EQ(rest.size(), 1u);
  EXPECT_EQ(rest[0].shard, 0u);
  EXPECT_EQ(rest[0].key, Key(3, 100, 3));
  EXPECT_TRUE(buf.TakeDueBefore(bound, now, 10, &refill).empty());
  EXPECT_TRUE(refill.empty()) << "both windows are complete";

  // What was taken is reserved: a later refill that still lists it does not show it.
  buf.ApplyRefill(0, {Key(1, 100, 1), Key(2, 300, 2), Key(3, 100, 3), Key(5, 100, 4)});
  EXPECT_EQ(Rows(TakeFrom(buf, 10, &refill)), (std::vector<uint64_t>{2, 5, 6, 4}));
}

// A held answer's re-ranking takes whatever ranks before its worst item even when a
// shard's window is still unknown (Take would stop there): it can only improve the
// answer. It asks for that window's refill, as Take does.
TEST(TopicBufferTest, TakeDueBeforeDoesNotStopAtABlockingShard) {
  TopicBuffer buf("ns", "t", 2, 8);
  buf.ApplyRefill(1, {Key(0, 0, 1), Key(9, 0, 2)});
  std::vector<size_t> refill;
  auto taken = buf.TakeDueBefore({1, Key(5, 0, 3)}, FromUnixMillis(10), 10, &refill);
  EXPECT_EQ(Rows(taken), std::vector<uint64_t>{1});
  EXPECT_EQ(refill, std::vector<size_t>{0});
}

// Items the caller names are passed over, and stay in their window.
TEST(TopicBufferTest, TakeDueBeforePassesOverSkippedItems) {
  TopicBuffer buf("ns", "t", 2, 8);
  buf.ApplyRefill(0, {Key(0, 0, 1), Key(0, 0, 2)});
  buf.ApplyRefill(1, {Key(0, 0, 1)});
  std::vector<size_t> refill;
  auto taken = buf.TakeDueBefore(
      {1, Key(5, 0, 9)}, FromUnixMillis(10), 10, &refill,
      [](size_t shard, RowId row) { return shard == 0 && row == RowId(1); });
  ASSERT_EQ(taken.size(), 2u);
  EXPECT_EQ(taken[0].shard, 1u);  // row 1 before row 2: the row ranks before the shard
  EXPECT_EQ(taken[0].key, Key(0, 0, 1));
  EXPECT_EQ(taken[1].shard, 0u);
  EXPECT_EQ(taken[1].key, Key(0, 0, 2));
  EXPECT_EQ(buf.WindowSize(0), 1u);
}

TEST(TopicBufferTest, RefillIsRequestedAgainOnlyAfterTheLastOneLanded) {
  TopicBuffer buf("ns", "t", 1, 8);
  std::vector<ReadyKey> keys;
  for (uint64_t r = 1; r <= 8; ++r) keys.push_back(Key(0, 0, r));
  buf.ApplyRefill(0, keys);  // incomplete
  std::vector<size_t> refill;
  EXPECT_EQ(TakeFrom(buf, 4, &refill).size(), 4u);
  EXPECT_TRUE(refill.empty()) << "4 of 8 left: not low yet";
  EXPECT_EQ(TakeFrom(buf, 1, &refill).size(), 1u);
  EXPECT_EQ(refill, (std::vector<size_t>{0}));
  for (int i = 0; i < 3; ++i) {
    refill.clear();
    EXPECT_EQ(TakeFrom(buf, 1, &refill).size(), 1u);
    EXPECT_TRUE(refill.empty()) << "pending";
  }
  refill.clear();
  bool blocked = false;
  EXPECT_TRUE(TakeFrom(buf, 1, &refill, &blocked).empty())
      << "window drained and incomplete";
  EXPECT_TRUE(blocked);
  EXPECT_TRUE(refill.empty());
  EXPECT_TRUE(buf.ClaimRefills().empty());
}

TEST(TopicBufferTest, UnavailableShardIsLeftOutOfTheMerge) {
  TopicBuffer buf("ns", "t", 3, 8);
  buf.ApplyRefill(0, {Key(1, 0, 10), Key(3, 0, 11)});
  buf.ApplyRefill(1, {Key(0, 0, 20), Key(2, 0, 21)});  // the best items...
  buf.ApplyRefill(2, {Key(1, 0, 30)});
  buf.RefillFailed(1);  // ...are on a shard that cannot be read
  EXPECT_EQ(buf.WindowSize(1), 0u);

  buf.OnReady(1, Key(0, 0, 22));  // ignored until a refill succeeds
  EXPECT_EQ(buf.WindowSize(1), 0u);

  std::vector<size_t> refill;
  bool blocked = false;
  auto taken = TakeFrom(buf, 10, &refill, &blocked);
  EXPECT_EQ(Rows(taken), (std::vector<uint64_t>{10, 30, 11}));
  EXPECT_FALSE(blocked) << "an unavailable shard is skipped, not waited for";
  for (const auto& t : taken) EXPECT_NE(t.shard, 1u);
  EXPECT_EQ(refill, (std::vector<size_t>{1})) << "retry the failed shard";
  refill.clear();
  TakeFrom(buf, 10, &refill);
  EXPECT_TRUE(refill.empty()) << "the retry is pending";

  buf.ApplyRefill(1, {Key(0, 0, 20), Key(0, 0, 22), Key(2, 0, 21)});
  EXPECT_EQ(Rows(TakeFrom(buf, 10, &refill)), (std::vector<uint64_t>{20, 22, 21}));
}

TEST(TopicBufferTest, OnRemovedDropsTheItem) {
  TopicBuffer buf("ns", "t", 2, 8);
  buf.ApplyRefill(0, {Key(0, 0, 1), Key(0, 0, 2)});
  buf.ApplyRefill(1, {Key(0, 0, 3)});
  buf.OnRemoved(0, RowId(1));
  buf.OnRemoved(1, RowId(1));  // other shard: nothing there
  EXPECT_EQ(buf.WindowSize(0), 1u);
  EXPECT_EQ(buf.WindowSize(1), 1u);
  std::vector<size_t> refill;
  EXPECT_EQ(Rows(TakeFrom(buf, 10, &refill)), (std::vector<uint64_t>{2, 3}));
}

TEST(TopicBufferTest, OnReadyWakesAWaiterOnce) {
  TopicBuffer buf("ns", "t", 2, 8);
  buf.ApplyRefill(0, {});
  buf.ApplyRefill(1, {});
  auto waiter = std::make_shared<CountingWaiter>();
  buf.AddWaiter(waiter);
  EXPECT_EQ(waiter->wakes, 0);
  EXPECT_EQ(buf.WaiterEntries(), 1u);
  buf.OnReady(0, Key(0, 0, 1));
  EXPECT_EQ(waiter->wakes, 1);
  EXPECT_EQ(buf.WaiterEntries(), 0u) << "the wake used the entry up";
  EXPECT_EQ(buf.WindowSize(0), 1u);
  buf.OnReady(1, Key(0, 0, 2));
  buf.ApplyRefill(1, {});
  EXPECT_EQ(waiter->wakes, 1) << "one-shot: dropped after the first wake";

  buf.AddWaiter(waiter);  // re-registering works
  buf.OnReady(1, Key(0, 0, 3));
  EXPECT_EQ(waiter->wakes, 2);
}

TEST(TopicBufferTest, OnReadyRejectedByTheWindowWakesNobody) {
  TopicBuffer buf("ns", "t", 1, 2);
  buf.ApplyRefill(0, {Key(0, 0, 1), Key(0, 0, 2)});  // full: incomplete
  auto waiter = std::make_shared<CountingWaiter>();
  buf.AddWaiter(waiter);
  buf.OnReady(0, Key(5, 0, 3));  // ranks behind the window: stays in MySQL
  EXPECT_EQ(waiter->wakes, 0);
  EXPECT_EQ(buf.WindowSize(0), 2u);
  buf.OnReady(0, Key(-1, 0, 4));  // better: taken, wakes
  EXPECT_EQ(waiter->wakes, 1);
}

TEST(TopicBufferTest, RefillAndRefillFailureWakeWaiters) {
  TopicBuffer buf("ns", "t", 2, 8);
  auto a = std::make_shared<CountingWaiter>();
  auto b = std::make_shared<CountingWaiter>();
  buf.AddWaiter(a);
  buf.AddWaiter(b);
  buf.ApplyRefill(0, {});  // even an empty answer lets waiters decide
  EXPECT_EQ(a->wakes, 1);
  EXPECT_EQ(b->wakes, 1);
  buf.AddWaiter(a);
  buf.RefillFailed(1);
  EXPECT_EQ(a->wakes, 2);
  EXPECT_EQ(b->wakes, 1);
}

TEST(TopicBufferTest, DeadWaiterIsNotCalled) {
  TopicBuffer buf("ns", "t", 1, 8);
  buf.ApplyRefill(0, {});
  int dead_calls = 0;
  int live_calls = 0;
  auto dead = std::make_shared<ExternalCountingWaiter>(&dead_calls);
  auto live = std::make_shared<ExternalCountingWaiter>(&live_calls);
  buf.AddWaiter(dead);
  buf.AddWaiter(live);
  std::weak_ptr<Waiter> watch = dead;
  dead.reset();  // the long poll went away
  ASSERT_TRUE(watch.expired());
  buf.OnReady(0, Key(0, 0, 1));
  EXPECT_EQ(dead_calls, 0);
  EXPECT_EQ(live_calls, 1);
}

TEST(TopicBufferTest, WaiterMayCallBackIntoTheBuffer) {
  // Wake() runs without the lock held: a waiter that takes at once must not deadlock.
  struct TakingWaiter : Waiter {
    TopicBuffer* buf = nullptr;
    std::vector<uint64_t> got;
    void Wake(const TopicBuffer&) override {
      std::vector<size_t> refill;
      for (const auto& t : TakeFrom(*buf, 10, &refill)) got.push_back(t.key.row.value());
    }
  };
  TopicBuffer buf("ns", "t", 1, 8);
  buf.ApplyRefill(0, {});
  auto w = std::make_shared<TakingWaiter>();
  w->buf = &buf;
  buf.AddWaiter(w);
  buf.OnReady(0, Key(0, 0, 42));
  EXPECT_EQ(w->got, (std::vector<uint64_t>{42}));
}

// Direct handoff is allowed exactly when a waiter's Take would find nothing and not be
// blocked: every window empty (reserved items do not count) and none still loading.
TEST(TopicBufferTest, IdleWaitersOnlyWhenNothingIsReadyOrLoading) {
  TopicBuffer buf("ns", "t", 2, 8);
  auto w1 = std::make_shared<CountingWaiter>();
  auto w2 = std::make_shared<CountingWaiter>();
  EXPECT_TRUE(buf.IdleWaiters().empty());  // no waiters
  buf.AddWaiter(w1);
  buf.AddWaiter(w2);
  EXPECT_TRUE(buf.IdleWaiters().empty());  // windows not loaded yet
  buf.ApplyRefill(0, {});                  // wakes (and drops) both
  buf.AddWaiter(w1);
  buf.AddWaiter(w2);
  EXPECT_TRUE(buf.IdleWaiters().empty());  // shard 1 still loading
  buf.ApplyRefill(1, {});
  buf.AddWaiter(w1);
  buf.AddWaiter(w2);
  std::vector<std::shared_ptr<Waiter>> idle = buf.IdleWaiters();
  ASSERT_EQ(idle.size(), 2u);
  EXPECT_EQ(idle[0], w1);  // in the order they came
  EXPECT_EQ(idle[1], w2);
  EXPECT_EQ(buf.IdleWaiters().size(), 2u);  // still registered

  buf.OnReady(1, Key(0, 0, 7));  // an item is ready: it goes first
  EXPECT_TRUE(buf.IdleWaiters().empty());
  buf.AddWaiter(w1);
  std::vector<size_t> refill;
  ASSERT_EQ(TakeFrom(buf, 1, &refill).size(), 1u);  // reserved, not ready
  EXPECT_EQ(buf.IdleWaiters().size(), 1u);
  buf.RefillFailed(0);  // an unavailable shard does not block either
  buf.AddWaiter(w1);
  EXPECT_EQ(buf.IdleWaiters().size(), 1u);
}

TEST(TopicBufferTest, CountTransitionArithmetic) {
  TopicBuffer buf("ns", "t", 3, 8);
  auto expect = [&](int64_t d, int64_t r, int64_t l) {
    StateCounts c = buf.Counts();
    EXPECT_EQ(c.delayed, d);
    EXPECT_EQ(c.ready, r);
    EXPECT_EQ(c.leased, l);
    EXPECT_EQ(c.total(), d + r + l);
  };
  expect(0, 0, 0);
  buf.CountTransition(0, ItemState::kGone, ItemState::kReady);  // enqueue
  buf.CountTransition(1, ItemState::kGone, ItemState::kReady);
  buf.CountTransition(2, ItemState::kGone, ItemState::kDelayed);  // delayed enqueue
  expect(1, 2, 0);
  buf.CountTransition(0, ItemState::kReady, ItemState::kLeased);  // dequeue
  expect(1, 1, 1);
  buf.CountTransition(2, ItemState::kDelayed, ItemState::kReady);  // promotion
  expect(0, 2, 1);
  buf.CountTransition(0, ItemState::kLeased, ItemState::kReady);  // nack / expiry
  expect(0, 3, 0);
  buf.CountTransition(1, ItemState::kReady, ItemState::kLeased);
  buf.CountTransition(1, ItemState::kLeased, ItemState::kGone);  // ack
  expect(0, 2, 0);
  buf.CountTransition(0, ItemState::kGone, ItemState::kGone);  // no-op
  expect(0, 2, 0);
}

TEST(TopicBufferTest, SetCountsReplacesOneShardAndSumsAcrossShards) {
  TopicBuffer buf("ns", "t", 3, 8);
  buf.SetCounts(0, {1, 2, 3});
  buf.SetCounts(2, {10, 20, 30});
  StateCounts c = buf.Counts();
  EXPECT_EQ(c.delayed, 11);
  EXPECT_EQ(c.ready, 22);
  EXPECT_EQ(c.leased, 33);
  EXPECT_EQ(c.total(), 66);

  buf.SetCounts(2, {0, 5, 0});  // replaces, does not add
  buf.CountTransition(0, ItemState::kReady, ItemState::kLeased);
  c = buf.Counts();
  EXPECT_EQ(c.delayed, 1);
  EXPECT_EQ(c.ready, 1 + 5);
  EXPECT_EQ(c.leased, 4);
  EXPECT_EQ(c.total(), 11);
}

// ---------------------------------------------------------------------------
// PrefetchIndex
// ---------------------------------------------------------------------------

// Only a buffer with nothing in it, nothing loading, nobody waiting and nobody else
// holding it leaves the index.
TEST(PrefetchIndexTest, EvictIdleDropsOnlyUnusedEmptyBuffers) {
  PrefetchIndex index(2, 8);
  index.GetOrCreate("ns", "empty");
  auto held = index.GetOrCreate("ns", "held");
  index.GetOrCreate("ns", "counted")
      ->CountTransition(1, ItemState::kGone, ItemState::kDead);
  index.GetOrCreate("ns", "loading")->ClaimRefill(0);
  auto waiter = std::make_shared<CountingWaiter>();
  index.GetOrCreate("ns", "waited")->AddWaiter(waiter);
  EXPECT_EQ(index.EvictIdle(), 1u);
  EXPECT_EQ(index.Find("ns", "empty"), nullptr);
  EXPECT_NE(index.Find("ns", "held"), nullptr);
  EXPECT_NE(index.Find("ns", "counted"), nullptr);
  EXPECT_NE(index.Find("ns", "loading"), nullptr);
  EXPECT_NE(index.Find("ns", "waited"), nullptr);
  held.reset();
  waiter.reset();
  EXPECT_EQ(index.EvictIdle(), 2u);
  EXPECT_EQ(index.size(), 2u);
}

TEST(PrefetchIndexTest, TheSweeperEvictsOncePerInterval) {
  PrefetchIndex index(1, 8);
  IndexSweeper sweeper(index, Duration(1000));
  const Time t0{};
  EXPECT_EQ(sweeper.Tick(t0), Duration(1000));
  index.GetOrCreate("ns", "t");
  EXPECT_EQ(sweeper.Tick(t0 + Duration(999)), Duration(1));
  EXPECT_EQ(index.size(), 1u);
  EXPECT_EQ(sweeper.Tick(t0 + Duration(1000)), Duration(1000));
  EXPECT_EQ(index.size(), 0u);
}

TEST(PrefetchIndexTest, GetOrCreateReturnsTheSameBuffer) {
  PrefetchIndex index(4, 16);
  EXPECT_EQ(index.shards(), 4u);
  EXPECT_EQ(index.Find("a", "x"), nullptr);
  auto b1 = index.GetOrCreate("a", "x");
  ASSERT_NE(b1, nullptr);
  EXPECT_EQ(b1->ns(), "a");
  EXPECT_EQ(b1->topic(), "x");
  EXPECT_EQ(index.GetOrCreate("a", "x"), b1);
  EXPECT_EQ(index.Find("a", "x"), b1);
  EXPECT_NE(index.GetOrCreate("a", "y"), b1);
  EXPECT_NE(index.GetOrCreate("b", "x"), b1);
  EXPECT_EQ(index.All().size(), 3u);

  // The buffer has one window per shard.
  b1->ApplyRefill(3, {Key(0, 0, 1)});
  EXPECT_EQ(b1->WindowSize(3), 1u);
  EXPECT_EQ(index.Find("a", "x")->WindowSize(3), 1u);
}

TEST(PrefetchIndexTest, ForNamespaceListsOnlyThatNamespaceSortedByTopic) {
  PrefetchIndex index(1, 4);
  for (const char* t : {"zeta", "alpha", "mid", "Beta", "alpha2"})
    index.GetOrCreate("ns", t);
  // Neighbours that a sloppy prefix scan would pick up.
  index.GetOrCreate("n", "zz");
  index.GetOrCreate("ns2", "a");
  index.GetOrCreate("nsa", "a");
  index.GetOrCreate("", "a");
  index.GetOrCreate("NS", "a");

  auto list = index.ForNamespace("ns");
  std::vector<std::string> topics;
  for (const auto& b : list) {
    EXPECT_EQ(b->ns(), "ns");
    topics.push_back(b->topic());
  }
  EXPECT_EQ(topics, (std::vector<std::string>{"Beta", "alpha", "alpha2", "mid", "zeta"}));
  EXPECT_EQ(list[1], index.Find("ns", "alpha"));

  // A page: at most `max`, after a topic.
  std::vector<std::string> page;
  for (const auto& b : index.ForNamespace("ns", "alpha", 2)) page.push_back(b->topic());
  EXPECT_EQ(page, (std::vector<std::string>{"alpha2", "mid"}));
  EXPECT_TRUE(index.ForNamespace("ns", "zeta").empty());

  EXPECT_TRUE(index.ForNamespace("nothing").empty());
  ASSERT_EQ(index.ForNamespace("").size(), 1u);
  EXPECT_EQ(index.ForNamespace("n").size(), 1u);
  EXPECT_EQ(index.All().size(), 10u);
}

// ---------------------------------------------------------------------------
// Randomized: TopicBuffer against a model of each shard's MySQL READY rows.
// ---------------------------------------------------------------------------

struct ModelShard {
  std::set<ReadyKey, ReadyKeyLess> ready;  // READY rows in MySQL (reserved included)
  std::set<uint64_t> reserved;             // taken, claim not finished
  bool available = true;                   // false after RefillFailed until a refill
  bool pending = false;                    // a refill was requested and not answered
};

class Model {
 public:
  explicit Model(size_t shards) : shards_(shards) {}
  ModelShard& operator[](size_t s) { return shards_[s]; }
  size_t size() const { return shards_.size(); }

  // READY and not reserved, on available shards, in ordering-rule order.
  std::vector<OrderKey> Deliverable() const {
    std::vector<OrderKey> out;
    for (size_t s = 0; s < shards_.size(); ++s) {
      if (!shards_[s].available) continue;
      for (const ReadyKey& k : shards_[s].ready) {
        if (!shards_[s].reserved.contains(k.row.value())) {
          out.push_back(k.ToOrderKey(ShardId(static_cast<uint32_t>(s))));
        }
      }
    }
    std::sort(out.begin(), out.end());
    return out;
  }

  // What FetchReady(limit = capacity) answers.
  std::vector<ReadyKey> Fetch(size_t s, size_t limit) const {
    std::vector<ReadyKey> out;
    for (const ReadyKey& k : shards_[s].ready) {
      if (out.size() == limit) break;
      out.push_back(k);
    }
    return out;
  }

 private:
  std::vector<ModelShard> shards_;
};

void RunRandomized(uint64_t seed) {
  std::mt19937_64 rng(seed);
  auto uni = [&](int lo, int hi) {
    return std::uniform_int_distribution<int>(lo, hi)(rng);
  };
  const size_t shards = static_cast<size_t>(uni(1, 5));
  const size_t capacity = static_cast<size_t>(uni(2, 8));
  SCOPED_TRACE("seed " + std::to_string(seed) + " shards " + std::to_string(shards) +
               " capacity " + std::to_string(capacity));
  TopicBuffer buf("ns", "t", shards, capacity);
  Model model(shards);
  uint64_t next_row = 1;
  std::vector<std::pair<size_t, ReadyKey>> in_flight;  // taken, claim not finished
  std::vector<size_t> refill_queue;                    // requested refills

  auto request = [&](const std::vector<size_t>& shards_to_refill) {
    for (size_t s : shards_to_refill) {
      ASSERT_LT(s, shards);
      ASSERT_FALSE(model[s].pending) << "refill of shard " << s << " requested twice";
      model[s].pending = true;
      refill_queue.push_back(s);
    }
  };
  auto refill = [&](size_t s) {
    buf.ApplyRefill(s, model.Fetch(s, capacity));
    model[s].available = true;
    model[s].pending = false;
  };

  // Start-up: every shard asks for its first refill.
  request(buf.ClaimRefills());
  ASSERT_EQ(refill_queue.size(), shards);

  for (int step = 0; step < 400; ++step) {
    SCOPED_TRACE("step " + std::to_string(step));
    int op = uni(0, 99);
    if (op < 30) {
      // Enqueue committed: a new READY row, then the window is offered it.
      size_t s = static_cast<size_t>(uni(0, static_cast<int>(shards) - 1));
      ReadyKey k = Key(uni(0, 3), uni(0, 3), next_row++);
      model[s].ready.insert(k);
      buf.OnReady(s, k);
    } else if (op < 55) {
      // A dequeue.
      size_t count = static_cast<size_t>(uni(1, 6));
      std::vector<size_t> want_refill;
      std::vector<OrderKey> deliverable = model.Deliverable();
      bool blocked = false;
      auto taken = TakeFrom(buf, count, &want_refill, &blocked);
      ASSERT_LE(taken.size(), count);
      ASSERT_LE(taken.size(), deliverable.size());
      for (size_t i = 0; i < taken.size(); ++i) {
        const auto& t = taken[i];
        OrderKey got = t.key.ToOrderKey(ShardId(static_cast<uint32_t>(t.shard)));
        ASSERT_EQ(got, deliverable[i])
            << "item " << i << " of the take: got " << Describe(t.key) << "@" << t.shard
            << ", the best deliverable is row " << deliverable[i].id.row.value() << "@"
            << deliverable[i].id.shard.value();
        model[t.shard].reserved.insert(t.key.row.value());
        in_flight.push_back({t.shard, t.key});
      }
      // A shard can only block the merge if it is available and its window is empty
      // (whether it is also incomplete is the buffer's business: e.g. a window that
      // lost keys to eviction and then had the rest taken is empty, incomplete and
      // blocking even if every READY row of its shard is reserved).
      bool model_blocked = false;
      for (size_t s = 0; s < shards; ++s) {
        if (model[s].available && buf.WindowSize(s) == 0) model_blocked = true;
      }
      if (taken.size() < count && taken.size() < deliverable.size()) {
        ASSERT_TRUE(model_blocked)
            << "Take stopped at " << taken.size() << " of " << count << " with "
            << deliverable.size() << " deliverable and no empty window";
        ASSERT_TRUE(blocked) << "stopped early without reporting it";
      }
      if (taken.size() == count) {
        ASSERT_FALSE(blocked) << "got everything asked for";
      }
      if (blocked) {
        ASSERT_TRUE(model_blocked)
            << "blocked, but no available shard has an empty window";
      }
      if (!blocked && taken.size() < count) {
        ASSERT_EQ(taken.size(), deliverable.size()) << "short and not blocked";
      }
      request(want_refill);
    } else if (op < 70) {
      // A claim finishes.
      if (in_flight.empty()) continue;
      size_t i = static_cast<size_t>(uni(0, static_cast<int>(in_flight.size()) - 1));
      auto [s, k] = in_flight[i];
      in_flight.erase(in_flight.begin() + static_cast<std::ptrdiff_t>(i));
      model[s].reserved.erase(k.row.value());
      buf.Unreserve(s, k.row);
      if (uni(0, 3) == 0) {
        // The claim failed: the row is still READY; the worker offers it again.
        buf.OnReady(s, k);
      } else {
        model[s].ready.erase(k);  // leased
      }
    } else if (op < 85) {
      // A requested refill lands (or fails).
      if (refill_queue.empty()) continue;
      size_t i = static_cast<size_t>(uni(0, static_cast<int>(refill_queue.size()) - 1));
      size_t s = refill_queue[i];
      refill_queue.erase(refill_queue.begin() + static_cast<std::ptrdiff_t>(i));
      if (uni(0, 9) == 0) {
        buf.RefillFailed(s);
        model[s].available = false;
        model[s].pending = false;
      } else {
        refill(s);
      }
    } else if (op < 90) {
      // An unrequested refill (e.g. start-up recovery or a periodic resync).
      refill(static_cast<size_t>(uni(0, static_cast<int>(shards) - 1)));
    } else if (op < 95) {
      // A READY, unreserved row goes away (purge).
      size_t s = static_cast<size_t>(uni(0, static_cast<int>(shards) - 1));
      std::vector<ReadyKey> candidates;
      for (const ReadyKey& k : model[s].ready) {
        if (!model[s].reserved.contains(k.row.value())) candidates.push_back(k);
      }
      if (candidates.empty()) continue;
      ReadyKey k = candidates[static_cast<size_t>(
          uni(0, static_cast<int>(candidates.size()) - 1))];
      model[s].ready.erase(k);
      buf.OnRemoved(s, k.row);
    } else {
      request(buf.ClaimRefills());
    }
    for (size_t s = 0; s < shards; ++s) ASSERT_LE(buf.WindowSize(s), capacity);
    if (::testing::Test::HasFatalFailure()) return;
  }

  // Quiesce: answer every refill until no shard wants one; then a take returns
  // every deliverable item in order.
  for (int round = 0; round < 1000; ++round) {
    for (auto [s, k] : in_flight) {
      model[s].reserved.erase(k.row.value());
      model[s].ready.erase(k);
      buf.Unreserve(s, k.row);
    }
    in_flight.clear();
    for (size_t s : refill_queue) refill(s);
    refill_queue.clear();
    std::vector<size_t> want_refill;
    std::vector<OrderKey> deliverable = model.Deliverable();
    auto taken = TakeFrom(buf, 1000, &want_refill);
    ASSERT_LE(taken.size(), deliverable.size());
    for (size_t i = 0; i < taken.size(); ++i) {
      ASSERT_EQ(taken[i].key.ToOrderKey(ShardId(static_cast<uint32_t>(taken[i].shard))),
                deliverable[i]);
      model[taken[i].shard].reserved.insert(taken[i].key.row.value());
      in_flight.push_back({taken[i].shard, taken[i].key});
    }
    request(want_refill);
    if (::testing::Test::HasFatalFailure()) return;
    if (taken.size() == deliverable.size() && refill_queue.empty()) {
      ASSERT_TRUE(model.Deliverable().empty());
      return;
    }
  }
  FAIL() << "the buffer never drained";
}

TEST(TopicBufferRandomizedTest, TakeAlwaysReturnsTheBestDeliverableItems) {
  for (uint64_t seed = 1; seed <= 200; ++seed) {
    RunRandomized(seed);
    if (::testing::Test::HasFatalFailure()) return;
  }
}

}  // namespace
}  // namespace shardq::prefetch
