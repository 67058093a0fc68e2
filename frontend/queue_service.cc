#include "frontend/queue_service.h"

#include <memory>
#include <mutex>

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

grpc::ServerUnaryReactor* FinishNow(grpc::CallbackServerContext* ctx, const Status& status) {
  auto* reactor = ctx->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

// A Dequeue that may park: its reactor tells the engine when the client goes away.
class DequeueReactor final : public grpc::ServerUnaryReactor {
 public:
  void Start(engine::Engine& engine, std::string ns, std::vector<engine::TopicAsk> asks,
             Duration wait, v1::DequeueResponse* resp) {
    auto handle = engine.Dequeue(std::move(ns), std::move(asks), wait,
                                 [this, resp](std::vector<engine::Delivered> items) {
                                   for (engine::Delivered& d : items) Encode(d, resp->add_items());
                                   Finish(grpc::Status::OK);
                                 });
    std::lock_guard lock(mu_);
    handle_ = std::move(handle);
  }
  void OnCancel() override {
    std::shared_ptr<engine::Engine::DequeueHandle> handle;
    {
      std::lock_guard lock(mu_);
      handle = handle_;
    }
    if (handle) handle->Cancel();
  }
  void OnDone() override { delete this; }

 private:
  static void Encode(engine::Delivered& d, v1::DequeuedItem* out) {
    LeasedItem& item = d.item;
    out->set_id(d.id().ToString());
    out->set_topic(std::move(item.topic));
    out->set_priority(item.priority);
    out->set_payload(std::move(item.payload));
    DecodeMetadata(item.metadata, out->mutable_metadata());
    out->set_lease_token(EncodeLeaseToken(item.token));
    out->set_lease_deadline_ms(ToUnixMillis(item.lease_deadline));
    out->set_attempts(item.attempts);
    out->set_enqueued_at_ms(ToUnixMillis(item.enqueued_at));
    out->set_deliver_after_ms(ToUnixMillis(item.deliver_after));
  }

  std::mutex mu_;
  std::shared_ptr<engine::Engine::DequeueHandle> handle_;
};

}  // namespace

grpc::ServerUnaryReactor* QueueService::Enqueue(grpc::CallbackServerContext* ctx,
                                                const v1::EnqueueRequest* req,
                                                v1::EnqueueResponse* resp) {
  Status st = ValidateName("namespace", req->namespace_(), kMaxNamespaceLen);
  if (st.ok()) st = ValidateBatchSize(req->items_size(), limits_);
  if (!st.ok()) return FinishNow(ctx, st);
  Time now = clock_.Now();
  std::vector<Result<NewItem>> parsed;
  parsed.reserve(req->items_size());
  for (const v1::EnqueueItem& item : req->items()) {
    parsed.push_back(ToNewItem(req->namespace_(), item, now, limits_));
  }
  auto* reactor = ctx->DefaultReactor();
  Dispatch<Result<ItemId>>(
      std::move(parsed),
      [this](std::vector<NewItem> items, auto done) {
        engine_.Enqueue(std::move(items), std::move(done));
      },
      [reactor, resp](std::vector<Result<ItemId>> results) {
        for (const Result<ItemId>& r : results) {
          v1::EnqueueResult* out = resp->add_results();
          ToItemStatus(r.status(), out->mutable_status());
          if (r.ok()) out->set_id(r->ToString());
        }
        reactor->Finish(grpc::Status::OK);
      });
  return reactor;
}

grpc::ServerUnaryReactor* QueueService::Dequeue(grpc::CallbackServerContext* ctx,
                                                const v1::DequeueRequest* req,
                                                v1::DequeueResponse* resp) {
  Status st = ValidateName("namespace", req->namespace_(), kMaxNamespaceLen);
  if (!st.ok()) return FinishNow(ctx, st);
  auto asks = ToTopicAsks(*req, limits_);
  if (!asks.ok()) return FinishNow(ctx, asks.status());
  auto wait = ToWait(*req, limits_);
  if (!wait.ok()) return FinishNow(ctx, wait.status());
  auto* reactor = new DequeueReactor();
  reactor->Start(engine_, req->namespace_(), std::move(*asks), *wait, resp);
  return reactor;
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
auto EmitStatuses(grpc::ServerUnaryReactor* reactor, Resp* resp) {
  return [reactor, resp](std::vector<Status> results) {
    for (const Status& s : results) ToItemStatus(s, resp->add_results());
    reactor->Finish(grpc::Status::OK);
  };
}
}  // namespace

