#include "tools/shardqctl_commands.h"

#include <fmt/format.h>
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "grpc/health/v1/health.grpc.pb.h"
#include "shardq/v1/message_limits.h"
#include "shardq/v1/queue.grpc.pb.h"
#include "tools/shardqctl_format.h"

namespace shardq::tools {
namespace {

using nlohmann::json;
using LeaseRefs = std::vector<std::pair<std::string, std::string>>;

std::shared_ptr<grpc::Channel> MakeChannel(const GlobalOptions& global) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(v1::kMaxMessageBytes);  // a dequeue of 1,000 large items
  return grpc::CreateCustomChannel(global.server, grpc::InsecureChannelCredentials(),
                                   args);
}

std::unique_ptr<v1::Queue::Stub> MakeQueueStub(const GlobalOptions& global) {
  return v1::Queue::NewStub(MakeChannel(global));
}

void SetDeadline(grpc::ClientContext& context, int64_t ms) {
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(ms));
}

int ReportRpcError(const grpc::Status& status) {
  fmt::print(stderr, "shardqctl: RPC failed: {}: {}\n",
             StatusCodeName(status.error_code()), status.error_message());
  return kExitRpcFailed;
}

// The protocol promises one result per item; a server that breaks that promise
// cannot be trusted item by item, so the whole call counts as failed.
bool CheckResultCount(size_t results, size_t items) {
  if (results == items) return true;
  fmt::print(stderr, "shardqctl: server answered {} result(s) for {} item(s)\n", results,
             items);
  return false;
}

void PrintJson(const json& doc) { std::cout << doc.dump(2) << '\n'; }

json StatusJson(const v1::ItemStatus& status) {
  json out = {{"code", status.code()}, {"status", StatusCodeName(status.code())}};
  if (status.code() != 0) out["message"] = status.message();
  return out;
}

std::string StatusText(const v1::ItemStatus& status) {
  if (status.code() == 0) return "OK";
  return fmt::format("{}: {}", StatusCodeName(status.code()), status.message());
}

json MetadataJson(const v1::Metadata& metadata) {
  json out = json::object();
  for (const auto& [key, value] : metadata.entries()) out[key] = value;
  return out;
}

// Map iteration order is unspecified in protobuf; sorting keeps output stable.
std::string MetadataText(const v1::Metadata& metadata) {
  std::vector<std::pair<std::string, std::string>> entries(metadata.entries().begin(),
                                                           metadata.entries().end());
  std::sort(entries.begin(), entries.end());
  std::string out;
  for (const auto& [key, value] : entries) {
    if (!out.empty()) out += ", ";
    out += key + "=" + value;
  }
  return out.empty() ? "-" : out;
}

void FillMetadata(const std::vector<std::string>& args, v1::Metadata& metadata) {
  for (auto& [key, value] : ParseMeta(args)) (*metadata.mutable_entries())[key] = value;
}

// ---- enqueue ----

std::string ReadPayload(const std::string& arg) {
  if (arg != "-") return arg;
  // Without this hint an interactive user sees a silent hang.
  if (isatty(STDIN_FILENO)) {
    fmt::print(stderr, "shardqctl: reading payload from stdin (end with Ctrl-D)\n");
  }
  return ReadAll(std::cin);
}

// Everything but the payload, which may still have to be read from stdin.
v1::EnqueueItem BuildEnqueueItem(const EnqueueOptions& options) {
  v1::EnqueueItem item;
  item.set_topic(options.topic);
  item.set_priority(options.priority);
  if (!options.meta.empty()) FillMetadata(options.meta, *item.mutable_metadata());
  if (options.delay_ms >= 0) item.set_delay_ms(options.delay_ms);
  if (options.deliver_after_ms >= 0) item.set_deliver_after_ms(options.deliver_after_ms);
  item.set_lease_ms(options.lease_ms);
  item.set_ttl_ms(options.ttl_ms);
  item.set_task_type(options.task_type);
  item.set_dedup_key(options.dedup_key);
  item.set_max_attempts(options.max_attempts);
  return item;
}

