#include "planner/overlap_check.h"

#include <gtest/gtest.h>

#include <random>

#include "planner/memory_plan.h"

namespace bigplan {
namespace {

CheckedBuffer CB(const std::string& name, uint64_t offset, uint64_t size, uint32_t first, uint32_t last,
                 int32_t device = 0, schema::Pool pool = schema::Pool::DeviceArena) {
  return CheckedBuffer{name, pool, device, offset, size, first, last};
}

std::vector<CheckedArena> OneArena(uint64_t size) { return {CheckedArena{schema::Pool::DeviceArena, 0, size}}; }

TEST(OverlapCheckTest, AcceptsDisjointBytesOrDisjointLifetimes) {
  EXPECT_TRUE(CheckNoOverlaps({CB("a", 0, 512, 0, 3), CB("b", 512, 512, 0, 3)}, OneArena(1024)).ok());
  EXPECT_TRUE(CheckNoOverlaps({CB("a", 0, 1024, 0, 1), CB("b", 0, 1024, 2, 3)}, OneArena(1024)).ok());
  // Same bytes and lifetimes, but different devices or pools.
  EXPECT_TRUE(CheckNoOverlaps({CB("a", 0, 1024, 0, 1, 0), CB("b", 0, 1024, 0, 1, 1)},
                              {{schema::Pool::DeviceArena, 0, 1024}, {schema::Pool::DeviceArena, 1, 1024}})
                  .ok());
  EXPECT_TRUE(CheckNoOverlaps({CB("a", 0, 1024, 0, 1), CB("p", 0, 1024, 0, 1, -1, schema::Pool::PinnedHost)},
                              {{schema::Pool::DeviceArena, 0, 1024}, {schema::Pool::PinnedHost, -1, 1024}})
                  .ok());
  // Zero-size buffers occupy nothing.
  EXPECT_TRUE(CheckNoOverlaps({CB("a", 0, 1024, 0, 1), CB("z", 256, 0, 0, 1)}, OneArena(1024)).ok());
}

TEST(OverlapCheckTest, RejectsSharedBytesWhileLive) {
  auto s = CheckNoOverlaps({CB("a", 0, 512, 0, 2), CB("b", 256, 512, 2, 3)}, OneArena(1024));
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code, ErrorCode::kInternal);
  EXPECT_NE(s.error().message.find("\"a\""), std::string::npos) << s.error().message;
  EXPECT_NE(s.error().message.find("\"b\""), std::string::npos) << s.error().message;
  // A small buffer inside a big one that starts earlier.
  EXPECT_FALSE(CheckNoOverlaps({CB("big", 0, 4096, 0, 9), CB("x", 0, 256, 5, 6), CB("in", 2048, 256, 9, 9)},
                               OneArena(4096))
                   .ok());
}

TEST(OverlapCheckTest, RejectsOutOfArenaMisalignedAndMissingArena) {
  EXPECT_FALSE(CheckNoOverlaps({CB("a", 512, 768, 0, 0)}, OneArena(1024)).ok());
  EXPECT_FALSE(CheckNoOverlaps({CB("a", 100, 256, 0, 0)}, OneArena(1024)).ok());
  EXPECT_FALSE(CheckNoOverlaps({CB("a", 0, 256, 0, 0, 3)}, OneArena(1024)).ok());
  EXPECT_FALSE(CheckNoOverlaps({CB("a", ~0ull - 255, 512, 0, 0)}, OneArena(~0ull)).ok());
  EXPECT_FALSE(CheckNoOverlaps({CB("a", 0, 256, 2, 1)}, OneArena(1024)).ok());
  EXPECT_FALSE(CheckNoOverlaps({}, {{schema::Pool::DeviceArena, 0, 1}, {schema::Pool::DeviceArena, 0, 2}}).ok());
}

// Brute force, written separately again, as the oracle for the randomized tests.
bool BruteForceSafe(const std::vector<CheckedBuffer>& bufs, const std::vector<CheckedArena>& arenas) {
  for (const auto& b : bufs) {
    bool in_arena = false;
    for (const auto& a : arenas)
      if (a.pool == b.pool && (a.pool == schema::Pool::PinnedHost || a.device == b.device))
        in_arena = b.offset % 256 == 0 && b.offset + b.size <= a.size && b.offset + b.size >= b.offset;
    if (!in_arena) return false;
  }
  for (size_t i = 0; i < bufs.size(); ++i)
    for (size_t j = i + 1; j < bufs.size(); ++j) {
      const auto& a = bufs[i];
      const auto& b = bufs[j];
      if (a.pool != b.pool || (a.pool == schema::Pool::DeviceArena && a.device != b.device)) continue;
      if (a.last_step < b.first_step || b.last_step < a.first_step) continue;
      if (a.size > 0 && a.offset >= b.offset && a.offset < b.offset + b.size) return false;
      if (b.size > 0 && b.offset >= a.offset && b.offset < a.offset + a.size) return false;
    }
  return true;
}

std::vector<BufferRequest> RandomBuffers(std::mt19937_64& rng) {
  std::uniform_int_distribution<int> count(0, 60), steps(0, 24), pool(0, 2), size_kind(0, 9);
  std::uniform_int_distribution<uint64_t> size(0, 20000);
  std::vector<BufferRequest> bufs(count(rng));
  for (size_t i = 0; i < bufs.size(); ++i) {
    auto& b = bufs[i];
    b.name = "b" + std::to_string(i);
    // A mix of tiny, odd and repeated sizes, so ties and padding matter.
    const int k = size_kind(rng);
    b.size = k == 0 ? 0 : k < 3 ? 1024 : size(rng);
    uint32_t s1 = steps(rng), s2 = steps(rng);
    b.first_step = std::min(s1, s2);
    b.last_step = std::max(s1, s2);
    const int p = pool(rng);
    b.pool = p == 2 ? PoolKey{schema::Pool::PinnedHost, -1} : PoolKey{schema::Pool::DeviceArena, p};
  }
  return bufs;
}

std::vector<CheckedBuffer> ToChecked(const std::vector<BufferRequest>& bufs, const MemoryPlan& plan) {
  std::vector<CheckedBuffer> out;
  for (size_t i = 0; i < bufs.size(); ++i)
    out.push_back({bufs[i].name, bufs[i].pool.pool, bufs[i].pool.device, plan.offsets[i], bufs[i].size,
                   bufs[i].first_step, bufs[i].last_step});
  return out;
}

std::vector<CheckedArena> ToArenas(const MemoryPlan& plan) {
  std::vector<CheckedArena> out;
  for (const auto& a : plan.arenas) out.push_back({a.pool.pool, a.pool.device, a.size});
  return out;
}

TEST(OverlapCheckTest, RandomPlansFromBothAlgorithmsPass) {
  std::mt19937_64 rng(12345);
  for (int iter = 0; iter < 2000; ++iter) {
    auto bufs = RandomBuffers(rng);
    uint64_t greedy_total = 0, linear_total = 0;
    for (const char* algo : {"greedy_by_size", "linear"}) {
      auto plan = PlanMemory(bufs, algo);
      ASSERT_TRUE(plan.ok());
      auto checked = ToChecked(bufs, *plan);
      auto arenas = ToArenas(*plan);
      Status s = CheckNoOverlaps(checked, arenas);
      ASSERT_TRUE(s.ok()) << algo << " iteration " << iter << ": " << s.error().ToString();
      ASSERT_TRUE(BruteForceSafe(checked, arenas)) << algo << " iteration " << iter;
      uint64_t total = 0;
      for (const auto& a : plan->arenas) total += a.size;
      (std::string(algo) == "linear" ? linear_total : greedy_total) = total;
    }
    EXPECT_LE(greedy_total, linear_total) << "iteration " << iter;
  }
}

TEST(OverlapCheckTest, RandomBrokenPlansAreRejected) {
  std::mt19937_64 rng(777);
  int broken = 0;
  for (int iter = 0; iter < 2000; ++iter) {
    auto bufs = RandomBuffers(rng);
    if (bufs.size() < 2) continue;
    auto plan = PlanMemory(bufs, iter % 2 ? "greedy_by_size" : "linear");
    ASSERT_TRUE(plan.ok());
    auto checked = ToChecked(bufs, *plan);
    auto arenas = ToArenas(*plan);
    std::uniform_int_distribution<size_t> pick(0, checked.size() - 1);
    const int mutation = iter % 4;
    if (mutation == 0) {
      // Move a buffer onto another live buffer of the same pool.
      size_t a = pick(rng), b = pick(rng);
      auto& A = checked[a];
      auto& B = checked[b];
      const bool same_pool = A.pool == B.pool && (A.pool == schema::Pool::PinnedHost || A.device == B.device);
      const bool live = !(A.last_step < B.first_step || B.last_step < A.first_step);
      if (a == b || !same_pool || !live || A.size == 0 || B.size == 0) continue;
      A.offset = B.offset;
    } else if (mutation == 1) {
      // Shrink an arena below its highest buffer.
      auto& ar = arenas[std::uniform_int_distribution<size_t>(0, arenas.size() - 1)(rng)];
      if (ar.size == 0) continue;
      ar.size -= 1;
    } else if (mutation == 2) {
      // Misalign one offset.
      checked[pick(rng)].offset += 8;
    } else {
      // Random offsets: the verdict must match the brute-force oracle either way.
      for (auto& c : checked) c.offset = std::uniform_int_distribution<uint64_t>(0, 40)(rng) * 256;
      for (auto& a : arenas) a.size = 48 * 256;
      const bool safe = BruteForceSafe(checked, arenas);
      ASSERT_EQ(CheckNoOverlaps(checked, arenas).ok(), safe) << "iteration " << iter;
      continue;
    }
    Status s = CheckNoOverlaps(checked, arenas);
    // Shrinking an arena by one byte is harmless when no buffer ends in that byte.
    ASSERT_EQ(s.ok(), BruteForceSafe(checked, arenas)) << "iteration " << iter;
    if (mutation != 1) {
      ASSERT_FALSE(s.ok()) << "mutation " << mutation << " iteration " << iter;
      ++broken;
    }
  }
  EXPECT_GT(broken, 500);
}

}  // namespace
}  // namespace bigplan
