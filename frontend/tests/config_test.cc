// Unit tests of frontend/config: JSON parsing, validation, the embedded default and
// loading from a file.

#include "frontend/config.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "common/ids.h"
#include "common/status.h"

namespace shardq::frontend {
namespace {

constexpr char kFullConfig[] = R"({
  "listen": "0.0.0.0:6000",
  "io_threads": 4,
  "window_capacity": 1024,
  "delay_lookahead_ms": 250,
  "delay_release_gap_ms": 7,
  "delay_release_max_lead_ms": 12,
  "max_buffered_enqueue_mb": 64,
  "mysql_servers": [
    {"name": "local", "socket": "/run/mysqld/mysqld.sock"},
    {"name": "remote", "host": "10.0.0.2", "port": 3307, "user": "shardq",
     "password": "s3cret"}
  ],
  "shards": [
    {"id": 0, "server": "local", "database": "shardq_0"},
    {"id": 1, "server": "remote", "database": "shardq_1"},
    {"id": 2, "server": "local", "database": "shardq_2"},
    {"id": 7, "server": "remote", "database": "shardq_7"}
  ]
})";

// A minimal valid config with the given shards array (JSON text).
std::string WithShards(const std::string& shards) {
  return R"({"mysql_servers": [{"name": "a", "socket": "/a.sock"},
                               {"name": "b", "host": "h"}],
             "shards": )" +
         shards + "}";
}

std::string WithDatabase(const std::string& db) {
  return WithShards(R"([{"id": 0, "server": "a", "database": ")" + db + R"("}])");
}

Code ParseCode(const std::string& text) { return ParseConfig(text).status().code(); }

TEST(ParseConfigTest, FullExample) {
  auto r = ParseConfig(kFullConfig);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  const ServerConfig& c = *r;
  EXPECT_EQ(c.listen, "0.0.0.0:6000");
  EXPECT_EQ(c.io_threads, 4u);
  EXPECT_EQ(c.window_capacity, 1024u);
  EXPECT_EQ(c.delay_lookahead_ms, 250);
  EXPECT_EQ(c.delay_release_gap_ms, 7);
  EXPECT_EQ(c.delay_release_max_lead_ms, 12);
  EXPECT_EQ(c.max_buffered_enqueue_mb, 64u);

  ASSERT_EQ(c.mysql_servers.size(), 2u);
  EXPECT_EQ(c.mysql_servers[0].name, "local");
  EXPECT_EQ(c.mysql_servers[0].endpoint.socket, "/run/mysqld/mysqld.sock");
  EXPECT_EQ(c.mysql_servers[0].endpoint.password, "");
  EXPECT_EQ(c.mysql_servers[1].name, "remote");
  EXPECT_EQ(c.mysql_servers[1].endpoint.socket, "");
  EXPECT_EQ(c.mysql_servers[1].endpoint.host, "10.0.0.2");
  EXPECT_EQ(c.mysql_servers[1].endpoint.port, 3307);
  EXPECT_EQ(c.mysql_servers[1].endpoint.user, "shardq");
  EXPECT_EQ(c.mysql_servers[1].endpoint.password, "s3cret");

  ASSERT_EQ(c.shards.size(), 4u);
  EXPECT_EQ(c.shards[0].id, ShardId(0));
  EXPECT_EQ(c.shards[0].server, "local");
  EXPECT_EQ(c.shards[0].database, "shardq_0");
  EXPECT_EQ(c.shards[1].id, ShardId(1));
  EXPECT_EQ(c.shards[1].server, "remote");
  EXPECT_EQ(c.shards[1].database, "shardq_1");
  EXPECT_EQ(c.shards[2].id, ShardId(2));
  EXPECT_EQ(c.shards[2].server, "local");
  EXPECT_EQ(c.shards[3].id, ShardId(7));
  EXPECT_EQ(c.shards[3].server, "remote");
  EXPECT_EQ(c.shards[3].database, "shardq_7");

  EXPECT_TRUE(ValidateConfig(c).ok());
}

