#include "shard_worker/release_schedule.h"

#include <gtest/gtest.h>

#include <vector>

#include "shard_worker/latency_estimate.h"

namespace shardq::shard_worker {
namespace {

const Time kT0 = FromUnixMillis(1'800'000'000'000);

ItemTransition Delayed(uint64_t row, Time due) {
  return {RowId(row), "ns", "t", 0, ItemState::kDelayed, ItemState::kDelayed, due};
}

std::vector<uint64_t> Rows(const std::vector<ItemTransition>& ts) {
  std::vector<uint64_t> out;
  for (const ItemTransition& t : ts) out.push_back(t.row.value());
  return out;
}

TEST(ReleaseScheduleTest, ReadsEachPartOfTheWindowOnce) {
  ReleaseSchedule s(Duration(100), 10);
  store::Lookahead first = s.Window(kT0);
  EXPECT_EQ(first.after, kT0);
  EXPECT_EQ(first.until, kT0 + Duration(100));
  EXPECT_EQ(first.limit, 10u);
  s.Learned(first, std::vector{Delayed(1, kT0 + Duration(40))});
  store::Lookahead next = s.Window(kT0 + Duration(30));
  EXPECT_EQ(next.after, kT0 + Duration(100));  // not read again
  EXPECT_EQ(next.until, kT0 + Duration(130));
  EXPECT_EQ(s.scheduled(), 1u);
}

TEST(ReleaseScheduleTest, LeavesRecentlyReleasedItemsToClaims) {
  ReleaseSchedule s(Duration(100), 10);
  EXPECT_EQ(s.Window(kT0).delayed_due_by, std::nullopt);  // nothing scheduled yet
  s.Learned(s.Window(kT0), {});                           // read (kT0, kT0 + 100]
  // Due by kT0: never scheduled, promoted as usual; later: released, left for 100 ms.
  EXPECT_EQ(s.Window(kT0 + Duration(50)).delayed_due_by, kT0);
  s.Learned(s.Window(kT0 + Duration(90)), {});  // read on: (kT0 + 100, kT0 + 190]
  EXPECT_EQ(s.Window(kT0 + Duration(150)).delayed_due_by, kT0 + Duration(50));
  s.Clear();
  EXPECT_EQ(s.Window(kT0).delayed_due_by, std::nullopt);
}

// A promotion past the part read ahead (it came late, or the clock jumped): nothing
// due after that part was scheduled, so nothing due may be left to claims; the reads
// then start again from where this one reads. (A manual clock's jump left an item
// DELAYED for good before this.)
TEST(ReleaseScheduleTest, APromotionPastThePartReadMovesEverythingDue) {
  ReleaseSchedule s(Duration(100), 10);
  s.Learned(s.Window(kT0), {});  // read (kT0, kT0 + 100]
  store::Lookahead late = s.Window(kT0 + Duration(5'000));
  EXPECT_EQ(late.delayed_due_by, std::nullopt);
  EXPECT_EQ(late.after, kT0 + Duration(5'000));
  s.Learned(late, {});
  EXPECT_EQ(s.Window(kT0 + Duration(5'050)).delayed_due_by, kT0 + Duration(5'000));
}

TEST(ReleaseScheduleTest, SettleDropsReleasedItemsThePromotionShouldHaveMoved) {
  ReleaseSchedule s(Duration(100), 10);
  s.Learned(s.Window(kT0),
            std::vector{Delayed(1, kT0 + Duration(10)), Delayed(2, kT0 + Duration(60))});
  s.TakeDue(kT0 + Duration(60));
  // A promotion at +150 moved what was due by +50; row 1 is still listed: stale.
  EXPECT_EQ(s.Settle(kT0 + Duration(50)), kT0 + Duration(60));
  EXPECT_EQ(s.released(), 1u);
  EXPECT_FALSE(s.Forget(RowId(1)));
  EXPECT_EQ(s.Settle(kT0 + Duration(60)), std::nullopt);
}

TEST(ReleaseScheduleTest, NextPromotionAfterAPromotion) {
  ReleaseSchedule s(Duration(100), 10);
  store::Promotion done;
  EXPECT_EQ(s.NextPromotion(s.Window(kT0), done, kT0), std::nullopt);  // nothing left
  done.next_due = kT0;  // more were due than one call moves: at once
  EXPECT_EQ(s.NextPromotion(s.Window(kT0), done, kT0), kT0);
  done.next_due = done.next_expiry = kT0 + Duration(500);  // a lease ends: then
  EXPECT_EQ(s.NextPromotion(s.Window(kT0), done, kT0), kT0 + Duration(500));
  done.next_expiry.reset();  // a DELAYED item not read yet: a lookahead before it
  EXPECT_EQ(s.NextPromotion(s.Window(kT0), done, kT0), kT0 + Duration(400));

  // A released item it left to claims (due at +20, cutoff +0): a grace after it.
  store::Lookahead first = s.Window(kT0);
  s.Learned(first, std::vector{Delayed(1, kT0 + Duration(20))});
  s.TakeDue(kT0 + Duration(20));
  store::Lookahead look = s.Window(kT0 + Duration(30));
  ASSERT_EQ(look.delayed_due_by, kT0);
  EXPECT_EQ(s.NextPromotion(look, done, kT0 + Duration(30)), kT0 + Duration(120));
  done.next_due.reset();
  EXPECT_EQ(s.NextPromotion(look, done, kT0 + Duration(30)), kT0 + Duration(120));
}

// A DELAYED item already read ahead is promoted for when half the window is used;
// a lease that ends before that is promoted at its end all the same.
TEST(ReleaseScheduleTest, ALeasesEndIsNotPostponedByADelayedItemReadAhead) {
  ReleaseSchedule s(Duration(100), 10);
  s.Learned(s.Window(kT0), std::vector{Delayed(1, kT0 + Duration(10))});
  store::Promotion done;
  done.next_due = kT0 + Duration(10);
  EXPECT_EQ(s.NextPromotion(s.Window(kT0), done, kT0), kT0 + Duration(50));
  done.next_expiry = kT0 + Duration(20);
  EXPECT_EQ(s.NextPromotion(s.Window(kT0), done, kT0), kT0 + Duration(20));
}

TEST(ReleaseScheduleTest, AFullAnswerIsReadAgainFromItsLastMillisecond) {
  ReleaseSchedule s(Duration(100), 2);
  store::Lookahead asked = s.Window(kT0);
  s.Learned(asked,
            std::vector{Delayed(1, kT0 + Duration(10)), Delayed(2, kT0 + Duration(20))});
  // Row 3, also due at +20, may not have been read.
  store::Lookahead again = s.Window(kT0);
  EXPECT_EQ(again.after, kT0 + Duration(19));
  s.Learned(again,
            std::vector{Delayed(2, kT0 + Duration(20)), Delayed(3, kT0 + Duration(20))});
  EXPECT_EQ(s.scheduled(), 3u);  // row 2 once
}

TEST(ReleaseScheduleTest, ReleasesAtTheDueTimeInOrder) {
  ReleaseSchedule s(Duration(100), 10);
  s.Learned(s.Window(kT0),
            std::vector{Delayed(2, kT0 + Duration(20)), Delayed(1, kT0 + Duration(10))});
  EXPECT_EQ(s.NextRelease(kT0), kT0 + Duration(10));
  EXPECT_TRUE(s.TakeDue(kT0 + Duration(9)).empty());
  EXPECT_EQ(Rows(s.TakeDue(kT0 + Duration(20))), (std::vector<uint64_t>{1, 2}));
  EXPECT_EQ(s.NextRelease(kT0), std::nullopt);
  EXPECT_EQ(s.released(), 2u);
  ItemTransition other = Delayed(3, kT0 + Duration(30));
  other.topic = "u";
  s.Learned(s.Window(kT0 + Duration(20)), std::vector{other});
  EXPECT_TRUE(s.ReleasedOf("ns", "u").empty());  // scheduled, not released yet
  EXPECT_EQ(s.TakeDue(kT0 + Duration(30)).size(), 1u);
  EXPECT_EQ(s.ReleasedOf("ns", "t").size(), 2u);
  std::vector<ReadyKey> u = s.ReleasedOf("ns", "u");
  ASSERT_EQ(u.size(), 1u);
  EXPECT_EQ(u[0].row, RowId(3));
  EXPECT_EQ(u[0].deliver_after, kT0 + Duration(30));
  EXPECT_TRUE(s.Forget(RowId(1)));   // released: it counted as READY
  EXPECT_FALSE(s.Forget(RowId(1)));  // once
}

TEST(ReleaseScheduleTest, ReleasesAtMostOncePerGap) {
  ReleaseSchedule s(Duration(100), 10, /*gap=*/Duration(5));
  s.Learned(s.Window(kT0),
            std::vector{Delayed(1, kT0 + Duration(10)), Delayed(2, kT0 + Duration(11)),
                        Delayed(3, kT0 + Duration(14)), Delayed(4, kT0 + Duration(40))});
  // The first after a quiet spell goes out at its due time...
  EXPECT_EQ(s.NextRelease(kT0), kT0 + Duration(10));
  EXPECT_EQ(Rows(s.TakeDue(kT0 + Duration(10))), (std::vector<uint64_t>{1}));
  // ...the ones falling due within the gap after it wait for its end, together.
  EXPECT_EQ(s.NextRelease(kT0 + Duration(10)), kT0 + Duration(15));
  EXPECT_TRUE(s.TakeDue(kT0 + Duration(14)).empty());
  EXPECT_EQ(Rows(s.TakeDue(kT0 + Duration(15))), (std::vector<uint64_t>{2, 3}));
  // Quiet again: no wait.
  EXPECT_EQ(s.NextRelease(kT0 + Duration(15)), kT0 + Duration(40));
  EXPECT_EQ(Rows(s.TakeDue(kT0 + Duration(40))), (std::vector<uint64_t>{4}));
}

// The release lead: items go out that long before their due time (their claims then
// lease them from it); the lead stays within [0, max_lead], and max_lead within half
// the lookahead, so a release never passes the part of the window read. A lead not
// set again within a quiet second falls back to 0.
TEST(ReleaseScheduleTest, ReleasesALeadBeforeTheDueTime) {
  ReleaseSchedule s(Duration(100), 10, /*gap=*/Duration(5), /*max_lead=*/Duration(20));
  s.Learned(s.Window(kT0),
            std::vector{Delayed(1, kT0 + Duration(30)), Delayed(2, kT0 + Duration(40))});
  EXPECT_EQ(s.lead(kT0), Duration(0));  // until the worker has measured its claims
  EXPECT_EQ(s.NextRelease(kT0), kT0 + Duration(30));
  s.SetLead(Duration(8), kT0);
  EXPECT_EQ(s.NextRelease(kT0), kT0 + Duration(22));
  EXPECT_TRUE(s.TakeDue(kT0 + Duration(21)).empty());
  EXPECT_EQ(Rows(s.TakeDue(kT0 + Duration(22))), (std::vector<uint64_t>{1}));
  EXPECT_EQ(s.released(), 1u);
  s.SetLead(Duration(50), kT0);  // capped at max_lead
  EXPECT_EQ(s.lead(kT0), Duration(20));
  EXPECT_EQ(s.NextRelease(kT0 + Duration(22)), kT0 + Duration(27));  // the gap first
  EXPECT_EQ(Rows(s.TakeDue(kT0 + Duration(27))), (std::vector<uint64_t>{2}));
  s.SetLead(Duration(-3), kT0);
  EXPECT_EQ(s.lead(kT0), Duration(0));

  s.SetLead(Duration(10), kT0);
  EXPECT_EQ(s.lead(kT0 + LatencyEstimate::kQuiet), Duration(10));
  EXPECT_EQ(s.lead(kT0 + LatencyEstimate::kQuiet + Duration(1)), Duration(0));
  const Time later = kT0 + Duration(2'000);
  ASSERT_TRUE(s.MaybeAdd(Delayed(3, kT0 + Duration(60))));  // inside the part read
  EXPECT_EQ(s.NextRelease(later), kT0 + Duration(60));      // due already; no lead
  EXPECT_EQ(Rows(s.TakeDue(later)), (std::vector<uint64_t>{3}));

  ReleaseSchedule wide(Duration(30), 10, Duration(0), /*max_lead=*/Duration(20));
  wide.SetLead(Duration(20), kT0);
  EXPECT_EQ(wide.lead(kT0), Duration(15));  // half the lookahead
}

TEST(LatencyEstimateTest, BoundsTheSmoothedLatencyByTwiceItsDeviation) {
  LatencyEstimate e;
  Time at = kT0;
  auto add = [&](int ms) { e.Add(Duration(ms), at += Duration(1)); };
  EXPECT_EQ(e.Bound(), Duration(0));
  add(8);  // the first sample: mean 8, deviation 4
  EXPECT_EQ(e.Bound(), Duration(16));
  for (int i = 0; i < 200; ++i) add(4);
  EXPECT_EQ(e.Bound(), Duration(4));  // steady: the deviation has gone
  for (int i = 0; i < 200; ++i) add(i % 2 == 0 ? 2 : 6);
  // Mean about 4, mean deviation about 2: the bound covers the slower half.
  EXPECT_GE(e.Bound(), Duration(7));
  EXPECT_LE(e.Bound(), Duration(9));
  // After a quiet spell the next sample starts it afresh.
  at += LatencyEstimate::kQuiet + Duration(1);
  add(2);
  EXPECT_EQ(e.Bound(), Duration(4));
}

// The system clock stepped back after a release: the gap is counted from the new time,
// not from a release "in the future" (which would hold releases back by the step).
TEST(ReleaseScheduleTest, AStepBackOfTheClockDoesNotHoldReleasesBack) {
  ReleaseSchedule s(Duration(100), 10, /*gap=*/Duration(5));
  s.Learned(s.Window(kT0), std::vector{Delayed(1, kT0 + Duration(10))});
  EXPECT_EQ(Rows(s.TakeDue(kT0 + Duration(10))), (std::vector<uint64_t>{1}));
  const Time back = kT0 - Duration(1'000);
  ASSERT_TRUE(s.MaybeAdd(Delayed(2, back + Duration(10))));  // inside the part read
  EXPECT_EQ(s.NextRelease(back), back + Duration(10));
  EXPECT_EQ(Rows(s.TakeDue(back + Duration(10))), (std::vector<uint64_t>{2}));
}

// More rows share one due millisecond than a read returns (a batch enqueued with one
// delay): a read cannot get past that millisecond, so the next promotion waits for it
// instead of coming at once and reading the same rows again (a busy loop before).
TEST(ReleaseScheduleTest, AReadStuckOnOneMillisecondWaitsForIt) {
  ReleaseSchedule s(Duration(100), 2);
  const Time at = kT0 + Duration(50);
  s.Learned(s.Window(kT0), std::vector{Delayed(1, at), Delayed(2, at)});
  store::Lookahead again = s.Window(kT0 + Duration(1));
  EXPECT_EQ(again.after, at - Duration(1));
  s.Learned(again, std::vector{Delayed(1, at), Delayed(2, at)});  // no further
  EXPECT_EQ(s.PromoteAt(at), at);
  EXPECT_EQ(s.PromoteAt(kT0 + Duration(10)), at);
  // At that millisecond the promotion moves every row due, and reads on from there.
  store::Lookahead then = s.Window(at);
  EXPECT_EQ(then.delayed_due_by, std::nullopt);
  s.Learned(then, {});
  EXPECT_EQ(s.PromoteAt(at + Duration(500)), at + Duration(400));
}

TEST(ReleaseScheduleTest, ARowLeavingDelayedBeforeItsTimeIsNotReleased) {
  ReleaseSchedule s(Duration(100), 10);
  s.Learned(s.Window(kT0), std::vector{Delayed(1, kT0 + Duration(10))});
  EXPECT_FALSE(s.Forget(RowId(1)));  // cancelled, say: was not released
  EXPECT_TRUE(s.TakeDue(kT0 + Duration(50)).empty());
}

TEST(ReleaseScheduleTest, NewDelayedRowsAreScheduledOnlyInsideTheReadWindow) {
  ReleaseSchedule s(Duration(100), 10);
  s.Learned(s.Window(kT0), {});
  s.MaybeAdd(Delayed(1, kT0 + Duration(100)));  // read already: a read would miss it
  s.MaybeAdd(Delayed(2, kT0 + Duration(101)));  // the next read finds it
  EXPECT_EQ(s.scheduled(), 1u);
  EXPECT_EQ(Rows(s.TakeDue(kT0 + Duration(200))), (std::vector<uint64_t>{1}));
}

TEST(ReleaseScheduleTest, PromotesEarlyToReadAheadAndLateForWhatIsScheduled) {
  ReleaseSchedule s(Duration(100), 10);
  EXPECT_EQ(s.PromoteAt(kT0 + Duration(500)), kT0 + Duration(400));
  s.Learned(s.Window(kT0), {});  // read up to +100
  EXPECT_EQ(s.PromoteAt(kT0 + Duration(500)), kT0 + Duration(400));
  // Scheduled: when half the window is used, to read on in time.
  EXPECT_EQ(s.PromoteAt(kT0 + Duration(10)), kT0 + Duration(50));
  EXPECT_EQ(s.PromoteAt(kT0 + Duration(80)), kT0 + Duration(50));
}

TEST(ReleaseScheduleTest, ALookaheadOfZeroIsOff) {
  ReleaseSchedule s(Duration(0), 10);
  EXPECT_EQ(s.Window(kT0).limit, 0u);
  s.Learned(s.Window(kT0), std::vector{Delayed(1, kT0 + Duration(10))});
  s.MaybeAdd(Delayed(2, kT0));
  EXPECT_EQ(s.scheduled(), 0u);
  EXPECT_EQ(s.PromoteAt(kT0 + Duration(10)), kT0 + Duration(10));
}

TEST(ReleaseScheduleTest, ClearForgetsEverything) {
  ReleaseSchedule s(Duration(100), 10);
  s.Learned(s.Window(kT0),
            std::vector{Delayed(1, kT0 + Duration(10)), Delayed(2, kT0 + Duration(20))});
  s.TakeDue(kT0 + Duration(10));
  s.Clear();
  EXPECT_EQ(s.scheduled(), 0u);
  EXPECT_EQ(s.released(), 0u);
  EXPECT_EQ(s.Window(kT0).after, kT0);
}

}  // namespace
}  // namespace shardq::shard_worker