grpc::ServerUnaryReactor* QueueService::Ack(grpc::CallbackServerContext* ctx,
                                            const v1::AckRequest* req, v1::AckResponse* resp) {
  Status st = ValidateBatchSize(req->items_size(), limits_);
  if (!st.ok()) return FinishNow(ctx, st);
  auto* reactor = ctx->DefaultReactor();
  Dispatch<Status>(
      ParseBatch(req->items(), [](const v1::LeaseRef& r) { return ToLeaseOp(r); }),
      [this](std::vector<engine::LeaseOp> ops, auto done) {
        engine_.Ack(std::move(ops), std::move(done));
      },
      EmitStatuses(reactor, resp));
  return reactor;
}

grpc::ServerUnaryReactor* QueueService::Nack(grpc::CallbackServerContext* ctx,
                                             const v1::NackRequest* req,
                                             v1::NackResponse* resp) {
  Status st = ValidateBatchSize(req->items_size(), limits_);
  if (!st.ok()) return FinishNow(ctx, st);
  auto* reactor = ctx->DefaultReactor();
  Dispatch<Status>(
      ParseBatch(req->items(),
                 [this](const v1::NackItem& n) { return ToNackOp(n, limits_); }),
      [this](std::vector<engine::NackOp> ops, auto done) {
        engine_.Nack(std::move(ops), std::move(done));
      },
      EmitStatuses(reactor, resp));
  return reactor;
}

grpc::ServerUnaryReactor* QueueService::ExtendLease(grpc::CallbackServerContext* ctx,
                                                    const v1::ExtendLeaseRequest* req,
                                                    v1::ExtendLeaseResponse* resp) {
  Status st = ValidateBatchSize(req->items_size(), limits_);
  if (!st.ok()) return FinishNow(ctx, st);
  auto* reactor = ctx->DefaultReactor();
  Dispatch<Result<Time>>(
      ParseBatch(req->items(),
                 [this](const v1::ExtendItem& e) { return ToExtendOp(e, limits_); }),
      [this](std::vector<engine::ExtendOp> ops, auto done) {
        engine_.Extend(std::move(ops), std::move(done));
      },
      [reactor, resp](std::vector<Result<Time>> results) {
        for (const Result<Time>& r : results) {
          v1::ExtendResult* out = resp->add_results();
          ToItemStatus(r.status(), out->mutable_status());
          if (r.ok()) out->set_lease_deadline_ms(ToUnixMillis(*r));
        }
        reactor->Finish(grpc::Status::OK);
      });
  return reactor;
}

grpc::ServerUnaryReactor* QueueService::GetActiveTopics(grpc::CallbackServerContext* ctx,
                                                        const v1::GetActiveTopicsRequest* req,
                                                        v1::GetActiveTopicsResponse* resp) {
  Status st = ValidateName("namespace", req->namespace_(), kMaxNamespaceLen);
  if (!st.ok()) return FinishNow(ctx, st);
  for (const engine::TopicInfo& t : engine_.ActiveTopics(req->namespace_())) {
    v1::TopicInfo* out = resp->add_topics();
    out->set_topic(t.topic);
    out->set_ready(static_cast<uint64_t>(std::max<int64_t>(0, t.counts.ready)));
    out->set_delayed(static_cast<uint64_t>(std::max<int64_t>(0, t.counts.delayed)));
    out->set_leased(static_cast<uint64_t>(std::max<int64_t>(0, t.counts.leased)));
  }
  return FinishNow(ctx, Status::Ok());
}

}  // namespace shardq::frontend