int PrintEnqueueResults(const GlobalOptions& global,
                        const v1::EnqueueResponse& response) {
  int exit_code = kExitOk;
  json doc = json::array();
  for (int i = 0; i < response.results_size(); ++i) {
    const auto& result = response.results(i);
    const bool ok = result.status().code() == 0;
    if (!ok) exit_code = kExitItemFailed;
    if (global.json) {
      json entry = StatusJson(result.status());
      if (ok) {
        entry["id"] = result.id();
        entry["deduplicated"] = result.deduplicated();
      }
      doc.push_back(std::move(entry));
    } else if (ok) {
      fmt::print("{}{}\n", result.id(), result.deduplicated() ? " (deduplicated)" : "");
    } else {
      // stderr, so that stdout stays a clean list of ids for scripts.
      fmt::print(stderr, "item {}: {}\n", i, StatusText(result.status()));
    }
  }
  if (global.json) PrintJson(doc);
  return exit_code;
}

// ---- dequeue ----

// "2/5"; just "2" from a server that does not send max_attempts.
std::string AttemptsText(uint32_t attempts, uint32_t max_attempts) {
  if (max_attempts == 0) return std::to_string(attempts);
  return fmt::format("{}/{}", attempts, max_attempts);
}

// Payloads are arbitrary bytes: show text when it is safe to, else base64.
std::pair<std::string, std::string> EncodePayload(const std::string& payload) {
  if (IsPrintableUtf8(payload)) return {"text", payload};
  return {"base64", Base64Encode(payload)};
}

json DequeuedItemJson(const v1::DequeuedItem& item) {
  auto [encoding, payload] = EncodePayload(item.payload());
  return {{"id", item.id()},
          {"topic", item.topic()},
          {"lease_token", item.lease_token()},
          {"priority", item.priority()},
          {"task_type", item.task_type()},
          {"attempts", item.attempts()},
          {"max_attempts", item.max_attempts()},
          {"lease_deadline_ms", item.lease_deadline_ms()},
          {"enqueued_at_ms", item.enqueued_at_ms()},
          {"deliver_after_ms", item.deliver_after_ms()},
          {"metadata", MetadataJson(item.metadata())},
          {"payload_encoding", encoding},
          {"payload", payload}};
}

void PrintDequeuedItem(const v1::DequeuedItem& item) {
  auto [encoding, payload] = EncodePayload(item.payload());
  fmt::print("id:             {}\n", item.id());
  fmt::print("topic:          {}\n", item.topic());
  fmt::print("lease_token:    {}\n", item.lease_token());
  fmt::print("task_type:      {}\n", item.task_type().empty() ? "-" : item.task_type());
  fmt::print("priority:       {}\n", item.priority());
  fmt::print("attempts:       {}\n", AttemptsText(item.attempts(), item.max_attempts()));
  fmt::print("lease_deadline: {} ({})\n", FormatUnixMs(item.lease_deadline_ms()),
             item.lease_deadline_ms());
  fmt::print("enqueued_at:    {}\n", FormatUnixMs(item.enqueued_at_ms()));
  fmt::print("deliver_after:  {}\n", FormatUnixMs(item.deliver_after_ms()));
  fmt::print("metadata:       {}\n", MetadataText(item.metadata()));
  fmt::print("payload ({}, {} bytes): {}\n", encoding, item.payload().size(), payload);
}

// ---- ack / nack / extend ----

// What an OK item adds to its status line: text after "ID OK", JSON fields.
struct ItemExtra {
  std::string text;
  json fields = json::object();
};

// One line (or JSON object) per item of a batched call, in request order. `ids`
// and `statuses` have the same length; `extras` is empty or that long too.
int PrintItemStatuses(const GlobalOptions& global, const std::vector<std::string>& ids,
                      const std::vector<v1::ItemStatus>& statuses,
                      const std::vector<ItemExtra>& extras = {}) {
  int exit_code = kExitOk;
  json doc = json::array();
  for (size_t i = 0; i < ids.size(); ++i) {
    const auto& status = statuses[i];
    const bool ok = status.code() == 0;
    if (!ok) exit_code = kExitItemFailed;
    const ItemExtra* extra = ok && i < extras.size() ? &extras[i] : nullptr;
    if (global.json) {
      json entry = StatusJson(status);
      entry["id"] = ids[i];
      if (extra != nullptr) entry.update(extra->fields);
      doc.push_back(std::move(entry));
    } else if (extra != nullptr && !extra->text.empty()) {
      fmt::print("{} OK {}\n", ids[i], extra->text);
    } else {
      fmt::print("{} {}\n", ids[i], StatusText(status));
    }
  }
  if (global.json) PrintJson(doc);
  return exit_code;
}

