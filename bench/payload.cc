#include "bench/payload.h"

#include <cstdio>

namespace shardq::bench {

std::string MakePayload(const PayloadHeader& h) {
  char head[96];
  int n = std::snprintf(
      head, sizeof head, "%lld;%d;%lld;%lld;", static_cast<long long>(h.seq), h.priority,
      static_cast<long long>(h.start_us), static_cast<long long>(h.due_us));
  std::string payload(kPayloadBytes, 'x');
  payload.replace(0, static_cast<size_t>(n), head, static_cast<size_t>(n));
  return payload;
}

bool ParsePayload(const std::string& payload, PayloadHeader* h) {
  long long seq = 0, start = 0, due = 0;
  int priority = 0;
  if (std::sscanf(payload.c_str(), "%lld;%d;%lld;%lld;", &seq, &priority, &start, &due) !=
      4) {
    return false;
  }
  *h = {.seq = seq, .priority = priority, .start_us = start, .due_us = due};
  return true;
}

}  // namespace shardq::bench
