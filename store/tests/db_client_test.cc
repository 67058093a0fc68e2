// DbConnection / DbStatement / DbRows against a real MariaDB: bytes and integers go in
// and come out unchanged, errors carry the server's and the client's codes, and rows
// and parameters live as long as documented.

#include "store/db_client.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <memory>
#include <string>

#include "tests/support/mariadb_instance.h"

namespace shardq::store {
namespace {

class DbClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    conn_ = std::make_unique<DbConnection>(testing::SharedMariaDb().endpoint());
    conn_->Execute("SET NAMES binary");
    conn_->Execute("CREATE DATABASE IF NOT EXISTS db_client_test");
    conn_->Execute("USE db_client_test");
    conn_->Execute("DROP TABLE IF EXISTS t");
    conn_->Execute(
        "CREATE TABLE t (id BIGINT UNSIGNED PRIMARY KEY, i BIGINT, n INT, "
        "b BLOB, v VARBINARY(16), UNIQUE KEY (v)) ENGINE=InnoDB");
  }

  // Inserts one row with the given values (`b` NULL when null_blob).
  void Insert(uint64_t id, int64_t i, int32_t n, const std::string& b,
              const std::string& v, bool null_blob = false) {
    auto st = conn_->Prepare("INSERT INTO t (id, i, n, b, v) VALUES (?, ?, ?, ?, ?)");
    st->SetUInt64(1, id);
    st->SetInt64(2, i);
    st->SetInt(3, n);
    if (null_blob) {
      st->SetNull(4);
    } else {
      st->SetString(4, b);
    }
    st->SetString(5, v);
    EXPECT_EQ(st->ExecuteUpdate(), 1u);
  }

  std::unique_ptr<DbConnection> conn_;
};

TEST_F(DbClientTest, BytesAndIntegersRoundTripUnchanged) {
  std::string bytes(10 * 1024, '\0');
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<char>(i * 31 % 256);
  const uint64_t max_id = std::numeric_limits<uint64_t>::max();
  const int64_t min_i = std::numeric_limits<int64_t>::min();
  Insert(max_id, min_i, -7, bytes, std::string("\0\xff", 2));
  Insert(1, 42, 0, "", "x", /*null_blob=*/true);

  auto st = conn_->Prepare("SELECT id, i, n, b, v FROM t ORDER BY id");
  DbRows& rows = st->ExecuteQuery();
  ASSERT_TRUE(rows.Next());
  EXPECT_EQ(rows.GetUInt64(1), 1u);
  EXPECT_EQ(rows.GetString(4), "");
  EXPECT_TRUE(rows.WasNull());
  EXPECT_EQ(rows.GetInt64(2), 42);
  EXPECT_FALSE(rows.WasNull());
  ASSERT_TRUE(rows.Next());
  EXPECT_EQ(rows.GetUInt64(1), max_id);
  EXPECT_EQ(rows.GetString(1), std::to_string(max_id));
  EXPECT_EQ(rows.GetInt64(2), min_i);
  EXPECT_EQ(rows.GetInt(3), -7);
  EXPECT_EQ(rows.GetString(4), bytes);  // NULs and high bytes included
  EXPECT_EQ(rows.GetString(5), std::string("\0\xff", 2));
  EXPECT_FALSE(rows.Next());
}

TEST_F(DbClientTest, AggregatesAndRowsChangedAreReported) {
  Insert(1, 40, 1, "a", "a");
  Insert(2, 2, 1, "b", "b");
  // SUM of a BIGINT is a DECIMAL, which arrives as text.
  auto sum = conn_->Prepare("SELECT SUM(i), COUNT(*) FROM t");
  DbRows& rows = sum->ExecuteQuery();
  ASSERT_TRUE(rows.Next());
  EXPECT_EQ(rows.GetInt64(1), 42);
  EXPECT_EQ(rows.GetUInt64(2), 2u);

  auto upd = conn_->Prepare("UPDATE t SET n = n + 1 WHERE i < ?");
  upd->SetInt64(1, 100);
  EXPECT_EQ(upd->ExecuteUpdate(), 2u);
  auto ret = conn_->Prepare("DELETE FROM t WHERE id = ? RETURNING id, n");
  ret->SetUInt64(1, 2);
  DbRows& gone = ret->ExecuteQuery();
  ASSERT_TRUE(gone.Next());
  EXPECT_EQ(gone.GetUInt64(1), 2u);
  EXPECT_EQ(gone.GetInt(2), 2);
  EXPECT_FALSE(gone.Next());
}

