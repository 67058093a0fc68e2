#include "bench/report.h"

#include <fmt/format.h>

#include <cmath>
#include <functional>
#include <ostream>

#include "bench/stats.h"

namespace shardq::bench {
namespace {

std::string Cell(double v) {
  if (std::isnan(v)) return "-";
  if (std::fabs(v) >= 10'000) return fmt::format("{:.1f}k", v / 1000);
  if (std::fabs(v) >= 100) return fmt::format("{:.0f}", v);
  return fmt::format("{:.3g}", v);
}

double Get(const Figures& f, const std::string& name) {
  auto it = f.find(name);
  return it == f.end() ? std::nan("") : it->second;
}

}  // namespace

Figures Medians(const std::vector<Figures>& runs) {
  std::map<std::string, std::vector<double>> all;
  for (const Figures& run : runs) {
    for (const auto& [name, value] : run) all[name].push_back(value);
  }
  Figures medians;
  for (const auto& [name, values] : all) medians[name] = Median(values);
  return medians;
}

void PrintRuns(std::ostream& out, const std::vector<Figures>& runs) {
  Figures medians = Medians(runs);
  out << "| figure | median |";
  for (size_t i = 0; i < runs.size(); ++i) out << " run " << i + 1 << " |";
  out << "\n|---|---|";
  for (size_t i = 0; i < runs.size(); ++i) out << "---|";
  out << "\n";
  for (const auto& [name, median] : medians) {
    out << "| " << name << " | " << Cell(median) << " |";
    for (const Figures& run : runs) out << " " << Cell(Get(run, name)) << " |";
    out << "\n";
  }
}

void PrintTargets(std::ostream& out, const Figures& m) {
  struct Target {
    std::string what;
    double value;
    std::string goal;
    bool met;
  };
  auto ratio = [&](const std::string& a, const std::string& b) {
    return Get(m, a) / Get(m, b);
  };
  const std::string a1 = "A1 enqueue, single (items/s)",
                    a2 = "A2 enqueue, batch (items/s)",
                    b2 = "B2 drain, batch ack (items/s)";
  std::vector<Target> targets = {
      {"A2 / raw multi-row INSERT", ratio(a2, "ref raw INSERT, batch (rows/s)"), ">= 0.8",
       ratio(a2, "ref raw INSERT, batch (rows/s)") >= 0.8},
      {"A1 / naive single enqueue", ratio(a1, "ref naive enqueue, single (items/s)"),
       ">= 4", ratio(a1, "ref naive enqueue, single (items/s)") >= 4},
      {"A1 items/s", Get(m, a1), ">= 35000", Get(m, a1) >= 35'000},
      {"B2 / naive drain", ratio(b2, "ref naive drain, batch ack (items/s)"), ">= 5",
       ratio(b2, "ref naive drain, batch ack (items/s)") >= 5},
      {"B2 items/s", Get(m, b2), ">= 30000", Get(m, b2) >= 30'000},
      {"R B2 (retention 0) / naive drain",
       ratio("R B2 drain, retention 0 (items/s)", "ref naive drain, batch ack (items/s)"),
       "(info)", true},
      {"B2 / raw DELETE by PK", ratio(b2, "ref raw DELETE by PK (rows/s)"), "(info)",
       true},
      {"C latency p99 (ms)", Get(m, "C latency p99 (ms)"), "< 10",
       Get(m, "C latency p99 (ms)") < 10},
      {"C rate held", Get(m, "C rate held (1 = yes)"), "= 1",
       Get(m, "C rate held (1 = yes)") == 1},
      {"D inversions per item (%)", Get(m, "D inversions per item (%)"), "= 0",
       Get(m, "D inversions per item (%)") == 0},
      {"E delay lateness p99 (ms)", Get(m, "E delay lateness p99 (ms)"), "< 20",
       Get(m, "E delay lateness p99 (ms)") < 20},
      {"F A1 / A1 (1M backlog)", ratio("F " + a1, a1), ">= 0.8",
       ratio("F " + a1, a1) >= 0.8},
      {"F A2 / A2 (1M backlog)", ratio("F " + a2, a2), ">= 0.8",
       ratio("F " + a2, a2) >= 0.8},
      {"F B1 / B1 (1M backlog)",
       ratio("F B1 drain, SDK workers (items/s)", "B1 drain, SDK workers (items/s)"),
       ">= 0.8",
       ratio("F B1 drain, SDK workers (items/s)", "B1 drain, SDK workers (items/s)") >=
           0.8},
      {"F B2 / B2 (1M backlog)", ratio("F " + b2, b2), ">= 0.8",
       ratio("F " + b2, b2) >= 0.8},
      {"F server peak RSS (MiB)", Get(m, "F server peak RSS (MiB)"), "< 512",
       Get(m, "F server peak RSS (MiB)") < 512},
  };
  if (m.count("T shardq's own threads, 4 shards")) {
    const double a = Get(m, "T shardq's own threads, 4 shards"),
                 b = Get(m, "T shardq's own threads, 64 shards");
    targets.push_back(
        {"shardq's own threads, 64 shards - 4 shards", b - a, "= 0", a == b});
  }
  if (m.count("T threads, 4 shards")) {
    targets.push_back({"steady threads 64 shards - 4 shards",
                       Get(m, "T threads, 64 shards") - Get(m, "T threads, 4 shards"),
                       "= 0",
                       Get(m, "T threads, 64 shards") == Get(m, "T threads, 4 shards")});
  }
  out << "| target | median | goal | met |\n|---|---|---|---|\n";
  for (const Target& t : targets) {
    if (std::isnan(t.value)) continue;
    out << "| " << t.what << " | " << Cell(t.value) << " | " << t.goal << " | "
        << (t.met ? "yes" : "**no**") << " |\n";
  }
}

}  // namespace shardq::bench
