#include "tools/shardqctl_format.h"

#include <fmt/chrono.h>
#include <fmt/format.h>

#include <array>
#include <ctime>
#include <iterator>

namespace shardq::tools {

std::string StatusCodeName(int code) {
  static constexpr std::array<const char*, 17> kNames = {
      "OK",
      "CANCELLED",
      "UNKNOWN",
      "INVALID_ARGUMENT",
      "DEADLINE_EXCEEDED",
      "NOT_FOUND",
      "ALREADY_EXISTS",
      "PERMISSION_DENIED",
      "RESOURCE_EXHAUSTED",
      "FAILED_PRECONDITION",
      "ABORTED",
      "OUT_OF_RANGE",
      "UNIMPLEMENTED",
      "INTERNAL",
      "UNAVAILABLE",
      "DATA_LOSS",
      "UNAUTHENTICATED",
  };
  if (code >= 0 && code < static_cast<int>(kNames.size())) return kNames[code];
  return fmt::format("CODE_{}", code);
}

namespace {

// Length of the UTF-8 sequence starting at `lead`, or 0 if `lead` cannot start one.
int Utf8SequenceLength(unsigned char lead) {
  if (lead < 0x80) return 1;
  if (lead >= 0xC2 && lead <= 0xDF) return 2;
  if (lead >= 0xE0 && lead <= 0xEF) return 3;
  if (lead >= 0xF0 && lead <= 0xF4) return 4;
  return 0;
}

// Rejects overlong forms, surrogates and code points above U+10FFFF, which a plain
// "continuation bytes follow" check would let through.
bool ValidSecondByte(unsigned char lead, unsigned char second) {
  if (lead == 0xE0) return second >= 0xA0;
  if (lead == 0xED) return second <= 0x9F;
  if (lead == 0xF0) return second >= 0x90;
  if (lead == 0xF4) return second <= 0x8F;
  return true;
}

bool IsControl(unsigned char c) {
  return (c < 0x20 && c != '\t' && c != '\n' && c != '\r') || c == 0x7F;
}

}  // namespace

bool IsPrintableUtf8(std::string_view bytes) {
  size_t i = 0;
  while (i < bytes.size()) {
    const auto lead = static_cast<unsigned char>(bytes[i]);
    const int len = Utf8SequenceLength(lead);
    if (len == 0 || i + len > bytes.size()) return false;
    if (len == 1 && IsControl(lead)) return false;
    for (int k = 1; k < len; ++k) {
      const auto c = static_cast<unsigned char>(bytes[i + k]);
      if ((c & 0xC0) != 0x80) return false;
      if (k == 1 && !ValidSecondByte(lead, c)) return false;
    }
    i += len;
  }
  return true;
}

std::string Base64Encode(std::string_view bytes) {
  static constexpr char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 3 <= bytes.size(); i += 3) {
    const uint32_t n = (static_cast<unsigned char>(bytes[i]) << 16) |
                       (static_cast<unsigned char>(bytes[i + 1]) << 8) |
                       static_cast<unsigned char>(bytes[i + 2]);
    out += kAlphabet[(n >> 18) & 63];
    out += kAlphabet[(n >> 12) & 63];
    out += kAlphabet[(n >> 6) & 63];
    out += kAlphabet[n & 63];
  }
  const size_t rest = bytes.size() - i;
  if (rest > 0) {
    uint32_t n = static_cast<unsigned char>(bytes[i]) << 16;
    if (rest == 2) n |= static_cast<unsigned char>(bytes[i + 1]) << 8;
    out += kAlphabet[(n >> 18) & 63];
    out += kAlphabet[(n >> 12) & 63];
    out += rest == 2 ? kAlphabet[(n >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

std::string FormatUnixMs(int64_t ms) {
  if (ms == 0) return "-";
  // Floor division, so times before 1970 still get a millisecond part in 0..999.
  int64_t seconds = ms / 1000;
  int64_t millis = ms % 1000;
  if (millis < 0) {
    millis += 1000;
    seconds -= 1;
  }
  return fmt::format("{:%Y-%m-%dT%H:%M:%S}.{:03}Z",
                     fmt::gmtime(static_cast<std::time_t>(seconds)), millis);
}

std::string FormatRelativeMs(int64_t at_ms, int64_t now_ms) {
  const int64_t diff = at_ms - now_ms;
  const int64_t abs = diff < 0 ? -diff : diff;
  std::string amount;
  if (abs < 1000) {
    amount = fmt::format("{}ms", abs);
  } else if (abs < 60'000) {
    amount = fmt::format("{:.1f}s", static_cast<double>(abs) / 1000.0);
  } else if (abs < 3'600'000) {
    amount = fmt::format("{}m{}s", abs / 60'000, abs / 1000 % 60);
  } else if (abs < 86'400'000) {
    amount = fmt::format("{}h{}m", abs / 3'600'000, abs / 60'000 % 60);
  } else {
    amount = fmt::format("{}d{}h", abs / 86'400'000, abs / 3'600'000 % 24);
  }
  if (diff == 0) return "now";
  return diff > 0 ? "in " + amount : amount + " ago";
}

std::string OneLine(std::string_view text, size_t max_bytes) {
  bool cut = false;
  if (text.size() > max_bytes) {
    size_t end = max_bytes;
    // Back up over continuation bytes, so a multi-byte character is not split.
    while (end > 0 && (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80) --end;
    text = text.substr(0, end);
    cut = true;
  }
  std::string out;
  out.reserve(text.size() + 3);
  for (const char c : text) {
    switch (c) {
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        out += c;
    }
  }
  if (cut) out += "...";
  return out;
}

std::map<std::string, std::string> ParseMeta(const std::vector<std::string>& args) {
  std::map<std::string, std::string> entries;
  for (const auto& arg : args) {
    const auto eq = arg.find('=');
    if (eq == std::string::npos || eq == 0) {
      throw ArgError(fmt::format("--meta wants key=value, got '{}'", arg));
    }
    std::string key = arg.substr(0, eq);
    if (!entries.emplace(key, arg.substr(eq + 1)).second) {
      throw ArgError(fmt::format("--meta key '{}' given twice", key));
    }
  }
  return entries;
}

std::vector<std::pair<std::string, std::string>> ParseLeaseRefs(
    const std::vector<std::string>& args) {
  if (args.empty() || args.size() % 2 != 0) {
    throw ArgError(
        fmt::format("expected ID TOKEN pairs, got {} argument(s)", args.size()));
  }
  std::vector<std::pair<std::string, std::string>> refs;
  for (size_t i = 0; i < args.size(); i += 2) refs.emplace_back(args[i], args[i + 1]);
  return refs;
}

std::string ReadAll(std::istream& in) {
  return std::string(std::istreambuf_iterator<char>(in),
                     std::istreambuf_iterator<char>());
}

}  // namespace shardq::tools
