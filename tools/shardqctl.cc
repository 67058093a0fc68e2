// shardqctl: command-line client of the shardq queue service. This file only wires
// the command line (CLI11) to the subcommands in shardqctl_commands.cc.
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <charconv>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "tools/shardqctl_commands.h"
#include "tools/shardqctl_format.h"

namespace shardq::tools {
namespace {

// Everything the command line fills in. It outlives parsing, so the subcommand
// closures may refer to it.
struct CommandLine {
  GlobalOptions global;
  EnqueueOptions enqueue;
  DequeueOptions dequeue;
  AckOptions ack;
  NackOptions nack;
  ExtendOptions extend;
  StatusOptions status;
  HistoryOptions history;
  std::string cancel_id;
  DeadListOptions dead_list;
  DeadOptions dead_redrive;
  DeadOptions dead_purge;
  std::string health_service;
  // The subcommands, each with what runs it; exactly one gets parsed.
  std::vector<std::pair<CLI::App*, std::function<int()>>> commands;
};

// CLI11's PositiveNumber/NonNegativeNumber print a double range up to 1.8e308 when
// they fail; this says plainly what is wanted.
CLI::Validator AtLeast(int64_t min) {
  return CLI::Validator(
      [min](std::string& value) -> std::string {
        int64_t n = 0;
        const auto [end, ec] =
            std::from_chars(value.data(), value.data() + value.size(), n);
        // Not a number: leave the message to CLI11's conversion.
        if (ec != std::errc() || end != value.data() + value.size()) return "";
        return n < min ? fmt::format("value {} must be at least {}", value, min) : "";
      },
      fmt::format(">={}", min));
}

void AddGlobalOptions(CLI::App& app, GlobalOptions& global) {
  app.add_option("--server", global.server, "Server address host:port")
      ->envname("SHARDQ_SERVER")
      ->capture_default_str();
  app.add_option("-n,--namespace", global.ns, "Namespace of the topics")
      ->envname("SHARDQ_NAMESPACE")
      ->capture_default_str();
  app.add_flag("--json", global.json, "Print one machine-readable JSON document");
  // At most a day: a deadline of more milliseconds would overflow the clock's
  // nanoseconds (an instant DEADLINE_EXCEEDED).
  app.add_option("--timeout-ms", global.timeout_ms,
                 "RPC deadline in ms (dequeue adds its --wait-ms)")
      ->check(CLI::Range(int64_t{1}, int64_t{86'400'000}))
      ->capture_default_str();
}

// --meta is repeatable; one value per occurrence, so it cannot swallow positionals.
CLI::Option* AddMetaOption(CLI::App& command, std::vector<std::string>& meta,
                           const std::string& help) {
  return command.add_option("--meta", meta, help)->allow_extra_args(false);
}

void AddEnqueue(CLI::App& app, CommandLine& cl) {
  EnqueueOptions& o = cl.enqueue;
  auto* cmd = app.add_subcommand("enqueue", "Add items to a topic; prints their ids");
  cmd->add_option("TOPIC", o.topic, "Topic to add to")->required();
  cmd->add_option("PAYLOAD", o.payload,
                  "Payload bytes; omitted or '-' reads stdin (use -- before a "
                  "payload that starts with '-')");
  cmd->add_option("-p,--priority", o.priority, "Priority, lower is sooner")
      ->capture_default_str();
  auto* delay = cmd->add_option("--delay-ms", o.delay_ms, "Deliver after now + this")
                    ->check(AtLeast(0));
  cmd->add_option("--deliver-after-ms", o.deliver_after_ms,
                  "Deliver after this unix time in ms")
      ->check(AtLeast(0))
      ->excludes(delay);
  cmd->add_option("--lease-ms", o.lease_ms,
                  "Lease length once dequeued (0 = server default)")
      ->check(AtLeast(0));
  cmd->add_option("--ttl-ms", o.ttl_ms, "Drop if not acked within this (0 = never)")
      ->check(AtLeast(0));
  AddMetaOption(*cmd, o.meta, "Metadata entry key=value (repeatable)");
  cmd->add_option("--count", o.count, "Enqueue this many copies in one call")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  cmd->add_option("--task-type", o.task_type, "Task type, routes it to a handler");
  cmd->add_option("--dedup-key", o.dedup_key,
                  "Idempotency key: if already used in the namespace, the existing "
                  "item's id is returned and nothing is created");
  cmd->add_option("--max-attempts", o.max_attempts,
                  "Deliveries allowed before dead-lettering (0 = namespace default)")
      ->check(CLI::Range(0, 1000));
  cl.commands.emplace_back(cmd, [&cl] { return RunEnqueue(cl.global, cl.enqueue); });
}

void AddDequeue(CLI::App& app, CommandLine& cl) {
  DequeueOptions& o = cl.dequeue;
  auto* cmd = app.add_subcommand("dequeue", "Lease the best ready items of a topic");
  cmd->add_option("TOPIC", o.topic, "Topic to take from")->required();
  cmd->add_option("--count", o.count, "At most this many items")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  cmd->add_option("--wait-ms", o.wait_ms, "Long poll: wait up to this for an item")
      ->check(CLI::Range(0, 60000))
      ->capture_default_str();
  cmd->add_option("--worker-id", o.worker_id,
                  "Who is asking (recorded with the lease, shown by status)");
  cl.commands.emplace_back(cmd, [&cl] { return RunDequeue(cl.global, cl.dequeue); });
}

void AddAck(CLI::App& app, CommandLine& cl) {
  auto* cmd = app.add_subcommand(
      "ack", "Finish leased items (SUCCEEDED; kept for status until retention ends)");
  cmd->add_option("ID_TOKEN", cl.ack.refs, "ID TOKEN [ID TOKEN ...]")->required();
  cmd->add_option("--result", cl.ack.result,
                  "What the handler produced (for every given item; at most 4 KiB)")
      ->allow_extra_args(false);
  cl.commands.emplace_back(cmd, [&cl] { return RunAck(cl.global, cl.ack); });
}

void AddNack(CLI::App& app, CommandLine& cl) {
  NackOptions& o = cl.nack;
  auto* cmd = app.add_subcommand("nack", "Give leased items back for redelivery");
  cmd->add_option("ID_TOKEN", o.refs, "ID TOKEN [ID TOKEN ...]")->required();
  cmd->add_option("--delay-ms", o.delay_ms, "Redeliver after now + this")
      ->check(AtLeast(0))
      ->capture_default_str();
  auto* meta = AddMetaOption(*cmd, o.meta,
                             "Replace the metadata with these key=value entries "
                             "(repeatable)");
  cmd->add_flag("--clear-meta", o.clear_meta, "Replace the metadata with none")
      ->excludes(meta);
  cmd->add_option("--error", o.error, "Why the attempt failed (kept as last_error)")
      ->allow_extra_args(false);
  cmd->add_flag("--fatal", o.fatal,
                "Permanent failure: the task becomes FAILED and is not retried");
  cl.commands.emplace_back(cmd, [&cl] { return RunNack(cl.global, cl.nack); });
}

void AddExtend(CLI::App& app, CommandLine& cl) {
  ExtendOptions& o = cl.extend;
  auto* cmd = app.add_subcommand("extend", "Move lease deadlines to now + --ms");
  cmd->add_option("ID_TOKEN", o.refs, "ID TOKEN [ID TOKEN ...]")->required();
  cmd->add_option("--ms", o.extension_ms, "New deadline is now + this many ms")
      ->required()
      ->check(AtLeast(1));
  cl.commands.emplace_back(cmd, [&cl] { return RunExtend(cl.global, cl.extend); });
}

void AddTopics(CLI::App& app, CommandLine& cl) {
  auto* cmd = app.add_subcommand("topics", "List the namespace's active topics");
  cl.commands.emplace_back(cmd, [&cl] { return RunTopics(cl.global); });
}

void AddStatus(CLI::App& app, CommandLine& cl) {
  auto* cmd = app.add_subcommand(
      "status", "Show a task: state, attempts, times, worker, last error, result");
  cmd->add_option("ID", cl.status.id, "Task id")->required();
  cmd->add_flag("--payload", cl.status.payload, "Also show the payload");
  cl.commands.emplace_back(cmd, [&cl] { return RunStatus(cl.global, cl.status); });
}

void AddHistory(CLI::App& app, CommandLine& cl) {
  auto* cmd = app.add_subcommand(
      "history", "Show a task's history events, oldest first (the server keeps 100)");
  cmd->add_option("ID", cl.history.id, "Task id")->required();
  cmd->add_option("--tail", cl.history.tail, "Only the last N events")->check(AtLeast(1));
  cl.commands.emplace_back(cmd, [&cl] { return RunHistory(cl.global, cl.history); });
}

void AddCancel(CLI::App& app, CommandLine& cl) {
  auto* cmd = app.add_subcommand(
      "cancel", "Cancel a task (a running one is asked to stop); prints its state");
  cmd->add_option("ID", cl.cancel_id, "Task id")->required();
  cl.commands.emplace_back(cmd, [&cl] { return RunCancel(cl.global, cl.cancel_id); });
}

void AddDead(CLI::App& app, CommandLine& cl) {
  auto* dead = app.add_subcommand("dead", "Dead letters: list, redrive, purge");
  dead->require_subcommand(1);

  auto* list = dead->add_subcommand("list", "List a topic's dead letters, best first");
  list->add_option("TOPIC", cl.dead_list.topic, "Topic")->required();
  list->add_option("--limit", cl.dead_list.limit, "At most this many (default 100)")
      ->check(CLI::Range(1, 1000));
  cl.commands.emplace_back(list, [&cl] { return RunDeadList(cl.global, cl.dead_list); });

  auto* redrive = dead->add_subcommand(
      "redrive", "Move dead letters back to READY with fresh attempts (no ids = all)");
  redrive->add_option("TOPIC", cl.dead_redrive.topic, "Topic")->required();
  redrive->add_option("ID", cl.dead_redrive.ids, "Dead letter ids (none = all)");
  cl.commands.emplace_back(redrive,
                           [&cl] { return RunDeadRedrive(cl.global, cl.dead_redrive); });

  auto* purge = dead->add_subcommand(
      "purge", "Delete dead letters for good: the given ids, or --all of the topic's");
  purge->add_option("TOPIC", cl.dead_purge.topic, "Topic")->required();
  auto* ids = purge->add_option("ID", cl.dead_purge.ids, "Dead letter ids");
  purge->add_flag("--all", cl.dead_purge.all, "Every dead letter of the topic")
      ->excludes(ids);
  cl.commands.emplace_back(purge,
                           [&cl] { return RunDeadPurge(cl.global, cl.dead_purge); });
}

void AddHealth(CLI::App& app, CommandLine& cl) {
  auto* cmd = app.add_subcommand(
      "health", "Ask the standard gRPC health service (grpc.health.v1.Health/Check)");
  cmd->add_option("--service", cl.health_service,
                  "Service name to ask about (empty = the whole server)");
  cl.commands.emplace_back(cmd,
                           [&cl] { return RunHealth(cl.global, cl.health_service); });
}

void AddShards(CLI::App& app, CommandLine& cl) {
  auto* cmd = app.add_subcommand(
      "shards", "List the server's shards: open, circuit breaker, last storage error");
  cl.commands.emplace_back(cmd, [&cl] { return RunShards(cl.global); });
}

int Main(int argc, char** argv) {
  CLI::App app{
      "shardqctl: command-line client of the shardq queue service.\n"
      "Exit codes: 0 ok, 1 RPC failed, 2 bad arguments, 3 some item failed, "
      "4 health not SERVING (or, for shards, a shard not taking calls)."};
  // Set before the subcommands are added (it is inherited): lets global options
  // such as --json come after the subcommand too.
  app.fallthrough();
  app.require_subcommand(1);
  CommandLine cl;
  AddGlobalOptions(app, cl.global);
  AddEnqueue(app, cl);
  AddDequeue(app, cl);
  AddAck(app, cl);
  AddNack(app, cl);
  AddExtend(app, cl);
  AddTopics(app, cl);
  AddStatus(app, cl);
  AddHistory(app, cl);
  AddCancel(app, cl);
  AddDead(app, cl);
  AddHealth(app, cl);
  AddShards(app, cl);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help arrives here too, with exit code 0.
    return app.exit(e) == 0 ? kExitOk : kExitBadArgs;
  }
  try {
    for (auto& [command, run] : cl.commands) {
      if (command->parsed()) return run();
    }
  } catch (const ArgError& e) {
    fmt::print(stderr, "shardqctl: {}\nRun with --help for more information.\n",
               e.what());
    return kExitBadArgs;
  } catch (const std::exception& e) {
    // Anything else (an answer it cannot print, a closed stdout): an error, not a
    // crash.
    fmt::print(stderr, "shardqctl: {}\n", e.what());
    return kExitRpcFailed;
  }
  return kExitBadArgs;  // Unreachable: require_subcommand(1) guarantees one.
}

}  // namespace
}  // namespace shardq::tools

int main(int argc, char** argv) { return shardq::tools::Main(argc, argv); }
