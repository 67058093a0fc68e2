#pragma once
// The benchmark's output: every run's figures, then the medians with the ratios to the
// references and the targets of issue 4.

#include <iosfwd>
#include <vector>

#include "bench/workload.h"

namespace shardq::bench {

// The median of each figure over `runs`.
Figures Medians(const std::vector<Figures>& runs);

// One table: figure | median | each run.
void PrintRuns(std::ostream& out, const std::vector<Figures>& runs);

// Ratios to the references and pass/fail of each target, from the medians.
void PrintTargets(std::ostream& out, const Figures& medians);

}  // namespace shardq::bench