std::vector<std::string> RefIds(const LeaseRefs& refs) {
  std::vector<std::string> ids;
  for (const auto& ref : refs) ids.push_back(ref.first);
  return ids;
}

// LeaseRef and AckItem share their id and lease_token fields.
template <typename Ref>
void FillLeaseRef(const std::pair<std::string, std::string>& ref, Ref& out) {
  out.set_id(ref.first);
  out.set_lease_token(ref.second);
}

// ---- topics ----

// The count columns of the topics table, in order: live states, then final ones.
constexpr std::array<const char*, 7> kTopicColumns = {
    "READY", "DELAYED", "LEASED", "SUCCEEDED", "FAILED", "DEAD", "CANCELLED"};

std::array<uint64_t, kTopicColumns.size()> TopicCounts(const v1::TopicInfo& t) {
  return {t.ready(),  t.delayed(), t.leased(),   t.succeeded(),
          t.failed(), t.dead(),    t.cancelled()};
}

// Each column as wide as its header or its widest number, whichever is more.
void PrintTopicsTable(const v1::GetActiveTopicsResponse& response) {
  std::vector<std::vector<std::string>> rows;
  rows.emplace_back(std::begin(kTopicColumns), std::end(kTopicColumns));
  rows.front().insert(rows.front().begin(), "TOPIC");
  for (const auto& t : response.topics()) {
    std::vector<std::string> row{t.topic()};
    for (const uint64_t n : TopicCounts(t)) row.push_back(std::to_string(n));
    rows.push_back(std::move(row));
  }
  std::vector<size_t> widths(rows.front().size(), 0);
  for (const auto& row : rows) {
    for (size_t c = 0; c < row.size(); ++c)
      widths[c] = std::max(widths[c], row[c].size());
  }
  for (const auto& row : rows) {
    std::string line = fmt::format("{:<{}}", row[0], widths[0]);
    for (size_t c = 1; c < row.size(); ++c)
      line += fmt::format("  {:>{}}", row[c], widths[c]);
    fmt::print("{}\n", line);
  }
}

json TopicsJson(const v1::GetActiveTopicsResponse& response) {
  json doc = json::array();
  for (const auto& t : response.topics()) {
    doc.push_back({{"topic", t.topic()},
                   {"ready", t.ready()},
                   {"delayed", t.delayed()},
                   {"leased", t.leased()},
                   {"succeeded", t.succeeded()},
                   {"failed", t.failed()},
                   {"dead", t.dead()},
                   {"cancelled", t.cancelled()}});
  }
  return doc;
}

// ---- tasks: status / history / cancel / dead ----

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// An enum value's name; PREFIX_n for a value this build does not know (a newer
// server), so it still shows.
std::string EnumName(const std::string& name, const char* prefix, int value) {
  return name.empty() ? fmt::format("{}_{}", prefix, value) : name;
}

std::string StateName(v1::TaskState state) {
  return EnumName(v1::TaskState_Name(state), "STATE", state);
}

bool IsFinal(v1::TaskState state) {
  return state == v1::SUCCEEDED || state == v1::FAILED || state == v1::DEAD_LETTERED ||
         state == v1::CANCELLED;
}

// What Task.next_at_ms means depends on the state.
std::string NextAtLabel(v1::TaskState state) {
  switch (state) {
    case v1::SCHEDULED:
    case v1::READY:
    case v1::RETRYING:
      return "due_at";
    case v1::RUNNING:
      return "lease_deadline";
    default:
      return IsFinal(state) ? "purge_at" : "next_at";
  }
}

json EventJson(const v1::TaskEvent& event) {
  return {{"at_ms", event.at_ms()},
          {"kind", event.kind()},
          {"attempt", event.attempt()},
          {"worker_id", event.worker_id()},
          {"detail", event.detail()}};
}

// "2024-05-01T12:00:00.123Z  #1  leased            worker=w1  detail"
std::string EventText(const v1::TaskEvent& event) {
  std::string line = fmt::format("{}  #{:<2}  {:<16}", FormatUnixMs(event.at_ms()),
                                 event.attempt(), event.kind());
  if (!event.worker_id().empty()) line += "  worker=" + OneLine(event.worker_id(), 128);
  if (!event.detail().empty()) line += "  " + OneLine(event.detail(), 4096);
  // The kind column pads; a line without worker and detail should not end in blanks.
  while (!line.empty() && line.back() == ' ') line.pop_back();
  return line;
}

