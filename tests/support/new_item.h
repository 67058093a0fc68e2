#pragma once
// A NewItem for tests of the layers below the frontend (worker, engine).

#include <string>
#include <utility>

#include "common/item.h"

namespace shardq::testing {

inline NewItem Item(std::string topic, int32_t priority = 0, Time deliver_after = Time{},
                    Duration lease = Duration(30'000), std::string payload = "p") {
  NewItem item;
  item.ns = "ns";
  item.topic = std::move(topic);
  item.priority = priority;
  item.payload = std::move(payload);
  item.deliver_after = deliver_after;
  item.lease = lease;
  return item;
}

}  // namespace shardq::testing
