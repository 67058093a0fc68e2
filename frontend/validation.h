#pragma once
// Input validation: every rule a request must meet, checked before anything is
// changed. Each function turns wire messages into engine structs or says exactly
// what is wrong (kInvalidArgument), so bad input never reaches the shards.

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/clock.h"
#include "common/item.h"
#include "common/namespace_policy.h"
#include "common/status.h"
#include "engine/engine.h"
#include "shardq/v1/queue.pb.h"

namespace shardq::frontend {

struct Limits {
  size_t max_items_per_call = 1000;
  size_t max_topics_per_dequeue = 100;
  size_t max_count_per_topic = 1000;
  Duration max_wait{60'000};
  Duration max_delay{366LL * 24 * 3600 * 1000};
  Duration max_lease{12LL * 3600 * 1000};
  Duration default_lease{30'000};
  // A stream (EnqueueStream, ConsumeStream) whose client leaves more than this many
  // bytes of answers unread is cancelled (frontend/call_stream.h). 64 MiB is five of
  // the largest Dequeue answers: 1,000 items of 10 KiB payload and 2 KiB metadata.
  size_t max_unread_stream_bytes = 64 << 20;
  // Dequeues parked at once (waiting for items), over all clients: past it a Dequeue
  // that asks to wait runs as one with no wait; it answers what is ready, or
  // RESOURCE_EXHAUSTED when nothing is (load shedding; the SDK backs off and asks again).
  // A parked call holds its gRPC call and its waiter entries (a few KiB) for up to
  // max_wait; 10,000 is 5,000 SDK workers (two parked calls each).
  size_t max_parked_dequeues = 10'000;
  // GetActiveTopics' page: its default and largest size (10,000 topics with the
  // longest names and counts are about 1.4 MB).
  size_t default_topics_page = 1000;
  size_t max_topics_page = 10'000;
};

// Namespace and topic names: 1..max chars of [A-Za-z0-9._-], first a letter or digit.
Status ValidateName(std::string_view what, std::string_view name, size_t max_len);

// When the server read an enqueue: `now` (Clock::Now) and the time its delays count
// from (Clock::NowRoundedUp), so that an item is due no earlier than the call's
// arrival plus its delay_ms, as queue.proto promises, to the microsecond.
struct ReadTime {
  Time now;
  Time delay_from;
};

// `policy` is the namespace's (for the default max_attempts).
Result<NewItem> ToNewItem(const std::string& ns, const v1::EnqueueItem& item, ReadTime at,
                          const Limits& limits, const NamespacePolicy& policy);
// Optional free-form identifiers (worker ids): at most `max_len` bytes.
Status ValidateLength(std::string_view what, std::string_view value, size_t max_len);
Result<std::vector<engine::TopicAsk>> ToTopicAsks(const v1::DequeueRequest& req,
                                                  const Limits& limits);
Result<Duration> ToWait(const v1::DequeueRequest& req, const Limits& limits);
// GetActiveTopics' page: at most `limit` topics, those named after `after`.
struct TopicsPage {
  size_t limit = 0;
  std::string after;
};
Result<TopicsPage> ToTopicsPage(const v1::GetActiveTopicsRequest& req,
                                const Limits& limits);

// Parses an id + token; a malformed one is kInvalidArgument.
Result<engine::LeaseOp> ToLeaseOp(const v1::LeaseRef& ref);
Result<engine::LeaseOp> ToAckOp(const v1::AckItem& item);
Result<ItemId> ToItemId(const std::string& text);
Result<engine::NackOp> ToNackOp(const v1::NackItem& item, const Limits& limits);
Result<engine::ExtendOp> ToExtendOp(const v1::ExtendItem& item, const Limits& limits);

// The size of a batched call (1..max_items_per_call).
Status ValidateBatchSize(int size, const Limits& limits);
// Marks (sets to an error) every entry whose item id appears earlier in the call.
template <typename Op>
void RejectDuplicateIds(std::vector<Result<Op>>& ops);

std::string EncodeLeaseToken(LeaseToken token);
std::optional<LeaseToken> DecodeLeaseToken(std::string_view text);
std::string EncodeMetadata(const v1::Metadata& m);
void DecodeMetadata(const std::string& bytes, v1::Metadata* out);

}  // namespace shardq::frontend

#include "frontend/validation_inl.h"
