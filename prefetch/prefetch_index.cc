#include "prefetch/prefetch_index.h"

#include <mutex>

namespace shardq::prefetch {

std::shared_ptr<TopicBuffer> PrefetchIndex::GetOrCreate(const std::string& ns,
                                                        const std::string& topic) {
  if (auto found = Find(ns, topic)) return found;
  std::unique_lock lock(mu_);
  auto& slot = buffers_[{ns, topic}];
  if (!slot) slot = std::make_shared<TopicBuffer>(ns, topic, shards_, window_capacity_);
  return slot;
}

std::shared_ptr<TopicBuffer> PrefetchIndex::Find(const std::string& ns,
                                                 const std::string& topic) const {
  std::shared_lock lock(mu_);
  auto it = buffers_.find({ns, topic});
  return it == buffers_.end() ? nullptr : it->second;
}

std::vector<std::shared_ptr<TopicBuffer>> PrefetchIndex::ForNamespace(
    const std::string& ns, const std::string& after, size_t max) const {
  std::vector<std::shared_ptr<TopicBuffer>> out;
  std::shared_lock lock(mu_);
  // Topic names are never empty, so after "" is from the first.
  for (auto it = buffers_.upper_bound({ns, after});
       it != buffers_.end() && it->first.first == ns && out.size() < max; ++it) {
    out.push_back(it->second);
  }
  return out;
}

size_t PrefetchIndex::EvictIdle() {
  std::unique_lock lock(mu_);
  // Under the exclusive lock nobody can copy a buffer out of the map, so a use count
  // of one means that only the map holds it.
  return std::erase_if(buffers_, [](const auto& entry) {
    return entry.second.use_count() == 1 && entry.second->Idle();
  });
}

size_t PrefetchIndex::size() const {
  std::shared_lock lock(mu_);
  return buffers_.size();
}

std::vector<std::shared_ptr<TopicBuffer>> PrefetchIndex::All() const {
  std::vector<std::shared_ptr<TopicBuffer>> out;
  std::shared_lock lock(mu_);
  for (auto& [key, buffer] : buffers_) out.push_back(buffer);
  return out;
}

}  // namespace shardq::prefetch
