#include "planner/placement.h"

#include <chrono>
#include <random>
#include <set>

#include <gtest/gtest.h>

#include "planner/synthetic_model_testutil.h"

#include "planner/cost_model.h"
#include "planner/experts.h"
#include "planner/hf_import.h"

namespace bigplan {

void PrintTo(const BlockPlacement& p, std::ostream* os) { *os << "{" << p.device << ", " << TierName(p.tier) << "}"; }

namespace {

constexpr uint64_t kMiB = uint64_t{1} << 20;
constexpr uint64_t kGiB = uint64_t{1} << 30;

std::string Root() { return std::string(std::getenv("TEST_SRCDIR")) + "/bigplan/"; }


PlacementRequest Request(const ModelDescription& m, MemoryBudget budget) {
  PlacementRequest r;
  r.model = &m;
  r.budget = std::move(budget);
  r.run = RunShape{1, 16};
  r.exec_dtype = DType::kF32;
  return r;
}

MemoryBudget Budget(std::map<int, uint64_t> gpus, std::optional<uint64_t> cpu = std::nullopt,
                    std::optional<uint64_t> disk = std::nullopt) {
  MemoryBudget b;
  b.gpus = std::move(gpus);
  b.cpu = cpu;
  b.disk = disk;
  return b;
}

// Everything but weights and staging that a GPU computing blocks [begin, end) needs.
uint64_t Overhead(const PlacementRequest& r, size_t begin, size_t end) {
  std::vector<size_t> blocks;
  uint64_t layers = 0;
  for (size_t i = begin; i < end; ++i) {
    blocks.push_back(i);
    layers += r.model->blocks[i].kind == BlockKind::kDecoderLayer;
  }
  return GpuWorkspaceReserveBytes() + EstimateActivations(*r.model, r.run, r.exec_dtype, blocks).total +
         layers * KvCacheBytesPerLayer(r.model->config, r.run, r.exec_dtype);
}

std::string Describe(const ModelDescription& m, const std::vector<BlockPlacement>& p) {
  return PlacementToDeviceMap(m, p).dump();
}

BlockPlacement G(int d) { return {d, Tier::kGpu}; }
BlockPlacement C(int d) { return {d, Tier::kCpu}; }
BlockPlacement D(int d) { return {d, Tier::kDisk}; }

TEST(PlacementRegistryTest, BuiltinsAndCustom) {
  std::vector<std::string> names = ListPlacementStrategies();
  for (const char* n : {"auto", "explicit", "sequential"}) {
    EXPECT_NE(std::find(names.begin(), names.end(), n), names.end()) << n;
  }
  EXPECT_EQ(std::string(kDefaultPlacementStrategy), "auto");
  Result<std::unique_ptr<PlacementStrategy>> bad = MakePlacementStrategy("greedy");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message.find("\"greedy\""), std::string::npos);
  EXPECT_NE(bad.error().message.find("auto, explicit, sequential"), std::string::npos) << bad.error().message;

  class AllOnFirstGpu : public PlacementStrategy {
   public:
    std::string name() const override { return "first_gpu"; }
    std::string description() const override { return "everything resident on the lowest GPU"; }
    Result<Placement> Place(const PlacementRequest& r) const override {
      return FinishPlacement(r, name(), std::vector<BlockPlacement>(r.model->blocks.size(), G(r.budget.gpus.begin()->first)));
    }
  };
  ASSERT_TRUE(RegisterPlacementStrategy("first_gpu", [] { return std::make_unique<AllOnFirstGpu>(); }).ok());
  EXPECT_FALSE(RegisterPlacementStrategy("first_gpu", [] { return std::make_unique<AllOnFirstGpu>(); }).ok());
  EXPECT_FALSE(RegisterPlacementStrategy("", [] { return std::make_unique<AllOnFirstGpu>(); }).ok());
  ModelDescription m = SyntheticModel(kMiB, {kMiB}, kMiB, kMiB);
  Result<Placement> p = PlaceModel("first_gpu", Request(m, Budget({{3, 4 * kGiB}})));
  ASSERT_TRUE(p.ok()) << p.error().ToString();
  EXPECT_EQ(p->strategy, "first_gpu");
  EXPECT_EQ(p->blocks[0], G(3));
  ASSERT_EQ(p->usage.size(), 1u);
  EXPECT_EQ(p->usage[0].device, "cuda:3");
  EXPECT_EQ(p->usage[0].resident_weights, 4 * kMiB);
}

// ---- sequential ----

// Expected maps are what Accelerate 1.15's infer_auto_device_map returns for an nn.Module tree of the same shape and
// sizes (no_split_module_classes = the layer class). GPU 0 keeps room for the largest layer (100 MiB); "model"
// (301 MiB) does not fit in 300 - 100 and is split, then "model.layers"; layer 2 goes to GPU 1, where the lm_head
// also lands.
TEST(SequentialTest, AccelerateDecisions) {
  ModelDescription m = SyntheticModel(100 * kMiB, {50 * kMiB, 50 * kMiB, 50 * kMiB, 50 * kMiB}, kMiB, 100 * kMiB);
  PlacementRequest r = Request(m, Budget({{0, 300 * kMiB}, {1, 300 * kMiB}}, 200 * kMiB));
  r.options.enforce_budget = false;
  Result<Placement> p = PlaceModel("sequential", r);
  ASSERT_TRUE(p.ok()) << p.error().ToString();
  EXPECT_EQ(p->blocks, (std::vector<BlockPlacement>{G(0), G(0), G(0), G(1), G(1), G(1), G(1)})) << Describe(m, p->blocks);

  // GPU 1 smaller: layer 3, the norm and the lm_head spill to cpu, which keeps room for the largest remaining layer
  // (100 MiB, until the lm_head itself is placed: then nothing is left to reserve for). Offloaded blocks are computed
  // on the main GPU (0).
  r.budget = Budget({{0, 300 * kMiB}, {1, 60 * kMiB}}, 200 * kMiB);
  p = PlaceModel("sequential", r);
  ASSERT_TRUE(p.ok()) << p.error().ToString();
  EXPECT_EQ(p->blocks, (std::vector<BlockPlacement>{G(0), G(0), G(0), G(1), C(0), C(0), C(0)})) << Describe(m, p->blocks);

  // Everything fits at once on GPU 0 (with the largest-layer reserve): one module, "model" + "lm_head".
  r.budget = Budget({{0, 501 * kMiB + 100 * kMiB}});
  p = PlaceModel("sequential", r);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->blocks, std::vector<BlockPlacement>(7, G(0)));

