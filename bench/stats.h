#pragma once
// Percentiles and medians for the benchmark's tables.

#include <algorithm>
#include <cmath>
#include <vector>

namespace shardq::bench {

// The q-quantile (0..1) by nearest rank; NaN for no samples.
inline double Percentile(std::vector<double> values, double q) {
  if (values.empty()) return std::nan("");
  std::sort(values.begin(), values.end());
  size_t rank = static_cast<size_t>(std::ceil(q * static_cast<double>(values.size())));
  return values[std::clamp<size_t>(rank, 1, values.size()) - 1];
}

// The median of the runs of one figure (mean of the middle two for an even count).
inline double Median(std::vector<double> values) {
  if (values.empty()) return std::nan("");
  std::sort(values.begin(), values.end());
  size_t n = values.size();
  return n % 2 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

}  // namespace shardq::bench
