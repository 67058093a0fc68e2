#pragma once
// Template bodies of validation.h.

#include <unordered_set>

namespace shardq::frontend {

template <typename Op>
void RejectDuplicateIds(std::vector<Result<Op>>& ops) {
  std::unordered_set<ItemId> seen;
  for (auto& op : ops) {
    if (!op.ok()) continue;
    if (!seen.insert(op->id).second) {
      op = Status::InvalidArgument("item " + op->id.ToString() +
                                   " appears twice in one call");
    }
  }
}

}  // namespace shardq::frontend
