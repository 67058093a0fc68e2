#include "tests/support/mariadb_instance.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>
#include <vector>

#include "store/db_client.h"

namespace shardq::testing {
namespace {

namespace fs = std::filesystem;

std::string FindBinary(const std::vector<std::string>& names) {
  for (const std::string& name : names) {
    for (const char* dir : {"/usr/sbin/", "/usr/bin/", "/usr/local/sbin/",
                            "/usr/local/bin/", "/usr/local/mysql/bin/"}) {
      std::string path = std::string(dir) + name;
      if (access(path.c_str(), X_OK) == 0) return path;
    }
  }
  return "";
}

Result<std::string> MakeTempDir(const std::string& prefix) {
  std::string tmpl = "/tmp/" + prefix + "XXXXXX";
  if (mkdtemp(tmpl.data()) == nullptr) {
    return Status::Internal("mkdtemp(" + tmpl + ") failed: " + std::strerror(errno));
  }
  return tmpl;
}

// fork + exec with stdout and stderr appended to `log`; the child dies with us (so a
// crashed test binary does not leave a server behind). Returns the child's pid.
Result<pid_t> SpawnProcess(const std::vector<std::string>& argv, const std::string& log) {
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0)
    return Status::Internal(std::string("fork failed: ") + std::strerror(errno));
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);  // the parent died before prctl
    int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
      dup2(fd, STDOUT_FILENO);
      dup2(fd, STDERR_FILENO);
      close(fd);
    }
    execv(args[0], args.data());
    _exit(127);
  }
  return pid;
}

std::string ReadTail(const std::string& path, size_t max_bytes = 2000) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  std::string s = ss.str();
  return s.size() > max_bytes ? s.substr(s.size() - max_bytes) : s;
}

// The system tables, made once per process and copied for each instance.
class Template {
 public:
  static Result<std::string> DataDir() {
    static Template t;
    std::lock_guard lock(t.mu_);
    if (t.datadir_.empty()) {
      Result<std::string> made = t.Make();
      if (!made.ok()) return made.status();
      t.datadir_ = *made;
    }
    return t.datadir_;
  }

 private:
  ~Template() {
    if (!dir_.empty()) {
      std::error_code ec;
      fs::remove_all(dir_, ec);
    }
  }

  Result<std::string> Make() {
    std::string install = FindBinary({"mariadb-install-db", "mysql_install_db"});
    if (install.empty()) return Status::Internal("mariadb-install-db not found");
    Result<std::string> dir = MakeTempDir("shardq-mdb-template-");
    if (!dir.ok()) return dir.status();
    dir_ = *dir;
    const std::string datadir = dir_ + "/data";
    const std::string log = dir_ + "/install.log";
    // A private tmpdir: bootstraps running at once (test binaries in parallel) clash
    // on temporary table files in a shared /tmp.
    const std::string tmpdir = dir_ + "/tmp";
    fs::create_directories(tmpdir);
    // The redo log size must match what the server is started with.
    Result<pid_t> pid = SpawnProcess(
        {install, "--no-defaults", "--datadir=" + datadir, "--tmpdir=" + tmpdir,
         "--user=root", "--auth-root-authentication-method=normal",
         "--innodb-buffer-pool-size=64M", "--innodb-log-file-size=48M"},
        log);
    if (!pid.ok()) return pid.status();
    int status = 0;
    if (waitpid(*pid, &status, 0) != *pid || !WIFEXITED(status) ||
        WEXITSTATUS(status) != 0) {
      return Status::Internal("mariadb-install-db failed: " + ReadTail(log));
    }
    return datadir;
  }

  std::mutex mu_;
  std::string dir_;
  std::string datadir_;
};

}  // namespace

MariaDbInstance::MariaDbInstance(std::string dir, std::vector<std::string> extra_args)
    : dir_(std::move(dir)),
      datadir_(dir_ + "/data"),
      socket_(dir_ + "/mysql.sock"),
      extra_args_(std::move(extra_args)) {}

MariaDbInstance::~MariaDbInstance() {
  if (pid_ > 0) Kill().IgnoreError();
  std::error_code ec;
  fs::remove_all(dir_, ec);
}

Result<std::unique_ptr<MariaDbInstance>> MariaDbInstance::Start(
    std::vector<std::string> extra_args) {
  Result<std::string> tmpl = Template::DataDir();
  if (!tmpl.ok()) return tmpl.status();
  Result<std::string> dir = MakeTempDir("shardq-mdb-");
  if (!dir.ok()) return dir.status();
  std::unique_ptr<MariaDbInstance> db(new MariaDbInstance(*dir, std::move(extra_args)));
  std::error_code ec;
  fs::copy(*tmpl, db->datadir_, fs::copy_options::recursive, ec);
  if (ec) return Status::Internal("copying the template datadir: " + ec.message());
  SHARDQ_RETURN_IF_ERROR(db->StartAgain());
  return db;
}

