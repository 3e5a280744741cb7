#include "planner/placement_balanced.h"

#include <algorithm>
#include <map>
#include <optional>
#include <set>
#include <string>

#include <gtest/gtest.h>

#include "planner/synthetic_model_testutil.h"

#include "planner/accounting.h"
#include "planner/hf_import.h"

namespace bigplan {

void PrintTo(const BlockPlacement& p, std::ostream* os) { *os << "{" << p.device << ", " << TierName(p.tier) << "}"; }

namespace {

constexpr uint64_t kMiB = uint64_t{1} << 20;
constexpr uint64_t kGiB = uint64_t{1} << 30;

std::string Root() { return std::string(std::getenv("TEST_SRCDIR")) + "/bigplan/"; }


MemoryBudget Budget(std::map<int, uint64_t> gpus, std::optional<uint64_t> cpu = std::nullopt) {
  MemoryBudget b;
  b.gpus = std::move(gpus);
  b.cpu = cpu;
  return b;
}

PlacementRequest Request(const ModelDescription& m, MemoryBudget budget, bool enforce = false) {
  PlacementRequest r;
  r.model = &m;
  r.budget = std::move(budget);
  r.run = RunShape{1, 16};
  r.exec_dtype = DType::kF32;
  r.options.enforce_budget = enforce;
  return r;
}

BlockPlacement G(int d) { return {d, Tier::kGpu}; }
BlockPlacement C(int d) { return {d, Tier::kCpu}; }
BlockPlacement D(int d) { return {d, Tier::kDisk}; }

std::vector<BlockPlacement> Place(const std::string& strategy, const PlacementRequest& r) {
  Result<Placement> p = PlaceModel(strategy, r);
  EXPECT_TRUE(p.ok()) << p.error().ToString();
  if (!p.ok()) return {};
  EXPECT_EQ(p->strategy, strategy);
  return p->blocks;
}

// embed 4000, 8 layers of 1000, norm 4, lm_head 4000 (+ 64 bytes of rotary buffers): total 16068 bytes.
ModelDescription Small() { return SyntheticModel(4000, std::vector<uint64_t>(8, 1000), 4, 4000); }

TEST(BalancedRegistryTest, RegisteredWithoutAnExplicitCall) {
  std::vector<std::string> names = ListPlacementStrategies();
  for (const char* n : {"balanced", "balanced_low_0", "sequential", "auto", "explicit"}) {
    EXPECT_NE(std::find(names.begin(), names.end(), n), names.end()) << n;
  }
  Result<std::unique_ptr<PlacementStrategy>> s = MakePlacementStrategy(kBalancedStrategy);
  ASSERT_TRUE(s.ok()) << s.error().ToString();
  EXPECT_EQ((*s)->name(), "balanced");
  // Idempotent, and the registry keeps one entry per name.
  RegisterBalancedStrategies();
  RegisterBalancedStrategies();
  std::vector<std::string> again = ListPlacementStrategies();
  EXPECT_EQ(again, names);
  Result<std::unique_ptr<PlacementStrategy>> low = MakePlacementStrategy(kBalancedLowZeroStrategy);
  ASSERT_TRUE(low.ok());
  EXPECT_EQ((*low)->name(), "balanced_low_0");
  EXPECT_FALSE((*low)->description().empty());
}

TEST(BalancedMaxMemoryTest, AccelerateFormula) {
  ModelDescription m = Small();
  // leaf modules: embed 4000, 8 x 1000, norm 4, lm_head 4000, rotary_emb 64 -> mean int(16068 / 12) = 1339;
  // extra = int(1.25 x max(1000, 1339)) = 1673; per_gpu = 16068 / 2 + 1673 = 9707.
  BalancedMemory b = BalancedMaxMemory(m, Budget({{0, 100000}, {1, 100000}}, 50000), DType::kF32, false);
  EXPECT_EQ(b.total_bytes, 16068u);
  EXPECT_EQ(b.no_split_bytes, 1000u);
  EXPECT_EQ(b.mean_leaf_bytes, 1339u);
  EXPECT_EQ(b.per_gpu_bytes, 9707u);
  EXPECT_EQ(b.num_gpus, 2u);
  EXPECT_EQ(b.budget, Budget({{0, 9707}, {1, 100000}}, 50000));  // the last GPU and cpu keep theirs

  // A GPU below the share keeps its budget.
  EXPECT_EQ(BalancedMaxMemory(m, Budget({{0, 5000}, {1, 100000}}), DType::kF32, false).budget,
            Budget({{0, 5000}, {1, 100000}}));
  // Three GPUs: per_gpu = 16068 / 3 + 1673 = 7029 for GPUs 0 and 1.
  EXPECT_EQ(BalancedMaxMemory(m, Budget({{0, 100000}, {1, 100000}, {2, 100000}}), DType::kF32, false).budget,
            Budget({{0, 7029}, {1, 7029}, {2, 100000}}));
  // low_zero, 3 GPUs: per_gpu = 16068 / 2 + 1673 = 9707 for GPU 1; GPU 0 gets max(0, 16068 - 9707 - 8000) = 0 ...
  EXPECT_EQ(BalancedMaxMemory(m, Budget({{0, 100000}, {1, 100000}, {2, 8000}}), DType::kF32, true).budget,
            Budget({{0, 0}, {1, 9707}, {2, 8000}}));
  // ... or what GPUs 1 and 2 cannot hold: 16068 - 5000 - 3000 = 8068.
  EXPECT_EQ(BalancedMaxMemory(m, Budget({{0, 100000}, {1, 5000}, {2, 3000}}), DType::kF32, true).budget,
            Budget({{0, 8068}, {1, 5000}, {2, 3000}}));
  // One GPU: nothing changes (low_zero is ignored).
  EXPECT_EQ(BalancedMaxMemory(m, Budget({{0, 100000}}, 7), DType::kF32, true).budget, Budget({{0, 100000}}, 7));
  // Zero-budget GPUs are not counted; no GPU at all: nothing changes.
  EXPECT_EQ(BalancedMaxMemory(m, Budget({{0, 0}, {1, 100000}, {2, 100000}}), DType::kF32, false).budget,
            Budget({{0, 0}, {1, 9707}, {2, 100000}}));
  EXPECT_EQ(BalancedMaxMemory(m, Budget({}, 100000), DType::kF32, false).budget, Budget({}, 100000));
}

TEST(BalancedMaxMemoryTest, SizesFollowTheExecutionDtype) {
  ModelDescription m = Small();
  // fp16 halves the params and the rotary buffers (min(exec, F32)).
  BalancedMemory b = BalancedMaxMemory(m, Budget({{0, 100000}, {1, 100000}}), DType::kF16, false);
  EXPECT_EQ(b.total_bytes, 16068u / 2);
  EXPECT_EQ(b.no_split_bytes, 500u);
  // Without rotary (e.g. GPT-2) there is no rotary_emb module.
  m.architecture = "gpt2";
  m.config.rotary_dim = 0;
  b = BalancedMaxMemory(m, Budget({{0, 100000}, {1, 100000}}), DType::kF32, false);
  EXPECT_EQ(b.total_bytes, 16004u);
  EXPECT_EQ(b.mean_leaf_bytes, 16004u / 11);
}

TEST(BalancedTest, TwoGpusExactPlacement) {
  ModelDescription m = Small();
  // Balanced budgets {0: 9707, 1: 100000}. GPU 0 keeps room for the largest layer (4000, the embedding and the
  // lm_head): embed + layer 0 = 5000 <= 9707 - 4000, layer 1 would exceed it; the rest goes to GPU 1.
  const std::vector<BlockPlacement> expected = {G(0), G(0), G(1), G(1), G(1), G(1), G(1), G(1), G(1), G(1), G(1)};
  EXPECT_EQ(Place("balanced", Request(m, Budget({{0, 100000}, {1, 100000}}))), expected);
  // The same as sequential on the rebalanced budget; sequential alone puts everything on GPU 0.
  EXPECT_EQ(Place("sequential", Request(m, Budget({{0, 9707}, {1, 100000}}))), expected);
  EXPECT_EQ(Place("sequential", Request(m, Budget({{0, 100000}, {1, 100000}}))), std::vector<BlockPlacement>(11, G(0)));
  // balanced_low_0: GPU 0 gets max(0, 16068 - 100000) = 0, so everything is on GPU 1.
  EXPECT_EQ(Place("balanced_low_0", Request(m, Budget({{0, 100000}, {1, 100000}}))), std::vector<BlockPlacement>(11, G(1)));
}

TEST(BalancedTest, TwoGpusWithOffload) {
  ModelDescription m = Small();
  // balanced: {0: 9707, 1: 12000, cpu}. GPU 0 as above; GPU 1 takes layers 1-7, the norm and the lm_head (11004).
  EXPECT_EQ(Place("balanced", Request(m, Budget({{0, 100000}, {1, 12000}}, 100000))),
            (std::vector<BlockPlacement>{G(0), G(0), G(1), G(1), G(1), G(1), G(1), G(1), G(1), G(1), G(1)}));
  // balanced_low_0: GPU 0 gets 16068 - 12000 = 4068, too little once 4000 is kept for the largest layer, so
  // GPU 1 takes the embedding and all layers (12000), and the norm and lm_head go to cpu, computed on GPU 1.
  EXPECT_EQ(Place("balanced_low_0", Request(m, Budget({{0, 100000}, {1, 12000}}, 100000))),
            (std::vector<BlockPlacement>{G(1), G(1), G(1), G(1), G(1), G(1), G(1), G(1), G(1), C(1), C(1)}));
  // GPUs below the balanced share (9707): balanced = sequential. GPU 0 (room kept for the 4000-byte lm_head): embed
  // and layer 0; GPU 1: layers 1-3; cpu (also keeping 4000): layers 4-5; the rest on disk, all computed on GPU 0.
  const PlacementRequest small = Request(m, Budget({{0, 9000}, {1, 3000}}, 6000));
  const std::vector<BlockPlacement> spill = {G(0), G(0), G(1), G(1), G(1), C(0), C(0), D(0), D(0), D(0), D(0)};
  EXPECT_EQ(Place("balanced", small), spill);
  EXPECT_EQ(Place("sequential", small), spill);
}

TEST(BalancedTest, OneGpuIsSequential) {
  ModelDescription m = Small();
  const PlacementRequest r = Request(m, Budget({{0, 9000}}, 100000));
  EXPECT_EQ(Place("balanced", r), Place("sequential", r));
  EXPECT_EQ(Place("balanced_low_0", r), Place("sequential", r));
}

TEST(BalancedTest, AccountsAgainstTheCallersBudget) {
  ModelDescription m = SyntheticModel(400 * kMiB, std::vector<uint64_t>(8, 100 * kMiB), 4 * kMiB, 400 * kMiB);
  PlacementRequest r = Request(m, Budget({{0, 4 * kGiB}, {1, 4 * kGiB}}, 8 * kGiB), /*enforce=*/true);
  Result<Placement> p = PlaceModel("balanced", r);
  ASSERT_TRUE(p.ok()) << p.error().ToString();
  std::set<int> gpus;
  for (const BlockPlacement& b : p->blocks) gpus.insert(b.device);
  EXPECT_EQ(gpus, (std::set<int>{0, 1}));
  ASSERT_GE(p->usage.size(), 2u);
  EXPECT_EQ(p->usage[0].device, "cuda:0");
  EXPECT_EQ(p->usage[0].budget, 4 * kGiB);  // not the rebalanced budget
  EXPECT_EQ(p->usage[1].budget, 4 * kGiB);
  EXPECT_EQ(p->block_weight_bytes.size(), m.blocks.size());

  // Weights that fit Accelerate's budget but not bigplan's accounting (the workspace reserve): kInfeasible naming
  // the device, with the strategy in the context.
  r.budget = Budget({{0, 900 * kMiB}, {1, 900 * kMiB}}, 8 * kGiB);
  p = PlaceModel("balanced", r);
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.error().code, ErrorCode::kInfeasible);
  EXPECT_NE(p.error().ToString().find("cuda:"), std::string::npos) << p.error().ToString();
  EXPECT_NE(p.error().ToString().find("\"balanced\""), std::string::npos) << p.error().ToString();
}

TEST(BalancedTest, RequestErrors) {
  ModelDescription m = Small();
  PlacementRequest r = Request(m, Budget({{0, 100000}, {1, 100000}}));
  r.model = nullptr;
  EXPECT_EQ(PlaceModel("balanced", r).error().code, ErrorCode::kInvalidArgument);
  r = Request(m, Budget({{0, 100000}, {1, 100000}}));
  r.exec_dtype = DType::kI32;
  EXPECT_EQ(PlaceModel("balanced_low_0", r).error().code, ErrorCode::kInvalidArgument);
  r = Request(m, Budget({}));
  EXPECT_EQ(PlaceModel("balanced", r).error().code, ErrorCode::kInvalidArgument);
}

TEST(BalancedTest, Llama2OnThreeGpus) {
  Result<ModelDescription> m = ImportExample(Root() + "planner/examples/llama-2-7b");
  ASSERT_TRUE(m.ok()) << m.error().ToString();
  PlacementRequest r;
  r.model = &*m;
  r.budget = Budget({{0, 40 * kGiB}, {1, 40 * kGiB}, {2, 40 * kGiB}});
  r.run = RunShape{1, 2048};
  r.exec_dtype = DType::kF16;
  Result<Placement> p = PlaceModel("balanced", r);
  ASSERT_TRUE(p.ok()) << p.error().ToString();
  std::map<int, int> per_gpu;
  for (const BlockPlacement& b : p->blocks) {
    EXPECT_EQ(b.tier, Tier::kGpu);
    ++per_gpu[b.device];
  }
  // Accelerate's split of the 35 blocks (fixture: 11 / 12 / 12 modules incl. rotary_emb on GPU 2 -> 11 blocks).
  EXPECT_EQ(per_gpu, (std::map<int, int>{{0, 11}, {1, 12}, {2, 12}}));
  // Two GPU boundaries, each copying the [1, 2048, 4096] fp16 hidden state.
  const std::vector<uint64_t> copies = BoundaryActivationBytes(*m, p->blocks, r.run, r.exec_dtype);
  uint64_t crossings = 0;
  for (uint64_t c : copies) {
    if (c == 0) continue;
    ++crossings;
    EXPECT_EQ(c, uint64_t{2048} * 4096 * 2);
  }
  EXPECT_EQ(crossings, 2u);
}

TEST(BoundaryActivationBytesTest, CopiesWhereTheComputeDeviceChanges) {
  ModelDescription m = SyntheticModel(4000, std::vector<uint64_t>(4, 1000), 4, 4000);  // 7 blocks
  const RunShape run{2, 16};
  const uint64_t h32 = 2 * 16 * 64 * 4;
  // embed on 0, layers 0-1 on 0 (layer 1 streamed from cpu, computed on 0), layer 2 on 1, layer 3 from disk computed
  // on 1, norm on 0 (back), lm_head on 0.
  const std::vector<BlockPlacement> blocks = {G(0), G(0), C(0), G(1), D(1), G(0), G(0)};
  EXPECT_EQ(BoundaryActivationBytes(m, blocks, run, DType::kF32),
            (std::vector<uint64_t>{0, 0, 0, h32, 0, h32, 0}));
  EXPECT_EQ(BoundaryActivationBytes(m, blocks, run, DType::kBF16),
            (std::vector<uint64_t>{0, 0, 0, h32 / 2, 0, h32 / 2, 0}));
  // All on one device: nothing to copy. The first block never copies hidden state.
  EXPECT_EQ(BoundaryActivationBytes(m, std::vector<BlockPlacement>(7, G(3)), run, DType::kF32),
            std::vector<uint64_t>(7, 0));
  // CPU compute (device -1) is a device of its own.
  EXPECT_EQ(BoundaryActivationBytes(m, {G(-1), G(-1), G(0), G(0), G(0), G(0), G(-1)}, run, DType::kF32),
            (std::vector<uint64_t>{0, 0, h32, 0, 0, 0, h32}));
  // A short placement: the missing blocks get 0; the result always has one entry per block.
  EXPECT_EQ(BoundaryActivationBytes(m, {G(0), G(1)}, run, DType::kF32), (std::vector<uint64_t>{0, h32, 0, 0, 0, 0, 0}));
}

}  // namespace
}  // namespace bigplan
