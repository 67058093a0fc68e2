#pragma once
// Grows gRPC's default executor to its bound as the server starts.
//
// gRPC 1.51 runs the callback API's completions that cannot run inline (and callback
// alarms) on its "default executor": a pool that starts with one thread, adds one
// whenever work queues behind a busy thread, up to twice the cores, and never
// shrinks. Left alone, the server's thread count depends on the bursts it has seen
// (2 to 4 of these threads on a 2-core machine; docs/BENCHMARKS.md, "The thread
// total"), so an operator's thread gauge drifts with load history. Grown at
// start-up, this pool's size is fixed from then on. gRPC's API cannot size it; a
// burst of callback alarms whose callbacks hold their thread for a moment queues
// work on it the way a busy server would.

namespace shardq::frontend {

struct ExecutorWarmup {
  int threads = 0;         // the executor's threads afterwards
  int bursts = 0;          // bursts fired
  bool timed_out = false;  // a burst's callbacks did not all run within a second
};

// Fires bursts of callback alarms, each holding its executor thread for 2 ms, until
// the executor has `target` threads, `max_bursts` bursts have gone, or a burst has
// not finished within a second (a stalled gRPC: start-up then goes on). A gRPC that
// runs alarms elsewhere never reaches the target and costs only the bursts, a few
// tens of milliseconds. `target` 0 means the bound, GrpcExecutorBound(). Call it
// while a gRPC server (or another gRPC object) lives: when the last one goes, gRPC
// shuts down, the executor with it.
ExecutorWarmup GrowGrpcExecutor(int target = 0, int max_bursts = 5);

// gRPC's bound on the executor: twice the cores as gRPC counts them (all configured
// CPUs of the host, not a container's CPU quota).
int GrpcExecutorBound();

// The name of the executor's threads as Linux shows it: gRPC names them
// "default-executor", and Linux keeps the first 15 characters.
inline constexpr char kGrpcExecutorThreadName[] = "default-executo";

// The threads of gRPC's default executor in this process, counted by name.
int GrpcExecutorThreads();

}  // namespace shardq::frontend
