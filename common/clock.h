#pragma once
// Time is injected everywhere. Production code takes a Clock&; tests pass a FakeClock
// and move time with Advance(), never with sleep. Tick functions take `now` and
// return how long until their next deadline (as beanstalkd's prottick does).

#include <algorithm>
#include <chrono>
#include <functional>
#include <map>
#include <mutex>
#include <vector>

namespace shardq {

// Wall-clock milliseconds since the Unix epoch: the unit stored in MySQL.
using Duration = std::chrono::milliseconds;
using Time = std::chrono::sys_time<std::chrono::milliseconds>;

inline int64_t ToUnixMillis(Time t) { return t.time_since_epoch().count(); }
inline Time FromUnixMillis(int64_t ms) { return Time(Duration(ms)); }

class Clock {
 public:
  virtual ~Clock() = default;
  // The current time, rounded down to a whole millisecond: a deadline is due once
  // Now() reaches it, which is never before the deadline itself.
  virtual Time Now() const = 0;
  // The current time rounded up to a whole millisecond: a due time `now + delay`
  // counts from this, so that it is never before the caller's now plus the delay
  // (counted from Now(), the part of a millisecond already gone would make it up to
  // 1 ms early). Up to 1 ms after Now(), unless the clock steps in between.
  virtual Time NowRoundedUp() const = 0;
  // Called after the clock jumps (only a fake clock jumps), so that threads waiting
  // for a deadline re-evaluate it at once. The listener must not block. Returns an
  // id for RemoveJumpListener (the listener's owner may die before the clock).
  virtual int OnJump(std::function<void()> listener) { return 0; }
  virtual void RemoveJumpListener(int id) {}
};

// The time a delay counts from, for `now` just read from clock.Now(): the millisecond
// rounded up, read again and kept within [now, now + 1 ms] (a millisecond that began
// between the two reads, or a step of the clock, must not stretch or shorten a delay).
inline Time DelayFrom(const Clock& clock, Time now) {
  return std::clamp(clock.NowRoundedUp(), now, now + Duration(1));
}

class SystemClock final : public Clock {
 public:
  Time Now() const override {
    return std::chrono::floor<Duration>(std::chrono::system_clock::now());
  }
  Time NowRoundedUp() const override {
    return std::chrono::ceil<Duration>(std::chrono::system_clock::now());
  }
  static SystemClock& Instance();
};

class FakeClock final : public Clock {
 public:
  explicit FakeClock(Time start = FromUnixMillis(1'700'000'000'000)) : now_(start) {}
  Time Now() const override {
    std::lock_guard lock(mu_);
    return now_;
  }
  // Whole milliseconds, unless the test says the time is part-way into the next one.
  Time NowRoundedUp() const override {
    std::lock_guard lock(mu_);
    return between_ms_ ? now_ + Duration(1) : now_;
  }
  void Advance(Duration d);
  // From now on the time is part-way between Now() and the next millisecond, as a
  // real clock almost always is: NowRoundedUp() is Now() + 1 ms.
  void SetBetweenMilliseconds(bool between) {
    std::lock_guard lock(mu_);
    between_ms_ = between;
  }
  int OnJump(std::function<void()> listener) override;
  void RemoveJumpListener(int id) override;

 private:
  mutable std::mutex mu_;
  Time now_;
  bool between_ms_ = false;
  int next_listener_id_ = 1;
  std::map<int, std::function<void()>> listeners_;
};

}  // namespace shardq