TEST_F(DbClientTest, RowsSurviveAnotherStatementAndParametersMayBeTemporaries) {
  Insert(1, 1, 1, "one", "1");
  Insert(2, 2, 2, "two", "2");
  auto sel = conn_->Prepare("SELECT id, b FROM t ORDER BY id");
  auto upd = conn_->Prepare("UPDATE t SET b = ? WHERE id = ?");
  DbRows& rows = sel->ExecuteQuery();
  std::string seen;
  while (rows.Next()) {
    // Another statement runs while the rows are read: they are buffered.
    upd->SetString(1, std::string("new ") + std::to_string(rows.GetUInt64(1)));
    upd->SetUInt64(2, rows.GetUInt64(1));
    upd->ExecuteUpdate();
    seen += rows.GetString(2) + ",";
  }
  EXPECT_EQ(seen, "one,two,");
  DbRows& again = sel->ExecuteQuery();
  ASSERT_TRUE(again.Next());
  EXPECT_EQ(again.GetString(2), "new 1");  // the temporary's bytes were copied
}

TEST_F(DbClientTest, ReleaseDropsParametersAndAnUnsetOneIsRefused) {
  auto st = conn_->Prepare("SELECT ? + ?");
  st->SetInt(1, 1);
  try {
    st->ExecuteQuery();
    FAIL() << "ran with parameter 2 unset";
  } catch (const DbError& e) {
    EXPECT_EQ(e.code(), 0);
    EXPECT_NE(std::string(e.what()).find("parameter 2"), std::string::npos);
  }
  st->SetInt(2, 2);
  DbRows& rows = st->ExecuteQuery();
  ASSERT_TRUE(rows.Next());
  EXPECT_EQ(rows.GetInt64(1), 3);
  st->Release();
  EXPECT_FALSE(rows.Next());                  // released rows are gone
  EXPECT_THROW(st->ExecuteQuery(), DbError);  // and so are the parameters
}

TEST_F(DbClientTest, ErrorsCarryTheServersCodes) {
  Insert(1, 1, 1, "a", "same");
  try {
    Insert(2, 1, 1, "a", "same");
    FAIL() << "duplicate key accepted";
  } catch (const DbError& e) {
    EXPECT_EQ(e.code(), 1062);
    EXPECT_EQ(e.sqlstate(), "23000");
  }
  try {
    conn_->Prepare("SELEKT 1");
    FAIL() << "bad SQL prepared";
  } catch (const DbError& e) {
    EXPECT_EQ(e.code(), 1064);
  }
  try {
    conn_->Execute("SELECT * FROM no_such_table");
    FAIL() << "query of a missing table ran";
  } catch (const DbError& e) {
    EXPECT_EQ(e.code(), 1146);
  }
  EXPECT_TRUE(conn_->Ping());  // statement errors leave the connection usable
}

TEST_F(DbClientTest, AKilledConnectionFailsWithAClientCodeAndDoesNotComeBack) {
  auto id = conn_->Prepare("SELECT CONNECTION_ID()");
  DbRows& rows = id->ExecuteQuery();
  ASSERT_TRUE(rows.Next());
  const uint64_t mine = rows.GetUInt64(1);
  DbConnection other(testing::SharedMariaDb().endpoint());
  other.Execute("KILL CONNECTION " + std::to_string(mine));
  EXPECT_FALSE(conn_->Ping());  // and no silent reconnect
  try {
    conn_->Execute("SELECT 1");
    FAIL() << "a killed connection ran a query";
  } catch (const DbError& e) {
    EXPECT_TRUE(e.code() == 2006 || e.code() == 2013 || e.code() == 1927 ||
                e.code() == 4031)
        << e.code() << " " << e.what();
  }
}

TEST(DbConnectionTest, ConnectingToNothingFailsWithAClientCode) {
  DbEndpoint ep;
  ep.socket = "/nonexistent/shardq.sock";
  try {
    DbConnection conn(ep);
    FAIL() << "connected to nothing";
  } catch (const DbError& e) {
    EXPECT_EQ(e.code(), 2002);  // CR_CONNECTION_ERROR
  }
}

}  // namespace
}  // namespace shardq::store
