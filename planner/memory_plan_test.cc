#include "planner/memory_plan.h"

#include <gtest/gtest.h>

namespace bigplan {
namespace {

BufferRequest Buf(const std::string& name, uint64_t size, uint32_t first, uint32_t last, int32_t device = 0,
                  uint64_t alignment = 256) {
  BufferRequest b;
  b.name = name;
  b.size = size;
  b.first_step = first;
  b.last_step = last;
  b.alignment = alignment;
  b.pool = PoolKey{schema::Pool::DeviceArena, device};
  return b;
}

std::vector<uint64_t> Offsets(const std::vector<BufferRequest>& buffers, const std::string& algorithm) {
  auto plan = PlanMemory(buffers, algorithm);
  EXPECT_TRUE(plan.ok()) << plan.error().ToString();
  return plan->offsets;
}

// A: 1024 [0,1], B: 512 [1,2], C: 512 [2,3], D: 256 [0,3].
// Greedy order A, B, C, D. A -> 0. B lives with A -> above it, 1024. C lives with B only -> the gap below B, 0.
// D lives with everyone: C [0,512), A [0,1024), B [1024,1536) leave no gap -> 1536.
TEST(MemoryPlanTest, GreedyReusesDeadBuffers) {
  std::vector<BufferRequest> bufs{Buf("A", 1024, 0, 1), Buf("B", 512, 1, 2), Buf("C", 512, 2, 3),
                                  Buf("D", 256, 0, 3)};
  auto plan = PlanMemory(bufs, "greedy_by_size");
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->offsets, (std::vector<uint64_t>{0, 1024, 0, 1536}));
  ASSERT_EQ(plan->arenas.size(), 1u);
  EXPECT_EQ(plan->arenas[0].size, 1792u);
}

TEST(MemoryPlanTest, LinearNeverReuses) {
  std::vector<BufferRequest> bufs{Buf("A", 1024, 0, 1), Buf("B", 512, 1, 2), Buf("C", 512, 2, 3),
                                  Buf("D", 256, 0, 3)};
  auto plan = PlanMemory(bufs, "linear");
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->offsets, (std::vector<uint64_t>{0, 1024, 1536, 2048}));
  EXPECT_EQ(plan->arenas[0].size, 2304u);
}

// Best fit, not first fit. After a..d are placed, step 1 has gaps [0,1024) (c is not alive) and [1536,2048);
// e (256 bytes, step 1 only) goes into the smaller one.
//   a 2048 [0,0] -> 0;  b 1024 [0,2] -> 2048 (above a);  c 1024 [2,2] -> 0 (below b);
//   d 512 [1,2] -> 1024 (between c and b);  e 256 [1,1] -> 1536.
TEST(MemoryPlanTest, GreedyPicksTheSmallestGap) {
  std::vector<BufferRequest> bufs{Buf("a", 2048, 0, 0), Buf("b", 1024, 0, 2), Buf("c", 1024, 2, 2),
                                  Buf("d", 512, 1, 2), Buf("e", 256, 1, 1)};
  auto plan = PlanMemory(bufs, "greedy_by_size");
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->offsets, (std::vector<uint64_t>{0, 2048, 0, 1024, 1536}));
  EXPECT_EQ(plan->arenas[0].size, 3072u);
  EXPECT_EQ(Offsets(bufs, "linear"), (std::vector<uint64_t>{0, 2048, 3072, 4096, 4608}));
}

// Ties in size go by first_step, then input order; odd sizes are padded by alignment.
TEST(MemoryPlanTest, GreedyAlignsAndBreaksTiesByFirstStep) {
  std::vector<BufferRequest> bufs{Buf("late", 100, 1, 1), Buf("early", 100, 0, 1), Buf("big", 300, 0, 0, 0, 512)};
  auto plan = PlanMemory(bufs, "greedy_by_size");
  ASSERT_TRUE(plan.ok());
  // big -> 0; early lives with big -> 512 (300 rounded up to its own 256 alignment is 512);
  // late lives with early only -> gap [0, 512) below it -> 0.
  EXPECT_EQ(plan->offsets, (std::vector<uint64_t>{0, 512, 0}));
  EXPECT_EQ(plan->arenas[0].size, 768u);
  // Linear: 0, 256 (after 100), 512 (after 356, aligned to 512).
  EXPECT_EQ(Offsets(bufs, "linear"), (std::vector<uint64_t>{0, 256, 512}));
}