  // No GPU: the CPU computes; "cpu" blocks are resident in host memory, the rest on disk.
  r.budget = Budget({}, 300 * kMiB);
  p = PlaceModel("sequential", r);
  ASSERT_TRUE(p.ok()) << p.error().ToString();
  EXPECT_EQ(p->blocks, (std::vector<BlockPlacement>{G(-1), G(-1), G(-1), D(-1), D(-1), D(-1), D(-1)})) << Describe(m, p->blocks);
}

TEST(SequentialTest, TiedHeadFollowsTheEmbedding) {
  // lm_head reads the embedding; Accelerate places it with the module that owns the tied weight.
  ModelDescription m = SyntheticModel(100 * kMiB, {50 * kMiB, 50 * kMiB, 50 * kMiB}, kMiB, 0, /*tied=*/true);
  PlacementRequest r = Request(m, Budget({{0, 200 * kMiB}}, 150 * kMiB));
  r.options.enforce_budget = false;
  Result<Placement> p = PlaceModel("sequential", r);
  ASSERT_TRUE(p.ok()) << p.error().ToString();
  // GPU 0 keeps 50 MiB for a layer: the embedding with the lm_head, and one layer; the rest on cpu.
  EXPECT_EQ(p->blocks, (std::vector<BlockPlacement>{G(0), G(0), C(0), C(0), C(0), G(0)})) << Describe(m, p->blocks);
}

TEST(SequentialTest, EnforcedBudgetReportsTheShortDevice) {
  ModelDescription m = SyntheticModel(100 * kMiB, {50 * kMiB, 50 * kMiB}, kMiB, 100 * kMiB);
  // Accelerate's weights-only budget fits everything on GPU 0, but bigplan also counts the reserve and more.
  PlacementRequest r = Request(m, Budget({{0, 400 * kMiB}}));
  Result<Placement> p = PlaceModel("sequential", r);
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.error().code, ErrorCode::kInfeasible);
  EXPECT_NE(p.error().message.find("cuda:0 needs"), std::string::npos) << p.error().message;
  EXPECT_NE(p.error().message.find("reserve 320.00 MiB"), std::string::npos) << p.error().message;
  EXPECT_NE(p.error().message.find("but its budget is 400.00 MiB: short by"), std::string::npos) << p.error().message;
  r.budget.gpus[0] = 2 * kGiB;
  p = PlaceModel("sequential", r);
  ASSERT_TRUE(p.ok()) << p.error().ToString();
  EXPECT_EQ(p->usage[0].resident_weights, 301 * kMiB);
  EXPECT_EQ(p->usage[0].workspace_reserve, GpuWorkspaceReserveBytes());
}

// ---- explicit and device maps ----

TEST(ExplicitTest, ExpandsModuleKeys) {
  ModelDescription m = SyntheticModel(kMiB, {kMiB, kMiB, kMiB}, kMiB, kMiB);
  PlacementRequest r = Request(m, Budget({{0, 4 * kGiB}, {1, 4 * kGiB}}, 4 * kGiB));
  r.options.device_map = nlohmann::json::parse(
      R"({"model": 1, "model.embed_tokens": "cuda:0", "model.layers.2": "disk", "model.norm": "cpu",
          "lm_head": "1", "model.rotary_emb": 0})");
  Result<Placement> p = PlaceModel("explicit", r);
  ASSERT_TRUE(p.ok()) << p.error().ToString();
  // Offloaded blocks are computed on the main GPU: the GPU of the first GPU-placed block (0).
  EXPECT_EQ(p->blocks, (std::vector<BlockPlacement>{G(0), G(1), G(1), D(0), C(0), G(1)}));
  EXPECT_EQ(PlacementToDeviceMap(m, p->blocks).dump(),
            R"({"model.embed_tokens":0,"model.layers.0":1,"model.layers.1":1,"model.layers.2":"disk","model.norm":"cpu","lm_head":1})");

  r.options.device_map = nlohmann::json::parse(R"({"": "cpu"})");
  p = PlaceModel("explicit", r);
  ASSERT_TRUE(p.ok()) << p.error().ToString();
  EXPECT_EQ(p->blocks, std::vector<BlockPlacement>(6, G(-1)));  // no block on a GPU: the CPU computes
}