TEST(ParseConfigTest, Defaults) {
  auto r = ParseConfig(R"({"mysql_servers": [{"name": "a", "host": "db"}],
                           "shards": [{"id": 3, "server": "a", "database": "q"}]})");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->listen, "127.0.0.1:50051");
  EXPECT_EQ(r->io_threads, 8u);
  EXPECT_EQ(r->window_capacity, 512u);
  EXPECT_EQ(r->delay_lookahead_ms, 100);
  EXPECT_EQ(r->delay_release_gap_ms, 5);
  EXPECT_EQ(r->delay_release_max_lead_ms, 10);
  EXPECT_EQ(r->max_buffered_enqueue_mb, 256u);
  ASSERT_EQ(r->mysql_servers.size(), 1u);
  const store::MysqlEndpoint& e = r->mysql_servers[0].endpoint;
  EXPECT_EQ(e.socket, "");
  EXPECT_EQ(e.host, "db");
  EXPECT_EQ(e.port, 3306);
  EXPECT_EQ(e.user, "root");
  EXPECT_EQ(e.password, "");
}

TEST(ParseConfigTest, NotJson) {
  for (const char* text : {"", "not json", "{", R"({"shards": [})", "{'a': 1}"}) {
    EXPECT_EQ(ParseCode(text), Code::kInvalidArgument) << text;
  }
}

TEST(ParseConfigTest, NotAnObject) {
  for (const char* text : {"[]", "[1, 2]", "42", R"("config")", "null", "true"}) {
    EXPECT_EQ(ParseCode(text), Code::kInvalidArgument) << text;
  }
}

TEST(ParseConfigTest, WrongFieldTypes) {
  EXPECT_EQ(ParseCode(R"({"io_threads": "8", "mysql_servers": [{"name": "a"}],
                          "shards": [{"id": 0, "server": "a", "database": "d"}]})"),
            Code::kInvalidArgument);
  EXPECT_EQ(ParseCode(R"({"listen": 50051, "mysql_servers": [{"name": "a"}],
                          "shards": [{"id": 0, "server": "a", "database": "d"}]})"),
            Code::kInvalidArgument);
  EXPECT_EQ(ParseCode(WithShards(R"([{"id": "0", "server": "a", "database": "d"}])")),
            Code::kInvalidArgument);
  EXPECT_EQ(ParseCode(WithShards(R"([{"id": 0, "server": 1, "database": "d"}])")),
            Code::kInvalidArgument);
  EXPECT_EQ(ParseCode(WithShards(R"([5])")), Code::kInvalidArgument);
}

TEST(ParseConfigTest, MissingShardFields) {
  EXPECT_EQ(ParseCode(WithShards(R"([{"server": "a", "database": "d"}])")),
            Code::kInvalidArgument);
  EXPECT_EQ(ParseCode(WithShards(R"([{"id": 0, "database": "d"}])")),
            Code::kInvalidArgument);
  EXPECT_EQ(ParseCode(WithShards(R"([{"id": 0, "server": "a"}])")),
            Code::kInvalidArgument);
  EXPECT_EQ(ParseCode(WithShards(R"([{}])")), Code::kInvalidArgument);
}

TEST(ParseConfigTest, MissingServerName) {
  EXPECT_EQ(ParseCode(R"({"mysql_servers": [{"socket": "/a.sock"}],
                          "shards": [{"id": 0, "server": "a", "database": "d"}]})"),
            Code::kInvalidArgument);
}

TEST(ParseConfigTest, DuplicateShardId) {
  auto r = ParseConfig(WithShards(R"([{"id": 1, "server": "a", "database": "d1"},
                                      {"id": 1, "server": "b", "database": "d2"}])"));
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
  EXPECT_NE(r.status().message().find("twice"), std::string::npos)
      << r.status().message();
}

TEST(ParseConfigTest, UnknownServerName) {
  auto r = ParseConfig(WithShards(R"([{"id": 0, "server": "c", "database": "d"}])"));
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
  EXPECT_NE(r.status().message().find("'c'"), std::string::npos) << r.status().message();
}

TEST(ParseConfigTest, DuplicateServerName) {
  EXPECT_EQ(ParseCode(R"({"mysql_servers": [{"name": "a", "socket": "/a.sock"},
                                            {"name": "a", "host": "h"}],
                          "shards": [{"id": 0, "server": "a", "database": "d"}]})"),
            Code::kInvalidArgument);
}

