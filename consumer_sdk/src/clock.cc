#include "shardq/clock.h"

#include <vector>

namespace shardq::sdk {

Millis RealClock::Now() const {
  return std::chrono::duration_cast<Millis>(
      std::chrono::steady_clock::now().time_since_epoch());
}

void RealClock::WaitUntil(std::condition_variable& cv, std::unique_lock<std::mutex>& lock,
                          Millis deadline) {
  Millis left = deadline - Now();
  if (left <= Millis(0)) return;
  cv.wait_for(lock, left);
}

RealClock& RealClock::Instance() {
  static RealClock clock;
  return clock;
}

Millis ManualClock::Now() const {
  std::lock_guard lock(now_mu_);
  return now_;
}

void ManualClock::WaitUntil(std::condition_variable& cv,
                            std::unique_lock<std::mutex>& lock, Millis deadline) {
  if (Now() >= deadline) return;
  // Advance() notifies through the waiter's listener; no real-time timeout.
  cv.wait(lock);
}

int ManualClock::AddListener(std::function<void()> listener) {
  std::lock_guard lock(listeners_mu_);
  int id = next_id_++;
  listeners_[id] = std::move(listener);
  return id;
}

void ManualClock::RemoveListener(int id) {
  std::lock_guard lock(listeners_mu_);
  listeners_.erase(id);
}

void ManualClock::Advance(Millis d) {
  {
    std::lock_guard lock(now_mu_);
    now_ += d;
  }
  std::lock_guard lock(listeners_mu_);
  for (auto& [id, listener] : listeners_) listener();
}

}  // namespace shardq::sdk