TEST(ExplicitTest, Errors) {
  ModelDescription m = SyntheticModel(kMiB, {kMiB, kMiB}, kMiB, kMiB);
  PlacementRequest r = Request(m, Budget({{0, 4 * kGiB}}, 4 * kGiB));
  struct Case {
    const char* map;
    const char* message;
  } cases[] = {
      {R"({"model": 0, "lm_head": 0, "model.decoder": 0})", "unknown module \"model.decoder\""},
      {R"({"model": 0})", "block \"lm_head\" is not covered"},
      {R"({"": 0, "model.layers.0.mlp": "cpu"})", "\"model.layers.0.mlp\" is inside block \"model.layers.0\""},
      {R"({"": 1})", "cuda:1, which has no budget"},
      {R"({"": "meta"})", "bad device \"meta\""},
      {R"({"": -1})", "bad device -1"},
      {R"([0])", "expected a JSON object"},
  };
  for (const Case& c : cases) {
    r.options.device_map = nlohmann::json::parse(c.map);
    Result<Placement> p = PlaceModel("explicit", r);
    ASSERT_FALSE(p.ok()) << c.map;
    EXPECT_EQ(p.error().code, ErrorCode::kInvalidArgument);
    EXPECT_NE(p.error().message.find(c.message), std::string::npos) << p.error().message;
  }
  r.options.device_map = nullptr;
  EXPECT_FALSE(PlaceModel("explicit", r).ok());
}

// ---- auto ----

TEST(AutoTest, EverythingResidentWhenItFits) {
  ModelDescription m = SyntheticModel(100 * kMiB, std::vector<uint64_t>(8, 50 * kMiB), kMiB, 100 * kMiB);
  PlacementRequest r = Request(m, {});
  r.budget = Budget({{0, Overhead(r, 0, m.blocks.size()) + 601 * kMiB}});
  Result<Placement> p = PlaceModel("auto", r);
  ASSERT_TRUE(p.ok()) << p.error().ToString();
  EXPECT_EQ(p->blocks, std::vector<BlockPlacement>(m.blocks.size(), G(0)));
  EXPECT_EQ(p->usage[0].total, p->usage[0].budget);
  EXPECT_EQ(p->usage[0].staging, 0u);
}

TEST(AutoTest, MaximizesResidentBytesAndSpreadsStreamedBlocks) {
  ModelDescription m = SyntheticModel(100 * kMiB, std::vector<uint64_t>(8, 50 * kMiB), kMiB, 100 * kMiB);
  PlacementRequest r = Request(m, {});
  // 400 MiB for weights and staging. Streaming a 100 MiB block would cost 2 x 100 MiB of staging (prefetch depth
  // 1), leaving 200 resident; streaming only layers and the norm costs 2 x 50, leaving 300 resident: the embedding,
  // the lm_head and two layers, spread out.
  r.budget = Budget({{0, Overhead(r, 0, m.blocks.size()) + 400 * kMiB}}, 4 * kGiB);
  Result<Placement> p = PlaceModel("auto", r);
  ASSERT_TRUE(p.ok()) << p.error().ToString();
  EXPECT_EQ(p->blocks, (std::vector<BlockPlacement>{G(0), C(0), G(0), C(0), C(0), C(0), G(0), C(0), C(0), C(0), G(0)}))
      << Describe(m, p->blocks);
  EXPECT_EQ(p->usage[0].resident_weights, 300 * kMiB);
  EXPECT_EQ(p->usage[0].staging, 100 * kMiB);
  EXPECT_EQ(p->usage[0].total, p->usage[0].budget);
  EXPECT_EQ(p->usage[1].device, "cpu");
  EXPECT_EQ(p->usage[1].resident_weights, 301 * kMiB);

  // With prefetch depth 2 there are three staging buffers: 3 x 50 MiB, so one layer fewer stays resident.
  r.options.prefetch_depth = 2;
  p = PlaceModel("auto", r);
  ASSERT_TRUE(p.ok()) << p.error().ToString();
  EXPECT_EQ(p->usage[0].resident_weights, 250 * kMiB);
  EXPECT_EQ(p->usage[0].staging, 150 * kMiB);
}

