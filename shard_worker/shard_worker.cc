#include "shard_worker/shard_worker.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <span>
#include <thread>
#include <type_traits>
#include <unordered_map>
#include <utility>

#include "shard_worker/handoff.h"
#include "store/validation.h"

namespace shardq::shard_worker {
namespace {

// Splits `pending` into runs of consecutive requests of at most `max_rows` rows in all
// (a request larger than that is a run of its own), in order: one store call each, so
// a statement's id list and parameters stay bounded however many callers pile up.
template <typename T, typename Rows>
std::vector<std::span<T>> RunsOf(std::vector<T>& pending, size_t max_rows, Rows rows_of) {
  std::vector<std::span<T>> runs;
  size_t i = 0;
  while (i < pending.size()) {
    size_t j = i, rows = 0;
    while (j < pending.size() && (j == i || rows + rows_of(pending[j]) <= max_rows)) {
      rows += rows_of(pending[j]);
      ++j;
    }
    runs.emplace_back(pending.data() + i, j - i);
    i = j;
  }
  return runs;
}

// The i-th run of RunsOf's answer, or an empty one past its end.
template <typename T>
std::span<T> RunAt(const std::vector<std::span<T>>& runs, size_t i) {
  return i < runs.size() ? runs[i] : std::span<T>{};
}

// Calls fn and measures it with a steady clock (for the breaker and the counters).
template <typename Fn>
auto Timed(Fn fn, StoreTime* latency) {
  auto start = std::chrono::steady_clock::now();
  auto result = fn();
  *latency =
      std::chrono::duration_cast<StoreTime>(std::chrono::steady_clock::now() - start);
  return result;
}

// How many of the calls' outcomes ended a lease (a repeated ack succeeds without
// one). With `nacks` (in the same order), only the consumers' own: not the server's
// give-backs of leases whose answer was never sent ("undelivered").
uint64_t LeasesEnded(const std::vector<std::vector<store::ItemOutcome>>& outs,
                     const std::vector<store::NackRequest>* nacks = nullptr) {
  uint64_t n = 0;
  size_t k = 0;
  for (const auto& call : outs) {
    for (const auto& o : call) {
      const bool given_back = nacks != nullptr && (*nacks)[k].undelivered;
      ++k;
      n += o.status.ok() && o.transition && !given_back ? 1 : 0;
    }
  }
  return n;
}

}  // namespace

// One batch's view of the prefetch index. Collects the keys that became READY, per
// topic, so that each topic's window is updated and its waiters are woken once per
// batch, not per item; and remembers the last topic looked up, since a batch is
// mostly one topic (an index lookup builds a key and takes a shared lock).
class ShardWorker::ReadyBatch {
 public:
  std::shared_ptr<prefetch::TopicBuffer> Buffer(prefetch::PrefetchIndex& index,
                                                const std::string& ns,
                                                const std::string& topic) {
    if (!last_ || last_->topic() != topic || last_->ns() != ns) {
      last_ = index.GetOrCreate(ns, topic);
    }
    return last_;
  }
  void Add(const std::shared_ptr<prefetch::TopicBuffer>& buffer, const ReadyKey& key) {
    auto& slot = keys_[buffer.get()];
    if (!slot.first) slot.first = buffer;
    slot.second.push_back(key);
  }
  void Flush(size_t position) {
    for (auto& [raw, slot] : keys_) slot.first->OnReady(position, slot.second);
    keys_.clear();
  }

