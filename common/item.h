#pragma once
// Plain structs that describe items as every layer sees them. The store, the shard
// workers, prefetch and the frontend share these; the wire form lives in proto/.

#include <cstdint>
#include <optional>
#include <string>

#include "common/clock.h"
#include "common/ids.h"
#include "common/ordering.h"

namespace shardq {

// Where an item is in its life. The numbers are stored in MySQL (items.state).
enum class ItemState : uint8_t {
  kDelayed = 0,  // deliver_after is in the future (first time, or a retry's backoff)
  kReady = 1,    // deliverable now
  kLeased = 2,   // handed out; deliver_after is the lease deadline
  // Final states: the row is kept for the namespace's retention period, and
  // deliver_after is when it will be purged.
  kSucceeded = 3,  // acked
  kFailed = 4,     // nacked as fatal
  kDead = 5,       // used up its attempts (a dead letter; may be redriven)
  kCancelled = 6,  // cancelled before it finished
  kGone = 255,     // never stored: the row was deleted (purge)
};

// "delayed", "ready", ... (for messages and logs).
const char* ItemStateName(ItemState s);

inline bool IsFinal(ItemState s) {
  return s == ItemState::kSucceeded || s == ItemState::kFailed || s == ItemState::kDead ||
         s == ItemState::kCancelled;
}

// Product limits, shared by validation (frontend) and the tests.
inline constexpr size_t kMaxPayloadBytes = 10 * 1024;
inline constexpr size_t kMaxMetadataBytes = 2 * 1024;
inline constexpr size_t kMaxNamespaceLen = 64;
inline constexpr size_t kMaxTopicLen = 128;
inline constexpr size_t kMaxTaskTypeLen = 64;
inline constexpr size_t kMaxDedupKeyLen = 128;
inline constexpr size_t kMaxWorkerIdLen = 128;
inline constexpr size_t kMaxErrorBytes = 4096;
inline constexpr size_t kMaxResultBytes = 4096;
inline constexpr uint32_t kMaxAttemptsLimit = 1000;

// An item to be inserted. deliver_after and expires_at are absolute times.
struct NewItem {
  std::string ns;
  std::string topic;
  int32_t priority = 0;
  std::string payload;
  std::string metadata;  // opaque bytes (frontend encodes the string map)
  Time deliver_after{};
  Duration lease{};
  std::optional<Time> expires_at;  // TTL; nullopt = never
  std::string task_type;           // may be empty
  std::string dedup_key;           // empty = none
  uint32_t max_attempts = 5;       // resolved (never 0)
};

// The key of a ready item inside one shard, in ordering-rule order.
struct ReadyKey {
  int32_t priority = 0;
  Time deliver_after{};
  RowId row{};

  OrderKey ToOrderKey(ShardId shard) const {
    return {priority, deliver_after, {shard, row}};
  }
  friend bool operator==(const ReadyKey&, const ReadyKey&) = default;
};

// An item as handed to a consumer: the lease is already committed to the store.
struct LeasedItem {
  RowId row{};
  std::string ns;
  std::string topic;
  int32_t priority = 0;
  std::string payload;
  std::string metadata;
  LeaseToken token{};
  Time lease_deadline{};
  uint32_t attempts = 0;  // deliveries so far, this one included
  Time enqueued_at{};
  Time deliver_after{};  // the due time the item was ordered by when it was claimed
  std::string task_type;
  uint32_t max_attempts = 0;
};

// An item whose state changed, as the prefetch index needs to know it.
struct ItemTransition {
  RowId row{};
  std::string ns;
  std::string topic;
  int32_t priority = 0;
  ItemState from = ItemState::kReady;
  ItemState to = ItemState::kReady;
  Time deliver_after{};  // after the change
};

}  // namespace shardq
