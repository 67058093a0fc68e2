#pragma once
// shardqd as a child process: for the tests that kill it with SIGKILL and for the
// benchmark, which measures the server process (threads, peak RSS) on its own.

#include <sys/types.h>

#include <map>
#include <string>
#include <vector>

#include "common/status.h"

namespace shardq::testing {

// How to start shardqd.
struct ServerProcessOptions {
  // The shardqd binary.
  std::string binary{};
  // The MariaDB socket; shardqd uses its embedded default databases
  // shardq_0..shardq_<shards-1> on it.
  std::string socket{};
  int shards = 4;
  int io_threads = 4;
  // Appended to the command line.
  std::vector<std::string> extra_args{};
};

class ServerProcess {
 public:
  // Starts shardqd on a free port; returns once the server listens (at most 60 s).
  static Result<ServerProcess> Start(const ServerProcessOptions& options);
  ServerProcess(ServerProcess&& o) noexcept : pid_(o.pid_), port_(o.port_), dir_(o.dir_) {
    o.pid_ = -1;
    o.dir_.clear();
  }
  ~ServerProcess();

  int port() const { return port_; }
  pid_t pid() const { return pid_; }
  // A number field of /proc/<pid>/status ("VmHWM", "Threads"; sizes in kB), or NaN.
  double ProcStatus(const std::string& field) const;
  // The process's threads, counted by name (/proc/<pid>/task/*/comm).
  std::map<std::string, int> ThreadNames() const;
  // Of ThreadNames(), shardq's own: shardq names its threads "shardq..." (gRPC names
  // its own).
  static int ShardqThreads(const std::map<std::string, int>& names);
  // SIGKILL and reap.
  void Kill();
  // SIGTERM and reap (a clean stop).
  void Stop();

 private:
  ServerProcess() = default;
  void Signal(int signal);
  pid_t pid_ = -1;
  int port_ = 0;
  std::string dir_;
};

}  // namespace shardq::testing
