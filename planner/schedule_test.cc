#include "planner/schedule.h"

#include <gtest/gtest.h>

#include <random>

#include "planner/overlap_check.h"

namespace bigplan {
namespace {

using schema::Tier;

ScheduleBlock B(const std::string& name, Tier tier, uint64_t bytes, uint64_t kv = 0, int32_t device = 0) {
  return ScheduleBlock{name, device, tier, bytes, kv};
}

std::vector<ScheduleBlock> SixBlocks() {
  return {B("emb", Tier::Gpu, 1024),      B("L0", Tier::Gpu, 2048, 512), B("L1", Tier::Cpu, 2048, 512),
          B("L2", Tier::Cpu, 2048, 512),  B("L3", Tier::Disk, 2048, 512), B("head", Tier::Cpu, 1024)};
}

// Worked by hand in the comments; see schedule.h for the rules.
TEST(ScheduleTest, DepthOneExact) {
  ScheduleOptions opt;
  opt.activation_bytes[0] = 256;
  auto s = BuildSchedule(SixBlocks(), opt);
  ASSERT_TRUE(s.ok()) << s.error().ToString();
  // Buffers in order: 0 emb.weights, 1 L0.weights, 2 L0.kv, 3 L1.host_weights, 4 L1.staging, 5 L1.kv,
  // 6 L2.host_weights, 7 L2.staging, 8 L2.kv, 9 L3.staging, 10 L3.disk_staging, 11 L3.kv, 12 head.host_weights,
  // 13 head.staging, 14 activations.cuda:0.
  ASSERT_EQ(s->buffers.size(), 15u);
  EXPECT_EQ(s->buffers[4].request.name, "L1.staging");
  EXPECT_EQ(s->buffers[10].kind, schema::BufferKind::DiskStaging);
  EXPECT_EQ(s->buffers[14].request.name, "activations.cuda:0");
  // Streamed S = [L1, L2, L3, head] (steps 2..5). Depth 1: L1 issued at 0, the others at the previous one's step.
  ASSERT_EQ(s->copies.size(), 4u);
  EXPECT_EQ(s->copies[0].issue_step, 0u);
  EXPECT_EQ(s->copies[1].issue_step, 2u);
  EXPECT_EQ(s->copies[2].issue_step, 3u);
  EXPECT_EQ(s->copies[3].issue_step, 4u);
  EXPECT_EQ(s->buffers[4].request.first_step, 0u);
  EXPECT_EQ(s->buffers[4].request.last_step, 2u);
  EXPECT_EQ(s->buffers[9].request.first_step, 3u);
  EXPECT_EQ(s->buffers[10].request.first_step, 3u);
  EXPECT_EQ(s->buffers[10].request.last_step, 4u);
  // Greedy offsets on cuda:0: L0.weights 0, L1.staging 2048, L2.staging 4096, L3.staging 2048 (L1's, dead by
  // step 3), emb 6144, head.staging 4096 (L2's, dead by step 4), then the KV caches and activations on top.
  std::vector<uint64_t> expect_dev{6144, 0, 7168, 2048, 7680, 4096, 8192, 2048, 8704, 4096, 9216};
  std::vector<int> dev_idx{0, 1, 2, 4, 5, 7, 8, 9, 11, 13, 14};
  for (size_t k = 0; k < dev_idx.size(); ++k)
    EXPECT_EQ(s->buffers[dev_idx[k]].offset, expect_dev[k]) << s->buffers[dev_idx[k]].request.name;
  EXPECT_EQ(s->memory.ArenaSizeOf({schema::Pool::DeviceArena, 0}), 9472u);
  // Pinned: L1.host 0, L2.host 2048, L3.disk_staging 4096, head.host 6144.
  EXPECT_EQ(s->buffers[3].offset, 0u);
  EXPECT_EQ(s->buffers[6].offset, 2048u);
  EXPECT_EQ(s->buffers[10].offset, 4096u);
  EXPECT_EQ(s->buffers[12].offset, 6144u);
  // Waits: L3's staging reuses L1's (last used at step 2); head's reuses L2's (step 3).
  EXPECT_TRUE(s->copies[0].wait_compute_steps.empty());
  EXPECT_TRUE(s->copies[1].wait_compute_steps.empty());
  EXPECT_EQ(s->copies[2].wait_compute_steps, (std::vector<uint32_t>{2}));
  EXPECT_EQ(s->copies[3].wait_compute_steps, (std::vector<uint32_t>{3}));
  EXPECT_TRUE(s->copies[2].wait_copy_blocks.empty());
  EXPECT_EQ(s->copies[2].source, Tier::Disk);
  // Steps and frees.
  EXPECT_EQ(s->steps[0].copies, (std::vector<uint32_t>{0}));
  EXPECT_TRUE(s->steps[1].copies.empty());
  EXPECT_EQ(s->steps[2].copies, (std::vector<uint32_t>{1}));
  EXPECT_EQ(s->steps[4].copies, (std::vector<uint32_t>{3}));
  EXPECT_EQ(s->steps[2].frees, (std::vector<uint32_t>{4}));
  EXPECT_EQ(s->steps[3].frees, (std::vector<uint32_t>{7}));
  EXPECT_EQ(s->steps[4].frees, (std::vector<uint32_t>{9, 10}));
  EXPECT_EQ(s->steps[5].frees, (std::vector<uint32_t>{0, 1, 2, 3, 5, 6, 8, 11, 12, 13, 14}));
  EXPECT_EQ(s->block_buffers[4].staging, 9);
  EXPECT_EQ(s->block_buffers[4].disk_staging, 10);
  EXPECT_EQ(s->block_buffers[4].home, -1);
  EXPECT_EQ(s->block_buffers[4].kv, 11);
  EXPECT_EQ(s->copy_of_block[1], -1);
  EXPECT_EQ(s->copy_of_block[5], 3);
}

TEST(ScheduleTest, DeeperPrefetchIssuesEarlier) {
  ScheduleOptions opt;
  opt.cpu_prefetch_depth = 2;
  opt.disk_prefetch_depth = 2;
  auto s = BuildSchedule(SixBlocks(), opt);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->copies[0].issue_step, 0u);
  EXPECT_EQ(s->copies[1].issue_step, 0u);
  EXPECT_EQ(s->copies[2].issue_step, 2u);
  EXPECT_EQ(s->copies[3].issue_step, 3u);
  EXPECT_EQ(s->steps[0].copies, (std::vector<uint32_t>{0, 1}));
}

TEST(ScheduleTest, IssueStepsNeverGoBackwards) {
  // Disk depth 3, cpu depth 1: d0 alone would be issued at step 0, but c1 (consumed before it) is issued at
  // step 1, so d0 is issued at step 1 as well, after c1 on the copy stream.
  std::vector<ScheduleBlock> blocks{B("a", Tier::Gpu, 256), B("c0", Tier::Cpu, 256), B("c1", Tier::Cpu, 256),
                                    B("d0", Tier::Disk, 256)};
  ScheduleOptions opt;
  opt.cpu_prefetch_depth = 1;
  opt.disk_prefetch_depth = 3;
  auto s = BuildSchedule(blocks, opt);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->copies[0].issue_step, 0u);
  EXPECT_EQ(s->copies[1].issue_step, 1u);
  EXPECT_EQ(s->copies[2].issue_step, 1u);
}

