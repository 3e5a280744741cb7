#include "planner/cost_model.h"

#include <gtest/gtest.h>

namespace bigplan {
namespace {

using schema::Tier;

TEST(CostModelTest, BlockCostIsRooflinePlusLaunches) {
  DeviceProfile p = DefaultGpuProfile();
  BlockWork w;
  w.weight_bytes = 2'000'000'000;  // 2 GB of weights
  w.matmul_params = 1e9;
  w.kernels = 10;
  RunSize run{1, 512};
  BlockCost c = EstimateBlockCost(w, run, 0, p);
  // Decode: 2 GFLOP at 770 TFLOP/s = 2.6 us < 2 GB at 3030 GB/s = 660.07 us; + 10 x 5 us.
  EXPECT_NEAR(c.decode_us, 2e9 / 3030e9 * 1e6 + 50, 1e-6);
  // Prefill: 512 tokens -> 1024 GFLOP = 1329.87 us > 660.07 us.
  EXPECT_NEAR(c.prefill_us, 1024e9 / 770e12 * 1e6 + 50, 1e-6);
  // On the CPU: 2 GB at 100 GB/s = 20000 us; 10 ops x 2 us.
  EXPECT_NEAR(EstimateBlockCost(w, run, -1, p).decode_us, 20000 + 20, 1e-6);
}

TEST(CostModelTest, AttentionAndKvTraffic) {
  DeviceProfile p = DefaultGpuProfile();
  BlockWork w;
  w.attn_dim = 4096;
  w.kv_bytes_per_token = 1'000'000;
  w.kernels = 0;
  RunSize run{2, 1000};
  BlockCost c = EstimateBlockCost(w, run, 0, p);
  // Decode: KV 2 x 1000 x 1 MB = 2 GB read -> 660.07 us (attention FLOPs 4 x 4096 x 2 x 1000 are negligible).
  EXPECT_NEAR(c.decode_us, 2e9 / 3030e9 * 1e6, 1e-6);
  // Prefill: causal attention 4 x 4096 x 2 x (1000 x 1001 / 2) FLOPs = 16.4 GFLOP -> 21.30 us < 660.07 us.
  EXPECT_NEAR(c.prefill_us, 2e9 / 3030e9 * 1e6, 1e-6);
}

TEST(CostModelTest, CopyTimes) {
  DeviceProfile p = DefaultGpuProfile();
  EXPECT_NEAR(CopyMicros(53'000'000, Tier::Cpu, p), 1000.0, 1e-9);
  EXPECT_NEAR(CopyMicros(53'000'000, Tier::Disk, p), 1000.0 + 53e6 / 1.4e9 * 1e6, 1e-6);
  EXPECT_EQ(CopyMicros(53'000'000, Tier::Gpu, p), 0.0);
}

ScheduleBlock B(const std::string& name, Tier tier, uint64_t bytes) { return ScheduleBlock{name, 0, tier, bytes, 0}; }

// emb, L0 resident; L1, L2, head on the CPU tier; L3 on disk. Depth 1 (hand-checked in schedule_test):
// copies c0 (L1) at step 0, c1 (L2) at 2, c2 (L3) at 3 waiting on step 2, c3 (head) at 4 waiting on step 3.
Schedule SixBlockSchedule() {
  auto s = BuildSchedule({B("emb", Tier::Gpu, 1024), B("L0", Tier::Gpu, 2048), B("L1", Tier::Cpu, 2048),
                          B("L2", Tier::Cpu, 2048), B("L3", Tier::Disk, 2048), B("head", Tier::Cpu, 1024)},
                         {});
  EXPECT_TRUE(s.ok());
  return *s;
}

TEST(CostModelTest, SimulateCopyBound) {
  Schedule s = SixBlockSchedule();
  ASSERT_EQ(s.copies[2].wait_compute_steps, (std::vector<uint32_t>{2}));
  std::vector<int32_t> devices(6, 0);
  // Compute 100 us per block, copies 300 us each.
  //   c0 0-300; steps 0: 0-100, 1: 100-200; c1 300-600; step 2 waits c0: 300-400; c2 (after step 2) 600-900;
  //   step 3 waits c1: 600-700; c3 900-1200; step 4 waits c2: 900-1000; step 5 waits c3: 1200-1300.
  auto f = SimulateForward(s, std::vector<double>(6, 100), std::vector<double>(4, 300), devices);
  EXPECT_DOUBLE_EQ(f.total_us, 1300);
  EXPECT_EQ(f.step_start, (std::vector<double>{0, 100, 300, 600, 900, 1200}));
  EXPECT_EQ(f.copy_start, (std::vector<double>{0, 300, 600, 900}));
  EXPECT_DOUBLE_EQ(f.compute_stall_us, 100 + 200 + 200 + 200);
  EXPECT_DOUBLE_EQ(f.copy_us, 1200);
  EXPECT_EQ(f.held_cpu_copies + f.held_disk_copies, 0u);  // the copy stream never idles
  EXPECT_DOUBLE_EQ(CopyFloorMicros(s, std::vector<double>(4, 300), devices), 1200);
}

TEST(CostModelTest, SimulateComputeBound) {
  Schedule s = SixBlockSchedule();
  // Compute 300 us, copies 100 us: c2 waits for step 2 (ends 900) although the stream is free at 200, but step 3
  // never waits for it, so it is not "held".
  auto f = SimulateForward(s, std::vector<double>(6, 300), std::vector<double>(4, 100), std::vector<int32_t>(6, 0));
  EXPECT_DOUBLE_EQ(f.total_us, 1800);
  EXPECT_DOUBLE_EQ(f.compute_stall_us, 0);
  EXPECT_DOUBLE_EQ(f.copy_start[2], 900);
  EXPECT_EQ(f.held_cpu_copies + f.held_disk_copies, 0u);
}

TEST(CostModelTest, HeldCopyGoesAwayWithDeeperPrefetch) {
  std::vector<ScheduleBlock> blocks{B("s0", Tier::Cpu, 1024), B("s1", Tier::Cpu, 1024), B("s2", Tier::Cpu, 1024)};
  std::vector<double> compute{150, 50, 100}, copies(3, 100);
  std::vector<int32_t> devices(3, 0);
  // Depth 1: s2's staging reuses s0's, so its copy waits for step 0 (ends 250) while the stream is free at 200,
  // and step 2 then waits for it (ends 350, step 1 ended at 300).
  auto d1 = BuildSchedule(blocks, {});
  ASSERT_TRUE(d1.ok());
  ASSERT_EQ(d1->copies[2].wait_compute_steps, (std::vector<uint32_t>{0}));
  auto f1 = SimulateForward(*d1, compute, copies, devices);
  EXPECT_EQ(f1.held_cpu_copies, 1u);
  EXPECT_DOUBLE_EQ(f1.total_us, 450);
  ScheduleOptions deeper;
  deeper.cpu_prefetch_depth = 2;
  auto d2 = BuildSchedule(blocks, deeper);
  ASSERT_TRUE(d2.ok());
  auto f2 = SimulateForward(*d2, compute, copies, devices);
  EXPECT_EQ(f2.held_cpu_copies, 0u);
  EXPECT_DOUBLE_EQ(f2.total_us, 400);
}

TEST(CostModelTest, CopyStreamsPerDevice) {
  std::vector<ScheduleBlock> blocks{ScheduleBlock{"a", 0, Tier::Cpu, 256, 0}, ScheduleBlock{"b", 1, Tier::Cpu, 256, 0}};
  ScheduleOptions opt;
  opt.cpu_prefetch_depth = 2;
  auto s = BuildSchedule(blocks, opt);
  ASSERT_TRUE(s.ok());
  // Both copies at step 0 on different devices' streams run concurrently.
  auto f = SimulateForward(*s, {10, 10}, {100, 100}, {0, 1});
  EXPECT_EQ(f.copy_start, (std::vector<double>{0, 0}));
  EXPECT_DOUBLE_EQ(f.total_us, 120);  // a: 100-110, b: 110-120 (its copy was done at 100)
  EXPECT_DOUBLE_EQ(CopyFloorMicros(*s, {100, 100}, {0, 1}), 100);
}

}  // namespace
}  // namespace bigplan
