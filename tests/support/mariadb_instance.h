#pragma once
// A private MariaDB server for tests: its own data directory under /tmp, a unix
// socket, no TCP, no /etc/mysql configuration (--no-defaults), default (durable) InnoDB
// flushing. The system tables are created once per process into a template directory
// that each further instance copies (mariadb-install-db is the slow part).
//
// Kill()/Stop()/StartAgain() let tests crash and restart the server on the same data
// directory: the crash-recovery path of a shard.

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "common/status.h"
#include "store/mysql_store.h"

namespace shardq::testing {

class MariaDbInstance {
 public:
  // Creates a data directory and starts the server; returns once it accepts
  // connections (at most 30 s). `extra_args` are appended to mariadbd's command line
  // (e.g. "--innodb-autoinc-lock-mode=2" to test a misconfigured server).
  static Result<std::unique_ptr<MariaDbInstance>> Start(
      std::vector<std::string> extra_args = {});
  // Kills the server (if running) and removes the directory.
  ~MariaDbInstance();
  MariaDbInstance(const MariaDbInstance&) = delete;
  MariaDbInstance& operator=(const MariaDbInstance&) = delete;

  const std::string& socket() const { return socket_; }
  const std::string& dir() const { return dir_; }
  store::MysqlEndpoint endpoint() const;
  bool running() const { return pid_ > 0; }

  // SIGKILL and reap: a crash, InnoDB recovers at the next start.
  Status Kill();
  // SIGTERM and reap: a clean shutdown.
  Status Stop();
  // Starts the server again on the same data directory and socket.
  Status StartAgain();
  // If the server has exited by itself (a crash of its own: a test that kills it can
  // meet one), starts it again, as a supervisor would, and says so in `*why` (the end
  // of its error log). False if it was running.
  bool RestartIfDied(std::string* why);
  // The end of the server's error log, for a failing test's message.
  std::string LogTail(size_t max_bytes = 2000) const;

 private:
  MariaDbInstance(std::string dir, std::vector<std::string> extra_args);
  Status Spawn();
  Status WaitReady();
  Status Reap(int signal);

  std::string dir_;      // removed by the destructor
  std::string datadir_;  // dir_/data
  std::string socket_;   // dir_/mysql.sock
  std::vector<std::string> extra_args_;
  pid_t pid_ = -1;
};

// One instance per test binary, started on first use and killed at exit. Aborts the
// process with a message if the server cannot be started.
MariaDbInstance& SharedMariaDb();

// Waits (bounded, real time) until the shared MariaDB has freed the ownership lock of
// shard database `database`. It does so when the owner's session has ended, a moment
// after its client closed the connection or was killed; a server started again at
// once finds the shard still owned, and its probes (on its clock, a test's fake one)
// would take it over only later. False if it stayed held.
bool AwaitOwnershipFreed(const std::string& database);

}  // namespace shardq::testing
