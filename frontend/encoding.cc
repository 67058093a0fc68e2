#include "frontend/encoding.h"

#include "frontend/validation.h"

namespace shardq::frontend {
namespace {
int64_t MillisOrZero(Time t) { return t == Time{} ? 0 : ToUnixMillis(t); }
}  // namespace

void EncodeDelivered(engine::Delivered& d, v1::DequeuedItem* out) {
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
  out->set_task_type(std::move(item.task_type));
  out->set_max_attempts(item.max_attempts);
}

v1::TaskState ToTaskState(ItemState state, uint32_t attempts) {
  switch (state) {
    case ItemState::kDelayed:
      return attempts == 0 ? v1::SCHEDULED : v1::RETRYING;
    case ItemState::kReady:
      return v1::READY;
    case ItemState::kLeased:
      return v1::RUNNING;
    case ItemState::kSucceeded:
      return v1::SUCCEEDED;
    case ItemState::kFailed:
      return v1::FAILED;
    case ItemState::kDead:
      return v1::DEAD_LETTERED;
    case ItemState::kCancelled:
      return v1::CANCELLED;
    case ItemState::kGone:
      break;
  }
  return v1::TASK_STATE_UNSPECIFIED;
}

void EncodeTask(engine::ShardTask& st, v1::Task* out) {
  store::TaskRecord& t = st.task;
  out->set_id(st.id().ToString());
  out->set_namespace_(std::move(t.ns));
  out->set_topic(std::move(t.topic));
  out->set_task_type(std::move(t.task_type));
  out->set_priority(t.priority);
  out->set_state(ToTaskState(t.state, t.attempts));
  out->set_attempts(t.attempts);
  out->set_max_attempts(t.max_attempts);
  out->set_enqueued_at_ms(MillisOrZero(t.enqueued_at));
  out->set_first_delivered_at_ms(MillisOrZero(t.first_delivered_at));
  out->set_last_delivered_at_ms(MillisOrZero(t.last_delivered_at));
  out->set_finished_at_ms(MillisOrZero(t.finished_at));
  out->set_next_at_ms(MillisOrZero(t.deliver_after));
  out->set_worker_id(std::move(t.worker_id));
  out->set_last_error(std::move(t.last_error));
  out->set_result(std::move(t.result));
  DecodeMetadata(t.metadata, out->mutable_metadata());
  out->set_cancel_requested(t.cancel_requested);
  out->set_payload(std::move(t.payload));
  for (store::TaskEvent& e : t.history) {
    v1::TaskEvent* ev = out->add_history();
    ev->set_at_ms(ToUnixMillis(e.at));
    ev->set_kind(std::move(e.kind));
    ev->set_attempt(e.attempt);
    ev->set_worker_id(std::move(e.worker_id));
    ev->set_detail(std::move(e.detail));
  }
}

}  // namespace shardq::frontend
