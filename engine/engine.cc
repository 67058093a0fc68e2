#include "engine/engine.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <thread>

#include "engine/dequeue_op.h"
#include "engine/placement.h"

namespace shardq::engine {

Engine::Engine(std::vector<ShardSpec> shards, Clock& clock, EngineOptions options)
    : clock_(clock),
      options_(options),
      index_(shards.size(), options.window_capacity),
      sweeper_(index_, options.index_sweep_interval),
      io_(options.io_threads, "shardq-io"),
      ticker_(clock) {
  // Positions follow ShardId order: the k-way merge breaks exact ties by position.
  std::sort(shards.begin(), shards.end(),
            [](const ShardSpec& a, const ShardSpec& b) { return a.id < b.id; });
  for (size_t i = 0; i < shards.size(); ++i) {
    position_[shards[i].id] = i;
    shards[i].store->SetPolicies(options_.policies);
    workers_.push_back(std::make_unique<shard_worker::ShardWorker>(
        i, shards[i].id, std::move(shards[i].store), io_, clock_, index_,
        options_.worker));
    workers_.back()->SetTicker(&ticker_);
    workers_.back()->SetHealthListener([this] { UpdateReadiness(); });
    ticker_.Add(workers_.back().get());
  }
  waits_.SetTicker(&ticker_);
  ticker_.Add(&waits_);
  ticker_.Add(&sweeper_);
}

Engine::~Engine() {
  {
    std::lock_guard lock(readiness_mu_);
    destroying_ = true;
  }
  Shutdown();  // held calls queue their give-backs
  ticker_.Stop();
  // What is queued still runs (give-backs, acks, nacks): a worker being destroyed
  // drops it. One worker's work can queue more on another (a claim's give-back), so
  // pass over them until all were idle in one pass.
  const auto deadline = std::chrono::steady_clock::now() + kDrainTimeout;
  bool all_idle = false;
  while (!all_idle && std::chrono::steady_clock::now() < deadline) {
    all_idle = true;
    for (auto& w : workers_) all_idle = w->DrainUntil(deadline) && all_idle;
  }
  // Past the drain's deadline a strand may still run, and queue work on another
  // worker (through workers_): stop them all before destroying any.
  for (auto& w : workers_) w->Stop();
  workers_.clear();
}

void Engine::Start() {
  for (auto& w : workers_) w->Start();
  ticker_.Start();
}

void Engine::Shutdown() { waits_.ExpireAll(); }

// ---------------------------------------------------------------- Enqueue

namespace {
// What a call's items hold in memory until they commit: the enqueue budget's unit.
size_t HeldBytes(const std::vector<NewItem>& items) {
  size_t bytes = 0;
  for (const NewItem& item : items) {
    bytes += sizeof(NewItem) + item.ns.size() + item.topic.size() + item.payload.size() +
             item.metadata.size() + item.task_type.size() + item.dedup_key.size();
  }
  return bytes;
}
}  // namespace

void Engine::Enqueue(std::vector<NewItem> items, EnqueueDone done) {
  // Group the call (engine/placement.h): unkeyed items travel together to the shard
  // of the current slot; keyed items to the shard of their key. Each group is one
  // transaction.
  struct Group {
    std::vector<size_t> positions;
    std::vector<NewItem> items;
  };
  const size_t shards = workers_.size();
  if (shards == 0) {  // the config refuses this; placement must not divide by it
    done(std::vector<Result<EnqueueOutcome>>(
        items.size(), Status::Unavailable("this server has no shards")));
    return;
  }
  if (items.empty()) {
    done({});
    return;
  }
  const size_t bytes = HeldBytes(items);
  if (!TakeEnqueueBudget(bytes)) {
    done(std::vector<Result<EnqueueOutcome>>(
        items.size(),
        Status::ResourceExhausted(
            "the server holds " + std::to_string(buffered_enqueue_bytes_.load()) +
            " bytes of enqueues not yet committed, and this call's " +
            std::to_string(bytes) + " would pass its limit of " +
            std::to_string(options_.max_buffered_enqueue_bytes) + "; retry later")));
    return;
  }
  std::map<size_t, Group> keyed;  // by shard position
  Group unkeyed;
  for (size_t i = 0; i < items.size(); ++i) {
    Group& g = items[i].dedup_key.empty()
                   ? unkeyed
                   : keyed[KeyPosition(items[i].ns, items[i].dedup_key, shards)];
    g.positions.push_back(i);
    g.items.push_back(std::move(items[i]));
  }

  struct Gather {
    std::mutex mu;
    std::vector<Result<EnqueueOutcome>> results;
    size_t pending = 0;
    size_t bytes = 0;  // taken from the enqueue budget
    EnqueueDone done;
  };
  auto g = std::make_shared<Gather>();
  g->results.assign(items.size(), Status::Internal("unanswered"));
  g->done = std::move(done);
  g->pending = keyed.size() + (unkeyed.items.empty() ? 0 : 1);
  g->bytes = bytes;
  auto answer = [this, g](std::vector<size_t> positions) {
    return [this, g,
            positions = std::move(positions)](Result<std::vector<EnqueueOutcome>> r) {
      std::unique_lock lock(g->mu);
      for (size_t k = 0; k < positions.size(); ++k) {
        if (r.ok()) {
          g->results[positions[k]] = (*r)[k];
        } else {
          g->results[positions[k]] = r.status();
        }
      }
      if (--g->pending == 0) {
        lock.unlock();
        buffered_enqueue_bytes_.fetch_sub(g->bytes);  // committed or dropped: not held
        g->done(std::move(g->results));
      }
    };
  };
  if (!unkeyed.items.empty()) {
    const size_t start =
        SlotPosition(unkeyed.items.front().ns, ToUnixMillis(clock_.Now()), shards);
    EnqueueOn(0, start, std::move(unkeyed.items), answer(std::move(unkeyed.positions)));
  }
  for (auto& [position, group] : keyed) {
    EnqueueFixed(position, std::move(group.items), answer(std::move(group.positions)));
  }
}

bool Engine::TakeEnqueueBudget(size_t bytes) {
  size_t held = buffered_enqueue_bytes_.load();
  do {
    if (held != 0 && held + bytes > options_.max_buffered_enqueue_bytes) return false;
  } while (!buffered_enqueue_bytes_.compare_exchange_weak(held, held + bytes));
  return true;
}

namespace {
Result<std::vector<EnqueueOutcome>> ToOutcomes(ShardId shard,
                                               const std::vector<store::Inserted>& rows) {
  std::vector<EnqueueOutcome> out;
  out.reserve(rows.size());
  for (const store::Inserted& r : rows) out.push_back({{shard, r.row}, r.deduplicated});
  return out;
}
}  // namespace

void Engine::EnqueueOn(size_t attempt, size_t start, std::vector<NewItem> items,
                       GroupDone done, Status last_refusal) {
  const size_t shards = workers_.size();
  for (size_t k = attempt; k < shards; ++k) {
    shard_worker::ShardWorker* w = workers_[(start + k) % shards].get();
    if (!w->AcceptsEnqueues()) continue;
    ShardId shard = w->id();
    w->Enqueue(std::move(items), [this, k, start, shard, done = std::move(done)](
                                     Result<std::vector<store::Inserted>> rows,
                                     std::vector<NewItem> untried) mutable {
      // Not tried (breaker open, buffer full, or not open): nothing written,
      // so another shard may take the items without risk of a duplicate.
      if (!rows.ok() && !untried.empty()) {
        EnqueueOn(k + 1, start, std::move(untried), std::move(done), rows.status());
        return;
      }
      if (!rows.ok()) {
        done(rows.status());
        return;
      }
      done(ToOutcomes(shard, *rows));
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

void Engine::EnqueueFixed(size_t position, std::vector<NewItem> items, GroupDone done) {
  shard_worker::ShardWorker* w = workers_[position].get();
  if (!w->AcceptsEnqueues()) {
    done(Status::Unavailable("shard " + std::to_string(w->id().value()) +
                             ", which holds this dedup key, is unavailable"));
    return;
  }
  ShardId shard = w->id();
  w->Enqueue(std::move(items),
             [shard, done = std::move(done)](Result<std::vector<store::Inserted>> rows,
                                             std::vector<NewItem> /*untried*/) {
               if (!rows.ok()) {
                 done(rows.status());
                 return;
               }
               done(ToOutcomes(shard, *rows));
             });
}

// ---------------------------------------------------------------- Dequeue

std::shared_ptr<Engine::DequeueHandle> Engine::Dequeue(std::string ns,
                                                       std::vector<TopicAsk> asks,
                                                       Duration wait,
                                                       std::string worker_id,
                                                       DequeueDone done) {
  auto op = std::make_shared<DequeueOp>(*this, std::move(ns), std::move(asks),
                                        std::move(worker_id), clock_.Now() + wait,
                                        std::move(done));
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
Result<ExtendOutcome> ToOut<Result<ExtendOutcome>>(store::ItemOutcome o) {
  if (!o.status.ok()) return std::move(o.status);
  return ExtendOutcome{o.new_deadline, o.cancel_requested};
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
        for (const LeaseOp* op : mine)
          reqs.push_back({op->id.row, op->token, op->result});
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
          reqs.push_back({op->id.row, op->token, op->delay, op->metadata, op->error,
                          op->fatal, op->undelivered, op->unstarted_until});
        }
        w.Nack(std::move(reqs), std::move(cb));
      });
}

void Engine::Extend(std::vector<ExtendOp> ops, ExtendDone done) {
  Route<ExtendOp, Result<ExtendOutcome>>(
      std::move(ops), Result<ExtendOutcome>(UnknownShard()), std::move(done),
      [](shard_worker::ShardWorker& w, const std::vector<const ExtendOp*>& mine,
         shard_worker::OutcomesDone cb) {
        std::vector<store::ExtendRequest> reqs;
        for (const ExtendOp* op : mine)
          reqs.push_back({op->id.row, op->token, op->extension});
        w.Extend(std::move(reqs), std::move(cb));
      });
}

// ---------------------------------------------------------------- Observers

std::vector<TopicInfo> Engine::ActiveTopics(const std::string& ns,
                                            const std::string& after,
                                            size_t limit) const {
  // In chunks of what is still wanted: a page reads about its own size of the index,
  // not the whole namespace (idle topics, counted zero, are skipped).
  std::vector<TopicInfo> out;
  std::string cursor = after;
  while (out.size() < limit) {
    const size_t wanted = limit - out.size();
    const auto chunk = index_.ForNamespace(ns, cursor, wanted);
    for (const auto& buffer : chunk) {
      prefetch::StateCounts c = buffer->Counts();
      if (c.total() > 0) out.push_back({buffer->topic(), c});
    }
    if (chunk.size() < wanted) break;
    cursor = chunk.back()->topic();
  }
  return out;
}

std::vector<std::pair<std::string, prefetch::StateCounts>> Engine::NamespaceTotals()
    const {
  std::map<std::string, prefetch::StateCounts> totals;
  for (const auto& buffer : index_.All()) totals[buffer->ns()] += buffer->Counts();
  return {totals.begin(), totals.end()};
}

size_t Engine::WindowedKeys(const std::string& ns, const std::string& topic) const {
  auto buffer = index_.Find(ns, topic);
  size_t n = 0;
  for (size_t s = 0; buffer && s < workers_.size(); ++s) n += buffer->WindowSize(s);
  return n;
}

size_t Engine::WaiterEntries(const std::string& ns, const std::string& topic) const {
  auto buffer = index_.Find(ns, topic);
  return buffer ? buffer->WaiterEntries() : 0;
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

bool Engine::Ready() const {
  bool any_up = false;
  for (const auto& w : workers_) {
    shard_worker::ShardHealth h = w->Health();
    if (h.starting) return false;
    any_up = any_up || (h.open && h.breaker == shard_worker::BreakerState::kClosed);
  }
  return any_up;
}

void Engine::UpdateReadiness() {
  std::lock_guard lock(readiness_mu_);
  if (destroying_) return;  // workers_ is being torn down
  const bool ready = Ready();
  if (ready == ready_) return;
  ready_ = ready;
  spdlog::info("shardq is {}", ready ? "ready" : "not ready (no shard is up)");
  if (options_.on_readiness) options_.on_readiness(ready);
}

std::vector<shard_worker::ShardHealth> Engine::Health() const {
  std::vector<shard_worker::ShardHealth> out;
  for (const auto& w : workers_) out.push_back(w->Health());
  return out;
}

}  // namespace shardq::engine
