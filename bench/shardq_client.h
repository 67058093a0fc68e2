#pragma once
// W1 against a running shardq, through the public API as a user would write it: the
// SDK Producer for enqueues, SDK Workers where a handler runs per task (B1, C, E), and
// the generated gRPC stub for batch dequeue + batch ack (B2, D).

#include <grpcpp/channel.h>

#include <functional>
#include <memory>
#include <string>

#include "bench/workload.h"
#include "shardq/producer.h"

namespace shardq::bench {

class ShardqClient {
 public:
  ShardqClient(std::string address, W1 w1, std::string ns);

  // Waits until every shard takes enqueues: keyed items (the SDK's default) are
  // pinned to their key's shard, and a cold start of many shards can outlast the
  // SDK's retries. Enqueues and drains probe items in topic `warmup`; false after
  // 120 s.
  bool AwaitReady();
  // A1/A2: `items` items in one call each (batch = 1) or in calls of `batch`, from
  // w1.producers producers with w1.lanes calls in flight each. Items/s confirmed.
  double Enqueue(const std::string& topic, int items, int batch, int priority_base = 0);
  // B1: SDK workers (w1.consumers x w1.worker_concurrency handlers, one Ack per task)
  // until `items` tasks ran. Items/s.
  double DrainWithWorkers(const std::string& topic, int items);
  // B2: w1.consumers loops of Dequeue(w1.fetch) + one Ack per batch, until `items`
  // were acked. Items/s.
  double DrainBatched(const std::string& topic, int items, int consumers);

  // C: producers at w1.c_rate for w1.c_seconds while SDK workers run.
  void Latency(const std::string& topic, Figures* out);
  // D: w1.d_items enqueued with no consumer, then drained by one consumer with one
  // fetch in flight.
  void Priority(const std::string& topic, Figures* out);
  // E: w1.e_items due in w1.e_delay_ms, enqueued while SDK workers run.
  void Delay(const std::string& topic, Figures* out);

 private:
  // Items confirmed by RunLanes, and the time from go to the last answer.
  struct Lanes {
    int64_t confirmed = 0;
    double seconds = 0;
  };
  // The task with sequence number `seq`, its enqueue call starting at `start_us`.
  using MakeTask = std::function<sdk::NewTask(int64_t seq, int64_t start_us)>;

  // `items` tasks from w1.producers producers with w1.lanes calls in flight each, one
  // task per call (batch 1) or `batch` per call; each lane issues its next call from
  // the answer to the previous one.
  Lanes RunLanes(int items, int batch, const MakeTask& make);
  // A channel of its own (its own TCP connection), like one client process.
  std::shared_ptr<grpc::Channel> NewChannel();
  // A Producer in ns on a channel of its own.
  std::unique_ptr<sdk::Producer> NewProducer();

  std::string address_;
  W1 w1_;
  std::string ns_;
  int channels_ = 0;
};

}  // namespace shardq::bench
