#pragma once
// PrefetchIndex: the process-wide map (namespace, topic) -> TopicBuffer. Buffers are
// created on first use (an enqueue, a dequeue, or start-up recovery) and dropped by
// EvictIdle once idle (a topic that has nothing left, or that a dequeue asked for and
// never had anything), so that dequeues of ever new names do not grow it for good.
//
// Threads: any; a shared mutex guards the map, each buffer guards itself.

#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <shared_mutex>
#include <string>
#include <utility>
#include <vector>

#include "common/ticker.h"
#include "prefetch/topic_buffer.h"

namespace shardq::prefetch {

class PrefetchIndex {
 public:
  PrefetchIndex(size_t shards, size_t window_capacity)
      : shards_(shards), window_capacity_(window_capacity) {}

  std::shared_ptr<TopicBuffer> GetOrCreate(const std::string& ns,
                                           const std::string& topic);
  std::shared_ptr<TopicBuffer> Find(const std::string& ns,
                                    const std::string& topic) const;
  // The buffers of a namespace, sorted by topic: at most `max`, of the topics that
  // sort after `after` (all of them when it is empty).
  std::vector<std::shared_ptr<TopicBuffer>> ForNamespace(
      const std::string& ns, const std::string& after = "",
      size_t max = std::numeric_limits<size_t>::max()) const;
  std::vector<std::shared_ptr<TopicBuffer>> All() const;
  // Drops the buffers that are Idle() and used by nobody else (a dequeue or a shard
  // strand holding one keeps it); returns how many.
  size_t EvictIdle();
  size_t size() const;

  size_t shards() const { return shards_; }
  size_t window_capacity() const { return window_capacity_; }

 private:
  const size_t shards_;
  const size_t window_capacity_;
  mutable std::shared_mutex mu_;
  std::map<std::pair<std::string, std::string>, std::shared_ptr<TopicBuffer>> buffers_;
};

// Runs PrefetchIndex::EvictIdle every `interval`, on the ticker's thread.
class IndexSweeper final : public Tickable {
 public:
  IndexSweeper(PrefetchIndex& index, Duration interval)
      : index_(index), interval_(interval) {}
  Duration Tick(Time now) override {
    if (!next_) next_ = now + interval_;
    if (now >= *next_) {
      index_.EvictIdle();
      next_ = now + interval_;
    }
    return *next_ - now;
  }

 private:
  PrefetchIndex& index_;
  const Duration interval_;
  std::optional<Time> next_;  // ticker thread only
};

}  // namespace shardq::prefetch
