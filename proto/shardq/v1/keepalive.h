#pragma once
// HTTP/2 keepalive, as both ends of the wire agree on it.
//
// A consumer's streams stay open for hours and a parked long poll sends nothing for
// up to its wait. Without pings, a peer that vanished without a TCP reset (its host
// died, a network partition) is noticed only when the kernel gives up retransmitting,
// about 15 minutes later: until then a worker sends its dequeues and heartbeats into
// a dead stream, and the server keeps that stream's parked calls. So the SDK pings
// when it has read nothing for kClientPingIntervalMs (a parked poll's empty answer
// also counts as reading) and drops the connection (and reconnects) when a ping is
// not answered within kPingTimeoutMs; the server pings quiet clients too (after
// kServerPingIntervalMs), and accepts a client's pings as often as
// kServerMinPingIntervalMs (gRPC's default, 5 minutes, would answer the SDK's pings with
// GOAWAY "too_many_pings").

namespace shardq::v1 {

inline constexpr int kClientPingIntervalMs = 30'000;
inline constexpr int kServerPingIntervalMs = 60'000;
inline constexpr int kPingTimeoutMs = 10'000;
// Below the client's interval, so timer jitter never makes a ping a strike.
inline constexpr int kServerMinPingIntervalMs = kClientPingIntervalMs / 2;

}  // namespace shardq::v1
