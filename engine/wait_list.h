#pragma once
// WaitList: the deadlines of parked long polls. The ticker calls Tick(); expired
// entries are told to give up (Expire), which costs no thread while they wait.

#include <functional>
#include <map>
#include <memory>
#include <mutex>

#include "common/clock.h"
#include "common/ticker.h"

namespace shardq::engine {

class Expirable {
 public:
  virtual ~Expirable() = default;
  // The entry registered in the WaitList for `deadline` is due. `forced` (shutdown):
  // give up now, whatever the deadline. An entry carries its own deadline so that the
  // callee need not read the clock again: a wall clock stepped back between the
  // ticker's read and that one would make a due entry look early, and it is gone.
  virtual void Expire(Time deadline, bool forced) = 0;
};

class WaitList final : public Tickable {
 public:
  // The ticker to poke when a new deadline is earlier than any before.
  void SetTicker(Ticker* ticker) { ticker_ = ticker; }
  void Add(Time deadline, std::weak_ptr<Expirable> e);
  Duration Tick(Time now) override;
  // Expires everything (shutdown); later Add() calls expire at once.
  void ExpireAll();

 private:
  std::mutex mu_;
  std::multimap<Time, std::weak_ptr<Expirable>> entries_;
  Ticker* ticker_ = nullptr;
  bool closed_ = false;  // after ExpireAll()
};

}  // namespace shardq::engine
