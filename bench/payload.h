#pragma once
// The W1 payload: exactly 1024 bytes, "seq;priority;start_us;due_us;" then 'x' padding,
// the same layout as the peer harness (../shared/bench/peers). start_us is when the
// enqueue call started and due_us when the item may run (both on this process's
// steady clock), so a consumer in the same process measures latency from the payload.

#include <chrono>
#include <cstdint>
#include <string>

namespace shardq::bench {

inline constexpr size_t kPayloadBytes = 1024;

// Microseconds on the steady clock (shared by every thread of the benchmark).
inline int64_t NowUs() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Wall-clock unix ms, to compare with the server's times (same host).
inline int64_t NowUnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

struct PayloadHeader {
  int64_t seq = 0;
  int32_t priority = 0;
  int64_t start_us = 0;
  int64_t due_us = 0;
};

std::string MakePayload(const PayloadHeader& header);
// False if `payload` does not start with a header.
bool ParsePayload(const std::string& payload, PayloadHeader* header);

}  // namespace shardq::bench
