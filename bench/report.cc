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

void PrintTargets(std::ostream& out, const std::vector<Figures>& runs) {
  const Figures m = Medians(runs);
  // A ratio is taken within each run, against the reference measured in that run,
  // and the table shows the median of those: the VM's speed moves between runs.
  auto ratio = [&](const std::string& a, const std::string& b) {
    std::vector<double> per_run;
    for (const Figures& run : runs) {
      const double r = Get(run, a) / Get(run, b);
      if (!std::isnan(r)) per_run.push_back(r);
    }
    return per_run.empty() ? std::nan("") : Median(per_run);
  };
  auto value = [&](const std::string& name) { return Get(m, name); };
  // A count that must be 0 in every run, not only in the median one.
  auto total = [&](const std::string& name) {
    double sum = 0;
    bool any = false;
    for (const Figures& run : runs) {
      const double v = Get(run, name);
      if (std::isnan(v)) continue;
      sum += v;
      any = true;
    }
    return any ? sum : std::nan("");
  };
  auto at_least = [](double goal) { return [goal](double v) { return v >= goal; }; };
  auto below = [](double goal) { return [goal](double v) { return v < goal; }; };
  auto equals = [](double goal) { return [goal](double v) { return v == goal; }; };
  auto info = [](double) { return true; };
  struct Target {
    std::string what;
    double value;
    std::string goal;
    std::function<bool(double)> met;
  };
  const std::string a1 = "A1 enqueue, single (items/s)",
                    a2 = "A2 enqueue, batch (items/s)",
                    b1 = "B1 drain, SDK workers (items/s)",
                    b2 = "B2 drain, batch ack (items/s)",
                    naive_drain = "ref naive drain, batch ack (items/s)";
  std::vector<Target> targets = {
      {"A2 / raw multi-row INSERT", ratio(a2, "ref raw INSERT, batch (rows/s)"), ">= 0.8",
       at_least(0.8)},
      {"A1 / naive single enqueue", ratio(a1, "ref naive enqueue, single (items/s)"),
       ">= 4", at_least(4)},
      {"A1 items/s", value(a1), ">= 35000", at_least(35'000)},
      {"B2 / naive drain", ratio(b2, naive_drain), ">= 5", at_least(5)},
      {"B2 items/s", value(b2), ">= 30000", at_least(30'000)},
      {"R B2 (retention 0) / naive drain",
       ratio("R B2 drain, retention 0 (items/s)", naive_drain), "(info)", info},
      {"B2 / raw DELETE by PK", ratio(b2, "ref raw DELETE by PK (rows/s)"), "(info)",
       info},
      {"C latency p99 (ms)", value("C latency p99 (ms)"), "< 10", below(10)},
      {"C rate held", value("C rate held (1 = yes)"), "= 1", equals(1)},
      {"D inversions per item (%)", value("D inversions per item (%)"), "= 0", equals(0)},
      {"E delay lateness p99 (ms)", value("E delay lateness p99 (ms)"), "< 20",
       below(20)},
      {"E delivered early (items, all runs)", total("E delivered early (items)"), "= 0",
       equals(0)},
      {"F A1 / A1 (1M backlog)", ratio("F " + a1, a1), ">= 0.8", at_least(0.8)},
      {"F A2 / A2 (1M backlog)", ratio("F " + a2, a2), ">= 0.8", at_least(0.8)},
      {"F B1 / B1 (1M backlog)", ratio("F " + b1, b1), ">= 0.8", at_least(0.8)},
      {"F B2 / B2 (1M backlog)", ratio("F " + b2, b2), ">= 0.8", at_least(0.8)},
      {"F server peak RSS (MiB)", value("F server peak RSS (MiB)"), "< 512", below(512)},
  };
  if (m.count("T shardq's own threads, 4 shards")) {
    targets.push_back({"shardq's own threads, 64 shards - 4 shards",
                       value("T shardq's own threads, 64 shards") -
                           value("T shardq's own threads, 4 shards"),
                       "= 0", equals(0)});
  }
  if (m.count("T threads, 4 shards")) {
    targets.push_back({"steady threads 64 shards - 4 shards",
                       value("T threads, 64 shards") - value("T threads, 4 shards"),
                       "= 0", equals(0)});
  }
  out << "| target | median (a ratio: of the per-run ratios) | goal | met |\n"
         "|---|---|---|---|\n";
  for (const Target& t : targets) {
    if (std::isnan(t.value)) continue;
    out << "| " << t.what << " | " << Cell(t.value) << " | " << t.goal << " | "
        << (t.met(t.value) ? "yes" : "**no**") << " |\n";
  }
}

}  // namespace shardq::bench
