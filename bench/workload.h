#pragma once
// Workload W1 (see bench/README.md and ../shared/bench/peers/README.md): its sizes, and
// the figures one run produces.

#include <map>
#include <string>

namespace shardq::bench {

struct W1 {
  int producers = 4;
  int lanes = 8;  // calls in flight per producer
  int consumers = 4;
  int items = 40'000;           // A and B
  int batch = 100;              // A2
  int fetch = 50;               // B2, D: items per Dequeue
  int worker_concurrency = 16;  // B1, C, E: handlers per SDK worker
  int worker_buffer = 32;       // B1, C, E: tasks each SDK worker fetches ahead, at first
  int worker_max_buffer = 0;    // ... and at most (0: the SDK's default, 8x)
  int c_rate = 1'000;           // C: items/s, all producers together
  int c_seconds = 20;
  int c_max_outstanding = 256;  // per producer
  int d_items = 10'000;
  int e_items = 2'000;
  int e_delay_ms = 2'000;
  int backlog = 1'000'000;  // F

  // Scales every item count and C's duration (0.05 = a smoke run).
  W1 Scaled(double factor) const;
};

// One run's figures by name ("A1 enqueue single (items/s)" -> value).
using Figures = std::map<std::string, double>;

}  // namespace shardq::bench
