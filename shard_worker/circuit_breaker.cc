#include "shard_worker/circuit_breaker.h"

#include <algorithm>

namespace shardq::shard_worker {

const char* BreakerStateName(BreakerState s) {
  switch (s) {
    case BreakerState::kClosed:
      return "closed";
    case BreakerState::kOpen:
      return "open";
    case BreakerState::kHalfOpen:
      return "half-open";
  }
  return "?";
}

CircuitBreaker::CircuitBreaker(Clock& clock, BreakerOptions options)
    : clock_(clock), options_(options), cooldown_(options.cooldown) {}

void CircuitBreaker::Trim(Time now) {
  while (!samples_.empty() && samples_.front().at + options_.window < now) {
    if (samples_.front().bad) --bad_;
    samples_.pop_front();
  }
}

void CircuitBreaker::Open(Time now) {
  state_ = BreakerState::kOpen;
  probe_at_ = now + cooldown_;
  samples_.clear();
  bad_ = 0;
}

void CircuitBreaker::Record(bool ok, Duration latency) {
  Time now = clock_.Now();
  std::lock_guard lock(mu_);
  if (state_ != BreakerState::kClosed) return;  // only the probe decides now
  bool bad = !ok || latency >= options_.slow_call;
  samples_.push_back({now, bad});
  if (bad) ++bad_;
  Trim(now);
  if (samples_.size() >= options_.min_samples &&
      static_cast<double>(bad_) >=
          options_.failure_ratio * static_cast<double>(samples_.size())) {
    Open(now);
  }
}

bool CircuitBreaker::AllowsTraffic() const {
  std::lock_guard lock(mu_);
  return state_ == BreakerState::kClosed;
}

bool CircuitBreaker::TakeProbe() {
  Time now = clock_.Now();
  std::lock_guard lock(mu_);
  if (state_ != BreakerState::kOpen || now < probe_at_) return false;
  state_ = BreakerState::kHalfOpen;
  return true;
}

void CircuitBreaker::ProbeResult(bool ok) {
  Time now = clock_.Now();
  std::lock_guard lock(mu_);
  if (state_ != BreakerState::kHalfOpen) return;
  if (ok) {
    state_ = BreakerState::kClosed;
    cooldown_ = options_.cooldown;
  } else {
    cooldown_ = std::min(cooldown_ * 2, options_.max_cooldown);
    Open(now);
  }
}

Duration CircuitBreaker::TimeToProbe() const {
  Time now = clock_.Now();
  std::lock_guard lock(mu_);
  if (state_ != BreakerState::kOpen) return Duration::max();
  return std::max(Duration::zero(), probe_at_ - now);
}

BreakerState CircuitBreaker::state() const {
  std::lock_guard lock(mu_);
  return state_;
}

}  // namespace shardq::shard_worker
