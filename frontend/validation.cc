#include "frontend/validation.h"

#include <fmt/format.h>
#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>

#include <cctype>
#include <charconv>
#include <unordered_set>

#include "store/validation.h"

namespace shardq::frontend {
namespace {

bool NameChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
         c == '.' || c == '_' || c == '-';
}

Status Range(std::string_view what, int64_t v, int64_t lo, int64_t hi) {
  if (v < lo || v > hi) {
    return Status::InvalidArgument(
        fmt::format("{} must be in [{}, {}] ms, got {}", what, lo, hi, v));
  }
  return Status::Ok();
}

}  // namespace

Status ValidateName(std::string_view what, std::string_view name, size_t max_len) {
  if (name.empty()) return Status::InvalidArgument(fmt::format("{} is empty", what));
  if (name.size() > max_len) {
    return Status::InvalidArgument(
        fmt::format("{} is longer than {} characters", what, max_len));
  }
  if (!std::isalnum(static_cast<unsigned char>(name[0]))) {
    return Status::InvalidArgument(
        fmt::format("{} must start with a letter or digit", what));
  }
  for (char c : name) {
    if (!NameChar(c)) {
      return Status::InvalidArgument(
          fmt::format("{} may only contain A-Z a-z 0-9 . _ -", what));
    }
  }
  return Status::Ok();
}

Status ValidateLength(std::string_view what, std::string_view value, size_t max_len) {
  if (value.size() > max_len) {
    return Status::InvalidArgument(
        fmt::format("{} is longer than {} bytes", what, max_len));
  }
  return Status::Ok();
}

Result<NewItem> ToNewItem(const std::string& ns, const v1::EnqueueItem& item, ReadTime at,
                          const Limits& limits, const NamespacePolicy& policy) {
  const Time now = at.now;
  SHARDQ_RETURN_IF_ERROR(ValidateName("topic", item.topic(), kMaxTopicLen));
  if (!item.task_type().empty()) {
    SHARDQ_RETURN_IF_ERROR(ValidateName("task_type", item.task_type(), kMaxTaskTypeLen));
  }
  SHARDQ_RETURN_IF_ERROR(ValidateLength("dedup_key", item.dedup_key(), kMaxDedupKeyLen));
  if (item.max_attempts() < 0 ||
      static_cast<uint32_t>(item.max_attempts()) > kMaxAttemptsLimit) {
    return Status::InvalidArgument(fmt::format("max_attempts must be in [0, {}], got {}",
                                               kMaxAttemptsLimit, item.max_attempts()));
  }
  if (item.payload().size() > kMaxPayloadBytes) {
    return Status::InvalidArgument(fmt::format("payload is {} bytes; the limit is {}",
                                               item.payload().size(), kMaxPayloadBytes));
  }
  NewItem out;
  out.ns = ns;
  out.topic = item.topic();
  out.task_type = item.task_type();
  out.dedup_key = item.dedup_key();
  out.max_attempts = item.max_attempts() == 0
                         ? policy.max_attempts
                         : static_cast<uint32_t>(item.max_attempts());
  out.priority = item.priority();
  out.payload = item.payload();
  out.metadata = EncodeMetadata(item.metadata());
  if (out.metadata.size() > kMaxMetadataBytes) {
    return Status::InvalidArgument(
        fmt::format("metadata is {} bytes encoded; the limit is {}", out.metadata.size(),
                    kMaxMetadataBytes));
  }
  out.deliver_after = now;
  switch (item.schedule_case()) {
    case v1::EnqueueItem::kDelayMs:
      SHARDQ_RETURN_IF_ERROR(
          Range("delay_ms", item.delay_ms(), 0, limits.max_delay.count()));
      // A delay of 0 is due at `now`: READY at once, as with no delay.
      if (item.delay_ms() > 0)
        out.deliver_after = at.delay_from + Duration(item.delay_ms());
      break;
    case v1::EnqueueItem::kDeliverAfterMs:
      if (item.deliver_after_ms() < 0) {
        return Status::InvalidArgument("deliver_after_ms must not be negative");
      }
      if (FromUnixMillis(item.deliver_after_ms()) > now + limits.max_delay) {
        return Status::InvalidArgument("deliver_after_ms is more than 366 days ahead");
      }
      out.deliver_after = std::max(now, FromUnixMillis(item.deliver_after_ms()));
      break;
    case v1::EnqueueItem::SCHEDULE_NOT_SET:
      break;
  }
  if (item.lease_ms() == 0) {
    out.lease = limits.default_lease;
  } else {
    SHARDQ_RETURN_IF_ERROR(
        Range("lease_ms", item.lease_ms(), 1, limits.max_lease.count()));
    out.lease = Duration(item.lease_ms());
  }
  if (item.ttl_ms() != 0) {
    SHARDQ_RETURN_IF_ERROR(Range("ttl_ms", item.ttl_ms(), 1, limits.max_delay.count()));
    // From the same rounded-up millisecond as a delay: an item is never dropped
    // before ttl_ms has passed, and ttl_ms > delay_ms always leaves it time to run.
    out.expires_at = at.delay_from + Duration(item.ttl_ms());
  }
  return out;
}

