#include "frontend/status_mapping.h"

namespace shardq::frontend {

grpc::StatusCode ToGrpcCode(Code code) {
  switch (code) {
    case Code::kOk:
      return grpc::StatusCode::OK;
    case Code::kInvalidArgument:
      return grpc::StatusCode::INVALID_ARGUMENT;
    case Code::kNotFound:
      return grpc::StatusCode::NOT_FOUND;
    case Code::kFailedPrecondition:
      return grpc::StatusCode::FAILED_PRECONDITION;
    case Code::kResourceExhausted:
      return grpc::StatusCode::RESOURCE_EXHAUSTED;
    case Code::kUnavailable:
      return grpc::StatusCode::UNAVAILABLE;
    case Code::kDeadlineExceeded:
      return grpc::StatusCode::DEADLINE_EXCEEDED;
    case Code::kInternal:
      return grpc::StatusCode::INTERNAL;
  }
  return grpc::StatusCode::UNKNOWN;
}

grpc::Status ToGrpcStatus(const Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(ToGrpcCode(status.code()), status.message());
}

grpc::Status Unparsable(const std::string& what, const std::string& type) {
  return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                      what + " is not a valid " + type +
                          " (malformed bytes, or a string field that is not UTF-8)");
}

void ToItemStatus(const Status& status, v1::ItemStatus* out) {
  out->set_code(static_cast<int32_t>(ToGrpcCode(status.code())));
  if (!status.ok()) out->set_message(status.message());
}

}  // namespace shardq::frontend