TEST(MemoryPlanTest, PoolsAreIndependent) {
  std::vector<BufferRequest> bufs{Buf("g0", 1024, 0, 3, 0), Buf("g1", 1024, 0, 3, 1), Buf("g0b", 512, 0, 3, 0)};
  BufferRequest pinned = Buf("p", 4096, 0, 3);
  pinned.pool = PoolKey{schema::Pool::PinnedHost, -1};
  bufs.push_back(pinned);
  auto plan = PlanMemory(bufs, "greedy_by_size");
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->offsets, (std::vector<uint64_t>{0, 0, 1024, 0}));
  EXPECT_EQ(plan->ArenaSizeOf({schema::Pool::DeviceArena, 0}), 1536u);
  EXPECT_EQ(plan->ArenaSizeOf({schema::Pool::DeviceArena, 1}), 1024u);
  EXPECT_EQ(plan->ArenaSizeOf({schema::Pool::PinnedHost, -1}), 4096u);
  EXPECT_EQ(plan->ArenaSizeOf({schema::Pool::DeviceArena, 7}), 0u);
  EXPECT_EQ(PoolName({schema::Pool::DeviceArena, 1}), "cuda:1");
  EXPECT_EQ(PoolName({schema::Pool::DeviceArena, -1}), "cpu");
  EXPECT_EQ(PoolName({schema::Pool::PinnedHost, -1}), "pinned");
}

TEST(MemoryPlanTest, ZeroSizeBuffersAreHarmless) {
  std::vector<BufferRequest> bufs{Buf("z", 0, 0, 1), Buf("a", 512, 0, 1), Buf("z2", 0, 0, 1)};
  auto plan = PlanMemory(bufs, "greedy_by_size");
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->offsets[1], 0u);
  EXPECT_EQ(plan->arenas[0].size, 512u);
}

TEST(MemoryPlanTest, EmptyInput) {
  auto plan = PlanMemory({}, "greedy_by_size");
  ASSERT_TRUE(plan.ok());
  EXPECT_TRUE(plan->offsets.empty());
  EXPECT_TRUE(plan->arenas.empty());
}

TEST(MemoryPlanTest, RejectsUnknownAlgorithmAndBadInput) {
  auto r = PlanMemory({Buf("a", 1, 0, 0)}, "best_effort");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(r.error().message.find("greedy_by_size"), std::string::npos) << r.error().message;
  r = PlanMemory({Buf("backwards", 1, 3, 2)}, "linear");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("backwards"), std::string::npos);
  r = PlanMemory({Buf("odd", 1, 0, 0, 0, 100)}, "linear");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("power of two"), std::string::npos);
}

TEST(MemoryPlanTest, RegistryIsPluggable) {
  RegisterMemoryAlgorithm("reversed_linear", [](const std::vector<BufferRequest>& bufs) {
    std::vector<uint64_t> offs(bufs.size());
    uint64_t top = 0;
    for (size_t i = bufs.size(); i-- > 0;) {
      offs[i] = RoundUpTo(top, bufs[i].alignment);
      top = offs[i] + bufs[i].size;
    }
    return offs;
  });
  auto names = MemoryAlgorithmNames();
  EXPECT_NE(std::find(names.begin(), names.end(), "reversed_linear"), names.end());
  EXPECT_NE(std::find(names.begin(), names.end(), "linear"), names.end());
  auto plan = PlanMemory({Buf("a", 256, 0, 0), Buf("b", 256, 0, 0)}, "reversed_linear");
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->offsets, (std::vector<uint64_t>{256, 0}));
  RegisterMemoryAlgorithm("broken", [](const std::vector<BufferRequest>& bufs) {
    return std::vector<uint64_t>(bufs.size(), 3);
  });
  auto broken = PlanMemory({Buf("a", 256, 0, 0)}, "broken");
  ASSERT_FALSE(broken.ok());
  EXPECT_EQ(broken.error().code, ErrorCode::kInternal);
}

}  // namespace
}  // namespace bigplan
