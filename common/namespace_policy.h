#pragma once
// Per-namespace settings of the task lifecycle, from the config file. A namespace
// that is not listed gets the defaults.

#include <cstdint>
#include <map>
#include <string>

#include "common/clock.h"

namespace shardq {

struct NamespacePolicy {
  // Deliveries allowed before a task is dead-lettered (an enqueue may override).
  uint32_t max_attempts = 5;
  // How long finished tasks (and dead letters) stay queryable before they are purged.
  Duration retention{7LL * 24 * 3600 * 1000};
  // Enqueue quota (engine/enqueue_quotas.h): items a second the namespace may enqueue,
  // 0 = no quota, with bursts of up to enqueue_burst items (0 = a second's worth).
  uint64_t enqueue_rate = 0;
  uint64_t enqueue_burst = 0;
  uint64_t burst() const { return enqueue_burst > 0 ? enqueue_burst : enqueue_rate; }
};

class NamespacePolicies {
 public:
  NamespacePolicies() = default;
  NamespacePolicies(NamespacePolicy defaults,
                    std::map<std::string, NamespacePolicy> by_ns)
      : defaults_(defaults), by_ns_(std::move(by_ns)) {}

  const NamespacePolicy& For(const std::string& ns) const {
    auto it = by_ns_.find(ns);
    return it == by_ns_.end() ? defaults_ : it->second;
  }
  const NamespacePolicy& defaults() const { return defaults_; }

 private:
  NamespacePolicy defaults_;
  std::map<std::string, NamespacePolicy> by_ns_;
};

}  // namespace shardq
