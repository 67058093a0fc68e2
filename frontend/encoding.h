#pragma once
// Engine structs -> wire messages (the answers' side of the handlers).

#include "engine/engine.h"
#include "shardq/v1/queue.pb.h"

namespace shardq::frontend {

void EncodeDelivered(engine::Delivered& d, v1::DequeuedItem* out);
// The public state of a stored item (SCHEDULED vs RETRYING by its attempts).
v1::TaskState ToTaskState(ItemState state, uint32_t attempts);
// History and payload are encoded when the record carries them.
void EncodeTask(engine::ShardTask& t, v1::Task* out);

}  // namespace shardq::frontend
