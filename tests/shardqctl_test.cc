// shardqctl end to end: the real binary as a child process against an in-process
// server (real gRPC, real MariaDB, FakeClock). Each test checks what the operator
// sees (stdout, stderr, exit code, as tools/README.md documents them) and what the
// server holds afterwards.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <ctime>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "tests/e2e_support.h"
#include "tests/support/child_process.h"

namespace shardq::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

constexpr char kNs[] = "ctl";

// What one shardqctl run left behind.
using CtlResult = ChildResult;

// Runs the shardqctl binary with `args`, feeding `input` on its stdin (then EOF). A run
// that does not exit by itself within 30 s (killed) fails the test.
CtlResult RunShardqctl(const std::vector<std::string>& args, const std::string& input) {
  std::vector<std::string> argv = {SHARDQCTL_PATH};
  argv.insert(argv.end(), args.begin(), args.end());
  CtlResult result = RunChild(argv, input, std::chrono::seconds(30));
  EXPECT_EQ(result.failure, "")
      << "shardqctl; stdout: " << result.out << "\nstderr: " << result.err;
  return result;
}

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

std::vector<std::string> Words(const std::string& line) {
  std::vector<std::string> words;
  std::istringstream in(line);
  for (std::string w; in >> w;) words.push_back(w);
  return words;
}

// The value of a "label:   value" line (dequeue blocks, status), "" if none.
std::string Field(const std::string& text, const std::string& label) {
  for (const std::string& line : Lines(text)) {
    if (line.rfind(label + ":", 0) != 0) continue;
    const size_t value = line.find_first_not_of(' ', label.size() + 1);
    return value == std::string::npos ? "" : line.substr(value);
  }
  return "";
}

