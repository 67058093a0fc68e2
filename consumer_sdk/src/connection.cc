#include "shardq/connection.h"

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/channel_arguments.h>

#include <algorithm>

#include "shardq/v1/keepalive.h"
#include "shardq/v1/message_limits.h"

namespace shardq::sdk {

std::shared_ptr<grpc::Channel> MakeChannel(const ConnectionOptions& options) {
  if (options.channel) return options.channel;
  grpc::ChannelArguments args;
  int max_ms =
      static_cast<int>(std::max<int64_t>(options.max_reconnect_backoff.count(), 1));
  int first_ms = std::min(max_ms, 100);
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, first_ms);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, first_ms);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, max_ms);
  // A fetch of many large tasks is one answer of up to 12.6 MB.
  args.SetMaxReceiveMessageSize(v1::kMaxMessageBytes);
  // A server that vanished without a TCP reset is noticed within a ping interval and
  // its timeout, not the kernel's 15 minutes: the streams fail and are opened again
  // on a new connection (shardq/v1/keepalive.h). Pings go on while a long poll is
  // parked and nothing else is sent.
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, v1::kClientPingIntervalMs);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, v1::kPingTimeoutMs);
  args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  return grpc::CreateCustomChannel(options.server, grpc::InsecureChannelCredentials(),
                                   args);
}

}  // namespace shardq::sdk
