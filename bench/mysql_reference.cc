#include "bench/mysql_reference.h"

#include <cppconn/exception.h>
#include <cppconn/resultset.h>
#include <cppconn/statement.h>
#include <mysql_connection.h>
#include <mysql_driver.h>

#include <atomic>
#include <functional>
#include <iostream>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "bench/payload.h"

namespace shardq::bench {
namespace {

constexpr char kDatabase[] = "bench_ref";

std::unique_ptr<sql::Connection> Connect(const std::string& socket) {
  static sql::mysql::MySQL_Driver* const driver = sql::mysql::get_mysql_driver_instance();
  sql::ConnectOptionsMap opts;
  opts["hostName"] = sql::SQLString("unix://" + socket);
  opts["userName"] = sql::SQLString("root");
  opts["password"] = sql::SQLString("");
  std::unique_ptr<sql::Connection> conn(driver->connect(opts));
  std::unique_ptr<sql::Statement> st(conn->createStatement());
  st->execute("CREATE DATABASE IF NOT EXISTS " + std::string(kDatabase));
  st->execute("USE " + std::string(kDatabase));
  return conn;
}

void Execute(sql::Connection& conn, const std::string& sql) {
  std::unique_ptr<sql::Statement> st(conn.createStatement());
  st->execute(sql);
}

// Runs `body(thread index)` on `threads` threads, each with its own connection; returns
// the wall time in seconds.
double OnThreads(const std::string& socket, int threads,
                 const std::function<void(int, sql::Connection&)>& body) {
  std::vector<std::unique_ptr<sql::Connection>> conns;
  for (int i = 0; i < threads; ++i) conns.push_back(Connect(socket));
  std::vector<std::thread> workers;
  int64_t t0 = NowUs();
  for (int i = 0; i < threads; ++i) {
    workers.emplace_back([&, i] {
      sql::mysql::get_mysql_driver_instance()->threadInit();
      try {
        body(i, *conns[static_cast<size_t>(i)]);
      } catch (const sql::SQLException& e) {
        std::cerr << "  reference thread " << i << ": " << e.what() << "\n";
      }
      sql::mysql::get_mysql_driver_instance()->threadEnd();
    });
  }
  for (auto& w : workers) w.join();
  return static_cast<double>(NowUs() - t0) / 1e6;
}

// "(topic, priority, deliver_after, payload)" values for rows [first, first + n).
std::string Rows(int64_t first, int64_t n) {
  std::string sql;
  for (int64_t seq = first; seq < first + n; ++seq) {
    if (seq != first) sql += ',';
    int32_t priority = static_cast<int32_t>(seq % 10);
    sql += "('w1'," + std::to_string(priority) + ",0,'" +
           MakePayload({.seq = seq, .priority = priority}) + "')";
  }
  return sql;
}

bool IsRetriable(const sql::SQLException& e) {
  return e.getErrorCode() == 1213 || e.getErrorCode() == 1205;  // deadlock, lock wait
}

}  // namespace

MysqlReference::MysqlReference(std::string socket, W1 w1)
    : socket_(std::move(socket)), w1_(w1) {}

void MysqlReference::Raw(Figures* out) {
  auto admin = Connect(socket_);
  Execute(*admin, "DROP TABLE IF EXISTS raw_rows");
  Execute(*admin,
          "CREATE TABLE raw_rows (id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,"
          " topic VARBINARY(128) NOT NULL, priority INT NOT NULL,"
          " deliver_after BIGINT NOT NULL, payload BLOB NOT NULL) ENGINE=InnoDB");
  const int threads = w1_.producers * w1_.lanes;
  std::atomic<int64_t> next{0};
  double insert_s = OnThreads(socket_, threads, [&](int, sql::Connection& conn) {
    std::unique_ptr<sql::Statement> st(conn.createStatement());
    for (;;) {
      int64_t first = next.fetch_add(w1_.batch);
      if (first >= w1_.items) return;
      int64_t n = std::min<int64_t>(w1_.batch, w1_.items - first);
      st->execute(
          "INSERT INTO raw_rows (topic, priority, deliver_after, payload) VALUES " +
          Rows(first, n));
    }
  });
  (*out)["ref raw INSERT, batch (rows/s)"] = w1_.items / insert_s;

  std::vector<int64_t> ids;
  {
    std::unique_ptr<sql::Statement> st(admin->createStatement());
    std::unique_ptr<sql::ResultSet> rs(st->executeQuery("SELECT id FROM raw_rows"));
    while (rs->next()) ids.push_back(static_cast<int64_t>(rs->getUInt64(1)));
  }
  std::atomic<size_t> cursor{0};
  double delete_s = OnThreads(socket_, w1_.consumers, [&](int, sql::Connection& conn) {
    std::unique_ptr<sql::Statement> st(conn.createStatement());
    for (;;) {
      size_t first = cursor.fetch_add(static_cast<size_t>(w1_.batch));
      if (first >= ids.size()) return;
      std::string in;
      for (size_t i = first; i < std::min(ids.size(), first + w1_.batch); ++i) {
        if (!in.empty()) in += ',';
        in += std::to_string(ids[i]);
      }
      st->execute("DELETE FROM raw_rows WHERE id IN (" + in + ")");
    }
  });
  (*out)["ref raw DELETE by PK (rows/s)"] = static_cast<double>(ids.size()) / delete_s;
  Execute(*admin, "DROP TABLE raw_rows");
}

void MysqlReference::Naive(Figures* out) {
  auto admin = Connect(socket_);
  Execute(*admin, "DROP TABLE IF EXISTS naive_queue");
  Execute(
      *admin,
      "CREATE TABLE naive_queue (id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,"
      " topic VARBINARY(128) NOT NULL, priority INT NOT NULL,"
      " deliver_after BIGINT NOT NULL, lease_until BIGINT NOT NULL DEFAULT 0,"
      " payload BLOB NOT NULL,"
      " KEY ix_dequeue (topic, priority, deliver_after, id)) ENGINE=InnoDB");
  const int threads = w1_.producers * w1_.lanes;
  std::atomic<int64_t> retries{0};
  auto enqueue = [&](int batch) {
    std::atomic<int64_t> next{0};
    double s = OnThreads(socket_, threads, [&](int, sql::Connection& conn) {
      std::unique_ptr<sql::Statement> st(conn.createStatement());
      for (;;) {
        int64_t first = next.fetch_add(batch);
        if (first >= w1_.items) return;
        std::string sql =
            "INSERT INTO naive_queue (topic, priority, deliver_after, payload) "
            "VALUES " +
            Rows(first, std::min<int64_t>(batch, w1_.items - first));
        for (int attempt = 0;; ++attempt) {
          try {
            st->execute(sql);
            break;
          } catch (const sql::SQLException& e) {
            if (!IsRetriable(e) || attempt == 20) throw;
            ++retries;
          }
        }
      }
    });
    return w1_.items / s;
  };
  std::atomic<int64_t> drained{0};
  auto drain = [&] {
    drained = 0;
    return OnThreads(socket_, w1_.consumers, [&](int, sql::Connection& conn) {
      conn.setAutoCommit(false);
      std::unique_ptr<sql::Statement> st(conn.createStatement());
      int empty = 0;
      while (empty < 3) {
        std::string ids;
        int64_t n = 0;
        try {
          int64_t now = NowUs() / 1000;
          std::unique_ptr<sql::ResultSet> rs(st->executeQuery(
              "SELECT id, payload FROM naive_queue WHERE topic = 'w1' AND deliver_after "
              "<= " +
              std::to_string(now) + " AND lease_until <= " + std::to_string(now) +
              " ORDER BY priority, id LIMIT " + std::to_string(w1_.fetch) +
              " FOR UPDATE SKIP LOCKED"));
          while (rs->next()) {
            if (!ids.empty()) ids += ',';
            ids += std::to_string(rs->getUInt64(1));
            ++n;
          }
          if (n == 0) {
            conn.commit();
            ++empty;
            continue;
          }
          empty = 0;
          st->execute("UPDATE naive_queue SET lease_until = " +
                      std::to_string(now + 30'000) + " WHERE id IN (" + ids + ")");
          conn.commit();
          st->execute("DELETE FROM naive_queue WHERE id IN (" + ids + ")");  // the ack
          conn.commit();
          drained += n;
        } catch (const sql::SQLException& e) {
          if (!IsRetriable(e)) throw;
          ++retries;
          conn.rollback();
        }
      }
    });
  };
  (*out)["ref naive enqueue, single (items/s)"] = enqueue(1);
  Execute(*admin, "TRUNCATE TABLE naive_queue");
  (*out)["ref naive enqueue, batch (items/s)"] = enqueue(w1_.batch);
  double s = drain();
  (*out)["ref naive drain, batch ack (items/s)"] =
      static_cast<double>(drained.load()) / s;
  (*out)["ref naive retries"] = static_cast<double>(retries.load());
  Execute(*admin, "DROP TABLE naive_queue");
}

void DropDatabases(const std::string& socket) {
  auto conn = Connect(socket);
  std::vector<std::string> names;
  {
    std::unique_ptr<sql::Statement> st(conn->createStatement());
    std::unique_ptr<sql::ResultSet> rs(st->executeQuery(
        "SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE "
        "'shardq\\_%' OR schema_name = 'bench_ref'"));
    while (rs->next()) names.push_back(rs->getString(1));
  }
  for (const std::string& name : names) Execute(*conn, "DROP DATABASE `" + name + "`");
}

}  // namespace shardq::bench
