#include "bench/shardq_client.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <functional>
#include <iostream>
#include <mutex>
#include <thread>
#include <vector>

#include "bench/payload.h"
#include "bench/stats.h"
#include "shardq/sdk.h"
#include "shardq/v1/message_limits.h"
#include "shardq/v1/queue.grpc.pb.h"

namespace shardq::bench {
namespace {

using Clock = std::chrono::steady_clock;

// Priority of item `seq`: uniform in 0..9, the same for the same seq in every run.
int32_t PriorityOf(int64_t seq) {
  uint64_t z = static_cast<uint64_t>(seq) + 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return static_cast<int32_t>((z ^ (z >> 31)) % 10);
}

double Seconds(int64_t from_us, int64_t to_us) {
  return static_cast<double>(to_us - from_us) / 1e6;
}

// Latencies (ms) recorded by handlers on many threads.
class Samples {
 public:
  void Add(double ms) {
    std::lock_guard lock(mu_);
    values_.push_back(ms);
    cv_.notify_all();
  }
  // Waits until `n` samples arrived or `timeout` passed; returns the count.
  size_t AwaitCount(size_t n, std::chrono::seconds timeout) {
    std::unique_lock lock(mu_);
    cv_.wait_for(lock, timeout, [&] { return values_.size() >= n; });
    return values_.size();
  }
  std::vector<double> Take() {
    std::lock_guard lock(mu_);
    return values_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<double> values_;
};

// Counts calls in flight and the items they confirmed.
struct Progress {
  std::mutex mu;
  std::condition_variable cv;
  int64_t settled = 0;  // items whose call ended
  int64_t failed = 0;
  int inflight = 0;
  int64_t last_us = 0;  // when the last call ended

