#pragma once
// The one place where shardq Status values become gRPC ones.

#include <grpcpp/support/status.h>

#include <string>

#include "common/status.h"
#include "shardq/v1/queue.pb.h"

namespace shardq::frontend {

grpc::StatusCode ToGrpcCode(Code code);
grpc::Status ToGrpcStatus(const Status& status);
void ToItemStatus(const Status& status, v1::ItemStatus* out);
// INVALID_ARGUMENT for bytes that do not parse as `type` (a request or a stream
// message): gRPC left alone would answer a bare UNIMPLEMENTED, which misleads.
grpc::Status Unparsable(const std::string& what, const std::string& type);

}  // namespace shardq::frontend
