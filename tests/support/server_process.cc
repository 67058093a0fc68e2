#include "tests/support/server_process.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

namespace shardq::testing {

Result<ServerProcess> ServerProcess::Start(const ServerProcessOptions& options) {
  ServerProcess p;
  char tmpl[] = "/tmp/shardqd-test-XXXXXX";
  if (mkdtemp(tmpl) == nullptr) return Status::Internal("mkdtemp failed");
  p.dir_ = tmpl;
  std::string port_file = p.dir_ + "/port";
  std::string log = p.dir_ + "/shardqd.log";
  std::vector<std::string> args = {options.binary,
                                   "--mysql-socket",
                                   options.socket,
                                   "--shards",
                                   std::to_string(options.shards),
                                   "--listen",
                                   "127.0.0.1:0",
                                   "--port-file",
                                   port_file,
                                   "--io-threads",
                                   std::to_string(options.io_threads)};
  args.insert(args.end(), options.extra_args.begin(), options.extra_args.end());
  std::vector<char*> argv;
  for (std::string& arg : args) argv.push_back(arg.data());
  argv.push_back(nullptr);
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
    execv(argv[0], argv.data());
    _exit(126);
  }
  p.pid_ = pid;
  // Wait for the process to say it listens (bounded): this waits for a process, not
  // for time to pass.
  auto until = std::chrono::steady_clock::now() + std::chrono::seconds(60);
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

void ServerProcess::Kill() { Signal(SIGKILL); }

void ServerProcess::Stop() { Signal(SIGTERM); }

void ServerProcess::Signal(int signal) {
  if (pid_ <= 0) return;
  ::kill(pid_, signal);
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

double ServerProcess::ProcStatus(const std::string& field) const {
  std::ifstream in("/proc/" + std::to_string(pid_) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field + ":", 0) == 0) {
      std::istringstream rest(line.substr(field.size() + 1));
      double v = 0;
      rest >> v;
      return v;
    }
  }
  return std::nan("");
}

int ServerProcess::ShardqThreads(const std::map<std::string, int>& names) {
  int own = 0;
  for (const auto& [name, count] : names) {
    if (name.rfind("shardq", 0) == 0) own += count;
  }
  return own;
}

std::map<std::string, int> ServerProcess::ThreadNames() const {
  std::map<std::string, int> names;
  std::error_code ec;
  for (const auto& task : std::filesystem::directory_iterator(
           "/proc/" + std::to_string(pid_) + "/task", ec)) {
    std::ifstream in(task.path() / "comm");
    std::string name;
    std::getline(in, name);
    ++names[name];
  }
  return names;
}

}  // namespace shardq::testing
