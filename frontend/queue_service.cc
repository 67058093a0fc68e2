#include "frontend/queue_service.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <memory>
#include <mutex>
#include <unordered_set>

#include "frontend/call_stream.h"
#include "frontend/encoding.h"
#include "frontend/status_mapping.h"

namespace shardq::frontend {
namespace {

// Sends the valid items of a batched call to the engine, then merges the engine's
// answers with the validation errors in request order and hands them to `emit`.
template <typename Out, typename Op, typename Call, typename Emit>
void Dispatch(std::vector<Result<Op>> parsed, Call call, Emit emit) {
  std::vector<Op> valid;
  std::vector<size_t> where;
  std::vector<Out> all;
  all.reserve(parsed.size());
  for (size_t i = 0; i < parsed.size(); ++i) {
    if (parsed[i].ok()) {
      where.push_back(i);
      valid.push_back(std::move(*parsed[i]));
      all.emplace_back(Status::Internal("unanswered"));
    } else {
      all.emplace_back(parsed[i].status());
    }
  }
  if (valid.empty()) {
    emit(std::move(all));
    return;
  }
  call(std::move(valid), [all = std::move(all), where = std::move(where),
                          emit = std::move(emit)](std::vector<Out> outs) mutable {
    for (size_t k = 0; k < where.size(); ++k) all[where[k]] = std::move(outs[k]);
    emit(std::move(all));
  });
}

// Parses the raw request and runs the typed handler; a request that does not parse
// has already been answered by UnaryCall.
template <typename Req, typename Resp, typename Handler>
grpc::ServerUnaryReactor* Serve(grpc::CallbackServerContext* context,
                                const grpc::ByteBuffer* in, grpc::ByteBuffer* out,
                                Handler handler) {
  auto* call = new UnaryCall<Req, Resp>(context, in, out);
  if (call->ok()) handler(call);
  return call;
}

// The end of a call that came on a stream: sets the answer's call-level status, drops
// a partial response if the call failed, and answers.
template <typename StreamResp, typename Answer>
QueueService::Done AnswerOnStream(std::shared_ptr<StreamResp> out, Answer answer) {
  return [out = std::move(out), answer = std::move(answer)](const Status& status) {
    ToItemStatus(status, out->mutable_status());
    if (!status.ok()) out->clear_response();
    answer(std::move(*out));
  };
}

}  // namespace

// Holds a parked Dequeue's handle for a cancellation that may come before or after
// the handle exists.
class CancelSlot {
 public:
  void Set(std::shared_ptr<engine::Engine::DequeueHandle> h) {
    std::unique_lock lock(mu_);
    handle_ = std::move(h);
    if (cancelled_) {
      auto handle = handle_;
      lock.unlock();
      handle->Cancel();
    }
  }
  void Cancel() {
    std::unique_lock lock(mu_);
    cancelled_ = true;
    auto handle = handle_;
    lock.unlock();
    if (handle) handle->Cancel();
  }