TEST(ScheduleTest, DiskStagingReuseWaitsOnCopies) {
  std::vector<ScheduleBlock> blocks;
  for (int i = 0; i < 4; ++i) blocks.push_back(B("d" + std::to_string(i), Tier::Disk, 1024));
  auto s = BuildSchedule(blocks, {});
  ASSERT_TRUE(s.ok());
  // Depth 1: d0 [0,0], d1 [0,1], d2 [1,2], d3 [2,3]. Staging alternates between two slots, so d2 reuses d0's
  // (waits for step 0's compute and d0's H2D copy) and d3 reuses d1's.
  EXPECT_EQ(s->copies[2].wait_compute_steps, (std::vector<uint32_t>{0}));
  EXPECT_EQ(s->copies[2].wait_copy_blocks, (std::vector<uint32_t>{0}));
  EXPECT_EQ(s->copies[3].wait_compute_steps, (std::vector<uint32_t>{1}));
  EXPECT_EQ(s->copies[3].wait_copy_blocks, (std::vector<uint32_t>{1}));
  EXPECT_EQ(s->memory.ArenaSizeOf({schema::Pool::PinnedHost, -1}), 2048u);
}

TEST(ScheduleTest, RejectsBadInput) {
  EXPECT_FALSE(BuildSchedule({}, {}).ok());
  ScheduleOptions opt;
  opt.cpu_prefetch_depth = 0;
  EXPECT_FALSE(BuildSchedule(SixBlocks(), opt).ok());
  opt.cpu_prefetch_depth = 1;
  opt.memory_algorithm = "nope";
  EXPECT_FALSE(BuildSchedule(SixBlocks(), opt).ok());
}

