// The task lifecycle end to end over gRPC (issue #3): status queries through every
// state, retries, max attempts and dead letters, redrive, cancel, dedup, fatal
// failures and the retention purge. Real server, real MariaDB, FakeClock.

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <thread>

#include "common/ids.h"
#include "engine/placement.h"
#include "tests/e2e_support.h"
#include "tests/support/mariadb_instance.h"

namespace shardq::testing {
namespace {

constexpr char kNs[] = "life";
constexpr Duration kRetention{10'000};

class LifecycleTest : public ::testing::Test {
 protected:
  void SetUp() override {
    frontend::ServerConfig config = FreshConfig(SharedMariaDb().socket(), 2);
    NamespacePolicy policy;
    policy.retention = kRetention;
    policy.max_attempts = 3;
    config.policies = NamespacePolicies(NamespacePolicy{}, {{kNs, policy}});
    auto server = frontend::Server::Start(config, clock_);
    ASSERT_TRUE(server.ok()) << server.status().ToString();
    server_ = std::move(*server);
    ASSERT_TRUE(server_->engine().AwaitShardsOpen(std::chrono::seconds(30)));
    client_ = std::make_unique<QueueClient>(server_->port());
  }

  std::string Enqueue(const std::string& topic, int max_attempts = 0,
                      int64_t delay_ms = 0, const std::string& dedup_key = "",
                      int64_t lease_ms = 0) {
    v1::EnqueueRequest req;
    req.set_namespace_(kNs);
    v1::EnqueueItem* item = req.add_items();
    item->set_topic(topic);
    item->set_task_type("email");
    item->set_payload("p");
    item->set_max_attempts(max_attempts);
    if (delay_ms) item->set_delay_ms(delay_ms);
    item->set_dedup_key(dedup_key);
    item->set_lease_ms(lease_ms);
    v1::EnqueueResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    EXPECT_TRUE(client_->stub().Enqueue(&ctx, req, &resp).ok());
    EXPECT_EQ(resp.results(0).status().code(), 0) << resp.results(0).status().message();
    last_deduplicated_ = resp.results(0).deduplicated();
    return resp.results(0).id();
  }

  v1::DequeuedItem DequeueOne(const std::string& topic) {
    v1::DequeueRequest req;
    req.set_namespace_(kNs);
    auto* t = req.add_topics();
    t->set_topic(topic);
    t->set_count(1);
    req.set_worker_id("worker-7");
    v1::DequeueResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    EXPECT_TRUE(client_->stub().Dequeue(&ctx, req, &resp).ok());
    EXPECT_EQ(resp.items_size(), 1) << "nothing to dequeue from " << topic;
    return resp.items_size() ? resp.items(0) : v1::DequeuedItem{};
  }

  grpc::StatusCode Nack(const v1::DequeuedItem& d, int64_t delay_ms,
                        const std::string& error, bool fatal = false) {
    v1::NackRequest req;
    auto* n = req.add_items();
    n->mutable_item()->set_id(d.id());
    n->mutable_item()->set_lease_token(d.lease_token());
    n->set_delay_ms(delay_ms);
    n->set_error(error);
    n->set_fatal(fatal);
    v1::NackResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    EXPECT_TRUE(client_->stub().Nack(&ctx, req, &resp).ok());
    return static_cast<grpc::StatusCode>(resp.results(0).code());
  }

  grpc::StatusCode Ack(const v1::DequeuedItem& d, const std::string& result) {
    v1::AckRequest req;
    auto* a = req.add_items();
    a->set_id(d.id());
    a->set_lease_token(d.lease_token());
    a->set_result(result);
    v1::AckResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    EXPECT_TRUE(client_->stub().Ack(&ctx, req, &resp).ok());
    return static_cast<grpc::StatusCode>(resp.results(0).code());
  }

  // GetTask; the gRPC status code through `code`.
  v1::Task GetTask(const std::string& id, grpc::StatusCode* code = nullptr) {
    grpc::Status st;
    v1::Task task = client_->GetTask(id, &st);
    if (code) *code = st.error_code();
    if (!code) {
      EXPECT_TRUE(st.ok()) << st.error_message();
    }
    return task;
  }

  grpc::Status Cancel(const std::string& id, v1::Task* out = nullptr) {
    v1::CancelTaskRequest req;
    req.set_id(id);
    v1::CancelTaskResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    grpc::Status st = client_->stub().CancelTask(&ctx, req, &resp);
    if (out) *out = resp.task();
    return st;
  }

  std::vector<std::string> Kinds(const v1::Task& t) {
    std::vector<std::string> out;
    for (const auto& e : t.history()) out.push_back(e.kind());
    return out;
  }

  bool Dequeueable(const std::string& topic) {
    return !client_->Dequeue(kNs, topic, 1).empty();
  }

  FakeClock clock_;
  std::unique_ptr<frontend::Server> server_;
  std::unique_ptr<QueueClient> client_;
  bool last_deduplicated_ = false;
};

TEST_F(LifecycleTest, StatusFollowsScheduledReadyRunningRetryingSucceeded) {
  std::string id = Enqueue("flow", 0, 5'000);
  v1::Task t = GetTask(id);
  EXPECT_EQ(t.state(), v1::SCHEDULED);
  EXPECT_EQ(t.task_type(), "email");
  EXPECT_EQ(t.max_attempts(), 3u) << "the namespace default";
  EXPECT_EQ(t.next_at_ms(), ToUnixMillis(clock_.Now()) + 5'000);

  clock_.Advance(Duration(5'000));
  auto first = client_->Dequeue(kNs, "flow", 1, 60'000);  // long poll: promoted on time
  ASSERT_EQ(first.size(), 1u);
  ASSERT_EQ(client_->Nack(first[0].id(), first[0].lease_token(), 0),
            grpc::StatusCode::OK);  // a plain retry, at once
  v1::DequeuedItem d = DequeueOne("flow");
  EXPECT_EQ(d.attempts(), 2u);
  t = GetTask(id);
  EXPECT_EQ(t.state(), v1::RUNNING);
  EXPECT_EQ(t.worker_id(), "worker-7");
  EXPECT_EQ(t.attempts(), 2u);
  EXPECT_GT(t.first_delivered_at_ms(), 0);

  ASSERT_EQ(Nack(d, 2'000, "smtp timeout"), grpc::StatusCode::OK);
  t = GetTask(id);
  EXPECT_EQ(t.state(), v1::RETRYING);
  EXPECT_EQ(t.last_error(), "smtp timeout");
  EXPECT_EQ(t.next_at_ms(), ToUnixMillis(clock_.Now()) + 2'000);

  clock_.Advance(Duration(2'000));
  auto again = client_->Dequeue(kNs, "flow", 1, 60'000);
  ASSERT_EQ(again.size(), 1u);
  ASSERT_EQ(Ack(again[0], "sent:42"), grpc::StatusCode::OK);
  t = GetTask(id);
  EXPECT_EQ(t.state(), v1::SUCCEEDED);
  EXPECT_EQ(t.result(), "sent:42");
  EXPECT_EQ(t.attempts(), 3u);
  EXPECT_EQ(t.finished_at_ms(), ToUnixMillis(clock_.Now()));
  EXPECT_EQ(t.next_at_ms(), ToUnixMillis(clock_.Now() + kRetention)) << "purge time";
  EXPECT_EQ(Kinds(t), (std::vector<std::string>{"leased", "retry", "leased", "retry",
                                                "leased", "succeeded"}));
}

TEST_F(LifecycleTest, MaxAttemptsThenDeadLetterThenRedriveThenSuccess) {
  std::string id = Enqueue("dlq", 2);
  for (int attempt = 1; attempt <= 2; ++attempt) {
    v1::DequeuedItem d = DequeueOne("dlq");
    EXPECT_EQ(d.attempts(), static_cast<uint32_t>(attempt));
    EXPECT_EQ(d.max_attempts(), 2u);
    ASSERT_EQ(Nack(d, 0, "boom " + std::to_string(attempt)), grpc::StatusCode::OK);
  }
  EXPECT_FALSE(Dequeueable("dlq")) << "a dead letter is not delivered";
  v1::Task t = GetTask(id);
  EXPECT_EQ(t.state(), v1::DEAD_LETTERED);
  EXPECT_EQ(t.last_error(), "boom 2");

  v1::ListDeadLettersRequest list;
  list.set_namespace_(kNs);
  list.set_topic("dlq");
  v1::ListDeadLettersResponse dead;
  {
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    ASSERT_TRUE(client_->stub().ListDeadLetters(&ctx, list, &dead).ok());
  }
  ASSERT_EQ(dead.tasks_size(), 1);
  EXPECT_EQ(dead.tasks(0).id(), id);
  auto topics = server_->engine().ActiveTopics(kNs);
  ASSERT_EQ(topics.size(), 1u);
  EXPECT_EQ(topics[0].counts.dead, 1);

  EXPECT_EQ(client_->Redrive(kNs, "dlq").redriven(), 1u);
  v1::DequeuedItem d = DequeueOne("dlq");
  EXPECT_EQ(d.attempts(), 1u) << "a fresh attempt budget";
  ASSERT_EQ(Ack(d, ""), grpc::StatusCode::OK);
  EXPECT_EQ(GetTask(id).state(), v1::SUCCEEDED);
}

TEST_F(LifecycleTest, AnExpiredLeaseIsALostAttemptAndCanDeadLetter) {
  std::string id = Enqueue("lost", 1, 0, "", 1'000);
  v1::DequeuedItem d = DequeueOne("lost");
  clock_.Advance(Duration(1'000));
  // Promotion runs on the ticker; wait for its effect (bounded), not for time.
  v1::Task t;
  for (int i = 0; i < 2000 && t.state() != v1::DEAD_LETTERED; ++i) {
    t = GetTask(id);
    std::this_thread::yield();
  }
  EXPECT_EQ(t.state(), v1::DEAD_LETTERED);
  EXPECT_EQ(t.last_error(), "lease expired");
  EXPECT_EQ(Kinds(t), (std::vector<std::string>{"leased", "lease_expired"}));
  EXPECT_EQ(Ack(d, "late"), grpc::StatusCode::FAILED_PRECONDITION)
      << "a dead letter is final until redriven";
}

TEST_F(LifecycleTest, CancelScheduledRunningAndFinishedTasks) {
  std::string later = Enqueue("c", 0, 60'000);
  v1::Task t;
  ASSERT_TRUE(Cancel(later, &t).ok());
  EXPECT_EQ(t.state(), v1::CANCELLED);
  EXPECT_TRUE(Cancel(later).ok()) << "cancelling twice is fine";
  clock_.Advance(Duration(60'000));

  std::string running = Enqueue("c");
  v1::DequeuedItem d = DequeueOne("c");
  ASSERT_EQ(d.id(), running) << "the cancelled one never runs";
  ASSERT_TRUE(Cancel(running, &t).ok());
  EXPECT_EQ(t.state(), v1::RUNNING);
  EXPECT_TRUE(t.cancel_requested());

  v1::ExtendLeaseRequest ext;
  auto* e = ext.add_items();
  e->mutable_item()->set_id(d.id());
  e->mutable_item()->set_lease_token(d.lease_token());
  e->set_extension_ms(30'000);
  v1::ExtendLeaseResponse ext_resp;
  {
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    ASSERT_TRUE(client_->stub().ExtendLease(&ctx, ext, &ext_resp).ok());
  }
  EXPECT_TRUE(ext_resp.results(0).cancel_requested()) << "told through its heartbeat";
  ASSERT_EQ(Nack(d, 0, "stopped"), grpc::StatusCode::OK);
  EXPECT_EQ(GetTask(running).state(), v1::CANCELLED);
  EXPECT_FALSE(Dequeueable("c"));

  std::string done = Enqueue("c2");
  ASSERT_EQ(Ack(DequeueOne("c2"), ""), grpc::StatusCode::OK);
  EXPECT_EQ(Cancel(done).error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(Cancel("0-999999").error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(Cancel("nonsense").error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(LifecycleTest, DedupKeysReturnTheExistingItem) {
  std::string a = Enqueue("d", 0, 0, "order-17");
  EXPECT_FALSE(last_deduplicated_);
  std::string b = Enqueue("d", 0, 0, "order-17");
  EXPECT_TRUE(last_deduplicated_);
  EXPECT_EQ(a, b);
  std::string c = Enqueue("d", 0, 0, "order-18");
  EXPECT_NE(a, c);
  auto topics = server_->engine().ActiveTopics(kNs);
  ASSERT_EQ(topics.size(), 1u);
  EXPECT_EQ(topics[0].counts.ready, 2) << "the repeat created nothing";
}

// The SDK's keys carry their time (`~` + ms): a retry made long after, when unkeyed
// enqueues go to the other shard, still finds the item on the shard of the key's time.
TEST_F(LifecycleTest, ATimeOrderedKeyRetriedInALaterSlotIsDeduplicated) {
  const std::string key =
      fmt::format("~{:012x}{}", ToUnixMillis(clock_.Now()), "0123456789abcdef012");
  const size_t key_position = engine::KeyPosition(kNs, key, 2);
  std::string first = Enqueue("d", 0, 0, key);
  EXPECT_FALSE(last_deduplicated_);
  EXPECT_EQ(ItemId::Parse(first)->shard.value(), key_position);  // ids 0 and 1

  clock_.Advance(Duration(10'000));  // the retry comes ten seconds later
  AdvanceToSlotOf(clock_, kNs, 1 - key_position, 2);
  std::string retry = Enqueue("d", 0, 0, key);
  EXPECT_TRUE(last_deduplicated_);
  EXPECT_EQ(retry, first);
  EXPECT_EQ(ItemId::Parse(Enqueue("d"))->shard.value(), 1 - key_position)
      << "unkeyed enqueues do go to the other shard now";
}

TEST_F(LifecycleTest, FatalFailureIsFinal) {
  std::string id = Enqueue("f");
  ASSERT_EQ(Nack(DequeueOne("f"), 0, "bad input", /*fatal=*/true), grpc::StatusCode::OK);
  v1::Task t = GetTask(id);
  EXPECT_EQ(t.state(), v1::FAILED);
  EXPECT_EQ(t.last_error(), "bad input");
  EXPECT_FALSE(Dequeueable("f"));
}

TEST_F(LifecycleTest, FinishedTasksArePurgedAfterTheRetention) {
  std::string id = Enqueue("r", 0, 0, "key-r");
  ASSERT_EQ(Ack(DequeueOne("r"), ""), grpc::StatusCode::OK);
  clock_.Advance(kRetention - Duration(1));
  grpc::StatusCode code;
  GetTask(id, &code);
  EXPECT_EQ(code, grpc::StatusCode::OK) << "kept until the retention ends";
  clock_.Advance(Duration(2'000));  // past it, and past the next purge tick
  for (int i = 0; i < 5000 && code == grpc::StatusCode::OK; ++i) {
    GetTask(id, &code);
    std::this_thread::yield();
  }
  EXPECT_EQ(code, grpc::StatusCode::NOT_FOUND);
  EXPECT_NE(Enqueue("r", 0, 0, "key-r"), id) << "the key is free again after the purge";
}

TEST_F(LifecycleTest, RedriveAndPurgeRefuseTasksThatAreNotDead) {
  std::string live = Enqueue("x");
  v1::RedriveDeadLettersResponse resp = client_->Redrive(kNs, "x", {live});
  ASSERT_EQ(resp.results_size(), 1);
  EXPECT_EQ(resp.results(0).code(),
            static_cast<int>(grpc::StatusCode::FAILED_PRECONDITION));
  EXPECT_EQ(resp.redriven(), 0u);

  v1::PurgeDeadLettersRequest purge;
  purge.set_namespace_(kNs);
  purge.set_topic("x");
  v1::PurgeDeadLettersResponse purged;
  grpc::ClientContext ctx;
  SetDeadline(ctx);
  ASSERT_TRUE(client_->stub().PurgeDeadLetters(&ctx, purge, &purged).ok());
  EXPECT_EQ(purged.purged(), 0u);
  EXPECT_EQ(GetTask(live).state(), v1::READY) << "a live task is untouched";
}

}  // namespace
}  // namespace shardq::testing
