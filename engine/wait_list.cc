#include "engine/wait_list.h"

#include <vector>

namespace shardq::engine {

void WaitList::Add(Time deadline, std::weak_ptr<Expirable> e) {
  bool earliest = false;
  bool closed;
  {
    std::lock_guard lock(mu_);
    closed = closed_;
    if (!closed) {
      earliest = entries_.empty() || deadline < entries_.begin()->first;
      entries_.emplace(deadline, e);
    }
  }
  if (closed) {
    // Shut down: no new waits.
    if (auto x = e.lock()) x->Expire(deadline, /*forced=*/true);
    return;
  }
  if (earliest && ticker_ != nullptr) ticker_->Poke();
}

Duration WaitList::Tick(Time now) {
  std::vector<std::pair<Time, std::weak_ptr<Expirable>>> due;
  Duration next = Ticker::kMaxSleep;
  {
    std::lock_guard lock(mu_);
    auto it = entries_.begin();
    while (it != entries_.end() && it->first <= now) {
      due.emplace_back(it->first, std::move(it->second));
      it = entries_.erase(it);
    }
    // Entries of calls that finished early stay until their deadline (at most the
    // longest wait): cheaper than a removal on every answer.
    if (!entries_.empty()) next = entries_.begin()->first - now;
  }
  for (auto& [deadline, weak] : due) {
    if (auto e = weak.lock()) e->Expire(deadline, /*forced=*/false);
  }
  return next;
}

void WaitList::ExpireAll() {
  std::multimap<Time, std::weak_ptr<Expirable>> all;
  {
    std::lock_guard lock(mu_);
    closed_ = true;
    all.swap(entries_);
  }
  for (auto& [t, weak] : all) {
    if (auto e = weak.lock()) e->Expire(t, /*forced=*/true);
  }
}

}  // namespace shardq::engine
