#pragma once
// Errors are values. A Status is a code plus a human-readable message; Result<T>
// is a value or a non-OK Status. Modules never throw across their boundary, and the
// mapping to grpc::Status happens once, in frontend/status_mapping.cc.

#include <cassert>
#include <optional>
#include <string>
#include <utility>
#include <variant>

namespace shardq {

enum class Code {
  kOk = 0,
  kInvalidArgument,     // the request itself is wrong; retrying will not help
  kNotFound,            // an id or shard that does not exist
  kFailedPrecondition,  // e.g. a stale lease token
  kResourceExhausted,   // a buffer or quota is full; retry later
  kUnavailable,         // a shard (or all of them) cannot be reached; retry
  kDeadlineExceeded,
  kInternal,  // a bug or an unexpected storage answer
};

const char* CodeName(Code code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(Code code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return Status(); }
  static Status InvalidArgument(std::string m) {
    return {Code::kInvalidArgument, std::move(m)};
  }
  static Status NotFound(std::string m) { return {Code::kNotFound, std::move(m)}; }
  static Status FailedPrecondition(std::string m) {
    return {Code::kFailedPrecondition, std::move(m)};
  }
  static Status ResourceExhausted(std::string m) {
    return {Code::kResourceExhausted, std::move(m)};
  }
  static Status Unavailable(std::string m) { return {Code::kUnavailable, std::move(m)}; }
  static Status Internal(std::string m) { return {Code::kInternal, std::move(m)}; }

  bool ok() const { return code_ == Code::kOk; }
  Code code() const { return code_; }
  const std::string& message() const { return message_; }
  std::string ToString() const;

  // Marks a deliberately dropped status so that such places can be found with grep.
  void IgnoreError() const {}

  bool operator==(const Status& o) const = default;

 private:
  Code code_ = Code::kOk;
  std::string message_;
};

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}        // NOLINT: implicit by design
  Result(Status status) : v_(std::move(status)) {  // NOLINT
    assert(!std::get<Status>(v_).ok() && "Result needs a value or an error");
  }

  bool ok() const { return std::holds_alternative<T>(v_); }
  const Status& status() const {
    static const Status kOk;
    return ok() ? kOk : std::get<Status>(v_);
  }
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace shardq

#define SHARDQ_RETURN_IF_ERROR(expr) \
  do {                               \
    ::shardq::Status _st = (expr);   \
    if (!_st.ok()) return _st;       \
  } while (0)
