// HandoffPlan for a promotion: what it offers to whom, and that every waiter that took
// an offer hears back exactly once -- with its items, or with none when the promotion
// failed after asking (the memory store fails before it asks, so the engine tests
// cannot reach that path).

#include "shard_worker/handoff.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "prefetch/prefetch_index.h"

namespace shardq::shard_worker {
namespace {

// Takes up to `take` items per offer and records what it is handed.
class RecordingWaiter final : public prefetch::Waiter {
 public:
  RecordingWaiter(std::string name, size_t take) : name_(std::move(name)), take_(take) {}
  void Wake(const prefetch::TopicBuffer&) override {}
  size_t OfferHandoff(const prefetch::TopicBuffer&, size_t max,
                      std::string* worker_id) override {
    *worker_id = name_;
    return std::min(max, take_);
  }
  void Handed(const prefetch::TopicBuffer&, ShardId shard,
              std::vector<LeasedItem> items) override {
    ++handed;
    from = shard;
    got = std::move(items);
  }

  int handed = 0;
  ShardId from;
  std::vector<LeasedItem> got;

 private:
  std::string name_;
  size_t take_;
};

ItemTransition Due(uint64_t row, int32_t priority) {
  return ItemTransition{RowId(row),        "ns",  "t", priority, ItemState::kDelayed,
                        ItemState::kReady, Time{}};
}

class PromotionHandoffTest : public ::testing::Test {
 protected:
  void SetUp() override {
    buffer_ = index_.GetOrCreate("ns", "t");
    buffer_->ApplyRefill(0, {});  // loaded and empty: waiters are idle
    buffer_->AddWaiter(first_);
    buffer_->AddWaiter(second_);
  }

  prefetch::PrefetchIndex index_{1, 64};
  std::shared_ptr<prefetch::TopicBuffer> buffer_;
  std::shared_ptr<RecordingWaiter> first_ = std::make_shared<RecordingWaiter>("a", 1);
  std::shared_ptr<RecordingWaiter> second_ = std::make_shared<RecordingWaiter>("b", 1);
  const std::vector<ItemTransition> due_{Due(11, 5), Due(12, 1), Due(13, 3)};
};

TEST_F(PromotionHandoffTest, OffersTheBestItemsToTheWaitersInTheOrderTheyCame) {
  HandoffPlan plan(due_, ShardId(2), index_);
  auto leases = plan.leases();
  ASSERT_EQ(leases.size(), 2u);
  EXPECT_EQ(due_[leases[0].item].row, RowId(12));  // priority 1, to the first waiter
  EXPECT_EQ(leases[0].worker_id, "a");
  EXPECT_EQ(due_[leases[1].item].row, RowId(13));
  EXPECT_EQ(leases[1].worker_id, "b");
  EXPECT_NE(leases[0].token, leases[1].token);

  // The store leased 12 but not 13 (its TTL had passed): the second waiter still
  // hears back, with nothing.
  Result<store::Promotion> promoted = store::Promotion{};
  LeasedItem item;
  item.row = RowId(12);
  item.token = leases[0].token;
  promoted->leased.push_back(item);
  plan.Deliver(promoted, ShardId(2));
  EXPECT_EQ(first_->handed, 1);
  ASSERT_EQ(first_->got.size(), 1u);
  EXPECT_EQ(first_->got[0].row, RowId(12));
  EXPECT_EQ(first_->from, ShardId(2));
  EXPECT_EQ(second_->handed, 1);
  EXPECT_TRUE(second_->got.empty());
}

TEST_F(PromotionHandoffTest, AFailedPromotionAnswersEveryOfferWithNothing) {
  HandoffPlan plan(due_, ShardId(2), index_);
  ASSERT_EQ(plan.leases().size(), 2u);
  Result<store::Promotion> failed = Status::Unavailable("connection lost");
  plan.Deliver(failed, ShardId(2));
  EXPECT_EQ(first_->handed, 1);
  EXPECT_TRUE(first_->got.empty());
  EXPECT_EQ(second_->handed, 1);
  EXPECT_TRUE(second_->got.empty());
}

TEST_F(PromotionHandoffTest, NothingIsOfferedWhileAnItemIsReady) {
  buffer_->OnReady(0, ReadyKey{0, Time{}, RowId(99)});  // a READY item goes first
  buffer_->AddWaiter(first_);  // the wake-up dropped them; they park again
  buffer_->AddWaiter(second_);
  HandoffPlan plan(due_, ShardId(2), index_);
  EXPECT_TRUE(plan.leases().empty());
  Result<store::Promotion> promoted = store::Promotion{};
  plan.Deliver(promoted, ShardId(2));
  EXPECT_EQ(first_->handed, 0);
  EXPECT_EQ(second_->handed, 0);
}

}  // namespace
}  // namespace shardq::shard_worker
