#pragma once
// LatencyEstimate: a smoothed latency and its mean deviation, as TCP estimates its
// round trip (RFC 6298, with its gains 1/8 and 1/4), and a bound most samples stay
// under. The shard worker feeds it its claims' latency (from Claim() to the commit)
// and releases delayed items that bound ahead of their due time (release_schedule.h):
// a claim then commits by the due time, and the answer is held no longer than the
// claims' spread. A sample a quiet spell after the last one starts the estimate
// afresh: the load the old samples measured is gone. Not thread-safe: the shard's
// strand owns it.
#include <cmath>

#include "common/clock.h"

namespace shardq::shard_worker {

class LatencyEstimate {
 public:
  // How long without a sample makes the estimate stale.
  static constexpr Duration kQuiet{1'000};

  // A sample taken at `at`.
  void Add(Duration sample, Time at) {
    const double ms = static_cast<double>(sample.count());
    const bool stale = at - last_ > kQuiet;
    last_ = at;
    if (!started_ || stale) {  // the first sample, as RFC 6298 starts
      started_ = true;
      mean_ms_ = ms;
      deviation_ms_ = ms / 2;
      return;
    }
    deviation_ms_ += (std::abs(ms - mean_ms_) - deviation_ms_) / 4;
    mean_ms_ += (ms - mean_ms_) / 8;
  }
  // The smoothed latency plus twice its mean deviation, to the millisecond.
  Duration Bound() const { return Duration(std::llround(mean_ms_ + 2 * deviation_ms_)); }

 private:
  bool started_ = false;
  Time last_{};
  double mean_ms_ = 0;
  double deviation_ms_ = 0;
};

}  // namespace shardq::shard_worker
