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
    for (auto& [id, l] : listeners_) listeners.push_back(l);
  }
  for (auto& l : listeners) l();
}

int FakeClock::OnJump(std::function<void()> listener) {
  std::lock_guard lock(mu_);
  int id = next_listener_id_++;
  listeners_[id] = std::move(listener);
  return id;
}

void FakeClock::RemoveJumpListener(int id) {
  std::lock_guard lock(mu_);
  listeners_.erase(id);
}

}  // namespace shardq