// Brute force over every contiguous split of the blocks over the GPUs and every resident subset: auto must reach
// the maximum resident bytes that bigplan's own accounting allows.
TEST(AutoTest, OptimalAgainstBruteForce) {
  std::mt19937 rng(1234);
  const uint64_t sizes[] = {0, 1, 3, 8, 20, 33, 50};
  int checked = 0;
  for (int trial = 0; trial < 60; ++trial) {
    const size_t n_layers = 2 + rng() % 5;
    std::vector<uint64_t> layers(n_layers, sizes[2 + rng() % 5] * kMiB);
    if (rng() % 3 == 0) layers[rng() % n_layers] = sizes[rng() % 7] * kMiB;
    ModelDescription m = SyntheticModel(sizes[1 + rng() % 6] * kMiB, layers, sizes[rng() % 3] * kMiB, sizes[1 + rng() % 6] * kMiB);
    const size_t n = m.blocks.size();
    const int n_gpus = 1 + trial % 2;
    PlacementRequest r = Request(m, {});
    r.options.prefetch_depth = rng() % 3;
    r.options.auto_candidates = "BPC";  // the contiguous candidates (S trades resident bytes for both links)
    std::map<int, uint64_t> gpus;
    for (int g = 0; g < n_gpus; ++g) gpus[g] = Overhead(r, 0, n) + (rng() % 160) * kMiB;
    r.budget = Budget(gpus, 100 * kGiB);
    // Brute force.
    uint64_t best = 0;
    bool any = false;
    for (size_t split = 0; split <= (n_gpus == 2 ? n : 0); ++split) {
      for (uint32_t mask = 0; mask < (1u << n); ++mask) {
        std::vector<BlockPlacement> blocks(n);
        uint64_t resident = 0;
        const std::vector<uint64_t> bytes = AllBlockWeightBytes(m, r.exec_dtype);
        for (size_t i = 0; i < n; ++i) {
          const int gpu = n_gpus == 2 && i >= split ? 1 : 0;
          const bool keep = mask & (1u << i);
          blocks[i] = keep ? G(gpu) : C(gpu);
          resident += keep ? bytes[i] : 0;
        }
        if (any && resident <= best) continue;
        Result<std::vector<DeviceAccount>> usage = AccountPlacement(r, blocks);
        ASSERT_TRUE(usage.ok());
        if (CheckFits(*usage).ok()) {
          best = resident;
          any = true;
        }
      }
    }
    Result<Placement> p = PlaceModel("auto", r);
    ASSERT_EQ(p.ok(), any) << "trial " << trial << (p.ok() ? "" : ": " + p.error().ToString());
    if (!any) continue;
    uint64_t resident = 0;
    for (const DeviceAccount& a : p->usage) {
      if (a.device != "cpu" && a.device != "disk") resident += a.resident_weights;
    }
    EXPECT_EQ(resident, best) << "trial " << trial << ": " << Describe(m, p->blocks);
    ++checked;
  }
  EXPECT_GT(checked, 30);
}

TEST(AutoTest, BalancesAcrossGpus) {
  ModelDescription m = SyntheticModel(10 * kMiB, std::vector<uint64_t>(8, 50 * kMiB), kMiB, 10 * kMiB);
  PlacementRequest r = Request(m, Budget({{0, 2 * kGiB}, {1, 2 * kGiB}}));
  Result<Placement> p = PlaceModel("auto", r);
  ASSERT_TRUE(p.ok()) << p.error().ToString();
  EXPECT_EQ(p->usage[0].resident_weights, 210 * kMiB) << Describe(m, p->blocks);  // embedding + 4 layers
  EXPECT_EQ(p->usage[1].resident_weights, 211 * kMiB);                           // 4 layers + norm + lm_head
  for (const BlockPlacement& b : p->blocks) EXPECT_EQ(b.tier, Tier::kGpu);
}

TEST(AutoTest, CpuBeforeDisk) {
  ModelDescription m = SyntheticModel(10 * kMiB, std::vector<uint64_t>(6, 50 * kMiB), kMiB, 10 * kMiB);
  PlacementRequest r = Request(m, {});
  // The GPU holds only the ring (2 x 50) plus 21 MiB: the embedding, the norm and the lm_head.
  // The cpu holds 280 MiB: with the pinned disk ring (2 slots of a 50 MiB weight + 4 KiB) too, three layers fit in
  // the CPU tier, the first in execution order.
  r.budget = Budget({{0, Overhead(r, 0, m.blocks.size()) + 121 * kMiB}}, 280 * kMiB);
  Result<Placement> p = PlaceModel("auto", r);
  ASSERT_TRUE(p.ok()) << p.error().ToString();
  EXPECT_EQ(p->blocks, (std::vector<BlockPlacement>{G(0), C(0), C(0), C(0), D(0), D(0), D(0), G(0), G(0)}))
      << Describe(m, p->blocks);
  const DeviceAccount& cpu = p->usage[1];
  EXPECT_EQ(cpu.device, "cpu");
  EXPECT_EQ(cpu.resident_weights, 150 * kMiB);
  EXPECT_EQ(cpu.staging, 2 * (50 * kMiB + 4096));
  EXPECT_EQ(p->usage[2].device, "disk");
  EXPECT_EQ(p->usage[2].resident_weights, 150 * kMiB);

  // A disk budget too small for the rest: infeasible, naming disk.
  r.budget.disk = 100 * kMiB;
  p = PlaceModel("auto", r);
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.error().code, ErrorCode::kInfeasible);
  EXPECT_NE(p.error().message.find("disk needs 150.00 MiB"), std::string::npos) << p.error().message;
  EXPECT_NE(p.error().message.find("short by 50.00 MiB"), std::string::npos) << p.error().message;
}

TEST(AutoTest, InfeasibleNamesTheDevice) {
  ModelDescription m = SyntheticModel(10 * kMiB, std::vector<uint64_t>(4, 50 * kMiB), kMiB, 10 * kMiB);
  PlacementRequest r = Request(m, Budget({{0, 200 * kMiB}}, 4 * kGiB));
  Result<Placement> p = PlaceModel("auto", r);
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.error().code, ErrorCode::kInfeasible);
  EXPECT_NE(p.error().message.find("even with every block streamed, cuda:0 needs"), std::string::npos) << p.error().message;
  EXPECT_NE(p.error().message.find("staging 100.00 MiB"), std::string::npos) << p.error().message;
  EXPECT_NE(p.error().message.find("reserve 320.00 MiB"), std::string::npos) << p.error().message;
  EXPECT_NE(p.error().message.find("but its budget is 200.00 MiB: short by"), std::string::npos) << p.error().message;

  // Nowhere to stream from: no cpu budget means no pinned memory for disk staging.
  r.budget = Budget({{0, Overhead(r, 0, m.blocks.size()) + 150 * kMiB}});
  p = PlaceModel("auto", r);
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.error().code, ErrorCode::kInfeasible);
  EXPECT_NE(p.error().message.find("cpu needs"), std::string::npos) << p.error().message;
}

