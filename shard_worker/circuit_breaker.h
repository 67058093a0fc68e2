#pragma once
// CircuitBreaker: one per shard. It watches the outcome and latency of every store
// operation over a rolling window; when too many fail or are too slow it opens, the
// shard stops taking enqueues (they go to healthy shards), and after a cool-down it
// lets one probe through (half-open). A successful probe closes it; a failed one
// opens it again with a longer cool-down (capped).
//
// Time comes from the injected Clock; nothing here sleeps. Thread-safe.

#include <cstdint>
#include <deque>
#include <mutex>

#include "common/clock.h"

namespace shardq::shard_worker {

struct BreakerOptions {
  // The rolling window: outcomes older than this are forgotten.
  Duration window{10'000};
  // Opens when, within the window, at least min_samples outcomes were seen and the
  // share of bad ones (errors, or calls taking slow_call or longer) reaches
  // failure_ratio.
  size_t min_samples = 5;
  double failure_ratio = 0.5;
  Duration slow_call{2'000};
  // First cool-down before a probe; doubles after each failed probe up to the max.
  Duration cooldown{500};
  Duration max_cooldown{10'000};
};

enum class BreakerState { kClosed, kOpen, kHalfOpen };
const char* BreakerStateName(BreakerState s);

class CircuitBreaker {
 public:
  CircuitBreaker(Clock& clock, BreakerOptions options = {});

  // Records one store operation.
  void Record(bool ok, Duration latency);
  // True when the shard may take new work (closed). While open or half-open, the only
  // traffic is the probe.
  bool AllowsTraffic() const;
  // True once when a probe is due (open and cool-down over): the state becomes
  // half-open and the caller must run the probe and report it with ProbeResult().
  bool TakeProbe();
  void ProbeResult(bool ok);
  // How long until TakeProbe() can return true (zero if now; max if closed).
  Duration TimeToProbe() const;

  BreakerState state() const;

 private:
  struct Sample {
    Time at;
    bool bad;
  };
  void Trim(Time now);
  void Open(Time now);

  Clock& clock_;
  const BreakerOptions options_;
  mutable std::mutex mu_;
  BreakerState state_ = BreakerState::kClosed;
  std::deque<Sample> samples_;
  size_t bad_ = 0;
  Duration cooldown_;
  Time probe_at_{};
};

}  // namespace shardq::shard_worker
