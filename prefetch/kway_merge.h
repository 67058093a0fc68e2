#pragma once
// A k-way merge over sorted sources, as RocksDB's MergingIterator does with its heap:
// O(log k) per item. A Source is anything with
//   bool Empty() const;  const Key& Front() const;  void Pop();
// and `less` orders keys (common/ordering.h's rule in production).

#include <cstddef>
#include <queue>
#include <utility>
#include <vector>

namespace shardq::prefetch {

template <typename Source, typename Less>
class KWayMerge {
 public:
  KWayMerge(std::vector<Source*> sources, Less less)
      : sources_(std::move(sources)), heap_(HeapLess{this, less}) {
    for (size_t i = 0; i < sources_.size(); ++i) {
      if (!sources_[i]->Empty()) heap_.push(i);
    }
  }

  // The heap's comparator points back at this object.
  KWayMerge(const KWayMerge&) = delete;
  KWayMerge& operator=(const KWayMerge&) = delete;

  bool Done() const { return heap_.empty(); }
  // The index (into the constructor's vector) of the source holding the least key.
  size_t TopSource() const { return heap_.top(); }
  const auto& Top() const { return sources_[heap_.top()]->Front(); }

  // Removes the least key from its source.
  void Pop() {
    size_t i = heap_.top();
    heap_.pop();
    sources_[i]->Pop();
    if (!sources_[i]->Empty()) heap_.push(i);
  }

 private:
  struct HeapLess {
    const KWayMerge* self;
    Less less;
    // std::priority_queue is a max-heap: "a < b" here means b comes out first.
    // Equal keys come out lower source first, so the merge is deterministic (the
    // engine lists shards in ShardId order, which makes this the ordering rule's
    // last tie-break).
    bool operator()(size_t a, size_t b) const {
      const auto& fa = self->sources_[a]->Front();
      const auto& fb = self->sources_[b]->Front();
      if (less(fb, fa)) return true;
      if (less(fa, fb)) return false;
      return b < a;
    }
  };

  std::vector<Source*> sources_;
  std::priority_queue<size_t, std::vector<size_t>, HeapLess> heap_;
};

}  // namespace shardq::prefetch
