#pragma once
// PrefetchIndex: the process-wide map (namespace, topic) -> TopicBuffer. Buffers are
// created on first use (an enqueue, a dequeue, or start-up recovery) and live for
// the life of the process.
//
// Threads: any; a shared mutex guards the map, each buffer guards itself.

#include <map>
#include <memory>
#include <shared_mutex>
#include <string>
#include <utility>
#include <vector>

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
  // Every buffer of a namespace, sorted by topic.
  std::vector<std::shared_ptr<TopicBuffer>> ForNamespace(const std::string& ns) const;
  std::vector<std::shared_ptr<TopicBuffer>> All() const;

  size_t shards() const { return shards_; }
  size_t window_capacity() const { return window_capacity_; }

 private:
  const size_t shards_;
  const size_t window_capacity_;
  mutable std::shared_mutex mu_;
  std::map<std::pair<std::string, std::string>, std::shared_ptr<TopicBuffer>> buffers_;
};

}  // namespace shardq::prefetch