TEST(AutoTest, CpuOnly) {
  ModelDescription m = SyntheticModel(10 * kMiB, std::vector<uint64_t>(4, 50 * kMiB), kMiB, 10 * kMiB);
  PlacementRequest r = Request(m, Budget({}, 4 * kGiB));
  Result<Placement> p = PlaceModel("auto", r);
  ASSERT_TRUE(p.ok()) << p.error().ToString();
  EXPECT_EQ(p->blocks, std::vector<BlockPlacement>(m.blocks.size(), G(-1)));
  ASSERT_EQ(p->usage.size(), 1u);
  EXPECT_EQ(p->usage[0].device, "cpu");
  EXPECT_EQ(p->usage[0].resident_weights, 221 * kMiB);
  EXPECT_GT(p->usage[0].kv_cache, 0u);
  EXPECT_GT(p->usage[0].activations, 0u);
}

TEST(AutoTest, RequestChecks) {
  ModelDescription m = SyntheticModel(kMiB, {kMiB}, kMiB, kMiB);
  PlacementRequest r = Request(m, Budget({}));
  EXPECT_FALSE(PlaceModel("auto", r).ok());  // nothing to compute on
  r.budget = Budget({{0, kGiB}});
  r.run.max_seq_len = 65;  // above max_position_embeddings
  EXPECT_FALSE(PlaceModel("auto", r).ok());
  r.run.max_seq_len = 16;
  r.exec_dtype = DType::kI8;
  EXPECT_FALSE(PlaceModel("auto", r).ok());
  r.model = nullptr;
  EXPECT_FALSE(PlaceModel("auto", r).ok());
}

// ---- bundled examples ----

TEST(ExamplesTest, Llama2OnOneSmallGpu) {
  Result<ModelDescription> m = ImportExample(Root() + "planner/examples/llama-2-7b");
  ASSERT_TRUE(m.ok());
  PlacementRequest r;
  r.model = &*m;
  r.budget = *ParseMaxMemory("cuda:0=8GiB,cpu=30GiB");
  r.run = RunShape{1, 2048};
  r.exec_dtype = DType::kF16;
  Result<Placement> a = PlaceModel("auto", r);
  ASSERT_TRUE(a.ok()) << a.error().ToString();
  ASSERT_TRUE(CheckFits(a->usage).ok());
  // Partially resident blocks hold more than whole ones: candidate P wins over B.
  ASSERT_EQ(a->candidates.size(), 3u);
  EXPECT_EQ(a->chosen, "P");
  EXPECT_TRUE(a->candidates[0].feasible);
  EXPECT_GT(a->candidates[1].resident_bytes, a->candidates[0].resident_bytes);
  size_t partial = 0;
  for (const BlockPlacement& b : a->blocks) {
    EXPECT_EQ(b.device, 0);
    partial += !b.weight_tiers.empty();
  }
  EXPECT_GT(partial, 0u);
  EXPECT_GT(a->usage[0].resident_weights, 4 * kGiB);
  EXPECT_LE(a->usage[0].total, 8 * kGiB);

  // Accelerate's max_memory counts weights only: its decisions fill the GPU with weights, which does not leave
  // room for the KV cache, activations, staging and reserve that bigplan accounts for.
  Result<Placement> q = PlaceModel("sequential", r);
  ASSERT_FALSE(q.ok());
  EXPECT_EQ(q.error().code, ErrorCode::kInfeasible);
  EXPECT_NE(q.error().message.find("cuda:0 needs"), std::string::npos);
  r.options.enforce_budget = false;
  q = PlaceModel("sequential", r);
  ASSERT_TRUE(q.ok());
  EXPECT_GT(q->usage[0].resident_weights, a->usage[0].resident_weights);
  EXPECT_GT(q->usage[0].total, 8 * kGiB);
}

