// Crash-only: kill -9 the server, or MariaDB, in the middle of a load. Every
// acknowledged enqueue must survive and be delivered; every acknowledged ack must
// stay acked and every acknowledged nack stay a retry; items leased before the crash
// come back only after their lease.
//
// The server runs as a child process with the real clock (it is killed, so it cannot
// share our fake clock); waiting for leases uses the product's long poll.

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <iostream>
#include <iterator>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "store/mysql_store.h"
#include "tests/e2e_support.h"
#include "tests/support/mariadb_instance.h"
#include "tests/support/server_process.h"

namespace shardq::testing {
namespace {

Result<ServerProcess> StartShardqd(const std::string& socket, int shards) {
  return ServerProcess::Start(
      {.binary = SHARDQD_PATH, .socket = socket, .shards = shards});
}

constexpr char kNs[] = "crash";
constexpr char kTopic[] = "load";

// A client's pause before it retries a failed call while the server is down or
// starting, so that its retries do not take the cores the restart needs. (A retry
// backoff, not a wait for time to pass.)
void RetryBackoff() { std::this_thread::sleep_for(std::chrono::milliseconds(5)); }

// Producers that enqueue until stopped, remembering what was acknowledged. Items get
// the server's default lease, or `lease_ms`.
class Producers {
 public:
  Producers(int port, int threads, int64_t lease_ms = 0) : port_(port) {
    for (int t = 0; t < threads; ++t) {
      threads_.emplace_back([this, t, lease_ms] {
        std::unique_ptr<QueueClient> client;
        int connected_to = 0;
        for (int i = 0; !stop_; ++i) {
          if (const int port = port_.load(); port != connected_to) {
            client = std::make_unique<QueueClient>(port);
            connected_to = port;
          }
          auto id = client->EnqueueOne(
              kNs, kTopic, {.priority = (t * 7 + i) % 10, .lease_ms = lease_ms});
          if (id.ok()) {
            std::lock_guard lock(mu_);
            acked_.insert(*id);
          } else {
            failures_.fetch_add(1);
            RetryBackoff();
          }
        }
      });
    }
  }
  ~Producers() { Stop(); }
  // The server was restarted on another port.
  void UsePort(int port) { port_ = port; }
  void Stop() {
    stop_ = true;
    for (auto& t : threads_) {
      if (t.joinable()) t.join();
    }
  }
  size_t acked() {
    std::lock_guard lock(mu_);
    return acked_.size();
  }
  std::set<std::string> acked_ids() {
    std::lock_guard lock(mu_);
    return acked_;
  }
  int failures() const { return failures_.load(); }

