#include "tests/support/child_process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

extern char** environ;

namespace shardq::testing {

ChildResult RunChild(const std::vector<std::string>& args, const std::string& input,
                     std::chrono::seconds limit) {
  // A child that exits before reading its stdin must not kill the test with SIGPIPE.
  static const bool sigpipe_ignored = [] {
    signal(SIGPIPE, SIG_IGN);
    return true;
  }();
  (void)sigpipe_ignored;

  ChildResult result;
  if (args.empty()) {
    result.failure = "no program to run";
    return result;
  }
  int in[2] = {-1, -1}, out[2] = {-1, -1}, err[2] = {-1, -1};
  if (pipe2(in, O_CLOEXEC) != 0 || pipe2(out, O_CLOEXEC) != 0 ||
      pipe2(err, O_CLOEXEC) != 0) {
    result.failure = std::string("pipe2: ") + std::strerror(errno);
    for (int fd : {in[0], in[1], out[0], out[1], err[0], err[1]}) {
      if (fd >= 0) close(fd);
    }
    return result;
  }
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, in[0], STDIN_FILENO);
  posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&actions, err[1], STDERR_FILENO);
  // The child gets SIGPIPE's default back (an ignored signal stays ignored by exec).
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t defaults;
  sigemptyset(&defaults);
  sigaddset(&defaults, SIGPIPE);
  posix_spawnattr_setsigdefault(&attr, &defaults);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGDEF);

  std::vector<std::string> argv_strings = args;
  std::vector<char*> argv;
  for (std::string& a : argv_strings) argv.push_back(a.data());
  argv.push_back(nullptr);
  // The test's own environment, without anything that would change shardqctl's
  // defaults (SHARDQ_SERVER, SHARDQ_NAMESPACE).
  std::vector<char*> envp;
  for (char** e = environ; *e != nullptr; ++e) {
    if (std::strncmp(*e, "SHARDQ_", 7) != 0) envp.push_back(*e);
  }
  envp.push_back(nullptr);

  pid_t pid = -1;
  const int spawned =
      posix_spawn(&pid, argv[0], &actions, &attr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  close(in[0]);
  close(out[1]);
  close(err[1]);
  if (spawned != 0) {
    result.failure = "posix_spawn " + args[0] + ": " + std::strerror(spawned);
    close(in[1]);
    close(out[0]);
    close(err[0]);
    return result;
  }

  int to_child = in[1];
  int from_out = out[0];
  int from_err = err[0];
  for (int fd : {to_child, from_out, from_err}) {
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  }
  size_t written = 0;
  if (input.empty()) {
    close(to_child);
    to_child = -1;
  }
  const auto until = std::chrono::steady_clock::now() + limit;
  bool timed_out = false;
  int wait_status = 0;
  bool exited = false;
  while (!exited) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        until - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      timed_out = true;
      break;
    }
    pollfd fds[3];
    nfds_t n = 0;
    for (int fd : {from_out, from_err}) {
      if (fd >= 0) fds[n++] = {fd, POLLIN, 0};
    }
    if (to_child >= 0) fds[n++] = {to_child, POLLOUT, 0};
    if (n == 0) {
      // Both output pipes are at EOF: wait (bounded) for the process to end.
      const pid_t done = waitpid(pid, &wait_status, WNOHANG);
      if (done == pid) {
        exited = true;
      } else if (done < 0 && errno != EINTR) {
        result.failure = std::string("waitpid: ") + std::strerror(errno);
        return result;
      } else {
        poll(nullptr, 0, 1);
      }
      continue;
    }
    const int ready =
        poll(fds, n, static_cast<int>(std::min<int64_t>(left.count(), 1000)));
    if (ready < 0 && errno != EINTR) {
      result.failure = std::string("poll: ") + std::strerror(errno);
      timed_out = true;
      break;
    }
    for (nfds_t i = 0; i < n; ++i) {
      if (fds[i].revents == 0) continue;
      if (fds[i].fd == to_child) {
        const ssize_t w = write(to_child, input.data() + written, input.size() - written);
        if (w > 0) written += static_cast<size_t>(w);
        if ((w < 0 && errno != EAGAIN) || written == input.size()) {
          close(to_child);  // EOF for the child (or it went away: EPIPE)
          to_child = -1;
        }
        continue;
      }
      char buf[4096];
      const ssize_t r = read(fds[i].fd, buf, sizeof buf);
      if (r > 0) {
        (fds[i].fd == from_out ? result.out : result.err).append(buf, r);
      } else if (r == 0 || errno != EAGAIN) {
        close(fds[i].fd);
        (fds[i].fd == from_out ? from_out : from_err) = -1;
      }
    }
  }
  for (int fd : {to_child, from_out, from_err}) {
    if (fd >= 0) close(fd);
  }
  if (timed_out) {
    kill(pid, SIGKILL);
    waitpid(pid, &wait_status, 0);
    if (result.failure.empty()) {
      result.failure =
          "ran longer than " + std::to_string(limit.count()) + " s and was killed";
    }
    return result;
  }
  if (WIFEXITED(wait_status)) {
    result.exit_code = WEXITSTATUS(wait_status);
  } else {
    result.failure = "died of signal " + std::to_string(WTERMSIG(wait_status));
  }
  return result;
}

}  // namespace shardq::testing
