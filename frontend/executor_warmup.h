#pragma once
// Grows gRPC's default executor to its bound as the server starts.
//
// gRPC 1.51 runs the callback API's completions that cannot run inline (and callback
// alarms) on its "default executor": a pool that starts with one thread, adds one
// whenever work queues behind a busy thread, up to twice the cores, and never
// shrinks. Left alone, the server's thread count depends on the bursts it has seen
// (2 to 4 of these threads on a 2-core machine; docs/BENCHMARKS.md, "The thread
// total"), so an operator's thread gauge drifts with load history. Grown at start-up,
// this pool's count is fixed from then on. The pool cannot be sized through gRPC's API; a
// burst of callback alarms whose callbacks hold their thread for a moment is the public
// way to queue work on it, the way a busy server would.

namespace shardq::frontend {

// Fires bursts of callback alarms, each holding its executor thread for 2 ms, until
// the executor has `target` threads or `max_bursts` bursts have gone (a gRPC that
// runs alarms elsewhere never reaches the target; the warm-up then costs only those
// bursts, a few tens of milliseconds). Returns the executor's thread count. `target`
// 0 means gRPC's bound: twice the cores. Call it while a gRPC server (or another
// gRPC object) lives: when the last one goes, gRPC shuts down, the executor with it.
int GrowGrpcExecutor(int target = 0, int max_bursts = 5);

// The threads of gRPC's default executor in this process, counted by name (Linux).
int GrpcExecutorThreads();

}  // namespace shardq::frontend
