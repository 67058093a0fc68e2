#pragma once
// ShardStore in memory: the same semantics as MySqlShardStore (the contract tests run
// against both) without any I/O. Used by tests of the layers above the store, which
// can also inject failures to exercise retries and circuit breakers.
//
// Not thread-safe, like every ShardStore.

#include <cstdint>
#include <map>
#include <optional>
#include <string>

#include "store/store_api.h"

namespace shardq::store {

class MemoryShardStore final : public ShardStore {
 public:
  // One value per ShardStore method, for fault injection.
  enum class Op {
    kOpen,
    kPing,
    kInsert,
    kFetchReady,
    kClaim,
    kAck,
    kNack,
    kExtend,
    kPromoteDue,
    kPurgeExpired,
    kNextDue,
    kCountByTopic,
  };

  // The next call of `op` returns `s` (must not be OK) and changes nothing.
  void FailNext(Op op, Status s);
  // Every call returns `s` and changes nothing, until ClearFailures().
  void FailAll(Status s);
  void ClearFailures();

  Status Open() override;
  Status Ping() override;
  Result<std::vector<RowId>> Insert(std::span<const NewItem> items, Time now) override;
  Result<std::vector<ReadyKey>> FetchReady(const std::string& ns,
                                           const std::string& topic,
                                           size_t limit) override;
  Result<std::vector<LeasedItem>> Claim(std::span<const RowId> rows, LeaseToken token,
                                        Time now) override;
  Result<std::vector<ItemOutcome>> Ack(std::span<const AckRequest> acks) override;
  Result<std::vector<ItemOutcome>> Nack(std::span<const NackRequest> nacks,
                                        Time now) override;
  Result<std::vector<ItemOutcome>> Extend(std::span<const ExtendRequest> reqs,
                                          Time now) override;
  Result<std::vector<ItemTransition>> PromoteDue(Time now, size_t limit) override;
  Result<std::vector<ItemTransition>> PurgeExpired(Time now, size_t limit) override;
  Result<std::optional<Time>> NextDue() override;
  Result<std::vector<TopicCounts>> CountByTopic() override;

  // Number of stored rows (for tests).
  size_t size() const { return rows_.size(); }

 private:
  // One row of the items table.
  struct Row {
    std::string ns;
    std::string topic;
    int32_t priority = 0;
    ItemState state = ItemState::kReady;
    Time deliver_after{};
    Duration lease{};
    uint64_t lease_token = 0;
    uint32_t attempts = 0;
    Time enqueued_at{};
    std::optional<Time> expires_at;
    std::string payload;
    std::string metadata;
  };

  // The injected failure for `op`, or OK.
  Status TakeFailure(Op op);
  static ItemTransition Transition(uint64_t id, const Row& r, ItemState to);

  std::map<uint64_t, Row> rows_;
  uint64_t next_id_ = 1;
  std::map<Op, Status> fail_next_;
  std::optional<Status> fail_all_;
};

}  // namespace shardq::store
