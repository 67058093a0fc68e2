#include "shardq/backoff.h"

#include <algorithm>

namespace shardq::sdk {

Millis Backoff::Ceiling(uint32_t attempt) const {
  if (base <= Millis(0) || cap <= Millis(0)) return Millis(0);
  Millis ceiling = base;
  // Doubling a ceiling past half the cap would pass the cap (or overflow, for a cap
  // near Millis::max()): it saturates there instead.
  for (uint32_t i = 1; i < attempt && ceiling < cap; ++i)
    ceiling = ceiling > cap / 2 ? cap : ceiling * 2;
  return std::min(ceiling, cap);
}

Jitter::Jitter(uint64_t seed) : rng_(seed != 0 ? seed : std::random_device{}()) {
  if (seed == 0)
    rng_.seed((uint64_t{std::random_device{}()} << 32) ^ std::random_device{}());
}

Millis Jitter::Uniform(Millis max) {
  if (max <= Millis(0)) return Millis(0);
  std::uniform_int_distribution<int64_t> dist(0, max.count());
  std::lock_guard lock(mu_);
  return Millis(dist(rng_));
}

std::string Jitter::RandomHex128() {
  static constexpr char kHex[] = "0123456789abcdef";
  uint64_t words[2];
  {
    std::lock_guard lock(mu_);
    words[0] = rng_();
    words[1] = rng_();
  }
  std::string out(32, '0');
  for (int i = 0; i < 32; ++i) {
    out[i] = kHex[(words[i / 16] >> (4 * (i % 16))) & 0xF];
  }
  return out;
}

std::string Jitter::TimeOrderedKey(int64_t unix_ms) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out = RandomHex128();  // 19 of its random digits are kept
  out[0] = '~';
  const uint64_t ms = static_cast<uint64_t>(unix_ms) & ((uint64_t{1} << 48) - 1);
  for (int i = 0; i < 12; ++i)
    out[static_cast<size_t>(1 + i)] = kHex[(ms >> (4 * (11 - i))) & 0xF];
  return out;
}

}  // namespace shardq::sdk
