#include "common/clock.h"

namespace shardq {

SystemClock& SystemClock::Instance() {
  static SystemClock clock;
  return clock;
}

void FakeClock::Advance(Duration d) {
  std::vector<std::function<void()>> listeners;
  {
    std::lock_guard lock(mu_);
    now_ += d;
    listeners = listeners_;
  }
  for (auto& l : listeners) l();
}

void FakeClock::OnJump(std::function<void()> listener) {
  std::lock_guard lock(mu_);
  listeners_.push_back(std::move(listener));
}

}  // namespace shardq
