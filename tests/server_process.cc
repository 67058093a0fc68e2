#include "tests/server_process.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <thread>

namespace shardq::testing {

Result<ServerProcess> ServerProcess::Start(const std::string& socket, int shards) {
  ServerProcess p;
  char tmpl[] = "/tmp/shardqd-test-XXXXXX";
  if (mkdtemp(tmpl) == nullptr) return Status::Internal("mkdtemp failed");
  p.dir_ = tmpl;
  std::string port_file = p.dir_ + "/port";
  std::string log = p.dir_ + "/shardqd.log";
  std::string shards_arg = std::to_string(shards);
  pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0) return Status::Internal("fork failed");
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
    FILE* out = freopen(log.c_str(), "a", stdout);
    FILE* err = freopen(log.c_str(), "a", stderr);
    (void)out;
    (void)err;
    execl(SHARDQD_PATH, SHARDQD_PATH, "--mysql-socket", socket.c_str(), "--shards",
          shards_arg.c_str(), "--listen", "127.0.0.1:0", "--port-file", port_file.c_str(),
          "--io-threads", "4", static_cast<char*>(nullptr));
    _exit(126);
  }
  p.pid_ = pid;
  // Wait for the process to say it listens (bounded): this waits for a process, not
  // for time to pass.
  auto until = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (std::chrono::steady_clock::now() < until) {
    std::ifstream in(port_file);
    if (in >> p.port_ && p.port_ > 0) return p;
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      p.pid_ = -1;
      return Status::Internal("shardqd exited at start-up; see " + log);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return Status::Internal("shardqd did not start listening; see " + log);
}

void ServerProcess::Kill() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGKILL);
  int status = 0;
  waitpid(pid_, &status, 0);
  pid_ = -1;
}

ServerProcess::~ServerProcess() {
  Kill();
  if (!dir_.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
}

}  // namespace shardq::testing