  void Begin() {
    std::lock_guard lock(mu);
    ++inflight;
  }
  void End(int64_t items, int64_t failures) {
    std::lock_guard lock(mu);
    settled += items;
    failed += failures;
    last_us = NowUs();
    --inflight;
    cv.notify_all();
  }
  void AwaitIdle() {
    std::unique_lock lock(mu);
    cv.wait(lock, [&] { return inflight == 0; });
  }
};

}  // namespace

ShardqClient::ShardqClient(std::string address, W1 w1, std::string ns)
    : address_(std::move(address)), w1_(w1), ns_(std::move(ns)) {}

std::shared_ptr<grpc::Channel> ShardqClient::NewChannel() {
  grpc::ChannelArguments args;
  // A distinct argument keeps gRPC from sharing one subchannel between "clients".
  args.SetInt("shardq.bench.client", ++channels_);
  args.SetMaxReceiveMessageSize(v1::kMaxMessageBytes);
  return grpc::CreateCustomChannel(address_, grpc::InsecureChannelCredentials(), args);
}

std::unique_ptr<sdk::Producer> ShardqClient::NewProducer() {
  sdk::ProducerOptions options;
  options.connection.channel = NewChannel();
  options.ns = ns_;
  return std::make_unique<sdk::Producer>(std::move(options));
}

bool ShardqClient::AwaitReady() {
  auto producer = NewProducer();
  auto give_up = Clock::now() + std::chrono::seconds(120);
  int enqueued = 0;
  bool ready = false;
  while (!ready && Clock::now() < give_up) {
    // 512 random keys reach every shard of up to 64 with near certainty.
    std::vector<sdk::NewTask> probes(512,
                                     sdk::NewTask{.topic = "warmup", .payload = "p"});
    ready = true;
    for (const auto& r : producer->EnqueueBatch(probes)) {
      enqueued += r.ok() ? 1 : 0;
      ready = ready && r.ok();
    }
    if (!ready) std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  DrainBatched("warmup", enqueued, 1);
  return ready;
}

ShardqClient::Lanes ShardqClient::RunLanes(int items, int batch, const MakeTask& make) {
  std::vector<std::unique_ptr<sdk::Producer>> producers;
  for (int p = 0; p < w1_.producers; ++p) producers.push_back(NewProducer());
  std::atomic<int64_t> next{0};
  Progress progress;
  // Each lane issues its next call from the completion of the previous one.
  std::function<void(sdk::Producer*)> issue = [&](sdk::Producer* producer) {
    int64_t first = next.fetch_add(batch);
    if (first >= items) return;
    int64_t n = std::min<int64_t>(batch, items - first);
    std::vector<sdk::NewTask> tasks;
    int64_t start = NowUs();
    for (int64_t seq = first; seq < first + n; ++seq) tasks.push_back(make(seq, start));
    progress.Begin();
    if (batch == 1) {
      producer->EnqueueAsync(tasks[0], [&, producer](sdk::EnqueueResult r) {
        issue(producer);
        progress.End(1, r.ok() ? 0 : 1);
      });
    } else {
      producer->EnqueueBatchAsync(
          tasks, [&, producer, n](std::vector<sdk::EnqueueResult> results) {
            int64_t failed = 0;
            for (const auto& r : results) failed += r.ok() ? 0 : 1;
            issue(producer);
            progress.End(n, failed);
          });
    }
  };
  int64_t t0 = NowUs();
  for (auto& producer : producers) {
    for (int lane = 0; lane < w1_.lanes; ++lane) issue(producer.get());
  }
  progress.AwaitIdle();
  if (progress.failed > 0) {
    std::cerr << "  enqueue: " << progress.failed << " of " << items << " failed\n";
  }
  return {progress.settled - progress.failed, Seconds(t0, progress.last_us)};
}

double ShardqClient::Enqueue(const std::string& topic, int items, int batch,
                             int priority_base) {
  Lanes lanes = RunLanes(items, batch, [&](int64_t seq, int64_t start_us) {
    sdk::NewTask t{.topic = topic, .priority = priority_base + PriorityOf(seq)};
    t.payload = MakePayload({.seq = seq, .priority = t.priority, .start_us = start_us});
    return t;
  });
  return static_cast<double>(lanes.confirmed) / lanes.seconds;
}

namespace {

// W1's SDK workers on `topic`, each on its own channel, all running `handler`.
std::vector<std::unique_ptr<sdk::Worker>> StartWorkers(
    const W1& w1, const std::string& ns, const std::string& topic,
    const std::function<std::shared_ptr<grpc::Channel>()>& channel,
    const sdk::Handler& handler) {
  std::vector<std::unique_ptr<sdk::Worker>> workers;
  for (int i = 0; i < w1.consumers; ++i) {
    sdk::WorkerOptions options;
    options.connection.channel = channel();
    options.ns = ns;
    options.topics = {topic};
    options.concurrency = w1.worker_concurrency;
    options.buffer_size = w1.worker_buffer;
    options.max_buffer_size = w1.worker_max_buffer;
    options.poll_wait = sdk::Millis(500);
    auto worker = std::make_unique<sdk::Worker>(std::move(options));
    worker->HandleOther(handler);
    worker->Start();
    workers.push_back(std::move(worker));
  }
  return workers;
}

// SDK workers whose handler passes each task with a W1 payload, and its parsed
// header, to `record` (at the handler's start) and succeeds.
std::vector<std::unique_ptr<sdk::Worker>> StartRecorders(
    const W1& w1, const std::string& ns, const std::string& topic,
    const std::function<std::shared_ptr<grpc::Channel>()>& channel,
    std::function<void(const sdk::TaskContext&, const PayloadHeader&)> record) {
  return StartWorkers(w1, ns, topic, channel,
                      [record = std::move(record)](sdk::TaskContext& t) {
                        PayloadHeader h;
                        if (ParsePayload(t.payload(), &h)) record(t, h);
                        return sdk::Outcome::Success();
                      });
}

// Milliseconds from `since_us` (steady clock) to now.
double MsSince(int64_t since_us) { return static_cast<double>(NowUs() - since_us) / 1e3; }

// One Dequeue of up to `count` items of `topic` (long poll of 200 ms); false if the
// call failed.
bool Fetch(v1::Queue::Stub& stub, const std::string& ns, const std::string& topic,
           int count, v1::DequeueResponse* resp) {
  v1::DequeueRequest req;
  req.set_namespace_(ns);
  v1::TopicRequest* t = req.add_topics();
  t->set_topic(topic);
  t->set_count(count);
  req.set_wait_ms(200);
  grpc::ClientContext ctx;
  return stub.Dequeue(&ctx, req, resp).ok();
}

// Acks all of `items` in one call; the number acked, or -1 if the call failed.
int64_t AckAll(v1::Queue::Stub& stub, const v1::DequeueResponse& items) {
  v1::AckRequest ack;
  for (const auto& item : items.items()) {
    v1::AckItem* a = ack.add_items();
    a->set_id(item.id());
    a->set_lease_token(item.lease_token());
  }
  v1::AckResponse resp;
  grpc::ClientContext ctx;
  if (!stub.Ack(&ctx, ack, &resp).ok()) return -1;
  int64_t ok = 0;
  for (const auto& r : resp.results()) ok += r.code() == 0 ? 1 : 0;
  return ok;
}

uint64_t Succeeded(const std::vector<std::unique_ptr<sdk::Worker>>& workers) {
  uint64_t n = 0;
  for (const auto& w : workers) n += w->stats().succeeded;
  return n;
}

}  // namespace

double ShardqClient::DrainWithWorkers(const std::string& topic, int items) {
  int64_t t0 = NowUs();
  auto workers = StartWorkers(
      w1_, ns_, topic, [this] { return NewChannel(); },
      [](sdk::TaskContext&) { return sdk::Outcome::Success(); });
  // Acks are counted by the workers; poll their counters (a benchmark may poll).
  auto deadline = Clock::now() + std::chrono::seconds(600);
  while (Succeeded(workers) < static_cast<uint64_t>(items) && Clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::microseconds(500));
  }
  int64_t t1 = NowUs();
  uint64_t acked = Succeeded(workers);
  for (auto& w : workers) w->Stop(sdk::Millis(10'000));
  return static_cast<double>(acked) / Seconds(t0, t1);
}

double ShardqClient::DrainBatched(const std::string& topic, int items, int consumers) {
  std::atomic<int64_t> acked{0};
  std::atomic<int64_t> last_us{0};
  std::atomic<int64_t> errors{0};
  int64_t t0 = NowUs();
  std::vector<std::thread> threads;
  for (int c = 0; c < consumers; ++c) {
    threads.emplace_back([&, channel = NewChannel()] {
      auto stub = v1::Queue::NewStub(channel);
      int empty_polls = 0;  // in a row; 25 (5 s of nothing) ends a drain that stalled
      while (acked.load() < items && empty_polls < 25) {
        v1::DequeueResponse resp;
        if (!Fetch(*stub, ns_, topic, w1_.fetch, &resp)) {
          ++errors;
          continue;
        }
        if (resp.items_size() == 0) {
          ++empty_polls;
          continue;
        }
        empty_polls = 0;
        const int64_t ok = AckAll(*stub, resp);
        if (ok < 0) {
          ++errors;
          continue;
        }
        if (acked.fetch_add(ok) + ok >= items) {
          int64_t expected = 0;
          last_us.compare_exchange_strong(expected, NowUs());
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  if (errors > 0) std::cerr << "  drain " << topic << ": " << errors << " failed calls\n";
  if (acked.load() < items) {
    std::cerr << "  drain " << topic << ": stalled after " << acked.load() << " of "
              << items << "\n";
    last_us = NowUs();
  }
  return static_cast<double>(acked.load()) / Seconds(t0, last_us.load());
}

void ShardqClient::Latency(const std::string& topic, Figures* out) {
  Samples latency;
  auto workers = StartRecorders(
      w1_, ns_, topic, [this] { return NewChannel(); },
      [&](const sdk::TaskContext&, const PayloadHeader& h) {
        latency.Add(MsSince(h.start_us));
      });
  const int per_producer = w1_.c_rate * w1_.c_seconds / w1_.producers;
  const auto period =
      std::chrono::nanoseconds(1'000'000'000LL * w1_.producers / w1_.c_rate);
  Progress progress;
  Samples send_lag;
  std::atomic<int64_t> skipped{0};
  std::vector<std::thread> threads;
  int64_t t0 = NowUs();
  for (int p = 0; p < w1_.producers; ++p) {
    threads.emplace_back([&, p, producer = NewProducer()] {
      std::atomic<int> outstanding{0};
      auto start = Clock::now();
      for (int k = 0; k < per_producer; ++k) {
        auto scheduled = start + k * period;
        std::this_thread::sleep_until(scheduled);
        if (outstanding.load() >= w1_.c_max_outstanding) {
          ++skipped;
          continue;
        }
        send_lag.Add(
            std::chrono::duration<double, std::milli>(Clock::now() - scheduled).count());
        sdk::NewTask task;
        task.topic = topic;
        int64_t seq = static_cast<int64_t>(p) * per_producer + k;
        task.priority = PriorityOf(seq);
        task.payload =
            MakePayload({.seq = seq, .priority = task.priority, .start_us = NowUs()});
        ++outstanding;
        progress.Begin();
        producer->EnqueueAsync(task, [&](sdk::EnqueueResult r) {
          --outstanding;
          progress.End(1, r.ok() ? 0 : 1);
        });
      }
      progress.AwaitIdle();
    });
  }
  for (auto& t : threads) t.join();
  double seconds = Seconds(t0, progress.last_us);
  int64_t confirmed = progress.settled - progress.failed;
  size_t received =
      latency.AwaitCount(static_cast<size_t>(confirmed), std::chrono::seconds(60));
  for (auto& w : workers) w->Stop(sdk::Millis(10'000));
  std::vector<double> l = latency.Take();
  double target = static_cast<double>(w1_.c_rate) * w1_.c_seconds;
  double rate = static_cast<double>(confirmed) / seconds;
  double lag_p99 = Percentile(send_lag.Take(), 0.99);
  bool held = static_cast<double>(confirmed) >= 0.99 * target &&
              rate >= 0.98 * w1_.c_rate && lag_p99 < 50;
  (*out)["C latency p50 (ms)"] = Percentile(l, 0.50);
  (*out)["C latency p99 (ms)"] = Percentile(l, 0.99);
  (*out)["C latency max (ms)"] = Percentile(l, 1.0);
  (*out)["C enqueue rate (items/s)"] = rate;
  (*out)["C rate held (1 = yes)"] = held ? 1 : 0;
  (*out)["C lost (confirmed, not received)"] =
      static_cast<double>(confirmed) - static_cast<double>(received);
}

void ShardqClient::Priority(const std::string& topic, Figures* out) {
  Enqueue(topic, w1_.d_items, w1_.batch);
  auto stub = v1::Queue::NewStub(NewChannel());
  std::vector<int64_t> queued(10, 0);
  for (int64_t seq = 0; seq < w1_.d_items; ++seq)
    ++queued[static_cast<size_t>(PriorityOf(seq))];
  auto more_urgent_queued = [&](int32_t p) {
    for (int32_t q = 0; q < p && q < 10; ++q) {
      if (queued[static_cast<size_t>(q)] > 0) return true;
    }
    return false;
  };
  int64_t delivered = 0, per_item = 0, batch_level = 0;
  int64_t t0 = NowUs();
  int empty_polls = 0;
  while (delivered < w1_.d_items && empty_polls < 20) {
    v1::DequeueResponse resp;
    if (!Fetch(*stub, ns_, topic, w1_.fetch, &resp) || resp.items_size() == 0) {
      ++empty_polls;
      continue;
    }
    // Per item: each delivery against what is still queued at that moment.
    for (const auto& item : resp.items()) {
      per_item += more_urgent_queued(item.priority()) ? 1 : 0;
      --queued[static_cast<size_t>(std::clamp(item.priority(), 0, 9))];
    }
    // Batch level: against what is queued after the whole batch left.
    for (const auto& item : resp.items())
      batch_level += more_urgent_queued(item.priority()) ? 1 : 0;
    delivered += resp.items_size();
    AckAll(*stub, resp);
  }
  int64_t t1 = NowUs();
  (*out)["D inversions per item (%)"] =
      100.0 * static_cast<double>(per_item) /
      static_cast<double>(std::max<int64_t>(delivered, 1));
  (*out)["D inversions batch-level (%)"] =
      100.0 * static_cast<double>(batch_level) /
      static_cast<double>(std::max<int64_t>(delivered, 1));
  (*out)["D drain, 1 consumer (items/s)"] =
      static_cast<double>(delivered) / Seconds(t0, t1);
  (*out)["D delivered"] = static_cast<double>(delivered);
}

void ShardqClient::Delay(const std::string& topic, Figures* out) {
  Samples lateness;
  // The same lateness from the server's due time (TaskContext::due_at_ms, ms), which
  // leaves out the call's time until the server read it: where the rest of it is.
  Samples after_server_due;
  auto workers = StartRecorders(
      w1_, ns_, topic, [this] { return NewChannel(); },
      [&](const sdk::TaskContext& t, const PayloadHeader& h) {
        lateness.Add(MsSince(h.due_us));
        after_server_due.Add(static_cast<double>(NowUnixMs() - t.due_at_ms()));
      });
  const int64_t delay_us = int64_t{w1_.e_delay_ms} * 1000;
  Lanes lanes = RunLanes(w1_.e_items, 1, [&](int64_t seq, int64_t start_us) {
    sdk::NewTask t{.topic = topic,
                   .priority = PriorityOf(seq),
                   .delay = sdk::Millis(w1_.e_delay_ms)};
    t.payload = MakePayload({.seq = seq,
                             .priority = t.priority,
                             .start_us = start_us,
                             .due_us = start_us + delay_us});
    return t;
  });
  size_t confirmed = static_cast<size_t>(lanes.confirmed);
  size_t received = lateness.AwaitCount(confirmed, std::chrono::seconds(60));
  for (auto& w : workers) w->Stop(sdk::Millis(10'000));
  std::vector<double> l = lateness.Take();
  // Before the call's start plus its delay: never allowed (queue.proto's delay_ms).
  (*out)["E delivered early (items)"] = static_cast<double>(
      std::count_if(l.begin(), l.end(), [](double ms) { return ms < 0; }));
  (*out)["E delay lateness p50 (ms)"] = Percentile(l, 0.50);
  (*out)["E delay lateness p99 (ms)"] = Percentile(l, 0.99);
  (*out)["E delay lateness max (ms)"] = Percentile(l, 1.0);
  std::vector<double> s = after_server_due.Take();
  (*out)["E lateness after the server's due time p50 (ms)"] = Percentile(s, 0.50);
  (*out)["E lateness after the server's due time p99 (ms)"] = Percentile(s, 0.99);
  // How fast the items were enqueued is how fast they fall due: the lateness above is
  // measured against a burst of this rate.
  (*out)["E enqueue, the rate its items fall due at (items/s)"] =
      static_cast<double>(lanes.confirmed) / std::max(lanes.seconds, 1e-9);
  (*out)["E lost (confirmed, not received)"] =
      static_cast<double>(confirmed) - static_cast<double>(received);
}

}  // namespace shardq::bench