TEST(ParseConfigTest, DatabaseNames) {
  EXPECT_TRUE(ParseConfig(WithDatabase("shardq_0")).ok());
  EXPECT_TRUE(ParseConfig(WithDatabase("Q")).ok());
  EXPECT_TRUE(ParseConfig(WithDatabase(std::string(64, 'd'))).ok());
  for (std::string db :
       {std::string("shard-0"), std::string("s;drop database x"), std::string(""),
        std::string(65, 'd'), std::string("a b"), std::string("a.b"), std::string("a`b"),
        std::string("caf\xc3\xa9")}) {
    EXPECT_EQ(ParseCode(WithDatabase(db)), Code::kInvalidArgument) << db;
  }
}

TEST(ParseConfigTest, SameDatabaseTwiceOnOneServer) {
  EXPECT_EQ(ParseCode(WithShards(R"([{"id": 0, "server": "a", "database": "d"},
                                     {"id": 1, "server": "a", "database": "d"}])")),
            Code::kInvalidArgument);
  // The same name on two different servers is two databases.
  EXPECT_TRUE(ParseConfig(WithShards(R"([{"id": 0, "server": "a", "database": "d"},
                                         {"id": 1, "server": "b", "database": "d"}])"))
                  .ok());
}

TEST(ParseConfigTest, NoShards) {
  EXPECT_EQ(ParseCode(WithShards("[]")), Code::kInvalidArgument);
  EXPECT_EQ(ParseCode(R"({"mysql_servers": [{"name": "a", "socket": "/a.sock"}]})"),
            Code::kInvalidArgument);
  EXPECT_EQ(ParseCode("{}"), Code::kInvalidArgument);
}

TEST(ParseConfigTest, IoThreadsAndWindowCapacityRanges) {
  auto with = [](const std::string& field) {
    return R"({)" + field + R"(, "mysql_servers": [{"name": "a", "socket": "/s"}],
              "shards": [{"id": 0, "server": "a", "database": "d"}]})";
  };
  EXPECT_EQ(ParseCode(with(R"("io_threads": 0)")), Code::kInvalidArgument);
  EXPECT_EQ(ParseCode(with(R"("io_threads": 257)")), Code::kInvalidArgument);
  EXPECT_EQ(ParseCode(with(R"("io_threads": -1)")), Code::kInvalidArgument);
  EXPECT_TRUE(ParseConfig(with(R"("io_threads": 1)")).ok());
  EXPECT_TRUE(ParseConfig(with(R"("io_threads": 256)")).ok());
  EXPECT_EQ(ParseCode(with(R"("window_capacity": 1)")), Code::kInvalidArgument);
  EXPECT_EQ(ParseCode(with(R"("window_capacity": 0)")), Code::kInvalidArgument);
  EXPECT_TRUE(ParseConfig(with(R"("window_capacity": 2)")).ok());
  EXPECT_EQ(ParseCode(with(R"("delay_lookahead_ms": -1)")), Code::kInvalidArgument);
  EXPECT_EQ(ParseCode(with(R"("delay_lookahead_ms": 60001)")), Code::kInvalidArgument);
  EXPECT_TRUE(ParseConfig(with(R"("delay_lookahead_ms": 0)")).ok());
  EXPECT_EQ(ParseCode(with(R"("delay_release_gap_ms": -1)")), Code::kInvalidArgument);
  EXPECT_EQ(ParseCode(with(R"("delay_release_gap_ms": 1001)")), Code::kInvalidArgument);
  EXPECT_TRUE(ParseConfig(with(R"("delay_release_gap_ms": 0)")).ok());
  EXPECT_EQ(ParseCode(with(R"("delay_release_max_lead_ms": -1)")),
            Code::kInvalidArgument);
  EXPECT_EQ(ParseCode(with(R"("delay_release_max_lead_ms": 30001)")),
            Code::kInvalidArgument);
  EXPECT_TRUE(ParseConfig(with(R"("delay_release_max_lead_ms": 0)")).ok());
}

