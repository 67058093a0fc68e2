#pragma once
// A program run as a child process by a test (shardqctl, the examples): its stdout,
// stderr and exit code, with a bounded real-time wait.

#include <chrono>
#include <string>
#include <vector>

namespace shardq::testing {

// What one run left behind.
struct ChildResult {
  int exit_code = -1;  // -1: it did not exit by itself; `failure` says why
  std::string out, err;
  std::string failure;  // "" when it exited
};

// Runs `args` (args[0]: the binary's path) with `input` on its stdin, then EOF, and
// collects stdout, stderr and the exit code. A run longer than `limit` is killed.
// SHARDQ_* variables of the test's environment are not passed on (they would change
// the tools' defaults). The first call makes this process ignore SIGPIPE, so that a
// child that exits before reading its stdin does not kill the test.
ChildResult RunChild(const std::vector<std::string>& args, const std::string& input = "",
                     std::chrono::seconds limit = std::chrono::seconds(60));

}  // namespace shardq::testing
