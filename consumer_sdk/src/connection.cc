#include "shardq/connection.h"

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/channel_arguments.h>

#include <algorithm>

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
  return grpc::CreateCustomChannel(options.server, grpc::InsecureChannelCredentials(),
                                   args);
}

}  // namespace shardq::sdk
