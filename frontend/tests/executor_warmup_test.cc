// Unit tests of frontend/executor_warmup: the warm-up grows gRPC's default executor to
// its bound, which is what keeps shardqd's thread count independent of its load
// history (tests/threads_test.cc checks the server's count).

#include "frontend/executor_warmup.h"

#include <gtest/gtest.h>

namespace shardq::frontend {
namespace {

TEST(GrowGrpcExecutorTest, ReachesGrpcsBound) {
  const ExecutorWarmup warmup = GrowGrpcExecutor();
  EXPECT_EQ(warmup.threads, GrpcExecutorBound());
  EXPECT_FALSE(warmup.timed_out);
  EXPECT_GE(warmup.bursts, 1);
}

TEST(GrowGrpcExecutorTest, StopsAfterItsBurstsWhenTheTargetIsOutOfReach) {
  // gRPC stops at its bound, so a target above it is never reached: every burst is
  // fired, and the executor is left at the bound.
  const ExecutorWarmup warmup = GrowGrpcExecutor(GrpcExecutorBound() + 1, 5);
  EXPECT_EQ(warmup.bursts, 5);
  EXPECT_EQ(warmup.threads, GrpcExecutorBound());
  EXPECT_FALSE(warmup.timed_out);
}

}  // namespace
}  // namespace shardq::frontend