// nlohmann's get<uint32_t>() / get<size_t>() / get<int>() silently wrap negatives,
// truncate out-of-range values and floats and accept booleans, so e.g. "id":
// 4294967296 would become shard 0 and "id": -1 shard 4294967295. Shard ids are
// permanent (item ids carry them), so config.cc checks each number and such a config
// is refused.
TEST(ParseConfigTest, RejectsNonIntegerOrOutOfRangeNumbers) {
  for (const char* id : {"-1", "4294967296", "1.7", "true"}) {
    EXPECT_EQ(ParseCode(WithShards(std::string(R"([{"id": )") + id +
                                   R"(, "server": "a", "database": "d"}])")),
              Code::kInvalidArgument)
        << "id " << id;
  }
  auto with = [](const std::string& field) {
    return R"({)" + field + R"(, "mysql_servers": [{"name": "a", "socket": "/s"}],
              "shards": [{"id": 0, "server": "a", "database": "d"}]})";
  };
  EXPECT_EQ(ParseCode(with(R"("window_capacity": -1)")), Code::kInvalidArgument);
  EXPECT_EQ(ParseCode(with(R"("io_threads": 2.9)")), Code::kInvalidArgument);
  EXPECT_EQ(ParseCode(R"({"mysql_servers": [{"name": "a", "host": "h", "port": -5}],
                          "shards": [{"id": 0, "server": "a", "database": "d"}]})"),
            Code::kInvalidArgument);
}

// A one-shard config with `policies` ("namespace_defaults": ..., "namespaces": ...).
std::string WithPolicies(const std::string& policies) {
  return R"({"mysql_servers": [{"name": "a", "socket": "/s"}],
            "shards": [{"id": 0, "server": "a", "database": "d"}], )" +
         policies + "}";
}