 private:
  std::atomic<int> port_;
  std::atomic<bool> stop_{false};
  std::atomic<int> failures_{0};
  std::mutex mu_;
  std::set<std::string> acked_;
  std::vector<std::thread> threads_;
};

void WaitForAcked(Producers& p, size_t n) {
  // Waits on the producers' progress (bounded), not on time.
  auto until = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (p.acked() < n && std::chrono::steady_clock::now() < until)
    std::this_thread::yield();
  ASSERT_GE(p.acked(), n) << "the load did not make progress";
}

// Dequeues (and acks) until `want` are all seen or a long poll comes back empty.
std::map<std::string, v1::DequeuedItem> DrainUntil(QueueClient& client,
                                                   const std::set<std::string>& want,
                                                   int64_t wait_ms) {
  std::map<std::string, v1::DequeuedItem> seen;
  auto missing = [&] {
    for (const auto& id : want) {
      if (!seen.contains(id)) return true;
    }
    return false;
  };
  while (missing()) {
    auto got = client.Dequeue(kNs, kTopic, 500, wait_ms);
    if (got.empty()) break;
    for (auto& item : got) {
      EXPECT_EQ(client.Ack(item.id(), item.lease_token()), grpc::StatusCode::OK);
      EXPECT_FALSE(seen.contains(item.id())) << "delivered twice: " << item.id();
      seen[item.id()] = item;
    }
  }
  return seen;
}

TEST(CrashTest, KillDashNineOfTheServerLosesNothingAcknowledged) {
  auto db = MariaDbInstance::Start();
  ASSERT_TRUE(db.ok()) << db.status().ToString();
  auto server = StartShardqd((*db)->socket(), 4);
  ASSERT_TRUE(server.ok()) << server.status().ToString();

  std::set<std::string> acked_acks;
  std::map<std::string, v1::DequeuedItem> leased_before;
  {
    Producers producers(server->port(), 4);
    WaitForAcked(producers, 1500);
    QueueClient client(server->port());
    // Acks that were acknowledged must stay done; leases must outlive the crash.
    for (const auto& item : client.Dequeue(kNs, kTopic, 50)) {
      if (client.Ack(item.id(), item.lease_token()) == grpc::StatusCode::OK) {
        acked_acks.insert(item.id());
      }
    }
    for (const auto& item : client.Dequeue(kNs, kTopic, 20))
      leased_before[item.id()] = item;
    WaitForAcked(producers, producers.acked() + 500);
    server->Kill();  // mid-load: producers have calls in flight
    producers.Stop();

    std::set<std::string> must_come_back = producers.acked_ids();
    for (const auto& id : acked_acks) must_come_back.erase(id);
    ASSERT_EQ(acked_acks.size(), 50u);
    ASSERT_EQ(leased_before.size(), 20u);

    auto restarted = StartShardqd((*db)->socket(), 4);
    ASSERT_TRUE(restarted.ok()) << restarted.status().ToString();
    QueueClient after(restarted->port());
    // Default lease is 30 s; the leased-before items were leased for that long, so
    // drain the rest first, then wait for those leases with a long poll.
    auto seen = DrainUntil(after, must_come_back, 0);
    for (const auto& [id, item] : leased_before) {
      EXPECT_FALSE(seen.contains(id)) << id << " came back while its lease was valid";
    }
    for (const auto& id : acked_acks)
      EXPECT_FALSE(seen.contains(id)) << "acked item returned";
    size_t missing = 0;
    for (const auto& id : must_come_back) {
      if (!seen.contains(id) && !leased_before.contains(id)) ++missing;
    }
    EXPECT_EQ(missing, 0u) << "acknowledged enqueues lost in the crash";
    std::cout << "acknowledged before the crash: " << must_come_back.size()
              << ", failed calls: " << producers.failures() << "\n";
  }
}

TEST(CrashTest, LeasesTakenBeforeTheCrashExpireAndRedeliverAfterIt) {
  auto db = MariaDbInstance::Start();
  ASSERT_TRUE(db.ok()) << db.status().ToString();
  auto server = StartShardqd((*db)->socket(), 2);
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  QueueClient client(server->port());
  std::set<std::string> ids;
  for (int i = 0; i < 10; ++i) {
    Result<std::string> id = Status::Unavailable("not yet");
    // The server may still be opening its shards; retry (bounded) until it takes it.
    auto until = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (!(id = client.EnqueueOne(kNs, kTopic, {.lease_ms = 1500})).ok() &&
           std::chrono::steady_clock::now() < until) {
      std::this_thread::yield();
    }
    ASSERT_TRUE(id.ok()) << id.status().ToString();
    ids.insert(*id);
  }
  std::map<std::string, v1::DequeuedItem> leased;
  for (int round = 0; round < 60 && leased.size() < 10; ++round) {
    for (auto& item : client.Dequeue(kNs, kTopic, 10, 1000)) leased[item.id()] = item;
  }
  ASSERT_EQ(leased.size(), 10u);
  server->Kill();

  auto restarted = StartShardqd((*db)->socket(), 2);
  ASSERT_TRUE(restarted.ok()) << restarted.status().ToString();
  QueueClient after(restarted->port());
  std::set<std::string> want(ids.begin(), ids.end());
  auto seen = DrainUntil(after, want, 10'000);
  ASSERT_EQ(seen.size(), 10u);
  for (const auto& [id, item] : seen) {
    EXPECT_EQ(item.attempts(), 2u) << "redelivered, not lost and not a fresh item";
    // Promotion keeps the old deadline as the item's due time: proof it was not
    // handed out before its lease ran out.
    EXPECT_GE(item.deliver_after_ms(), leased[id].lease_deadline_ms());
  }
}

TEST(CrashTest, KillDashNineOfMariaDbLosesNothingAcknowledged) {
  auto db = MariaDbInstance::Start();
  ASSERT_TRUE(db.ok()) << db.status().ToString();
  auto server = StartShardqd((*db)->socket(), 4);
  ASSERT_TRUE(server.ok()) << server.status().ToString();

  Producers producers(server->port(), 4);
  WaitForAcked(producers, 1000);
  ASSERT_TRUE((*db)->Kill().ok());
  size_t at_kill = producers.acked();
  ASSERT_TRUE((*db)->StartAgain().ok());
  // The server reconnects by itself (breaker probes); the load resumes.
  WaitForAcked(producers, at_kill + 1000);
  producers.Stop();

  QueueClient client(server->port());
  std::set<std::string> want = producers.acked_ids();
  auto seen = DrainUntil(client, want, 2000);
  size_t missing = 0;
  for (const auto& id : want) missing += seen.contains(id) ? 0 : 1;
  EXPECT_EQ(missing, 0u) << "of " << want.size() << " acknowledged enqueues";
  std::cout << "acknowledged: " << want.size()
            << ", failed calls during the outage: " << producers.failures() << "\n";
}

// One consumer that acks each delivery, except the first delivery of about half the
// items, which it nacks (retry at once). It goes on through crashes (calls fail while
// the server or MariaDB is down; their leases run out and the items come back) and
// checks every delivery against what the server acknowledged before it: an item
// whose ack was acknowledged must never come back, and one whose nack was must come
// back only as a later attempt.
class CheckingConsumer {
 public:
  enum class Call { kAck, kNack };

  explicit CheckingConsumer(int port) : port_(port), thread_([this] { Run(); }) {}
  ~CheckingConsumer() { Stop(); }
  void Stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  // The server was restarted on another port.
  void UsePort(int port) { port_ = port; }
  // Waits until `n` items were acked, or every one of `ids`; false if the consumer
  // made no progress for 30 s.
  bool AwaitAcked(size_t n) {
    return AwaitProgress([&] { return acked_.size() >= n; });
  }
  bool AwaitAcked(const std::set<std::string>& ids) {
    return AwaitProgress([&] {
      return std::includes(acked_.begin(), acked_.end(), ids.begin(), ids.end());
    });
  }
  // Runs `kill` on the consumer's thread right after its next acknowledged `call`,
  // before it sends anything else, so that no later call of its can have been
  // committed first; returns once `kill` has run.
  bool KillRightAfterNext(Call call, std::function<void()> kill) {
    {
      std::lock_guard lock(mu_);
      kill_after_ = call;
      kill_ = std::move(kill);
    }
    return AwaitProgress([&] { return killed_; });
  }
  std::set<std::string> acked_ids() {
    std::lock_guard lock(mu_);
    return acked_;
  }
  // Each item whose nack was acknowledged, and the attempt it nacked.
  std::map<std::string, uint32_t> nacked() {
    std::lock_guard lock(mu_);
    return nacked_;
  }
  std::vector<std::string> violations() {
    std::lock_guard lock(mu_);
    return violations_;
  }

 private:
  // Waits for `done` (read under mu_), woken by each acknowledged call.
  template <typename Done>
  bool AwaitProgress(Done done) {
    std::unique_lock lock(mu_);
    size_t seen = calls_done_;
    while (!done()) {
      if (!progress_.wait_for(lock, std::chrono::seconds(30),
                              [&] { return calls_done_ != seen || done(); })) {
        return false;  // stuck
      }
      seen = calls_done_;
    }
    return true;
  }

  void Run() {
    std::unique_ptr<QueueClient> client;
    int connected_to = 0;
    while (!stop_) {
      if (const int port = port_.load(); port != connected_to) {
        client = std::make_unique<QueueClient>(port);
        connected_to = port;
      }
      grpc::Status status;
      for (const auto& item : client->Dequeue(kNs, kTopic, 20, 200, &status)) {
        Handle(*client, item);
      }
      if (!status.ok()) RetryBackoff();
    }
  }

  void Handle(QueueClient& client, const v1::DequeuedItem& item) {
    const std::string& id = item.id();
    {
      std::lock_guard lock(mu_);
      if (acked_.contains(id)) {
        violations_.push_back(id + " was delivered again after its ack was acknowledged");
      }
      if (auto n = nacked_.find(id); n != nacked_.end() && item.attempts() <= n->second) {
        violations_.push_back(
            fmt::format("{} came back as attempt {} after attempt {} was nacked", id,
                        item.attempts(), n->second));
      }
    }
    const Call call = item.attempts() == 1 && std::hash<std::string>{}(id) % 2 == 1
                          ? Call::kNack
                          : Call::kAck;
    const grpc::StatusCode code = call == Call::kNack
                                      ? client.Nack(id, item.lease_token(), 0)
                                      : client.Ack(id, item.lease_token());
    if (code != grpc::StatusCode::OK) return;  // its lease runs out, and it comes back
    std::function<void()> kill;
    {
      std::lock_guard lock(mu_);
      if (call == Call::kNack) {
        nacked_[id] = item.attempts();
      } else {
        acked_.insert(id);
      }
      if (kill_ && kill_after_ == call) std::swap(kill, kill_);
    }
    if (kill) kill();
    {
      std::lock_guard lock(mu_);
      if (kill) killed_ = true;
      ++calls_done_;
    }
    progress_.notify_all();
  }

  std::atomic<int> port_;
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::condition_variable progress_;
  size_t calls_done_ = 0;  // acknowledged acks and nacks
  std::set<std::string> acked_;
  std::map<std::string, uint32_t> nacked_;
  std::vector<std::string> violations_;
  std::function<void()> kill_;  // armed by KillRightAfterNext
  Call kill_after_ = Call::kAck;
  bool killed_ = false;
  std::thread thread_;  // last: it starts once the members above exist
};

constexpr size_t kCheckedItems = 1500;

// Enqueues n items with a short lease (so that leases cut by a crash come back
// soon), retrying while the server is still opening its shards.
std::set<std::string> EnqueueShortLeased(int port, size_t n) {
  QueueClient client(port);
  std::set<std::string> ids;
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (ids.size() < n && std::chrono::steady_clock::now() < until) {
    auto id = client.EnqueueOne(kNs, kTopic, {.lease_ms = 1500});
    if (id.ok()) {
      ids.insert(*id);
    } else {
      RetryBackoff();
    }
  }
  return ids;
}

// After the load: every one of `ids` was acked and is SUCCEEDED, and each nack that
// was acknowledged is in its item's history, as a retry of the attempt it nacked (a
// lost nack would show as that attempt's lease running out instead).
void ExpectEveryAckAndNackKept(int port, const std::set<std::string>& ids,
                               CheckingConsumer& consumer) {
  for (const std::string& v : consumer.violations()) ADD_FAILURE() << v;
  const std::set<std::string> acked = consumer.acked_ids();
  std::vector<std::string> never_acked;
  std::set_difference(ids.begin(), ids.end(), acked.begin(), acked.end(),
                      std::back_inserter(never_acked));
  EXPECT_TRUE(never_acked.empty())
      << never_acked.size() << " items never acked, e.g. " << never_acked.front();
  QueueClient client(port);
  auto task_of = [&](const std::string& id) {
    grpc::Status status;
    v1::Task task = client.GetTask(id, &status);
    EXPECT_TRUE(status.ok()) << id << ": " << status.error_message();
    return task;
  };
  for (const std::string& id : ids) EXPECT_EQ(task_of(id).state(), v1::SUCCEEDED) << id;
  const auto nacked = consumer.nacked();
  EXPECT_FALSE(nacked.empty()) << "the load nacked nothing";
  for (const auto& [id, attempt] : nacked) {
    const v1::Task task = task_of(id);
    const bool kept = std::any_of(task.history().begin(), task.history().end(),
                                  [&](const v1::TaskEvent& e) {
                                    return e.kind() == "retry" && e.attempt() == attempt;
                                  });
    EXPECT_TRUE(kept) << id << ": the acknowledged nack of attempt " << attempt
                      << " is not in its history";
  }
}

// A server on a fresh MariaDB, holding kCheckedItems short-leased items for a
// CheckingConsumer to work through while one of the two is killed.
class AckNackCrashTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto db = MariaDbInstance::Start();
    ASSERT_TRUE(db.ok()) << db.status().ToString();
    db_ = std::move(*db);
    auto server = StartShardqd(db_->socket(), 4);
    ASSERT_TRUE(server.ok()) << server.status().ToString();
    server_ = std::make_unique<ServerProcess>(std::move(*server));
    // Enough that the consumer is still busy when the kill comes (after 100 acks).
    ids_ = EnqueueShortLeased(server_->port(), kCheckedItems);
    ASSERT_EQ(ids_.size(), kCheckedItems);
  }

