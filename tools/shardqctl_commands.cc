#include "tools/shardqctl_commands.h"

#include <fmt/format.h>
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <utility>

#include "grpc/health/v1/health.grpc.pb.h"
#include "shardq/v1/queue.grpc.pb.h"
#include "tools/shardqctl_format.h"

namespace shardq::tools {
namespace {

using nlohmann::json;
using LeaseRefs = std::vector<std::pair<std::string, std::string>>;

std::shared_ptr<grpc::Channel> MakeChannel(const GlobalOptions& global) {
  return grpc::CreateChannel(global.server, grpc::InsecureChannelCredentials());
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
      if (ok) entry["id"] = result.id();
      doc.push_back(std::move(entry));
    } else if (ok) {
      fmt::print("{}\n", result.id());
    } else {
      // stderr, so that stdout stays a clean list of ids for scripts.
      fmt::print(stderr, "item {}: {}\n", i, StatusText(result.status()));
    }
  }
  if (global.json) PrintJson(doc);
  return exit_code;
}

// ---- dequeue ----

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
          {"attempts", item.attempts()},
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
  fmt::print("priority:       {}\n", item.priority());
  fmt::print("attempts:       {}\n", item.attempts());
  fmt::print("lease_deadline: {} ({})\n", FormatUnixMs(item.lease_deadline_ms()),
             item.lease_deadline_ms());
  fmt::print("enqueued_at:    {}\n", FormatUnixMs(item.enqueued_at_ms()));
  fmt::print("deliver_after:  {}\n", FormatUnixMs(item.deliver_after_ms()));
  fmt::print("metadata:       {}\n", MetadataText(item.metadata()));
  fmt::print("payload ({}, {} bytes): {}\n", encoding, item.payload().size(), payload);
}

// ---- ack / nack / extend ----

// One line (or JSON object) per item of a batched call, in request order.
int PrintItemStatuses(const GlobalOptions& global, const LeaseRefs& refs,
                      const std::vector<v1::ItemStatus>& statuses,
                      const std::vector<int64_t>& deadlines = {}) {
  int exit_code = kExitOk;
  json doc = json::array();
  for (size_t i = 0; i < refs.size(); ++i) {
    const auto& status = statuses[i];
    const bool ok = status.code() == 0;
    if (!ok) exit_code = kExitItemFailed;
    const bool has_deadline = ok && i < deadlines.size();
    if (global.json) {
      json entry = StatusJson(status);
      entry["id"] = refs[i].first;
      if (has_deadline) entry["lease_deadline_ms"] = deadlines[i];
      doc.push_back(std::move(entry));
    } else if (has_deadline) {
      fmt::print("{} OK lease_deadline {} ({})\n", refs[i].first,
                 FormatUnixMs(deadlines[i]), deadlines[i]);
    } else {
      fmt::print("{} {}\n", refs[i].first, StatusText(status));
    }
  }
  if (global.json) PrintJson(doc);
  return exit_code;
}

// LeaseRef and AckItem share their id and lease_token fields.
template <typename Ref>
void FillLeaseRef(const std::pair<std::string, std::string>& ref, Ref& out) {
  out.set_id(ref.first);
  out.set_lease_token(ref.second);
}

// ---- topics ----

void PrintTopicsTable(const v1::GetActiveTopicsResponse& response) {
  size_t width = 5;  // "TOPIC"
  for (const auto& t : response.topics()) width = std::max(width, t.topic().size());
  fmt::print("{:<{}}  {:>10}  {:>10}  {:>10}\n", "TOPIC", width, "READY", "DELAYED",
             "LEASED");
  for (const auto& t : response.topics()) {
    fmt::print("{:<{}}  {:>10}  {:>10}  {:>10}\n", t.topic(), width, t.ready(),
               t.delayed(), t.leased());
  }
}

json TopicsJson(const v1::GetActiveTopicsResponse& response) {
  json doc = json::array();
  for (const auto& t : response.topics()) {
    doc.push_back({{"topic", t.topic()},
                   {"ready", t.ready()},
                   {"delayed", t.delayed()},
                   {"leased", t.leased()}});
  }
  return doc;
}

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

int RunAck(const GlobalOptions& global, const std::vector<std::string>& args) {
  const LeaseRefs refs = ParseLeaseRefs(args);
  v1::AckRequest request;
  for (const auto& ref : refs) FillLeaseRef(ref, *request.add_items());

  v1::AckResponse response;
  grpc::ClientContext context;
  SetDeadline(context, global.timeout_ms);
  const grpc::Status status = MakeQueueStub(global)->Ack(&context, request, &response);
  if (!status.ok()) return ReportRpcError(status);
  if (!CheckResultCount(response.results_size(), refs.size())) return kExitRpcFailed;
  return PrintItemStatuses(global, refs,
                           {response.results().begin(), response.results().end()});
}

int RunNack(const GlobalOptions& global, const NackOptions& options) {
  const LeaseRefs refs = ParseLeaseRefs(options.refs);
  v1::NackItem prototype;
  prototype.set_delay_ms(options.delay_ms);
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
  return PrintItemStatuses(global, refs,
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
  std::vector<int64_t> deadlines;
  for (const auto& result : response.results()) {
    statuses.push_back(result.status());
    deadlines.push_back(result.lease_deadline_ms());
  }
  return PrintItemStatuses(global, refs, statuses, deadlines);
}

int RunTopics(const GlobalOptions& global) {
  v1::GetActiveTopicsRequest request;
  request.set_namespace_(global.ns);
  v1::GetActiveTopicsResponse response;
  grpc::ClientContext context;
  SetDeadline(context, global.timeout_ms);
  const grpc::Status status =
      MakeQueueStub(global)->GetActiveTopics(&context, request, &response);
  if (!status.ok()) return ReportRpcError(status);
  if (global.json) {
    PrintJson(TopicsJson(response));
  } else {
    PrintTopicsTable(response);
  }
  return kExitOk;
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

}  // namespace shardq::tools