// "2023-11-14T22:13:20" (UTC) for a unix ms time, as shardqctl prints it (+ ".mmmZ").
std::string IsoSeconds(int64_t ms) {
  const std::time_t seconds = static_cast<std::time_t>(ms / 1000);
  std::tm tm{};
  gmtime_r(&seconds, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  return buf;
}

bool LooksLikeId(const std::string& s) {
  const size_t dash = s.find('-');
  if (dash == 0 || dash == std::string::npos || dash + 1 == s.size()) return false;
  for (size_t i = 0; i < s.size(); ++i) {
    if (i != dash && (s[i] < '0' || s[i] > '9')) return false;
  }
  return true;
}

class ShardqctlTest : public LiveServerTest {
 protected:
  // shardqctl against the fixture's server, in namespace kNs.
  CtlResult Ctl(std::vector<std::string> args, const std::string& input = "") {
    std::vector<std::string> full = {
        "--server", "127.0.0.1:" + std::to_string(server_->port()), "-n", kNs};
    full.insert(full.end(), args.begin(), args.end());
    return RunShardqctl(full, input);
  }

  // Enqueues through shardqctl; the one printed id.
  std::string EnqueueId(std::vector<std::string> args) {
    args.insert(args.begin(), "enqueue");
    const CtlResult r = Ctl(args);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    const auto lines = Lines(r.out);
    EXPECT_EQ(lines.size(), 1u) << r.out;
    EXPECT_TRUE(!lines.empty() && LooksLikeId(lines[0])) << r.out;
    return lines.empty() ? "" : lines[0];
  }

  // Dequeues one item of `topic` through shardqctl; {id, lease token}.
  std::pair<std::string, std::string> DequeueOne(const std::string& topic,
                                                 const std::string& worker = "") {
    std::vector<std::string> args = {"dequeue", topic, "--wait-ms", "0"};
    if (!worker.empty()) args.insert(args.end(), {"--worker-id", worker});
    const CtlResult r = Ctl(args);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    const std::string id = Field(r.out, "id");
    const std::string token = Field(r.out, "lease_token");
    EXPECT_TRUE(LooksLikeId(id)) << r.out;
    EXPECT_FALSE(token.empty()) << r.out;
    return {id, token};
  }

  int64_t NowMs() const { return ToUnixMillis(clock_.Now()); }
};

// ---- enqueue ----

TEST_F(ShardqctlTest, EnqueuePayloadArgumentPrintsItsId) {
  const CtlResult r = Ctl({"enqueue", "jobs", "hello world"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.err, "");
  const auto lines = Lines(r.out);
  ASSERT_EQ(lines.size(), 1u) << r.out;
  EXPECT_TRUE(LooksLikeId(lines[0])) << lines[0];

  const auto items = client_->Dequeue(kNs, "jobs", 10);
  ASSERT_EQ(items.size(), 1u);
  EXPECT_EQ(items[0].id(), lines[0]);
  EXPECT_EQ(items[0].payload(), "hello world");
}

TEST_F(ShardqctlTest, EnqueueReadsThePayloadFromStdinForDashOrNoPayload) {
  const std::string binary("bytes\0\xff\n", 8);
  const CtlResult dash = Ctl({"enqueue", "in", "-"}, "from stdin\n");
  ASSERT_EQ(dash.exit_code, 0) << dash.err;
  const CtlResult omitted = Ctl({"enqueue", "in", "--priority", "5"}, binary);
  ASSERT_EQ(omitted.exit_code, 0) << omitted.err;
  const CtlResult empty = Ctl({"enqueue", "in", "-p", "9"});  // stdin at EOF at once
  ASSERT_EQ(empty.exit_code, 0) << empty.err;
  ASSERT_EQ(Lines(dash.out).size(), 1u) << dash.out;
  ASSERT_EQ(Lines(omitted.out).size(), 1u) << omitted.out;
  ASSERT_EQ(Lines(empty.out).size(), 1u) << empty.out;

  const auto items = client_->Dequeue(kNs, "in", 10);  // priority order
  ASSERT_EQ(items.size(), 3u);
  EXPECT_EQ(items[0].id(), Lines(dash.out)[0]);
  EXPECT_EQ(items[0].payload(), "from stdin\n") << "stdin verbatim, newline included";
  EXPECT_EQ(items[1].id(), Lines(omitted.out)[0]);
  EXPECT_EQ(items[1].payload(), binary) << "binary bytes survive";
  EXPECT_EQ(items[2].id(), Lines(empty.out)[0]);
  EXPECT_EQ(items[2].payload(), "");
}

TEST_F(ShardqctlTest, EnqueueCountPrintsOneIdPerItem) {
  const CtlResult r = Ctl({"enqueue", "many", "x", "--count", "3"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto lines = Lines(r.out);
  ASSERT_EQ(lines.size(), 3u) << r.out;
  std::set<std::string> printed;
  for (const auto& line : lines) {
    EXPECT_TRUE(LooksLikeId(line)) << line;
    printed.insert(line);
  }
  EXPECT_EQ(printed.size(), 3u) << "three distinct items";

  std::set<std::string> stored;
  for (const auto& item : client_->Dequeue(kNs, "many", 10)) stored.insert(item.id());
  EXPECT_EQ(stored, printed);
}

TEST_F(ShardqctlTest, EnqueueWithAUsedDedupKeyPrintsTheSameIdDeduplicated) {
  const CtlResult first = Ctl({"enqueue", "dd", "a", "--dedup-key", "order-17"});
  ASSERT_EQ(first.exit_code, 0) << first.err;
  const auto first_lines = Lines(first.out);
  ASSERT_EQ(first_lines.size(), 1u) << first.out;
  EXPECT_TRUE(LooksLikeId(first_lines[0])) << "no suffix the first time";

  const CtlResult second = Ctl({"enqueue", "dd", "b", "--dedup-key", "order-17"});
  EXPECT_EQ(second.exit_code, 0) << second.err;
  EXPECT_EQ(second.out, first_lines[0] + " (deduplicated)\n");

  const auto items = client_->Dequeue(kNs, "dd", 10);
  ASSERT_EQ(items.size(), 1u) << "the repeat created nothing";
  EXPECT_EQ(items[0].payload(), "a");
}

TEST_F(ShardqctlTest, EnqueueCountWithADedupKeyCreatesOneItem) {
  const CtlResult r = Ctl({"enqueue", "dd", "x", "--count", "3", "--dedup-key", "k"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  const auto lines = Lines(r.out);
  ASSERT_EQ(lines.size(), 3u) << r.out;
  EXPECT_TRUE(LooksLikeId(lines[0])) << lines[0];
  EXPECT_EQ(lines[1], lines[0] + " (deduplicated)");
  EXPECT_EQ(lines[2], lines[0] + " (deduplicated)");
  EXPECT_EQ(client_->Dequeue(kNs, "dd", 10).size(), 1u);
}

TEST_F(ShardqctlTest, EnqueueTakesAPayloadStartingWithDashAfterDoubleDash) {
  const std::string id = EnqueueId({"dash", "--", "-x"});
  const auto items = client_->Dequeue(kNs, "dash", 10);
  ASSERT_EQ(items.size(), 1u);
  EXPECT_EQ(items[0].id(), id);
  EXPECT_EQ(items[0].payload(), "-x");
}

// A refused item has no id: its error goes to stderr (stdout stays a list of ids),
// and the exit code is 3.
TEST_F(ShardqctlTest, EnqueueOfARefusedItemPrintsItsErrorAndExitsThree) {
  const CtlResult topic = Ctl({"enqueue", "no spaces", "x"});
  EXPECT_EQ(topic.exit_code, 3) << topic.err;
  EXPECT_EQ(topic.out, "");
  EXPECT_THAT(topic.err, StartsWith("item 0: INVALID_ARGUMENT: "));

  const CtlResult big = Ctl({"enqueue", "big"}, std::string(10 * 1024 + 1, 'x'));
  EXPECT_EQ(big.exit_code, 3) << big.err;
  EXPECT_EQ(big.out, "");
  EXPECT_THAT(big.err, StartsWith("item 0: INVALID_ARGUMENT: "));

  const CtlResult json = Ctl({"--json", "enqueue", "no spaces", "x", "--count", "2"});
  EXPECT_EQ(json.exit_code, 3) << json.err;
  const auto doc = nlohmann::json::parse(json.out, nullptr, false);
  ASSERT_TRUE(doc.is_array() && doc.size() == 2u) << json.out;
  EXPECT_EQ(doc[0]["status"], "INVALID_ARGUMENT");
  EXPECT_EQ(doc[0]["code"], 3);
  EXPECT_FALSE(doc[0].contains("id")) << doc[0].dump();

  const CtlResult topics = Ctl({"topics"});
  EXPECT_EQ(Lines(topics.out).size(), 1u) << "nothing was enqueued:\n" << topics.out;
}

// A namespace the server refuses fails the whole call: an RPC error.
TEST_F(ShardqctlTest, ABadNamespaceIsAnRpcError) {
  const CtlResult r =
      RunShardqctl({"--server", "127.0.0.1:" + std::to_string(server_->port()), "-n",
                    "a b", "enqueue", "t", "x"},
                   "");
  EXPECT_EQ(r.exit_code, 1) << r.out << r.err;
  EXPECT_EQ(r.out, "");
  EXPECT_THAT(r.err, HasSubstr("RPC failed: INVALID_ARGUMENT: "));
}

TEST_F(ShardqctlTest, EnqueueJsonHasIdStatusAndDeduplicatedPerItem) {
  const CtlResult r = Ctl({"--json", "enqueue", "js", "x", "--count", "2"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto doc = nlohmann::json::parse(r.out, nullptr, /*allow_exceptions=*/false);
  ASSERT_TRUE(doc.is_array()) << r.out;
  ASSERT_EQ(doc.size(), 2u);
  for (const auto& item : doc) {
    ASSERT_TRUE(item.contains("id")) << item.dump();
    EXPECT_TRUE(LooksLikeId(item["id"].get<std::string>())) << item.dump();
    EXPECT_EQ(item["deduplicated"], false) << item.dump();
    EXPECT_EQ(item["status"], "OK") << item.dump();
    EXPECT_EQ(item["code"], 0) << item.dump();
  }
  EXPECT_NE(doc[0]["id"], doc[1]["id"]);

  // --json after the subcommand works as well (global options fall through).
  const std::string keyed = EnqueueId({"js", "y", "--dedup-key", "k1"});
  const CtlResult again = Ctl({"enqueue", "js", "y", "--dedup-key", "k1", "--json"});
  ASSERT_EQ(again.exit_code, 0) << again.err;
  const auto doc2 = nlohmann::json::parse(again.out, nullptr, false);
  ASSERT_TRUE(doc2.is_array() && doc2.size() == 1u) << again.out;
  EXPECT_EQ(doc2[0]["id"], keyed);
  EXPECT_EQ(doc2[0]["deduplicated"], true);
}

// ---- dequeue / ack / nack / extend ----

TEST_F(ShardqctlTest, DequeuePrintsTheItemThenAckFinishesIt) {
  const std::string id = EnqueueId(
      {"work", "the payload", "--task-type", "email", "--meta", "b=2", "--meta", "a=1"});

  const CtlResult d = Ctl({"dequeue", "work", "--wait-ms", "0", "--worker-id", "w1"});
  ASSERT_EQ(d.exit_code, 0) << d.err;
  EXPECT_EQ(Field(d.out, "id"), id);
  EXPECT_EQ(Field(d.out, "topic"), "work");
  EXPECT_EQ(Field(d.out, "task_type"), "email");
  EXPECT_EQ(Field(d.out, "attempts"), "1/5") << "the default max attempts";
  EXPECT_EQ(Field(d.out, "metadata"), "a=1, b=2") << "sorted by key";
  EXPECT_EQ(Field(d.out, "payload (text, 11 bytes)"), "the payload");
  const std::string token = Field(d.out, "lease_token");
  ASSERT_FALSE(token.empty()) << d.out;

  const CtlResult ack = Ctl({"ack", id, token, "--result", "done"});
  EXPECT_EQ(ack.exit_code, 0) << ack.err;
  EXPECT_EQ(ack.out, id + " OK\n");
  const v1::Task task = client_->GetTask(id);
  EXPECT_EQ(task.state(), v1::SUCCEEDED);
  EXPECT_EQ(task.result(), "done");

  // The API makes Ack idempotent: the same token again (a retry after a lost
  // answer) is OK and changes nothing.
  const CtlResult repeat = Ctl({"ack", id, token});
  EXPECT_EQ(repeat.exit_code, 0) << repeat.err;
  EXPECT_EQ(repeat.out, id + " OK\n");
  EXPECT_EQ(client_->GetTask(id).result(), "done");
}

TEST_F(ShardqctlTest, AckWithAStaleTokenPrintsAnItemErrorAndExitsThree) {
  const std::string id = EnqueueId({"stale", "p"});
  const auto [got, first_token] = DequeueOne("stale");
  ASSERT_EQ(got, id);
  ASSERT_EQ(Ctl({"nack", id, first_token}).exit_code, 0);
  const auto [again, second_token] = DequeueOne("stale");
  ASSERT_EQ(again, id);
  ASSERT_NE(second_token, first_token) << "every lease has its own token";

  // The first lease's token is stale now.
  const CtlResult stale = Ctl({"ack", id, first_token});
  EXPECT_EQ(stale.exit_code, 3) << stale.err;
  EXPECT_EQ(Lines(stale.out).size(), 1u) << stale.out;
  EXPECT_THAT(stale.out, StartsWith(id + " FAILED_PRECONDITION: "));
  EXPECT_EQ(client_->GetTask(id).state(), v1::RUNNING) << "the item is untouched";

  const CtlResult ack = Ctl({"ack", id, second_token});
  EXPECT_EQ(ack.exit_code, 0) << ack.err;
  EXPECT_EQ(ack.out, id + " OK\n");
  // Once finished, the old token is still refused.
  const CtlResult late = Ctl({"ack", id, first_token});
  EXPECT_EQ(late.exit_code, 3) << late.err;
  EXPECT_THAT(late.out, StartsWith(id + " FAILED_PRECONDITION: "));
  EXPECT_EQ(client_->GetTask(id).state(), v1::SUCCEEDED);
}

TEST_F(ShardqctlTest, AckOfSeveralItemsPrintsOneLinePerItemInOrder) {
  EnqueueId({"batch", "1"});
  EnqueueId({"batch", "2"});
  EnqueueId({"batch", "3"});
  const auto [a, a_token] = DequeueOne("batch");
  const auto [b, b_token] = DequeueOne("batch");
  const auto [c, c_token] = DequeueOne("batch");
  // c with a token that is well-formed but not its own.
  const CtlResult r = Ctl({"ack", b, b_token, c, a_token, a, a_token});
  EXPECT_EQ(r.exit_code, 3) << "one item of the batch failed";
  const auto lines = Lines(r.out);
  ASSERT_EQ(lines.size(), 3u) << r.out;
  EXPECT_EQ(lines[0], b + " OK");
  EXPECT_THAT(lines[1], StartsWith(c + " FAILED_PRECONDITION: "))
      << "another lease's token";
  EXPECT_EQ(lines[2], a + " OK");
  EXPECT_EQ(client_->GetTask(a).state(), v1::SUCCEEDED);
  EXPECT_EQ(client_->GetTask(b).state(), v1::SUCCEEDED);
  EXPECT_EQ(client_->GetTask(c).state(), v1::RUNNING);
}

// A token that is not a token at all: the server refuses that item (not the call).
TEST_F(ShardqctlTest, AckWithAMalformedTokenIsAnItemError) {
  const std::string id = EnqueueId({"badtoken", "p"});
  const auto [got, token] = DequeueOne("badtoken");
  ASSERT_EQ(got, id);
  const CtlResult r = Ctl({"ack", id, "12345"});
  EXPECT_EQ(r.exit_code, 3) << r.err;
  EXPECT_EQ(r.out, id + " INVALID_ARGUMENT: malformed lease token for item " + id + "\n");
  EXPECT_EQ(client_->GetTask(id).state(), v1::RUNNING);
}

TEST_F(ShardqctlTest, DequeueOfAnEmptyTopicPrintsNothingAndSucceeds) {
  const CtlResult r = Ctl({"dequeue", "nothing", "--wait-ms", "0"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "");
  EXPECT_THAT(r.err, HasSubstr("no items ready"));
}

TEST_F(ShardqctlTest, DequeueJsonHasTheDocumentedFields) {
  const std::string id = EnqueueId(
      {"dj", "payload", "--task-type", "resize", "--max-attempts", "4", "--meta", "k=v"});
  const CtlResult r = Ctl({"--json", "dequeue", "dj", "--wait-ms", "0"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto doc = nlohmann::json::parse(r.out, nullptr, false);
  ASSERT_TRUE(doc.is_array() && doc.size() == 1u) << r.out;
  const auto& item = doc[0];
  EXPECT_EQ(item["id"], id);
  EXPECT_EQ(item["topic"], "dj");
  EXPECT_EQ(item["task_type"], "resize");
  EXPECT_EQ(item["attempts"], 1);
  EXPECT_EQ(item["max_attempts"], 4);
  EXPECT_EQ(item["metadata"], (nlohmann::json{{"k", "v"}}));
  EXPECT_EQ(item["payload_encoding"], "text");
  EXPECT_EQ(item["payload"], "payload");
  ASSERT_TRUE(item.contains("lease_token")) << item.dump();
  EXPECT_TRUE(item.contains("lease_deadline_ms")) << item.dump();
  // The token works for an ack.
  const CtlResult ack = Ctl({"ack", id, item["lease_token"].get<std::string>()});
  EXPECT_EQ(ack.exit_code, 0) << ack.out << ack.err;
}

TEST_F(ShardqctlTest, DequeueShowsABinaryPayloadAsBase64) {
  EnqueueId({"bin", "-"});  // empty stdin: empty payload is text
  const std::string raw("\x00\x01\xfe", 3);
  ASSERT_EQ(Ctl({"enqueue", "bin", "-p", "-1"}, raw).exit_code, 0);
  const CtlResult r = Ctl({"dequeue", "bin", "--wait-ms", "0"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(Field(r.out, "payload (base64, 3 bytes)"), "AAH+") << r.out;
}

TEST_F(ShardqctlTest, ExtendMovesTheDeadlineThenNackGivesTheItemBack) {
  const std::string id = EnqueueId({"retry", "p"});
  const auto [got, token] = DequeueOne("retry", "w9");
  ASSERT_EQ(got, id);

  const CtlResult extend = Ctl({"extend", id, token, "--ms", "60000"});
  EXPECT_EQ(extend.exit_code, 0) << extend.err;
  const int64_t deadline = NowMs() + 60'000;
  EXPECT_EQ(extend.out, id + " OK lease_deadline " + IsoSeconds(deadline) + ".000Z (" +
                            std::to_string(deadline) + ")\n");
  EXPECT_EQ(client_->GetTask(id).next_at_ms(), deadline) << "the lease deadline moved";

  const CtlResult nack =
      Ctl({"nack", id, token, "--delay-ms", "5000", "--error", "disk full"});
  EXPECT_EQ(nack.exit_code, 0) << nack.err;
  EXPECT_EQ(nack.out, id + " OK\n");
  v1::Task task = client_->GetTask(id);
  EXPECT_EQ(task.state(), v1::RETRYING);
  EXPECT_EQ(task.last_error(), "disk full");
  EXPECT_EQ(task.next_at_ms(), NowMs() + 5'000);

  // The nack ended the lease: its token extends nothing any more.
  const CtlResult late = Ctl({"extend", id, token, "--ms", "1000"});
  EXPECT_EQ(late.exit_code, 3) << late.err;
  EXPECT_THAT(late.out, StartsWith(id + " "));
  EXPECT_THAT(late.out, ::testing::Not(HasSubstr(" OK")));

  clock_.Advance(Duration(5'000));
  ASSERT_TRUE(Eventually([&] { return client_->GetTask(id).state() == v1::READY; }));
  const CtlResult again = Ctl({"dequeue", "retry", "--wait-ms", "0"});
  EXPECT_EQ(Field(again.out, "id"), id);
  EXPECT_EQ(Field(again.out, "attempts"), "2/5");
}

TEST_F(ShardqctlTest, NackFatalFailsTheTaskForGood) {
  const std::string id = EnqueueId({"fatal", "p"});
  const auto [got, token] = DequeueOne("fatal");
  ASSERT_EQ(got, id);
  const CtlResult r = Ctl({"nack", id, token, "--fatal", "--error", "bad input"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, id + " OK\n");
  const v1::Task task = client_->GetTask(id);
  EXPECT_EQ(task.state(), v1::FAILED);
  EXPECT_EQ(task.last_error(), "bad input");
  EXPECT_TRUE(client_->Dequeue(kNs, "fatal", 1).empty()) << "not retried";

  // FAILED, not a dead letter.
  const CtlResult dead = Ctl({"dead", "list", "fatal"});
  EXPECT_EQ(dead.exit_code, 0) << dead.err;
  EXPECT_EQ(dead.out, "");
  const CtlResult topics = Ctl({"topics"});
  const auto lines = Lines(topics.out);
  ASSERT_EQ(lines.size(), 2u) << topics.out;
  EXPECT_EQ(Words(lines[1]),
            (std::vector<std::string>{"fatal", "0", "0", "0", "0", "1", "0", "0"}));
}

TEST_F(ShardqctlTest, NackMetaReplacesTheMetadata) {
  const std::string id = EnqueueId({"meta", "p", "--meta", "old=1"});
  auto [got, token] = DequeueOne("meta");
  ASSERT_EQ(got, id);
  ASSERT_EQ(Ctl({"nack", id, token, "--meta", "step=2"}).exit_code, 0);
  auto items = client_->Dequeue(kNs, "meta", 1);
  ASSERT_EQ(items.size(), 1u);
  ASSERT_EQ(items[0].metadata().entries_size(), 1);
  EXPECT_EQ(items[0].metadata().entries().at("step"), "2");

  ASSERT_EQ(Ctl({"nack", id, items[0].lease_token(), "--clear-meta"}).exit_code, 0);
  items = client_->Dequeue(kNs, "meta", 1);
  ASSERT_EQ(items.size(), 1u);
  EXPECT_EQ(items[0].metadata().entries_size(), 0);
}

// ---- status / history ----

TEST_F(ShardqctlTest, StatusShowsTheTaskAndHistoryItsEvents) {
  const std::string id = EnqueueId({"st", "body", "--task-type", "email"});
  const CtlResult ready = Ctl({"status", id, "--payload"});
  ASSERT_EQ(ready.exit_code, 0) << ready.err;
  EXPECT_EQ(Field(ready.out, "id"), id);
  EXPECT_EQ(Field(ready.out, "namespace"), kNs);
  EXPECT_EQ(Field(ready.out, "topic"), "st");
  EXPECT_EQ(Field(ready.out, "task_type"), "email");
  EXPECT_EQ(Field(ready.out, "state"), "READY");
  EXPECT_EQ(Field(ready.out, "attempts"), "0/5");
  EXPECT_EQ(Field(ready.out, "cancel_requested"), "no");
  EXPECT_THAT(Field(ready.out, "due_at"), HasSubstr(std::to_string(NowMs())))
      << "next_at under its meaning for READY";
  EXPECT_EQ(Field(ready.out, "payload (text, 4 bytes)"), "body");

  auto [got, token] = DequeueOne("st", "w1");
  ASSERT_EQ(got, id);
  const CtlResult running = Ctl({"status", id});
  EXPECT_EQ(Field(running.out, "state"), "RUNNING");
  EXPECT_EQ(Field(running.out, "worker"), "w1");
  EXPECT_FALSE(Field(running.out, "lease_deadline").empty()) << running.out;
  EXPECT_EQ(Field(running.out, "payload (text, 4 bytes)"), "") << "only with --payload";

  ASSERT_EQ(Ctl({"nack", id, token, "--error", "line1\nline2"}).exit_code, 0);
  std::tie(got, token) = DequeueOne("st", "w2");
  ASSERT_EQ(got, id);
  ASSERT_EQ(Ctl({"ack", id, token, "--result", "sent"}).exit_code, 0);

  const CtlResult done = Ctl({"status", id});
  ASSERT_EQ(done.exit_code, 0) << done.err;
  EXPECT_EQ(Field(done.out, "state"), "SUCCEEDED");
  EXPECT_EQ(Field(done.out, "attempts"), "2/5");
  EXPECT_EQ(Field(done.out, "worker"), "w2");
  EXPECT_EQ(Field(done.out, "last_error"), "line1\\nline2");
  EXPECT_EQ(Field(done.out, "result"), "(text, 4 bytes) sent");
  EXPECT_FALSE(Field(done.out, "purge_at").empty()) << done.out;
  EXPECT_THAT(Field(done.out, "history"), StartsWith("4 event(s), latest: "));
  EXPECT_THAT(Field(done.out, "history"), HasSubstr("succeeded"));

  const CtlResult history = Ctl({"history", id});
  ASSERT_EQ(history.exit_code, 0) << history.err;
  const auto lines = Lines(history.out);
  ASSERT_EQ(lines.size(), 4u) << history.out;
  const std::string at = IsoSeconds(NowMs()) + ".000Z";
  EXPECT_EQ(Words(lines[0]), (std::vector<std::string>{at, "#1", "leased", "worker=w1"}));
  EXPECT_EQ(Words(lines[1]),
            (std::vector<std::string>{at, "#1", "retry", "worker=w1", "line1\\nline2"}))
      << "a newline in a detail shows as \\n";
  EXPECT_EQ(Words(lines[2]), (std::vector<std::string>{at, "#2", "leased", "worker=w2"}));
  EXPECT_EQ(Words(lines[3])[2], "succeeded") << lines[3];

  const CtlResult tail = Ctl({"history", id, "--tail", "1"});
  EXPECT_EQ(tail.exit_code, 0) << tail.err;
  EXPECT_EQ(Lines(tail.out), (std::vector<std::string>{lines[3]}));

  const CtlResult json = Ctl({"--json", "history", id});
  const auto doc = nlohmann::json::parse(json.out, nullptr, false);
  ASSERT_TRUE(doc.is_array() && doc.size() == 4u) << json.out;
  EXPECT_EQ(doc[1]["kind"], "retry");
  EXPECT_EQ(doc[1]["detail"], "line1\nline2") << "whole in JSON";
  EXPECT_EQ(doc[1]["attempt"], 1);

  const CtlResult status_json = Ctl({"--json", "status", id});
  const auto task = nlohmann::json::parse(status_json.out, nullptr, false);
  ASSERT_TRUE(task.is_object()) << status_json.out;
  EXPECT_EQ(task["state"], "SUCCEEDED");
  EXPECT_EQ(task["next_at_meaning"], "purge_at");
  EXPECT_EQ(task["result_encoding"], "text");
  EXPECT_EQ(task["result"], "sent");
  EXPECT_EQ(task["history"].size(), 4u);
}

TEST_F(ShardqctlTest, HistoryOfANeverDeliveredTaskIsEmpty) {
  const std::string id = EnqueueId({"fresh", "p"});
  const CtlResult r = Ctl({"history", id});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "");
  EXPECT_THAT(r.err, HasSubstr("no history events"));
  const CtlResult json = Ctl({"--json", "history", id});
  EXPECT_EQ(json.exit_code, 0) << json.err;
  EXPECT_EQ(nlohmann::json::parse(json.out, nullptr, false), nlohmann::json::array());
  // The status document has its history, empty, as a task with events has it.
  const CtlResult status = Ctl({"--json", "status", id});
  ASSERT_EQ(status.exit_code, 0) << status.err;
  const auto task = nlohmann::json::parse(status.out, nullptr, false);
  ASSERT_TRUE(task.contains("history")) << status.out;
  EXPECT_EQ(task["history"], nlohmann::json::array());
}

TEST_F(ShardqctlTest, StatusOfAnUnknownIdFailsWithNotFound) {
  for (const std::string command : {"status", "history", "cancel"}) {
    const CtlResult r = Ctl({command, "0-999999"});
    EXPECT_EQ(r.exit_code, 1) << command << ": " << r.out << r.err;
    EXPECT_EQ(r.out, "") << command;
    EXPECT_THAT(r.err, HasSubstr("NOT_FOUND")) << command;
  }
}

// The id is not checked by shardqctl: the server refuses it (an RPC error, exit 1).
TEST_F(ShardqctlTest, StatusOfAMalformedIdFailsWithInvalidArgument) {
  for (const std::string id : {"nonsense", "1-", "-5"}) {
    const CtlResult r = Ctl({"status", "--", id});
    EXPECT_EQ(r.exit_code, 1) << id << ": " << r.out << r.err;
    EXPECT_EQ(r.out, "") << id;
    EXPECT_THAT(r.err, HasSubstr("INVALID_ARGUMENT")) << id;
  }
}

// ---- topics ----

TEST_F(ShardqctlTest, TopicsListsEachTopicWithItsCounts) {
  ASSERT_EQ(Ctl({"enqueue", "alpha", "x", "--count", "3"}).exit_code, 0);
  EnqueueId({"alpha", "later", "--delay-ms", "60000"});
  EnqueueId({"beta", "x"});
  DequeueOne("beta");  // stays LEASED
  EnqueueId({"beta", "y"});
  auto [acked, ack_token] = DequeueOne("beta");
  ASSERT_EQ(Ctl({"ack", acked, ack_token}).exit_code, 0);
  ASSERT_TRUE(client_->EnqueueOne("other-namespace", "gamma").ok());

  const CtlResult r = Ctl({"topics"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto lines = Lines(r.out);
  ASSERT_EQ(lines.size(), 3u) << r.out;
  EXPECT_EQ(Words(lines[0]),
            (std::vector<std::string>{"TOPIC", "READY", "DELAYED", "LEASED", "SUCCEEDED",
                                      "FAILED", "DEAD", "CANCELLED"}));
  EXPECT_EQ(Words(lines[1]),
            (std::vector<std::string>{"alpha", "3", "1", "0", "0", "0", "0", "0"}));
  EXPECT_EQ(Words(lines[2]),
            (std::vector<std::string>{"beta", "0", "0", "1", "1", "0", "0", "0"}));
  // Columns are aligned: every line is as long as the header.
  EXPECT_EQ(lines[1].size(), lines[0].size());
  EXPECT_EQ(lines[2].size(), lines[0].size());

  const CtlResult json = Ctl({"--json", "topics"});
  const auto doc = nlohmann::json::parse(json.out, nullptr, false);
  ASSERT_TRUE(doc.is_array() && doc.size() == 2u) << json.out;
  EXPECT_EQ(doc[1], (nlohmann::json{{"topic", "beta"},
                                    {"ready", 0},
                                    {"delayed", 0},
                                    {"leased", 1},
                                    {"succeeded", 1},
                                    {"failed", 0},
                                    {"dead", 0},
                                    {"cancelled", 0}}));
}

// ---- cancel ----

TEST_F(ShardqctlTest, CancelOfAReadyTaskPrintsCancelled) {
  const std::string id = EnqueueId({"cx", "p"});
  const CtlResult r = Ctl({"cancel", id});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, id + " CANCELLED\n");
  EXPECT_EQ(client_->GetTask(id).state(), v1::CANCELLED);
  EXPECT_TRUE(client_->Dequeue(kNs, "cx", 1).empty()) << "it never runs";

  const std::string other = EnqueueId({"cx", "q"});
  const CtlResult json = Ctl({"--json", "cancel", other});
  ASSERT_EQ(json.exit_code, 0) << json.err;
  const auto doc = nlohmann::json::parse(json.out, nullptr, false);
  ASSERT_TRUE(doc.is_object()) << json.out;
  EXPECT_EQ(doc.value("state", ""), "CANCELLED") << json.out;
  ASSERT_TRUE(doc.contains("history")) << json.out;
  EXPECT_TRUE(doc.at("history").is_array());
}

TEST_F(ShardqctlTest, CancelOfARunningTaskAsksItsWorkerAndOfAFinishedOneFails) {
  const std::string id = EnqueueId({"cr", "p"});
  const auto [got, token] = DequeueOne("cr");
  ASSERT_EQ(got, id);
  const CtlResult r = Ctl({"cancel", id});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, StartsWith(id + " RUNNING cancel_requested: "));

  const CtlResult extend = Ctl({"extend", id, token, "--ms", "1000"});
  EXPECT_EQ(extend.exit_code, 0) << extend.err;
  EXPECT_THAT(extend.out, StartsWith(id + " OK lease_deadline "));
  EXPECT_THAT(extend.out, HasSubstr("CANCEL_REQUESTED"));
  const CtlResult extend_json = Ctl({"--json", "extend", id, token, "--ms", "1000"});
  const auto doc = nlohmann::json::parse(extend_json.out, nullptr, false);
  ASSERT_TRUE(doc.is_array() && doc.size() == 1u) << extend_json.out;
  EXPECT_EQ(doc[0]["cancel_requested"], true);

  ASSERT_EQ(Ctl({"nack", id, token}).exit_code, 0);
  EXPECT_EQ(client_->GetTask(id).state(), v1::CANCELLED);

  const std::string done = EnqueueId({"cr2", "p"});
  const auto [got2, token2] = DequeueOne("cr2");
  ASSERT_EQ(Ctl({"ack", got2, token2}).exit_code, 0);
  const CtlResult finished = Ctl({"cancel", done});
  EXPECT_EQ(finished.exit_code, 1) << finished.out;
  EXPECT_EQ(finished.out, "");
  EXPECT_THAT(finished.err, HasSubstr("FAILED_PRECONDITION"));
  EXPECT_EQ(client_->GetTask(done).state(), v1::SUCCEEDED);
}

// ---- dead letters ----

TEST_F(ShardqctlTest, DeadLettersListRedriveAndPurge) {
  // Three tasks allowed one attempt each; a (non-fatal) nack dead-letters them.
  std::vector<std::string> ids;
  for (const char* error : {"boom a", "boom b", "boom c"}) {
    const std::string id = EnqueueId({"dlq", "p", "--max-attempts", "1"});
    const auto [got, token] = DequeueOne("dlq");
    ASSERT_EQ(got, id);
    ASSERT_EQ(Ctl({"nack", id, token, "--error", error}).exit_code, 0);
    ASSERT_EQ(client_->GetTask(id).state(), v1::DEAD_LETTERED);
    ids.push_back(id);
  }

  const CtlResult list = Ctl({"dead", "list", "dlq"});
  ASSERT_EQ(list.exit_code, 0) << list.err;
  auto lines = Lines(list.out);
  ASSERT_EQ(lines.size(), 4u) << list.out;
  EXPECT_EQ(Words(lines[0]),
            (std::vector<std::string>{"ID", "PRIORITY", "ATTEMPTS", "TASK_TYPE",
                                      "DEAD_AT", "LAST_ERROR"}));
  std::set<std::string> listed;
  for (size_t i = 1; i < lines.size(); ++i) {
    const auto words = Words(lines[i]);
    ASSERT_EQ(words.size(), 7u) << lines[i];
    listed.insert(words[0]);
    EXPECT_EQ(words[1], "0");
    EXPECT_EQ(words[2], "1/1");
    EXPECT_EQ(words[3], "-");
    EXPECT_EQ(words[4], IsoSeconds(NowMs()) + ".000Z");
    EXPECT_EQ(words[5], "boom");
  }
  EXPECT_EQ(listed, std::set<std::string>(ids.begin(), ids.end()));

  const CtlResult limited = Ctl({"--json", "dead", "list", "dlq", "--limit", "2"});
  const auto doc = nlohmann::json::parse(limited.out, nullptr, false);
  ASSERT_TRUE(doc.is_array()) << limited.out;
  EXPECT_EQ(doc.size(), 2u);
  EXPECT_EQ(doc[0]["state"], "DEAD_LETTERED");

  // Redrive one by id.
  const CtlResult redrive = Ctl({"dead", "redrive", "dlq", ids[0]});
  EXPECT_EQ(redrive.exit_code, 0) << redrive.err;
  EXPECT_EQ(redrive.out, ids[0] + " OK\nredriven 1\n");
  EXPECT_EQ(client_->GetTask(ids[0]).state(), v1::READY);
  // Again: it is not dead any more.
  const CtlResult again = Ctl({"dead", "redrive", "dlq", ids[0]});
  EXPECT_EQ(again.exit_code, 3) << again.err;
  lines = Lines(again.out);
  ASSERT_EQ(lines.size(), 2u) << again.out;
  EXPECT_THAT(lines[0], StartsWith(ids[0] + " FAILED_PRECONDITION"));
  EXPECT_EQ(lines[1], "redriven 0");

  // Purge one by id, then --all takes the last.
  const CtlResult purge = Ctl({"dead", "purge", "dlq", ids[1]});
  EXPECT_EQ(purge.exit_code, 0) << purge.err;
  EXPECT_EQ(purge.out, ids[1] + " OK\npurged 1\n");
  grpc::Status gone;
  client_->GetTask(ids[1], &gone);
  EXPECT_EQ(gone.error_code(), grpc::StatusCode::NOT_FOUND);
  const CtlResult all = Ctl({"dead", "purge", "dlq", "--all"});
  EXPECT_EQ(all.exit_code, 0) << all.err;
  EXPECT_EQ(all.out, "purged 1\n");
  client_->GetTask(ids[2], &gone);
  EXPECT_EQ(gone.error_code(), grpc::StatusCode::NOT_FOUND);

  const CtlResult empty = Ctl({"dead", "list", "dlq"});
  EXPECT_EQ(empty.exit_code, 0) << empty.err;
  EXPECT_EQ(empty.out, "");
  EXPECT_THAT(empty.err, HasSubstr("no dead letters"));

  // The redriven one runs again with a fresh budget; dead again, then redrive-all.
  const auto [got, token] = DequeueOne("dlq");
  ASSERT_EQ(got, ids[0]);
  ASSERT_EQ(Ctl({"nack", got, token}).exit_code, 0);
  ASSERT_EQ(client_->GetTask(ids[0]).state(), v1::DEAD_LETTERED);
  const CtlResult redrive_all = Ctl({"dead", "redrive", "dlq"});
  EXPECT_EQ(redrive_all.exit_code, 0) << redrive_all.err;
  EXPECT_EQ(redrive_all.out, "redriven 1\n");
  EXPECT_EQ(client_->GetTask(ids[0]).state(), v1::READY);
  const CtlResult json = Ctl({"--json", "dead", "redrive", "dlq"});
  const auto summary = nlohmann::json::parse(json.out, nullptr, false);
  ASSERT_TRUE(summary.is_object()) << json.out;
  EXPECT_EQ(summary["topic"], "dlq");
  EXPECT_EQ(summary["redriven"], 0);
  EXPECT_EQ(summary["calls"], 1);
}

TEST_F(ShardqctlTest, DeadListCutsTheLastErrorTo80BytesAndJsonHasItWhole) {
  const std::string error = std::string(100, 'e') + "\nsecond line";
  const std::string id =
      EnqueueId({"long", "p", "--max-attempts", "1", "--task-type", "tt", "-p", "3"});
  const auto [got, token] = DequeueOne("long");
  ASSERT_EQ(Ctl({"nack", got, token, "--error", error}).exit_code, 0);

  const CtlResult list = Ctl({"dead", "list", "long"});
  EXPECT_EQ(list.exit_code, 0) << list.err;
  const auto lines = Lines(list.out);
  ASSERT_EQ(lines.size(), 2u) << list.out;
  EXPECT_EQ(Words(lines[1]),
            (std::vector<std::string>{id, "3", "1/1", "tt", IsoSeconds(NowMs()) + ".000Z",
                                      std::string(80, 'e') + "..."}));
  const CtlResult json = Ctl({"--json", "dead", "list", "long"});
  const auto doc = nlohmann::json::parse(json.out, nullptr, false);
  ASSERT_TRUE(doc.is_array() && doc.size() == 1u) << json.out;
  EXPECT_EQ(doc[0]["last_error"], error);
}

TEST_F(ShardqctlTest, DeadPurgeWithoutIdsDemandsAll) {
  const std::string id = EnqueueId({"keep", "p", "--max-attempts", "1"});
  const auto [got, token] = DequeueOne("keep");
  ASSERT_EQ(Ctl({"nack", got, token}).exit_code, 0);
  const CtlResult r = Ctl({"dead", "purge", "keep"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(r.out, "");
  EXPECT_THAT(r.err, HasSubstr("--all"));
  EXPECT_EQ(client_->GetTask(id).state(), v1::DEAD_LETTERED) << "nothing purged";

  const CtlResult both = Ctl({"dead", "purge", "keep", id, "--all"});
  EXPECT_EQ(both.exit_code, 2);
  EXPECT_EQ(both.out, "");
  EXPECT_EQ(client_->GetTask(id).state(), v1::DEAD_LETTERED) << "nothing purged";
}

// ---- health / shards ----

TEST_F(ShardqctlTest, HealthPrintsServing) {
  const CtlResult r = Ctl({"health"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "SERVING\n");
  const CtlResult json = Ctl({"--json", "health"});
  EXPECT_EQ(json.exit_code, 0) << json.err;
  EXPECT_EQ(nlohmann::json::parse(json.out, nullptr, false),
            (nlohmann::json{{"service", ""}, {"status", "SERVING"}}));
}

TEST_F(ShardqctlTest, HealthOfAServiceByName) {
  const CtlResult queue = Ctl({"health", "--service", "shardq.v1.Queue"});
  EXPECT_EQ(queue.exit_code, 0) << queue.err;
  EXPECT_EQ(queue.out, "SERVING\n");
  // The health service does not know the name: an RPC error, not "not serving".
  const CtlResult unknown = Ctl({"health", "--service", "no.such.Service"});
  EXPECT_EQ(unknown.exit_code, 1) << unknown.out;
  EXPECT_EQ(unknown.out, "");
  EXPECT_THAT(unknown.err, HasSubstr("NOT_FOUND"));
}

TEST_F(ShardqctlTest, ShardsPrintsOneUpLinePerShard) {
  const CtlResult r = Ctl({"shards"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  const auto lines = Lines(r.out);
  ASSERT_EQ(lines.size(), 2u) << r.out;
  EXPECT_THAT(lines[0], ::testing::MatchesRegex(
                            "shard 0: up \\(breaker CLOSED, release lead [0-9]+ ms\\)"));
  EXPECT_THAT(lines[1], ::testing::MatchesRegex(
                            "shard 1: up \\(breaker CLOSED, release lead [0-9]+ ms\\)"));
}

// A server none of whose shards can be opened (no MariaDB at its socket): the
// operator's checks say so with exit code 4.
TEST(ShardqctlDownTest, HealthAndShardsExitFourWhenNoShardTakesCalls) {
  FakeClock clock;  // never advanced: the breakers' probes do not come round
  auto server = frontend::Server::Start(FreshConfig("/nonexistent/mysql.sock", 2), clock);
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  ASSERT_TRUE(AwaitFirstOpenAttempts((*server)->engine()));
  const std::string address = "127.0.0.1:" + std::to_string((*server)->port());
  const CtlResult health = RunShardqctl({"--server", address, "health"}, "");
  EXPECT_EQ(health.exit_code, 4) << health.err;
  EXPECT_EQ(health.out, "NOT_SERVING\n");
  const CtlResult shards = RunShardqctl({"--server", address, "shards"}, "");
  EXPECT_EQ(shards.exit_code, 4) << shards.err;
  const auto lines = Lines(shards.out);
  ASSERT_EQ(lines.size(), 2u) << shards.out;
  for (const std::string& line : lines) {
    EXPECT_THAT(line, ::testing::MatchesRegex("shard [01]: down \\(breaker OPEN.*"))
        << line;
  }
}

// ---- bad arguments / no server ----

TEST_F(ShardqctlTest, BadArgumentsExitTwoWithNothingOnStdout) {
  const std::vector<std::vector<std::string>> cases = {
      {},                                                   // no command
      {"frobnicate"},                                       // unknown command
      {"enqueue"},                                          // TOPIC missing
      {"enqueue", "bad", "x", "--count", "0"},              // below 1
      {"enqueue", "bad", "x", "--count", "1001"},           // above 1000
      {"--timeout-ms", "86400001", "enqueue", "bad", "x"},  // over a day
      {"--timeout-ms", "0", "health"},                      // below 1
      {"enqueue", "bad", "x", "--delay-ms", "-1"},
      {"enqueue", "bad", "x", "--meta", "novalue"},  // not key=value
      {"enqueue", "bad", "x", "--meta", "k=1", "--meta", "k=2"},
      {"enqueue", "bad", "x", "--delay-ms", "5", "--deliver-after-ms", "5"},
      {"dequeue", "bad", "--wait-ms", "60001"},
      {"ack", "0-1"},  // ID without TOKEN
      {"ack"},
      {"extend", "0-1", "5"},  // --ms missing
      {"nack", "0-1", "5", "--meta", "a=1", "--clear-meta"},
      {"status"},
      {"history", "0-1", "--tail", "0"},
      {"dead"},  // no dead subcommand
      {"dead", "list"},
      {"dead", "list", "bad", "--limit", "0"},
  };
  for (const auto& args : cases) {
    std::string shown;
    for (const auto& a : args) shown += " " + a;
    const CtlResult r = Ctl(args, "stdin payload");
    EXPECT_EQ(r.exit_code, 2) << "shardqctl" << shown << "\nstderr: " << r.err;
    EXPECT_EQ(r.out, "") << "shardqctl" << shown;
    EXPECT_NE(r.err, "") << "shardqctl" << shown;
  }
  const CtlResult topics = Ctl({"topics"});
  EXPECT_EQ(topics.exit_code, 0) << topics.err;
  EXPECT_EQ(Lines(topics.out).size(), 1u) << "nothing was enqueued:\n" << topics.out;
}

TEST_F(ShardqctlTest, HelpExitsZero) {
  const CtlResult r = Ctl({"--help"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("enqueue"));
  EXPECT_THAT(r.out, HasSubstr("Exit codes"));
  const CtlResult sub = Ctl({"enqueue", "--help"});
  EXPECT_EQ(sub.exit_code, 0) << sub.err;
  EXPECT_THAT(sub.out, HasSubstr("--dedup-key"));
}

TEST_F(ShardqctlTest, NoServerThereExitsOneWithTheErrorOnStderr) {
  for (const std::vector<std::string>& command :
       {std::vector<std::string>{"health"}, {"enqueue", "t", "x"}, {"topics"}}) {
    std::vector<std::string> args = {"--server", "127.0.0.1:1", "--timeout-ms", "2000"};
    args.insert(args.end(), command.begin(), command.end());
    const CtlResult r = RunShardqctl(args, "");
    EXPECT_EQ(r.exit_code, 1) << command[0] << ": " << r.out << r.err;
    EXPECT_EQ(r.out, "") << command[0];
    EXPECT_THAT(r.err, HasSubstr("RPC failed: ")) << command[0];
    EXPECT_THAT(
        r.err, ::testing::AnyOf(HasSubstr("UNAVAILABLE"), HasSubstr("DEADLINE_EXCEEDED")))
        << command[0];
  }
}

}  // namespace
}  // namespace shardq::testing
