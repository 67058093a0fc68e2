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

// Pass/fail of each target of issue 4: a figure's median over the runs, or, for a
// ratio to a reference, the median of the ratios taken within each run.
void PrintTargets(std::ostream& out, const std::vector<Figures>& runs);

}  // namespace shardq::bench
