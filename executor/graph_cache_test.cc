// GraphCache with a fake "graph": one capture per batch size, failures turn it off for good, errors retry.
#include "executor/graph_cache.h"

#include <gtest/gtest.h>

#include <string>

namespace bigplan::executor_internal {
namespace {

struct FakeGraph {
  int64_t batch = 0;
  int id = 0;
};

TEST(GraphCache, CapturesOncePerBatchSize) {
  GraphCache<FakeGraph> cache(true);
  int captures = 0;
  auto capture = [&](int64_t batch) -> Result<std::optional<FakeGraph>> {
    return std::optional<FakeGraph>(FakeGraph{batch, ++captures});
  };
  auto a = cache.Get(2, capture);
  ASSERT_TRUE(a.ok());
  ASSERT_NE(a->graph, nullptr);
  EXPECT_TRUE(a->captured);
  EXPECT_EQ(a->graph->batch, 2);
  auto b = cache.Get(2, capture);
  ASSERT_TRUE(b.ok());
  EXPECT_FALSE(b->captured);
  EXPECT_EQ(b->graph, a->graph);  // the same graph, not a copy
  auto c = cache.Get(5, capture);
  ASSERT_TRUE(c.ok());
  EXPECT_TRUE(c->captured);
  EXPECT_EQ(c->graph->batch, 5);
  EXPECT_EQ(captures, 2);
  EXPECT_EQ(cache.size(), 2u);
  // Pointers stay valid as more graphs are added.
  for (int64_t batch = 6; batch < 40; ++batch) ASSERT_TRUE(cache.Get(batch, capture).ok());
  EXPECT_EQ(a->graph->batch, 2);
  EXPECT_EQ(a->graph->id, 1);
  EXPECT_EQ(cache.Get(5, capture)->graph->id, 2);
}

TEST(GraphCache, AFailedCaptureTurnsGraphsOffForGood) {
  GraphCache<FakeGraph> cache(true);
  int captures = 0;
  auto capture = [&](int64_t batch) -> Result<std::optional<FakeGraph>> {
    ++captures;
    if (batch == 3) return std::optional<FakeGraph>();
    return std::optional<FakeGraph>(FakeGraph{batch, captures});
  };
  ASSERT_NE(cache.Get(1, capture)->graph, nullptr);
  auto failed = cache.Get(3, capture);
  ASSERT_TRUE(failed.ok());
  EXPECT_EQ(failed->graph, nullptr);
  EXPECT_FALSE(cache.enabled());
  EXPECT_EQ(cache.size(), 0u);  // earlier graphs are dropped too
  // Off: no lookups, no captures, even for a batch size captured before.
  auto later = cache.Get(1, capture);
  ASSERT_TRUE(later.ok());
  EXPECT_EQ(later->graph, nullptr);
  EXPECT_EQ(captures, 2);
}

TEST(GraphCache, ErrorsAreReturnedAndRetried) {
  GraphCache<FakeGraph> cache(true);
  int calls = 0;
  auto capture = [&](int64_t batch) -> Result<std::optional<FakeGraph>> {
    if (++calls == 1) return MakeError(ErrorCode::kDevice, "decode step: out of memory");
    return std::optional<FakeGraph>(FakeGraph{batch, calls});
  };
  auto first = cache.Get(4, capture);
  ASSERT_FALSE(first.ok());
  EXPECT_EQ(first.error().code, ErrorCode::kDevice);
  EXPECT_TRUE(cache.enabled());
  EXPECT_EQ(cache.size(), 0u);
  auto second = cache.Get(4, capture);
  ASSERT_TRUE(second.ok());
  EXPECT_TRUE(second->captured);
  EXPECT_EQ(calls, 2);
}

TEST(GraphCache, DisabledFromTheStart) {
  GraphCache<FakeGraph> cache(false);
  bool called = false;
  auto capture = [&](int64_t batch) -> Result<std::optional<FakeGraph>> {
    called = true;
    return std::optional<FakeGraph>(FakeGraph{batch, 1});
  };
  auto r = cache.Get(1, capture);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->graph, nullptr);
  EXPECT_FALSE(called);
}

// Prefill graphs: buckets, capture on a shape's second eager pass, least recently used out, off for good.
TEST(PrefillGraphCache, BucketsRoundUpWithinTheCache) {
  PrefillGraphCache<FakeGraph> cache(true, 4, 64);
  EXPECT_EQ(cache.Bucket(1, 4096), 64);
  EXPECT_EQ(cache.Bucket(64, 4096), 64);
  EXPECT_EQ(cache.Bucket(65, 4096), 128);
  EXPECT_EQ(cache.Bucket(500, 4096), 512);
  EXPECT_EQ(cache.Bucket(500, 510), 510);  // never past the cache
  EXPECT_EQ(cache.Bucket(510, 510), 510);
  EXPECT_EQ(cache.Bucket(7, 5), 7);        // never below the prompt (the caller refuses it elsewhere)
}

TEST(PrefillGraphCache, CapturesOnTheSecondPassAndKeepsTheMostRecent) {
  PrefillGraphCache<FakeGraph> cache(true, 2, 64);
  EXPECT_EQ(cache.Find(1, 512), nullptr);
  EXPECT_FALSE(cache.CountEager(1, 512));
  EXPECT_TRUE(cache.CountEager(1, 512));  // the second pass: capture now
  FakeGraph* a = cache.Put(1, 512, FakeGraph{1, 1});
  EXPECT_EQ(cache.Find(1, 512), a);
  EXPECT_EQ(cache.Find(2, 512), nullptr);  // rows are part of the shape
  EXPECT_FALSE(cache.CountEager(1, 128));
  EXPECT_TRUE(cache.CountEager(1, 128));
  cache.Put(1, 128, FakeGraph{1, 2});
  EXPECT_NE(cache.Find(1, 512), nullptr);  // (1, 512) is now the most recently used
  cache.Put(8, 512, FakeGraph{8, 3});      // over capacity: (1, 128) goes
  EXPECT_EQ(cache.size(), 2u);
  EXPECT_EQ(cache.Find(1, 128), nullptr);
  ASSERT_NE(cache.Find(1, 512), nullptr);
  EXPECT_EQ(cache.Find(1, 512)->id, 1);
  EXPECT_EQ(cache.Find(8, 512)->id, 3);
}

TEST(PrefillGraphCache, OffForGoodOrWithoutCapacity) {
  PrefillGraphCache<FakeGraph> cache(true, 4, 64);
  EXPECT_FALSE(cache.CountEager(1, 64));
  cache.Put(1, 64, FakeGraph{1, 1});
  cache.Disable();
  EXPECT_FALSE(cache.enabled());
  EXPECT_EQ(cache.size(), 0u);
  EXPECT_FALSE(cache.CountEager(1, 64));
  EXPECT_FALSE(cache.CountEager(1, 64));
  EXPECT_FALSE(PrefillGraphCache<FakeGraph>(true, 0, 64).enabled());
  EXPECT_FALSE(PrefillGraphCache<FakeGraph>(false, 4, 64).enabled());
}

}  // namespace
}  // namespace bigplan::executor_internal
