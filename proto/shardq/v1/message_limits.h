#pragma once
// The largest message either end of the wire sends or takes, in bytes.
//
// The largest answer is a Dequeue of 1,000 items with 10 KiB payloads and 2 KiB of
// metadata each: about 12.6 MB, three times gRPC's default limit of 4 MB a message.
// A client that keeps gRPC's default gets RESOURCE_EXHAUSTED for such an answer
// after the server has leased its items, which then come back only when their leases
// run out; the SDK's channels and shardqctl take this much. The largest request, an
// Enqueue of 1,000 items, is about as big.

namespace shardq::v1 {

inline constexpr int kMaxMessageBytes = 16 * 1024 * 1024;

}  // namespace shardq::v1
