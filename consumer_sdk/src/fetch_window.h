#pragma once
// FetchWindow: how many tasks a Worker keeps ahead of its executors (fetched and not
// started, or asked for by a Dequeue in flight), and how that number adapts. Not
// thread-safe: the Worker calls it under its mutex.
//
// With a fixed window, fast handlers finish faster than a fetch comes back, and a
// worker runs at most one window per round trip (docs/BENCHMARKS.md, twenty-ninth
// round: B1 28.8k items/s with a window of 32, 40.0k adapting from 32 up to 256). So
// the window starts at `min` and doubles, up to `max`, when an answer brings all it
// asked for and an executor went idle after a task, since the previous answer, while
// the server had more (that answer was full too): the executors waited on the round
// trip. An executor idle because the topic ran dry does not count. Tasks still
// waiting from earlier answers when one arrives say it fetches more than the handlers
// take: it shrinks by as many, down to `min`. Handlers slower than a round trip find
// tasks waiting when they finish, so they keep it at `min`. A worker never holds
// more than `max` tasks it does not run, and while the handlers keep up it may hold
// up to about twice what they need (a doubling after a shrink to the need).

#include <algorithm>
#include <cstddef>

namespace shardq::sdk {

class FetchWindow {
 public:
  // `max` below `min` is `min`: a fixed window. `min` is at least 1.
  FetchWindow(size_t min, size_t max)
      : min_(std::max<size_t>(1, min)), max_(std::max(min_, max)), size_(min_) {}

  size_t size() const { return size_; }
  // The slots neither filled nor asked for, with `taken` of them so (none while a
  // window that shrank is still fuller than its new size).
  size_t Free(size_t taken) const { return taken >= size_ ? 0 : size_ - taken; }
  // Free slots that make a controller ask: half the window, rounded up (one Dequeue,
  // one lease transaction per shard, then brings many tasks).
  size_t RefillAt() const { return size_ - size_ / 2; }

  // An executor finished a task and found nothing fetched to take.
  void ExecutorIdled() {
    if (last_full_) starved_ = true;
  }

  // An answer arrived, before its tasks are buffered. `full`: it brought all that was
  // asked for. `waiting`: tasks of earlier answers not started yet.
  void OnAnswer(bool full, size_t waiting) {
    if (waiting > 0) {
      size_ = std::max(min_, size_ - std::min(size_, waiting));
    } else if (full && starved_) {
      size_ = std::min(max_, size_ * 2);
    }
    starved_ = false;
    last_full_ = full;
  }

 private:
  size_t min_;
  size_t max_;
  size_t size_;
  bool starved_ = false;    // an executor waited on a round trip since the last answer
  bool last_full_ = false;  // the last answer brought all it asked for
};

}  // namespace shardq::sdk
