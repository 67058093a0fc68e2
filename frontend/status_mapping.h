#pragma once
// The one place where shardq Status values become gRPC ones.

#include <grpcpp/support/status.h>

#include "common/status.h"
#include "shardq/v1/queue.pb.h"

namespace shardq::frontend {

grpc::StatusCode ToGrpcCode(Code code);
grpc::Status ToGrpcStatus(const Status& status);
void ToItemStatus(const Status& status, v1::ItemStatus* out);

}  // namespace shardq::frontend
