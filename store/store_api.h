#pragma once
// ShardStore: the narrow interface to one shard's database. One implementation talks
// to MySQL (mysql_store.h), one keeps everything in memory (memory_store.h); the same
// typed contract tests (store/tests/store_contract_test.cc) run against both.
//
// Threading: a ShardStore is NOT thread-safe. Exactly one shard worker strand uses a
// given store at a time (see shard_worker/README.md).
//
// Every mutating call is one transaction: when it returns OK, its effect is committed
// (durable); when it returns an error, nothing of it is committed, or -- only for
// kUnavailable after a lost connection -- the outcome is unknown.

#include <cstddef>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/clock.h"
#include "common/ids.h"
#include "common/item.h"
#include "common/status.h"

namespace shardq::store {

struct AckRequest {
  RowId row;
  LeaseToken token;
};

struct NackRequest {
  RowId row;
  LeaseToken token;
  Duration delay{};                     // redeliver after now + delay (0 = at once)
  std::optional<std::string> metadata;  // replaces the metadata when set
};

struct ExtendRequest {
  RowId row;
  LeaseToken token;
  Duration extension{};  // the new deadline is now + extension
};

// Per-item outcome of Ack/Nack/Extend:
//  - OK: done. Ack of a row that no longer exists is OK too (acks are idempotent).
//  - kFailedPrecondition: the token is not the item's current one, or (nack/extend)
//    the item is not leased any more.
//  - kNotFound (nack/extend only): no such row.
struct ItemOutcome {
  Status status;
  std::optional<ItemTransition> transition;  // set when the item changed state
  Time new_deadline{};                       // extend: the new lease deadline
};

struct TopicCounts {
  std::string ns;
  std::string topic;
  uint64_t delayed = 0;
  uint64_t ready = 0;
  uint64_t leased = 0;
};

class ShardStore {
 public:
  virtual ~ShardStore() = default;

  // Connects if needed and applies the schema migrations (idempotent). Called at
  // start-up and again after a failure; cheap when already open.
  virtual Status Open() = 0;
  // A cheap round trip, used by the circuit breaker's probe.
  virtual Status Ping() = 0;

  // Inserts the items in one transaction; returns their row ids in input order.
  // An item whose deliver_after <= now is stored READY, otherwise DELAYED.
  virtual Result<std::vector<RowId>> Insert(std::span<const NewItem> items, Time now) = 0;

  // The best `limit` READY items of a topic, in ordering-rule order.
  virtual Result<std::vector<ReadyKey>> FetchReady(const std::string& ns,
                                                   const std::string& topic,
                                                   size_t limit) = 0;

  // Leases the given rows if they are still READY (compare-and-swap) and not expired
  // by TTL: state LEASED, lease_token = token, deliver_after = now + the item's lease
  // duration, attempts + 1. Returns the rows that were leased (others are skipped),
  // in any order, with payload and metadata.
  virtual Result<std::vector<LeasedItem>> Claim(std::span<const RowId> rows,
                                                LeaseToken token, Time now) = 0;

  // One outcome per request, in request order. A Nack moves the item to READY
  // (delay 0) or DELAYED.
  virtual Result<std::vector<ItemOutcome>> Ack(std::span<const AckRequest> acks) = 0;
  virtual Result<std::vector<ItemOutcome>> Nack(std::span<const NackRequest> nacks,
                                                Time now) = 0;
  // Refused (kFailedPrecondition) if the lease has already expired at `now`.
  virtual Result<std::vector<ItemOutcome>> Extend(std::span<const ExtendRequest> reqs,
                                                  Time now) = 0;

  // Moves up to `limit` items that are due at `now` to READY: DELAYED items whose
  // deliver_after <= now and LEASED items whose lease expired (deliver_after <= now).
  // Earliest first. The lease token of an expired lease is kept until the next claim,
  // so a late ack of work that was in fact done still succeeds.
  virtual Result<std::vector<ItemTransition>> PromoteDue(Time now, size_t limit) = 0;

  // Deletes up to `limit` items whose TTL (expires_at) is <= now, in any state.
  virtual Result<std::vector<ItemTransition>> PurgeExpired(Time now, size_t limit) = 0;

  // The earliest deliver_after among DELAYED and LEASED items, or nullopt if none:
  // when PromoteDue next has work.
  virtual Result<std::optional<Time>> NextDue() = 0;

  // Item counts per (namespace, topic, state); used once at start-up to seed the
  // in-memory counters, and by tests.
  virtual Result<std::vector<TopicCounts>> CountByTopic() = 0;
};

}  // namespace shardq::store