TEST(ParseConfigTest, NamespaceRetentionMayBeZeroButNotNegative) {
  const auto with = WithPolicies;
  auto r = ParseConfig(with(R"("namespace_defaults": {"retention_ms": 0},
                               "namespaces": {"keep": {"retention_ms": 60000}})"));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->policies.For("other").retention, Duration(0));  // an ack deletes
  EXPECT_EQ(r->policies.For("keep").retention, Duration(60'000));
  EXPECT_EQ(ParseCode(with(R"("namespace_defaults": {"retention_ms": -1})")),
            Code::kInvalidArgument);
  EXPECT_EQ(ParseCode(with(R"("namespaces": 5)")), Code::kInvalidArgument);
  EXPECT_EQ(ParseCode(with(R"("namespaces": {"x": 5})")), Code::kInvalidArgument);
  EXPECT_EQ(ParseCode(with(R"("namespace_defaults": [])")), Code::kInvalidArgument);
}

TEST(ParseConfigTest, NamespaceEnqueueQuotas) {
  const auto with = WithPolicies;
  auto r = ParseConfig(with(R"("namespace_defaults": {"enqueue_rate": 100},
                               "namespaces": {"bulk": {"enqueue_rate": 5000,
                                                       "enqueue_burst": 20000},
                                              "free": {"enqueue_rate": 0}})"));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->policies.For("other").enqueue_rate, 100u);
  EXPECT_EQ(r->policies.For("other").burst(), 100u);  // a second's worth
  EXPECT_EQ(r->policies.For("bulk").enqueue_rate, 5000u);
  EXPECT_EQ(r->policies.For("bulk").burst(), 20000u);
  EXPECT_EQ(r->policies.For("free").enqueue_rate, 0u);  // no quota
  auto none = ParseConfig(with(R"("namespaces": {})"));
  ASSERT_TRUE(none.ok()) << none.status().ToString();
  EXPECT_EQ(none->policies.For("x").enqueue_rate, 0u) << "no quota by default";
  // A namespace's own rate comes with a second's worth of burst, not the default's.
  auto own = ParseConfig(with(R"("namespace_defaults": {"enqueue_rate": 10,
                                                        "enqueue_burst": 50},
                                 "namespaces": {"fast": {"enqueue_rate": 1000},
                                                "same": {"max_attempts": 3}})"));
  ASSERT_TRUE(own.ok()) << own.status().ToString();
  EXPECT_EQ(own->policies.For("fast").burst(), 1000u);
  EXPECT_EQ(own->policies.For("same").burst(), 50u);
  // An error names the namespace it is in.
  auto named = ParseConfig(with(R"("namespaces": {"bulk": {"enqueue_burst": 10}})"));
  ASSERT_FALSE(named.ok());
  EXPECT_NE(named.status().message().find("namespaces.bulk: enqueue_burst 10 needs an "
                                          "enqueue_rate"),
            std::string::npos)
      << named.status().message();
  for (const char* bad :
       {R"({"enqueue_burst": 10})", R"({"enqueue_rate": -1})", R"({"enqueue_rate": 1.5})",
        R"({"enqueue_rate": 1000000001})", R"({"enqueue_burst": "10"})"}) {
    EXPECT_EQ(ParseCode(with(std::string(R"("namespace_defaults": )") + bad)),
              Code::kInvalidArgument)
        << bad;
  }
}

TEST(LoadConfigTest, TheDocumentedExampleIsAValidConfig) {
  auto r = LoadConfig(SHARDQ_SOURCE_DIR "/docs/config.example.json");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->shards.size(), 4u);
  EXPECT_EQ(r->policies.For("billing").max_attempts, 20u);
  EXPECT_EQ(r->metrics_listen, "127.0.0.1:9464");
  EXPECT_EQ(r->policies.For("crawler").enqueue_rate, 2000u);
  EXPECT_EQ(r->policies.For("crawler").burst(), 10000u);
  EXPECT_EQ(r->policies.For("other").enqueue_rate, 0u);
}

TEST(EmbeddedConfigTest, FourShardsOnOneSocket) {
  ServerConfig c = EmbeddedConfig("/tmp/mariadb.sock", 4);
  ASSERT_EQ(c.mysql_servers.size(), 1u);
  EXPECT_EQ(c.mysql_servers[0].endpoint.socket, "/tmp/mariadb.sock");
  ASSERT_EQ(c.shards.size(), 4u);
  for (uint32_t i = 0; i < 4; ++i) {
    EXPECT_EQ(c.shards[i].id, ShardId(i));
    EXPECT_EQ(c.shards[i].server, c.mysql_servers[0].name);
    EXPECT_EQ(c.shards[i].database, "shardq_" + std::to_string(i));
  }
  EXPECT_EQ(c.listen, "127.0.0.1:50051");
  Status st = ValidateConfig(c);
  EXPECT_TRUE(st.ok()) << st.ToString();
}

TEST(EmbeddedConfigTest, ZeroShardsDoesNotValidate) {
  EXPECT_EQ(ValidateConfig(EmbeddedConfig("/s", 0)).code(), Code::kInvalidArgument);
}

TEST(LoadConfigTest, MissingFileIsNotFound) {
  auto r = LoadConfig("/nonexistent/dir/shardq-config-does-not-exist.json");
  EXPECT_EQ(r.status().code(), Code::kNotFound);
}

class TempFile {
 public:
  explicit TempFile(const std::string& contents)
      : path_(std::filesystem::temp_directory_path() /
              ("shardq_config_test_" + std::to_string(::getpid()) + "_" +
               ::testing::UnitTest::GetInstance()->current_test_info()->name() +
               ".json")) {
    std::ofstream out(path_);
    out << contents;
  }
  ~TempFile() {
    std::error_code ec;
    std::filesystem::remove(path_, ec);
  }
  std::string path() const { return path_.string(); }

 private:
  std::filesystem::path path_;
};

TEST(LoadConfigTest, ReadsAFile) {
  TempFile file(kFullConfig);
  auto r = LoadConfig(file.path());
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->listen, "0.0.0.0:6000");
  EXPECT_EQ(r->shards.size(), 4u);
  EXPECT_EQ(r->mysql_servers.size(), 2u);
}

TEST(LoadConfigTest, BadFileContentIsInvalidArgument) {
  TempFile file("{ not json");
  EXPECT_EQ(LoadConfig(file.path()).status().code(), Code::kInvalidArgument);
}

}  // namespace
}  // namespace shardq::frontend