// Random placements: the memory plan passes the independent checker, and every pair of buffers sharing bytes
// with disjoint lifetimes is ordered by a dependency of the later buffer's copy.
TEST(ScheduleTest, RandomSchedulesAreSafe) {
  std::mt19937_64 rng(99);
  for (int iter = 0; iter < 300; ++iter) {
    std::uniform_int_distribution<int> nblocks(1, 40), tier(0, 2), dev(-1, 1), depth(1, 4);
    std::uniform_int_distribution<uint64_t> size(0, 5000);
    std::vector<ScheduleBlock> blocks;
    const int n = nblocks(rng);
    for (int i = 0; i < n; ++i)
      blocks.push_back(B("b" + std::to_string(i), static_cast<Tier>(tier(rng)), size(rng), size(rng) / 2, dev(rng)));
    ScheduleOptions opt;
    opt.cpu_prefetch_depth = depth(rng);
    opt.disk_prefetch_depth = depth(rng);
    opt.activation_bytes = {{-1, 300}, {0, 700}, {1, 256}};
    opt.memory_algorithm = iter % 3 == 0 ? "linear" : "greedy_by_size";
    auto s = BuildSchedule(blocks, opt);
    ASSERT_TRUE(s.ok());
    std::vector<CheckedBuffer> cb;
    for (const auto& b : s->buffers)
      cb.push_back({b.request.name, b.request.pool.pool, b.request.pool.device, b.offset, b.request.size,
                    b.request.first_step, b.request.last_step});
    std::vector<CheckedArena> ca;
    for (const auto& a : s->memory.arenas) ca.push_back({a.pool.pool, a.pool.device, a.size});
    ASSERT_TRUE(CheckNoOverlaps(cb, ca).ok());
    for (const auto& c : s->copies) {
      const auto& dst = s->buffers[s->block_buffers[c.block].staging];
      EXPECT_EQ(dst.request.first_step, c.issue_step);
      EXPECT_EQ(dst.request.last_step, c.block);
      for (const auto& o : s->buffers) {
        if (&o == &dst || !(o.request.pool == dst.request.pool) || o.request.size == 0 || dst.request.size == 0)
          continue;
        const bool share = o.offset < dst.offset + dst.request.size && dst.offset < o.offset + o.request.size;
        if (!share || o.request.last_step >= c.issue_step) continue;
        const auto& w = c.wait_compute_steps;
        EXPECT_NE(std::find(w.begin(), w.end(), o.request.last_step), w.end()) << "iteration " << iter;
      }
    }
  }
}

}  // namespace
}  // namespace bigplan
