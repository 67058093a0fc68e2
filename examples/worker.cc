// Example worker: handles "greet" tasks (and untyped ones) from a topic with a few
// threads. Exits after --count successful tasks, or on Ctrl-C when --count is 0.
//
//   example_worker --server 127.0.0.1:50051 --namespace demo --topic hello --count 10
//   (--work-ms N: how long a "report" task works; --concurrency N: handler threads)
#include <signal.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>

#include "shardq/sdk.h"

namespace {
std::mutex mu;
std::condition_variable cv;
bool quit = false;

void Quit() {
  {
    std::lock_guard lock(mu);
    quit = true;
  }
  cv.notify_all();
}
}  // namespace

int main(int argc, char** argv) {
  std::string server = "127.0.0.1:50051", ns = "demo", topic = "hello";
  int count = 0, concurrency = 4, work_ms = 0;
  if (argc % 2 == 0) {  // flags come with values
    std::fprintf(stderr,
                 "usage: %s [--server|--namespace|--topic|--count|--concurrency|"
                 "--work-ms VALUE]...\n",
                 argv[0]);
    return 2;
  }
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--server")
      server = value;
    else if (flag == "--namespace")
      ns = value;
    else if (flag == "--topic")
      topic = value;
    else if (flag == "--count")
      count = std::atoi(value.c_str());
    else if (flag == "--concurrency")
      concurrency = std::atoi(value.c_str());
    else if (flag == "--work-ms")
      work_ms = std::atoi(value.c_str());
    else {
      std::fprintf(stderr, "unknown flag %s\n", flag.c_str());
      return 2;
    }
  }

  if (count < 0 || concurrency < 1 || work_ms < 0) {  // atoi: 0 for not a number
    std::fprintf(stderr, "--count and --work-ms must be >= 0, --concurrency >= 1\n");
    return 2;
  }

  // Ctrl-C / SIGTERM end the process through the same path as --count.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);  // before any thread starts
  std::thread([signals] {
    int sig = 0;
    sigwait(&signals, &sig);
    Quit();
  }).detach();

  shardq::sdk::WorkerOptions options;
  options.connection.server = server;
  options.ns = ns;
  options.topics = {topic};
  options.concurrency = concurrency;
  shardq::sdk::Worker worker(options);

  std::atomic<int> done{0};
  auto count_one = [&] {
    if (++done == count) Quit();
  };
  worker.Handle("greet", [&](shardq::sdk::TaskContext& task) {
    if (task.payload().empty()) return shardq::sdk::Outcome::Fatal("nobody to greet");
    std::printf("hello, %s (task %s, attempt %u)\n", task.payload().c_str(),
                task.id().c_str(), task.attempt());
    std::fflush(stdout);
    count_one();
    return shardq::sdk::Outcome::Success("greeted");
  });
  // A long-running task that stops early, cooperatively, when it is cancelled, its
  // lease is lost, or the worker shuts down (heartbeats keep its lease meanwhile).
  worker.Handle("report", [&](shardq::sdk::TaskContext& task) {
    std::printf("report %s: working for %d ms\n", task.id().c_str(), work_ms);
    std::fflush(stdout);
    if (task.WaitCancelled(std::chrono::milliseconds(work_ms))) {
      return shardq::sdk::Outcome::Retry("stopped before the report was done");
    }
    count_one();
    return shardq::sdk::Outcome::Success("report ready");
  });
  worker.Handle("", [&](shardq::sdk::TaskContext& task) {
    std::printf("untyped task %s: %s\n", task.id().c_str(), task.payload().c_str());
    std::fflush(stdout);
    count_one();
    return shardq::sdk::Outcome::Success();
  });
  worker.Start();

  std::unique_lock lock(mu);
  cv.wait(lock, [] { return quit; });
  lock.unlock();
  worker.Stop(std::chrono::seconds(30));  // finishes and acks running tasks
  std::printf("done: %d tasks\n", done.load());
  return 0;
}
