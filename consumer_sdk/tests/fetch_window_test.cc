// FetchWindow: the Worker's fetch-ahead window, step by step (no server, no threads).

#include "consumer_sdk/src/fetch_window.h"

#include <gtest/gtest.h>

namespace shardq::sdk {
namespace {

TEST(FetchWindowTest, StartsAtItsMinimumAndAsksWhenHalfIsFree) {
  FetchWindow w(5, 40);
  EXPECT_EQ(w.size(), 5u);
  EXPECT_EQ(w.Free(0), 5u);
  EXPECT_EQ(w.Free(3), 2u);
  EXPECT_EQ(w.Free(7), 0u) << "fuller than its size: nothing free, no underflow";
  EXPECT_EQ(w.RefillAt(), 3u) << "half, rounded up";
}

TEST(FetchWindowTest, DoublesUpToItsMaximumWhileIdleExecutorsMeetFullAnswers) {
  FetchWindow w(4, 20);
  w.OnAnswer(/*full=*/true, /*waiting=*/0);  // the first answer: nothing ran before it
  EXPECT_EQ(w.size(), 4u);
  for (size_t expected : {8u, 16u, 20u, 20u}) {
    w.ExecutorIdled();
    w.OnAnswer(/*full=*/true, /*waiting=*/0);
    EXPECT_EQ(w.size(), expected);
  }
}

TEST(FetchWindowTest, DoesNotGrowWithoutBothAnIdleExecutorAndAFullAnswer) {
  FetchWindow w(4, 64);
  w.OnAnswer(/*full=*/true, 0);  // e.g. the first answer: no executor has run yet
  EXPECT_EQ(w.size(), 4u);
  w.ExecutorIdled();
  w.OnAnswer(/*full=*/false, 0);  // the topic ran dry: a bigger window brings nothing
  EXPECT_EQ(w.size(), 4u);
  w.OnAnswer(/*full=*/true, 0);  // that idle spell was counted for the last answer
  EXPECT_EQ(w.size(), 4u);
}

TEST(FetchWindowTest, AnExecutorIdleWhileTheTopicRanDryDoesNotCount) {
  FetchWindow w(4, 64);
  w.OnAnswer(/*full=*/false, 0);  // the topic ran dry
  w.ExecutorIdled();              // so this executor waits on the producers
  w.OnAnswer(/*full=*/true, 0);   // a burst comes: the handlers may well be slow
  EXPECT_EQ(w.size(), 4u);
  w.ExecutorIdled();  // now the server had more: the executor waited on the fetch
  w.OnAnswer(/*full=*/true, 0);
  EXPECT_EQ(w.size(), 8u);
}

TEST(FetchWindowTest, TasksLeftWaitingShrinkItByAsManyDownToItsMinimum) {
  FetchWindow w(4, 64);
  w.OnAnswer(true, 0);
  for (int i = 0; i < 4; ++i) {
    w.ExecutorIdled();
    w.OnAnswer(true, 0);
  }
  ASSERT_EQ(w.size(), 64u);
  w.ExecutorIdled();
  w.OnAnswer(/*full=*/true, /*waiting=*/10);  // waiting tasks win over an idle one
  EXPECT_EQ(w.size(), 54u);
  w.OnAnswer(true, 100);
  EXPECT_EQ(w.size(), 4u);
  w.OnAnswer(true, 1);
  EXPECT_EQ(w.size(), 4u);
}

TEST(FetchWindowTest, AMaximumBelowTheMinimumIsAFixedWindow) {
  FetchWindow w(8, 2);
  w.OnAnswer(true, 0);
  w.ExecutorIdled();
  w.OnAnswer(true, 0);
  EXPECT_EQ(w.size(), 8u);
  FetchWindow zero(0, 0);
  EXPECT_EQ(zero.size(), 1u) << "at least one task is fetched";
  EXPECT_EQ(zero.RefillAt(), 1u);
}

}  // namespace
}  // namespace shardq::sdk
