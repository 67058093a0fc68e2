// The client SDK against a real shardq server: in-process, real gRPC on a free port,
// real MariaDB. The server's time is a FakeClock and the SDK's a ManualClock; tests
// move them with Advance(), never with sleep. Waiting for a condition (with a
// real-time bound) is the only real-time waiting here.

#include "shardq/sdk.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <functional>
#include <future>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <stdexcept>
#include <thread>

#include "common/ids.h"
#include "common/item.h"
#include "consumer_sdk/src/server_limits.h"
#include "consumer_sdk/src/utf8.h"
#include "frontend/validation.h"
#include "tests/e2e_support.h"
#include "tests/support/child_process.h"
#include "tests/support/mariadb_instance.h"

namespace shardq::testing {
namespace {

using namespace std::chrono_literals;
using sdk::Millis;
using sdk::Outcome;
using sdk::TaskContext;

constexpr char kNs[] = "sdk";

// Polls `pred` until it holds or `bound` (real time) ran out.
template <typename Pred>
bool Eventually(Pred pred, std::chrono::milliseconds bound = 30s) {
  auto until = std::chrono::steady_clock::now() + bound;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

// A one-shot gate a handler can block on until the test opens it.
class Gate {
 public:
  void Open() {
    {
      std::lock_guard lock(mu_);
      open_ = true;
    }
    cv_.notify_all();
  }
  // False if the gate stayed shut for 60 s (a broken test, not a timing assumption).
  bool Pass() {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, 60s, [&] { return open_; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool open_ = false;
};

class SdkTest : public ::testing::Test {
 protected:
  void SetUp() override {
    config_ = FreshConfig(SharedMariaDb().socket(), 2);
    StartServer();
  }

  void StartServer() {
    auto server = frontend::Server::Start(config_, server_clock_);
    ASSERT_TRUE(server.ok()) << server.status().ToString();
    server_ = std::move(*server);
    ASSERT_TRUE(server_->engine().AwaitShardsOpen(std::chrono::seconds(30)));
    if (port_ == 0) {
      port_ = server_->port();
      config_.listen = Address();  // a restart listens where the SDK connects
    }
    client_ = std::make_unique<QueueClient>(port_);
  }

  void StopServer() {
    client_.reset();
    server_.reset();
    // So that StartServer finds the shards free (its probes run on the fake clock).
    for (const auto& shard : config_.shards) {
      ASSERT_TRUE(AwaitOwnershipFreed(shard.database)) << shard.database;
    }
  }

  std::string Address() const { return "127.0.0.1:" + std::to_string(port_); }

  // Moves the server's and the SDK's time together.
  void Advance(Millis d) {
    server_clock_.Advance(Duration(d.count()));
    sdk_clock_.Advance(d);
  }

  sdk::ProducerOptions ProducerOptions() {
    sdk::ProducerOptions o;
    o.connection.server = Address();
    o.connection.max_reconnect_backoff = Millis(100);
    o.ns = kNs;
    o.clock = &sdk_clock_;
    o.seed = 1;
    return o;
  }

  sdk::WorkerOptions WorkerOptions(std::vector<std::string> topics) {
    sdk::WorkerOptions o;
    o.connection.server = Address();
    o.connection.max_reconnect_backoff = Millis(100);
    o.ns = kNs;
    o.topics = std::move(topics);
    o.poll_wait = Millis(60'000);  // server time: a parked poll waits for items
    o.rpc_deadline = Millis(20'000);
    o.clock = &sdk_clock_;
    o.seed = 2;
    return o;
  }

  // What a handler that waits to be stopped saw.
  struct Flagged {
    Gate started;
    std::promise<sdk::StopReason> reason;
  };

  // A started worker of one executor on `topic`, extending leases by 3 s every second,
  // whose handler waits (an hour on the SDK clock) until its task is flagged and
  // records why; a redelivery (attempt 2 on) just succeeds. Returns once the first
  // handler runs.
  std::unique_ptr<sdk::Worker> StartFlagWaiter(const std::string& topic, Flagged& seen) {
    auto options = WorkerOptions({topic});
    options.concurrency = 1;
    options.lease_extension = Millis(3000);
    options.heartbeat_interval = Millis(1000);
    auto worker = std::make_unique<sdk::Worker>(options);
    worker->Handle("", [&seen](TaskContext& task) {
      if (task.attempt() > 1) return Outcome::Success("second delivery");
      seen.started.Open();
      task.WaitCancelled(Millis(3'600'000));
      seen.reason.set_value(task.stop_reason());
      return Outcome::Success("too late");
    });
    worker->Start();
    EXPECT_TRUE(seen.started.Pass());
    return worker;
  }

  // Dequeues everything ready on `topic` now (no wait).
  std::vector<v1::DequeuedItem> DrainNow(const std::string& topic) {
    std::vector<v1::DequeuedItem> all;
    for (;;) {
      auto got = client_->Dequeue(kNs, topic, 100);
      if (got.empty()) return all;
      all.insert(all.end(), got.begin(), got.end());
    }
  }

  FakeClock server_clock_;
  sdk::ManualClock sdk_clock_;
  frontend::ServerConfig config_;
  std::unique_ptr<frontend::Server> server_;
  std::unique_ptr<QueueClient> client_;
  int port_ = 0;
};

// ---- no server needed ----

TEST(BackoffTest, CeilingDoublesUpToTheCapAndJitterStaysBelowIt) {
  sdk::Backoff b{.base = Millis(100), .cap = Millis(1000)};
  EXPECT_EQ(b.Ceiling(1), Millis(100));
  EXPECT_EQ(b.Ceiling(2), Millis(200));
  EXPECT_EQ(b.Ceiling(4), Millis(800));
  EXPECT_EQ(b.Ceiling(5), Millis(1000));
  EXPECT_EQ(b.Ceiling(1'000'000), Millis(1000)) << "no overflow";
  sdk::Jitter jitter(42);
  std::set<int64_t> seen;
  for (int i = 0; i < 2000; ++i) {
    Millis d = jitter.Delay(b, 3);
    ASSERT_GE(d, Millis(0));
    ASSERT_LE(d, Millis(400));
    seen.insert(d.count());
  }
  EXPECT_GT(seen.size(), 100u) << "full jitter spreads the waits";
  std::string key = jitter.RandomHex128();
  EXPECT_EQ(key.size(), 32u);
  EXPECT_EQ(key.find_first_not_of("0123456789abcdef"), std::string::npos);
  EXPECT_NE(key, jitter.RandomHex128());
  std::string early = jitter.TimeOrderedKey(1'700'000'000'000);
  std::string late = jitter.TimeOrderedKey(1'700'000'000'001);
  EXPECT_EQ(early.size(), 32u);
  EXPECT_EQ(early[0], '~') << "marks a time-ordered key for the server's placement";
  EXPECT_EQ(early.find_first_not_of("0123456789abcdef", 1), std::string::npos);
  EXPECT_EQ(early.substr(1, 12), "018bcfe56800");  // 1'700'000'000'000 in hex
  EXPECT_LT(early, late);
  EXPECT_NE(early.substr(13), jitter.TimeOrderedKey(1'700'000'000'000).substr(13));
}

// A cap near Millis::max() ("no cap"): doubling the ceiling overflowed into a
// negative (then zero) wait.
TEST(BackoffTest, ACeilingNearMillisMaxSaturatesInsteadOfOverflowing) {
  const sdk::Backoff b{.base = Millis(1000), .cap = Millis::max()};
  EXPECT_GT(b.Ceiling(60), Millis(0));
  Millis previous{0};
  for (uint32_t attempt = 1; attempt <= 1000; ++attempt) {
    const Millis ceiling = b.Ceiling(attempt);
    ASSERT_GE(ceiling, previous) << "attempt " << attempt;
    previous = ceiling;
  }
  EXPECT_EQ(previous, Millis::max()) << "it reaches the cap and stays there";
}

// What the SDK sends in proto3 strings on the user's behalf (error texts, the
// worker id) must be UTF-8 the server's parser takes, and fit its limits.
TEST(Utf8Test, TextIsMadeValidAndCutBetweenCharacters) {
  EXPECT_TRUE(sdk::IsValidUtf8("plain, \xC3\xA9, \xE2\x82\xAC, \xF0\x9F\x98\x80"));
  for (const char* bad :
       {"\xFF", "\xC3", "\xC0\xAF" /* an overlong '/' */,
        "\xED\xA0\x80" /* a surrogate */, "\xF4\x90\x80\x80" /* > U+10FFFF */}) {
    EXPECT_FALSE(sdk::IsValidUtf8(bad)) << ::testing::PrintToString(bad);
  }
  EXPECT_EQ(sdk::ValidUtf8("bad \xFF!", 100), "bad \xEF\xBF\xBD!");
  EXPECT_EQ(sdk::ValidUtf8("ab\xC3\xA9", 3), "ab") << "not half an e-acute";
  EXPECT_EQ(sdk::ValidUtf8("ab\xC3\xA9", 4), "ab\xC3\xA9");
  EXPECT_EQ(sdk::ValidUtf8("ab\xFF", 4), "ab") << "nor half a replacement";
}

// The SDK's copies of the server's limits (consumer_sdk/src/server_limits.h) are the
// server's values: a copy that drifted would send what the server refuses, or cut
// what it would take.
TEST(ServerLimitsTest, TheSdksCopiesAreTheServersValues) {
  namespace sdk_limits = sdk::server_limits;
  const frontend::Limits server;
  EXPECT_EQ(sdk_limits::kMaxItemsPerCall, server.max_items_per_call);
  EXPECT_EQ(sdk_limits::kMaxCountPerTopic, server.max_count_per_topic);
  EXPECT_EQ(sdk_limits::kMaxResultBytes, kMaxResultBytes);
  EXPECT_EQ(sdk_limits::kMaxErrorBytes, kMaxErrorBytes);
  EXPECT_EQ(sdk_limits::kMaxWorkerIdBytes, kMaxWorkerIdLen);
  EXPECT_EQ(sdk_limits::kMaxRetryDelay.count(), server.max_delay.count());
  EXPECT_EQ(sdk_limits::kMaxLeaseExtension.count(), server.max_lease.count());
}

TEST(ManualClockTest, WaitsEndOnlyWhenAdvancedPastTheDeadline) {
  sdk::ManualClock clock;
  std::mutex mu;
  std::condition_variable cv;
  int id = clock.AddListener([&] {
    { std::lock_guard lock(mu); }
    cv.notify_all();
  });
  std::atomic<bool> done{false};
  std::thread waiter([&] {
    std::unique_lock lock(mu);
    while (clock.Now() < Millis(500)) clock.WaitUntil(cv, lock, Millis(500));
    done = true;
  });
  clock.Advance(Millis(499));
  EXPECT_FALSE(done.load());
  clock.Advance(Millis(1));
  waiter.join();
  EXPECT_TRUE(done.load());
  clock.RemoveListener(id);
}

// ---- producer ----

TEST_F(SdkTest, ProducerEnqueuesSyncAsyncAndBatches) {
  sdk::Producer producer(ProducerOptions());
  auto one = producer.Enqueue({.topic = "p", .payload = "sync"});
  ASSERT_TRUE(one.ok()) << one.status.error_message();
  EXPECT_FALSE(one.id.empty());
  EXPECT_EQ(one.dedup_key.size(), 32u) << "retries on: a generated dedup key";
  EXPECT_EQ(one.attempts, 1);

  auto future = producer.EnqueueAsync({.topic = "p", .payload = "future"});
  std::promise<sdk::EnqueueResult> cb;
  producer.EnqueueAsync({.topic = "p", .payload = "callback"},
                        [&](sdk::EnqueueResult r) { cb.set_value(std::move(r)); });
  auto no_retry =
      producer.Enqueue({.topic = "p", .payload = "no-retry"}, {.max_attempts = 1});
  ASSERT_TRUE(no_retry.ok());
  EXPECT_TRUE(no_retry.dedup_key.empty()) << "no retries: no key needed";

  std::vector<sdk::NewTask> batch;
  for (int i = 0; i < 4; ++i) {
    batch.push_back(
        {.topic = "p", .payload = "batch" + std::to_string(i), .priority = i});
  }
  batch.push_back({.topic = "bad topic!", .payload = "rejected"});
  auto results = producer.EnqueueBatch(batch);
  ASSERT_EQ(results.size(), 5u);
  for (int i = 0; i < 4; ++i) EXPECT_TRUE(results[i].ok()) << i;
  EXPECT_EQ(results[4].status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(results[4].attempts, 1) << "not retried";
  // One call, one time in its keys: the server commits it on one shard.
  std::set<std::string> keys;
  std::set<uint32_t> shards;
  for (int i = 0; i < 4; ++i) {
    ASSERT_EQ(results[i].dedup_key.size(), 32u) << i;
    EXPECT_EQ(results[i].dedup_key.substr(0, 13), results[0].dedup_key.substr(0, 13));
    keys.insert(results[i].dedup_key);
    shards.insert(ItemId::Parse(results[i].id)->shard.value());
  }
  EXPECT_EQ(keys.size(), 4u) << "each item its own key";
  EXPECT_EQ(shards.size(), 1u);

  auto async_batch = producer.EnqueueBatchAsync(
      {{.topic = "p", .payload = "ab1"}, {.topic = "p", .payload = "ab2"}});
  std::promise<std::vector<sdk::EnqueueResult>> batch_cb;
  producer.EnqueueBatchAsync(
      {{.topic = "p", .payload = "abc"}},
      [&](std::vector<sdk::EnqueueResult> r) { batch_cb.set_value(std::move(r)); });
  ASSERT_TRUE(future.get().ok());
  ASSERT_TRUE(cb.get_future().get().ok());
  for (const auto& r : async_batch.get()) ASSERT_TRUE(r.ok());
  for (const auto& r : batch_cb.get_future().get()) ASSERT_TRUE(r.ok());

  std::multiset<std::string> payloads;
  for (const auto& d : DrainNow("p")) payloads.insert(d.payload());
  EXPECT_EQ(payloads, (std::multiset<std::string>{
                          "sync", "future", "callback", "no-retry", "batch0", "batch1",
                          "batch2", "batch3", "ab1", "ab2", "abc"}));
}

// Concurrent enqueues share Enqueue calls (Producer::Impl::Dispatch); each
// caller still gets its own item's answer.
TEST_F(SdkTest, ConcurrentEnqueuesShareCallsAndEachGetsItsOwnAnswer) {
  sdk::Producer producer(ProducerOptions());
  constexpr int kTasks = 300;
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::optional<sdk::EnqueueResult>> results(kTasks);
  int answered = 0;
  for (int i = 0; i < kTasks; ++i) {
    // Every 7th is invalid: its neighbours in a shared call must still succeed.
    sdk::NewTask task{.topic = i % 7 == 0 ? "bad topic!" : "shared",
                      .payload = "task-" + std::to_string(i)};
    producer.EnqueueAsync(task, [&, i](sdk::EnqueueResult r) {
      std::lock_guard lock(mu);
      results[static_cast<size_t>(i)] = std::move(r);
      ++answered;
      cv.notify_all();
    });
  }
  {
    std::unique_lock lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, 20s, [&] { return answered == kTasks; }));
  }
  std::map<std::string, std::string> payload_of;  // id -> payload, as stored
  for (const auto& d : DrainNow("shared")) payload_of[d.id()] = d.payload();
  EXPECT_EQ(payload_of.size(), static_cast<size_t>(kTasks - (kTasks + 6) / 7));
  for (int i = 0; i < kTasks; ++i) {
    const sdk::EnqueueResult& r = *results[static_cast<size_t>(i)];
    if (i % 7 == 0) {
      EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << i;
      continue;
    }
    ASSERT_TRUE(r.ok()) << i << ": " << r.status.error_message();
    EXPECT_EQ(payload_of[r.id], "task-" + std::to_string(i)) << "answer of task " << i;
  }
}

TEST_F(SdkTest, ProducerGivesUpAfterItsAttemptsWhenTheServerIsDown) {
  StopServer();
  auto options = ProducerOptions();
  options.retry.backoff = {.base = Millis(0), .cap = Millis(0)};  // retry at once
  options.retry.max_attempts = 3;
  sdk::Producer producer(options);
  auto r =
      producer.Enqueue({.topic = "down", .payload = "x"}, {.deadline = Millis(2000)});
  EXPECT_FALSE(r.ok());
  EXPECT_TRUE(r.status.error_code() == grpc::StatusCode::UNAVAILABLE ||
              r.status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED)
      << r.status.error_message();
}

// A task whose strings are not UTF-8 is refused before it is sent: the server cannot
// parse such a message, and on the producer's stream that ended every call on it.
TEST_F(SdkTest, ATaskThatIsNotUtf8IsRefusedLocallyAndTheOthersGoOn) {
  sdk::Producer producer(ProducerOptions());
  auto bad = producer.Enqueue({.topic = "utf8",
                               .payload = "p",
                               .metadata = {{"k", "\xff"}},
                               .dedup_key = "mine"});
  EXPECT_EQ(bad.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
      << bad.status.error_message();
  EXPECT_EQ(bad.attempts, 0) << "not sent";
  EXPECT_EQ(bad.dedup_key, "mine");
  auto good = producer.Enqueue({.topic = "utf8", .payload = "good"});
  ASSERT_TRUE(good.ok()) << good.status.error_message();

  // In a batch only such tasks fail; the others are enqueued.
  auto results =
      producer.EnqueueBatch({{.topic = "utf8", .payload = "b0"},
                             {.topic = "utf8\xff", .payload = "b1"},
                             {.topic = "utf8", .payload = "b2", .task_type = "t\xC3"},
                             {.topic = "utf8", .payload = "b3"}});
  ASSERT_EQ(results.size(), 4u);
  EXPECT_TRUE(results[0].ok()) << results[0].status.error_message();
  EXPECT_EQ(results[1].status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(results[2].status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(results[3].ok()) << results[3].status.error_message();
  std::multiset<std::string> payloads;
  for (const auto& d : DrainNow("utf8")) payloads.insert(d.payload());
  EXPECT_EQ(payloads, (std::multiset<std::string>{"good", "b0", "b3"}));
}

// Turns the first `n` Enqueue answers into UNAVAILABLE after the server committed
// them: an answer lost on the way back (the status of a unary Enqueue, or an
// EnqueueStream answer, which becomes "the shard failed while committing").
class LoseEnqueueReplies : public grpc::experimental::ClientInterceptorFactoryInterface {
 public:
  explicit LoseEnqueueReplies(std::atomic<int>* left) : left_(left) {}
  grpc::experimental::Interceptor* CreateClientInterceptor(
      grpc::experimental::ClientRpcInfo* info) override {
    const std::string method = info->method();
    return new Lose(method == "/shardq.v1.Queue/Enqueue",
                    method == "/shardq.v1.Queue/EnqueueStream", left_);
  }

 private:
  class Lose : public grpc::experimental::Interceptor {
   public:
    Lose(bool unary, bool stream, std::atomic<int>* left)
        : unary_(unary), stream_(stream), left_(left) {}
    void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
      using grpc::experimental::InterceptionHookPoints;
      if (unary_ &&
          methods->QueryInterceptionHookPoint(InterceptionHookPoints::POST_RECV_STATUS) &&
          left_->fetch_sub(1) > 0) {
        *methods->GetRecvStatus() =
            grpc::Status(grpc::StatusCode::UNAVAILABLE, "injected: reply lost");
      }
      if (stream_ &&
          methods->QueryInterceptionHookPoint(
              InterceptionHookPoints::POST_RECV_MESSAGE) &&
          left_->fetch_sub(1) > 0) {
        auto* answer = static_cast<v1::EnqueueStreamResponse*>(methods->GetRecvMessage());
        answer->clear_response();
        answer->mutable_status()->set_code(grpc::StatusCode::UNAVAILABLE);
        answer->mutable_status()->set_message("injected: answer lost");
      }
      methods->Proceed();
    }

   private:
    bool unary_;
    bool stream_;
    std::atomic<int>* left_;
  };
  std::atomic<int>* left_;
};

// Needs the server's dedup_key support (issue #3, the task lifecycle).
TEST_F(SdkTest, ProducerRetriesDoNotDuplicateACommittedEnqueue) {
  std::atomic<int> lose{1};
  std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>> f;
  f.push_back(std::make_unique<LoseEnqueueReplies>(&lose));
  auto options = ProducerOptions();
  options.connection.channel = grpc::experimental::CreateCustomChannelWithInterceptors(
      Address(), grpc::InsecureChannelCredentials(), grpc::ChannelArguments(),
      std::move(f));
  options.retry.backoff = {.base = Millis(0), .cap = Millis(0)};  // no clock needed
  sdk::Producer producer(options);

  auto r = producer.Enqueue({.topic = "dedup", .payload = "once"});
  ASSERT_TRUE(r.ok()) << r.status.error_message();
  EXPECT_EQ(r.attempts, 2) << "the lost reply was retried";
  EXPECT_TRUE(r.deduplicated) << "the retry found the committed item";

  // The same caller-given key twice: one task.
  auto a =
      producer.Enqueue({.topic = "dedup", .payload = "mine", .dedup_key = "order-17"});
  auto b =
      producer.Enqueue({.topic = "dedup", .payload = "mine", .dedup_key = "order-17"});
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_FALSE(a.deduplicated);
  EXPECT_TRUE(b.deduplicated);
  EXPECT_EQ(a.id, b.id);

  EXPECT_EQ(DrainNow("dedup").size(), 2u) << "one task per dedup key";
}

// A stand-in server: Enqueue answers every item OK; EnqueueStream is either missing
// (UNIMPLEMENTED, like a server from before it) or reads calls and never answers.
// ConsumeStream is missing; Dequeue leases one task ("0-1", type "job") once, then
// answers empty after a short real-time pause (a long poll that found nothing); Ack
// answers OK.
class StandInQueue final : public v1::Queue::Service {
 public:
  grpc::Status Dequeue(grpc::ServerContext*, const v1::DequeueRequest* req,
                       v1::DequeueResponse* resp) override {
    if (dequeues++ == 0 && req->topics_size() > 0) {
      v1::DequeuedItem* item = resp->add_items();
      item->set_id("0-1");
      item->set_lease_token("token");
      item->set_topic(req->topics(0).topic());
      item->set_task_type("job");
      item->set_attempts(1);
      item->set_max_attempts(5);
    } else {
      std::this_thread::sleep_for(5ms);
    }
    return grpc::Status::OK;
  }
  grpc::Status Ack(grpc::ServerContext*, const v1::AckRequest* req,
                   v1::AckResponse* resp) override {
    for (const v1::AckItem& item : req->items()) {
      if (item.id() == "0-1" && item.lease_token() == "token") ++acks;
      resp->add_results();
    }
    return grpc::Status::OK;
  }
  std::atomic<int> dequeues{0};
  std::atomic<int> acks{0};

  explicit StandInQueue(bool stream_answers_nothing)
      : stream_answers_nothing_(stream_answers_nothing) {}
  grpc::Status Enqueue(grpc::ServerContext*, const v1::EnqueueRequest* req,
                       v1::EnqueueResponse* resp) override {
    ++enqueues;
    for (int i = 0; i < req->items_size(); ++i) resp->add_results()->set_id("0-1");
    return grpc::Status::OK;
  }
  grpc::Status EnqueueStream(
      grpc::ServerContext*,
      grpc::ServerReaderWriter<v1::EnqueueStreamResponse, v1::EnqueueStreamRequest>* s)
      override {
    if (!stream_answers_nothing_) {
      return grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "no EnqueueStream");
    }
    v1::EnqueueStreamRequest req;
    while (s->Read(&req)) ++stream_calls;
    return grpc::Status::OK;
  }
  std::atomic<int> enqueues{0};
  std::atomic<int> stream_calls{0};

 private:
  const bool stream_answers_nothing_;
};

struct StandInServer {
  explicit StandInServer(bool stream_answers_nothing) : service(stream_answers_nothing) {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(&service);
    server = builder.BuildAndStart();
  }
  std::string Address() const { return "127.0.0.1:" + std::to_string(port); }
  StandInQueue service;
  int port = 0;
  std::unique_ptr<grpc::Server> server;
};

TEST_F(SdkTest, ProducerFallsBackToEnqueueCallsWhenTheServerHasNoStream) {
  StandInServer old_server(/*stream_answers_nothing=*/false);
  auto options = ProducerOptions();
  options.connection.server = old_server.Address();
  sdk::Producer producer(options);
  auto r = producer.Enqueue({.topic = "t", .payload = "x"});
  ASSERT_TRUE(r.ok()) << r.status.error_message();
  EXPECT_EQ(r.attempts, 1) << "the fallback is not a retry";
  EXPECT_TRUE(producer.Enqueue({.topic = "t", .payload = "y"}).ok());
  EXPECT_EQ(old_server.service.enqueues.load(), 2);
}

TEST_F(SdkTest, ProducerCallWithoutAnAnswerOnTheStreamEndsAtItsDeadline) {
  StandInServer silent(/*stream_answers_nothing=*/true);
  auto options = ProducerOptions();
  options.connection.server = silent.Address();
  sdk::Producer producer(options);
  auto pending =
      producer.EnqueueAsync({.topic = "t", .payload = "x"}, {.deadline = Millis(5'000)});
  ASSERT_TRUE(Eventually([&] { return silent.service.stream_calls.load() == 1; }));
  sdk_clock_.Advance(Millis(4'999));
  EXPECT_EQ(pending.wait_for(50ms), std::future_status::timeout);
  sdk_clock_.Advance(Millis(1));
  ASSERT_EQ(pending.wait_for(30s), std::future_status::ready);
  auto r = pending.get();
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED)
      << r.status.error_message();
}

TEST_F(SdkTest, WorkerFallsBackToUnaryCallsWhenTheServerHasNoConsumeStream) {
  StandInServer old_server(/*stream_answers_nothing=*/false);
  auto options = WorkerOptions({"t"});
  options.connection.server = old_server.Address();
  std::atomic<int> ran{0};
  {
    sdk::Worker worker(options);
    worker.Handle("job", [&](TaskContext& ctx) {
      EXPECT_EQ(ctx.id(), "0-1");
      ++ran;
      return Outcome::Success();
    });
    worker.Start();
    ASSERT_TRUE(Eventually([&] { return old_server.service.acks.load() == 1; }));
    worker.Stop(Millis(1'000));
    EXPECT_EQ(worker.stats().succeeded, 1u);
  }
  EXPECT_EQ(ran.load(), 1);
  EXPECT_GE(old_server.service.dequeues.load(), 1);
}

// ---- worker ----

TEST_F(SdkTest, AHandlerSeesWhenItsTaskWasEnqueuedAndWhenItFellDue) {
  const int64_t t0 = ToUnixMillis(server_clock_.Now());
  {
    sdk::Producer producer(ProducerOptions());
    ASSERT_TRUE(producer.Enqueue({.topic = "due", .delay = Millis(500)}).ok());
  }
  std::atomic<int64_t> enqueued{0}, due{0}, due_again{0};
  sdk::Worker worker(WorkerOptions({"due"}));
  worker.Handle("", [&](TaskContext& task) {
    if (task.attempt() == 1) {
      enqueued = task.enqueued_at_ms();
      due = task.due_at_ms();
      return Outcome::Retry("again", Millis(300));  // nacked at t0 + 500
    }
    due_again = task.due_at_ms();
    return Outcome::Success();
  });
  worker.Start();
  Advance(Millis(500));
  ASSERT_TRUE(Eventually([&] { return worker.stats().retried == 1; }));
  Advance(Millis(300));
  ASSERT_TRUE(Eventually([&] { return worker.stats().succeeded == 1; }));
  worker.Stop();
  EXPECT_EQ(enqueued.load(), t0);
  EXPECT_EQ(due.load(), t0 + 500) << "due_at_ms is the enqueue time plus the delay";
  EXPECT_EQ(due_again.load(), t0 + 800) << "a redelivery: the end of the nack's delay";
}

TEST_F(SdkTest, WorkerRunsHandlersAtConcurrencyNNeverTheSameTaskTwiceAtOnce) {
  constexpr int kTasks = 40, kConcurrency = 4;
  {
    sdk::Producer producer(ProducerOptions());
    std::vector<sdk::NewTask> batch;
    for (int i = 0; i < kTasks; ++i) {
      batch.push_back({.topic = "work", .payload = std::to_string(i)});
    }
    for (const auto& r : producer.EnqueueBatch(batch)) ASSERT_TRUE(r.ok());
  }
  std::mutex mu;
  std::condition_variable cv;
  std::set<std::string> running;
  std::multiset<std::string> done;
  size_t max_running = 0;
  bool overlap = false;

  auto options = WorkerOptions({"work"});
  options.concurrency = kConcurrency;
  sdk::Worker worker(options);
  worker.Handle("", [&](TaskContext& task) {
    std::unique_lock lock(mu);
    if (!running.insert(task.id()).second) overlap = true;
    max_running = std::max(max_running, running.size());
    cv.notify_all();
    // The first handlers wait for each other, so all N really run at once.
    cv.wait_for(lock, 20s, [&] { return max_running >= kConcurrency; });
    running.erase(task.id());
    done.insert(task.id());
    return Outcome::Success("ok " + task.payload());
  });
  worker.Start();
  ASSERT_TRUE(Eventually([&] { return worker.stats().succeeded == kTasks; }))
      << worker.stats().succeeded;
  worker.Stop();
  std::lock_guard lock(mu);
  EXPECT_FALSE(overlap);
  EXPECT_EQ(max_running, static_cast<size_t>(kConcurrency));
  EXPECT_EQ(done.size(), static_cast<size_t>(kTasks));
  EXPECT_EQ(std::set<std::string>(done.begin(), done.end()).size(),
            static_cast<size_t>(kTasks))
      << "each task ran once";
  EXPECT_EQ(worker.stats().fetched, static_cast<uint64_t>(kTasks));
  EXPECT_TRUE(DrainNow("work").empty()) << "all acked";
}

TEST_F(SdkTest, HeartbeatsKeepATaskThatRunsLongerThanItsLease) {
  ASSERT_TRUE(client_->EnqueueOne(kNs, "long", {.lease_ms = 3000}).ok());
  auto options = WorkerOptions({"long"});
  options.concurrency = 1;
  options.lease_extension = Millis(3000);
  options.heartbeat_interval = Millis(1000);
  sdk::Worker worker(options);
  Gate started, release;
  std::atomic<int> runs{0};
  std::atomic<bool> was_cancelled{false};
  worker.Handle("", [&](TaskContext& task) {
    ++runs;
    started.Open();
    EXPECT_TRUE(release.Pass());
    was_cancelled = task.cancelled();
    return Outcome::Success();
  });
  worker.Start();
  ASSERT_TRUE(started.Pass());

  // 12 s of server time: four times the original lease.
  for (uint64_t beat = 1; beat <= 12; ++beat) {
    Advance(Millis(1000));
    ASSERT_TRUE(Eventually([&] { return worker.stats().extends_ok >= beat; }))
        << "heartbeat " << beat;
  }
  EXPECT_TRUE(client_->Dequeue(kNs, "long", 10).empty()) << "still leased to the worker";
  release.Open();
  ASSERT_TRUE(Eventually([&] { return worker.stats().succeeded == 1; }));
  worker.Stop();
  EXPECT_EQ(runs.load(), 1);
  EXPECT_FALSE(was_cancelled.load());
  EXPECT_EQ(worker.stats().lease_lost, 0u);
}

TEST_F(SdkTest, ARedeliveryToTheSameWorkerFlagsTheOldDeliveryLost) {
  ASSERT_TRUE(client_->EnqueueOne(kNs, "lost", {.lease_ms = 3000}).ok());
  Flagged seen;
  auto worker = StartFlagWaiter("lost", seen);
  // Only the server's time moves: the lease runs out before any heartbeat, and the
  // item is delivered again -- to this worker's own parked long poll.
  server_clock_.Advance(Duration(3000));
  ASSERT_TRUE(Eventually([&] { return worker->stats().fetched == 2; }));
  auto f = seen.reason.get_future();
  ASSERT_EQ(f.wait_for(30s), std::future_status::ready);
  EXPECT_EQ(f.get(), sdk::StopReason::kLeaseLost);
  ASSERT_TRUE(Eventually([&] { return worker->stats().succeeded == 1; }))
      << "the second delivery ran and was acked";
  worker->Stop();
  auto stats = worker->stats();
  EXPECT_EQ(stats.succeeded, 1u) << "no ack with the lost lease";
  EXPECT_EQ(stats.lease_lost, 1u);
  EXPECT_EQ(stats.started, 2u);
}

TEST_F(SdkTest, HeartbeatFindsALostLeaseAndFlagsTheRunningTask) {
  ASSERT_TRUE(client_->EnqueueOne(kNs, "lost", {.priority = 0, .lease_ms = 3000}).ok());
  ASSERT_TRUE(client_->EnqueueOne(kNs, "lost", {.priority = 1, .lease_ms = 60'000}).ok());
  auto options = WorkerOptions({"lost"});
  options.concurrency = 1;
  options.buffer_size = 1;  // the second item fills the buffer: no poll is parked
  options.lease_extension = Millis(60'000);
  options.heartbeat_interval = Millis(1000);
  sdk::Worker worker(options);
  Gate started;
  std::promise<sdk::StopReason> reason;
  worker.Handle("", [&](TaskContext& task) {
    if (task.priority() == 1) return Outcome::Success("the buffered one");
    started.Open();
    task.WaitCancelled(Millis(3'600'000));  // an hour on the SDK clock
    reason.set_value(task.stop_reason());
    return Outcome::Success("too late");
  });
  worker.Start();
  ASSERT_TRUE(started.Pass());
  ASSERT_TRUE(Eventually([&] { return worker.stats().buffered == 1; }));
  // Only the server's time moves: the first lease runs out before any heartbeat and
  // someone else takes the item.
  server_clock_.Advance(Duration(3000));
  std::vector<v1::DequeuedItem> stolen;
  ASSERT_TRUE(Eventually([&] {
    stolen = client_->Dequeue(kNs, "lost", 1);
    return !stolen.empty();
  }));
  EXPECT_EQ(stolen[0].attempts(), 2u);
  EXPECT_EQ(stolen[0].priority(), 0);
  sdk_clock_.Advance(Millis(1000));  // the next heartbeat learns the lease is gone
  auto f = reason.get_future();
  ASSERT_EQ(f.wait_for(30s), std::future_status::ready);
  EXPECT_EQ(f.get(), sdk::StopReason::kLeaseLost);
  ASSERT_TRUE(Eventually([&] { return worker.stats().succeeded == 1; }));
  worker.Stop();
  auto stats = worker.stats();
  EXPECT_EQ(stats.succeeded, 1u) << "only the buffered one: no ack with a lost lease";
  EXPECT_EQ(stats.lease_lost, 1u);
  EXPECT_EQ(client_->Ack(stolen[0].id(), stolen[0].lease_token()), grpc::StatusCode::OK)
      << "the new holder is unaffected";
}

TEST_F(SdkTest, ALeaseThatRunsOutWhileTheServerIsOutOfReachFlagsItsTask) {
  ASSERT_TRUE(client_->EnqueueOne(kNs, "cut", {.lease_ms = 3000}).ok());
  Flagged seen;
  auto worker = StartFlagWaiter("cut", seen);
  StopServer();
  // Only the SDK's clock moves, past the lease's end: no heartbeat can reach the
  // server, so the worker alone must tell that the task may now run elsewhere.
  sdk_clock_.Advance(Millis(3000));
  auto f = seen.reason.get_future();
  ASSERT_EQ(f.wait_for(30s), std::future_status::ready);
  EXPECT_EQ(f.get(), sdk::StopReason::kLeaseLost);
  worker->Stop();
  EXPECT_EQ(worker->stats().lease_lost, 1u);
  EXPECT_EQ(worker->stats().succeeded, 0u) << "no outcome sent with a lost lease";

  StartServer();
  server_clock_.Advance(Duration(3000));
  std::vector<v1::DequeuedItem> again;
  ASSERT_TRUE(Eventually([&] {
    again = client_->Dequeue(kNs, "cut", 10);
    return !again.empty();
  })) << "delivered again after its lease, as at-least-once says";
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0].attempts(), 2u);
}

TEST_F(SdkTest, AHeartbeatRenewsALeaseShorterThanItsInterval) {
  // Enqueued with a 3 s lease; the worker beats every 10 s (its 30 s extension / 3).
  ASSERT_TRUE(client_->EnqueueOne(kNs, "short", {.lease_ms = 3000}).ok());
  auto options = WorkerOptions({"short"});
  options.concurrency = 1;
  sdk::Worker worker(options);
  Gate started, release;
  worker.Handle("", [&](TaskContext&) {
    started.Open();
    EXPECT_TRUE(release.Pass());
    return Outcome::Success();
  });
  worker.Start();
  ASSERT_TRUE(started.Pass());
  // Two thirds into its lease, long before the next beat, the lease is extended.
  Advance(Millis(2000));
  ASSERT_TRUE(Eventually([&] { return worker.stats().extends_ok >= 1; }));
  Advance(Millis(2000));  // past the lease it was enqueued with
  EXPECT_TRUE(client_->Dequeue(kNs, "short", 10).empty()) << "still the worker's";
  release.Open();
  ASSERT_TRUE(Eventually([&] { return worker.stats().succeeded == 1; }));
  worker.Stop();
  EXPECT_EQ(worker.stats().lease_lost, 0u);
  EXPECT_EQ(worker.stats().started, 1u);
}

TEST_F(SdkTest, ARenewalRightAfterABeatIsNotHeldBack) {
  ASSERT_TRUE(client_->EnqueueOne(kNs, "brief", {.lease_ms = 3000}).ok());
  auto options = WorkerOptions({"brief"});
  options.concurrency = 2;
  sdk::Worker worker(options);
  std::atomic<int> started{0};
  Gate release;
  worker.Handle("", [&](TaskContext&) {
    ++started;
    EXPECT_TRUE(release.Pass());
    return Outcome::Success();
  });
  worker.Start();
  ASSERT_TRUE(Eventually([&] { return started.load() == 1; }));
  Advance(Millis(2000));  // the first task's renewal: a beat
  ASSERT_TRUE(Eventually([&] { return worker.stats().extends_ok == 1; }));
  // Right after that beat comes a task with a 900 ms lease: its renewal is due in
  // 600 ms, before its lease ends, whatever the last beat was.
  ASSERT_TRUE(client_->EnqueueOne(kNs, "brief", {.lease_ms = 900}).ok());
  ASSERT_TRUE(Eventually([&] { return started.load() == 2; }));
  Advance(Millis(600));
  ASSERT_TRUE(Eventually([&] { return worker.stats().extends_ok >= 2; }));
  Advance(Millis(400));  // past the 900 ms it came with
  release.Open();
  ASSERT_TRUE(Eventually([&] { return worker.stats().succeeded == 2; }));
  worker.Stop();
  EXPECT_EQ(worker.stats().lease_lost, 0u);
}

TEST_F(SdkTest, ALongPollDoesNotMakeALiveLeaseLookLost) {
  auto options = WorkerOptions({"parked"});  // long polls of 60 s (server time)
  sdk::Worker worker(options);
  std::atomic<int> ran{0};
  worker.Handle("", [&](TaskContext&) {
    ++ran;
    return Outcome::Success();
  });
  worker.Start();
  ASSERT_TRUE(client_->EnqueueOne(kNs, "parked", 0).ok());
  ASSERT_TRUE(Eventually([&] { return worker.stats().succeeded == 1; }));
  // A poll is parked now (a controller asks again as soon as it has an answer, for
  // the free slots). 50 s pass on both clocks before the next item comes, with a 30 s
  // lease: it is granted when it arrives, not when the poll was sent.
  Advance(Millis(50'000));
  ASSERT_TRUE(client_->EnqueueOne(kNs, "parked", {.lease_ms = 30'000}).ok());
  ASSERT_TRUE(Eventually([&] { return worker.stats().succeeded == 2; }));
  worker.Stop();
  EXPECT_EQ(ran.load(), 2);
  EXPECT_EQ(worker.stats().lease_lost, 0u);
}

TEST_F(SdkTest, ABufferedTaskWhoseLeaseRanOutIsNotStarted) {
  ASSERT_TRUE(
      client_->EnqueueOne(kNs, "stale", {.priority = 0, .lease_ms = 60'000}).ok());
  ASSERT_TRUE(client_->EnqueueOne(kNs, "stale", {.priority = 1, .lease_ms = 3000}).ok());
  auto options = WorkerOptions({"stale"});
  options.concurrency = 1;
  options.buffer_size = 1;
  options.heartbeat_interval = Millis(60'000);
  sdk::Worker worker(options);
  Gate first_started, release;
  std::mutex mu;
  std::vector<uint32_t> second_attempts;
  worker.Handle("", [&](TaskContext& task) {
    if (task.priority() == 1) {
      std::lock_guard lock(mu);
      second_attempts.push_back(task.attempt());
      return Outcome::Success();
    }
    first_started.Open();
    EXPECT_TRUE(release.Pass());
    return Outcome::Success();
  });
  worker.Start();
  ASSERT_TRUE(first_started.Pass());
  ASSERT_TRUE(Eventually([&] { return worker.stats().buffered == 1; }));
  // The buffered task's lease runs out while it waits for the busy executor: one
  // step to its end (a deadline at or before now has passed, on both sides), as if
  // the heartbeat's renewal at 2 s had not got through.
  Advance(Millis(3000));
  ASSERT_TRUE(Eventually([&] { return worker.stats().lease_lost == 1; }));
  release.Open();
  // The server delivers it again after its lease, and only that delivery runs.
  ASSERT_TRUE(Eventually([&] { return worker.stats().succeeded == 2; }));
  worker.Stop();
  std::lock_guard lock(mu);
  EXPECT_EQ(second_attempts, std::vector<uint32_t>{2});
}

TEST_F(SdkTest, AHandlerCanStopItsOwnWorker) {
  ASSERT_TRUE(client_->EnqueueOne(kNs, "once", 0).ok());
  ASSERT_TRUE(client_->EnqueueOne(kNs, "once", 1).ok());
  auto options = WorkerOptions({"once"});
  options.concurrency = 1;
  options.buffer_size = 1;
  sdk::Worker worker(options);
  std::atomic<int> runs{0};
  Gate buffered;
  worker.Handle("", [&](TaskContext&) {
    ++runs;
    EXPECT_TRUE(buffered.Pass());
    worker.Stop();  // e.g. a run-once job: returns at once, the shutdown goes on
    worker.Wait();  // returns at once in a handler (the shutdown waits for it)
    return Outcome::Success("first");
  });
  worker.Start();
  // The other item is in the buffer (not on its way in a Dequeue that Stop cuts).
  ASSERT_TRUE(Eventually([&] {
    auto s = worker.stats();
    return s.fetched == 2 && s.buffered == 1;
  }));
  buffered.Open();
  auto waited = std::async(std::launch::async, [&] { worker.Wait(); });
  ASSERT_EQ(waited.wait_for(30s), std::future_status::ready)
      << "the shutdown a handler began finished by itself";
  EXPECT_EQ(runs.load(), 1);
  EXPECT_EQ(worker.stats().succeeded, 1u) << "the stopping handler's outcome was sent";
  auto left = DrainNow("once");
  ASSERT_EQ(left.size(), 1u) << "the other one was handed back or never fetched";
  EXPECT_EQ(left[0].priority(), 1);
  worker.Stop();  // a second Stop, after the handler's: returns once all is done
  EXPECT_EQ(worker.stats().handed_back, 1u);
}

TEST_F(SdkTest, RetriesWithBackoffThenSucceeds) {
  ASSERT_TRUE(client_->EnqueueOne(kNs, "retry", 0).ok());
  auto options = WorkerOptions({"retry"});
  options.concurrency = 1;
  sdk::Worker worker(options);
  std::mutex mu;
  std::vector<uint32_t> attempts;
  worker.Handle(
      "",
      [&](TaskContext& task) {
        {
          std::lock_guard lock(mu);
          attempts.push_back(task.attempt());
        }
        if (task.attempt() == 1) return Outcome::Retry("first try fails");
        if (task.attempt() == 2) throw std::runtime_error("second try throws");
        return Outcome::Success("third time lucky");
      },
      sdk::HandlerOptions{.retry_backoff = {.base = Millis(1000), .cap = Millis(1000)}});
  worker.Start();
  for (uint64_t n = 1; n <= 2; ++n) {
    ASSERT_TRUE(Eventually([&] { return worker.stats().retried == n; })) << n;
    // The delay is uniform in [0, 1000]: after 1000 ms the item is due again.
    Advance(Millis(1000));
  }
  ASSERT_TRUE(Eventually([&] { return worker.stats().succeeded == 1; }));
  worker.Stop();
  std::lock_guard lock(mu);
  EXPECT_EQ(attempts, (std::vector<uint32_t>{1, 2, 3}));
  EXPECT_TRUE(DrainNow("retry").empty());
}

// Max attempts, then a dead letter; an operator redrives it and it then succeeds.
TEST_F(SdkTest, MaxAttemptsThenDeadLetterThenRedriveThenSuccess) {
  sdk::Producer producer(ProducerOptions());
  auto enqueued = producer.Enqueue({.topic = "dlq", .payload = "x", .max_attempts = 2});
  ASSERT_TRUE(enqueued.ok()) << enqueued.status.error_message();
  auto options = WorkerOptions({"dlq"});
  options.concurrency = 1;
  sdk::Worker worker(options);
  std::atomic<bool> fixed{false};
  worker.Handle(
      "",
      [&](TaskContext&) {
        return fixed ? Outcome::Success("ok") : Outcome::Retry("downstream is down");
      },
      sdk::HandlerOptions{.retry_backoff = {.base = Millis(1000), .cap = Millis(1000)}});
  worker.Start();
  ASSERT_TRUE(Eventually([&] { return worker.stats().retried == 1; }));
  Advance(Millis(1000));  // the backoff passes; the second (last) attempt runs
  ASSERT_TRUE(Eventually([&] { return worker.stats().retried == 2; }));

  auto task = [&] { return client_->GetTask(enqueued.id); };
  ASSERT_TRUE(Eventually([&] { return task().state() == v1::DEAD_LETTERED; }));
  EXPECT_EQ(task().last_error(), "downstream is down");

  fixed = true;
  EXPECT_EQ(client_->Redrive(kNs, "dlq").redriven(), 1u);
  ASSERT_TRUE(Eventually([&] { return worker.stats().succeeded == 1; }));
  worker.Stop();
  EXPECT_EQ(task().state(), v1::SUCCEEDED);
  EXPECT_EQ(task().result(), "ok");
}

TEST_F(SdkTest, FatalOutcomeIsNotRetried) {
  ASSERT_TRUE(client_->EnqueueOne(kNs, "fatal", 0).ok());
  auto options = WorkerOptions({"fatal"});
  sdk::Worker worker(options);
  std::atomic<int> runs{0};
  worker.Handle("", [&](TaskContext&) {
    ++runs;
    return Outcome::Fatal("bad payload");
  });
  worker.Start();
  ASSERT_TRUE(Eventually([&] { return worker.stats().failed == 1; }));
  Advance(Millis(10 * 60'000));  // well past any retry backoff
  worker.Stop();
  EXPECT_EQ(runs.load(), 1);
}

TEST_F(SdkTest, RoutesByTaskType) {
  sdk::Producer producer(ProducerOptions());
  for (const char* type : {"resize", "email", "", "unknown"}) {
    ASSERT_TRUE(
        producer.Enqueue({.topic = "types", .payload = type, .task_type = type}).ok());
  }
  std::mutex mu;
  std::map<std::string, std::string> ran;  // payload -> handler
  auto record = [&](const char* handler) {
    return [&, handler](TaskContext& task) {
      std::lock_guard lock(mu);
      EXPECT_EQ(task.task_type(), task.payload());
      ran[task.payload()] = handler;
      return Outcome::Success();
    };
  };
  sdk::Worker worker(WorkerOptions({"types"}));
  worker.Handle("resize", record("resize"))
      .Handle("email", record("email"))
      .Handle("", record("untyped"))
      .HandleOther(record("other"));
  worker.Start();
  ASSERT_TRUE(Eventually([&] { return worker.stats().succeeded == 4; }));
  worker.Stop();
  std::lock_guard lock(mu);
  EXPECT_EQ(ran, (std::map<std::string, std::string>{{"resize", "resize"},
                                                     {"email", "email"},
                                                     {"", "untyped"},
                                                     {"unknown", "other"}}));
}

// A fetch of many of the largest items is one answer of several MB, more than gRPC's
// default 4 MB a message: the SDK's channel takes what the server may send.
TEST_F(SdkTest, AWorkerTakesAFetchOfManyOfTheLargestItems) {
  // 600 payloads of 10 KiB: the first fetch takes what the server's index holds
  // ready (512 a shard and topic), an answer of over 5 MB.
  constexpr int kItems = 600;
  sdk::Producer producer(ProducerOptions());
  std::vector<sdk::NewTask> tasks(
      kItems, sdk::NewTask{.topic = "large", .payload = std::string(10 * 1024, 'p')});
  for (const auto& r : producer.EnqueueBatch(tasks)) ASSERT_TRUE(r.ok());
  auto options = WorkerOptions({"large"});
  options.buffer_size = kItems;
  sdk::Worker worker(options);
  worker.Handle("", [](TaskContext&) { return Outcome::Success(); });
  worker.Start();
  EXPECT_TRUE(Eventually([&] { return worker.stats().succeeded == kItems; }))
      << worker.stats().succeeded << " of " << kItems;
  worker.Stop();
}

TEST_F(SdkTest, WorkerAsksAgainWhileItsFirstAskIsStillOpen) {
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(client_->EnqueueOne(kNs, "refill", i).ok());
  auto options = WorkerOptions({"refill"});
  options.concurrency = 2;
  options.buffer_size = 4;
  sdk::Worker worker(options);
  Gate release;
  worker.Handle("", [&](TaskContext&) {
    EXPECT_TRUE(release.Pass());
    return Outcome::Success();
  });
  worker.Start();
  // The first ask took all 4; 2 run and 2 wait in the buffer, so 2 slots are free and
  // a controller asks for them: the topic is empty, so that ask parks.
  ASSERT_TRUE(Eventually([&] {
    auto s = worker.stats();
    return s.fetched == 4 && s.running == 2 && s.buffered == 2 &&
           server_->engine().ParkedCalls() == 1;
  }));
  // The handlers finish and the executors take the buffered 2: the buffer is empty,
  // 2 slots are asked for by the parked call, and the other 2 by a second one.
  release.Open();
  ASSERT_TRUE(Eventually([&] { return worker.stats().succeeded == 4; }));
  ASSERT_TRUE(Eventually([&] { return server_->engine().ParkedCalls() == 2; }));
  // New tasks go to both open asks.
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(client_->EnqueueOne(kNs, "refill", i).ok());
  ASSERT_TRUE(Eventually([&] { return worker.stats().succeeded == 8; }));
  EXPECT_EQ(worker.stats().fetched, 8u);
  worker.Stop();
}

// Handlers that finish before a fetch comes back: the worker fetches further ahead,
// within max_buffer_size (FetchWindow; its steps are in fetch_window_test.cc).
TEST_F(SdkTest, FastHandlersGrowTheFetchWindowWithinItsMaximum) {
  constexpr int kItems = 1000;
  sdk::Producer producer(ProducerOptions());
  std::vector<sdk::NewTask> tasks(kItems, sdk::NewTask{.topic = "fast", .payload = "p"});
  for (const auto& r : producer.EnqueueBatch(tasks)) ASSERT_TRUE(r.ok());
  auto options = WorkerOptions({"fast"});
  options.concurrency = 2;
  options.buffer_size = 2;
  options.max_buffer_size = 16;
  sdk::Worker worker(options);
  std::atomic<size_t> widest{0}, most_buffered{0};
  auto raise = [](std::atomic<size_t>& peak, size_t value) {
    size_t seen = peak.load();
    while (value > seen && !peak.compare_exchange_weak(seen, value)) {
    }
  };
  worker.Handle("", [&](TaskContext&) {
    const sdk::WorkerStats s = worker.stats();
    raise(widest, s.window);
    raise(most_buffered, s.buffered);
    return Outcome::Success();
  });
  worker.Start();
  ASSERT_TRUE(Eventually([&] { return worker.stats().succeeded == kItems; }))
      << worker.stats().succeeded << " of " << kItems;
  worker.Stop();
  EXPECT_GT(widest.load(), 2u) << "the window grew past buffer_size";
  EXPECT_LE(widest.load(), 16u) << "and not past max_buffer_size";
  // Not just the number: only a wider window fetches more than 2 ahead.
  EXPECT_GT(most_buffered.load(), 2u);
  EXPECT_LE(most_buffered.load(), 16u);
}

// Handlers slower than the fetches (here: held) find tasks waiting whenever they
// finish, so the window stays at buffer_size, and a worker holds no more unstarted
// tasks than asked. Also after an idle spell: executors idle because the topic ran
// dry did not wait on a fetch, so the burst that ends it does not grow the window.
TEST_F(SdkTest, HeldHandlersKeepTheFetchWindowAtBufferSizeAfterAnIdleSpell) {
  auto options = WorkerOptions({"held"});
  options.concurrency = 2;
  options.buffer_size = 4;  // max_buffer_size 0: it could grow to 32
  sdk::Worker worker(options);
  std::atomic<bool> hold{false};
  Gate release;
  worker.Handle("", [&](TaskContext&) {
    if (hold.load()) {
      EXPECT_TRUE(release.Pass());
    }
    return Outcome::Success();
  });
  worker.Start();
  // The idle spell: two tasks run at once, then the topic is empty and an ask parks.
  for (int i = 0; i < 2; ++i) ASSERT_TRUE(client_->EnqueueOne(kNs, "held", i).ok());
  ASSERT_TRUE(Eventually([&] {
    return worker.stats().succeeded == 2 && server_->engine().ParkedCalls() >= 1;
  }));
  // A burst (one call, so what is parked is answered in full) while the handlers are
  // held: the executors take 2 tasks, and the buffer fills again (to 3 or 4: a
  // controller asks once half the window is free).
  hold = true;
  sdk::Producer producer(ProducerOptions());
  std::vector<sdk::NewTask> burst(20, sdk::NewTask{.topic = "held", .payload = "p"});
  for (const auto& r : producer.EnqueueBatch(burst)) ASSERT_TRUE(r.ok());
  ASSERT_TRUE(Eventually([&] {
    auto s = worker.stats();
    return s.running == 2 && s.buffered >= 3;
  }));
  // The burst's first answer was full: a window grown by it would be 8 by now.
  EXPECT_EQ(worker.stats().window, 4u);
  EXPECT_LE(worker.stats().fetched, 2u + 2u + 4u) << "2 run before, 2 run, 4 at most";
  release.Open();
  ASSERT_TRUE(Eventually([&] { return worker.stats().succeeded == 22; }));
  worker.Stop();
}

TEST_F(SdkTest, GracefulStopHandsBackBufferedTasksAtOnce) {
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(client_->EnqueueOne(kNs, "stop", i).ok());
  auto options = WorkerOptions({"stop"});
  options.concurrency = 1;
  options.buffer_size = 3;
  sdk::Worker worker(options);
  Gate started, release;
  std::atomic<int> runs{0};
  worker.Handle("", [&](TaskContext&) {
    ++runs;
    started.Open();
    EXPECT_TRUE(release.Pass());
    return Outcome::Success();
  });
  worker.Start();
  ASSERT_TRUE(started.Pass());
  // The first fetch took 3; one runs, and the buffer (2 > 3 / 2) is not refilled yet.
  ASSERT_TRUE(Eventually([&] {
    auto s = worker.stats();
    return s.running == 1 && s.buffered == 2 && s.fetched == 3;
  }));

  auto stopped = std::async(std::launch::async, [&] { worker.Stop(Millis(60'000)); });
  ASSERT_TRUE(Eventually([&] { return worker.stats().handed_back == 2; }));
  // No time moved: the handed-back tasks are ready again right away, beside the one
  // never fetched.
  auto back = client_->Dequeue(kNs, "stop", 10);
  ASSERT_EQ(back.size(), 3u);
  std::multiset<uint32_t> attempts;
  for (const auto& d : back) attempts.insert(d.attempts());
  EXPECT_EQ(attempts, (std::multiset<uint32_t>{1, 2, 2}));
  EXPECT_EQ(stopped.wait_for(0s), std::future_status::timeout)
      << "Stop waits for the running handler";
  release.Open();
  stopped.get();
  EXPECT_EQ(runs.load(), 1);
  EXPECT_EQ(worker.stats().succeeded, 1u) << "the running task's outcome was reported";
}

TEST_F(SdkTest, StopTimeoutCancelsRunningHandlersAndReportsThem) {
  // A lease far longer than the SDK time this test lets pass: only Stop ends the task.
  ASSERT_TRUE(client_->EnqueueOne(kNs, "slow", {.lease_ms = 3'600'000}).ok());
  auto options = WorkerOptions({"slow"});
  options.concurrency = 1;
  sdk::Worker worker(options);
  Gate started;
  std::atomic<sdk::StopReason> reason{sdk::StopReason::kNone};
  worker.Handle("", [&](TaskContext& task) {
    started.Open();
    task.WaitCancelled(Millis(3'600'000));
    reason = task.stop_reason();
    return Outcome::Retry("interrupted", Millis(0));
  });
  worker.Start();
  ASSERT_TRUE(started.Pass());
  auto stopped = std::async(std::launch::async, [&] { worker.Stop(Millis(5000)); });
  // Stop's timeout runs on the SDK clock.
  ASSERT_TRUE(Eventually([&] {
    sdk_clock_.Advance(Millis(5000));
    return stopped.wait_for(1ms) == std::future_status::ready;
  }));
  EXPECT_EQ(reason.load(), sdk::StopReason::kShutdown);
  EXPECT_EQ(worker.stats().retried, 1u);
  EXPECT_EQ(client_->Dequeue(kNs, "slow", 10).size(), 1u) << "nacked with delay 0";
}

TEST_F(SdkTest, WorkerResumesByItselfAfterAServerRestart) {
  auto options = WorkerOptions({"restart"});
  options.reconnect_backoff = {.base = Millis(100), .cap = Millis(1000)};
  sdk::Worker worker(options);
  std::atomic<int> handled{0};
  worker.Handle("", [&](TaskContext&) {
    ++handled;
    return Outcome::Success();
  });
  worker.Start();
  ASSERT_TRUE(client_->EnqueueOne(kNs, "restart", 0).ok());
  ASSERT_TRUE(Eventually([&] { return worker.stats().succeeded == 1; }));

  StopServer();
  ASSERT_TRUE(Eventually([&] { return worker.stats().backing_off; }))
      << "the worker noticed the server is gone";
  uint64_t errors = worker.stats().dequeue_errors;
  // While it is down, the worker retries only when its backoff (SDK clock) says so.
  for (int i = 0; i < 3; ++i) {
    sdk_clock_.Advance(Millis(1000));
    ASSERT_TRUE(Eventually([&] {
      auto s = worker.stats();
      return s.backing_off && s.dequeue_errors > errors;
    }));
    errors = worker.stats().dequeue_errors;
  }

  StartServer();
  ASSERT_TRUE(client_->EnqueueOne(kNs, "restart", 0).ok());
  ASSERT_TRUE(Eventually([&] {
    if (worker.stats().backing_off) sdk_clock_.Advance(Millis(1000));
    return worker.stats().succeeded == 2;
  })) << "resumed without help";
  worker.Stop();
  EXPECT_EQ(handled.load(), 2);
}

TEST_F(SdkTest, AnExecutorRunsItsNextTaskWhileThePreviousOutcomeIsStillBeingSent) {
  ASSERT_TRUE(client_->EnqueueOne(kNs, "async", 0).ok());
  ASSERT_TRUE(client_->EnqueueOne(kNs, "async", 0).ok());
  auto options = WorkerOptions({"async"});
  options.concurrency = 1;
  options.buffer_size = 2;
  options.reconnect_backoff = {.base = Millis(100), .cap = Millis(1000)};
  sdk::Worker worker(options);
  Gate first_may_finish;
  std::atomic<int> handled{0};
  std::atomic<int64_t> acked_when_second_started{-1};
  worker.Handle("", [&](TaskContext&) {
    if (handled.fetch_add(1) == 0) {
      EXPECT_TRUE(first_may_finish.Pass());
    } else {
      acked_when_second_started = static_cast<int64_t>(worker.stats().succeeded);
    }
    return Outcome::Success();
  });
  worker.Start();
  ASSERT_TRUE(Eventually([&] {
    auto s = worker.stats();
    return s.fetched == 2 && s.started == 1;
  }));
  StopServer();  // the first task's Ack cannot be sent now
  first_may_finish.Open();
  ASSERT_TRUE(Eventually([&] { return acked_when_second_started.load() >= 0; }))
      << "the only executor went on to the second task";
  EXPECT_EQ(acked_when_second_started.load(), 0) << "before the first Ack went through";
  EXPECT_EQ(worker.stats().succeeded, 0u);
  EXPECT_EQ(worker.stats().running, 2u) << "both leases are still held and extended";

  StartServer();
  ASSERT_TRUE(Eventually([&] {
    sdk_clock_.Advance(Millis(100));  // the reporter's backoff runs on the SDK clock
    return worker.stats().succeeded == 2;
  })) << "both outcomes sent once the server is back";
  worker.Stop();
  EXPECT_EQ(worker.stats().report_errors, 0u);
  EXPECT_TRUE(DrainNow("async").empty()) << "both acked, none redelivered";
}

// Millis::max() as a deadline or a wait means "as long as it takes". On the real clock
// (time since boot) adding it overflowed: the call failed at once, and WaitCancelled
// returned at once, as if its time were up.
TEST_F(SdkTest, AnEndlessDeadlineOrWaitDoesNotOverflowOnTheRealClock) {
  EXPECT_EQ(sdk::Bounded(Millis::max()), sdk::kLongestWait);
  EXPECT_EQ(sdk::Bounded(Millis(-1)), Millis(0));
  EXPECT_EQ(sdk::Bounded(Millis(5)), Millis(5));

  auto producer_options = ProducerOptions();
  producer_options.clock = nullptr;  // the real clock
  sdk::Producer producer(producer_options);
  auto r = producer.Enqueue({.topic = "endless", .payload = "p", .task_type = "t"},
                            {.deadline = Millis::max()});
  ASSERT_TRUE(r.ok()) << r.status.error_message();

  auto options = WorkerOptions({"endless"});
  options.clock = nullptr;
  sdk::Worker worker(options);
  Gate started;
  std::promise<bool> waited;
  worker.Handle("t", [&](TaskContext& task) {
    started.Open();
    waited.set_value(task.WaitCancelled(Millis::max()));  // until the stop below
    return Outcome::Success();
  });
  worker.Start();
  ASSERT_TRUE(started.Pass());
  worker.Stop(Millis(0));  // flags the running handler at once
  auto f = waited.get_future();
  ASSERT_EQ(f.wait_for(30s), std::future_status::ready);
  EXPECT_TRUE(f.get()) << "WaitCancelled returned before the stop";
}

// Outcomes beyond the server's limits are brought within them, not refused: a
// refused ack or nack would leave the task to run again and again until dead-lettered.
TEST_F(SdkTest, AnOversizedResultIsCutAndANegativeRetryDelayIsNone) {
  sdk::Producer producer(ProducerOptions());
  auto big = producer.Enqueue({.topic = "limits", .payload = "big", .task_type = "t"});
  auto again =
      producer.Enqueue({.topic = "limits", .payload = "again", .task_type = "t"});
  ASSERT_TRUE(big.ok() && again.ok());
  sdk::Worker worker(WorkerOptions({"limits"}));
  std::atomic<int> again_runs{0};
  worker.Handle("t", [&](TaskContext& task) {
    if (task.payload() == "big") return Outcome::Success(std::string(5000, 'r'));
    if (again_runs.fetch_add(1) == 0) return Outcome::Retry("once more", Millis(-5));
    return Outcome::Success();
  });
  worker.Start();
  ASSERT_TRUE(Eventually([&] { return worker.stats().succeeded == 2; }));
  worker.Stop();
  v1::Task t = client_->GetTask(big.id);
  EXPECT_EQ(t.state(), v1::SUCCEEDED);
  EXPECT_EQ(t.result(), std::string(4096, 'r'));
  EXPECT_EQ(client_->GetTask(again.id).state(), v1::SUCCEEDED);
  EXPECT_EQ(again_runs.load(), 2);
  EXPECT_EQ(worker.stats().report_errors, 0u);
}

// An error text that is not UTF-8 (here an exception's) made the Nack unreadable to
// the server, which ended the stream of reports: the task was never retried.
TEST_F(SdkTest, AnErrorTextThatIsNotUtf8IsMadeValidAndTheTaskRetried) {
  sdk::Producer producer(ProducerOptions());
  auto task = producer.Enqueue({.topic = "bad-error", .payload = "p"});
  ASSERT_TRUE(task.ok()) << task.status.error_message();
  sdk::Worker worker(WorkerOptions({"bad-error"}));
  worker.Handle("", [](TaskContext& task) {
    if (task.attempt() == 1) throw std::runtime_error("bad \xff");
    return Outcome::Success();
  });
  worker.Start();
  ASSERT_TRUE(Eventually([&] {
    auto s = worker.stats();
    return s.retried == 1 || s.report_errors > 0;
  }));
  worker.Stop(Millis(0));
  EXPECT_EQ(worker.stats().retried, 1u);
  EXPECT_EQ(worker.stats().report_errors, 0u);
  EXPECT_EQ(client_->GetTask(task.id).last_error(), "bad \xEF\xBF\xBD");
}

// An error text over the server's 4 KiB is cut by the SDK, between characters: the
// server would cut it too, but a long one made the Nack too big for a message (then
// RESOURCE_EXHAUSTED, retried until report_budget).
TEST_F(SdkTest, AnOversizedErrorTextIsCutBetweenCharacters) {
  sdk::Producer producer(ProducerOptions());
  auto task = producer.Enqueue({.topic = "long-error", .payload = "p"});
  ASSERT_TRUE(task.ok()) << task.status.error_message();
  sdk::Worker worker(WorkerOptions({"long-error"}));
  worker.Handle("", [](TaskContext&) {
    return Outcome::Fatal(std::string(4095, 'e') + "\xC3\xA9" +
                          std::string(17 << 20, 'x'));
  });
  worker.Start();
  const bool failed = Eventually([&] { return worker.stats().failed == 1; });
  worker.Stop(Millis(0));  // a Nack still being retried is given up at once
  EXPECT_TRUE(failed);
  EXPECT_EQ(worker.stats().report_errors, 0u);
  const std::string error = client_->GetTask(task.id).last_error();
  EXPECT_EQ(error.size(), 4095u) << "the e-acute would pass 4096 bytes";
  EXPECT_EQ(error.find_first_not_of('e'), std::string::npos);
}

// A task of `topic` enqueued with `metadata`, whose first attempt runs `first` and
// retries at once: the metadata its second attempt sees, and the worker's stats once
// it succeeded (the worker stopped).
class RetryMetadataTest : public SdkTest {
 protected:
  std::map<std::string, std::string> SecondAttemptsMetadata(
      const std::string& topic, std::map<std::string, std::string> metadata,
      const std::function<void(TaskContext&)>& first, sdk::WorkerStats* stats) {
    sdk::Producer producer(ProducerOptions());
    EXPECT_TRUE(
        producer.Enqueue({.topic = topic, .payload = "p", .metadata = metadata}).ok());
    sdk::Worker worker(WorkerOptions({topic}));
    std::promise<std::map<std::string, std::string>> second;
    worker.Handle("", [&](TaskContext& task) {
      if (task.attempt() == 1) {
        first(task);
        return Outcome::Retry("again", Millis(0));
      }
      second.set_value(task.metadata());
      return Outcome::Success();
    });
    worker.Start();
    auto seen = second.get_future();
    const bool ready = seen.wait_for(30s) == std::future_status::ready;
    EXPECT_TRUE(ready) << "no second attempt";
    EXPECT_TRUE(Eventually([&] { return worker.stats().succeeded == 1; }));
    worker.Stop(Millis(0));
    *stats = worker.stats();
    return ready ? seen.get() : std::map<std::string, std::string>{};
  }
};

// SetRetryMetadata({}) clears the metadata: the Nack carries a set, empty Metadata,
// which replaces the task's (it was sent unset, which keeps it).
TEST_F(RetryMetadataTest, EmptyRetryMetadataClearsTheTasksMetadata) {
  sdk::WorkerStats stats;
  auto seen = SecondAttemptsMetadata(
      "clear", {{"progress", "half"}},
      [](TaskContext& task) {
        EXPECT_EQ(task.metadata().size(), 1u);
        EXPECT_TRUE(task.SetRetryMetadata({}));
      },
      &stats);
  EXPECT_TRUE(seen.empty());
  EXPECT_EQ(stats.retried, 1u);
}

// Retry metadata that is not UTF-8 is refused (the server could not read the Nack);
// the retry goes on with what was set before.
TEST_F(RetryMetadataTest, RetryMetadataThatIsNotUtf8IsRefusedAndTheRetryGoesOn) {
  sdk::WorkerStats stats;
  auto seen = SecondAttemptsMetadata(
      "bad-meta", {{"progress", "none"}},
      [](TaskContext& task) {
        EXPECT_TRUE(task.SetRetryMetadata({{"progress", "half"}}));
        EXPECT_FALSE(task.SetRetryMetadata({{"progress", "\xff"}}));
        EXPECT_FALSE(task.SetRetryMetadata({{"\xff", "half"}}));
      },
      &stats);
  EXPECT_EQ(seen, (std::map<std::string, std::string>{{"progress", "half"}}));
  EXPECT_EQ(stats.retried, 1u);
  EXPECT_EQ(stats.report_errors, 0u);
}

// The worker id is cut to the server's 128 bytes between characters: half an e-acute
// made every Dequeue unreadable to the server.
TEST_F(SdkTest, ALongWorkerIdIsCutBetweenCharacters) {
  sdk::Producer producer(ProducerOptions());
  auto task = producer.Enqueue({.topic = "long-id", .payload = "p"});
  ASSERT_TRUE(task.ok()) << task.status.error_message();
  auto options = WorkerOptions({"long-id"});
  options.worker_id = std::string(127, 'w') + "\xC3\xA9";
  sdk::Worker worker(options);
  worker.Handle("", [](TaskContext&) { return Outcome::Success(); });
  worker.Start();
  ASSERT_TRUE(Eventually([&] { return worker.stats().succeeded == 1; }));
  worker.Stop(Millis(0));
  EXPECT_EQ(worker.worker_id(), std::string(127, 'w'));
  EXPECT_EQ(client_->GetTask(task.id).worker_id(), std::string(127, 'w'));
}

// Millis::max() as the deadline of the worker's calls and as its report budget ("as
// long as it takes") overflowed: every call was DEADLINE_EXCEEDED at once.
TEST_F(SdkTest, AnEndlessRpcDeadlineAndReportBudgetDoNotOverflow) {
  sdk::Producer producer(ProducerOptions());
  ASSERT_TRUE(producer.Enqueue({.topic = "endless-rpc", .payload = "p"}).ok());
  auto options = WorkerOptions({"endless-rpc"});
  options.rpc_deadline = Millis::max();
  options.report_budget = Millis::max();
  sdk::Worker worker(options);
  worker.Handle("", [](TaskContext&) { return Outcome::Success(); });
  worker.Start();
  const bool reported = Eventually([&] {
    auto s = worker.stats();
    return s.succeeded == 1 || s.report_errors > 0;
  });
  worker.Stop(Millis(0));
  EXPECT_TRUE(reported);
  EXPECT_EQ(worker.stats().succeeded, 1u);
  EXPECT_EQ(worker.stats().report_errors, 0u);
}

// An endless heartbeat interval made the next beat overflow into the past (a busy
// loop of ExtendLease calls), and an extension beyond the server's 12 h was refused
// (every lease ran out): both are brought within range. A 3 s lease is then renewed
// once, two thirds into it, by 12 h.
TEST_F(SdkTest, AnEndlessHeartbeatIntervalAndLeaseExtensionAreBroughtWithinRange) {
  sdk::Producer producer(ProducerOptions());
  auto task = producer.Enqueue({.topic = "beat", .payload = "p", .lease = Millis(3000)});
  ASSERT_TRUE(task.ok()) << task.status.error_message();
  auto options = WorkerOptions({"beat"});
  options.concurrency = 1;
  options.heartbeat_interval = Millis::max();
  options.lease_extension = Millis::max();
  sdk::Worker worker(options);
  Gate started;
  std::promise<sdk::StopReason> reason;
  worker.Handle("", [&](TaskContext& task) {
    started.Open();
    task.WaitCancelled(Millis(3'600'000));  // until the stop below
    reason.set_value(task.stop_reason());
    return Outcome::Success();
  });
  worker.Start();
  ASSERT_TRUE(started.Pass());
  Advance(Millis(2000));  // two thirds into the lease: its renewal is due
  const bool renewed = Eventually([&] { return worker.stats().extends_ok >= 1; });
  v1::Task t = client_->GetTask(task.id);
  worker.Stop(Millis(0));  // flags the handler (which would wait an hour) at once
  EXPECT_TRUE(renewed);
  EXPECT_EQ(t.next_at_ms() - t.last_delivered_at_ms(), 2000 + 12 * 3600 * 1000)
      << "the lease now ends 12 h after the renewal";
  auto stopped = reason.get_future();
  ASSERT_EQ(stopped.wait_for(30s), std::future_status::ready);
  EXPECT_EQ(stopped.get(), sdk::StopReason::kShutdown);
  EXPECT_EQ(worker.stats().extends_ok, 1u) << "the next renewal is 8 h away";
  EXPECT_EQ(worker.stats().lease_lost, 0u);
}

// Needs the server's task lifecycle (issue #3): GetTask, results, errors, worker ids,
// CancelTask's cancel_requested.
TEST_F(SdkTest, LifecycleResultErrorWorkerIdAndCancellationReachTheServer) {
  sdk::Producer producer(ProducerOptions());
  auto ok = producer.Enqueue({.topic = "life", .payload = "ok", .task_type = "t"},
                             {.deadline = Millis::max()});  // must not overflow
  auto bad = producer.Enqueue({.topic = "life", .payload = "bad", .task_type = "t"});
  auto slow = producer.Enqueue({.topic = "life", .payload = "slow", .task_type = "t"});
  ASSERT_TRUE(ok.ok() && bad.ok() && slow.ok());

  auto options = WorkerOptions({"life"});
  options.worker_id = "sdk-test-worker";
  options.concurrency = 3;
  options.heartbeat_interval = Millis(1000);
  sdk::Worker worker(options);
  Gate slow_started;
  std::promise<sdk::StopReason> slow_reason;
  worker.Handle("t", [&](TaskContext& task) {
    if (task.payload() == "ok") return Outcome::Success("the result");
    if (task.payload() == "bad") return Outcome::Fatal("cannot parse");
    slow_started.Open();
    task.WaitCancelled(Millis::max());  // "until cancelled": must not overflow
    slow_reason.set_value(task.stop_reason());
    return Outcome::Retry("cancelled by request", Millis(0));
  });
  worker.Start();
  ASSERT_TRUE(slow_started.Pass());
  ASSERT_TRUE(Eventually([&] {
    auto s = worker.stats();
    return s.succeeded == 1 && s.failed == 1;
  }));

  auto get = [&](const std::string& id) { return client_->GetTask(id); };
  v1::Task t = get(ok.id);
  EXPECT_EQ(t.state(), v1::SUCCEEDED);
  EXPECT_EQ(t.result(), "the result");
  EXPECT_EQ(t.worker_id(), "sdk-test-worker");
  EXPECT_EQ(t.task_type(), "t");
  t = get(bad.id);
  EXPECT_EQ(t.state(), v1::FAILED);
  EXPECT_EQ(t.last_error(), "cannot parse");

  v1::CancelTaskRequest cancel;
  cancel.set_id(slow.id);
  v1::CancelTaskResponse cancelled;
  grpc::ClientContext ctx;
  SetDeadline(ctx);
  ASSERT_TRUE(client_->stub().CancelTask(&ctx, cancel, &cancelled).ok());
  Advance(Millis(1000));  // a heartbeat brings the request to the handler
  auto f = slow_reason.get_future();
  ASSERT_EQ(f.wait_for(30s), std::future_status::ready);
  EXPECT_EQ(f.get(), sdk::StopReason::kCancelRequested);
  ASSERT_TRUE(Eventually([&] { return worker.stats().running == 0; }));
  worker.Stop();
  EXPECT_EQ(worker.stats().cancel_requested, 1u);
  EXPECT_EQ(get(slow.id).state(), v1::CANCELLED);
}

// ---- the examples, as child processes ----

TEST_F(SdkTest, ExamplesProduceAndConsume) {
  const ChildResult produced =
      RunChild({EXAMPLE_PRODUCER_PATH, "--server", Address(), "--namespace", kNs,
                "--topic", "hello", "--count", "5"});
  ASSERT_EQ(produced.exit_code, 0) << produced.failure << produced.err;
  const std::string& pout = produced.out;
  EXPECT_EQ(std::count(pout.begin(), pout.end(), '\n'), 5) << pout;
  const ChildResult consumed =
      RunChild({EXAMPLE_WORKER_PATH, "--server", Address(), "--namespace", kNs, "--topic",
                "hello", "--count", "5", "--concurrency", "2"});
  ASSERT_EQ(consumed.exit_code, 0) << consumed.failure << consumed.err;
  const std::string& wout = consumed.out;
  EXPECT_NE(wout.find("done: 5 tasks"), std::string::npos) << wout;
  for (int i = 0; i < 5; ++i) {
    EXPECT_NE(wout.find("world #" + std::to_string(i)), std::string::npos) << wout;
  }
  EXPECT_TRUE(DrainNow("hello").empty()) << "all acked";
}

// A worker process killed with kill -9 in the middle of a task: the task comes back
// after its lease (the lost attempt counts, and GetTask's history shows it).
TEST_F(SdkTest, TaskOfAWorkerProcessKilledMidTaskIsRedeliveredAfterItsLease) {
  v1::EnqueueRequest req;
  req.set_namespace_(kNs);
  auto* item = req.add_items();
  item->set_topic("reports");
  item->set_task_type("report");
  item->set_lease_ms(5'000);
  v1::EnqueueResponse resp;
  {
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    ASSERT_TRUE(client_->stub().Enqueue(&ctx, req, &resp).ok());
  }
  const std::string id = resp.results(0).id();

  std::vector<std::string> args = {EXAMPLE_WORKER_PATH, "--server",  Address(),
                                   "--namespace",       kNs,         "--topic",
                                   "reports",           "--work-ms", "600000"};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = -1;
  ASSERT_EQ(posix_spawn(&pid, argv[0], nullptr, nullptr, argv.data(), environ), 0);
  auto running = [&] { return client_->GetTask(id).state() == v1::RUNNING; };
  bool started = Eventually(running, 60s);
  kill(pid, SIGKILL);  // mid-task, without a chance to nack
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(started) << "the worker never leased the task";

  // Its heartbeats may have extended the lease (by the SDK's default 30 s) before it
  // died; past that, the lease is gone and the task is ready again.
  server_clock_.Advance(Millis(31'000));
  auto again = client_->Dequeue(kNs, "reports", 1, 60'000);
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0].id(), id);
  EXPECT_EQ(again[0].attempts(), 2u) << "the lost attempt counts";

  v1::Task task = client_->GetTask(id);
  std::vector<std::string> kinds;
  for (const auto& e : task.history()) kinds.push_back(e.kind());
  EXPECT_EQ(kinds, (std::vector<std::string>{"leased", "lease_expired", "leased"}));
  EXPECT_EQ(task.last_error(), "lease expired");
}

}  // namespace
}  // namespace shardq::testing
