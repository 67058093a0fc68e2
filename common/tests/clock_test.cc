#include "common/clock.h"

#include <gtest/gtest.h>

#include <chrono>

namespace shardq {
namespace {

using std::chrono::system_clock;

// Now() rounds the real time down and NowRoundedUp() up, each to a whole millisecond:
// a deadline is due once Now() reaches it, and a due time counted from
// NowRoundedUp() plus a delay is never before the real time plus that delay.
TEST(SystemClockTest, NowRoundsDownAndNowRoundedUpRoundsUp) {
  SystemClock& clock = SystemClock::Instance();
  for (int i = 0; i < 1000; ++i) {
    const auto before = system_clock::now();
    const Time down = clock.Now();
    const Time up = clock.NowRoundedUp();
    const auto after = system_clock::now();
    EXPECT_LE(down, after);
    EXPECT_GE(down, std::chrono::floor<Duration>(before));
    EXPECT_GE(up, before);
    EXPECT_LE(up, std::chrono::ceil<Duration>(after));
  }
}

// DelayFrom keeps the second read within a millisecond of the first, whatever the
// clock did in between.
TEST(DelayFromTest, TheRoundedUpMillisecondWithinOneOfNow) {
  FakeClock clock;
  const Time t = clock.Now();
  EXPECT_EQ(DelayFrom(clock, t), t);  // read on a whole millisecond
  clock.SetBetweenMilliseconds(true);
  EXPECT_EQ(DelayFrom(clock, t), t + Duration(1));
  clock.Advance(Duration(3));  // three milliseconds began after `t` was read
  EXPECT_EQ(DelayFrom(clock, t), t + Duration(1));
  EXPECT_EQ(DelayFrom(clock, t + Duration(10)), t + Duration(10));  // stepped back
}

TEST(FakeClockTest, WholeMillisecondsUnlessToldOtherwise) {
  FakeClock clock;
  const Time t = clock.Now();
  EXPECT_EQ(clock.NowRoundedUp(), t);
  clock.SetBetweenMilliseconds(true);
  EXPECT_EQ(clock.Now(), t);
  EXPECT_EQ(clock.NowRoundedUp(), t + Duration(1));
  clock.Advance(Duration(5));
  EXPECT_EQ(clock.NowRoundedUp(), t + Duration(6));
  clock.SetBetweenMilliseconds(false);
  EXPECT_EQ(clock.NowRoundedUp(), t + Duration(5));
}

}  // namespace
}  // namespace shardq
