#pragma once
// Per-namespace enqueue quotas: a token bucket for each namespace whose policy sets
// an enqueue rate (NamespacePolicy::enqueue_rate, items a second, and
// enqueue_burst). One tenant's burst then cannot fill the shards' buffers and
// MariaDB's commits that every namespace shares; the items past the quota are
// refused RESOURCE_EXHAUSTED, which producers retry with backoff. Deduplicated
// retries count as items too: the quota bounds what a namespace asks, not what it
// stores. Namespaces are the clients' to name (there is no authentication yet), so a
// quota binds a tenant that keeps to its namespace, not one that makes up names.
//
// Threads: any (the gRPC threads that run Enqueue calls); one mutex, taken only for
// a namespace that has a quota.

#include <cstddef>
#include <mutex>
#include <string>
#include <unordered_map>

#include "common/clock.h"
#include "common/namespace_policy.h"

namespace shardq::engine {

class EnqueueQuotas {
 public:
  // `policies` and `clock` must outlive this.
  EnqueueQuotas(const NamespacePolicies& policies, Clock& clock)
      : policies_(policies), clock_(clock) {}

  // Takes up to `n` items of `ns`'s quota now; returns how many it took (`n` when
  // the namespace has no quota).
  size_t Take(const std::string& ns, size_t n);
  // Gives back `n` items taken from `ns`'s quota that were then refused without being
  // tried (the server's enqueue budget or the shards' buffers were full), so that
  // the retries do not pay twice.
  void Refund(const std::string& ns, size_t n);

  // Past this many buckets the full ones are swept (a full bucket is the same as
  // none), so after a sweep the map holds only the namespaces that used their quota
  // within the last burst/rate seconds; the next sweep waits until the map has
  // doubled again, so sweeps cost O(1) a Take on average.
  static constexpr size_t kSweepAbove = 10'000;
  size_t buckets() const {
    std::lock_guard lock(mu_);
    return buckets_.size();
  }

 private:
  struct Bucket {
    double tokens = 0;
    Time at{};  // when `tokens` was counted
  };
  // Tokens of `b` at `now`: what it had, plus the refill since, up to the burst.
  static double Refilled(const Bucket& b, const NamespacePolicy& p, Time now);
  void SweepFullLocked(Time now);

  const NamespacePolicies& policies_;
  Clock& clock_;
  mutable std::mutex mu_;
  std::unordered_map<std::string, Bucket> buckets_;
  size_t sweep_above_ = kSweepAbove;
};

}  // namespace shardq::engine
