// Unit tests of frontend/validation: every rule of proto/shardq/v1/queue.proto that
// the frontend enforces before a request reaches the engine.

#include "frontend/validation.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "common/clock.h"
#include "common/ids.h"
#include "common/item.h"
#include "common/status.h"
#include "frontend/call_stream.h"

namespace shardq::frontend {
namespace {

constexpr int64_t kNowMs = 1'700'000'000'000;
constexpr int64_t kDayMs = 24LL * 3600 * 1000;
constexpr int64_t kMaxDelayMs = 366 * kDayMs;
constexpr int64_t kMaxLeaseMs = 12LL * 3600 * 1000;

const Time kNow = FromUnixMillis(kNowMs);
const ReadTime kAt{.now = kNow, .delay_from = kNow};  // read on a whole millisecond
const Limits kLimits;

v1::EnqueueItem Item(std::string topic = "t") {
  v1::EnqueueItem item;
  item.set_topic(std::move(topic));
  return item;
}

Result<NewItem> Convert(const v1::EnqueueItem& item) {
  return ToNewItem("ns", item, kAt, kLimits, NamespacePolicy{});
}

// A metadata message whose encoding is exactly `size` bytes (size >= ~200).
v1::Metadata MetadataOfEncodedSize(size_t size) {
  v1::Metadata m;
  std::string& value = (*m.mutable_entries())["k"];
  value.assign(size, 'v');
  while (EncodeMetadata(m).size() > size) value.pop_back();
  return m;
}

std::string GoodToken() { return EncodeLeaseToken(LeaseToken(0x0123456789abcdefULL)); }

v1::LeaseRef Ref(std::string id, std::string token) {
  v1::LeaseRef ref;
  ref.set_id(std::move(id));
  ref.set_lease_token(std::move(token));
  return ref;
}

// ---------------------------------------------------------------------------
// ValidateName

TEST(ValidateNameTest, AcceptsGoodNames) {
  for (std::string_view name :
       {"a", "Z", "0", "9topic", "a.b_c-d", "orders.v2", "A_B-C.9", "a..", "x_", "y-"}) {
    EXPECT_TRUE(ValidateName("topic", name, kMaxTopicLen).ok()) << name;
  }
}

TEST(ValidateNameTest, RejectsEmpty) {
  Status st = ValidateName("namespace", "", kMaxNamespaceLen);
  EXPECT_EQ(st.code(), Code::kInvalidArgument);
  EXPECT_NE(st.message().find("namespace"), std::string::npos) << st.message();
}

TEST(ValidateNameTest, NamespaceLengthLimitIs64) {
  EXPECT_TRUE(ValidateName("namespace", std::string(64, 'n'), kMaxNamespaceLen).ok());
  EXPECT_EQ(ValidateName("namespace", std::string(65, 'n'), kMaxNamespaceLen).code(),
            Code::kInvalidArgument);
}

TEST(ValidateNameTest, TopicLengthLimitIs128) {
  EXPECT_TRUE(ValidateName("topic", std::string(128, 't'), kMaxTopicLen).ok());
  EXPECT_EQ(ValidateName("topic", std::string(129, 't'), kMaxTopicLen).code(),
            Code::kInvalidArgument);
}

TEST(ValidateNameTest, RejectsBadFirstChar) {
  for (std::string_view name : {".a", "_a", "-a", " a", "/a"}) {
    EXPECT_EQ(ValidateName("topic", name, kMaxTopicLen).code(), Code::kInvalidArgument)
        << name;
  }
}

TEST(ValidateNameTest, RejectsBadChars) {
  using namespace std::string_view_literals;
  for (std::string_view name :
       {"a b"sv, "a/b"sv, "a\\b"sv, "a:b"sv, "a*"sv, "a\tb"sv, "a\nb"sv, "a@b"sv,
        "caf\xc3\xa9"sv,  // UTF-8 é
        "\xc3\xa9t\xc3\xa9"sv, "a\xff"sv, "a\0b"sv, "a\0"sv, "\0a"sv}) {
    EXPECT_EQ(ValidateName("topic", name, kMaxTopicLen).code(), Code::kInvalidArgument)
        << "name of size " << name.size();
  }
}

// ---------------------------------------------------------------------------
// ToNewItem

TEST(ToNewItemTest, PlainItemGetsDefaults) {
  v1::EnqueueItem item = Item("orders");
  item.set_priority(-7);
  item.set_payload("hello");
  auto r = ToNewItem("tenant", item, kAt, kLimits, NamespacePolicy{});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->ns, "tenant");
  EXPECT_EQ(r->topic, "orders");
  EXPECT_EQ(r->priority, -7);
  EXPECT_EQ(r->payload, "hello");
  EXPECT_EQ(r->metadata, "");
  EXPECT_EQ(r->deliver_after, kNow);
  EXPECT_EQ(r->lease, Duration(30'000));
  EXPECT_FALSE(r->expires_at.has_value());
}

TEST(ToNewItemTest, ExtremePrioritiesAndEmptyPayloadAreFine) {
  for (int32_t p : {INT32_MIN, 0, INT32_MAX}) {
    v1::EnqueueItem item = Item();
    item.set_priority(p);
    auto r = Convert(item);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ(r->priority, p);
    EXPECT_TRUE(r->payload.empty());
  }
}

TEST(ToNewItemTest, RejectsBadTopic) {
  for (std::string topic :
       {std::string(), std::string("_x"), std::string("a b"), std::string(129, 't')}) {
    EXPECT_EQ(Convert(Item(topic)).status().code(), Code::kInvalidArgument) << topic;
  }
  EXPECT_TRUE(Convert(Item(std::string(128, 't'))).ok());
}

TEST(ToNewItemTest, PayloadLimitIs10KiB) {
  v1::EnqueueItem item = Item();
  item.set_payload(std::string(10240, 'p'));
  auto r = Convert(item);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->payload.size(), 10240u);

  item.set_payload(std::string(10241, 'p'));
  EXPECT_EQ(Convert(item).status().code(), Code::kInvalidArgument);
}

TEST(ToNewItemTest, PayloadMayHoldArbitraryBytes) {
  v1::EnqueueItem item = Item();
  std::string bytes("\0\xff\x01binary", 9);
  item.set_payload(bytes);
  auto r = Convert(item);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->payload, bytes);
}

TEST(ToNewItemTest, MetadataIsEncoded) {
  v1::EnqueueItem item = Item();
  (*item.mutable_metadata()->mutable_entries())["attempt_note"] = "timeout";
  auto r = Convert(item);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->metadata, EncodeMetadata(item.metadata()));
  v1::Metadata back;
  DecodeMetadata(r->metadata, &back);
  EXPECT_EQ(back.entries().at("attempt_note"), "timeout");
}