// Everything the task carries; `with_history` for the calls that answer a task's
// history (GetTask, CancelTask: `[]` when it has no events yet), not for dead letters.
json TaskJson(const v1::Task& task, bool with_history) {
  json out = {{"id", task.id()},
              {"namespace", task.namespace_()},
              {"topic", task.topic()},
              {"task_type", task.task_type()},
              {"priority", task.priority()},
              {"state", StateName(task.state())},
              {"attempts", task.attempts()},
              {"max_attempts", task.max_attempts()},
              {"enqueued_at_ms", task.enqueued_at_ms()},
              {"first_delivered_at_ms", task.first_delivered_at_ms()},
              {"last_delivered_at_ms", task.last_delivered_at_ms()},
              {"finished_at_ms", task.finished_at_ms()},
              {"next_at_ms", task.next_at_ms()},
              {"next_at_meaning", NextAtLabel(task.state())},
              {"worker_id", task.worker_id()},
              {"last_error", task.last_error()},
              {"metadata", MetadataJson(task.metadata())},
              {"cancel_requested", task.cancel_requested()}};
  auto [result_encoding, result] = EncodePayload(task.result());
  out["result_encoding"] = result_encoding;
  out["result"] = result;
  if (with_history) {
    json history = json::array();
    for (const auto& event : task.history()) history.push_back(EventJson(event));
    out["history"] = std::move(history);
  }
  return out;
}

void PrintTime(std::string_view label, int64_t ms, int64_t now_ms, bool relative) {
  if (ms == 0) {
    fmt::print("{:<17} -\n", std::string(label) + ":");
    return;
  }
  fmt::print("{:<17} {} ({}{})\n", std::string(label) + ":", FormatUnixMs(ms), ms,
             relative ? ", " + FormatRelativeMs(ms, now_ms) : "");
}

void PrintTask(const v1::Task& task, bool with_payload) {
  const int64_t now = NowMs();
  const auto field = [](std::string_view label, const std::string& value) {
    fmt::print("{:<17} {}\n", std::string(label) + ":", value.empty() ? "-" : value);
  };
  field("id", task.id());
  field("namespace", task.namespace_());
  field("topic", task.topic());
  field("task_type", task.task_type());
  field("priority", std::to_string(task.priority()));
  field("state", StateName(task.state()));
  field("attempts", AttemptsText(task.attempts(), task.max_attempts()));
  field("cancel_requested", task.cancel_requested() ? "yes" : "no");
  PrintTime("enqueued_at", task.enqueued_at_ms(), now, false);
  PrintTime("first_delivered", task.first_delivered_at_ms(), now, false);
  PrintTime("last_delivered", task.last_delivered_at_ms(), now, false);
  PrintTime("finished_at", task.finished_at_ms(), now, false);
  PrintTime(NextAtLabel(task.state()), task.next_at_ms(), now, true);
  field("worker", task.worker_id());
  // Multi-line text would break the "label: value" layout; --json has it verbatim.
  field("last_error", OneLine(task.last_error(), 4096));
  if (task.result().empty()) {
    field("result", "");
  } else {
    auto [encoding, result] = EncodePayload(task.result());
    fmt::print("{:<17} ({}, {} bytes) {}\n", "result:", encoding, task.result().size(),
               OneLine(result, 4096));
  }
  field("metadata", MetadataText(task.metadata()));
  if (task.history_size() > 0) {
    fmt::print("{:<17} {} event(s), latest: {}\n", "history:", task.history_size(),
               EventText(task.history(task.history_size() - 1)));
  }
  if (with_payload) {
    auto [encoding, payload] = EncodePayload(task.payload());
    fmt::print("payload ({}, {} bytes): {}\n", encoding, task.payload().size(), payload);
  }
}

// One GetTask call; false (after reporting) when the RPC failed.
bool GetTask(const GlobalOptions& global, const std::string& id, bool include_payload,
             v1::Task& task, int& exit_code) {
  v1::GetTaskRequest request;
  request.set_id(id);
  request.set_include_payload(include_payload);
  v1::GetTaskResponse response;
  grpc::ClientContext context;
  SetDeadline(context, global.timeout_ms);
  const grpc::Status status =
      MakeQueueStub(global)->GetTask(&context, request, &response);
  if (!status.ok()) {
    exit_code = ReportRpcError(status);
    return false;
  }
  task = response.task();
  return true;
}