  std::unique_ptr<MariaDbInstance> db_;
  std::unique_ptr<ServerProcess> server_;
  std::set<std::string> ids_;
};

TEST_F(AckNackCrashTest, KillDashNineOfMariaDbLosesNoAcknowledgedAckOrNack) {
  bool killed = false;  // set on the consumer's thread: declared before it
  CheckingConsumer consumer(server_->port());
  ASSERT_TRUE(consumer.AwaitAcked(100)) << "the consumer made no progress";
  // Right after a nack was acknowledged, while the consumer goes on: what that nack
  // changed must be committed already.
  ASSERT_TRUE(consumer.KillRightAfterNext(CheckingConsumer::Call::kNack,
                                          [&] { killed = db_->Kill().ok(); }));
  ASSERT_TRUE(killed);
  ASSERT_TRUE(db_->StartAgain().ok());
  // The server reconnects by itself (breaker probes); the consumer finishes the rest.
  ASSERT_TRUE(consumer.AwaitAcked(ids_)) << "the consumer stopped making progress";
  consumer.Stop();
  ExpectEveryAckAndNackKept(server_->port(), ids_, consumer);
}

// The kill comes right after an ack or a nack (the parameter) was acknowledged, while
// the consumer goes on: what that call changed must be committed already.
class ServerKillTest : public AckNackCrashTest,
                       public ::testing::WithParamInterface<CheckingConsumer::Call> {};

TEST_P(ServerKillTest, KillDashNineLosesNoAcknowledgedAckOrNack) {
  CheckingConsumer consumer(server_->port());
  ASSERT_TRUE(consumer.AwaitAcked(100)) << "the consumer made no progress";
  ASSERT_TRUE(consumer.KillRightAfterNext(GetParam(), [&] { server_->Kill(); }));
  auto restarted = StartShardqd(db_->socket(), 4);
  ASSERT_TRUE(restarted.ok()) << restarted.status().ToString();
  consumer.UsePort(restarted->port());
  ASSERT_TRUE(consumer.AwaitAcked(ids_)) << "the consumer stopped making progress";
  consumer.Stop();
  ExpectEveryAckAndNackKept(restarted->port(), ids_, consumer);
}

INSTANTIATE_TEST_SUITE_P(
    RightAfter, ServerKillTest,
    ::testing::Values(CheckingConsumer::Call::kAck, CheckingConsumer::Call::kNack),
    [](const ::testing::TestParamInfo<CheckingConsumer::Call>& info) {
      return info.param == CheckingConsumer::Call::kNack ? "ANack" : "AnAck";
    });

// Producers and a checking consumer run while shardqd and MariaDB are killed in turn,
// twice each, at whatever point the load has reached: every acknowledged enqueue is
// acked in the end, and every acknowledged ack and nack is kept (CheckingConsumer).
TEST(CrashTest, RepeatedKillsOfTheServerAndMariaDbUnderLoadLoseNothingAcknowledged) {
  auto db = MariaDbInstance::Start();
  ASSERT_TRUE(db.ok()) << db.status().ToString();
  auto started = StartShardqd((*db)->socket(), 4);
  ASSERT_TRUE(started.ok()) << started.status().ToString();
  auto server = std::make_unique<ServerProcess>(std::move(*started));
  // MariaDB 10.11 has crashed by itself here soon after a restart under load (see
  // StoreInsertsThatReturnedOkSurviveAMariaDbKill). That is one more crash, which
  // must lose nothing either: a wait that stalls restarts it, as a supervisor would,
  // and waits again.
  auto await = [&](const std::function<bool()>& progress) {
    for (int restarts = 0; restarts < 2; ++restarts) {
      if (progress()) return true;
      std::string why;
      if (!(*db)->RestartIfDied(&why)) return false;
      std::cerr << "mariadbd died by itself; restarted. Its log:\n" << why << "\n";
    }
    return progress();
  };

  Producers producers(server->port(), 2, /*lease_ms=*/1500);
  CheckingConsumer consumer(server->port());
  for (int round = 1; round <= 4; ++round) {
    ASSERT_TRUE(await([&] { return consumer.AwaitAcked(200u * round); }))
        << "round " << round << ": the consumer made no progress";
    if (round % 2 == 1) {
      server->Kill();
      auto restarted = StartShardqd((*db)->socket(), 4);
      ASSERT_TRUE(restarted.ok()) << restarted.status().ToString();
      server = std::make_unique<ServerProcess>(std::move(*restarted));
      producers.UsePort(server->port());
      consumer.UsePort(server->port());
    } else {
      ASSERT_TRUE((*db)->Kill().ok());
      ASSERT_TRUE((*db)->StartAgain().ok());
    }
  }
  producers.Stop();
  const std::set<std::string> ids = producers.acked_ids();
  ASSERT_TRUE(await([&] { return consumer.AwaitAcked(ids); }))
      << "the consumer did not get through what was enqueued";
  consumer.Stop();
  ExpectEveryAckAndNackKept(server->port(), ids, consumer);
  std::cout << "acknowledged enqueues: " << ids.size()
            << ", failed enqueue calls: " << producers.failures() << "\n";
}

}  // namespace
}  // namespace shardq::testing