TEST(ToNewItemTest, MetadataLimitIs2KiBEncoded) {
  v1::EnqueueItem item = Item();
  *item.mutable_metadata() = MetadataOfEncodedSize(kMaxMetadataBytes);
  ASSERT_EQ(EncodeMetadata(item.metadata()).size(), kMaxMetadataBytes);
  EXPECT_TRUE(Convert(item).ok());

  (*item.mutable_metadata()->mutable_entries())["k"] += "v";
  ASSERT_EQ(EncodeMetadata(item.metadata()).size(), kMaxMetadataBytes + 1);
  EXPECT_EQ(Convert(item).status().code(), Code::kInvalidArgument);

  // Many small entries that add up over the limit.
  v1::EnqueueItem many = Item();
  for (int i = 0; i < 300; ++i) {
    (*many.mutable_metadata()->mutable_entries())["key" + std::to_string(i)] = "value";
  }
  EXPECT_EQ(Convert(many).status().code(), Code::kInvalidArgument);
}

TEST(ToNewItemTest, DelayIsApplied) {
  v1::EnqueueItem item = Item();
  item.set_delay_ms(5'000);
  auto r = Convert(item);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->deliver_after, kNow + Duration(5'000));

  item.set_delay_ms(0);
  r = Convert(item);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->deliver_after, kNow);

  item.set_delay_ms(kMaxDelayMs);
  r = Convert(item);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->deliver_after, kNow + Duration(kMaxDelayMs));
}