void PrintDeadLetters(const v1::ListDeadLettersResponse& response) {
  const std::array<const char*, 6> header = {"ID",        "PRIORITY", "ATTEMPTS",
                                             "TASK_TYPE", "DEAD_AT",  "LAST_ERROR"};
  std::vector<std::array<std::string, 6>> rows;
  rows.push_back({header[0], header[1], header[2], header[3], header[4], header[5]});
  for (const auto& task : response.tasks()) {
    rows.push_back({task.id(), std::to_string(task.priority()),
                    AttemptsText(task.attempts(), task.max_attempts()),
                    task.task_type().empty() ? "-" : task.task_type(),
                    FormatUnixMs(task.finished_at_ms()),
                    task.last_error().empty() ? "-" : OneLine(task.last_error(), 80)});
  }
  std::array<size_t, 6> widths{};
  for (const auto& row : rows) {
    for (size_t c = 0; c < row.size(); ++c)
      widths[c] = std::max(widths[c], row[c].size());
  }
  for (const auto& row : rows) {
    // The last column is free text: not padded.
    fmt::print("{:<{}}  {:>{}}  {:>{}}  {:<{}}  {:<{}}  {}\n", row[0], widths[0], row[1],
               widths[1], row[2], widths[2], row[3], widths[3], row[4], widths[4],
               row[5]);
  }
}

// Redrive and purge of "all": the server handles a bounded number per call and says
// how many; call again until it says 0. The cap only guards against a pathological
// loop (e.g. consumers that dead-letter redriven tasks as fast as they come back).
constexpr int kMaxDrainCalls = 100000;

}  // namespace

int RunEnqueue(const GlobalOptions& global, const EnqueueOptions& options) {
  // Build the item before touching stdin, so a bad --meta fails without waiting.
  v1::EnqueueItem item = BuildEnqueueItem(options);
  item.set_payload(ReadPayload(options.payload));
  v1::EnqueueRequest request;
  request.set_namespace_(global.ns);
  for (int i = 0; i < options.count; ++i) *request.add_items() = item;

  v1::EnqueueResponse response;
  grpc::ClientContext context;
  SetDeadline(context, global.timeout_ms);
  const grpc::Status status =
      MakeQueueStub(global)->Enqueue(&context, request, &response);
  if (!status.ok()) return ReportRpcError(status);
  if (!CheckResultCount(response.results_size(), request.items_size())) {
    return kExitRpcFailed;
  }
  return PrintEnqueueResults(global, response);
}

int RunDequeue(const GlobalOptions& global, const DequeueOptions& options) {
  v1::DequeueRequest request;
  request.set_namespace_(global.ns);
  request.set_wait_ms(options.wait_ms);
  request.set_worker_id(options.worker_id);
  auto* topic = request.add_topics();
  topic->set_topic(options.topic);
  topic->set_count(options.count);

  v1::DequeueResponse response;
  grpc::ClientContext context;
  // A long poll legitimately takes wait_ms; the timeout covers the rest.
  SetDeadline(context, global.timeout_ms + options.wait_ms);
  const grpc::Status status =
      MakeQueueStub(global)->Dequeue(&context, request, &response);
  if (!status.ok()) return ReportRpcError(status);

  if (global.json) {
    json doc = json::array();
    for (const auto& item : response.items()) doc.push_back(DequeuedItemJson(item));
    PrintJson(doc);
    return kExitOk;
  }
  if (response.items_size() == 0) fmt::print(stderr, "no items ready\n");
  for (int i = 0; i < response.items_size(); ++i) {
    if (i > 0) fmt::print("\n");
    PrintDequeuedItem(response.items(i));
  }
  return kExitOk;
}

int RunAck(const GlobalOptions& global, const AckOptions& options) {
  const LeaseRefs refs = ParseLeaseRefs(options.refs);
  v1::AckRequest request;
  for (const auto& ref : refs) {
    auto* item = request.add_items();
    FillLeaseRef(ref, *item);
    item->set_result(options.result);
  }

  v1::AckResponse response;
  grpc::ClientContext context;
  SetDeadline(context, global.timeout_ms);
  const grpc::Status status = MakeQueueStub(global)->Ack(&context, request, &response);
  if (!status.ok()) return ReportRpcError(status);
  if (!CheckResultCount(response.results_size(), refs.size())) return kExitRpcFailed;
  return PrintItemStatuses(global, RefIds(refs),
                           {response.results().begin(), response.results().end()});
}

