#include "bench/workload.h"

#include <algorithm>
#include <cmath>

namespace shardq::bench {

W1 W1::Scaled(double f) const {
  auto scale = [f](int n) { return std::max(1, static_cast<int>(std::lround(n * f))); };
  W1 w = *this;
  w.items = std::max(batch, scale(items));
  w.c_seconds = std::max(2, scale(c_seconds));
  w.d_items = scale(d_items);
  w.e_items = scale(e_items);
  w.backlog = scale(backlog);
  return w;
}

}  // namespace shardq::bench
