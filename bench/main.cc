// shardq_bench: workload W1 against shardq and against the storage limit and the naive
// MySQL queue, measured in the same run on the same MariaDB. See bench/README.md.
//
//   shardq_bench --runs 3              # starts its own MariaDB and shardqd
//   shardq_bench --runs 1 --scale 0.05 # a smoke run

#include <fmt/format.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "bench/mysql_reference.h"
#include "bench/report.h"
#include "bench/shardq_client.h"
#include "tests/support/mariadb_instance.h"
#include "tests/support/server_process.h"

namespace shardq::bench {
namespace {

struct Options {
  int runs = 3;
  double scale = 1.0;
  std::string shardqd = SHARDQD_PATH;
  int shards = 4;
  int io_threads = 8;
  bool references = true;
  bool threads = true;
  std::string json;
  // W1's own values unless given.
  int fetch = W1().fetch;
  int worker_buffer = W1().worker_buffer;
  int worker_max_buffer = W1().worker_max_buffer;
  // The private MariaDB's InnoDB sizes: MariaDB's own defaults (as in the peer
  // harness), not the small ones the tests start with.
  std::string buffer_pool = "128M";
  std::string log_file_size = "96M";
  // Phases to run (A1 A2 B1 B2 C D E F); a drain whose enqueue phase is skipped fills
  // its topic with batch enqueues first.
  std::set<std::string> phases = {"A1", "A2", "B1", "B2", "C", "D", "E", "F", "R"};