// Read part-way into a millisecond: a delay counts from the next whole one, so the
// item is never due before the call's arrival plus its delay (queue.proto). No delay
// and an absolute time are not moved.
TEST(ToNewItemTest, DelayCountsFromTheMillisecondRoundedUp) {
  const ReadTime between{.now = kNow, .delay_from = kNow + Duration(1)};
  auto convert = [&](const v1::EnqueueItem& item) {
    return ToNewItem("ns", item, between, kLimits, NamespacePolicy{});
  };
  v1::EnqueueItem item = Item();
  item.set_delay_ms(2'000);
  auto r = convert(item);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->deliver_after, kNow + Duration(2'001));

  item.set_delay_ms(0);  // READY at once
  r = convert(item);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->deliver_after, kNow);

  item.set_deliver_after_ms(kNowMs + 2'000);
  r = convert(item);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->deliver_after, kNow + Duration(2'000));

  r = convert(Item());
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->deliver_after, kNow);

  item = Item();  // a TTL counts from the same millisecond as a delay
  item.set_delay_ms(2'000);
  item.set_ttl_ms(2'001);
  r = convert(item);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->deliver_after, kNow + Duration(2'001));
  ASSERT_TRUE(r->expires_at.has_value());
  EXPECT_EQ(*r->expires_at, kNow + Duration(2'002));
}

TEST(ToNewItemTest, DelayOutOfRangeIsRejected) {
  for (int64_t d :
       {int64_t{-1}, int64_t{INT64_MIN}, kMaxDelayMs + 1, int64_t{INT64_MAX}}) {
    v1::EnqueueItem item = Item();
    item.set_delay_ms(d);
    EXPECT_EQ(Convert(item).status().code(), Code::kInvalidArgument) << d;
  }
}

TEST(ToNewItemTest, DeliverAfterInTheFutureIsKept) {
  v1::EnqueueItem item = Item();
  item.set_deliver_after_ms(kNowMs + 60'000);
  auto r = Convert(item);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->deliver_after, FromUnixMillis(kNowMs + 60'000));

  item.set_deliver_after_ms(kNowMs + kMaxDelayMs);
  r = Convert(item);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->deliver_after, kNow + Duration(kMaxDelayMs));
}

TEST(ToNewItemTest, DeliverAfterInThePastMeansNow) {
  for (int64_t t : {int64_t{0}, int64_t{1}, kNowMs - 1, kNowMs}) {
    v1::EnqueueItem item = Item();
    item.set_deliver_after_ms(t);
    auto r = Convert(item);
    ASSERT_TRUE(r.ok()) << t;
    EXPECT_EQ(r->deliver_after, kNow) << t;
  }
}

TEST(ToNewItemTest, DeliverAfterOutOfRangeIsRejected) {
  for (int64_t t :
       {int64_t{-1}, int64_t{INT64_MIN}, kNowMs + kMaxDelayMs + 1, int64_t{INT64_MAX}}) {
    v1::EnqueueItem item = Item();
    item.set_deliver_after_ms(t);
    EXPECT_EQ(Convert(item).status().code(), Code::kInvalidArgument) << t;
  }
}

TEST(ToNewItemTest, LeaseZeroMeansDefault30s) {
  v1::EnqueueItem item = Item();
  item.set_lease_ms(0);
  auto r = Convert(item);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->lease, Duration(30'000));

  Limits custom;
  custom.default_lease = Duration(1'234);
  r = ToNewItem("ns", item, kAt, custom, NamespacePolicy{});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->lease, Duration(1'234));
}

TEST(ToNewItemTest, LeaseIsApplied) {
  for (int64_t l : {int64_t{1}, int64_t{45'000}, kMaxLeaseMs}) {
    v1::EnqueueItem item = Item();
    item.set_lease_ms(l);
    auto r = Convert(item);
    ASSERT_TRUE(r.ok()) << l;
    EXPECT_EQ(r->lease, Duration(l));
  }
}

TEST(ToNewItemTest, LeaseOutOfRangeIsRejected) {
  for (int64_t l :
       {int64_t{-1}, int64_t{INT64_MIN}, kMaxLeaseMs + 1, int64_t{INT64_MAX}}) {
    v1::EnqueueItem item = Item();
    item.set_lease_ms(l);
    EXPECT_EQ(Convert(item).status().code(), Code::kInvalidArgument) << l;
  }
}

TEST(ToNewItemTest, TtlZeroMeansNoExpiry) {
  v1::EnqueueItem item = Item();
  item.set_ttl_ms(0);
  auto r = Convert(item);
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(r->expires_at.has_value());
}

TEST(ToNewItemTest, TtlIsAppliedFromNow) {
  v1::EnqueueItem item = Item();
  item.set_ttl_ms(3'600'000);
  item.set_delay_ms(10'000);  // TTL counts from enqueue, not from deliver_after
  auto r = Convert(item);
  ASSERT_TRUE(r.ok());
  ASSERT_TRUE(r->expires_at.has_value());
  EXPECT_EQ(*r->expires_at, kNow + Duration(3'600'000));

  item.set_ttl_ms(kMaxDelayMs);
  r = Convert(item);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r->expires_at, kNow + Duration(kMaxDelayMs));
}

TEST(ToNewItemTest, TtlOutOfRangeIsRejected) {
  for (int64_t t :
       {int64_t{-1}, int64_t{INT64_MIN}, kMaxDelayMs + 1, int64_t{INT64_MAX}}) {
    v1::EnqueueItem item = Item();
    item.set_ttl_ms(t);
    EXPECT_EQ(Convert(item).status().code(), Code::kInvalidArgument) << t;
  }
}

// ---------------------------------------------------------------------------
// ToTopicAsks / ToWait

v1::DequeueRequest Dequeue(std::vector<std::pair<std::string, int32_t>> topics) {
  v1::DequeueRequest req;
  req.set_namespace_("ns");
  for (auto& [topic, count] : topics) {
    v1::TopicRequest* t = req.add_topics();
    t->set_topic(topic);
    t->set_count(count);
  }
  return req;
}

TEST(ToTopicAsksTest, KeepsRequestOrder) {
  auto r = ToTopicAsks(Dequeue({{"b", 3}, {"a", 1}, {"c", 1000}}), kLimits);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_EQ(r->size(), 3u);
  EXPECT_EQ((*r)[0].topic, "b");
  EXPECT_EQ((*r)[0].count, 3u);
  EXPECT_EQ((*r)[1].topic, "a");
  EXPECT_EQ((*r)[1].count, 1u);
  EXPECT_EQ((*r)[2].topic, "c");
  EXPECT_EQ((*r)[2].count, 1000u);
}

TEST(ToTopicAsksTest, RejectsNoTopics) {
  EXPECT_EQ(ToTopicAsks(Dequeue({}), kLimits).status().code(), Code::kInvalidArgument);
}

TEST(ToTopicAsksTest, AtMost100Topics) {
  std::vector<std::pair<std::string, int32_t>> topics;
  for (int i = 0; i < 100; ++i) topics.emplace_back("t" + std::to_string(i), 1);
  auto r = ToTopicAsks(Dequeue(topics), kLimits);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->size(), 100u);

  topics.emplace_back("t100", 1);
  EXPECT_EQ(ToTopicAsks(Dequeue(topics), kLimits).status().code(),
            Code::kInvalidArgument);
}

TEST(ToTopicAsksTest, CountMustBe1To1000) {
  for (int32_t count : {0, -1, INT32_MIN, 1001, INT32_MAX}) {
    EXPECT_EQ(ToTopicAsks(Dequeue({{"a", 1}, {"b", count}}), kLimits).status().code(),
              Code::kInvalidArgument)
        << count;
  }
  EXPECT_TRUE(ToTopicAsks(Dequeue({{"a", 1}}), kLimits).ok());
  EXPECT_TRUE(ToTopicAsks(Dequeue({{"a", 1000}}), kLimits).ok());
}

TEST(ToTopicAsksTest, RejectsDuplicateTopic) {
  auto r = ToTopicAsks(Dequeue({{"a", 1}, {"b", 2}, {"a", 3}}), kLimits);
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
  EXPECT_NE(r.status().message().find("twice"), std::string::npos)
      << r.status().message();
}

TEST(ToTopicAsksTest, RejectsBadTopicName) {
  for (std::string topic :
       {std::string(), std::string(".a"), std::string("a/b"), std::string(129, 'x')}) {
    EXPECT_EQ(ToTopicAsks(Dequeue({{"ok", 1}, {topic, 1}}), kLimits).status().code(),
              Code::kInvalidArgument)
        << topic;
  }
}

TEST(ToWaitTest, Range0To60000) {
  v1::DequeueRequest req;
  for (int64_t w : {int64_t{0}, int64_t{1}, int64_t{60'000}}) {
    req.set_wait_ms(w);
    auto r = ToWait(req, kLimits);
    ASSERT_TRUE(r.ok()) << w;
    EXPECT_EQ(*r, Duration(w));
  }
  for (int64_t w :
       {int64_t{-1}, int64_t{INT64_MIN}, int64_t{60'001}, int64_t{INT64_MAX}}) {
    req.set_wait_ms(w);
    EXPECT_EQ(ToWait(req, kLimits).status().code(), Code::kInvalidArgument) << w;
  }
}

// ---------------------------------------------------------------------------
// ToLeaseOp / ToNackOp / ToExtendOp

TEST(ToLeaseOpTest, ParsesGoodRefs) {
  auto r = ToLeaseOp(Ref("3-1042", GoodToken()));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->id.shard, ShardId(3));
  EXPECT_EQ(r->id.row, RowId(1042));
  EXPECT_EQ(r->token, LeaseToken(0x0123456789abcdefULL));

  r = ToLeaseOp(Ref("0-1", "0000000000000001"));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->id, (ItemId{ShardId(0), RowId(1)}));
  EXPECT_EQ(r->token, LeaseToken(1));

  r = ToLeaseOp(Ref("4294967295-18446744073709551615", "ffffffffffffffff"));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->id.shard, ShardId(UINT32_MAX));
  EXPECT_EQ(r->id.row, RowId(UINT64_MAX));
  EXPECT_EQ(r->token, LeaseToken(UINT64_MAX));
}

TEST(ToLeaseOpTest, RejectsMalformedIds) {
  using namespace std::string_literals;
  for (std::string id : {""s,
                         "1"s,
                         "-1"s,
                         "1-"s,
                         "-"s,
                         "a-1"s,
                         "1-a"s,
                         "1-0"s,
                         "1-2-3"s,
                         "99999999999-1"s,
                         "4294967296-1"s,
                         "1-18446744073709551616"s,
                         " 1-2"s,
                         "1-2 "s,
                         "1 -2"s,
                         "+1-2"s,
                         "1-+2"s,
                         "1--2"s,
                         "0x1-2"s,
                         "1-2\0"s,
                         "1.5-2"s}) {
    auto r = ToLeaseOp(Ref(id, GoodToken()));
    EXPECT_EQ(r.status().code(), Code::kInvalidArgument) << "id '" << id << "'";
  }
}

TEST(ToLeaseOpTest, RejectsMalformedTokens) {
  using namespace std::string_literals;
  for (std::string token :
       {""s, "0123456789abcde"s, "0123456789abcdef0"s, "0123456789abcdeg"s,
        "0123456789abcde "s, " 123456789abcdef"s, "+123456789abcdef"s,
        "-123456789abcdef"s, "0x23456789abcdef"s, "0000000000000000"s,
        "zzzzzzzzzzzzzzzz"s, "01234567\089abcdef"s.substr(0, 16)}) {
    auto r = ToLeaseOp(Ref("1-2", token));
    EXPECT_EQ(r.status().code(), Code::kInvalidArgument) << "token '" << token << "'";
  }
}

// An id may be long and still valid (leading zeros): the refusal must not echo it, or a
// batch of such refusals outgrows the request, and the answer the 16 MiB limit.
TEST(ToLeaseOpTest, AMalformedTokensMessageNamesTheItemInItsShortForm) {
  auto r = ToLeaseOp(Ref("1-" + std::string(10'000, '0') + "2", ""));
  ASSERT_EQ(r.status().code(), Code::kInvalidArgument);
  EXPECT_EQ(r.status().message(), "malformed lease token for item 1-2");
}

TEST(ToNackOpTest, DelayRange) {
  v1::NackItem item;
  *item.mutable_item() = Ref("2-7", GoodToken());
  for (int64_t d : {int64_t{0}, int64_t{1}, kMaxDelayMs}) {
    item.set_delay_ms(d);
    auto r = ToNackOp(item, kLimits);
    ASSERT_TRUE(r.ok()) << d;
    EXPECT_EQ(r->id, (ItemId{ShardId(2), RowId(7)}));
    EXPECT_EQ(r->token, LeaseToken(0x0123456789abcdefULL));
    EXPECT_EQ(r->delay, Duration(d));
  }
  for (int64_t d :
       {int64_t{-1}, int64_t{INT64_MIN}, kMaxDelayMs + 1, int64_t{INT64_MAX}}) {
    item.set_delay_ms(d);
    EXPECT_EQ(ToNackOp(item, kLimits).status().code(), Code::kInvalidArgument) << d;
  }
}

TEST(ToNackOpTest, MetadataPresence) {
  v1::NackItem item;
  *item.mutable_item() = Ref("2-7", GoodToken());

  // Absent: keep the item's metadata.
  auto r = ToNackOp(item, kLimits);
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(r->metadata.has_value());

  // Present but empty: replace with empty metadata.
  item.mutable_metadata();
  r = ToNackOp(item, kLimits);
  ASSERT_TRUE(r.ok());
  ASSERT_TRUE(r->metadata.has_value());
  EXPECT_EQ(*r->metadata, "");

  // Present with entries: replace with their encoding.
  (*item.mutable_metadata()->mutable_entries())["retry"] = "3";
  r = ToNackOp(item, kLimits);
  ASSERT_TRUE(r.ok());
  ASSERT_TRUE(r->metadata.has_value());
  EXPECT_EQ(*r->metadata, EncodeMetadata(item.metadata()));
}

TEST(ToNackOpTest, MetadataOver2KiBIsRejected) {
  v1::NackItem item;
  *item.mutable_item() = Ref("2-7", GoodToken());
  *item.mutable_metadata() = MetadataOfEncodedSize(kMaxMetadataBytes);
  EXPECT_TRUE(ToNackOp(item, kLimits).ok());
  (*item.mutable_metadata()->mutable_entries())["k"] += "v";
  EXPECT_EQ(ToNackOp(item, kLimits).status().code(), Code::kInvalidArgument);
}

TEST(ToNackOpTest, MalformedRefIsRejected) {
  v1::NackItem item;
  *item.mutable_item() = Ref("2-0", GoodToken());
  EXPECT_EQ(ToNackOp(item, kLimits).status().code(), Code::kInvalidArgument);
  *item.mutable_item() = Ref("2-7", "0000000000000000");
  EXPECT_EQ(ToNackOp(item, kLimits).status().code(), Code::kInvalidArgument);
  item.clear_item();  // unset LeaseRef: empty id
  EXPECT_EQ(ToNackOp(item, kLimits).status().code(), Code::kInvalidArgument);
}

TEST(ToExtendOpTest, ExtensionRange) {
  v1::ExtendItem item;
  *item.mutable_item() = Ref("5-9", GoodToken());
  for (int64_t e : {int64_t{1}, int64_t{30'000}, kMaxLeaseMs}) {
    item.set_extension_ms(e);
    auto r = ToExtendOp(item, kLimits);
    ASSERT_TRUE(r.ok()) << e;
    EXPECT_EQ(r->id, (ItemId{ShardId(5), RowId(9)}));
    EXPECT_EQ(r->token, LeaseToken(0x0123456789abcdefULL));
    EXPECT_EQ(r->extension, Duration(e));
  }
  for (int64_t e : {int64_t{0}, int64_t{-1}, int64_t{INT64_MIN}, kMaxLeaseMs + 1,
                    int64_t{INT64_MAX}}) {
    item.set_extension_ms(e);
    EXPECT_EQ(ToExtendOp(item, kLimits).status().code(), Code::kInvalidArgument) << e;
  }
}

TEST(ToExtendOpTest, MalformedRefIsRejected) {
  v1::ExtendItem item;
  item.set_extension_ms(1'000);
  *item.mutable_item() = Ref("x-9", GoodToken());
  EXPECT_EQ(ToExtendOp(item, kLimits).status().code(), Code::kInvalidArgument);
  *item.mutable_item() = Ref("5-9", "short");
  EXPECT_EQ(ToExtendOp(item, kLimits).status().code(), Code::kInvalidArgument);
}

// ---------------------------------------------------------------------------
// ValidateBatchSize / RejectDuplicateIds

TEST(ValidateBatchSizeTest, Range1To1000) {
  EXPECT_TRUE(ValidateBatchSize(1, kLimits).ok());
  EXPECT_TRUE(ValidateBatchSize(1000, kLimits).ok());
  for (int n : {0, -1, INT32_MIN, 1001, INT32_MAX}) {
    EXPECT_EQ(ValidateBatchSize(n, kLimits).code(), Code::kInvalidArgument) << n;
  }
}

engine::LeaseOp Op(uint32_t shard, uint64_t row, uint64_t token = 1) {
  return engine::LeaseOp{ItemId{ShardId(shard), RowId(row)}, LeaseToken(token)};
}

TEST(RejectDuplicateIdsTest, MarksLaterOccurrencesOnly) {
  std::vector<Result<engine::LeaseOp>> ops;
  ops.push_back(Op(1, 10));                                 // 0: first 1-10
  ops.push_back(Status::InvalidArgument("earlier error"));  // 1: kept as is
  ops.push_back(Op(2, 10));                                 // 2: other shard, same row
  ops.push_back(Op(1, 10, 2));                              // 3: dup of 0 (token ignored)
  ops.push_back(Op(1, 11));                                 // 4
  ops.push_back(Op(1, 10));                                 // 5: dup of 0
  RejectDuplicateIds(ops);

  ASSERT_EQ(ops.size(), 6u);
  ASSERT_TRUE(ops[0].ok());
  EXPECT_EQ(ops[0]->id, (ItemId{ShardId(1), RowId(10)}));
  EXPECT_EQ(ops[1].status().code(), Code::kInvalidArgument);
  EXPECT_EQ(ops[1].status().message(), "earlier error");
  EXPECT_TRUE(ops[2].ok());
  EXPECT_EQ(ops[3].status().code(), Code::kInvalidArgument);
  EXPECT_NE(ops[3].status().message().find("1-10"), std::string::npos)
      << ops[3].status().message();
  EXPECT_TRUE(ops[4].ok());
  EXPECT_EQ(ops[5].status().code(), Code::kInvalidArgument);
}

TEST(RejectDuplicateIdsTest, WorksForNackAndExtendOps) {
  std::vector<Result<engine::NackOp>> nacks;
  nacks.push_back(engine::NackOp{ItemId{ShardId(0), RowId(1)}, LeaseToken(1), Duration(0),
                                 std::nullopt});
  nacks.push_back(engine::NackOp{ItemId{ShardId(0), RowId(1)}, LeaseToken(1), Duration(0),
                                 std::nullopt});
  RejectDuplicateIds(nacks);
  EXPECT_TRUE(nacks[0].ok());
  EXPECT_EQ(nacks[1].status().code(), Code::kInvalidArgument);

  std::vector<Result<engine::ExtendOp>> extends;
  extends.push_back(
      engine::ExtendOp{ItemId{ShardId(0), RowId(1)}, LeaseToken(1), Duration(1)});
  extends.push_back(
      engine::ExtendOp{ItemId{ShardId(0), RowId(2)}, LeaseToken(1), Duration(1)});
  RejectDuplicateIds(extends);
  EXPECT_TRUE(extends[0].ok());
  EXPECT_TRUE(extends[1].ok());
}

TEST(RejectDuplicateIdsTest, EmptyAndAllErrorsAreFine) {
  std::vector<Result<engine::LeaseOp>> ops;
  RejectDuplicateIds(ops);
  EXPECT_TRUE(ops.empty());
  ops.push_back(Status::InvalidArgument("a"));
  ops.push_back(Status::InvalidArgument("b"));
  RejectDuplicateIds(ops);
  EXPECT_EQ(ops[0].status().message(), "a");
  EXPECT_EQ(ops[1].status().message(), "b");
}

// ---------------------------------------------------------------------------
// Lease tokens and metadata encoding

bool IsLowerHex16(const std::string& s) {
  if (s.size() != 16) return false;
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

TEST(LeaseTokenTest, RoundTripsRandomValues) {
  std::mt19937_64 rng(20240601);
  for (int i = 0; i < 10'000; ++i) {
    uint64_t v = rng();
    if (v == 0) continue;
    std::string text = EncodeLeaseToken(LeaseToken(v));
    ASSERT_TRUE(IsLowerHex16(text)) << text;
    auto back = DecodeLeaseToken(text);
    ASSERT_TRUE(back.has_value()) << text;
    EXPECT_EQ(back->value(), v);
  }
}

TEST(LeaseTokenTest, EdgeValues) {
  EXPECT_EQ(EncodeLeaseToken(LeaseToken(1)), "0000000000000001");
  EXPECT_EQ(EncodeLeaseToken(LeaseToken(UINT64_MAX)), "ffffffffffffffff");
  EXPECT_EQ(EncodeLeaseToken(LeaseToken(0xABCDEF)), "0000000000abcdef");
  EXPECT_EQ(DecodeLeaseToken("0000000000000001")->value(), 1u);
  EXPECT_EQ(DecodeLeaseToken("ffffffffffffffff")->value(), UINT64_MAX);
  EXPECT_FALSE(DecodeLeaseToken("0000000000000000").has_value());
  EXPECT_FALSE(DecodeLeaseToken("").has_value());
  EXPECT_FALSE(DecodeLeaseToken("1").has_value());
  EXPECT_FALSE(DecodeLeaseToken("1ffffffffffffffff").has_value());
}

v1::Metadata Meta(const std::vector<std::pair<std::string, std::string>>& entries) {
  v1::Metadata m;
  for (const auto& [k, v] : entries) (*m.mutable_entries())[k] = v;
  return m;
}

TEST(MetadataTest, EmptyMapEncodesToEmptyString) {
  EXPECT_EQ(EncodeMetadata(v1::Metadata()), "");
  v1::Metadata fresh;
  DecodeMetadata("", &fresh);
  EXPECT_TRUE(fresh.entries().empty());
}

TEST(MetadataTest, EncodingIsDeterministicAcrossInsertionOrders) {
  std::vector<std::pair<std::string, std::string>> entries;
  for (int i = 0; i < 64; ++i) {
    entries.emplace_back("key_" + std::to_string(i * 7919 % 1000),
                         "value_" + std::to_string(i));
  }
  std::vector<std::pair<std::string, std::string>> reversed(entries.rbegin(),
                                                            entries.rend());
  std::vector<std::pair<std::string, std::string>> shuffled = entries;
  std::shuffle(shuffled.begin(), shuffled.end(), std::mt19937(7));

  std::string a = EncodeMetadata(Meta(entries));
  ASSERT_FALSE(a.empty());
  EXPECT_EQ(a, EncodeMetadata(Meta(reversed)));
  EXPECT_EQ(a, EncodeMetadata(Meta(shuffled)));
  EXPECT_EQ(a, EncodeMetadata(Meta(entries)));  // stable across calls
}

TEST(MetadataTest, DecodeRoundTrips) {
  v1::Metadata m = Meta({{"attempt_note", "timeout"},
                         {"empty", ""},
                         {"", "empty key"},
                         {"unicode", "caf\xc3\xa9"},
                         {"long", std::string(500, 'x')}});
  std::string bytes = EncodeMetadata(m);
  v1::Metadata back;
  DecodeMetadata(bytes, &back);
  ASSERT_EQ(back.entries().size(), m.entries().size());
  for (const auto& [k, v] : m.entries()) {
    ASSERT_EQ(back.entries().count(k), 1u) << k;
    EXPECT_EQ(back.entries().at(k), v) << k;
  }
  EXPECT_EQ(EncodeMetadata(back), bytes);
}

TEST(MetadataTest, DecodeOfGarbageClearsTheResult) {
  using namespace std::string_literals;
  for (std::string garbage : {"\xff"s, "\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"s,
                              "\x0a\x10short"s,  // length past the end
                              "\x00"s,           // field number 0
                              "\x0a\x02\x0a"s,   // truncated map entry
                              "\x0f"s,           // invalid wire type
                              std::string(100, '\xee')}) {
    v1::Metadata out = Meta({{"before", "x"}});
    DecodeMetadata(garbage, &out);
    EXPECT_TRUE(out.entries().empty()) << "garbage of size " << garbage.size();
  }
}

TEST(MetadataTest, DecodeOfRandomBytesDoesNotCrash) {
  std::mt19937 rng(42);
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_int_distribution<int> len(1, 64);
  for (int i = 0; i < 2'000; ++i) {
    std::string bytes(len(rng), '\0');
    for (char& c : bytes) c = static_cast<char>(byte(rng));
    v1::Metadata out;
    DecodeMetadata(bytes, &out);  // must not crash; any result is acceptable
  }
  SUCCEED();
}

// Texts cut to a limit go back out in proto3 `string` fields: a cut inside a UTF-8
// character would make the whole answer unparsable for a strict client.
TEST(TruncationTest, AMalformedIdQuotedInAnErrorIsCutBetweenCharacters) {
  const std::string id = std::string(63, '1') + "\xE2\x82\xAC";  // 63 digits and a euro
  auto r = ToItemId(id);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(), "malformed item id '" + std::string(63, '1') + "'");
}

TEST(TruncationTest, ANackErrorIsCutBetweenCharacters) {
  v1::NackItem item;
  item.mutable_item()->set_id("1-1");
  item.mutable_item()->set_lease_token(EncodeLeaseToken(LeaseToken(7)));
  item.set_error(std::string(kMaxErrorBytes - 1, 'a') +
                 "\xC3\xA9");  // ... and an e-acute
  auto op = ToNackOp(item, kLimits);
  ASSERT_TRUE(op.ok()) << op.status().ToString();
  EXPECT_EQ(op->error, std::string(kMaxErrorBytes - 1, 'a'));
  item.set_error(std::string(kMaxErrorBytes - 2, 'a') + "\xC3\xA9");  // fits exactly
  EXPECT_EQ(ToNackOp(item, kLimits)->error, item.error());
}

// A stream reads ahead of its answers only so far: running calls and answers not yet
// written both count, so a client that never reads holds bounded server memory.
TEST(CallStreamTest, ReadsAheadOfRunningCallsAndUnwrittenAnswersTogether) {
  using Stream = CallStream<v1::ConsumeStreamRequest, v1::ConsumeStreamResponse>;
  EXPECT_TRUE(Stream::MayReadAhead(0, 0));
  EXPECT_TRUE(Stream::MayReadAhead(Stream::kMaxCallsAhead - 1, 0));
  EXPECT_FALSE(Stream::MayReadAhead(Stream::kMaxCallsAhead, 0));
  EXPECT_FALSE(Stream::MayReadAhead(0, Stream::kMaxCallsAhead)) << "answers only";
  EXPECT_FALSE(Stream::MayReadAhead(400, 600));
  EXPECT_TRUE(Stream::MayReadAhead(400, 599));
}

}  // namespace
}  // namespace shardq::frontend
