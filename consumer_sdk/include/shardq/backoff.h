#pragma once
// Exponential backoff with full jitter (AWS architecture blog, "Exponential Backoff
// and Jitter"): the n-th wait (n = 1, 2, ...) is uniform in [0, min(cap, base*2^(n-1))].
// Used for the producer's retries, the worker's reconnect waits and the Nack delay of
// a retriable task failure.

#include <cstdint>
#include <mutex>
#include <random>
#include <string>

#include "shardq/clock.h"

namespace shardq::sdk {

// The shape of one backoff schedule.
struct Backoff {
  // The ceiling of the first wait.
  Millis base{100};
  // No wait is longer than this.
  Millis cap{10'000};

  // The ceiling of the `attempt`-th wait (attempt >= 1): min(cap, base * 2^(attempt-1)),
  // without overflow for any attempt.
  Millis Ceiling(uint32_t attempt) const;
};

// A thread-safe source of uniform random numbers for jitter. Seed 0 = nondeterministic.
class Jitter {
 public:
  explicit Jitter(uint64_t seed = 0);
  // Uniform in [0, max] (inclusive); 0 when max <= 0.
  Millis Uniform(Millis max);
  // The full-jitter wait for `attempt` (>= 1) of `backoff`.
  Millis Delay(const Backoff& backoff, uint32_t attempt) {
    return Uniform(backoff.Ceiling(attempt));
  }
  // 128 random bits as 32 lowercase hex characters.
  std::string RandomHex128();
  // A dedup key of 32 characters: "~", `unix_ms` (48 bits) as 12 lowercase hex digits,
  // then 76 random bits as 19 more. Keys made later sort later, so the server's unique
  // index on them grows at its right edge (like UUIDv7) instead of at random pages:
  // random keys made enqueues into a table much larger than the buffer pool read a
  // page per key. The "~" and the time make it a time-ordered key for the server's
  // placement: keys made within the same 32 ms go to the same shard and share its
  // commits (see EnqueueItem.dedup_key in queue.proto).
  std::string TimeOrderedKey(int64_t unix_ms);

 private:
  std::mutex mu_;
  std::mt19937_64 rng_;
};

}  // namespace shardq::sdk
