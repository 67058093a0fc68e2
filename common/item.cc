#include "common/item.h"

namespace shardq {

const char* ItemStateName(ItemState s) {
  switch (s) {
    case ItemState::kDelayed:
      return "delayed";
    case ItemState::kReady:
      return "ready";
    case ItemState::kLeased:
      return "leased";
    case ItemState::kSucceeded:
      return "succeeded";
    case ItemState::kFailed:
      return "failed";
    case ItemState::kDead:
      return "dead";
    case ItemState::kCancelled:
      return "cancelled";
    case ItemState::kGone:
      return "gone";
  }
  return "?";
}

}  // namespace shardq