// Llama-2-7B at 6 GiB: partially resident blocks (each layer streams the subset of its weights closest to a common
// cap, the rest stays resident) keep more bytes on the GPU than whole-block residency with its 2 x 386 MiB ring.
TEST(ExamplesTest, Llama2At6GiBKeepsPartsOfEveryLayer) {
  Result<ModelDescription> m = ImportExample(Root() + "planner/examples/llama-2-7b");
  ASSERT_TRUE(m.ok());
  PlacementRequest r;
  r.model = &*m;
  r.budget = *ParseMaxMemory("cuda:0=6GiB,cpu=30GiB");
  r.run = RunShape{1, 512};
  r.exec_dtype = DType::kBF16;
  Result<Placement> a = PlaceModel("auto", r);
  ASSERT_TRUE(a.ok()) << a.error().ToString();
  ASSERT_EQ(a->candidates.size(), 3u);
  const PlacementCandidate &b = a->candidates[0], &p = a->candidates[1], &c = a->candidates[2];
  EXPECT_EQ(b.name, "B");
  ASSERT_TRUE(b.feasible) << b.why;
  ASSERT_TRUE(p.feasible) << p.why;
  EXPECT_GT(p.resident_bytes, b.resident_bytes);
  if (c.feasible) {
    EXPECT_LT(c.resident_bytes, p.resident_bytes);
  }
  EXPECT_EQ(a->chosen, "P");
  EXPECT_EQ(a->usage[0].resident_weights, p.resident_bytes);
  ASSERT_TRUE(CheckFits(a->usage).ok());
  // Partial blocks: some weights resident, the rest in the cpu tier; the block's tier is the slowest.
  size_t partial = 0;
  for (size_t i = 0; i < a->blocks.size(); ++i) {
    const BlockPlacement& bp = a->blocks[i];
    if (bp.weight_tiers.empty()) continue;
    ++partial;
    EXPECT_EQ(bp.tier, Tier::kCpu);
    EXPECT_EQ(bp.weight_tiers.size(), LayoutBlockWeights(*m, i, r.exec_dtype).weights.size());
    EXPECT_NE(std::count(bp.weight_tiers.begin(), bp.weight_tiers.end(), Tier::kGpu), 0);
  }
  EXPECT_GE(partial, 30u);
  // The ring is two slots of the largest block's stream, and the stream builder lays it out so.
  const std::vector<StreamWeight> streamed = StreamWeightsFor(*m, a->blocks, r.exec_dtype, 0);
  ASSERT_EQ(a->ring_bytes.count(0), 1u);
  EXPECT_EQ(a->ring_bytes.at(0), 2 * LargestBlockStream(streamed));
  Result<DeviceStreamPlan> st = BuildDeviceStream(0, streamed, {.ring_bytes = a->ring_bytes.at(0)});
  ASSERT_TRUE(st.ok()) << st.error().ToString();
  EXPECT_EQ(st->layout, "slots");
  // Restricted to B, auto gives the block-granular result.
  r.options.auto_candidates = "B";
  Result<Placement> only_b = PlaceModel("auto", r);
  ASSERT_TRUE(only_b.ok()) << only_b.error().ToString();
  EXPECT_EQ(only_b->chosen, "B");
  EXPECT_EQ(only_b->usage[0].resident_weights, b.resident_bytes);
  for (const BlockPlacement& bp : only_b->blocks) EXPECT_TRUE(bp.weight_tiers.empty());
}

// A Llama-3.1-405B-shaped model (4 layers of 6.4 GB, embedding and lm_head of 4.2 GB) at cuda:0=4GiB: no block, and
// not even the embedding, fits half of a slots ring, so only chunked streaming (candidate C) plans it.
TEST(ExamplesTest, LayersLargerThanTheGpuStreamInChunks) {
  Result<ModelDescription> m = ImportExample(Root() + "planner/testdata/configs/llama-3.1-405b-4layers");
  ASSERT_TRUE(m.ok()) << m.error().ToString();
  PlacementRequest r;
  r.model = &*m;
  r.budget = *ParseMaxMemory("cuda:0=4GiB,cpu=200GiB");
  r.run = RunShape{1, 1024};
  r.exec_dtype = DType::kBF16;
  Result<Placement> a = PlaceModel("auto", r);
  ASSERT_TRUE(a.ok()) << a.error().ToString();
  ASSERT_EQ(a->candidates.size(), 3u);
  EXPECT_FALSE(a->candidates[0].feasible);
  EXPECT_FALSE(a->candidates[1].feasible);
  EXPECT_TRUE(a->candidates[2].feasible) << a->candidates[2].why;
  EXPECT_EQ(a->chosen, "C");
  ASSERT_TRUE(CheckFits(a->usage).ok());
  const uint64_t ring = a->ring_bytes.at(0);
  EXPECT_GE(ring, 256 * kMiB);
  EXPECT_LE(ring, 2 * kGiB);
  EXPECT_EQ(a->chunk_bytes.at(0), ring / 8 / 256 * 256);
  EXPECT_EQ(a->usage[0].staging, ring);
  EXPECT_GT(a->usage[0].resident_weights, kGiB);  // what the ring leaves is filled with whole weights
  for (const BlockPlacement& bp : a->blocks) {
    for (Tier t : WeightTiersOf(bp, 16)) EXPECT_NE(t, Tier::kDisk);  // 200 GiB of cpu holds every streamed byte
  }
  const std::vector<StreamWeight> streamed = StreamWeightsFor(*m, a->blocks, r.exec_dtype, 0);
  Result<DeviceStreamPlan> st =
      BuildDeviceStream(0, streamed, {.ring_bytes = ring, .chunk_bytes = a->chunk_bytes.at(0)});
  ASSERT_TRUE(st.ok()) << st.error().ToString();
  EXPECT_EQ(st->layout, "chunks");
  EXPECT_LE(st->ring_bytes, ring);
}

