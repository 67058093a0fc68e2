#include "frontend/executor_warmup.h"

#include <grpc/support/cpu.h>
#include <grpcpp/alarm.h>

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
// the executor and make it add threads. False if they did not all run within a second.
bool RunBurst(int alarms) {
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
  bool finished = false;
  {
    // Released before the alarms are destroyed: destroying one cancels it, and its
    // callback (run at once if gRPC runs it inline) takes this mutex.
    std::unique_lock lock(burst->mu);
    finished = burst->done_cv.wait_for(lock, std::chrono::seconds(1),
                                       [&] { return burst->pending == 0; });
  }
  return finished;
}

}  // namespace

int GrpcExecutorBound() { return 2 * static_cast<int>(gpr_cpu_num_cores()); }

int GrpcExecutorThreads() {
  int threads = 0;
  std::error_code ec;
  for (const auto& task : std::filesystem::directory_iterator("/proc/self/task", ec)) {
    std::ifstream comm(task.path() / "comm");
    std::string name;
    std::getline(comm, name);
    if (name == kGrpcExecutorThreadName) ++threads;
  }
  return threads;
}

ExecutorWarmup GrowGrpcExecutor(int target, int max_bursts) {
  if (target <= 0) target = GrpcExecutorBound();
  // Holds gRPC up between the bursts: when its last object goes, gRPC shuts down, its
  // executor with it, and the next burst would start from a fresh one-thread pool.
  const grpc::Alarm hold_grpc;
  ExecutorWarmup warmup;
  while (warmup.bursts < max_bursts && GrpcExecutorThreads() < target) {
    ++warmup.bursts;
    if (!RunBurst(4 * target)) {
      warmup.timed_out = true;
      break;
    }
  }
  warmup.threads = GrpcExecutorThreads();
  return warmup;
}

}  // namespace shardq::frontend
