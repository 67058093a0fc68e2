#include "frontend/config.h"

#include <fmt/format.h>

#include <cctype>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <stdexcept>

#include "frontend/metrics.h"

namespace shardq::frontend {
namespace {

// nlohmann's get<unsigned>() wraps negatives, truncates out-of-range values and
// floats, and accepts booleans. Config numbers are exact non-negative integers.
template <typename T>
T GetUnsigned(const nlohmann::json& v, const char* what, uint64_t lo,
              uint64_t hi = std::numeric_limits<T>::max()) {
  if (!v.is_number_unsigned() || v.get<uint64_t>() < lo || v.get<uint64_t>() > hi) {
    throw std::invalid_argument(
        fmt::format("{} must be an integer in [{}, {}], got {}", what, lo, hi, v.dump()));
  }
  return static_cast<T>(v.get<uint64_t>());
}

// {"max_attempts": 5, "retention_ms": 604800000, "enqueue_rate": 1000,
//  "enqueue_burst": 5000}, each key optional.
NamespacePolicy ParsePolicy(const nlohmann::json& j, NamespacePolicy p) {
  if (j.contains("max_attempts")) {
    p.max_attempts =
        GetUnsigned<uint32_t>(j.at("max_attempts"), "max_attempts", 1, kMaxAttemptsLimit);
  }
  if (j.contains("retention_ms")) {
    p.retention = Duration(GetUnsigned<int64_t>(j.at("retention_ms"), "retention_ms", 0,
                                                366LL * 24 * 3600 * 1000));
  }
  // Items a second (0 = no quota) and the burst (0 = a second's worth).
  constexpr uint64_t kMaxQuotaItems = 1'000'000'000;
  if (j.contains("enqueue_rate")) {
    p.enqueue_rate =
        GetUnsigned<uint64_t>(j.at("enqueue_rate"), "enqueue_rate", 0, kMaxQuotaItems);
  }
  if (j.contains("enqueue_burst")) {
    p.enqueue_burst =
        GetUnsigned<uint64_t>(j.at("enqueue_burst"), "enqueue_burst", 0, kMaxQuotaItems);
  } else if (j.contains("enqueue_rate")) {
    p.enqueue_burst = 0;  // a rate of its own: a second of it, not the default's burst
  }
  if (p.enqueue_rate == 0 && p.enqueue_burst > 0) {
    throw std::invalid_argument("enqueue_burst " + std::to_string(p.enqueue_burst) +
                                " needs an enqueue_rate");
  }
  return p;
}

// "namespace_defaults": {...}, "namespaces": {"billing": {...}, ...}
NamespacePolicies ParsePolicies(const nlohmann::json& j) {
  // Named locals: iterating items() of the temporary that value() returns would
  // read a destroyed object (it crashed the parser).
  const nlohmann::json defaults_json =
      j.value("namespace_defaults", nlohmann::json::object());
  const nlohmann::json namespaces = j.value("namespaces", nlohmann::json::object());
  if (!defaults_json.is_object() || !namespaces.is_object()) {
    throw std::invalid_argument("namespace_defaults and namespaces must be objects");
  }
  NamespacePolicy defaults = ParsePolicy(defaults_json, {});
  std::map<std::string, NamespacePolicy> by_ns;
  for (const auto& [ns, policy] : namespaces.items()) {
    if (!policy.is_object()) {
      throw std::invalid_argument("namespaces." + ns + " must be an object");
    }
    try {
      by_ns[ns] = ParsePolicy(policy, defaults);
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument("namespaces." + ns + ": " + e.what());
    }
  }
  return NamespacePolicies(defaults, std::move(by_ns));
}

}  // namespace

Result<ServerConfig> ParseConfig(const std::string& json_text) {
  nlohmann::json j =
      nlohmann::json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return Status::InvalidArgument("config is not a JSON object");
  }
  ServerConfig c;
  try {
    c.listen = j.value("listen", c.listen);
    c.metrics_listen = j.value("metrics_listen", c.metrics_listen);
    if (j.contains("io_threads")) {
      c.io_threads = GetUnsigned<size_t>(j.at("io_threads"), "io_threads", 1, 256);
    }
    if (j.contains("window_capacity")) {
      c.window_capacity =
          GetUnsigned<size_t>(j.at("window_capacity"), "window_capacity", 2);
    }
    if (j.contains("delay_lookahead_ms")) {
      c.delay_lookahead_ms = GetUnsigned<int64_t>(j.at("delay_lookahead_ms"),
                                                  "delay_lookahead_ms", 0, 60'000);
    }
    if (j.contains("delay_release_gap_ms")) {
      c.delay_release_gap_ms = GetUnsigned<int64_t>(j.at("delay_release_gap_ms"),
                                                    "delay_release_gap_ms", 0, 1'000);
    }
    if (j.contains("delay_release_max_lead_ms")) {
      c.delay_release_max_lead_ms = GetUnsigned<int64_t>(
          j.at("delay_release_max_lead_ms"), "delay_release_max_lead_ms", 0, 30'000);
    }
    if (j.contains("max_buffered_enqueue_mb")) {
      c.max_buffered_enqueue_mb = GetUnsigned<size_t>(
          j.at("max_buffered_enqueue_mb"), "max_buffered_enqueue_mb", 1, 1 << 20);
    }
    for (const auto& s : j.value("mysql_servers", nlohmann::json::array())) {
      MysqlServerConfig m;
      m.name = s.at("name").get<std::string>();
      m.endpoint.socket = s.value("socket", "");
      m.endpoint.host = s.value("host", m.endpoint.host);
      if (s.contains("port")) {
        m.endpoint.port = GetUnsigned<int>(s.at("port"), "port", 1, 65535);
      }
      m.endpoint.user = s.value("user", m.endpoint.user);
      m.endpoint.password = s.value("password", "");
      c.mysql_servers.push_back(std::move(m));
    }
    for (const auto& s : j.value("shards", nlohmann::json::array())) {
      c.shards.push_back({ShardId(GetUnsigned<uint32_t>(s.at("id"), "shard id", 0)),
                          s.at("server").get<std::string>(),
                          s.at("database").get<std::string>()});
    }
    c.policies = ParsePolicies(j);
  } catch (const std::exception& e) {  // nlohmann::json::exception or GetUnsigned
    return Status::InvalidArgument(std::string("config: ") + e.what());
  }
  SHARDQ_RETURN_IF_ERROR(ValidateConfig(c));
  return c;
}

Result<ServerConfig> LoadConfig(const std::string& path) {
  std::ifstream in(path);
  if (!in) return Status::NotFound("cannot read config file " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ParseConfig(ss.str());
}

ServerConfig EmbeddedConfig(const std::string& socket, size_t shards) {
  ServerConfig c;
  MysqlServerConfig m;
  m.name = "embedded";
  m.endpoint.socket = socket;
  c.mysql_servers.push_back(m);
  for (size_t i = 0; i < shards; ++i) {
    c.shards.push_back(
        {ShardId(static_cast<uint32_t>(i)), "embedded", fmt::format("shardq_{}", i)});
  }
  return c;
}

Status ValidateConfig(const ServerConfig& config) {
  if (config.shards.empty()) return Status::InvalidArgument("config has no shards");
  if (config.io_threads == 0 || config.io_threads > 256) {
    return Status::InvalidArgument("io_threads must be in [1, 256]");
  }
  if (config.window_capacity < 2)
    return Status::InvalidArgument("window_capacity must be >= 2");
  if (!config.metrics_listen.empty()) {
    auto address = ParseHostPort(config.metrics_listen);
    if (!address.ok()) {
      return Status::InvalidArgument("metrics_listen: " + address.status().message());
    }
  }
  std::set<std::string> servers;
  for (const auto& s : config.mysql_servers) {
    if (!servers.insert(s.name).second) {
      return Status::InvalidArgument("mysql server '" + s.name + "' is listed twice");
    }
  }
  std::set<ShardId> ids;
  std::set<std::pair<std::string, std::string>> dbs;
  for (const auto& s : config.shards) {
    if (!ids.insert(s.id).second) {
      return Status::InvalidArgument(
          fmt::format("shard id {} is listed twice", s.id.value()));
    }
    if (!servers.contains(s.server)) {
      return Status::InvalidArgument("shard names unknown mysql server '" + s.server +
                                     "'");
    }
    bool ok = !s.database.empty() && s.database.size() <= 64;
    for (char ch : s.database)
      ok = ok && (std::isalnum(static_cast<unsigned char>(ch)) || ch == '_');
    if (!ok) return Status::InvalidArgument("bad database name '" + s.database + "'");
    if (!dbs.insert({s.server, s.database}).second) {
      return Status::InvalidArgument("database " + s.database + " is used by two shards");
    }
  }
  return Status::Ok();
}

}  // namespace shardq::frontend
