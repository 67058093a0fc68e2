#include "engine/wait_list.h"

#include <vector>

namespace shardq::engine {

void WaitList::Add(Time deadline, std::weak_ptr<Expirable> e) {
  bool earliest;
  {
    std::lock_guard lock(mu_);
    earliest = entries_.empty() || deadline < entries_.begin()->first;
    entries_.emplace(deadline, std::move(e));
  }
  if (earliest && ticker_ != nullptr) ticker_->Poke();
}

Duration WaitList::Tick(Time now) {
  std::vector<std::weak_ptr<Expirable>> due;
  Duration next = Ticker::kMaxSleep;
  {
    std::lock_guard lock(mu_);
    auto it = entries_.begin();
    while (it != entries_.end() && it->first <= now) {
      due.push_back(std::move(it->second));
      it = entries_.erase(it);
    }
    // Entries of calls that finished early stay until their deadline (at most the
    // longest wait): cheaper than a removal on every answer.
    if (!entries_.empty()) next = entries_.begin()->first - now;
  }
  for (auto& weak : due) {
    if (auto e = weak.lock()) e->Expire();
  }
  return next;
}

void WaitList::ExpireAll() {
  std::multimap<Time, std::weak_ptr<Expirable>> all;
  {
    std::lock_guard lock(mu_);
    all.swap(entries_);
  }
  for (auto& [t, weak] : all) {
    if (auto e = weak.lock()) e->Expire();
  }
}

}  // namespace shardq::engine
