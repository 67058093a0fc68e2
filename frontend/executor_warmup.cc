#include "frontend/executor_warmup.h"

#include <grpcpp/alarm.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace shardq::frontend {
namespace {

// Shared with the callbacks, which may outlive a burst that timed out.
struct Burst {
  std::mutex mu;
  std::condition_variable done_cv;
  int pending = 0;
};

// One burst: `alarms` callbacks due together, so that they queue behind each other on
// the executor and make it add threads. Returns once all have run (or been cancelled).
void RunBurst(int alarms) {
  auto burst = std::make_shared<Burst>();
  burst->pending = alarms;
  std::vector<std::unique_ptr<grpc::Alarm>> started;
  // A deadline a moment ahead, so that gRPC's timer fires them all in one go.
  const auto due = std::chrono::system_clock::now() + std::chrono::milliseconds(5);
  for (int i = 0; i < alarms; ++i) {
    started.push_back(std::make_unique<grpc::Alarm>());
    started.back()->Set(due, [burst](bool fired) {
      if (fired) std::this_thread::sleep_for(std::chrono::milliseconds(2));
      std::lock_guard lock(burst->mu);
      if (--burst->pending == 0) burst->done_cv.notify_all();
    });
  }
  std::unique_lock lock(burst->mu);
  // Bounded, so that a stalled gRPC cannot stall start-up; destroying the alarms
  // then cancels the ones still waiting.
  burst->done_cv.wait_for(lock, std::chrono::seconds(2),
                          [&] { return burst->pending == 0; });
}

}  // namespace

int GrpcExecutorThreads() {
  // gRPC names them "default-executor"; Linux keeps the first 15 characters.
  int threads = 0;
  std::error_code ec;
  for (const auto& task : std::filesystem::directory_iterator("/proc/self/task", ec)) {
    std::ifstream comm(task.path() / "comm");
    std::string name;
    std::getline(comm, name);
    if (name == "default-executo") ++threads;
  }
  return threads;
}

int GrowGrpcExecutor(int target, int max_bursts) {
  const int cores = std::max(1u, std::thread::hardware_concurrency());
  if (target <= 0) target = 2 * cores;
  // Holds gRPC up between the bursts: when its last object goes, gRPC shuts down, its
  // executor with it, and the next burst would start from a fresh one-thread pool.
  const grpc::Alarm hold_grpc;
  for (int i = 0; i < max_bursts && GrpcExecutorThreads() < target; ++i) {
    RunBurst(4 * target);
  }
  return GrpcExecutorThreads();
}

}  // namespace shardq::frontend
