#pragma once
// shardqd as a child process, for the tests that kill it with SIGKILL.

#include <sys/types.h>

#include <string>

#include "common/status.h"

namespace shardq::testing {

class ServerProcess {
 public:
  // Starts the shardqd binary (SHARDQD_PATH) on a MariaDB socket with its embedded
  // default databases shardq_0..shardq_<shards-1>, on a free port. Returns once the
  // server listens.
  static Result<ServerProcess> Start(const std::string& socket, int shards);
  ServerProcess(ServerProcess&& o) noexcept : pid_(o.pid_), port_(o.port_), dir_(o.dir_) {
    o.pid_ = -1;
  }
  ~ServerProcess();

  int port() const { return port_; }
  // SIGKILL and reap.
  void Kill();

 private:
  ServerProcess() = default;
  pid_t pid_ = -1;
  int port_ = 0;
  std::string dir_;
};

}  // namespace shardq::testing