// Auto never exceeds a budget: over a sweep of models and budgets, every placement it returns fits by an
// independent re-accounting with its rings, and its rings hold its streams. It never fails where candidate B alone
// succeeds, and keeps at least B's resident bytes.
TEST(ExamplesTest, AutoNeverExceedsABudget) {
  int planned = 0;
  for (const char* dir : {"planner/examples/llama-2-7b", "planner/examples/gpt-j-6b",
                          "planner/testdata/configs/llama-3.1-405b-4layers"}) {
    Result<ModelDescription> m = ImportExample(Root() + dir);
    ASSERT_TRUE(m.ok()) << dir;
    for (const char* gpus : {"cuda:0=3GiB", "cuda:0=5GiB", "cuda:0=9GiB", "0=3GiB,1=4GiB"}) {
      for (const char* cpu : {"cpu=8GiB", "cpu=64GiB"}) {
        PlacementRequest r;
        r.model = &*m;
        r.budget = *ParseMaxMemory(std::string(gpus) + "," + cpu);
        r.run = RunShape{1, 512};
        r.exec_dtype = DType::kBF16;
        const std::string where = std::string(dir) + " at " + gpus + "," + cpu;
        Result<Placement> a = PlaceModel("auto", r);
        PlacementRequest only_b = r;
        only_b.options.auto_candidates = "B";
        Result<Placement> b = PlaceModel("auto", only_b);
        if (b.ok()) {
          ASSERT_TRUE(a.ok()) << where << ": " << a.error().ToString();
          uint64_t ra = 0, rb = 0;
          for (const DeviceAccount& d : a->usage) ra += d.device.rfind("cuda:", 0) == 0 ? d.resident_weights : 0;
          for (const DeviceAccount& d : b->usage) rb += d.device.rfind("cuda:", 0) == 0 ? d.resident_weights : 0;
          if (a->chosen == "S") {
            // Striped trades resident bytes for links that stream at once: its busiest link copies less than B's
            // GPUs together.
            auto link_bytes = [&](const Placement& p, bool max) {
              uint64_t worst = 0, sum = 0;
              for (const auto& [device, ring] : p.ring_bytes) {
                uint64_t bytes = 0;
                for (const StreamWeight& w : StreamWeightsFor(*m, p.blocks, r.exec_dtype, device)) bytes += w.bytes;
                worst = std::max(worst, bytes);
                sum += bytes;
              }
              return max ? worst : sum;
            };
            EXPECT_LT(link_bytes(*a, true), link_bytes(*b, false)) << where;
          } else {
            EXPECT_GE(ra, rb) << where;
          }
        }
        if (!a.ok()) {
          EXPECT_EQ(a.error().code, ErrorCode::kInfeasible) << where;
          continue;
        }
        ++planned;
        Result<std::vector<DeviceAccount>> again = AccountPlacement(r, a->blocks, a->ring_bytes);
        ASSERT_TRUE(again.ok()) << where;
        EXPECT_TRUE(CheckFits(*again).ok()) << where << ": " << CheckFits(*again).error().message;
        for (const DeviceAccount& d : *again) EXPECT_LE(d.total, d.unlimited ? d.total : d.budget) << where;
        for (const auto& [device, ring] : a->ring_bytes) {
          const std::vector<StreamWeight> ws = StreamWeightsFor(*m, a->blocks, r.exec_dtype, device);
          StreamOptions so{.ring_bytes = ring};
          if (a->chunk_bytes.count(device)) so.chunk_bytes = a->chunk_bytes.at(device);
          Result<DeviceStreamPlan> st = BuildDeviceStream(device, ws, so);
          ASSERT_TRUE(st.ok()) << where << ": " << st.error().ToString();
          EXPECT_LE(st->ring_bytes, ring) << where;
          EXPECT_LE(st->disk_ring_bytes, DiskRingBytes(ws, device)) << where;
        }
      }
    }
  }
  // 405B-shaped at cpu=8GiB is infeasible: its pinned disk ring holds 4 slots of a 4.2 GB embedding-sized weight.
  EXPECT_GE(planned, 20);
}

TEST(ExamplesTest, Llama405BOnEightGpusIsFast) {
  Result<ModelDescription> m = ImportExample(Root() + "planner/examples/llama-3.1-405b");
  ASSERT_TRUE(m.ok());
  PlacementRequest r;
  r.model = &*m;
  r.budget = *ParseMaxMemory("0=80GiB,1=80GiB,2=80GiB,3=80GiB,4=80GiB,5=80GiB,6=80GiB,7=80GiB,cpu=1TiB");
  r.run = RunShape{1, 4096};
  r.exec_dtype = DType::kBF16;
  const auto start = std::chrono::steady_clock::now();
  Result<Placement> p = PlaceModel("auto", r);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ASSERT_TRUE(p.ok()) << p.error().ToString();
  EXPECT_LT(seconds, 5.0);
  std::set<int> gpus;
  uint64_t resident = 0;
  for (const BlockPlacement& b : p->blocks) gpus.insert(b.device);
  for (const DeviceAccount& a : p->usage) {
    if (a.device.rfind("cuda:", 0) == 0) resident += a.resident_weights;
  }
  gpus.erase(-1);  // the striped candidate's token embedding, computed by the host
  EXPECT_EQ(gpus.size(), 8u);
  // 8 x 80 GiB minus, per GPU, the reserve, ~16 layers of KV cache and the activations (fp32 attention scores of
  // 4096^2 x 128 heads alone are 8 GiB), and with the layers striped over the GPUs (so all eight links stream at
  // once) a ring per GPU.
  EXPECT_EQ(p->chosen, "S");
  EXPECT_GT(resident, 400 * kGiB);
  PlacementRequest contiguous = r;
  contiguous.options.auto_candidates = "BPC";
  Result<Placement> c = PlaceModel("auto", contiguous);
  ASSERT_TRUE(c.ok()) << c.error().ToString();
  uint64_t busiest = 0, together = 0;
  for (const auto& [device, ring] : p->ring_bytes) {
    uint64_t bytes = 0;
    for (const StreamWeight& w : StreamWeightsFor(*m, p->blocks, r.exec_dtype, device)) bytes += w.bytes;
    busiest = std::max(busiest, bytes);
  }
  for (const auto& [device, ring] : c->ring_bytes)
    for (const StreamWeight& w : StreamWeightsFor(*m, c->blocks, r.exec_dtype, device)) together += w.bytes;
  EXPECT_LT(busiest * 2, together);  // a forward's copies at least twice as fast
}

