// CircuitBreaker with a FakeClock: time only moves through Advance(), nothing sleeps.

#include "shard_worker/circuit_breaker.h"

#include <gtest/gtest.h>

#include <iterator>
#include <string>

#include "common/clock.h"

namespace shardq::shard_worker {
namespace {

using std::chrono::milliseconds;

constexpr Duration kFast{10};

BreakerOptions TestOptions() {
  BreakerOptions o;
  o.window = Duration(10'000);
  o.min_samples = 5;
  o.failure_ratio = 0.5;
  o.slow_call = Duration(2'000);
  o.cooldown = Duration(500);
  o.max_cooldown = Duration(10'000);
  return o;
}

// Drives a closed breaker open with min_samples failures.
void TripOpen(CircuitBreaker& b, const BreakerOptions& o) {
  for (size_t i = 0; i < o.min_samples; ++i) b.Record(false, kFast);
  ASSERT_EQ(b.state(), BreakerState::kOpen);
}

TEST(CircuitBreakerTest, StateNames) {
  EXPECT_EQ(std::string(BreakerStateName(BreakerState::kClosed)), "closed");
  EXPECT_EQ(std::string(BreakerStateName(BreakerState::kOpen)), "open");
  EXPECT_EQ(std::string(BreakerStateName(BreakerState::kHalfOpen)), "half-open");
}

TEST(CircuitBreakerTest, StartsClosedAndStaysClosedUnderSuccesses) {
  FakeClock clock;
  CircuitBreaker b(clock, TestOptions());
  EXPECT_EQ(b.state(), BreakerState::kClosed);
  EXPECT_TRUE(b.AllowsTraffic());
  for (int i = 0; i < 1000; ++i) {
    b.Record(true, kFast);
    clock.Advance(milliseconds(7));
  }
  EXPECT_EQ(b.state(), BreakerState::kClosed);
  EXPECT_TRUE(b.AllowsTraffic());
  EXPECT_FALSE(b.TakeProbe());
  EXPECT_EQ(b.TimeToProbe(), Duration::max());
}

TEST(CircuitBreakerTest, NeedsMinSamplesBeforeOpening) {
  FakeClock clock;
  BreakerOptions o = TestOptions();
  CircuitBreaker b(clock, o);
  // All bad, but fewer than min_samples: stays closed.
  for (size_t i = 0; i + 1 < o.min_samples; ++i) {
    b.Record(false, kFast);
    EXPECT_EQ(b.state(), BreakerState::kClosed) << "after " << i + 1 << " failures";
  }
  b.Record(false, kFast);
  EXPECT_EQ(b.state(), BreakerState::kOpen);
  EXPECT_FALSE(b.AllowsTraffic());
}

TEST(CircuitBreakerTest, OpensExactlyAtFailureRatio) {
  FakeClock clock;
  BreakerOptions o = TestOptions();
  o.min_samples = 10;
  o.failure_ratio = 0.5;
  CircuitBreaker b(clock, o);
  // 6 good + 4 bad = 10 samples at 40%: closed.
  for (int i = 0; i < 6; ++i) b.Record(true, kFast);
  for (int i = 0; i < 4; ++i) b.Record(false, kFast);
  EXPECT_EQ(b.state(), BreakerState::kClosed);
  // 6 good + 5 bad = 11 samples at 45%: closed.
  b.Record(false, kFast);
  EXPECT_EQ(b.state(), BreakerState::kClosed);
  // 6 good + 6 bad = 12 samples at exactly 50%: "reaches" the ratio, opens.
  b.Record(false, kFast);
  EXPECT_EQ(b.state(), BreakerState::kOpen);
}

TEST(CircuitBreakerTest, BelowRatioStaysClosedForever) {
  FakeClock clock;
  BreakerOptions o = TestOptions();
  o.failure_ratio = 0.5;
  CircuitBreaker b(clock, o);
  // Alternate good, good, bad: one third bad, never reaches one half.
  for (int i = 0; i < 300; ++i) {
    b.Record(i % 3 != 2, kFast);
    clock.Advance(milliseconds(50));
    ASSERT_EQ(b.state(), BreakerState::kClosed) << "at sample " << i;
  }
}

TEST(CircuitBreakerTest, SlowCallsCountAsBad) {
  FakeClock clock;
  BreakerOptions o = TestOptions();
  CircuitBreaker b(clock, o);
  // Successful but slow: every one is bad.
  for (size_t i = 0; i + 1 < o.min_samples; ++i) b.Record(true, o.slow_call + kFast);
  EXPECT_EQ(b.state(), BreakerState::kClosed);
  b.Record(true, o.slow_call * 3);
  EXPECT_EQ(b.state(), BreakerState::kOpen);
}

TEST(CircuitBreakerTest, CallsJustUnderSlowThresholdAreGood) {
  FakeClock clock;
  BreakerOptions o = TestOptions();
  CircuitBreaker b(clock, o);
  for (int i = 0; i < 100; ++i) b.Record(true, o.slow_call - Duration(1));
  EXPECT_EQ(b.state(), BreakerState::kClosed);
}

TEST(CircuitBreakerTest, MixOfErrorsAndSlowCallsOpens) {
  FakeClock clock;
  BreakerOptions o = TestOptions();
  o.min_samples = 4;
  CircuitBreaker b(clock, o);
  b.Record(true, kFast);
  b.Record(false, kFast);
  b.Record(true, kFast);
  EXPECT_EQ(b.state(), BreakerState::kClosed);
  b.Record(true, o.slow_call * 2);  // 2 bad of 4 = 50%
  EXPECT_EQ(b.state(), BreakerState::kOpen);
}

TEST(CircuitBreakerTest, OldSamplesFallOutOfTheWindow) {
  FakeClock clock;
  BreakerOptions o = TestOptions();
  CircuitBreaker b(clock, o);
  // min_samples - 1 failures...
  for (size_t i = 0; i + 1 < o.min_samples; ++i) b.Record(false, kFast);
  // ...that are older than the window by the time the next one arrives.
  clock.Advance(o.window + milliseconds(1));
  b.Record(false, kFast);
  EXPECT_EQ(b.state(), BreakerState::kClosed) << "the old failures should be forgotten";
  // Fill up again within the window: now it opens.
  for (size_t i = 0; i + 2 < o.min_samples; ++i) b.Record(false, kFast);
  EXPECT_EQ(b.state(), BreakerState::kClosed);
  b.Record(false, kFast);
  EXPECT_EQ(b.state(), BreakerState::kOpen);
}

TEST(CircuitBreakerTest, OldSuccessesFallOutToo) {
  FakeClock clock;
  BreakerOptions o = TestOptions();
  o.min_samples = 4;
  o.failure_ratio = 0.5;
  CircuitBreaker b(clock, o);
  // Many old successes would dilute the failures if they were still counted.
  for (int i = 0; i < 100; ++i) b.Record(true, kFast);
  clock.Advance(o.window + milliseconds(1));
  for (int i = 0; i < 3; ++i) b.Record(false, kFast);
  EXPECT_EQ(b.state(), BreakerState::kClosed);  // only 3 samples in the window
  b.Record(false, kFast);
  EXPECT_EQ(b.state(), BreakerState::kOpen);
}

TEST(CircuitBreakerTest, SamplesExactlyWindowOldAreStillCounted) {
  FakeClock clock;
  BreakerOptions o = TestOptions();
  CircuitBreaker b(clock, o);
  for (size_t i = 0; i + 1 < o.min_samples; ++i) b.Record(false, kFast);
  clock.Advance(o.window);  // exactly window old: not yet "older than" the window
  b.Record(false, kFast);
  EXPECT_EQ(b.state(), BreakerState::kOpen);
}

TEST(CircuitBreakerTest, OpenBreakerIgnoresRecords) {
  FakeClock clock;
  BreakerOptions o = TestOptions();
  CircuitBreaker b(clock, o);
  TripOpen(b, o);
  for (int i = 0; i < 50; ++i) b.Record(true, kFast);
  EXPECT_EQ(b.state(), BreakerState::kOpen);
  EXPECT_FALSE(b.AllowsTraffic());
  EXPECT_EQ(b.TimeToProbe(), o.cooldown);
}

TEST(CircuitBreakerTest, ProbeOnlyAfterCooldownAndOnlyOnce) {
  FakeClock clock;
  BreakerOptions o = TestOptions();
  CircuitBreaker b(clock, o);
  TripOpen(b, o);
  EXPECT_EQ(b.TimeToProbe(), o.cooldown);
  EXPECT_FALSE(b.TakeProbe());

  clock.Advance(o.cooldown - milliseconds(1));
  EXPECT_EQ(b.TimeToProbe(), milliseconds(1));
  EXPECT_FALSE(b.TakeProbe());
  EXPECT_EQ(b.state(), BreakerState::kOpen);

  clock.Advance(milliseconds(1));
  EXPECT_EQ(b.TimeToProbe(), Duration::zero());
  EXPECT_TRUE(b.TakeProbe());
  EXPECT_EQ(b.state(), BreakerState::kHalfOpen);
  EXPECT_FALSE(b.AllowsTraffic());

  // Only one probe at a time, however long it takes.
  EXPECT_FALSE(b.TakeProbe());
  clock.Advance(o.max_cooldown * 5);
  EXPECT_FALSE(b.TakeProbe());
  EXPECT_EQ(b.state(), BreakerState::kHalfOpen);
  EXPECT_EQ(b.TimeToProbe(), Duration::max());
}

TEST(CircuitBreakerTest, TimeToProbeNeverNegative) {
  FakeClock clock;
  BreakerOptions o = TestOptions();
  CircuitBreaker b(clock, o);
  TripOpen(b, o);
  clock.Advance(o.cooldown * 7);
  EXPECT_EQ(b.TimeToProbe(), Duration::zero());
  EXPECT_TRUE(b.TakeProbe());
}

TEST(CircuitBreakerTest, HalfOpenIgnoresRecords) {
  FakeClock clock;
  BreakerOptions o = TestOptions();
  CircuitBreaker b(clock, o);
  TripOpen(b, o);
  clock.Advance(o.cooldown);
  ASSERT_TRUE(b.TakeProbe());
  for (int i = 0; i < 20; ++i) b.Record(false, kFast);
  for (int i = 0; i < 20; ++i) b.Record(true, kFast);
  EXPECT_EQ(b.state(), BreakerState::kHalfOpen);
}

TEST(CircuitBreakerTest, SuccessfulProbeCloses) {
  FakeClock clock;
  BreakerOptions o = TestOptions();
  CircuitBreaker b(clock, o);
  TripOpen(b, o);
  clock.Advance(o.cooldown);
  ASSERT_TRUE(b.TakeProbe());
  b.ProbeResult(true);
  EXPECT_EQ(b.state(), BreakerState::kClosed);
  EXPECT_TRUE(b.AllowsTraffic());
  EXPECT_EQ(b.TimeToProbe(), Duration::max());
  EXPECT_FALSE(b.TakeProbe());

  // The failures that opened it are forgotten: it takes a full min_samples again.
  for (size_t i = 0; i + 1 < o.min_samples; ++i) b.Record(false, kFast);
  EXPECT_EQ(b.state(), BreakerState::kClosed);
  b.Record(false, kFast);
  EXPECT_EQ(b.state(), BreakerState::kOpen);
  // And the cool-down is back to the first one.
  EXPECT_EQ(b.TimeToProbe(), o.cooldown);
}

TEST(CircuitBreakerTest, ProbeResultOutsideHalfOpenIsIgnored) {
  FakeClock clock;
  BreakerOptions o = TestOptions();
  CircuitBreaker b(clock, o);
  b.ProbeResult(false);
  EXPECT_EQ(b.state(), BreakerState::kClosed);
  TripOpen(b, o);
  b.ProbeResult(true);  // no probe was taken
  EXPECT_EQ(b.state(), BreakerState::kOpen);
  EXPECT_EQ(b.TimeToProbe(), o.cooldown);
}

TEST(CircuitBreakerTest, FailedProbeReopensWithDoubledCooldownCapped) {
  FakeClock clock;
  BreakerOptions o = TestOptions();
  o.cooldown = Duration(500);
  o.max_cooldown = Duration(3'000);
  CircuitBreaker b(clock, o);
  TripOpen(b, o);

  const Duration expected[] = {Duration(500),   Duration(1'000), Duration(2'000),
                               Duration(3'000), Duration(3'000), Duration(3'000)};
  for (size_t round = 0; round < std::size(expected); ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    ASSERT_EQ(b.state(), BreakerState::kOpen);
    EXPECT_EQ(b.TimeToProbe(), expected[round]);
    clock.Advance(expected[round] - milliseconds(1));
    EXPECT_FALSE(b.TakeProbe());
    clock.Advance(milliseconds(1));
    ASSERT_TRUE(b.TakeProbe());
    EXPECT_EQ(b.state(), BreakerState::kHalfOpen);
    b.ProbeResult(false);
    EXPECT_EQ(b.state(), BreakerState::kOpen);
    EXPECT_FALSE(b.AllowsTraffic());
    EXPECT_FALSE(b.TakeProbe());
  }

  // A successful probe resets the cool-down to the first value.
  clock.Advance(o.max_cooldown);
  ASSERT_TRUE(b.TakeProbe());
  b.ProbeResult(true);
  EXPECT_EQ(b.state(), BreakerState::kClosed);
  TripOpen(b, o);
  EXPECT_EQ(b.TimeToProbe(), o.cooldown);
}

TEST(CircuitBreakerTest, CooldownStartsWhenTheProbeFails) {
  FakeClock clock;
  BreakerOptions o = TestOptions();
  CircuitBreaker b(clock, o);
  TripOpen(b, o);
  clock.Advance(o.cooldown);
  ASSERT_TRUE(b.TakeProbe());
  // The probe itself takes a long time; the next cool-down counts from its end.
  clock.Advance(milliseconds(5'000));
  b.ProbeResult(false);
  EXPECT_EQ(b.TimeToProbe(), o.cooldown * 2);
  clock.Advance(o.cooldown);
  EXPECT_FALSE(b.TakeProbe());
  EXPECT_EQ(b.TimeToProbe(), o.cooldown);
}

}  // namespace
}  // namespace shardq::shard_worker