  bool Runs(const std::string& phase) const { return phases.count(phase) > 0; }
};

Result<testing::ServerProcess> StartServer(const Options& o, const std::string& socket,
                                           int shards,
                                           std::vector<std::string> extra_args = {}) {
  DropDatabases(socket);
  return testing::ServerProcess::Start({.binary = o.shardqd,
                                        .socket = socket,
                                        .shards = shards,
                                        .io_threads = o.io_threads,
                                        .extra_args = std::move(extra_args)});
}

std::string Address(const testing::ServerProcess& server) {
  return "127.0.0.1:" + std::to_string(server.port());
}

Figures OneRun(const Options& o, const W1& w, const std::string& socket) {
  Figures f;
  auto server = StartServer(o, socket, o.shards);
  if (!server.ok()) throw std::runtime_error(server.status().ToString());
  ShardqClient client(Address(*server), w, "bench");
  if (!client.AwaitReady()) throw std::runtime_error("shardqd's shards did not open");
  auto phase = [&](const std::string& name) {
    if (o.Runs(name)) std::cerr << "  " << name << "\n";
    return o.Runs(name);
  };
  if (phase("A1")) {
    f["A1 enqueue, single (items/s)"] = client.Enqueue("a", w.items, 1);
  } else if (o.Runs("B1")) {
    client.Enqueue("a", w.items, w.batch);
  }
  if (phase("B1"))
    f["B1 drain, SDK workers (items/s)"] = client.DrainWithWorkers("a", w.items);
  if (phase("A2")) {
    f["A2 enqueue, batch (items/s)"] = client.Enqueue("b", w.items, w.batch);
  } else if (o.Runs("B2")) {
    client.Enqueue("b", w.items, w.batch);
  }
  if (phase("B2")) {
    f["B2 drain, batch ack (items/s)"] = client.DrainBatched("b", w.items, w.consumers);
  }
  if (phase("C")) client.Latency("c", &f);
  if (phase("D")) client.Priority("d", &f);
  if (phase("E")) client.Delay("e", &f);
  f["server peak RSS, empty queue (MiB)"] = server->ProcStatus("VmHWM") / 1024;
  f["server threads"] = server->ProcStatus("Threads");
  if (phase("F")) {
    std::cerr << "  F: backlog of " << w.backlog << "\n";
    // The backlog sorts after every W1 item (priorities 100..109), so the phases below
    // run against a topic holding `backlog` more rows.
    f["F backlog fill, batch (items/s)"] = client.Enqueue("f", w.backlog, w.batch, 100);
    f["F A1 enqueue, single (items/s)"] = client.Enqueue("f", w.items, 1);
    f["F B1 drain, SDK workers (items/s)"] = client.DrainWithWorkers("f", w.items);
    f["F A2 enqueue, batch (items/s)"] = client.Enqueue("f", w.items, w.batch);
    f["F B2 drain, batch ack (items/s)"] = client.DrainBatched("f", w.items, w.consumers);
    f["F server peak RSS (MiB)"] = server->ProcStatus("VmHWM") / 1024;
  }
  server->Stop();
  if (phase("R")) {
    // B2 again on a server that keeps no finished tasks (retention 0: an ack deletes
    // the row), as the naive queue and BullMQ's removeOnComplete do.
    auto r = StartServer(o, socket, o.shards, {"--retention-ms", "0"});
    if (!r.ok()) throw std::runtime_error(r.status().ToString());
    ShardqClient rc(Address(*r), w, "bench");
    if (!rc.AwaitReady()) throw std::runtime_error("shardqd's shards did not open");
    rc.Enqueue("r", w.items, w.batch);
    f["R B2 drain, retention 0 (items/s)"] = rc.DrainBatched("r", w.items, w.consumers);
    r->Stop();
  }
  if (o.references) {
    std::cerr << "  references\n";
    MysqlReference ref(socket, w);
    ref.Raw(&f);
    ref.Naive(&f);
  }
  return f;
}

// The server's thread count after the same load with 4 and with 64 shards.
void ThreadCounts(const Options& o, const W1& w, const std::string& socket, Figures* f) {
  for (int shards : {4, 64}) {
    auto server = StartServer(o, socket, shards);
    if (!server.ok()) throw std::runtime_error(server.status().ToString());
    ShardqClient client(Address(*server), w, "bench");
    if (!client.AwaitReady()) throw std::runtime_error("shardqd's shards did not open");
    client.Enqueue("t", w.items / 4, w.batch);
    client.DrainBatched("t", w.items / 4, w.consumers);
    // gRPC's pools can add a thread for a moment: the steady count is the lowest of
    // ten samples over a second; the highest is shown too. (The event-engine pool's
    // third thread, started or not as gRPC creates the pool, stays: it is part of the
    // steady count.)
    double steady = 1e9, peak = 0;
    for (int i = 0; i < 10; ++i) {
      if (i > 0) std::this_thread::sleep_for(std::chrono::milliseconds(100));
      const double n = server->ProcStatus("Threads");
      steady = std::min(steady, n);
      peak = std::max(peak, n);
    }
    (*f)[fmt::format("T threads, {} shards", shards)] = steady;
    (*f)[fmt::format("T threads at most, {} shards", shards)] = peak;
    std::cerr << "  threads with " << shards << " shards:";
    const auto names = server->ThreadNames();
    for (const auto& [name, count] : names) std::cerr << " " << name << " x" << count;
    (*f)[fmt::format("T shardq's own threads, {} shards", shards)] =
        testing::ServerProcess::ShardqThreads(names);
    std::cerr << "\n";
    server->Stop();
  }
}

int Main(int argc, char** argv) {
  Options o;
  std::string socket;
  CLI::App app{"shardq_bench: workload W1 against shardq and the MySQL references"};
  app.add_option("--runs", o.runs, "runs (the table shows medians)");
  app.add_option("--scale", o.scale,
                 "scales item counts and C's duration (0.05 = smoke)");
  app.add_option("--shardqd", o.shardqd, "the shardqd binary");
  app.add_option("--shards", o.shards, "shards of the server under test");
  app.add_option("--io-threads", o.io_threads, "shardqd --io-threads");
  app.add_option("--mysql-socket", socket,
                 "use this MariaDB (default: start a private one)");
  app.add_flag("!--no-references", o.references, "skip the MySQL references");
  app.add_option("--phases", o.phases, "phases to run (default: all)")->delimiter(',');
  app.add_flag("!--no-threads", o.threads, "skip the 4 vs 64 shards thread count");
  app.add_option("--fetch", o.fetch, "items per Dequeue in B2 and D (10..100)");
  app.add_option("--worker-buffer", o.worker_buffer,
                 "tasks each SDK worker fetches ahead in B1, C and E, at first");
  app.add_option("--worker-max-buffer", o.worker_max_buffer,
                 "... and at most (0: the SDK's default)");
  app.add_option("--buffer-pool", o.buffer_pool,
                 "innodb-buffer-pool-size of the private MariaDB (default 128M)");
  app.add_option("--log-file-size", o.log_file_size,
                 "innodb-log-file-size of the private MariaDB (default 96M)");
  app.add_option("--json", o.json, "also write every run's figures here");
  CLI11_PARSE(app, argc, argv);

  W1 w = W1().Scaled(o.scale);
  w.fetch = o.fetch;
  w.worker_buffer = o.worker_buffer;
  w.worker_max_buffer = o.worker_max_buffer;
  std::unique_ptr<testing::MariaDbInstance> db;
  if (socket.empty()) {
    std::vector<std::string> args = {"--innodb-buffer-pool-size=" + o.buffer_pool,
                                     "--innodb-log-file-size=" + o.log_file_size};
    auto started = testing::MariaDbInstance::Start(args);
    if (!started.ok()) {
      std::cerr << started.status().ToString() << "\n";
      return 1;
    }
    db = std::move(*started);
    socket = db->socket();
  }
  std::vector<Figures> runs;
  for (int r = 0; r < o.runs; ++r) {
    std::cerr << "run " << r + 1 << " of " << o.runs << "\n";
    runs.push_back(OneRun(o, w, socket));
  }
  if (o.threads) ThreadCounts(o, w, socket, &runs.back());
  std::cout << "\n## W1, " << o.shards << " shards, scale " << o.scale << ", " << o.runs
            << " runs\n\n";
  PrintRuns(std::cout, runs);
  std::cout << "\n## Targets (medians)\n\n";
  PrintTargets(std::cout, runs);
  if (!o.json.empty()) {
    nlohmann::json j = runs;
    std::ofstream(o.json) << j.dump(2) << "\n";
  }
  return 0;
}

}  // namespace
}  // namespace shardq::bench

int main(int argc, char** argv) {
  try {
    return shardq::bench::Main(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "shardq_bench: " << e.what() << "\n";
    return 1;
  }
}