namespace shardq::testing {
namespace {

// The store alone, four shards committing at once while MariaDB is killed: every
// Insert that returned OK must be there after the restart. (Connector/C++ 1.1's
// Connection::commit() swallowed errors; this is the regression test for a commit
// whose answer is lost being taken for a success.)
TEST(CrashTest, StoreInsertsThatReturnedOkSurviveAMariaDbKill) {
  auto db = MariaDbInstance::Start();
  ASSERT_TRUE(db.ok()) << db.status().ToString();
  for (int round = 0; round < 4; ++round) {
    std::atomic<bool> stop{false};
    std::atomic<int> failures{0};
    std::mutex mu;
    std::string last_error;  // under mu: for the message if the load stalls
    std::vector<std::set<uint64_t>> acked(4);
    std::vector<std::thread> writers;
    auto database = [round](int k) { return fmt::format("kill_{}_{}", round, k); };
    for (int k = 0; k < 4; ++k) {
      writers.emplace_back([&, k] {
        store::MySqlShardStore store((*db)->endpoint(), database(k));
        NewItem item;
        item.ns = "n";
        item.topic = "t";
        item.payload = "x";
        item.lease = Duration(1000);
        while (!stop) {
          auto ids = store.Insert(std::span(&item, 1), FromUnixMillis(0));
          if (ids.ok()) {
            std::lock_guard lock(mu);
            acked[k].insert((*ids)[0].row.value());
          } else {
            failures.fetch_add(1);
            std::lock_guard lock(mu);
            last_error = ids.status().ToString();
          }
        }
      });
    }
    auto total = [&] {
      std::lock_guard lock(mu);
      return acked[0].size() + acked[1].size() + acked[2].size() + acked[3].size();
    };
    // MariaDB 10.11 has crashed by itself on a COMMIT soon after its restart here (rare,
    // under load). That is one more crash, not a failure of shardq's: what was
    // acknowledged must survive it too. So the test restarts it, as a supervisor would,
    // and says so. Once (2026-11-23, a clean-clone CI run) that crash, an assertion in
    // InnoDB's purge (trx0purge.cc:277) right after recovery, left MariaDB unable to
    // recover its own tablespace ("Data structure corruption"); it happened again in a
    // local run the next day. Nothing can be read back then, so there is nothing of
    // shardq's left to check: the test is skipped, loudly, with MariaDB's log.
    int restarts = 0;            // more than one a round is not a rare crash any more
    std::string self_corrupted;  // MariaDB's log, if it could not recover itself
    auto restart_if_died = [&] {
      std::string why;
      if ((*db)->RestartIfDied(&why)) {
        ++restarts;
        std::cerr << "round " << round
                  << ": mariadbd died by itself; restarted. Its log:\n"
                  << why << "\n";
        if (why.find("did not start again") != std::string::npos &&
            why.find("Data structure corruption") != std::string::npos) {
          self_corrupted = why;
        }
      }
    };
    // Waits for the writers' progress, bounded: a stuck load fails, never hangs.
    auto reach = [&](size_t n) {
      auto until = std::chrono::steady_clock::now() + std::chrono::seconds(60);
      while (total() < n && std::chrono::steady_clock::now() < until) {
        restart_if_died();
        std::this_thread::yield();
      }
      return total() >= n;
    };
    bool loaded = reach(400u + 300u * round);
    if (self_corrupted.empty()) {
      ASSERT_TRUE((*db)->Kill().ok());
      ASSERT_TRUE((*db)->StartAgain().ok());
    }
    bool resumed = loaded && self_corrupted.empty() && reach(total() + 200);
    stop = true;
    for (auto& w : writers) w.join();
    if (!self_corrupted.empty()) {
      GTEST_SKIP() << "MariaDB crashed by itself (an InnoDB assertion, not this test's "
                      "kill) and then could not recover its own tablespace: a MariaDB "
                      "bug, and nothing of shardq's can be read back. Its log is above.";
    }
    ASSERT_TRUE(loaded && resumed)
        << "the writers made no progress; last error: " << last_error << "\n"
        << (*db)->LogTail(20'000);
    EXPECT_GT(failures.load(), 0) << "the kill was not noticed";
    EXPECT_LE(restarts, 1) << "mariadbd kept dying by itself";
    for (int k = 0; k < 4; ++k) {
      store::MySqlShardStore store((*db)->endpoint(), database(k));
      // A server that has just restarted may still refuse or drop a new connection
      // (UNAVAILABLE); the store reconnects on the next call. Bounded by a deadline,
      // not by a count: refusals come back at once, so a count bounds nothing.
      auto rows = store.FetchReady("n", "t", 1'000'000);
      const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(30);
      while (!rows.ok() && rows.status().code() == Code::kUnavailable &&
             std::chrono::steady_clock::now() < give_up) {
        // Polling for another process, not waiting for time to pass.
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
        restart_if_died();
        rows = store.FetchReady("n", "t", 1'000'000);
      }
      ASSERT_TRUE(rows.ok()) << rows.status().ToString() << "\n"
                             << (*db)->LogTail(20'000);
      std::set<uint64_t> stored;
      for (const ReadyKey& key : *rows) stored.insert(key.row.value());
      for (uint64_t id : acked[k]) {
        EXPECT_TRUE(stored.contains(id))
            << "round " << round << " shard " << k << " lost " << id;
      }
    }
  }
}

}  // namespace
}  // namespace shardq::testing
