#pragma once
// The SDK's own notion of time. Every timed wait of the SDK (retry backoff, reconnect
// backoff, heartbeats, the Stop timeout, TaskContext::WaitCancelled) goes through a
// Clock, so tests can drive it with a ManualClock instead of sleeping. Production code
// uses RealClock (the default when an options struct leaves `clock` null).

#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <mutex>

namespace shardq::sdk {

// Milliseconds on a clock's own monotonic scale (the epoch is the clock's business).
using Millis = std::chrono::milliseconds;

// The longest wait or deadline the SDK keeps: a caller's longer one (Millis::max() for
// "as long as it takes") is this, and a negative one is 0, so that adding it to a
// clock's time cannot overflow.
inline constexpr Millis kLongestWait{10LL * 365 * 24 * 3600 * 1000};  // ten years
inline constexpr Millis Bounded(Millis wait) {
  return wait < Millis(0) ? Millis(0) : (wait > kLongestWait ? kLongestWait : wait);
}

// Monotonic time plus the one blocking primitive the SDK uses. Thread-safe.
class Clock {
 public:
  virtual ~Clock() = default;
  // The current time on this clock.
  virtual Millis Now() const = 0;
  // Blocks on `cv` (`lock` must hold cv's mutex) until it is notified or this clock
  // may have reached `deadline`. May return early; callers re-check their condition
  // and the time in a loop.
  virtual void WaitUntil(std::condition_variable& cv, std::unique_lock<std::mutex>& lock,
                         Millis deadline) = 0;
  // Registers `listener`, called after the clock moved other than by real time (a
  // ManualClock's Advance), so that waiters re-evaluate their deadlines. It must not
  // block for long. Returns an id for RemoveListener.
  virtual int AddListener(std::function<void()> listener) { return 0; }
  // Unregisters a listener; once this returns, the listener is no longer running and
  // is never called again.
  virtual void RemoveListener(int id) {}
};

// The steady (monotonic) system clock; waits are real condition-variable timeouts.
class RealClock final : public Clock {
 public:
  Millis Now() const override;
  void WaitUntil(std::condition_variable& cv, std::unique_lock<std::mutex>& lock,
                 Millis deadline) override;
  // The process-wide instance used when options leave `clock` null.
  static RealClock& Instance();
};

// A clock that moves only when told to (Advance). For tests: an SDK wait on it ends
// only after Advance() reaches its deadline (or the wait is interrupted, e.g. by Stop).
class ManualClock final : public Clock {
 public:
  // Starts at `start` on its own scale.
  explicit ManualClock(Millis start = Millis(0)) : now_(start) {}
  Millis Now() const override;
  void WaitUntil(std::condition_variable& cv, std::unique_lock<std::mutex>& lock,
                 Millis deadline) override;
  int AddListener(std::function<void()> listener) override;
  void RemoveListener(int id) override;
  // Moves the time forward by `d` and wakes every SDK wait so it re-checks.
  void Advance(Millis d);

 private:
  mutable std::mutex now_mu_;  // guards now_ only (a leaf lock)
  Millis now_;
  std::mutex listeners_mu_;  // held while listeners run, so removal waits for them
  int next_id_ = 1;
  std::map<int, std::function<void()>> listeners_;
};

}  // namespace shardq::sdk
