// The subcommands of shardqctl: each builds one request from already-parsed options,
// makes one blocking RPC and prints the answer as text or as one JSON document.
// Each returns the process exit code (see kExit* below).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace shardq::tools {

inline constexpr int kExitOk = 0;
inline constexpr int kExitRpcFailed = 1;
inline constexpr int kExitBadArgs = 2;
inline constexpr int kExitItemFailed = 3;
inline constexpr int kExitNotServing = 4;

struct GlobalOptions {
  std::string server = "127.0.0.1:50051";
  std::string ns = "default";
  bool json = false;
  int64_t timeout_ms = 10000;
};

struct EnqueueOptions {
  std::string topic;
  std::string payload = "-";  // "-" = read stdin.
  int32_t priority = 0;
  int64_t delay_ms = -1;          // -1 = not given.
  int64_t deliver_after_ms = -1;  // -1 = not given.
  int64_t lease_ms = 0;
  int64_t ttl_ms = 0;
  std::vector<std::string> meta;  // key=value
  int count = 1;
  std::string task_type;
  std::string dedup_key;
  int32_t max_attempts = 0;  // 0 = namespace default.
};

struct DequeueOptions {
  std::string topic;
  int count = 1;
  int64_t wait_ms = 0;
  std::string worker_id;
};

struct AckOptions {
  std::vector<std::string> refs;  // ID TOKEN ...
  std::string result;             // For every item; empty = none.
};

struct NackOptions {
  std::vector<std::string> refs;  // ID TOKEN ...
  int64_t delay_ms = 0;
  std::vector<std::string> meta;  // key=value
  bool clear_meta = false;
  std::string error;
  bool fatal = false;
};

struct ExtendOptions {
  std::vector<std::string> refs;  // ID TOKEN ...
  int64_t extension_ms = 0;
};

struct StatusOptions {
  std::string id;
  bool payload = false;
};

struct HistoryOptions {
  std::string id;
  int tail = 0;  // 0 = all.
};

struct DeadListOptions {
  std::string topic;
  int32_t limit = 0;  // 0 = server default (100).
};

// dead redrive / dead purge.
struct DeadOptions {
  std::string topic;
  std::vector<std::string> ids;  // Empty = all of the topic's.
  bool all = false;              // purge: required when ids is empty.
};

int RunEnqueue(const GlobalOptions& global, const EnqueueOptions& options);
int RunDequeue(const GlobalOptions& global, const DequeueOptions& options);
int RunAck(const GlobalOptions& global, const AckOptions& options);
int RunNack(const GlobalOptions& global, const NackOptions& options);
int RunExtend(const GlobalOptions& global, const ExtendOptions& options);
int RunTopics(const GlobalOptions& global);
int RunStatus(const GlobalOptions& global, const StatusOptions& options);
int RunHistory(const GlobalOptions& global, const HistoryOptions& options);
int RunCancel(const GlobalOptions& global, const std::string& id);
int RunDeadList(const GlobalOptions& global, const DeadListOptions& options);
int RunDeadRedrive(const GlobalOptions& global, const DeadOptions& options);
int RunDeadPurge(const GlobalOptions& global, const DeadOptions& options);
int RunHealth(const GlobalOptions& global, const std::string& service);
// Exit code 4 (kExitNotServing) when a shard is not taking calls.
int RunShards(const GlobalOptions& global);

}  // namespace shardq::tools
