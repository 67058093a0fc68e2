#include "engine/enqueue_quotas.h"

#include <algorithm>
#include <cmath>

namespace shardq::engine {

double EnqueueQuotas::Refilled(const Bucket& b, const NamespacePolicy& p, Time now) {
  const double elapsed_ms =
      static_cast<double>(std::max<int64_t>(0, (now - b.at).count()));
  return std::min(static_cast<double>(p.burst()),
                  b.tokens + elapsed_ms * static_cast<double>(p.enqueue_rate) / 1000.0);
}

size_t EnqueueQuotas::Take(const std::string& ns, size_t n) {
  const NamespacePolicy& policy = policies_.For(ns);
  if (policy.enqueue_rate == 0 || n == 0) return n;
  std::lock_guard lock(mu_);
  // Read under the lock: a `now` older than the bucket's would count its refill twice.
  const Time now = clock_.Now();
  auto [it, fresh] = buckets_.try_emplace(ns);
  Bucket& bucket = it->second;
  bucket.tokens =
      fresh ? static_cast<double>(policy.burst()) : Refilled(bucket, policy, now);
  bucket.at = now;
  const size_t taken = std::min(n, static_cast<size_t>(std::floor(bucket.tokens)));
  bucket.tokens -= static_cast<double>(taken);
  if (buckets_.size() > sweep_above_) SweepFullLocked(now);
  return taken;
}

void EnqueueQuotas::Refund(const std::string& ns, size_t n) {
  const NamespacePolicy& policy = policies_.For(ns);
  if (policy.enqueue_rate == 0 || n == 0) return;
  std::lock_guard lock(mu_);
  auto it = buckets_.find(ns);
  if (it == buckets_.end()) return;  // swept: full already
  it->second.tokens = std::min(static_cast<double>(policy.burst()),
                               it->second.tokens + static_cast<double>(n));
}

void EnqueueQuotas::SweepFullLocked(Time now) {
  std::erase_if(buckets_, [&](const auto& entry) {
    const NamespacePolicy& policy = policies_.For(entry.first);
    return Refilled(entry.second, policy, now) >= static_cast<double>(policy.burst());
  });
  sweep_above_ = std::max(kSweepAbove, 2 * buckets_.size());
}

}  // namespace shardq::engine
