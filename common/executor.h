#pragma once
// A fixed pool of threads that runs posted closures in FIFO order. The shard workers
// run on it as strands (one batch of a shard at a time), so the number of threads is
// set by config and never grows with shards, topics or clients.

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace shardq {

class Executor {
 public:
  virtual ~Executor() = default;
  virtual void Post(std::function<void()> task) = 0;
};

class ThreadPool final : public Executor {
 public:
  ThreadPool(size_t threads, std::string name);
  ~ThreadPool() override;  // runs what is queued, then joins
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  void Post(std::function<void()> task) override;
  size_t size() const { return threads_.size(); }

 private:
  void Loop();

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> tasks_;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace shardq
