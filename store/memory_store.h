#pragma once
// ShardStore in memory: the same semantics as MySqlShardStore (the contract tests run
// against both) without any I/O. Used by tests of the layers above the store, which
// can also inject failures to exercise retries and circuit breakers.
//
// Unlike other stores it is thread-safe (one mutex), so that a test can inject
// failures or read counters while a shard worker's strand uses it.

#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
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
    kCount_,  // number of ops
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

  // Number of stored rows.
  size_t size() const;
  // How many times `op` was called (failed calls included).
  size_t calls(Op op) const;
  // Runs `hook` at the start of every Insert, before the store's lock is taken (a
  // test can block there to hold an insert in flight).
  void SetBeforeInsert(std::function<void()> hook);

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

  mutable std::mutex mu_;
  std::array<size_t, static_cast<size_t>(Op::kCount_)> calls_{};
  std::function<void()> before_insert_;
  std::map<uint64_t, Row> rows_;
  uint64_t next_id_ = 1;
  std::map<Op, Status> fail_next_;
  std::optional<Status> fail_all_;
};

}  // namespace shardq::store