int RunNack(const GlobalOptions& global, const NackOptions& options) {
  const LeaseRefs refs = ParseLeaseRefs(options.refs);
  v1::NackItem prototype;
  prototype.set_delay_ms(options.delay_ms);
  prototype.set_error(options.error);
  prototype.set_fatal(options.fatal);
  // A present (even empty) metadata message replaces the item's metadata; an absent
  // one keeps it. --clear-meta is how to send the empty one.
  if (!options.meta.empty() || options.clear_meta) {
    FillMetadata(options.meta, *prototype.mutable_metadata());
  }
  v1::NackRequest request;
  for (const auto& ref : refs) {
    auto* item = request.add_items();
    *item = prototype;
    FillLeaseRef(ref, *item->mutable_item());
  }

  v1::NackResponse response;
  grpc::ClientContext context;
  SetDeadline(context, global.timeout_ms);
  const grpc::Status status = MakeQueueStub(global)->Nack(&context, request, &response);
  if (!status.ok()) return ReportRpcError(status);
  if (!CheckResultCount(response.results_size(), refs.size())) return kExitRpcFailed;
  return PrintItemStatuses(global, RefIds(refs),
                           {response.results().begin(), response.results().end()});
}

int RunExtend(const GlobalOptions& global, const ExtendOptions& options) {
  const LeaseRefs refs = ParseLeaseRefs(options.refs);
  v1::ExtendLeaseRequest request;
  for (const auto& ref : refs) {
    auto* item = request.add_items();
    FillLeaseRef(ref, *item->mutable_item());
    item->set_extension_ms(options.extension_ms);
  }

  v1::ExtendLeaseResponse response;
  grpc::ClientContext context;
  SetDeadline(context, global.timeout_ms);
  const grpc::Status status =
      MakeQueueStub(global)->ExtendLease(&context, request, &response);
  if (!status.ok()) return ReportRpcError(status);
  if (!CheckResultCount(response.results_size(), refs.size())) return kExitRpcFailed;
  std::vector<v1::ItemStatus> statuses;
  std::vector<ItemExtra> extras;
  for (const auto& result : response.results()) {
    statuses.push_back(result.status());
    const int64_t deadline = result.lease_deadline_ms();
    ItemExtra extra{
        fmt::format("lease_deadline {} ({})", FormatUnixMs(deadline), deadline),
        {{"lease_deadline_ms", deadline},
         {"cancel_requested", result.cancel_requested()}}};
    if (result.cancel_requested()) extra.text += " CANCEL_REQUESTED: stop working on it";
    extras.push_back(std::move(extra));
  }
  return PrintItemStatuses(global, RefIds(refs), statuses, extras);
}

int RunTopics(const GlobalOptions& global) {
  v1::GetActiveTopicsRequest request;
  request.set_namespace_(global.ns);
  auto stub = MakeQueueStub(global);
  v1::GetActiveTopicsResponse response;  // every page's topics, in order
  do {
    v1::GetActiveTopicsResponse page;
    grpc::ClientContext context;
    SetDeadline(context, global.timeout_ms);
    const grpc::Status status = stub->GetActiveTopics(&context, request, &page);
    if (!status.ok()) return ReportRpcError(status);
    for (auto& t : *page.mutable_topics()) *response.add_topics() = std::move(t);
    if (!page.next_after_topic().empty() &&
        page.next_after_topic() <= request.after_topic()) {
      // Pages go forward by name; one that does not would repeat for ever.
      fmt::print(stderr,
                 "shardqctl: the server's next page of topics does not move forward\n");
      return kExitRpcFailed;
    }
    request.set_after_topic(page.next_after_topic());
  } while (!request.after_topic().empty());
  if (global.json) {
    PrintJson(TopicsJson(response));
  } else {
    PrintTopicsTable(response);
  }
  return kExitOk;
}

