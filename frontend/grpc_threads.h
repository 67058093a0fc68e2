#pragma once
// gRPC's own threads, held to a fixed set.

namespace shardq::frontend {

// Turns off gRPC's default executor for this process; returns whether it could.
//
// gRPC 1.51 hands some of its internal work (a contended transport's queued
// writes, for one) to the "default-executor" pool, which starts threads on demand
// up to twice the cores and never lets them go. So a server's thread count grew
// with its load history: 4 such threads after one load, 2 after another
// (docs/BENCHMARKS.md, thirteenth round). With the pool off, gRPC runs that work on
// the thread that queued it (its poller and callback threads, a fixed number), as
// its own fork support and fuzzers do.
//
// The switch, grpc_core::Executor::SetThreadingDefault, is exported by libgrpc but
// not in its installed headers, so it is looked up at run time: a gRPC without it
// keeps its pool and this returns false. The first call also holds a grpc_init()
// reference for the rest of the process, because a gRPC shut down and started
// again would start a new, threaded pool. Safe to call from any thread (not one of
// gRPC's), any number of times; only the first call acts, and it is best made before
// any gRPC work: shardqd's main makes it first thing, and Server::Start for servers
// embedded in other programs (the tests).
bool TurnOffGrpcDefaultExecutor();

}  // namespace shardq::frontend