// A prefetch's expected hits are copied before the router; the host's share applies to the other non-resident
// chosen experts; a hit never exceeds what the router chooses off the GPU; no prefetch changes nothing.
TEST(ExpertBytesTest, WithPrefetch) {
  ExpertBytes b;
  b.resident = 10;
  b.copied = 60;  // share 0.4 of 100 non-resident bytes on the host
  b.host = 40;
  const ExpertBytes none = WithPrefetch(b, 0.4, 0, 20);
  EXPECT_DOUBLE_EQ(none.copied, 60);
  EXPECT_DOUBLE_EQ(none.host, 40);
  EXPECT_DOUBLE_EQ(none.prefetched, 0);
  const ExpertBytes one = WithPrefetch(b, 0.4, 1, 20);
  const double hit = kExpertPrefetchHitRate * 20;
  EXPECT_DOUBLE_EQ(one.prefetched, hit);
  EXPECT_DOUBLE_EQ(one.host, 0.4 * (100 - hit));
  EXPECT_DOUBLE_EQ(one.copied + one.host, 100);
  EXPECT_DOUBLE_EQ(one.resident, 10);
  const ExpertBytes many = WithPrefetch(b, 0.4, 8, 20);
  EXPECT_DOUBLE_EQ(many.prefetched, 100);
  EXPECT_DOUBLE_EQ(many.host, 0);
  EXPECT_DOUBLE_EQ(many.copied, 100);
  // Disk-resting experts are neither computed by the host nor prefetched: 50 pinned bytes (20 on the host at share
  // 0.4) and 50 on disk.
  ExpertBytes d;
  d.copied = 80;
  d.host = 20;
  d.disk = 50;
  const ExpertBytes all = WithPrefetch(d, 0.4, 8, 20);
  EXPECT_DOUBLE_EQ(all.prefetched, 50);
  EXPECT_DOUBLE_EQ(all.host, 0);
  EXPECT_DOUBLE_EQ(all.copied, 100);
  EXPECT_DOUBLE_EQ(all.disk, 50);
}

// A layer's expected prefetches: none for its GPU's first routed layer; else the pinned-resting ones among the
// prediction's top max(prefetch, k) candidates, at most `prefetch`; with every expert pinned, all of them.
TEST(ExpertBytesTest, ExpectedPrefetches) {
  ExpertBytes b;
  b.experts = 8;
  b.pinned_experts = 8;
  EXPECT_DOUBLE_EQ(ExpectedPrefetches(b, 2, 1, /*previous_routed=*/false), 0.0);
  EXPECT_DOUBLE_EQ(ExpectedPrefetches(b, 2, 0, true), 0.0);
  EXPECT_NEAR(ExpectedPrefetches(b, 2, 1, true), 1.0, 1e-12);
  EXPECT_NEAR(ExpectedPrefetches(b, 2, 2, true), 2.0, 1e-12);
  // 4 of 8 pinned, 2 candidates for one prefetch: none pinned with chance C(4,2)/C(8,2) = 6/28.
  b.pinned_experts = 4;
  EXPECT_NEAR(ExpectedPrefetches(b, 2, 1, true), 1.0 - 6.0 / 28, 1e-12);
  // Two prefetches: the expected pinned count among the 2 candidates, 2 x 4/8.
  EXPECT_NEAR(ExpectedPrefetches(b, 2, 2, true), 1.0, 1e-12);
  b.pinned_experts = 0;
  EXPECT_DOUBLE_EQ(ExpectedPrefetches(b, 2, 1, true), 0.0);
}

// Whole experts: the host takes round(share x n) of n chosen ones, halves up; the chances of n of k choices among a
// subset are hypergeometric and sum to 1.
TEST(ExpertBytesTest, WholeExpertsAndChoiceCounts) {
  EXPECT_EQ(HostWholeExperts(0.5, 1), 1u);
  EXPECT_EQ(HostWholeExperts(0.4, 1), 0u);
  EXPECT_EQ(HostWholeExperts(0.6, 2), 1u);
  EXPECT_EQ(HostWholeExperts(0.65, 8), 5u);
  EXPECT_EQ(HostWholeExperts(1.0, 3), 3u);
  EXPECT_EQ(HostWholeExperts(0.0, 3), 0u);
  // 2 of 8 choices among 5: P(0) = C(3,2)/C(8,2) = 3/28, P(1) = 5 x 3/28, P(2) = C(5,2)/28 = 10/28.
  EXPECT_NEAR(ChoiceCountChance(8, 5, 2, 0), 3.0 / 28, 1e-12);
  EXPECT_NEAR(ChoiceCountChance(8, 5, 2, 1), 15.0 / 28, 1e-12);
  EXPECT_NEAR(ChoiceCountChance(8, 5, 2, 2), 10.0 / 28, 1e-12);
  EXPECT_EQ(ChoiceCountChance(8, 5, 2, 3), 0.0);
  double sum = 0;
  for (uint32_t n = 0; n <= 8; ++n) sum += ChoiceCountChance(128, 90, 8, n);
  EXPECT_NEAR(sum, 1.0, 1e-9);
}

}  // namespace
}  // namespace bigplan