 private:
  std::mutex mu_;
  bool cancelled_ = false;
  std::shared_ptr<engine::Engine::DequeueHandle> handle_;
};

#define SHARDQ_RAW_METHOD(Method, Req, Resp, Handler)                                  \
  grpc::ServerUnaryReactor* QueueService::Method(grpc::CallbackServerContext* context, \
                                                 const grpc::ByteBuffer* in,           \
                                                 grpc::ByteBuffer* out) {              \
    return Serve<v1::Req, v1::Resp>(context, in, out,                                  \
                                    [this](auto* call) { Handler(call); });            \
  }
SHARDQ_RAW_METHOD(Enqueue, EnqueueRequest, EnqueueResponse,
                  HandleBy<&QueueService::RunEnqueue>)
SHARDQ_RAW_METHOD(Dequeue, DequeueRequest, DequeueResponse, HandleDequeue)
SHARDQ_RAW_METHOD(Ack, AckRequest, AckResponse, HandleBy<&QueueService::RunAck>)
SHARDQ_RAW_METHOD(Nack, NackRequest, NackResponse, HandleBy<&QueueService::RunNack>)
SHARDQ_RAW_METHOD(ExtendLease, ExtendLeaseRequest, ExtendLeaseResponse,
                  HandleBy<&QueueService::RunExtend>)
SHARDQ_RAW_METHOD(GetActiveTopics, GetActiveTopicsRequest, GetActiveTopicsResponse,
                  HandleActiveTopics)
SHARDQ_RAW_METHOD(GetTask, GetTaskRequest, GetTaskResponse, HandleGetTask)
SHARDQ_RAW_METHOD(CancelTask, CancelTaskRequest, CancelTaskResponse, HandleCancelTask)
SHARDQ_RAW_METHOD(ListDeadLetters, ListDeadLettersRequest, ListDeadLettersResponse,
                  HandleListDead)
SHARDQ_RAW_METHOD(RedriveDeadLetters, RedriveDeadLettersRequest,
                  RedriveDeadLettersResponse, HandleRedrive)
SHARDQ_RAW_METHOD(PurgeDeadLetters, PurgeDeadLettersRequest, PurgeDeadLettersResponse,
                  HandlePurgeDead)
SHARDQ_RAW_METHOD(GetShards, GetShardsRequest, GetShardsResponse, HandleShards)
#undef SHARDQ_RAW_METHOD

void QueueService::RunEnqueue(const v1::EnqueueRequest& req, v1::EnqueueResponse* out,
                              Done done) {
  Status st = ValidateName("namespace", req.namespace_(), kMaxNamespaceLen);
  if (st.ok()) st = ValidateBatchSize(req.items_size(), limits_);
  if (!st.ok()) return done(st);
  const Time now = clock_.Now();
  const ReadTime at{.now = now, .delay_from = DelayFrom(clock_, now)};
  std::vector<Result<NewItem>> parsed;
  parsed.reserve(req.items_size());
  const NamespacePolicy& policy = engine_.policies().For(req.namespace_());
  size_t valid = 0;
  for (const v1::EnqueueItem& item : req.items()) {
    parsed.push_back(ToNewItem(req.namespace_(), item, at, limits_, policy));
    if (parsed.back().ok()) ++valid;
  }
  // The namespace's enqueue quota: the valid items past what it allows now are
  // refused, in the call's order; the others go ahead. (Asked only of a namespace
  // that has one: the policy is at hand, and the common case pays nothing more.)
  const bool metered = policy.enqueue_rate > 0;
  size_t allowed = metered ? engine_.TakeEnqueueQuota(req.namespace_(), valid) : valid;
  const size_t over_quota = valid - allowed;
  if (allowed < valid) {
    const Status over = Status::ResourceExhausted(
        fmt::format("namespace {} is over its enqueue quota of {} items a second; "
                    "retry later",
                    req.namespace_(), policy.enqueue_rate));
    for (Result<NewItem>& item : parsed) {
      if (!item.ok()) continue;
      if (allowed > 0) {
        --allowed;
      } else {
        item = over;
      }
    }
  }
  Dispatch<Result<engine::EnqueueOutcome>>(
      std::move(parsed),
      [this](std::vector<NewItem> items, auto done) {
        engine_.Enqueue(std::move(items), std::move(done));
      },
      [this, out, over_quota, metered_ns = metered ? req.namespace_() : std::string(),
       done = std::move(done)](std::vector<Result<engine::EnqueueOutcome>> results) {
        if (!metered_ns.empty()) {
          // Past the items over the quota, a RESOURCE_EXHAUSTED is the engine's (its
          // budget or the shards' buffers were full): not tried, so its quota goes
          // back.
          size_t exhausted = 0;
          for (const Result<engine::EnqueueOutcome>& r : results) {
            if (r.status().code() == Code::kResourceExhausted) ++exhausted;
          }
          engine_.RefundEnqueueQuota(metered_ns,
                                     exhausted - std::min(exhausted, over_quota));
        }
        for (const Result<engine::EnqueueOutcome>& r : results) {
          v1::EnqueueResult* result = out->add_results();
          ToItemStatus(r.status(), result->mutable_status());
          if (!r.ok()) continue;
          result->set_id(r->id.ToString());
          result->set_deduplicated(r->deduplicated);
        }
        done(Status::Ok());
      });
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* QueueService::EnqueueStream(
    grpc::CallbackServerContext* context) {
  using Stream = CallStream<v1::EnqueueStreamRequest, v1::EnqueueStreamResponse>;
  return new Stream(
      context, limits_.max_unread_stream_bytes, &streams_cut_,
      [this](const v1::EnqueueStreamRequest& req, Stream::AnswerFn answer, Stream&) {
        auto out = std::make_shared<v1::EnqueueStreamResponse>();
        RunEnqueue(req.request(), out->mutable_response(),
                   AnswerOnStream(out, std::move(answer)));
        return std::function<void()>();  // an enqueue is not cancelled once sent
      });
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* QueueService::ConsumeStream(
    grpc::CallbackServerContext* context) {
  using Stream = CallStream<v1::ConsumeStreamRequest, v1::ConsumeStreamResponse>;
  return new Stream(
      context, limits_.max_unread_stream_bytes, &streams_cut_,
      [this](const v1::ConsumeStreamRequest& req, Stream::AnswerFn answer,
             Stream& stream) {
        auto out = std::make_shared<v1::ConsumeStreamResponse>();
        QueueService::Done finish = AnswerOnStream(out, std::move(answer));
        switch (req.call_case()) {
          case v1::ConsumeStreamRequest::kDequeue: {
            auto slot = std::make_shared<CancelSlot>();
            RunDequeue(req.dequeue(), out->mutable_dequeue(), slot, std::move(finish));
            return std::function<void()>([slot] { slot->Cancel(); });
          }
          case v1::ConsumeStreamRequest::kAck:
            RunAck(req.ack(), out->mutable_ack(), std::move(finish));
            break;
          case v1::ConsumeStreamRequest::kNack:
            RunNack(req.nack(), out->mutable_nack(), std::move(finish));
            break;
          case v1::ConsumeStreamRequest::kExtendLease:
            RunExtend(req.extend_lease(), out->mutable_extend_lease(), std::move(finish));
            break;
          case v1::ConsumeStreamRequest::kCancel:
            stream.CancelCall(req.cancel().call_id());
            finish(Status::Ok());
            break;
          case v1::ConsumeStreamRequest::CALL_NOT_SET:
            finish(
                Status::InvalidArgument("the request carries no call (dequeue, ack, "
                                        "nack, extend_lease or cancel)"));
            break;
        }
        return std::function<void()>();
      },
      [this](const v1::ConsumeStreamResponse& unsent) {
        if (unsent.has_dequeue()) GiveBack(unsent.dequeue());
      });
}

void QueueService::HandleDequeue(
    UnaryCall<v1::DequeueRequest, v1::DequeueResponse>* call) {
  // A client that goes away frees its parked call at once. The slot outlives the
  // call object (which may be gone as soon as the engine answers, even inline).
  auto slot = std::make_shared<CancelSlot>();
  call->OnCancelled([slot] { slot->Cancel(); });
  call->OnUndelivered([this](const v1::DequeueResponse& unsent) { GiveBack(unsent); });
  RunDequeue(call->request(), call->response(), slot,
             [call](const Status& status) { call->Finish(status); });
}

void QueueService::RunDequeue(const v1::DequeueRequest& req, v1::DequeueResponse* out,
                              std::shared_ptr<CancelSlot> slot, Done done) {
  Status st = ValidateName("namespace", req.namespace_(), kMaxNamespaceLen);
  if (!st.ok()) return done(st);
  auto asks = ToTopicAsks(req, limits_);
  if (!asks.ok()) return done(asks.status());
  auto wait = ToWait(req, limits_);
  if (!wait.ok()) return done(wait.status());
  st = ValidateLength("worker_id", req.worker_id(), kMaxWorkerIdLen);
  if (!st.ok()) return done(st);
  // Load shedding: while max_parked_dequeues calls are parked, a call that asks to
  // wait runs as one with no wait. It takes what is ready now, and is refused if that
  // is nothing, so that its client backs off instead of asking again at once.
  // (Checked before the call: calls that arrive together may pass the cap by a few.)
  const bool shed = *wait > Duration(0) && static_cast<size_t>(engine_.ParkedCalls()) >=
                                               limits_.max_parked_dequeues;
  // The server's time goes with the leases, so a worker can tell their ends on its
  // own clock (DequeueResponse.server_time_ms).
  auto answer = [clock = &clock_, out, shed, cap = limits_.max_parked_dequeues,
                 done = std::move(done)](std::vector<engine::Delivered> items) {
    if (shed && items.empty()) {
      return done(Status::ResourceExhausted(
          fmt::format("nothing is ready, and {} dequeues are waiting for items already "
                      "(the server's limit); retry later",
                      cap)));
    }
    for (engine::Delivered& d : items) EncodeDelivered(d, out->add_items());
    out->set_server_time_ms(ToUnixMillis(clock->Now()));
    done(Status::Ok());
  };
  slot->Set(engine_.Dequeue(req.namespace_(), std::move(*asks),
                            shed ? Duration(0) : *wait, req.worker_id(),
                            std::move(answer)));
}

void QueueService::GiveBack(const v1::DequeueResponse& unsent) {
  std::vector<engine::NackOp> ops;
  for (const v1::DequeuedItem& item : unsent.items()) {
    v1::LeaseRef ref;
    ref.set_id(item.id());
    ref.set_lease_token(item.lease_token());
    Result<engine::LeaseOp> lease = ToLeaseOp(ref);
    if (!lease.ok()) continue;  // not expected: this server wrote both
    engine::NackOp op{lease->id, lease->token};
    op.error = "the answer that leased it was not delivered";
    op.undelivered = true;
    ops.push_back(std::move(op));
  }
  if (ops.empty()) return;
  leases_given_back_.fetch_add(ops.size());
  spdlog::info("{} leases given back: the answer that carried them was never sent",
               ops.size());
  // Refused ones (a shard that is down) come back when their leases run out.
  engine_.Nack(std::move(ops), [](std::vector<Status>) {});
}

namespace {
template <typename Item, typename Parse>
auto ParseBatch(const google::protobuf::RepeatedPtrField<Item>& items, Parse parse) {
  std::vector<decltype(parse(items[0]))> parsed;
  parsed.reserve(items.size());
  for (const Item& item : items) parsed.push_back(parse(item));
  RejectDuplicateIds(parsed);
  return parsed;
}

template <typename Resp>
auto EmitStatuses(Resp* out, QueueService::Done done) {
  return [out, done = std::move(done)](std::vector<Status> results) {
    for (const Status& s : results) ToItemStatus(s, out->add_results());
    done(Status::Ok());
  };
}
}  // namespace

void QueueService::RunAck(const v1::AckRequest& req, v1::AckResponse* out, Done done) {
  Status st = ValidateBatchSize(req.items_size(), limits_);
  if (!st.ok()) return done(st);
  Dispatch<Status>(
      ParseBatch(req.items(), [](const v1::AckItem& a) { return ToAckOp(a); }),
      [this](std::vector<engine::LeaseOp> ops, auto done) {
        engine_.Ack(std::move(ops), std::move(done));
      },
      EmitStatuses(out, std::move(done)));
}

void QueueService::RunNack(const v1::NackRequest& req, v1::NackResponse* out, Done done) {
  Status st = ValidateBatchSize(req.items_size(), limits_);
  if (!st.ok()) return done(st);
  Dispatch<Status>(
      ParseBatch(req.items(),
                 [this](const v1::NackItem& n) { return ToNackOp(n, limits_); }),
      [this](std::vector<engine::NackOp> ops, auto done) {
        engine_.Nack(std::move(ops), std::move(done));
      },
      EmitStatuses(out, std::move(done)));
}

void QueueService::RunExtend(const v1::ExtendLeaseRequest& req,
                             v1::ExtendLeaseResponse* out, Done done) {
  Status st = ValidateBatchSize(req.items_size(), limits_);
  if (!st.ok()) return done(st);
  Dispatch<Result<engine::ExtendOutcome>>(
      ParseBatch(req.items(),
                 [this](const v1::ExtendItem& e) { return ToExtendOp(e, limits_); }),
      [this](std::vector<engine::ExtendOp> ops, auto done) {
        engine_.Extend(std::move(ops), std::move(done));
      },
      [out, done = std::move(done)](std::vector<Result<engine::ExtendOutcome>> results) {
        for (const Result<engine::ExtendOutcome>& r : results) {
          v1::ExtendResult* result = out->add_results();
          ToItemStatus(r.status(), result->mutable_status());
          if (!r.ok()) continue;
          result->set_lease_deadline_ms(ToUnixMillis(r->deadline));
          result->set_cancel_requested(r->cancel_requested);
        }
        done(Status::Ok());
      });
}

void QueueService::HandleShards(
    UnaryCall<v1::GetShardsRequest, v1::GetShardsResponse>* call) {
  for (const shard_worker::ShardHealth& h : engine_.Health()) {
    v1::ShardInfo* out = call->response()->add_shards();
    out->set_id(h.id.value());
    out->set_open(h.open);
    out->set_starting(h.starting);
    switch (h.breaker) {
      case shard_worker::BreakerState::kClosed:
        out->set_breaker(v1::CLOSED);
        break;
      case shard_worker::BreakerState::kOpen:
        out->set_breaker(v1::OPEN);
        break;
      case shard_worker::BreakerState::kHalfOpen:
        out->set_breaker(v1::HALF_OPEN);
        break;
    }
    out->set_last_error(h.last_error);
    out->set_release_lead_ms(static_cast<uint32_t>(h.release_lead.count()));
  }
  call->Finish(Status::Ok());
}

void QueueService::HandleActiveTopics(
    UnaryCall<v1::GetActiveTopicsRequest, v1::GetActiveTopicsResponse>* call) {
  auto page = ToTopicsPage(call->request(), limits_);
  if (!page.ok()) return call->Finish(page.status());
  // One more than the page: whether another page follows.
  std::vector<engine::TopicInfo> topics =
      engine_.ActiveTopics(call->request().namespace_(), page->after, page->limit + 1);
  if (topics.size() > page->limit) {
    topics.pop_back();
    call->response()->set_next_after_topic(topics.back().topic);
  }
  for (const engine::TopicInfo& t : topics) {
    v1::TopicInfo* out = call->response()->add_topics();
    out->set_topic(t.topic);
    out->set_ready(static_cast<uint64_t>(std::max<int64_t>(0, t.counts.ready)));
    out->set_delayed(static_cast<uint64_t>(std::max<int64_t>(0, t.counts.delayed)));
    out->set_leased(static_cast<uint64_t>(std::max<int64_t>(0, t.counts.leased)));
    out->set_succeeded(static_cast<uint64_t>(std::max<int64_t>(0, t.counts.succeeded)));
    out->set_failed(static_cast<uint64_t>(std::max<int64_t>(0, t.counts.failed)));
    out->set_dead(static_cast<uint64_t>(std::max<int64_t>(0, t.counts.dead)));
    out->set_cancelled(static_cast<uint64_t>(std::max<int64_t>(0, t.counts.cancelled)));
  }
  call->Finish(Status::Ok());
}

void QueueService::HandleGetTask(
    UnaryCall<v1::GetTaskRequest, v1::GetTaskResponse>* call) {
  auto id = ToItemId(call->request().id());
  if (!id.ok()) return call->Finish(id.status());
  engine_.GetTask(*id, call->request().include_payload(),
                  [call](Result<engine::ShardTask> task) {
                    if (!task.ok()) return call->Finish(task.status());
                    EncodeTask(*task, call->response()->mutable_task());
                    call->Finish(Status::Ok());
                  });
}

void QueueService::HandleCancelTask(
    UnaryCall<v1::CancelTaskRequest, v1::CancelTaskResponse>* call) {
  auto id = ToItemId(call->request().id());
  if (!id.ok()) return call->Finish(id.status());
  engine_.CancelTask(*id, [call](Result<engine::ShardTask> task) {
    if (!task.ok()) return call->Finish(task.status());
    EncodeTask(*task, call->response()->mutable_task());
    call->Finish(Status::Ok());
  });
}

namespace {
// Namespace + topic of the dead-letter calls.
Status ValidateTopicRef(const std::string& ns, const std::string& topic) {
  SHARDQ_RETURN_IF_ERROR(ValidateName("namespace", ns, kMaxNamespaceLen));
  return ValidateName("topic", topic, kMaxTopicLen);
}

// Dead-letter ids: all well formed, none twice, at most `max`.
Result<std::vector<ItemId>> ToItemIds(
    const google::protobuf::RepeatedPtrField<std::string>& ids, size_t max) {
  if (static_cast<size_t>(ids.size()) > max) {
    return Status::InvalidArgument("at most " + std::to_string(max) + " ids per call");
  }
  std::vector<ItemId> out;
  std::unordered_set<ItemId> seen;
  for (const std::string& text : ids) {
    auto id = ToItemId(text);
    if (!id.ok()) return id.status();
    if (!seen.insert(*id).second) {
      return Status::InvalidArgument("id " + text + " appears twice in one call");
    }
    out.push_back(*id);
  }
  return out;
}

template <typename Call>
auto EmitBulk(Call* call) {
  return [call](Result<engine::BulkResult> r) {
    if (!r.ok()) return call->Finish(r.status());
    for (const Status& s : r->per_id) ToItemStatus(s, call->response()->add_results());
    if constexpr (requires { call->response()->set_redriven(0); }) {
      call->response()->set_redriven(r->count);
    } else {
      call->response()->set_purged(r->count);
    }
    call->Finish(Status::Ok());
  };
}
}  // namespace

void QueueService::HandleListDead(
    UnaryCall<v1::ListDeadLettersRequest, v1::ListDeadLettersResponse>* call) {
  const auto& req = call->request();
  Status st = ValidateTopicRef(req.namespace_(), req.topic());
  if (!st.ok()) return call->Finish(st);
  if (req.limit() < 0 || req.limit() > 1000) {
    return call->Finish(Status::InvalidArgument("limit must be in [0, 1000]"));
  }
  size_t limit = req.limit() == 0 ? 100 : static_cast<size_t>(req.limit());
  engine_.ListDead(req.namespace_(), req.topic(), limit,
                   [call](Result<std::vector<engine::ShardTask>> tasks) {
                     if (!tasks.ok()) return call->Finish(tasks.status());
                     for (engine::ShardTask& t : *tasks) {
                       EncodeTask(t, call->response()->add_tasks());
                     }
                     call->Finish(Status::Ok());
                   });
}

void QueueService::HandleRedrive(
    UnaryCall<v1::RedriveDeadLettersRequest, v1::RedriveDeadLettersResponse>* call) {
  const auto& req = call->request();
  Status st = ValidateTopicRef(req.namespace_(), req.topic());
  if (!st.ok()) return call->Finish(st);
  auto ids = ToItemIds(req.ids(), limits_.max_items_per_call);
  if (!ids.ok()) return call->Finish(ids.status());
  engine_.Redrive(req.namespace_(), req.topic(), std::move(*ids), EmitBulk(call));
}

void QueueService::HandlePurgeDead(
    UnaryCall<v1::PurgeDeadLettersRequest, v1::PurgeDeadLettersResponse>* call) {
  const auto& req = call->request();
  Status st = ValidateTopicRef(req.namespace_(), req.topic());
  if (!st.ok()) return call->Finish(st);
  auto ids = ToItemIds(req.ids(), limits_.max_items_per_call);
  if (!ids.ok()) return call->Finish(ids.status());
  engine_.PurgeDead(req.namespace_(), req.topic(), std::move(*ids), EmitBulk(call));
}

}  // namespace shardq::frontend
