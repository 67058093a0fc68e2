#pragma once
// The server's limits that the SDK keeps to (proto/shardq/v1/queue.proto says each).
// Copied, because the SDK depends only on the wire API and not on the server's
// libraries; sdk_test checks every one against the server's own constant
// (common/item.h, frontend::Limits), so a change on either side fails there.

#include <cstddef>

#include "shardq/clock.h"

namespace shardq::sdk::server_limits {

// Items in one Enqueue, Ack, Nack or ExtendLease call.
inline constexpr size_t kMaxItemsPerCall = 1000;
// TopicRequest.count of a Dequeue.
inline constexpr size_t kMaxCountPerTopic = 1000;
// AckItem.result.
inline constexpr size_t kMaxResultBytes = 4096;
// NackItem.error: longer is cut by the server, but must first fit the message.
inline constexpr size_t kMaxErrorBytes = 4096;
// DequeueRequest.worker_id.
inline constexpr size_t kMaxWorkerIdBytes = 128;
// NackItem.delay_ms.
inline constexpr Millis kMaxRetryDelay{366LL * 24 * 3600 * 1000};
// ExtendItem.extension_ms.
inline constexpr Millis kMaxLeaseExtension{12LL * 3600 * 1000};

}  // namespace shardq::sdk::server_limits
