#pragma once
// proto3 `string` fields must hold valid UTF-8: the server's parser refuses a message
// with other bytes in one, and on a stream that ends the whole stream
// (INVALID_ARGUMENT), failing the unrelated calls on it as well. So the SDK checks
// every string it sends: text it forwards for information only (an error text, the
// worker id) is made valid (ValidUtf8); data the caller gave is refused if not valid.

#include <cstddef>
#include <string>
#include <string_view>

namespace shardq::sdk {

// True if `s` is well-formed UTF-8 (Unicode table 3-7, as protobuf checks it: no
// overlong forms, surrogates or code points past U+10FFFF).
bool IsValidUtf8(std::string_view s);

// `s` as valid UTF-8 of at most `max_bytes` bytes: each byte that does not begin a
// well-formed character becomes U+FFFD (so the rest of the text still reads), and the
// text ends with the last whole character that fits.
std::string ValidUtf8(std::string_view s, size_t max_bytes);

}  // namespace shardq::sdk
