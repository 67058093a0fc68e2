// Unit tests of frontend/executor_warmup: the warm-up grows gRPC's default executor to
// its bound, which is what keeps shardqd's thread count independent of its load
// history (tests/threads_test.cc checks the server's count).

#include "frontend/executor_warmup.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <thread>

namespace shardq::frontend {
namespace {

int TwiceTheCores() {
  return 2 * static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

TEST(GrowGrpcExecutorTest, ReachesTwiceTheCores) {
  EXPECT_EQ(GrowGrpcExecutor(), TwiceTheCores());
}

TEST(GrowGrpcExecutorTest, GivesUpOnATargetAboveGrpcsBound) {
  // gRPC stops at twice the cores: the bursts run out, and the warm-up returns.
  EXPECT_EQ(GrowGrpcExecutor(TwiceTheCores() + 1, 2), TwiceTheCores());
}

}  // namespace
}  // namespace shardq::frontend
