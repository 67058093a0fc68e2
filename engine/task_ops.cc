// Engine: the operators' calls (GetTask, CancelTask, dead letters). They are rare,
// so each runs as an exclusive step on its shard's strand rather than in a batch.

#include <algorithm>
#include <mutex>

#include "engine/engine.h"

namespace shardq::engine {

Status Engine::OnShard(ShardId shard, std::function<void(const Status&)> failed,
                       StoreCall fn) {
  auto it = position_.find(shard);
  if (it == position_.end()) return Status::NotFound("no such shard on this server");
  workers_[it->second]->RunExclusive(
      [failed = std::move(failed), fn = std::move(fn), shard](store::ShardStore* s) {
        if (s == nullptr) {
          failed(Status::Unavailable("shard " + std::to_string(shard.value()) +
                                     " is unavailable"));
          return shard_worker::ShardWorker::Exclusive{};
        }
        return fn(*s);
      });
  return Status::Ok();
}

void Engine::GetTask(ItemId id, bool include_payload, TaskDone done) {
  auto answer = std::make_shared<TaskDone>(std::move(done));
  Status st = OnShard(
      id.shard, [answer](const Status& s) { (*answer)(s); },
      [id, include_payload, answer](store::ShardStore& s) {
        auto task = s.GetTask(id.row, include_payload);
        Status st = task.status();
        if (task.ok()) {
          (*answer)(ShardTask{id.shard, std::move(*task)});
        } else {
          (*answer)(st);
        }
        return shard_worker::ShardWorker::Exclusive{{}, nullptr, std::move(st)};
      });
  if (!st.ok()) (*answer)(st);
}

void Engine::CancelTask(ItemId id, TaskDone done) {
  auto answer = std::make_shared<TaskDone>(std::move(done));
  Status st = OnShard(
      id.shard, [answer](const Status& s) { (*answer)(s); },
      [this, id, answer](store::ShardStore& s) {
        shard_worker::ShardWorker::Exclusive done;
        auto outcome = s.Cancel(id.row, clock_.Now());
        if (!outcome.ok() || !outcome->status.ok()) {
          (*answer)(outcome.ok() ? outcome->status : outcome.status());
          done.status = outcome.status();  // a refusal of the row is an answer
          return done;
        }
        if (outcome->transition) done.transitions.push_back(*outcome->transition);
        auto task = s.GetTask(id.row, /*include_payload=*/false);
        done.status = task.status();
        if (task.ok()) {
          (*answer)(ShardTask{id.shard, std::move(*task)});
        } else {
          (*answer)(done.status);
        }
        return done;
      });
  if (!st.ok()) (*answer)(st);
}

void Engine::ListDead(const std::string& ns, const std::string& topic, size_t limit,
                      TasksDone done) {
  struct Gather {
    std::mutex mu;
    std::vector<ShardTask> tasks;
    size_t pending = 0;
    TasksDone done;
  };
  auto g = std::make_shared<Gather>();
  g->done = std::move(done);
  g->pending = workers_.size();
  auto finish_one = [g, limit](std::vector<ShardTask> mine) {
    std::unique_lock lock(g->mu);
    for (ShardTask& t : mine) g->tasks.push_back(std::move(t));
    if (--g->pending > 0) return;
    auto order = [](const ShardTask& t) {
      return OrderKey{t.task.priority, t.task.deliver_after, t.id()};
    };
    std::sort(
        g->tasks.begin(), g->tasks.end(),
        [&](const ShardTask& a, const ShardTask& b) { return order(a) < order(b); });
    if (g->tasks.size() > limit) g->tasks.resize(limit);
    lock.unlock();
    g->done(std::move(g->tasks));
  };
  for (const auto& w : workers_) {
    ShardId shard = w->id();
    // A shard that is down is left out: a partial list beats none for an operator.
    w->RunExclusive([=](store::ShardStore* s) {
      std::vector<ShardTask> mine;
      shard_worker::ShardWorker::Exclusive done;
      if (s != nullptr) {
        auto dead = s->ListDead(ns, topic, limit);
        done.status = dead.status();
        if (dead.ok()) {
          for (store::TaskRecord& t : *dead) mine.push_back({shard, std::move(t)});
        }
      }
      finish_one(std::move(mine));
      return done;
    });
  }
}

void Engine::Redrive(const std::string& ns, const std::string& topic,
                     std::vector<ItemId> ids, BulkDone done) {
  Time now = clock_.Now();
  Bulk(
      ns, topic, std::move(ids),
      [ns, topic, now](store::ShardStore& s, std::span<const RowId> rows, size_t limit) {
        return s.Redrive(ns, topic, rows, limit, now);
      },
      std::move(done));
}

void Engine::PurgeDead(const std::string& ns, const std::string& topic,
                       std::vector<ItemId> ids, BulkDone done) {
  Bulk(
      ns, topic, std::move(ids),
      [ns, topic](store::ShardStore& s, std::span<const RowId> rows, size_t limit) {
        return s.PurgeDead(ns, topic, rows, limit);
      },
      std::move(done));
}

void Engine::Bulk(const std::string& ns, const std::string& topic,
                  std::vector<ItemId> ids, BulkCall call, BulkDone done) {
  struct Gather {
    std::mutex mu;
    BulkResult result;
    Status error;
    size_t pending = 0;
    BulkDone done;
  };
  auto g = std::make_shared<Gather>();
  g->done = std::move(done);
  const bool by_id = !ids.empty();
  g->result.per_id.assign(ids.size(), Status::NotFound("no such shard on this server"));

  // Rows per shard position, with their positions in `ids`.
  std::vector<std::vector<RowId>> rows(workers_.size());
  std::vector<std::vector<size_t>> where(workers_.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    auto it = position_.find(ids[i].shard);
    if (it == position_.end()) continue;
    rows[it->second].push_back(ids[i].row);
    where[it->second].push_back(i);
  }
  std::vector<size_t> targets;
  for (size_t p = 0; p < workers_.size(); ++p) {
    if (!by_id || !rows[p].empty()) targets.push_back(p);
  }
  if (targets.empty()) {
    g->done(std::move(g->result));
    return;
  }
  g->pending = targets.size();
  auto finish_one = [g] {
    std::unique_lock lock(g->mu);
    if (--g->pending > 0) return;
    lock.unlock();
    // Without ids, one shard down fails the call: "purged 0" would be a lie.
    if (!g->error.ok()) {
      g->done(g->error);
    } else {
      g->done(std::move(g->result));
    }
  };
  const size_t limit = options_.bulk_limit;
  for (size_t p : targets) {
    workers_[p]->RunExclusive([=, mine = rows[p],
                               positions = where[p]](store::ShardStore* s) {
      shard_worker::ShardWorker::Exclusive done;
      // The store call runs outside g->mu: the shards' strands run it at once, and
      // a lock held across their I/O would serialise them and hold pool threads.
      Result<store::ShardStore::BulkOutcome> out =
          s == nullptr ? Result<store::ShardStore::BulkOutcome>(
                             Status::Unavailable("a shard of this topic is unavailable"))
                       : call(*s, mine, by_id ? mine.size() : limit);
      done.status = out.status();
      {
        std::lock_guard lock(g->mu);
        if (!out.ok()) {
          for (size_t i : positions) g->result.per_id[i] = out.status();
          if (!by_id) g->error = out.status();
        } else {
          for (size_t k = 0; k < positions.size() && k < out->per_row.size(); ++k) {
            g->result.per_id[positions[k]] = out->per_row[k].status;
          }
          g->result.count += out->transitions.size();
          done.transitions = std::move(out->transitions);
        }
      }
      // Answered once the index shows the change (see RunExclusive).
      done.then = finish_one;
      return done;
    });
  }
}

}  // namespace shardq::engine
