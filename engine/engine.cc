#include "engine/engine.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <thread>

#include "engine/dequeue_op.h"

namespace shardq::engine {

Engine::Engine(std::vector<ShardSpec> shards, Clock& clock, EngineOptions options)
    : clock_(clock),
      options_(options),
      index_(shards.size(), options.window_capacity),
      io_(options.io_threads, "shardq-io"),
      ticker_(clock) {
  // Positions follow ShardId order: the k-way merge breaks exact ties by position.
  std::sort(shards.begin(), shards.end(),
            [](const ShardSpec& a, const ShardSpec& b) { return a.id < b.id; });
  for (size_t i = 0; i < shards.size(); ++i) {
    position_[shards[i].id] = i;
    workers_.push_back(std::make_unique<shard_worker::ShardWorker>(
        i, shards[i].id, std::move(shards[i].store), io_, clock_, index_,
        options_.worker));
    workers_.back()->SetTicker(&ticker_);
    ticker_.Add(workers_.back().get());
  }
  waits_.SetTicker(&ticker_);
  ticker_.Add(&waits_);
}

Engine::~Engine() {
  Shutdown();
  ticker_.Stop();
  workers_.clear();  // each waits for its strand to finish
}

void Engine::Start() {
  for (auto& w : workers_) w->Start();
  ticker_.Start();
}

void Engine::Shutdown() { waits_.ExpireAll(); }

// ---------------------------------------------------------------- Enqueue

void Engine::Enqueue(std::vector<NewItem> items, EnqueueDone done) {
  size_t n = items.size();
  // One call's items go to one shard: one transaction, one commit for all of them.
  // Calls are spread over the healthy shards round-robin.
  EnqueueOn(0, next_shard_.fetch_add(1), std::move(items),
            [n, done = std::move(done)](Result<std::vector<ItemId>> ids) {
              std::vector<Result<ItemId>> out;
              out.reserve(n);
              for (size_t i = 0; i < n; ++i) {
                if (ids.ok()) {
                  out.emplace_back((*ids)[i]);
                } else {
                  out.emplace_back(ids.status());
                }
              }
              done(std::move(out));
            });
}

void Engine::EnqueueOn(size_t attempt, size_t start, std::vector<NewItem> items,
                       std::function<void(Result<std::vector<ItemId>>)> done,
                       Status last_refusal) {
  const size_t shards = workers_.size();
  for (size_t k = attempt; k < shards; ++k) {
    shard_worker::ShardWorker* w = workers_[(start + k) % shards].get();
    if (!w->AcceptsEnqueues()) continue;
    ShardId shard = w->id();
    // The worker consumes the items; keep a copy only for the rare re-route, which
    // is safe because a worker that did not attempt the insert did not commit it.
    auto retry_items = std::make_shared<std::vector<NewItem>>(items);
    w->Enqueue(std::move(items), [this, k, start, shard, retry_items,
                                  done = std::move(done)](Result<std::vector<RowId>> rows,
                                                          bool attempted) mutable {
      // Not attempted (breaker open, or its buffer full): nothing was written, so
      // another shard may take the items without risk of a duplicate.
      if (!rows.ok() && !attempted) {
        EnqueueOn(k + 1, start, std::move(*retry_items), std::move(done), rows.status());
        return;
      }
      if (!rows.ok()) {
        done(rows.status());
        return;
      }
      std::vector<ItemId> ids;
      ids.reserve(rows->size());
      for (RowId r : *rows) ids.push_back({shard, r});
      done(std::move(ids));
    });
    return;
  }
  // Every shard refused. Full buffers are back-pressure (retry later); otherwise
  // nothing is up.
  if (last_refusal.code() == Code::kResourceExhausted) {
    done(std::move(last_refusal));
  } else {
    done(Status::Unavailable("no shard is available to take enqueues"));
  }
}

// ---------------------------------------------------------------- Dequeue

std::shared_ptr<Engine::DequeueHandle> Engine::Dequeue(std::string ns,
                                                       std::vector<TopicAsk> asks,
                                                       Duration wait, DequeueDone done) {
  auto op = std::make_shared<DequeueOp>(*this, std::move(ns), std::move(asks),
                                        clock_.Now() + wait, std::move(done));
  op->Attempt();
  return op;
}

// ---------------------------------------------------------------- Ack / Nack / Extend

namespace {
Status UnknownShard() { return Status::NotFound("no such shard on this server"); }
}  // namespace

template <>
Status ToOut<Status>(store::ItemOutcome o) {
  return std::move(o.status);
}
template <>
Result<Time> ToOut<Result<Time>>(store::ItemOutcome o) {
  if (!o.status.ok()) return std::move(o.status);
  return o.new_deadline;
}

template <typename Op, typename Out, typename Send>
void Engine::Route(std::vector<Op> ops, Out unknown_shard,
                   std::function<void(std::vector<Out>)> done, Send send) {
  struct Gather {
    std::mutex mu;
    std::vector<Out> results;
    size_t pending = 0;
    std::function<void(std::vector<Out>)> done;
  };
  auto g = std::make_shared<Gather>();
  g->results.assign(ops.size(), unknown_shard);
  g->done = std::move(done);
  // Input positions of each shard's ops, so results land back in request order.
  std::vector<std::vector<size_t>> by_shard(workers_.size());
  for (size_t i = 0; i < ops.size(); ++i) {
    auto it = position_.find(ops[i].id.shard);
    if (it != position_.end()) by_shard[it->second].push_back(i);
  }
  g->pending = 1;  // held until every shard's request is sent
  for (size_t s = 0; s < by_shard.size(); ++s) {
    if (by_shard[s].empty()) continue;
    {
      std::lock_guard lock(g->mu);
      ++g->pending;
    }
    std::vector<const Op*> mine;
    for (size_t i : by_shard[s]) mine.push_back(&ops[i]);
    send(*workers_[s], mine,
         [g, positions = by_shard[s]](std::vector<store::ItemOutcome> outcomes) {
           std::unique_lock lock(g->mu);
           for (size_t k = 0; k < positions.size(); ++k) {
             g->results[positions[k]] = ToOut<Out>(std::move(outcomes[k]));
           }
           if (--g->pending == 0) {
             lock.unlock();
             g->done(std::move(g->results));
           }
         });
  }
  std::unique_lock lock(g->mu);
  if (--g->pending == 0) {
    lock.unlock();
    g->done(std::move(g->results));
  }
}

void Engine::Ack(std::vector<LeaseOp> ops, StatusesDone done) {
  Route<LeaseOp, Status>(
      std::move(ops), UnknownShard(), std::move(done),
      [](shard_worker::ShardWorker& w, const std::vector<const LeaseOp*>& mine,
         shard_worker::OutcomesDone cb) {
        std::vector<store::AckRequest> reqs;
        for (const LeaseOp* op : mine) reqs.push_back({op->id.row, op->token});
        w.Ack(std::move(reqs), std::move(cb));
      });
}

void Engine::Nack(std::vector<NackOp> ops, StatusesDone done) {
  Route<NackOp, Status>(
      std::move(ops), UnknownShard(), std::move(done),
      [](shard_worker::ShardWorker& w, const std::vector<const NackOp*>& mine,
         shard_worker::OutcomesDone cb) {
        std::vector<store::NackRequest> reqs;
        for (const NackOp* op : mine) {
          reqs.push_back({op->id.row, op->token, op->delay, op->metadata});
        }
        w.Nack(std::move(reqs), std::move(cb));
      });
}

void Engine::Extend(std::vector<ExtendOp> ops, ExtendDone done) {
  Route<ExtendOp, Result<Time>>(
      std::move(ops), Result<Time>(UnknownShard()), std::move(done),
      [](shard_worker::ShardWorker& w, const std::vector<const ExtendOp*>& mine,
         shard_worker::OutcomesDone cb) {
        std::vector<store::ExtendRequest> reqs;
        for (const ExtendOp* op : mine)
          reqs.push_back({op->id.row, op->token, op->extension});
        w.Extend(std::move(reqs), std::move(cb));
      });
}

// ---------------------------------------------------------------- Observers

std::vector<TopicInfo> Engine::ActiveTopics(const std::string& ns) const {
  std::vector<TopicInfo> out;
  for (const auto& buffer : index_.ForNamespace(ns)) {
    prefetch::StateCounts c = buffer->Counts();
    if (c.total() > 0) out.push_back({buffer->topic(), c});
  }
  return out;
}

bool Engine::AwaitShardsOpen(std::chrono::milliseconds timeout) const {
  auto until = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    bool all = std::all_of(workers_.begin(), workers_.end(),
                           [](const auto& w) { return w->Health().open; });
    if (all) return true;
    if (std::chrono::steady_clock::now() >= until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

std::vector<shard_worker::ShardHealth> Engine::Health() const {
  std::vector<shard_worker::ShardHealth> out;
  for (const auto& w : workers_) out.push_back(w->Health());
  return out;
}

}  // namespace shardq::engine