 private:
  std::unordered_map<
      prefetch::TopicBuffer*,
      std::pair<std::shared_ptr<prefetch::TopicBuffer>, std::vector<ReadyKey>>>
      keys_;
  std::shared_ptr<prefetch::TopicBuffer> last_;
};

ShardWorker::ShardWorker(size_t position, ShardId id,
                         std::unique_ptr<store::ShardStore> store, Executor& io,
                         Clock& clock, prefetch::PrefetchIndex& index,
                         WorkerOptions options)
    : position_(position),
      id_(id),
      store_(std::move(store)),
      io_(io),
      clock_(clock),
      index_(index),
      options_(options),
      breaker_(clock, options.breaker),
      releases_(options.lookahead, options.promote_batch, options.release_gap,
                options.max_release_lead) {}

ShardWorker::~ShardWorker() { Stop(); }

void ShardWorker::Stop() {
  // The strand may still be running on the pool; wait for it to let go of `this`.
  std::unique_lock lock(mu_);
  stopping_ = true;
  idle_.wait(lock, [this] { return !running_; });
}

bool ShardWorker::DrainUntil(std::chrono::steady_clock::time_point deadline) {
  std::unique_lock lock(mu_);
  auto drained = [this] { return !running_ && pending_.empty(); };
  if (drained()) return true;
  idle_.wait_until(lock, deadline, drained);
  return false;
}

void ShardWorker::Start() {
  std::lock_guard lock(mu_);
  starting_ = true;
  pending_.probe = true;  // the first "probe" opens the store and recovers
  ScheduleLocked();
}

bool ShardWorker::AcceptsEnqueues() const {
  std::lock_guard lock(mu_);
  return (recovered_ || starting_) && breaker_.AllowsTraffic();
}

ShardHealth ShardWorker::Health() const {
  std::lock_guard lock(mu_);
  ShardHealth health{id_, breaker_.state(), recovered_, starting_, last_error_};
  health.release_lead = releases_.lead(clock_.Now());
  auto get = [](const std::atomic<uint64_t>& c) {
    return c.load(std::memory_order_relaxed);
  };
  health.counters = {
      .enqueued = get(counters_.enqueued),
      .leased = get(counters_.leased),
      .acked = get(counters_.acked),
      .nacked = get(counters_.nacked),
      .store_failures = get(counters_.store_failures),
      .store_time = StoreTime(counters_.store_time_us.load(std::memory_order_relaxed))};
  for (size_t i = 0; i < health.counters.store_time_buckets.size(); ++i)
    health.counters.store_time_buckets[i] = get(counters_.store_time_buckets[i]);
  return health;
}

void ShardWorker::Enqueue(std::vector<NewItem> items, EnqueueDone done) {
  if (items.empty()) {  // nothing to write; an empty `untried` would read as "tried"
    done(std::vector<store::Inserted>{}, {});
    return;
  }
  std::unique_lock lock(mu_);
  if (pending_enqueue_items_ + items.size() > options_.max_pending_enqueues) {
    lock.unlock();
    done(Status::ResourceExhausted("shard " + std::to_string(id_.value()) +
                                   " enqueue buffer is full; retry later"),
         std::move(items));
    return;
  }
  pending_enqueue_items_ += items.size();
  pending_.enqueues.push_back({std::move(items), std::move(done)});
  ScheduleLocked();
}

void ShardWorker::Claim(std::shared_ptr<prefetch::TopicBuffer> buffer,
                        std::vector<ReadyKey> keys, std::string worker_id,
                        ClaimDone done) {
  std::lock_guard lock(mu_);
  pending_.claims.push_back({std::move(buffer), std::move(keys), std::move(worker_id),
                             std::move(done), clock_.Now()});
  ScheduleLocked();
}

void ShardWorker::RunExclusive(StoreFn fn) {
  std::lock_guard lock(mu_);
  pending_.exclusive.push_back(std::move(fn));
  ScheduleLocked();
}

template <typename Req>
void ShardWorker::QueueReports(std::vector<PendingBatch<Req>> Work::*list,
                               std::vector<Req> reqs, OutcomesDone done) {
  std::unique_lock lock(mu_);
  if (pending_report_items_ + reqs.size() > options_.max_pending_reports) {
    lock.unlock();
    const Status full = Status::ResourceExhausted(
        "shard " + std::to_string(id_.value()) +
        ": too many acks, nacks and extensions wait for it; retry later");
    done(std::vector<store::ItemOutcome>(reqs.size(), {full, std::nullopt, {}}));
    return;
  }
  pending_report_items_ += reqs.size();
  (pending_.*list).push_back({std::move(reqs), std::move(done)});
  ScheduleLocked();
}

void ShardWorker::Ack(std::vector<store::AckRequest> reqs, OutcomesDone done) {
  QueueReports(&Work::acks, std::move(reqs), std::move(done));
}

void ShardWorker::Nack(std::vector<store::NackRequest> reqs, OutcomesDone done) {
  QueueReports(&Work::nacks, std::move(reqs), std::move(done));
}

void ShardWorker::Extend(std::vector<store::ExtendRequest> reqs, OutcomesDone done) {
  QueueReports(&Work::extends, std::move(reqs), std::move(done));
}

void ShardWorker::Refill(std::shared_ptr<prefetch::TopicBuffer> buffer) {
  std::lock_guard lock(mu_);
  pending_.refills.push_back(std::move(buffer));
  ScheduleLocked();
}

Duration ShardWorker::Tick(Time now) {
  if (breaker_.TakeProbe()) {
    std::lock_guard lock(mu_);
    pending_.probe = true;
    ScheduleLocked();
  }
  ReleaseDue(now);
  std::lock_guard lock(mu_);
  Duration next = std::min(breaker_.TimeToProbe(), Ticker::kMaxSleep);
  if (!recovered_) return next;
  if (auto release = releases_.NextRelease(now)) next = std::min(next, *release - now);
  if (next_due_ && *next_due_ <= now) {
    next_due_.reset();  // RunPromote recomputes it from the store
    pending_.promote = true;
    ScheduleLocked();
  } else if (next_due_) {
    next = std::min(next, *next_due_ - now);
  }
  if (now >= next_purge_) {
    next_purge_ = now + options_.purge_interval;
    pending_.purge = true;
    ScheduleLocked();
  }
  return std::min(next, next_purge_ - now);
}

void ShardWorker::ReleaseDue(Time now) {
  std::lock_guard release_lock(release_mu_);
  std::vector<ItemTransition> due = releases_.TakeDue(now);
  if (due.empty()) return;
  // Not under mu_: OnReady wakes dequeues, whose claims come back to this worker.
  ReadyBatch ready_keys;
  for (const ItemTransition& t : due) {
    auto buffer = ready_keys.Buffer(index_, t.ns, t.topic);
    buffer->CountTransition(position_, ItemState::kDelayed, ItemState::kReady);
    ready_keys.Add(buffer, {t.priority, t.deliver_after, t.row});
  }
  ready_keys.Flush(position_);
  // Whatever no claim takes meanwhile, a promotion then marks READY.
  NoteDeadline(now + releases_.grace());
}

void ShardWorker::ScheduleLocked() {
  if (running_ || stopping_) return;
  running_ = true;
  io_.Post([this] { Run(); });
}

void ShardWorker::Run() {
  Work work;
  {
    std::lock_guard lock(mu_);
    std::swap(work, pending_);
    pending_enqueue_items_ = 0;
    pending_report_items_ = 0;
  }
  RunWork(work);
  std::lock_guard lock(mu_);
  running_ = false;
  // Re-post rather than loop, so that other shards' strands get a turn on the pool.
  if (!pending_.empty()) ScheduleLocked();
  if (!running_) idle_.notify_all();
}

void ShardWorker::RunWork(Work& work) {
  if (work.probe) RunProbe();
  bool up;
  {
    std::lock_guard lock(mu_);
    up = recovered_ && breaker_.AllowsTraffic();
  }
  if (!up) {
    FailAll(work, Status::Unavailable("shard " + std::to_string(id_.value()) +
                                      " is unavailable (circuit open)"));
    return;
  }
  // A failed call of an earlier turn may have committed: first make the index true.
  const bool resync_failed = resync_ && !Resync();
  TakeOwedGiveBacks(work);
  // Claims first: a waiting consumer is the most latency-sensitive caller. Then the
  // promotion of items that fell due, which are late from now on, and the claims of
  // the consumers waiting for them, before the enqueues and acks of the turn.
  const size_t max_rows = options_.max_batch;
  RunClaimRuns(work.claims);
  if (work.promote) {
    RunPromote();
    RunNewClaims();
  }
  if (!work.enqueues.empty()) {
    bool open;
    {
      std::lock_guard lock(mu_);
      open = recovered_;
    }
    if (!open) {
      // Taken while the shard was starting, and the start-up open failed: nothing was
      // written, so the engine may send them to another shard.
      for (PendingEnqueue& p : work.enqueues) {
        p.done(Status::Unavailable("shard " + std::to_string(id_.value()) +
                                   " could not be opened"),
               std::move(p.items));
      }
      work.enqueues.clear();
    }
  }
  RefuseInvalid(work);
  // The enqueues, acks, nacks and extensions: one transaction for the first max_rows
  // of each, then one for the next, and so on (group commit across kinds).
  auto reqs_of = [](auto& b) { return b.reqs.size(); };
  const auto enqueues =
      RunsOf(work.enqueues, max_rows, [](auto& e) { return e.items.size(); });
  const auto acks = RunsOf(work.acks, max_rows, reqs_of);
  const auto nacks = RunsOf(work.nacks, max_rows, reqs_of);
  const auto extends = RunsOf(work.extends, max_rows, reqs_of);
  const size_t rounds =
      std::max({enqueues.size(), acks.size(), nacks.size(), extends.size()});
  for (size_t i = 0; i < rounds; ++i) {
    RunNewClaims();
    RunWrites(RunAt(enqueues, i), RunAt(acks, i), RunAt(nacks, i), RunAt(extends, i));
  }
  // A buffer may be queued for refill several times; once is enough.
  std::sort(work.refills.begin(), work.refills.end());
  work.refills.erase(std::unique(work.refills.begin(), work.refills.end()),
                     work.refills.end());
  for (const auto& buffer : work.refills) {
    RunNewClaims();
    RunRefill(buffer);
  }
  for (StoreFn& fn : work.exclusive) {
    RunNewClaims();
    StoreTime latency;
    Exclusive done = Timed([&] { return fn(store_.get()); }, &latency);
    // Failures count, and an unknown outcome resyncs; slowness does not: a redrive
    // of 10,000 rows may well take the breaker's "slow" 2 s.
    Observe(done.status, latency, /*breaker_times=*/false);
    ReadyBatch ready_keys;
    for (const ItemTransition& t : done.transitions) ApplyTransition(t, ready_keys);
    ready_keys.Flush(position_);
    if (done.then) done.then();
  }
  RunNewClaims();
  if (work.purge) RunPurge();
  if (resync_ && !resync_failed) {
    // A call of this turn failed: resync in the next turn, without waiting for work.
    // (One that failed itself is not retried at once: it would spin while the store
    // is down; the next work or the ticker's next promotion or purge brings it.)
    std::lock_guard lock(mu_);
    pending_.resync = true;
  }
}

void ShardWorker::RefuseInvalid(Work& work) {
  std::erase_if(work.enqueues, [](PendingEnqueue& p) {
    for (const NewItem& item : p.items) {
      Status s = store::ValidateNewItem(item);
      if (s.ok()) continue;
      p.done(std::move(s), {});  // not for another shard to try either
      return true;
    }
    return false;
  });
  std::erase_if(work.nacks, [](PendingBatch<store::NackRequest>& p) {
    for (const store::NackRequest& n : p.reqs) {
      if (!n.metadata) continue;
      Status s = store::ValidateMetadata(*n.metadata);
      if (s.ok()) continue;
      p.done(std::vector<store::ItemOutcome>(p.reqs.size(), {s, std::nullopt, {}}));
      return true;
    }
    return false;
  });
}

void ShardWorker::RunClaimRuns(std::vector<PendingClaim>& claims) {
  for (auto run :
       RunsOf(claims, options_.max_batch, [](auto& c) { return c.keys.size(); })) {
    RunClaims(run);
  }
}

void ShardWorker::RunNewClaims() {
  std::vector<PendingClaim> claims;
  {
    std::lock_guard lock(mu_);
    claims.swap(pending_.claims);
  }
  RunClaimRuns(claims);
}

namespace {
prefetch::StateCounts ToStateCounts(const store::TopicCounts& c) {
  auto n = [](uint64_t v) { return static_cast<int64_t>(v); };
  return {n(c.delayed), n(c.ready), n(c.leased),   n(c.succeeded),
          n(c.failed),  n(c.dead),  n(c.cancelled)};
}
}  // namespace

void ShardWorker::ApplyStoredCounts(const std::vector<store::TopicCounts>& counts) {
  std::map<std::pair<std::string, std::string>, prefetch::StateCounts> stored;
  // Held until the counts are set: the ticker's sweep drops a buffer nobody holds
  // whose counts are all zero, as a new one's are until then.
  std::vector<std::shared_ptr<prefetch::TopicBuffer>> held;
  for (const store::TopicCounts& c : counts) {
    stored[{c.ns, c.topic}] = ToStateCounts(c);
    held.push_back(index_.GetOrCreate(c.ns, c.topic));
  }
  // MySQL is the truth: what was released counts as DELAYED again (a promotion that
  // did commit made some READY already), and the next promotion moves what is due.
  // Not while the ticker is between a release and its count.
  std::lock_guard lock(release_mu_);
  releases_.Clear();
  for (const auto& buffer : index_.All()) {
    buffer->SetCounts(position_, stored[{buffer->ns(), buffer->topic()}]);  // or 0s
  }
}

bool ShardWorker::Recover() {
  Status st = store_->Open();
  if (!st.ok()) {
    std::lock_guard lock(mu_);
    last_error_ = st.ToString();
    return false;
  }
  auto counts = store_->CountByTopic();
  if (!counts.ok()) {
    std::lock_guard lock(mu_);
    last_error_ = counts.status().ToString();
    return false;
  }
  ApplyStoredCounts(*counts);
  {
    std::lock_guard lock(mu_);
    recovered_ = true;
    last_error_.clear();
  }
  NoteDeadline(clock_.Now());  // promote whatever fell due while we were away
  spdlog::info("shard {}: open, {} topics", id_.value(), counts->size());
  return true;
}

bool ShardWorker::Resync() {
  // What may be wrong after an unknown outcome: a READY row missing from its window
  // (an insert, nack or promotion that did commit; a retried enqueue then answers
  // "deduplicated" with its id), a row in a window that is not READY any more (its
  // claim then skips it), a lease whose deadline was never noted (a claim that did
  // commit), and the counts. Without this, a complete window would never look
  // again, and nothing might promote that lease when it expires.
  StoreTime latency;
  auto counts = Timed([&] { return store_->CountByTopic(); }, &latency);
  Observe(counts.status(), latency);
  if (!counts.ok()) return false;
  resync_ = false;
  ApplyStoredCounts(*counts);
  for (const auto& buffer : index_.All()) buffer->Reset(position_);  // Take refills it
  spdlog::info("shard {}: resynced the index after a call whose outcome is unknown",
               id_.value());
  // The promotion reads the next lease or delay deadline from the store; after the
  // same pause as a failed promotion's retry, so that a store failing every call is
  // not asked twice in a row.
  NoteDeadline(clock_.Now() + kRetryAfterFailure);
  return true;
}

bool ShardWorker::Reopen() {
  Status st = store_->Open();
  if (st.ok()) st = store_->Ping();
  std::lock_guard lock(mu_);
  if (st.ok()) {
    last_error_.clear();
  } else {
    last_error_ = st.ToString();
  }
  return st.ok();
}

void ShardWorker::RunProbe() {
  bool was_recovered;
  {
    std::lock_guard lock(mu_);
    was_recovered = recovered_;
  }
  StoreTime latency;
  const bool ok = Timed([&] { return was_recovered ? Reopen() : Recover(); }, &latency);
  // Counted, not Observed: the probe's outcome goes to the breaker below.
  CountCall(!ok, latency);
  if (breaker_.state() == BreakerState::kHalfOpen) {
    breaker_.ProbeResult(ok);
  } else if (!ok) {
    // Start-up failed: open the breaker so the ticker schedules probes.
    for (size_t i = 0; i < options_.breaker.min_samples; ++i) breaker_.Record(false, {});
  }
  if (ok) {
    OnShardUp();
  } else {
    std::string why;
    {
      std::lock_guard lock(mu_);
      why = last_error_;
    }
    spdlog::warn("shard {}: probe failed: {}", id_.value(), why);
    OnShardDown();
  }
  {
    std::lock_guard lock(mu_);
    starting_ = false;
  }
  if (health_listener_) health_listener_();
}

namespace {

// The requests of all callers of a batch, in order.
template <typename Batch>
auto Requests(std::span<Batch> pending) {
  std::remove_cvref_t<decltype(pending.front().reqs)> reqs;
  for (auto& p : pending) reqs.insert(reqs.end(), p.reqs.begin(), p.reqs.end());
  return reqs;
}

}  // namespace

void ShardWorker::RunWrites(std::span<PendingEnqueue> enqueues,
                            std::span<PendingBatch<store::AckRequest>> acks,
                            std::span<PendingBatch<store::NackRequest>> nacks,
                            std::span<PendingBatch<store::ExtendRequest>> extends) {
  std::vector<NewItem> rows;
  for (PendingEnqueue& p : enqueues) {
    for (NewItem& item : p.items) rows.push_back(std::move(item));
  }
  const std::vector<store::AckRequest> ack_reqs = Requests(acks);
  std::vector<store::NackRequest> nack_reqs = Requests(nacks);
  const std::vector<store::ExtendRequest> extend_reqs = Requests(extends);
  Time now = clock_.Now();
  // The store counts a retry delay from `now`, which is rounded down, maybe to before
  // the nack came in: from the millisecond rounded up, the item is never due before
  // the nack's arrival plus its delay (queue.proto).
  const Duration part_ms = DelayFrom(clock_, now) - now;
  for (store::NackRequest& n : nack_reqs) {
    if (n.delay > Duration(0)) n.delay += part_ms;
  }
  // A nack of this Write may make an item READY at once, maybe one better than the
  // inserts, and the plan sees only what the windows hold now: then nothing is handed
  // off, and the inserts go READY with it for the waiters to claim in order.
  const bool nack_readies =
      std::any_of(nack_reqs.begin(), nack_reqs.end(), [now](const store::NackRequest& n) {
        return n.unstarted_until ? *n.unstarted_until <= now : n.delay <= Duration(0);
      });
  HandoffPlan handoffs(nack_readies ? std::span<const NewItem>() : rows, now, index_);
  StoreTime latency;
  auto written = Timed(
      [&] {
        return store_->Write({.acks = ack_reqs,
                              .nacks = nack_reqs,
                              .extends = extend_reqs,
                              .items = rows,
                              .leases = handoffs.leases()},
                             now);
      },
      &latency);
  Observe(written.status(), latency);
  if (written.status().code() == Code::kUnavailable) {
    // The handoff leases may have committed, and nobody gets them; their rows' ids
    // never came back.
    for (const auto& lease : handoffs.InsertLeases(rows)) owed_by_token_.push_back(lease);
  }
  // Update the windows before answering: a caller told that its nack succeeded must
  // find the item in a dequeue that follows.
  ReadyBatch ready_keys;
  auto ack_outs = TakeOutcomes(acks, written, &store::Written::acked, ready_keys);
  auto nack_outs = TakeOutcomes(nacks, written, &store::Written::nacked, ready_keys);
  auto extend_outs =
      TakeOutcomes(extends, written, &store::Written::extended, ready_keys);
  Count(counters_.acked, LeasesEnded(ack_outs));
  Count(counters_.nacked, LeasesEnded(nack_outs, &nack_reqs));
  Result<std::vector<store::Inserted>> ids =
      written.ok() ? Result<std::vector<store::Inserted>>(std::move(written->inserted))
                   : Result<std::vector<store::Inserted>>(written.status());
  if (ids.ok()) {
    for (size_t k = 0; k < rows.size(); ++k) {
      const NewItem& item = rows[k];
      const store::Inserted& got = (*ids)[k];
      if (got.deduplicated) continue;  // nothing new was stored
      Count(counters_.enqueued);
      if (got.leased) Count(counters_.leased);
      const ItemState state = got.leased                  ? ItemState::kLeased
                              : item.deliver_after <= now ? ItemState::kReady
                                                          : ItemState::kDelayed;
      auto buffer = ready_keys.Buffer(index_, item.ns, item.topic);
      buffer->CountTransition(position_, ItemState::kGone, state);
      if (state == ItemState::kReady) {
        ready_keys.Add(buffer, {item.priority, item.deliver_after, got.row});
      } else if (state == ItemState::kLeased) {
        NoteDeadline(now + item.lease);
      } else {
        ScheduleRelease({got.row, item.ns, item.topic, item.priority, ItemState::kGone,
                         state, item.deliver_after});
      }
    }
  }
  ready_keys.Flush(position_);
  // The waiting consumers first: theirs is the latency this saves.
  handoffs.Deliver(rows, ids, now, id_);
  size_t offset = 0;
  for (PendingEnqueue& p : enqueues) {
    size_t n = p.items.size();
    if (ids.ok()) {
      p.done(
          std::vector<store::Inserted>(ids->begin() + offset, ids->begin() + offset + n),
          {});
    } else {
      p.done(ids.status(), {});
    }
    offset += n;
  }
  for (size_t i = 0; i < acks.size(); ++i) acks[i].done(std::move(ack_outs[i]));
  for (size_t i = 0; i < nacks.size(); ++i) nacks[i].done(std::move(nack_outs[i]));
  for (size_t i = 0; i < extends.size(); ++i) extends[i].done(std::move(extend_outs[i]));
}

void ShardWorker::RunClaims(std::span<PendingClaim> pending) {
  std::vector<store::ClaimRequest> rows;
  for (const PendingClaim& c : pending) {
    // A token per item: no consumer's token fits another consumer's item.
    // A released item may be claimed a lead before its due time (due_by).
    for (const ReadyKey& k : c.keys)
      rows.push_back({k.row, c.worker_id, NewLeaseToken(), k.deliver_after});
  }
  Time now = clock_.Now();
  StoreTime latency;
  auto leased =
      Timed([&] { return store_->Claim(rows, NewLeaseToken(), now); }, &latency);
  Observe(leased.status(), latency);
  if (leased.status().code() == Code::kUnavailable) GiveBackUnanswered(rows);
  // Each claim's time from Claim() to its commit: the release lead.
  const Time done_at = clock_.Now();
  for (const PendingClaim& c : pending) claim_latency_.Add(done_at - c.arrived, done_at);
  releases_.SetLead(claim_latency_.Bound(), done_at);
  std::unordered_map<RowId, LeasedItem*> by_row;
  if (leased.ok()) {
    for (LeasedItem& item : *leased) by_row[item.row] = &item;
  }
  for (PendingClaim& c : pending) {
    std::vector<LeasedItem> out;
    for (const ReadyKey& k : c.keys) {
      c.buffer->Unreserve(position_, k.row);
      auto it = by_row.find(k.row);
      if (it != by_row.end()) {
        releases_.Forget(k.row);  // if it was leased while DELAYED (and due)
        it->second->deliver_after = k.deliver_after;
        NoteDeadline(it->second->lease_deadline);
        c.buffer->CountTransition(position_, ItemState::kReady, ItemState::kLeased);
        Count(counters_.leased);
        out.push_back(std::move(*it->second));
        // Leased once, to one caller: another key of the same row in this batch (a
        // stale one, left in a window by a claim whose outcome was unknown) gets
        // nothing, as for a row that is not READY.
        by_row.erase(it);
      } else if (!leased.ok()) {
        // Not leased because the store failed: still READY there, so put it back.
        // (If the claim did commit after all, its CAS makes the next claim skip it.)
        c.buffer->OnReady(position_, k);
      }
      // Otherwise the row was not READY any more (acked or purged): just drop it.
    }
    c.done(std::move(out));
  }
}

void ShardWorker::GiveBackUnanswered(std::span<const store::ClaimRequest> rows) {
  // due_by is the item's own due time: its place in the order.
  for (const store::ClaimRequest& r : rows) OweGiveBack(r.row, r.token, r.due_by);
}

void ShardWorker::OweGiveBack(RowId row, LeaseToken token, Time due) {
  store::NackRequest n{row, token};
  n.error = "the answer of the transaction that leased it was lost";
  n.undelivered = true;
  n.unstarted_until = due;
  owed_give_backs_.push_back(std::move(n));
}

void ShardWorker::TakeOwedGiveBacks(Work& work) {
  if (resync_) return;
  if (!owed_by_token_.empty()) {
    std::vector<LeaseToken> tokens;
    for (const auto& [token, due] : owed_by_token_) tokens.push_back(token);
    StoreTime latency;
    auto found = Timed([&] { return store_->LeasedRowsOf(tokens); }, &latency);
    Observe(found.status(), latency);
    if (found.ok()) {
      // A token that fits no LEASED row: the insert did not commit, or its lease
      // ended (an outage longer than the lease: that attempt counts).
      for (const auto& [token, row] : *found) {
        for (const auto& [owed, due] : owed_by_token_) {
          if (owed == token) OweGiveBack(row, token, due);
        }
      }
      owed_by_token_.clear();
    } else if (found.status().code() != Code::kUnavailable) {
      // Not an outage: asking again would fail the same way, turn after turn.
      spdlog::warn("shard {}: {} handoff leases of a lost insert not given back: {}",
                   id_.value(), owed_by_token_.size(), found.status().ToString());
      owed_by_token_.clear();
    }  // UNAVAILABLE: asked again after the next resync
  }
  // The other give-backs go on whatever the lookup did, unless it owes a resync.
  if (owed_give_backs_.empty() || resync_) return;
  auto reqs = std::exchange(owed_give_backs_, {});
  work.nacks.push_back({reqs, [this, reqs](std::vector<store::ItemOutcome> outs) {
                          // Any other answer (done, or the lease is gone) settles it.
                          for (size_t i = 0; i < outs.size() && i < reqs.size(); ++i) {
                            if (outs[i].status.code() == Code::kUnavailable)
                              owed_give_backs_.push_back(reqs[i]);
                          }
                        }});
}

template <typename Req>
std::vector<std::vector<store::ItemOutcome>> ShardWorker::TakeOutcomes(
    std::span<PendingBatch<Req>> pending, Result<store::Written>& written,
    std::vector<store::ItemOutcome> store::Written::*part, ReadyBatch& ready_keys) {
  std::vector<std::vector<store::ItemOutcome>> outs(pending.size());
  size_t offset = 0;
  for (size_t i = 0; i < pending.size(); ++i) {
    for (size_t k = 0; k < pending[i].reqs.size(); ++k) {
      if (!written.ok()) {
        outs[i].push_back({written.status(), std::nullopt, {}});
        continue;
      }
      store::ItemOutcome& o = ((*written).*part)[offset + k];
      if (o.transition) ApplyTransition(*o.transition, ready_keys);
      if (o.status.ok() && o.new_deadline != Time{}) NoteDeadline(o.new_deadline);
      outs[i].push_back(std::move(o));
    }
    offset += pending[i].reqs.size();
  }
  return outs;
}

void ShardWorker::RunRefill(const std::shared_ptr<prefetch::TopicBuffer>& buffer) {
  StoreTime latency;
  size_t capacity = index_.window_capacity();
  auto keys =
      Timed([&] { return store_->FetchReady(buffer->ns(), buffer->topic(), capacity); },
            &latency);
  Observe(keys.status(), latency);
  if (!breaker_.AllowsTraffic()) {
    // The circuit opened during this turn (this read was slow, or an earlier step
    // failed): the windows stay unavailable until the shard is back, even if this read
    // succeeded, or dequeues would take keys whose claims the open circuit refuses.
    buffer->ShardDown(position_);
  } else if (keys.ok()) {
    buffer->ApplyRefill(position_, *keys);
    // Released items are READY here but not yet in MySQL, so not in the refill.
    std::vector<ReadyKey> released = releases_.ReleasedOf(buffer->ns(), buffer->topic());
    if (!released.empty()) buffer->OnReady(position_, released);
  } else {
    buffer->RefillFailed(position_);
  }
}

void ShardWorker::RunPromote() {
  Time now = clock_.Now();
  // Consumers parked on a topic with nothing ready get the items falling due leased
  // to them in the promotion's own transaction (handoff.h), instead of a claim after.
  std::optional<HandoffPlan> handoffs;
  store::PromoteHandoff handoff = [&](std::span<const ItemTransition> due) {
    handoffs.emplace(due, id_, index_);
    return std::vector<store::InsertLease>(handoffs->leases().begin(),
                                           handoffs->leases().end());
  };
  const store::Lookahead look = releases_.Window(now);
  StoreTime latency;
  auto promoted = Timed(
      [&] { return store_->PromoteDue(now, options_.promote_batch, handoff, look); },
      &latency);
  Observe(promoted.status(), latency);
  if (!promoted.ok()) {
    if (handoffs && promoted.status().code() == Code::kUnavailable) {
      // Its handoff leases may have committed, and nobody gets them.
      for (const auto& l : handoffs->PromotionLeases())
        OweGiveBack(l.row, l.token, l.due);
    }
    if (handoffs) handoffs->Deliver(promoted, id_);  // nothing: the calls wait on
    NoteDeadline(now + kRetryAfterFailure);          // try again soon
    return;
  }
  ReadyBatch ready_keys;
  for (const ItemTransition& t : promoted->moved) ApplyTransition(t, ready_keys);
  ready_keys.Flush(position_);
  if (handoffs) handoffs->Deliver(promoted, id_);
  releases_.Learned(look, promoted->upcoming);
  if (!promoted->upcoming.empty() && ticker_ != nullptr) ticker_->Poke();
  // <= now when more are due right now: the ticker's next tick posts the next batch.
  if (auto next = releases_.NextPromotion(look, *promoted, now)) NoteDeadline(*next);
}

void ShardWorker::RunPurge() {
  StoreTime latency;
  auto purged =
      Timed([&] { return store_->PurgeExpired(clock_.Now(), options_.promote_batch); },
            &latency);
  Observe(purged.status(), latency, /*breaker_times=*/false);  // 1,000 rows may be slow
  if (!purged.ok()) return;
  ReadyBatch none;
  for (const ItemTransition& t : *purged) ApplyTransition(t, none);
}

void ShardWorker::ApplyTransition(const ItemTransition& t, ReadyBatch& ready_keys) {
  auto buffer = ready_keys.Buffer(index_, t.ns, t.topic);
  // A released row is READY here while MySQL still said DELAYED.
  ItemState from = t.from;
  if (from == ItemState::kDelayed && releases_.Forget(t.row)) from = ItemState::kReady;
  if (from != t.to) buffer->CountTransition(position_, from, t.to);
  if (from == ItemState::kReady && t.to != ItemState::kReady) {
    buffer->OnRemoved(position_, t.row);
  }
  if (t.to == ItemState::kReady) {
    // Offered again if released: a refill since may have left it out of the window.
    ready_keys.Add(buffer, {t.priority, t.deliver_after, t.row});
  } else if (t.to == ItemState::kLeased) {
    if (from != ItemState::kLeased) Count(counters_.leased);  // a promotion's handoff
    NoteDeadline(t.deliver_after);
  } else if (t.to == ItemState::kDelayed) {
    ScheduleRelease(t);
  }
}

void ShardWorker::ScheduleRelease(const ItemTransition& t) {
  // Its release is a deadline of the ticker's too, maybe before the next promotion.
  if (releases_.MaybeAdd(t) && ticker_ != nullptr) ticker_->Poke();
  NoteDeadline(releases_.PromoteAt(t.deliver_after));
}

void ShardWorker::FailAll(Work& work, const Status& status) {
  for (auto& e : work.enqueues) e.done(status, std::move(e.items));
  for (auto& c : work.claims) {
    for (const ReadyKey& k : c.keys) c.buffer->Unreserve(position_, k.row);
    c.done({});
  }
  auto fail = [&](auto& batches) {
    for (auto& b : batches) {
      b.done(std::vector<store::ItemOutcome>(b.reqs.size(), {status, std::nullopt, {}}));
    }
  };
  fail(work.acks);
  fail(work.nacks);
  fail(work.extends);
  for (const auto& buffer : work.refills) buffer->ShardDown(position_);
  for (StoreFn& fn : work.exclusive) {
    Exclusive done = fn(nullptr);
    if (done.then) done.then();
  }
}

void ShardWorker::CountCall(bool failed, StoreTime latency) {
  if (failed) Count(counters_.store_failures);
  counters_.store_time_us.fetch_add(latency.count(), std::memory_order_relaxed);
  const size_t bucket =
      std::lower_bound(kStoreTimeBounds.begin(), kStoreTimeBounds.end(), latency) -
      kStoreTimeBounds.begin();
  Count(counters_.store_time_buckets[bucket]);
}

void ShardWorker::Observe(const Status& status, StoreTime latency, bool breaker_times) {
  // Only infrastructure failures count against the shard; a per-item refusal is an
  // answer, not a failure.
  bool failed = status.code() == Code::kUnavailable || status.code() == Code::kInternal;
  CountCall(failed, latency);
  bool was_open = !breaker_.AllowsTraffic();
  breaker_.Record(!failed, breaker_times ? std::chrono::duration_cast<Duration>(latency)
                                         : Duration(0));
  // UNAVAILABLE is the store's "outcome unknown" (store_api.h): the connection was
  // lost, maybe after the COMMIT. (A deadlock answers it too, after a rollback: then
  // the resync is only wasted work.)
  if (status.code() == Code::kUnavailable) resync_ = true;
  if (failed) {
    std::lock_guard lock(mu_);
    last_error_ = status.ToString();
  }
  if (!was_open && !breaker_.AllowsTraffic()) {
    spdlog::warn("shard {}: circuit opened ({})", id_.value(), status.ToString());
    OnShardDown();
    if (health_listener_) health_listener_();
  }
}

void ShardWorker::OnShardDown() {
  for (const auto& buffer : index_.All()) buffer->ShardDown(position_);
}

void ShardWorker::OnShardUp() {
  {
    // Windows marked unavailable want a refill; do them now on this strand's next turn.
    std::lock_guard lock(mu_);
    for (const auto& buffer : index_.All()) {
      if (buffer->ShardUp(position_)) pending_.refills.push_back(buffer);
    }
    if (!pending_.refills.empty()) ScheduleLocked();
  }
  // A promotion asked for while the shard was down was dropped (RunWork -> FailAll)
  // and next_due_ was cleared: promote whatever fell due meanwhile, as Recover() does.
  NoteDeadline(clock_.Now());
}

void ShardWorker::NoteDeadline(Time t) {
  {
    std::lock_guard lock(mu_);
    if (next_due_ && *next_due_ <= t) return;
    next_due_ = t;
  }
  // An earlier deadline than the ticker knows of: let it re-plan its sleep.
  if (ticker_ != nullptr) ticker_->Poke();
}

}  // namespace shardq::shard_worker
