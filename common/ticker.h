#pragma once
// One thread that drives every deadline in the process: promotion of due items and
// lease expiry (per shard), circuit-breaker probes, long-poll timeouts. Each
// Tickable's Tick(now) does what is due and returns how long until its next deadline;
// the thread sleeps until the earliest one, or until Poke() / a clock jump.

#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#include "common/clock.h"

namespace shardq {

class Tickable {
 public:
  virtual ~Tickable() = default;
  // Runs what is due at `now`; returns the time until the next deadline. Must not
  // block on I/O (post I/O to an executor instead).
  virtual Duration Tick(Time now) = 0;
};

class Ticker {
 public:
  // The longest the thread sleeps even when nothing is due: a backstop, not a poll.
  static constexpr Duration kMaxSleep{1000};

  explicit Ticker(Clock& clock);
  ~Ticker();
  Ticker(const Ticker&) = delete;
  Ticker& operator=(const Ticker&) = delete;

  // Registration happens before Start(); the tickables must outlive the ticker.
  void Add(Tickable* t);
  void Start();
  void Stop();
  // Re-evaluates deadlines now (e.g. a new, earlier deadline was set).
  void Poke();

 private:
  void Loop();

  Clock& clock_;
  int jump_listener_ = 0;
  std::mutex mu_;
  std::condition_variable cv_;
  bool poked_ = false;
  bool stopping_ = false;
  std::vector<Tickable*> tickables_;
  std::thread thread_;
};

}  // namespace shardq