int RunStatus(const GlobalOptions& global, const StatusOptions& options) {
  v1::Task task;
  int exit_code = kExitOk;
  if (!GetTask(global, options.id, options.payload, task, exit_code)) return exit_code;
  if (global.json) {
    json doc = TaskJson(task, /*with_history=*/true);
    if (options.payload) {
      auto [encoding, payload] = EncodePayload(task.payload());
      doc["payload_encoding"] = encoding;
      doc["payload"] = payload;
    }
    PrintJson(doc);
  } else {
    PrintTask(task, options.payload);
  }
  return kExitOk;
}

int RunHistory(const GlobalOptions& global, const HistoryOptions& options) {
  v1::Task task;
  int exit_code = kExitOk;
  if (!GetTask(global, options.id, false, task, exit_code)) return exit_code;
  const int size = task.history_size();
  const int first = options.tail > 0 ? std::max(0, size - options.tail) : 0;
  if (global.json) {
    json doc = json::array();
    for (int i = first; i < size; ++i) doc.push_back(EventJson(task.history(i)));
    PrintJson(doc);
    return kExitOk;
  }
  if (size == 0) fmt::print(stderr, "no history events\n");
  for (int i = first; i < size; ++i) fmt::print("{}\n", EventText(task.history(i)));
  return kExitOk;
}

int RunCancel(const GlobalOptions& global, const std::string& id) {
  v1::CancelTaskRequest request;
  request.set_id(id);
  v1::CancelTaskResponse response;
  grpc::ClientContext context;
  SetDeadline(context, global.timeout_ms);
  const grpc::Status status =
      MakeQueueStub(global)->CancelTask(&context, request, &response);
  if (!status.ok()) return ReportRpcError(status);
  const v1::Task& task = response.task();
  if (global.json) {
    PrintJson(TaskJson(task, /*with_history=*/true));
  } else if (task.state() == v1::CANCELLED) {
    fmt::print("{} CANCELLED\n", id);
  } else if (task.cancel_requested()) {
    fmt::print(
        "{} {} cancel_requested: it becomes CANCELLED when its worker gives it back "
        "or its lease runs out\n",
        id, StateName(task.state()));
  } else {
    fmt::print("{} {}\n", id, StateName(task.state()));
  }
  return kExitOk;
}

int RunDeadList(const GlobalOptions& global, const DeadListOptions& options) {
  v1::ListDeadLettersRequest request;
  request.set_namespace_(global.ns);
  request.set_topic(options.topic);
  request.set_limit(options.limit);
  v1::ListDeadLettersResponse response;
  grpc::ClientContext context;
  SetDeadline(context, global.timeout_ms);
  const grpc::Status status =
      MakeQueueStub(global)->ListDeadLetters(&context, request, &response);
  if (!status.ok()) return ReportRpcError(status);
  if (global.json) {
    json doc = json::array();
    for (const auto& task : response.tasks())
      doc.push_back(TaskJson(task, /*with_history=*/false));
    PrintJson(doc);
  } else if (response.tasks_size() == 0) {
    fmt::print(stderr, "no dead letters\n");
  } else {
    PrintDeadLetters(response);
  }
  return kExitOk;
}

namespace {

// Redrive or purge; both requests and responses have the same shape.
template <typename Request, typename Response, typename Call, typename Count>
int RunDeadAction(const GlobalOptions& global, const DeadOptions& options,
                  const char* verb, Call call, Count count) {
  const auto stub = MakeQueueStub(global);
  Request request;
  request.set_namespace_(global.ns);
  request.set_topic(options.topic);
  for (const auto& id : options.ids) request.add_ids(id);

  if (!options.ids.empty()) {
    Response response;
    grpc::ClientContext context;
    SetDeadline(context, global.timeout_ms);
    const grpc::Status status = (stub.get()->*call)(&context, request, &response);
    if (!status.ok()) return ReportRpcError(status);
    if (!CheckResultCount(response.results_size(), options.ids.size())) {
      return kExitRpcFailed;
    }
    if (!global.json) {
      const int exit_code = PrintItemStatuses(
          global, options.ids, {response.results().begin(), response.results().end()});
      fmt::print("{} {}\n", verb, count(response));
      return exit_code;
    }
    int exit_code = kExitOk;
    json results = json::array();
    for (int i = 0; i < response.results_size(); ++i) {
      if (response.results(i).code() != 0) exit_code = kExitItemFailed;
      json entry = StatusJson(response.results(i));
      entry["id"] = options.ids[i];
      results.push_back(std::move(entry));
    }
    PrintJson({{"topic", options.topic}, {verb, count(response)}, {"results", results}});
    return exit_code;
  }

  uint64_t total = 0;
  int calls = 0;
  for (;;) {
    Response response;
    grpc::ClientContext context;
    SetDeadline(context, global.timeout_ms);
    const grpc::Status status = (stub.get()->*call)(&context, request, &response);
    if (!status.ok()) {
      // Report what was done before the failure: it is not undone.
      if (total > 0)
        fmt::print(stderr, "shardqctl: {} {} before the failure\n", verb, total);
      return ReportRpcError(status);
    }
    ++calls;
    total += count(response);
    if (count(response) == 0) break;
    if (calls >= kMaxDrainCalls) {
      fmt::print(stderr, "shardqctl: stopped after {} calls; dead letters keep coming\n",
                 calls);
      break;
    }
  }
  if (global.json) {
    PrintJson({{"topic", options.topic}, {verb, total}, {"calls", calls}});
  } else {
    fmt::print("{} {}\n", verb, total);
  }
  return kExitOk;
}

}  // namespace