Result<std::vector<engine::TopicAsk>> ToTopicAsks(const v1::DequeueRequest& req,
                                                  const Limits& limits) {
  if (req.topics().empty()) return Status::InvalidArgument("no topics requested");
  if (static_cast<size_t>(req.topics_size()) > limits.max_topics_per_dequeue) {
    return Status::InvalidArgument(
        fmt::format("at most {} topics per call", limits.max_topics_per_dequeue));
  }
  std::vector<engine::TopicAsk> out;
  std::unordered_set<std::string> seen;
  for (const v1::TopicRequest& t : req.topics()) {
    SHARDQ_RETURN_IF_ERROR(ValidateName("topic", t.topic(), kMaxTopicLen));
    if (t.count() <= 0 || static_cast<size_t>(t.count()) > limits.max_count_per_topic) {
      return Status::InvalidArgument(fmt::format("count for topic {} must be in [1, {}]",
                                                 t.topic(), limits.max_count_per_topic));
    }
    if (!seen.insert(t.topic()).second) {
      return Status::InvalidArgument("topic " + t.topic() + " is requested twice");
    }
    out.push_back({t.topic(), static_cast<size_t>(t.count())});
  }
  return out;
}

Result<Duration> ToWait(const v1::DequeueRequest& req, const Limits& limits) {
  SHARDQ_RETURN_IF_ERROR(Range("wait_ms", req.wait_ms(), 0, limits.max_wait.count()));
  return Duration(req.wait_ms());
}

Result<TopicsPage> ToTopicsPage(const v1::GetActiveTopicsRequest& req,
                                const Limits& limits) {
  SHARDQ_RETURN_IF_ERROR(ValidateName("namespace", req.namespace_(), kMaxNamespaceLen));
  if (req.limit() > limits.max_topics_page) {
    return Status::InvalidArgument(fmt::format("limit must be at most {} topics, got {}",
                                               limits.max_topics_page, req.limit()));
  }
  // Any bytes: a cursor compared with names, never stored.
  SHARDQ_RETURN_IF_ERROR(ValidateLength("after_topic", req.after_topic(), kMaxTopicLen));
  return TopicsPage{req.limit() == 0 ? limits.default_topics_page : req.limit(),
                    req.after_topic()};
}

Result<engine::LeaseOp> ToLeaseOp(const v1::LeaseRef& ref) {
  auto id = ToItemId(ref.id());
  if (!id.ok()) return id.status();
  auto token = DecodeLeaseToken(ref.lease_token());
  if (!token)
    return Status::InvalidArgument("malformed lease token for item " + id->ToString());
  return engine::LeaseOp{*id, *token, {}};
}

Result<ItemId> ToItemId(const std::string& text) {
  auto id = ItemId::Parse(text);
  if (!id)
    return Status::InvalidArgument("malformed item id '" + store::TruncateTo(text, 64) +
                                   "'");
  return *id;
}

Result<engine::LeaseOp> ToAckOp(const v1::AckItem& item) {
  v1::LeaseRef ref;
  ref.set_id(item.id());
  ref.set_lease_token(item.lease_token());
  auto op = ToLeaseOp(ref);
  if (!op.ok()) return op.status();
  SHARDQ_RETURN_IF_ERROR(ValidateLength("result", item.result(), kMaxResultBytes));
  op->result = item.result();
  return op;
}

Result<engine::NackOp> ToNackOp(const v1::NackItem& item, const Limits& limits) {
  auto ref = ToLeaseOp(item.item());
  if (!ref.ok()) return ref.status();
  SHARDQ_RETURN_IF_ERROR(Range("delay_ms", item.delay_ms(), 0, limits.max_delay.count()));
  engine::NackOp op{ref->id,      ref->token, Duration(item.delay_ms()),
                    std::nullopt, {},         false};
  // Error text comes from exceptions and logs: cut it rather than refuse the nack.
  op.error = store::TruncateTo(item.error(), kMaxErrorBytes);
  op.fatal = item.fatal();
  if (item.has_metadata()) {
    op.metadata = EncodeMetadata(item.metadata());
    if (op.metadata->size() > kMaxMetadataBytes) {
      return Status::InvalidArgument("metadata is over the 2 KiB limit");
    }
  }
  return op;
}

Result<engine::ExtendOp> ToExtendOp(const v1::ExtendItem& item, const Limits& limits) {
  auto ref = ToLeaseOp(item.item());
  if (!ref.ok()) return ref.status();
  SHARDQ_RETURN_IF_ERROR(
      Range("extension_ms", item.extension_ms(), 1, limits.max_lease.count()));
  return engine::ExtendOp{ref->id, ref->token, Duration(item.extension_ms())};
}

Status ValidateBatchSize(int size, const Limits& limits) {
  if (size <= 0) return Status::InvalidArgument("the call has no items");
  if (static_cast<size_t>(size) > limits.max_items_per_call) {
    return Status::InvalidArgument(fmt::format("at most {} items per call, got {}",
                                               limits.max_items_per_call, size));
  }
  return Status::Ok();
}

std::string EncodeLeaseToken(LeaseToken token) {
  return fmt::format("{:016x}", token.value());
}

std::optional<LeaseToken> DecodeLeaseToken(std::string_view text) {
  if (text.size() != 16) return std::nullopt;
  uint64_t v = 0;
  auto r = std::from_chars(text.data(), text.data() + text.size(), v, 16);
  if (r.ec != std::errc() || r.ptr != text.data() + text.size() || v == 0)
    return std::nullopt;
  return LeaseToken(v);
}

std::string EncodeMetadata(const v1::Metadata& m) {
  if (m.entries().empty()) return {};
  std::string out;
  {
    // Deterministic, so equal maps store equal bytes. The streams flush into `out`
    // when they go out of scope.
    google::protobuf::io::StringOutputStream stream(&out);
    google::protobuf::io::CodedOutputStream coded(&stream);
    coded.SetSerializationDeterministic(true);
    m.SerializeToCodedStream(&coded);
  }
  return out;
}

void DecodeMetadata(const std::string& bytes, v1::Metadata* out) {
  // Stored bytes were written by EncodeMetadata; a parse failure would mean a
  // corrupted row, which we surface as empty metadata rather than crash.
  if (!bytes.empty() && !out->ParseFromString(bytes)) out->Clear();
}

}  // namespace shardq::frontend