store::MysqlEndpoint MariaDbInstance::endpoint() const {
  store::MysqlEndpoint ep;
  ep.socket = socket_;
  ep.user = "root";
  // Short timeouts: tests kill the server on purpose and must not hang on it.
  ep.connect_timeout_s = 2;
  ep.read_timeout_s = 10;
  ep.write_timeout_s = 10;
  return ep;
}

Status MariaDbInstance::StartAgain() {
  if (pid_ > 0) return Status::FailedPrecondition("mariadbd is already running");
  SHARDQ_RETURN_IF_ERROR(Spawn());
  return WaitReady();
}

bool MariaDbInstance::RestartIfDied(std::string* why) {
  int status = 0;
  if (pid_ <= 0 || waitpid(pid_, &status, WNOHANG) != pid_) return false;
  pid_ = -1;
  *why = LogTail(20'000);
  Status st = StartAgain();
  if (!st.ok()) *why += "\nand it did not start again: " + st.ToString();
  return true;
}

Status MariaDbInstance::Spawn() {
  std::string server = FindBinary({"mariadbd", "mysqld"});
  if (server.empty()) return Status::Internal("mariadbd not found");
  // A killed server leaves its socket and pid file behind.
  unlink(socket_.c_str());
  unlink((dir_ + "/mariadbd.pid").c_str());
  // Flush settings are left at their defaults: commits are durable, as in production.
  fs::create_directories(dir_ + "/tmp");
  std::vector<std::string> argv = {server,
                                   "--no-defaults",
                                   "--datadir=" + datadir_,
                                   "--tmpdir=" + dir_ + "/tmp",
                                   "--socket=" + socket_,
                                   "--skip-networking",
                                   "--user=root",
                                   "--pid-file=" + dir_ + "/mariadbd.pid",
                                   "--log-error=" + datadir_ + "/err.log",
                                   "--innodb-buffer-pool-size=64M",
                                   "--innodb-log-file-size=48M"};
  argv.insert(argv.end(), extra_args_.begin(), extra_args_.end());
  Result<pid_t> pid = SpawnProcess(argv, dir_ + "/stdout.log");
  if (!pid.ok()) return pid.status();
  pid_ = *pid;
  return Status::Ok();
}

Status MariaDbInstance::WaitReady() {
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  std::string last_error;
  while (std::chrono::steady_clock::now() < give_up) {
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return Status::Internal("mariadbd exited during start-up: " + LogTail());
    }
    try {
      store::DbConnection conn(endpoint());
      return Status::Ok();
    } catch (const store::DbError& e) {
      last_error = e.what();
    }
    // Polling for another process to come up, not waiting for time to pass.
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  Kill().IgnoreError();
  return Status::Unavailable("mariadbd did not accept connections within 30 s (" +
                             last_error + "): " + LogTail());
}

Status MariaDbInstance::Reap(int signal) {
  if (pid_ <= 0) return Status::FailedPrecondition("mariadbd is not running");
  if (kill(pid_, signal) != 0) {
    return Status::Internal(std::string("kill failed: ") + std::strerror(errno));
  }
  int status = 0;
  pid_t r;
  do {
    r = waitpid(pid_, &status, 0);
  } while (r < 0 && errno == EINTR);
  pid_ = -1;
  if (r < 0)
    return Status::Internal(std::string("waitpid failed: ") + std::strerror(errno));
  return Status::Ok();
}

Status MariaDbInstance::Kill() { return Reap(SIGKILL); }

Status MariaDbInstance::Stop() { return Reap(SIGTERM); }

std::string MariaDbInstance::LogTail(size_t max_bytes) const {
  return ReadTail(datadir_ + "/err.log", max_bytes);
}

MariaDbInstance& SharedMariaDb() {
  // Destroyed (server killed, directory removed) by the static destructors at exit.
  static std::unique_ptr<MariaDbInstance> shared = [] {
    Result<std::unique_ptr<MariaDbInstance>> db = MariaDbInstance::Start();
    if (!db.ok()) {
      std::fprintf(stderr, "cannot start the test MariaDB: %s\n",
                   db.status().ToString().c_str());
      std::abort();
    }
    return std::move(db).value();
  }();
  return *shared;
}

bool AwaitOwnershipFreed(const std::string& database) {
  try {
    store::DbConnection conn(SharedMariaDb().endpoint());
    std::unique_ptr<store::DbStatement> held =
        conn.Prepare("SELECT IS_USED_LOCK(?) IS NOT NULL");
    held->SetString(1, store::OwnershipLockName(database));
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    for (;;) {
      store::DbRows& rs = held->ExecuteQuery();
      const bool freed = rs.Next() && rs.GetInt(1) == 0;
      while (rs.Next()) {
      }
      if (freed) return true;
      if (std::chrono::steady_clock::now() > until) return false;
      std::this_thread::yield();
    }
  } catch (const store::DbError&) {
    return false;
  }
}

}  // namespace shardq::testing