int RunDeadRedrive(const GlobalOptions& global, const DeadOptions& options) {
  return RunDeadAction<v1::RedriveDeadLettersRequest, v1::RedriveDeadLettersResponse>(
      global, options, "redriven", &v1::Queue::Stub::RedriveDeadLetters,
      [](const v1::RedriveDeadLettersResponse& r) { return r.redriven(); });
}

int RunDeadPurge(const GlobalOptions& global, const DeadOptions& options) {
  // Deleting every dead letter of a topic is not undoable: ask for it explicitly.
  if (options.ids.empty() && !options.all) {
    throw ArgError("dead purge: give the ids to purge, or --all for every dead letter");
  }
  if (!options.ids.empty() && options.all) {
    throw ArgError("dead purge: --all and ids exclude each other");
  }
  return RunDeadAction<v1::PurgeDeadLettersRequest, v1::PurgeDeadLettersResponse>(
      global, options, "purged", &v1::Queue::Stub::PurgeDeadLetters,
      [](const v1::PurgeDeadLettersResponse& r) { return r.purged(); });
}

int RunHealth(const GlobalOptions& global, const std::string& service) {
  using grpc::health::v1::HealthCheckResponse;
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  HealthCheckResponse response;
  grpc::ClientContext context;
  SetDeadline(context, global.timeout_ms);
  const grpc::Status status = grpc::health::v1::Health::NewStub(MakeChannel(global))
                                  ->Check(&context, request, &response);
  if (!status.ok()) return ReportRpcError(status);
  const std::string name = HealthCheckResponse::ServingStatus_Name(response.status());
  if (global.json) {
    PrintJson({{"service", service}, {"status", name}});
  } else {
    fmt::print("{}\n", name);
  }
  return response.status() == HealthCheckResponse::SERVING ? kExitOk : kExitNotServing;
}

int RunShards(const GlobalOptions& global) {
  v1::GetShardsResponse response;
  grpc::ClientContext context;
  SetDeadline(context, global.timeout_ms);
  const grpc::Status status =
      MakeQueueStub(global)->GetShards(&context, v1::GetShardsRequest(), &response);
  if (!status.ok()) return ReportRpcError(status);
  bool all_up = true;
  json doc = json::array();
  for (const v1::ShardInfo& s : response.shards()) {
    const bool up = s.open() && s.breaker() == v1::CLOSED;
    all_up = all_up && up;
    const std::string breaker =
        EnumName(v1::BreakerState_Name(s.breaker()), "BREAKER", s.breaker());
    if (global.json) {
      doc.push_back({{"id", s.id()},
                     {"open", s.open()},
                     {"starting", s.starting()},
                     {"breaker", breaker},
                     {"last_error", s.last_error()},
                     {"release_lead_ms", s.release_lead_ms()}});
      continue;
    }
    const char* state = s.starting() ? "starting" : (up ? "up" : "down");
    fmt::print("shard {}: {} (breaker {}{}, release lead {} ms){}{}\n", s.id(), state,
               breaker, s.open() ? "" : ", never opened", s.release_lead_ms(),
               s.last_error().empty() ? "" : ": ", s.last_error());
  }
  if (global.json) PrintJson(doc);
  return all_up ? kExitOk : kExitNotServing;
}

}  // namespace shardq::tools
