#include "common/ticker.h"

#include <pthread.h>

#include <algorithm>

namespace shardq {

Ticker::Ticker(Clock& clock) : clock_(clock) {
  jump_listener_ = clock_.OnJump([this] { Poke(); });
}

Ticker::~Ticker() {
  clock_.RemoveJumpListener(jump_listener_);
  Stop();
}

void Ticker::Add(Tickable* t) {
  std::lock_guard lock(mu_);
  tickables_.push_back(t);
}

void Ticker::Start() {
  thread_ = std::thread([this] { Loop(); });
  pthread_setname_np(thread_.native_handle(), "shardq-ticker");
}

void Ticker::Stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void Ticker::Poke() {
  {
    std::lock_guard lock(mu_);
    poked_ = true;
  }
  cv_.notify_all();
}

void Ticker::Loop() {
  std::unique_lock lock(mu_);
  while (!stopping_) {
    poked_ = false;
    std::vector<Tickable*> tickables = tickables_;
    lock.unlock();
    Duration sleep = kMaxSleep;
    Time now = clock_.Now();
    for (Tickable* t : tickables) sleep = std::min(sleep, t->Tick(now));
    lock.lock();
    if (sleep <= Duration::zero() || poked_ || stopping_) continue;
    cv_.wait_for(lock, sleep, [this] { return poked_ || stopping_; });
  }
}

}  // namespace shardq
