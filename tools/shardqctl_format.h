// Pure helpers of shardqctl: argument parsing and value rendering. No RPCs here, so
// they are easy to reason about (and to test) apart from a server.
#pragma once

#include <cstdint>
#include <istream>
#include <map>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace shardq::tools {

// A command-line argument that CLI11 accepted but that makes no sense to us.
// main() prints it and exits with code 2, like CLI11's own errors.
class ArgError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// "OK", "FAILED_PRECONDITION", ... for a google.rpc.Code number; "CODE_<n>" for
// numbers outside the standard set, so an odd server answer is still shown.
std::string StatusCodeName(int code);

// True for valid UTF-8 without control characters other than tab, CR and LF: such a
// payload is shown as text, anything else is encoded.
bool IsPrintableUtf8(std::string_view bytes);

// Standard base64 (RFC 4648) with padding.
std::string Base64Encode(std::string_view bytes);

// "2024-05-01T12:00:00.123Z" for a unix epoch millisecond time; "-" for 0 (unset).
std::string FormatUnixMs(int64_t ms);

// How far `at_ms` is from `now_ms`, for people: "in 29.9s", "3m12s ago", "now".
std::string FormatRelativeMs(int64_t at_ms, int64_t now_ms);

// `text` on one line, for tables and logs: CR, LF and tab become \r, \n and \t, and
// text longer than `max_bytes` is cut (at a UTF-8 boundary) and ends in "...".
std::string OneLine(std::string_view text, size_t max_bytes);

// Parses repeated "key=value" arguments. The key must be non-empty and appear once;
// the value may be empty or hold further '='.
std::map<std::string, std::string> ParseMeta(const std::vector<std::string>& args);

// Parses "ID TOKEN [ID TOKEN ...]" into (id, token) pairs.
std::vector<std::pair<std::string, std::string>> ParseLeaseRefs(
    const std::vector<std::string>& args);

// The whole stream as bytes (payloads may be binary).
std::string ReadAll(std::istream& in);

}  // namespace shardq::tools
