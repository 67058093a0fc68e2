// Per-namespace enqueue quotas: token buckets on an injected clock.

#include "engine/enqueue_quotas.h"

#include <gtest/gtest.h>

#include <string>

namespace shardq::engine {
namespace {

NamespacePolicy Quota(uint64_t rate, uint64_t burst = 0) {
  NamespacePolicy p;
  p.enqueue_rate = rate;
  p.enqueue_burst = burst;
  return p;
}

TEST(EnqueueQuotasTest, ABurstIsTakenAtOnceThenTheRateRefillsIt) {
  FakeClock clock;
  const NamespacePolicies policies({}, {{"metered", Quota(10, 5)}});
  EnqueueQuotas quotas(policies, clock);
  EXPECT_EQ(quotas.Take("metered", 3), 3u);
  EXPECT_EQ(quotas.Take("metered", 3), 2u) << "the burst is 5";
  EXPECT_EQ(quotas.Take("metered", 1), 0u);
  clock.Advance(Duration(99));  // 0.99 of an item
  EXPECT_EQ(quotas.Take("metered", 1), 0u);
  clock.Advance(Duration(1));
  EXPECT_EQ(quotas.Take("metered", 5), 1u) << "10 a second: one per 100 ms";
  clock.Advance(Duration(60'000));
  EXPECT_EQ(quotas.Take("metered", 100), 5u) << "a long pause refills only the burst";
}

TEST(EnqueueQuotasTest, NamespacesWithoutAQuotaTakeEverythingAndKeepNoBucket) {
  FakeClock clock;
  const NamespacePolicies policies({}, {{"metered", Quota(1)}});
  EnqueueQuotas quotas(policies, clock);
  EXPECT_EQ(quotas.Take("free", 1'000'000), 1'000'000u);
  EXPECT_EQ(quotas.buckets(), 0u);
  EXPECT_EQ(quotas.Take("metered", 2), 1u) << "burst 0 = a second's worth";
  EXPECT_EQ(quotas.Take("free", 7), 7u);
}

TEST(EnqueueQuotasTest, TheDefaultQuotaAppliesToEachNamespaceOnItsOwn) {
  FakeClock clock;
  const NamespacePolicies policies(Quota(2), {{"vip", Quota(0)}});
  EnqueueQuotas quotas(policies, clock);
  EXPECT_EQ(quotas.Take("a", 5), 2u);
  EXPECT_EQ(quotas.Take("b", 5), 2u) << "a's use does not count against b";
  EXPECT_EQ(quotas.Take("vip", 5), 5u) << "a namespace may lift the default";
}

TEST(EnqueueQuotasTest, AClockThatStepsBackAddsNothing) {
  FakeClock clock;
  const NamespacePolicies policies({}, {{"metered", Quota(1000, 1)}});
  EnqueueQuotas quotas(policies, clock);
  EXPECT_EQ(quotas.Take("metered", 1), 1u);
  clock.Advance(Duration(-10'000));  // a wall clock stepped back
  EXPECT_EQ(quotas.Take("metered", 1), 0u);
  clock.Advance(Duration(1));  // a millisecond after the step: one item's refill
  EXPECT_EQ(quotas.Take("metered", 1), 1u);
}

TEST(EnqueueQuotasTest, ARefundGoesBackUpToTheBurst) {
  FakeClock clock;
  const NamespacePolicies policies({}, {{"metered", Quota(10, 5)}});
  EnqueueQuotas quotas(policies, clock);
  EXPECT_EQ(quotas.Take("metered", 5), 5u);
  quotas.Refund("metered", 2);  // two of them were refused without being tried
  EXPECT_EQ(quotas.Take("metered", 5), 2u);
  quotas.Refund("metered", 100);
  EXPECT_EQ(quotas.Take("metered", 100), 5u) << "never past the burst";
  quotas.Refund("free", 3);  // no quota: nothing to give back, no bucket made
  EXPECT_EQ(quotas.buckets(), 1u);
}

TEST(EnqueueQuotasTest, FullBucketsAreSweptSoMadeUpNamespacesCannotGrowTheMap) {
  FakeClock clock;
  const NamespacePolicies policies(Quota(1000), {});
  EnqueueQuotas quotas(policies, clock);
  for (size_t i = 0; i < EnqueueQuotas::kSweepAbove; ++i) {
    ASSERT_EQ(quotas.Take("ns" + std::to_string(i), 1), 1u);
  }
  EXPECT_EQ(quotas.buckets(), EnqueueQuotas::kSweepAbove);
  clock.Advance(Duration(1000));  // every bucket is full again
  EXPECT_EQ(quotas.Take("one-more", 1000), 1000u);
  EXPECT_EQ(quotas.buckets(), 1u) << "only the bucket just emptied is kept";
  EXPECT_EQ(quotas.Take("one-more", 1), 0u) << "and it still counts";
}

}  // namespace
}  // namespace shardq::engine
