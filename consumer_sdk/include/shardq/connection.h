#pragma once
// How the SDK reaches a shardq server: an address, or a gRPC channel you built.

#include <grpcpp/channel.h>

#include <memory>
#include <string>

#include "shardq/clock.h"

namespace shardq::sdk {

// Where the server is and how the gRPC channel behaves while it is unreachable.
struct ConnectionOptions {
  // host:port of shardqd. Ignored when `channel` is set.
  std::string server = "127.0.0.1:50051";
  // Use this channel instead of creating one (e.g. TLS, interceptors). Shared by
  // everything built from these options. Give it
  // SetMaxReceiveMessageSize(shardq::v1::kMaxMessageBytes)
  // ("shardq/v1/message_limits.h"): gRPC's default of 4 MB is less than a fetch of many
  // large tasks; and the keepalive pings of "shardq/v1/keepalive.h", or a server that
  // vanishes without a TCP reset stalls the worker for the kernel's 15 minutes.
  std::shared_ptr<grpc::Channel> channel{};
  // The longest gRPC waits between reconnect attempts while the server is down (real
  // time; gRPC's own default is 120 s, far too slow to notice a restarted server).
  Millis max_reconnect_backoff{2'000};
};

// The channel for `options`: options.channel, or a new insecure channel to
// options.server with the reconnect backoff bounded by max_reconnect_backoff,
// messages of up to kMaxMessageBytes, and keepalive pings (shardq/v1/keepalive.h).
std::shared_ptr<grpc::Channel> MakeChannel(const ConnectionOptions& options);

}  // namespace shardq::sdk
