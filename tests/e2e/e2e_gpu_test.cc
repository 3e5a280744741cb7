// End to end on a GPU (tag "gpu"; skips without a CUDA device).
//
// 1. Every tiny family x every placement of PlanSuite on cuda:0 (plans whose blocks compute on the CPU run there),
//    compared with transformers' float32 logits (CPU) for a prefill and KV-cached decode steps:
//      float32   max|ours - transformers| / max|transformers| <= 1e-4 and the greedy tokens equal transformers'.
//                (LibTorch's default keeps TF32 off for float32 matmuls, so only summation order differs.)
//      bfloat16  max relative error <= 3e-2 against the float32 reference: bf16 keeps 8 significant bits
//                (~4e-3 relative per rounding of weights and activations), compounded over the layers; the CPU
//                suite measures 1-2e-2 for these models. Top-1 agreement >= 90% where transformers' top-1 leads by
//                more than 2% of the logit range.
//    Placement never changes the result: plans that compute on the same devices give the same tokens and logits
//    within 1e-6 relative. (Eager steps: ExecutorOptions::cuda_graphs off; part 3 covers the graphs.)
// 2. Copies overlap compute, and streaming is exact, on a model big enough for copies to take milliseconds
//    (a random bf16 Llama of ~0.9 GB written by formats/writer): CPU-tier and disk-tier plans give bit-identical
//    logits to the all-resident plan, and the recorded CUDA events show a copy running while an earlier step
//    computes. Disk-tier blocks are read with pread into pinned staging ("direct"; O_DIRECT where the filesystem
//    allows), never from the mapping, and reading them from the mapping (disk_direct_io off) gives the same bits.
//    Last-position logits match the last row of the full logits.
// 3. CUDA graphs (ExecutorOptions::cuda_graphs) on the all-resident plan of every family: decode steps are
//    replayed from a captured graph where the architecture registry says so (the Llama family and Phi-3 within
//    their length-independent RoPE range; none for GPT-2/GPT-J), still match transformers as in
//    part 1, and equal the eager steps within 1e-5 relative in float32 (same tokens) and within part 1's bf16
//    tolerance in bfloat16 (the captured step attends over the whole cache with a mask, with scores rounded to bf16
//    as transformers' eager attention, where the eager step's SDPA keeps them in float32: 0.6-1.6e-2 measured, the
//    size of either path's distance to the float32 reference); batch sizes below the captured one, a new sequence
//    after it and sampling give the eager path's tokens (float32).
// Disk reads in part 1: no plan reads a block from the mapping (no fallback); the explicit_tiers plan's disk-tier
// blocks (computed on cuda:0) are read directly in float32 (no cast) and through the bounce buffer in bfloat16
// (cast from the float32 checkpoint).
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <set>

#include <nlohmann/json.hpp>

#include "arch/registry.h"
#include "executor/executor.h"
#include "executor/expert_share.h"
#include "formats/writer.h"
#include "schema/plan_io.h"
#include "tests/e2e/e2e_util.h"

namespace bigplan::e2e {
namespace {

constexpr double kF32Tolerance = 1e-4;
constexpr double kBf16Tolerance = 3e-2;
constexpr double kBf16TopOne = 0.9;
constexpr double kTopOneMargin = 0.02;
constexpr double kSamePlacementTolerance = 1e-6;
// Row-chunked weights are multiplied chunk by chunk (see e2e_cpu_test.cc): bf16 plans with chunks agree with the
// others to bf16 precision, and GPU GEMMs on row slices may sum in another order than on the whole matrix.
constexpr double kChunkedBf16Tolerance = 3e-2;  // = the bf16 tolerance against transformers
constexpr double kChunkedFp32Tolerance = 1e-5;

// Loads plans[i] into exec[i] with CUDA graphs on, except for plans[eager] (eager steps).
void LoadEach(const std::vector<std::string>& plans, size_t eager, const std::string& model,
              std::unique_ptr<Executor>* exec) {
  for (size_t i = 0; i < plans.size(); ++i) {
    ExecutorOptions options;
    options.progress = false;
    options.cuda_graphs = i != eager;
    auto e = Executor::Load(plans[i], model, options);
    ASSERT_TRUE(e.ok()) << plans[i] << ": " << e.error().ToString();
    exec[i] = std::move(*e);
  }
}

class E2eGpu : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (!HaveCuda()) GTEST_SKIP() << "no CUDA device";
    if (ModelsRoot().empty()) GTEST_FAIL() << "no tiny models";
  }

  void RunSuite(const std::string& dtype, double tolerance, bool exact_tokens) {
    const std::string family = GetParam();
    const std::string model = ModelDir(family);
    auto ref = LoadReference(model);
    ASSERT_TRUE(ref.ok()) << ref.error().ToString();
    const uint32_t seq_len = SuiteSeqLen(model);
    const int64_t steps = std::min<int64_t>(ref->steps, seq_len - ref->prompt_len);
    auto plans = PlanSuite(model, TempDir(family + "_gpu_" + dtype), dtype, seq_len);
    ASSERT_TRUE(plans.ok()) << plans.error().ToString();
    // Results of the first plan of each compute-device group ("cuda" or "cpu"-only).
    std::map<std::string, std::pair<std::vector<std::vector<int64_t>>, std::vector<Logits>>> first;
    for (const PlanCase& c : *plans) {
      SCOPED_TRACE(family + " " + dtype + " " + c.name + " (" + c.max_memory + "; " + c.summary.ToString() + ")");
      ExecutorOptions options;
      options.progress = false;
      options.cuda_graphs = false;
      auto exec = Executor::Load(c.path, model, options);
      ASSERT_TRUE(exec.ok()) << exec.error().ToString();
      ASSERT_FALSE((*exec)->info().cpu_mode);
      auto errors = CompareWithReference(**exec, *ref, steps);
      ASSERT_TRUE(errors.ok()) << errors.error().ToString();
      const double top1 = TopOneAgreement(*errors, *ref, kTopOneMargin);
      EXPECT_LE(errors->max_rel, tolerance);
      if (!exact_tokens) {
        EXPECT_GE(top1, kBf16TopOne);
      }
      const Stats stats = (*exec)->stats();
      const bool on_gpu = c.summary.cpu_compute < c.summary.blocks;
      // (Routed experts move through the expert engine, not the weight stream.)
      if (on_gpu && c.summary.cpu_tier > 0) {
        EXPECT_GT(stats.cpu_tier_bytes + stats.expert_copied_bytes + stats.expert_host_bytes, 0u);
      }
      if (c.summary.disk_weights > c.summary.routed_disk) {
        EXPECT_GT(stats.disk_tier_bytes, 0u);
      }
      if (c.summary.routed_disk > 0) {
        EXPECT_GT(stats.expert_disk, 0u);
      }
      if (c.name == "routed_host" && dtype == "bf16") {
        // Decode forwards (batch 2 <= decode_max_tokens) hand half the non-resident chosen experts to the host.
        EXPECT_GT(stats.expert_host, 0u);
        EXPECT_GT(stats.expert_copied, 0u);
      }
      EXPECT_EQ(stats.disk_mmap_blocks, 0u) << "a disk-tier block was copied from the mapping";
      EXPECT_EQ(stats.disk_direct_fallbacks, 0u);
      EXPECT_EQ((*exec)->info().disk_direct_fallback_blocks, 0);
      if (c.name == "explicit_tiers" || c.name == "chunked_tiers") {
        if (dtype == "fp32") {
          EXPECT_GT(stats.disk_direct_blocks, 0u);
          EXPECT_EQ(stats.disk_bounce_blocks, 0u);
        } else {
          EXPECT_GT(stats.disk_bounce_blocks, 0u);
        }
      }
      GenerateOptions g;
      g.max_new_tokens = static_cast<int>(std::min<int64_t>(steps + 1, seq_len - ref->prompt_len));
      auto gen = (*exec)->Generate(ref->Prompts(), g);
      ASSERT_TRUE(gen.ok()) << gen.error().ToString();
      if (exact_tokens) {
        for (int64_t b = 0; b < ref->batch; ++b) {
          std::vector<int64_t> want = ref->GeneratedRow(b);
          want.resize(g.max_new_tokens);
          EXPECT_EQ(gen->tokens[b], want) << "row " << b;
        }
      }
      std::printf("%-14s %-5s %-17s %-44s max rel err %.2e (steps:", family.c_str(), dtype.c_str(), c.name.c_str(),
                  c.summary.ToString().c_str(), errors->max_rel);
      for (double e : errors->rel) std::printf(" %.1e", e);
      std::printf("), top-1 %.3f\n", top1);
      const std::string group = on_gpu ? "cuda" : "cpu";
      auto it = first.find(group);
      if (it == first.end()) {
        first[group] = {gen->tokens, errors->logits};
      } else {
        EXPECT_EQ(gen->tokens, it->second.first) << "plan " << c.name << " (" << group << ")";
        for (size_t k = 0; k < it->second.second.size(); ++k) {
          // (Routed experts the host computes sum in float32, the GPU in bf16: held to the chunked tolerances.)
          const double same = c.summary.chunk_units == 0 && c.summary.routed == 0 ? kSamePlacementTolerance
                              : dtype == "fp32"          ? kChunkedFp32Tolerance
                                                         : kChunkedBf16Tolerance;
          EXPECT_LE(MaxRelError(errors->logits[k].data, it->second.second[k].data), same)
              << "step " << k << ": plan " << c.name << " (" << group << ")";
        }
      }
    }
  }

  void RunGraphs(const std::string& dtype, double tolerance, double eager_tolerance, bool exact_tokens) {
    const std::string family = GetParam();
    const std::string model = ModelDir(family);
    auto ref = LoadReference(model);
    ASSERT_TRUE(ref.ok()) << ref.error().ToString();
    const uint32_t seq_len = SuiteSeqLen(model);
    const int64_t steps = std::min<int64_t>(ref->steps, seq_len - ref->prompt_len);
    auto plans = PlanSuite(model, TempDir(family + "_graphs_" + dtype), dtype, seq_len);
    ASSERT_TRUE(plans.ok()) << plans.error().ToString();
    const PlanCase* resident = nullptr;
    for (const PlanCase& c : *plans) {
      if (resident == nullptr && c.summary.cpu_tier == 0 && c.summary.disk_tier == 0 && c.summary.cpu_compute == 0) {
        resident = &c;
      }
    }
    ASSERT_NE(resident, nullptr) << "no all-resident plan in the suite";
    SCOPED_TRACE(family + " " + dtype + " " + resident->name);
    std::unique_ptr<Executor> exec[2];  // [0]: eager, [1]: graphs
    for (int g = 0; g < 2; ++g) {
      ExecutorOptions options;
      options.progress = false;
      options.cuda_graphs = g == 1;
      auto e = Executor::Load(resident->path, model, options);
      ASSERT_TRUE(e.ok()) << e.error().ToString();
      exec[g] = std::move(*e);
    }
    // Captured where the registry says the family has a static decode step for this run length (the Llama family
    // and Phi-3, except length-dependent RoPE past its limit: phi3_longrope's runs cross its original length).
    std::ifstream config_file(model + "/config.json");
    auto parsed = arch::ParseHfConfig(nlohmann::json::parse(config_file), model + "/config.json");
    ASSERT_TRUE(parsed.ok()) << parsed.error().ToString();
    const bool captured = arch::GraphDecodeEligible(*parsed->family, parsed->config, seq_len);
    StepErrors errors[2];
    for (int g = 0; g < 2; ++g) {
      auto e = CompareWithReference(*exec[g], *ref, steps);
      ASSERT_TRUE(e.ok()) << e.error().ToString();
      errors[g] = std::move(*e);
      EXPECT_LE(errors[g].max_rel, tolerance) << (g ? "graphs" : "eager");
      // Per-block events exist for eager steps only.
      EXPECT_EQ(exec[g]->stats().last_steps.empty(), g == 1 && captured && steps > 0);
      // Replays are counted, and nothing was captured and dropped.
      EXPECT_EQ(exec[g]->stats().graph_steps > 0, g == 1 && captured && steps > 0);
      EXPECT_EQ(exec[g]->stats().graph_capture_error, "");
      if (g == 1 && captured && steps > 0) {
        // The last step replayed graphs: the host's time to launch them is part of the step's.
        EXPECT_GT(exec[g]->stats().last_issue_ms, 0.0);
        EXPECT_LE(exec[g]->stats().last_issue_ms, exec[g]->stats().last_forward_ms);
      }
    }
    double worst = 0;
    for (size_t k = 0; k < errors[0].logits.size(); ++k) {
      const double e = MaxRelError(errors[1].logits[k].data, errors[0].logits[k].data);
      worst = std::max(worst, e);
      EXPECT_LE(e, eager_tolerance) << "step " << k;
    }
    std::printf("%-14s %-5s graphs %-3s vs eager: max rel %.2e, vs transformers %.2e (eager %.2e)\n", family.c_str(),
                dtype.c_str(), captured ? "on" : "off", worst, errors[1].max_rel, errors[0].max_rel);
    // Generation: the reference batch, a smaller batch (another graph), a new sequence, and sampling.
    const int max_new = static_cast<int>(std::min<int64_t>(steps + 1, seq_len - ref->prompt_len));
    std::vector<std::vector<int64_t>> prompts = ref->Prompts();
    std::vector<std::vector<int64_t>> one(prompts.begin(), prompts.begin() + 1);
    GenerateOptions greedy;
    greedy.max_new_tokens = max_new;
    GenerateOptions sampled = greedy;
    sampled.temperature = 0.8f;
    sampled.top_k = 20;
    sampled.seed = 3;
    for (const auto& [input, options] :
         std::vector<std::pair<std::vector<std::vector<int64_t>>, GenerateOptions>>{
             {prompts, greedy}, {one, greedy}, {prompts, greedy}, {prompts, sampled}}) {
      auto want = exec[0]->Generate(input, options);
      auto got = exec[1]->Generate(input, options);
      ASSERT_TRUE(want.ok()) << want.error().ToString();
      ASSERT_TRUE(got.ok()) << got.error().ToString();
      if (exact_tokens) {
        EXPECT_EQ(got->tokens, want->tokens) << "batch " << input.size() << ", temperature " << options.temperature;
      }
      if (options.temperature == 0 && input.size() == prompts.size() && exact_tokens) {
        for (int64_t b = 0; b < ref->batch; ++b) {
          std::vector<int64_t> r = ref->GeneratedRow(b);
          r.resize(max_new);
          EXPECT_EQ(got->tokens[b], r) << "row " << b;
        }
      }
    }
  }
};

// A routed-experts plan at the smallest budget placement E fits (the most experts routed from pinned memory), batch 1,
// kRoutedSeq positions, with the suites' host share: its path.
constexpr uint32_t kRoutedSeq = 16;
// `extra`: plan flags after kRoutedPlanFlags (e.g. --weights, or another --cpu-share), or empty.
std::string SmallestRoutedPlan(const std::string& family, const std::string& model, const std::string& dtype,
                               const std::string& tag, const std::string& extra = "") {
  std::string name = extra;
  for (char& ch : name) ch = std::isalnum(static_cast<unsigned char>(ch)) ? ch : '_';
  const std::string path = TempDir(family + "_" + tag + "_" + dtype + name) + "/e.bplan";
  const std::string flags = extra.empty() ? kRoutedPlanFlags : std::string(kRoutedPlanFlags) + " " + extra;
  auto min_e = SmallestFeasible(
      [&](uint64_t b) { return MakePlan(model, RoutedBudgets(b, 1), dtype, 1, kRoutedSeq, path, flags).ok(); }, 0,
      kRoutedHostBudget, 4096);
  if (!min_e.ok()) {
    ADD_FAILURE() << min_e.error().ToString();
    return "";
  }
  Status made = MakePlan(model, RoutedBudgets(*min_e, 1), dtype, 1, kRoutedSeq, path, flags);
  if (!made.ok()) {
    ADD_FAILURE() << made.error().ToString();
    return "";
  }
  return path;
}

// Greedy batch-1 decode of `steps` tokens after a 4-token prompt, eager: each step's token and logits, and the
// executor's stats at the end.
struct DecodeRun {
  std::vector<int64_t> tokens;
  std::vector<std::vector<float>> logits;
  Stats stats;
};
DecodeRun GreedyDecode(const std::string& plan, const std::string& model, ExecutorOptions options, int steps) {
  DecodeRun r;
  options.progress = false;
  options.cuda_graphs = false;
  auto exec = Executor::Load(plan, model, options);
  if (!exec.ok()) {
    ADD_FAILURE() << exec.error().ToString();
    return r;
  }
  ForwardOptions fresh;
  fresh.reset = true;
  fresh.last_position_only = true;
  auto out = (*exec)->Forward(std::vector<int64_t>{1, 5, 9, 3}, 1, fresh);
  ForwardOptions step;
  step.last_position_only = true;
  for (int i = 0; i < steps && out.ok(); ++i) {
    const float* row = out->row(0, 0);
    const int64_t next = std::max_element(row, row + out->vocab) - row;
    r.tokens.push_back(next);
    r.logits.push_back(out->data);
    out = (*exec)->Forward(std::vector<int64_t>{next}, 1, step);
  }
  if (!out.ok()) ADD_FAILURE() << out.error().ToString();
  r.stats = (*exec)->stats();
  return r;
}

// Next-layer prefetch (executor/expert_engine.h) changes which experts are on the GPU before their router chooses,
// never a result: batch-1 decode steps with it (every chosen expert's copy may come from a prediction) give the
// same greedy tokens and, within the dtype's rounding, the same logits as without it. In fp32 the GPU computes the
// same experts either way (bitwise equal); in bf16 the host's share may take other experts (float32 sums).
TEST_P(E2eGpu, ExpertPrefetchKeepsResults) {
  const std::string family = GetParam();
  if (!IsMoeFamily(family)) GTEST_SKIP() << "not a mixture-of-experts family";
  const std::string model = ModelDir(family);
  constexpr int kSteps = 10;
  for (const std::string dtype : {"fp32", "bf16"}) {
    SCOPED_TRACE(family + " " + dtype);
    const std::string path = SmallestRoutedPlan(family, model, dtype, "prefetch");
    ASSERT_FALSE(path.empty());
    DecodeRun runs[2];
    for (int run = 0; run < 2; ++run) {
      ExecutorOptions options;
      options.expert_prefetch = run == 0 ? 0 : 2;
      runs[run] = GreedyDecode(path, model, options, kSteps);
      ASSERT_EQ(runs[run].tokens.size(), static_cast<size_t>(kSteps));
    }
    EXPECT_EQ(runs[0].stats.expert_prefetched, 0u);
    EXPECT_GT(runs[1].stats.expert_prefetched, 0u) << "no expert was prefetched";
    EXPECT_LE(runs[1].stats.expert_prefetch_hits, runs[1].stats.expert_prefetched);
    EXPECT_EQ(runs[0].tokens, runs[1].tokens);
    for (int i = 0; i < kSteps; ++i) {
      EXPECT_LE(MaxRelError(runs[0].logits[i], runs[1].logits[i]), dtype == "fp32" ? 0.0 : kChunkedBf16Tolerance)
          << "step " << i;
    }
    std::printf("%-14s %-5s prefetch: %llu prefetched, %llu chosen over %d decode steps\n", family.c_str(),
                dtype.c_str(), static_cast<unsigned long long>(runs[1].stats.expert_prefetched),
                static_cast<unsigned long long>(runs[1].stats.expert_prefetch_hits), kSteps);
  }
}

// Splitting an expert between the host and the GPU (ExecutorOptions::expert_split_rows: the host computes the first
// rows of its intermediate, the GPU copies and computes the rest) gives the tokens and, within bf16 rounding, the
// logits of whole experts on the host, with and without next-layer prefetch: bf16 experts, and row-quantized ones
// (--weights int8 / fp8: the GPU's down columns copied with their rows' scales; int4 in groups of 8 columns, so the
// tiny experts' 32 rows split: whole groups of down's columns, their records beside them). The quantized plans take
// a host share of 0.25, so a layer's share ends inside an expert (their routers stay quantized: no prefetch).
TEST_P(E2eGpu, ExpertSplitKeepsResults) {
  const std::string family = GetParam();
  if (!IsMoeFamily(family)) GTEST_SKIP() << "not a mixture-of-experts family";
  const std::string model = ModelDir(family);
  constexpr int kSteps = 10;
  for (const std::string format : {"bf16", "int8", "fp8", "int4"}) {
    const std::string extra = format == "bf16"   ? ""
                              : format == "int4" ? "--weights int4 --weights-group 8 --cpu-share 0.25"
                                                 : "--weights " + format + " --cpu-share 0.25";
    const std::string path = SmallestRoutedPlan(family, model, "bf16", "split", extra);
    if (path.empty()) continue;  // (a failure was added)
    // With the plan's share 0.5 and two hostable experts a layer, the host takes one whole; a split comes with an odd
    // count, mostly where a prefetched expert left one hostable (so splits are counted over both settings).
    uint64_t splits = 0;
    for (int prefetch : {0, 1}) {
      SCOPED_TRACE(family + " " + format + " prefetch " + std::to_string(prefetch));
      DecodeRun runs[2];
      for (int run = 0; run < 2; ++run) {
        ExecutorOptions options;
        options.expert_prefetch = prefetch;
        options.expert_split_rows = run == 0 ? 0 : 8;  // the tiny experts have 32 or 128 intermediate rows
        options.expert_split_min_bytes = 0;
        runs[run] = GreedyDecode(path, model, options, kSteps);
        ASSERT_EQ(runs[run].tokens.size(), static_cast<size_t>(kSteps));
      }
      EXPECT_EQ(runs[0].stats.expert_split, 0u);
      splits += runs[1].stats.expert_split;
      EXPECT_GT(runs[0].stats.expert_host, 0u) << "the host computed no expert";
      EXPECT_EQ(runs[0].tokens, runs[1].tokens);
      for (int i = 0; i < kSteps; ++i) {
        EXPECT_LE(MaxRelError(runs[0].logits[i], runs[1].logits[i]), kChunkedBf16Tolerance) << "step " << i;
      }
      std::printf("%-14s %-4s split, prefetch %d: %llu experts split, %llu on the host (whole: %llu) over %d decode "
                  "steps\n",
                  family.c_str(), format.c_str(), prefetch, static_cast<unsigned long long>(runs[1].stats.expert_split),
                  static_cast<unsigned long long>(runs[1].stats.expert_host),
                  static_cast<unsigned long long>(runs[0].stats.expert_host), kSteps);
    }
    EXPECT_GT(splits, 0u) << format << ": no expert was split";
  }
}

// The adaptive host share (ExecutorOptions::adapt_expert_share) moves the share between decode forwards, changing
// which experts the host computes, never a result beyond rounding: batch-1 greedy decode gives the plan's-share
// run's tokens and its logits within bf16 rounding, and the share in effect has moved off the plan's, within
// [kShareMin, kShareMax].
TEST_P(E2eGpu, AdaptiveExpertShareKeepsResults) {
  const std::string family = GetParam();
  if (!IsMoeFamily(family)) GTEST_SKIP() << "not a mixture-of-experts family";
  const std::string model = ModelDir(family);
  constexpr int kSteps = 10;
  const std::string path = SmallestRoutedPlan(family, model, "bf16", "adapt");
  ASSERT_FALSE(path.empty());
  DecodeRun runs[2];
  for (int run = 0; run < 2; ++run) {
    ExecutorOptions options;
    options.adapt_expert_share = run == 1;
    runs[run] = GreedyDecode(path, model, options, kSteps);
    ASSERT_EQ(runs[run].tokens.size(), static_cast<size_t>(kSteps));
  }
  EXPECT_EQ(runs[0].tokens, runs[1].tokens);
  for (int i = 0; i < kSteps; ++i) {
    EXPECT_LE(MaxRelError(runs[0].logits[i], runs[1].logits[i]), kChunkedBf16Tolerance) << "step " << i;
  }
  EXPECT_DOUBLE_EQ(runs[0].stats.expert_share, 0.5);  // the suites' plans: --cpu-share 0.5
  EXPECT_NE(runs[1].stats.expert_share, 0.5);
  EXPECT_GE(runs[1].stats.expert_share, executor_internal::kShareMin);
  EXPECT_LE(runs[1].stats.expert_share, executor_internal::kShareMax);
  EXPECT_GT(runs[1].stats.expert_host_busy_ms, 0.0);
  std::printf("%-14s bf16 adaptive share: 0.5 -> %.3f after %d decode steps (the host's jobs %.3f ms, their layers' "
              "copies %.3f ms, the GPU waiting for the host %.3f ms)\n", family.c_str(), runs[1].stats.expert_share,
              kSteps, runs[1].stats.expert_host_busy_ms, runs[1].stats.expert_host_copy_ms,
              runs[1].stats.expert_host_wait_ms);
}

// A quantized model's two plans (--weights `format`, bf16, batch 1, `seq` positions) in `dir`: all resident
// (resident.bplan) and routed at the smallest GPU budget placement E fits with kRoutedPlanFlags (routed.bplan). False,
// with a line saying why, where the model refuses the format (e.g. int4 for the tiny qwen2_moe, whose 48-wide shared
// expert no int4 group divides: refused for the model, not for routing); a failure is added for any other error.
bool QuantizedPlans(const std::string& family, const std::string& model, const std::string& format, uint32_t seq,
                    const std::string& dir) {
  const std::string flags = "--weights " + format;
  const Status planned = MakePlan(model, "cuda:0=8GiB,cpu=8GiB", "bf16", 1, seq, dir + "/resident.bplan", flags);
  if (!planned.ok() && planned.error().message.find("int4 needs a column count") != std::string::npos) {
    std::printf("%-14s %-4s not planned: %s\n", family.c_str(), format.c_str(), planned.error().message.c_str());
    return false;
  }
  if (!planned.ok()) {
    ADD_FAILURE() << planned.error().ToString();
    return false;
  }
  const std::string routed = dir + "/routed.bplan", routed_flags = flags + " " + kRoutedPlanFlags;
  auto budget = SmallestFeasible(
      [&](uint64_t b) { return MakePlan(model, RoutedBudgets(b, 1), "bf16", 1, seq, routed, routed_flags).ok(); }, 0,
      kRoutedHostBudget, 4096);
  if (!budget.ok()) {
    ADD_FAILURE() << budget.error().ToString();
    return false;
  }
  const Status made = MakePlan(model, RoutedBudgets(*budget, 1), "bf16", 1, seq, routed, routed_flags);
  if (!made.ok()) ADD_FAILURE() << made.error().ToString();
  return made.ok();
}

// Quantized experts routed (--weights int8 / fp8 / int4 at the smallest GPU budget placement E fits, the host
// computing half of a forward's non-resident chosen experts in their row format): batch-1 greedy decode gives the
// tokens of the all-resident plan of the same quantized weights and its logits within bf16 rounding (the host sums
// in float32, the GPU's copied per-row experts run as batched products, the resident plan's one by one), with the
// host's share and without it (every chosen expert copied).
TEST_P(E2eGpu, RoutedQuantizedExpertsMatchResident) {
  const std::string family = GetParam();
  if (!IsMoeFamily(family)) GTEST_SKIP() << "not a mixture-of-experts family";
  const std::string model = ModelDir(family);
  constexpr int kSteps = 10;
  for (const std::string format : {"int8", "fp8", "int4"}) {
    SCOPED_TRACE(family + " " + format);
    const std::string dir = TempDir(family + "_routed_" + format);
    const std::string resident = dir + "/resident.bplan", routed = dir + "/routed.bplan";
    if (!QuantizedPlans(family, model, format, kRoutedSeq, dir)) continue;
    auto summary = SummarizePlan(routed);
    ASSERT_TRUE(summary.ok()) << summary.error().ToString();
    ASSERT_GT(summary->routed, 0) << summary->ToString();
    const DecodeRun base = GreedyDecode(resident, model, ExecutorOptions{}, kSteps);
    ASSERT_EQ(base.tokens.size(), static_cast<size_t>(kSteps));
    for (const bool host : {true, false}) {
      SCOPED_TRACE(host ? "host share" : "copies only");
      ExecutorOptions options;
      options.host_compute = host;
      const DecodeRun run = GreedyDecode(routed, model, options, kSteps);
      ASSERT_EQ(run.tokens.size(), static_cast<size_t>(kSteps));
      EXPECT_EQ(run.tokens, base.tokens);
      for (int i = 0; i < kSteps; ++i) {
        EXPECT_LE(MaxRelError(base.logits[i], run.logits[i]), kChunkedBf16Tolerance) << "step " << i;
      }
      EXPECT_GT(run.stats.expert_copied + run.stats.expert_host, 0u) << "no expert moved or computed by the host";
      if (!host) EXPECT_EQ(run.stats.expert_host, 0u);
      std::printf("%-14s %-4s routed (%s): %llu copied, %llu on the host, %llu resident over %d decode steps\n",
                  family.c_str(), format.c_str(), host ? "host share" : "copies only",
                  static_cast<unsigned long long>(run.stats.expert_copied),
                  static_cast<unsigned long long>(run.stats.expert_host),
                  static_cast<unsigned long long>(run.stats.expert_resident), kSteps);
    }
  }
}

// Placement E over two GPUs (the smallest equal budgets it fits; each GPU's sparse layers' non-resident experts
// copied over its own link into its own ring, or computed by the host: one expert engine per GPU): the prefill and
// decode steps match transformers as the one-GPU suites do (fp32: within 1e-4 and the same greedy tokens), and
// batch-1 greedy decode gives the one-GPU routed plan's tokens (fp32: its logits to kChunkedFp32Tolerance, as the
// suites hold routed plans to each other: other experts resident sum in another order; bf16, where the host
// computes half of each GPU's non-resident chosen experts: within bf16 rounding). Where the tiny model makes a GPU
// route experts (qwen3_moe: 8 experts a layer, one layer per GPU), both GPUs copy some and the host computes some.
TEST_P(E2eGpu, TwoGpuRoutedExpertsMatchOneGpu) {
  const std::string family = GetParam();
  if (!IsMoeFamily(family)) GTEST_SKIP() << "not a mixture-of-experts family";
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices < 2) GTEST_SKIP() << "fewer than two CUDA devices";
  const std::string model = ModelDir(family);
  auto ref = LoadReference(model);
  ASSERT_TRUE(ref.ok()) << ref.error().ToString();
  const uint32_t seq_len = SuiteSeqLen(model);
  const int64_t steps = std::min<int64_t>(ref->steps, seq_len - ref->prompt_len);
  constexpr int kSteps = 10;
  for (const std::string dtype : {"fp32", "bf16"}) {
    SCOPED_TRACE(family + " " + dtype);
    const std::string dir = TempDir(family + "_two_gpu_routed_" + dtype);
    const uint32_t batch = static_cast<uint32_t>(ref->batch);
    // Against transformers: the reference's batch.
    auto min_two = SmallestRoutedGpuBudget(model, dtype, batch, seq_len, dir + "/probe.bplan", 2);
    ASSERT_TRUE(min_two.ok()) << min_two.error().ToString();
    const std::string suite_plan = dir + "/e2_batch.bplan";
    Status made = MakePlan(model, RoutedBudgets(*min_two, 2), dtype, batch, seq_len, suite_plan, kRoutedPlanFlags);
    ASSERT_TRUE(made.ok()) << made.error().ToString();
    {
      ExecutorOptions options;
      options.progress = false;
      options.cuda_graphs = false;
      auto exec = Executor::Load(suite_plan, model, options);
      ASSERT_TRUE(exec.ok()) << exec.error().ToString();
      auto errors = CompareWithReference(**exec, *ref, steps);
      ASSERT_TRUE(errors.ok()) << errors.error().ToString();
      EXPECT_LE(errors->max_rel, dtype == "fp32" ? kF32Tolerance : kBf16Tolerance);
      if (dtype == "bf16") {
        EXPECT_GE(TopOneAgreement(*errors, *ref, kTopOneMargin), kBf16TopOne);
      }
    }
    // Every expert resident, split over the two GPUs: decode steps replayed from graphs (one per GPU's segment, the
    // chosen experts read on the device) match transformers and the eager steps of the same plan (fp32: to 1e-5).
    {
      const std::string resident = dir + "/resident.bplan";
      made = MakePlan(model, "cuda:0=8GiB,cuda:1=8GiB,cpu=8GiB", dtype, batch, seq_len, resident);
      ASSERT_TRUE(made.ok()) << made.error().ToString();
      auto summary = SummarizePlan(resident);
      ASSERT_TRUE(summary.ok()) << summary.error().ToString();
      EXPECT_EQ(summary->gpu_tier, summary->blocks);
      std::set<uint32_t> split;
      auto plan = PlanFile::Load(resident);
      ASSERT_TRUE(plan.ok()) << plan.error().ToString();
      for (const schema::Block* b : *plan->plan().blocks()) split.insert(b->device());
      EXPECT_EQ(split, (std::set<uint32_t>{0, 1}));
      std::unique_ptr<Executor> exec[2];  // eager, graphs
      ASSERT_NO_FATAL_FAILURE(LoadEach({resident, resident}, 0, model, exec));
      StepErrors errors[2];
      for (int g = 0; g < 2; ++g) {
        auto e = CompareWithReference(*exec[g], *ref, steps);
        ASSERT_TRUE(e.ok()) << e.error().ToString();
        errors[g] = std::move(*e);
        EXPECT_LE(errors[g].max_rel, dtype == "fp32" ? kF32Tolerance : kBf16Tolerance) << g;
        EXPECT_EQ(exec[g]->stats().graph_capture_error, "") << g;
        EXPECT_EQ(exec[g]->stats().graph_steps > 0, g == 1 && steps > 0) << g;
      }
      // (The graphs' static attention sums in another order than the eager step's: bf16 roundings may differ.)
      for (size_t k = 0; k < errors[0].logits.size(); ++k) {
        EXPECT_LE(MaxRelError(errors[1].logits[k].data, errors[0].logits[k].data),
                  dtype == "fp32" ? 1e-5 : kBf16Tolerance)
            << "step " << k;
      }
      std::printf("%-14s %-5s two GPUs, every expert resident: graphs %llu steps, vs transformers %.2e (eager %.2e)\n",
                  family.c_str(), dtype.c_str(), static_cast<unsigned long long>(exec[1]->stats().graph_steps),
                  errors[1].max_rel, errors[0].max_rel);
    }
    // Against one GPU: batch-1 greedy decode, the routed plans' run shape.
    auto min_two_decode = SmallestRoutedGpuBudget(model, dtype, 1, kRoutedSeq, dir + "/probe1.bplan", 2);
    ASSERT_TRUE(min_two_decode.ok()) << min_two_decode.error().ToString();
    const std::string two = dir + "/e2.bplan";
    made = MakePlan(model, RoutedBudgets(*min_two_decode, 2), dtype, 1, kRoutedSeq, two, kRoutedPlanFlags);
    ASSERT_TRUE(made.ok()) << made.error().ToString();
    const std::string one = SmallestRoutedPlan(family, model, dtype, "two_gpu_ref");
    ASSERT_FALSE(one.empty());
    auto plan = PlanFile::Load(two);
    ASSERT_TRUE(plan.ok()) << plan.error().ToString();
    const size_t rings = plan->plan().experts() == nullptr ? 0 : plan->plan().experts()->size();
    std::set<uint32_t> used;
    for (const schema::Block* b : *plan->plan().blocks()) used.insert(b->device());
    EXPECT_EQ(used, (std::set<uint32_t>{0, 1}));
    if (family == "qwen3_moe") {
      EXPECT_EQ(rings, 2u) << "both GPUs route experts at these budgets";
    }
    DecodeRun runs[2];
    runs[0] = GreedyDecode(one, model, ExecutorOptions{}, kSteps);
    runs[1] = GreedyDecode(two, model, ExecutorOptions{}, kSteps);
    ASSERT_EQ(runs[0].tokens.size(), static_cast<size_t>(kSteps));
    ASSERT_EQ(runs[1].tokens.size(), static_cast<size_t>(kSteps));
    EXPECT_EQ(runs[0].tokens, runs[1].tokens);
    for (int i = 0; i < kSteps; ++i) {
      EXPECT_LE(MaxRelError(runs[1].logits[i], runs[0].logits[i]),
                dtype == "fp32" ? kChunkedFp32Tolerance : kChunkedBf16Tolerance)
          << "step " << i;
    }
    if (rings > 0) {
      EXPECT_GT(runs[1].stats.expert_copied, 0u) << "no expert was copied";
      if (dtype == "bf16") {
        EXPECT_GT(runs[1].stats.expert_host, 0u) << "the host computed no expert";
      }
    }
    std::printf("%-14s %-5s two GPUs, %zu expert ring(s): %llu experts copied, %llu on the host, %llu resident over "
                "%d decode steps; tokens as one GPU\n",
                family.c_str(), dtype.c_str(), rings, static_cast<unsigned long long>(runs[1].stats.expert_copied),
                static_cast<unsigned long long>(runs[1].stats.expert_host),
                static_cast<unsigned long long>(runs[1].stats.expert_resident), kSteps);
  }
}

// One-GPU prefill graphs (ExecutorOptions::prefill_graph_shapes): a prompt padded to its bucket, run eagerly, then
// captured, then replayed, gives the unpadded pass's logits (every position, and the last one alone) within 1e-5 in
// float32, and a KV cache from which decode steps continue as from the unpadded pass (same greedy tokens). Families
// without a static step are never padded.
TEST_P(E2eGpu, Float32PrefillGraphsMatchUnpadded) {
  const std::string family = GetParam();
  const std::string model = ModelDir(family);
  auto ref = LoadReference(model);
  ASSERT_TRUE(ref.ok()) << ref.error().ToString();
  const uint32_t seq_len = SuiteSeqLen(model);
  auto plans = PlanSuite(model, TempDir(family + "_prefill_graphs"), "fp32", seq_len);
  ASSERT_TRUE(plans.ok()) << plans.error().ToString();
  const PlanCase* resident = nullptr;
  for (const PlanCase& c : *plans) {
    if (resident == nullptr && c.summary.cpu_tier == 0 && c.summary.disk_tier == 0 && c.summary.cpu_compute == 0 &&
        c.summary.routed == 0) {
      resident = &c;
    }
  }
  if (resident == nullptr) GTEST_SKIP() << "no all-resident plan without routed experts";
  std::ifstream config_file(model + "/config.json");
  auto parsed = arch::ParseHfConfig(nlohmann::json::parse(config_file), model + "/config.json");
  ASSERT_TRUE(parsed.ok()) << parsed.error().ToString();
  // Prefill graphs take the families with a static step (ModelKernels::StaticDecode); mixture-of-experts prompts are
  // not captured (their decode steps may be: GraphDecodeEligible), they run eagerly here.
  const bool captured =
      arch::GraphDecodeEligible(*parsed->family, parsed->config, seq_len) && parsed->config.num_experts == 0;
  std::unique_ptr<Executor> exec[2];  // [0]: no padding, no prefill graphs; [1]: the default
  for (int g = 0; g < 2; ++g) {
    ExecutorOptions options;
    options.progress = false;
    if (g == 0) options.prefill_graph_shapes = 0;
    auto e = Executor::Load(resident->path, model, options);
    ASSERT_TRUE(e.ok()) << e.error().ToString();
    exec[g] = std::move(*e);
  }
  // The reference prompt's first row, cut to an odd length (a bucket is padded), then decode steps.
  const std::vector<int64_t> prompt(ref->input_ids.begin(),
                                    ref->input_ids.begin() + std::max<int64_t>(2, ref->prompt_len - 1));
  const int steps = static_cast<int>(std::min<int64_t>(4, seq_len - static_cast<int64_t>(prompt.size()) - 1));
  for (bool last_only : {false, true}) {
    ForwardOptions fresh;
    fresh.reset = true;
    fresh.last_position_only = last_only;
    auto want = exec[0]->Forward(prompt, 1, fresh);
    ASSERT_TRUE(want.ok()) << want.error().ToString();
    for (int pass = 0; pass < 3; ++pass) {  // eager (padded), eager + capture, replay
      const uint64_t before = exec[1]->stats().graph_prefills;
      auto got = exec[1]->Forward(prompt, 1, fresh);
      ASSERT_TRUE(got.ok()) << "pass " << pass << (last_only ? ", last position: " : ": ") << got.error().ToString();
      ASSERT_EQ(got->seq, want->seq);
      EXPECT_LE(MaxRelError(got->data, want->data), 1e-5) << "pass " << pass << (last_only ? ", last position" : "");
      const bool replayed = exec[1]->stats().graph_prefills == before + 1;
      // One graph serves both (the lm_head runs outside it): captured at the second pass of all positions.
      EXPECT_EQ(replayed, captured && (last_only || pass == 2)) << "pass " << pass;
    }
    // Decode steps continue both caches alike.
    std::vector<int64_t> next(2, 0);
    Result<Logits> outs[2] = {std::move(want), exec[1]->Forward(prompt, 1, fresh)};
    ForwardOptions step;
    step.last_position_only = true;
    for (int k = 0; k < steps; ++k) {
      for (int g = 0; g < 2; ++g) {
        ASSERT_TRUE(outs[g].ok()) << outs[g].error().ToString();
        const float* row = outs[g]->row(0, outs[g]->seq - 1);
        next[g] = std::max_element(row, row + outs[g]->vocab) - row;
      }
      EXPECT_EQ(next[0], next[1]) << "decode step " << k;
      EXPECT_LE(MaxRelError(outs[1]->data, outs[0]->data), 1e-5) << "decode step " << k;
      for (int g = 0; g < 2; ++g) outs[g] = exec[g]->Forward(std::vector<int64_t>{next[0]}, 1, step);
    }
  }
  EXPECT_EQ(exec[1]->stats().graph_capture_error, "");
  std::printf("%-14s prefill graphs %s: %llu replayed\n", family.c_str(), captured ? "on" : "off",
              static_cast<unsigned long long>(exec[1]->stats().graph_prefills));
}

// A prompt of more tokens than the decode kernels take, over a layer whose experts all rest on the GPU, runs the
// grouped products (kernels_internal::GroupedResidentExperts, bf16): its logits equal, within bf16 rounding, those
// of the same plan with the fused kernels off (every expert dispatched from the host, LibTorch ops), for each
// position, and greedy decode steps after it pick the same tokens.
TEST_P(E2eGpu, Bfloat16ResidentExpertsPromptMatchesHostDispatch) {
  const std::string family = GetParam();
  if (!IsMoeFamily(family)) GTEST_SKIP() << "not a mixture-of-experts family";
  const std::string model = ModelDir(family);
  const std::string path = TempDir(family + "_grouped") + "/resident.bplan";
  ASSERT_TRUE(MakePlan(model, "cuda:0=8GiB,cpu=8GiB", "bf16", 1, 96, path).ok());
  std::unique_ptr<Executor> exec[2];
  for (int i = 0; i < 2; ++i) {
    ExecutorOptions options;
    options.progress = false;
    options.fused_kernels = i == 0;
    auto loaded = Executor::Load(path, model, options);
    ASSERT_TRUE(loaded.ok()) << loaded.error().ToString();
    exec[i] = std::move(*loaded);
  }
  const int64_t vocab = exec[0]->info().vocab_size;
  std::vector<int64_t> prompt;
  for (int i = 0; i < 60; ++i) prompt.push_back((i * 7919 + 13) % vocab);
  ForwardOptions fresh;
  fresh.reset = true;
  Result<Logits> outs[2] = {exec[0]->Forward(prompt, 1, fresh), exec[1]->Forward(prompt, 1, fresh)};
  ForwardOptions step;
  step.last_position_only = true;
  for (int k = 0; k < 4; ++k) {
    for (int i = 0; i < 2; ++i) ASSERT_TRUE(outs[i].ok()) << outs[i].error().ToString();
    ASSERT_EQ(outs[0]->data.size(), outs[1]->data.size());
    EXPECT_LE(MaxRelError(outs[0]->data, outs[1]->data), kBf16Tolerance) << (k == 0 ? "prompt" : "decode step");
    const float* row = outs[1]->row(0, outs[1]->seq - 1);
    const int64_t next = std::max_element(row, row + vocab) - row;
    for (int i = 0; i < 2; ++i) outs[i] = exec[i]->Forward(std::vector<int64_t>{next}, 1, step);
  }
}

// A prompt over quantized experts (--weights int8 / fp8 / int4), routed at the smallest GPU budget placement E fits
// and all resident: each quantized expert dequantized into a scratch and computed by grouped products over a window
// of experts (kernels_llama's GroupedQuantizedPrompt) gives, within bf16 rounding, the logits of every position of
// the same plan with ExecutorOptions::grouped_prompt_experts off (each expert by itself), and the routed plan's equal
// the resident plan's; greedy decode steps after it pick the same tokens.
TEST_P(E2eGpu, QuantizedExpertsPromptMatchesOneByOne) {
  const std::string family = GetParam();
  if (!IsMoeFamily(family)) GTEST_SKIP() << "not a mixture-of-experts family";
  const std::string model = ModelDir(family);
  constexpr uint32_t kSeq = 96;
  for (const std::string format : {"int8", "fp8", "int4"}) {
    SCOPED_TRACE(family + " " + format);
    const std::string dir = TempDir(family + "_quant_prompt_" + format);
    const std::string resident = dir + "/resident.bplan", routed = dir + "/routed.bplan";
    if (!QuantizedPlans(family, model, format, kSeq, dir)) continue;
    std::unique_ptr<Executor> exec[3];  // routed grouped, routed one by one, resident grouped
    for (int i = 0; i < 3; ++i) {
      ExecutorOptions options;
      options.progress = false;
      options.cuda_graphs = false;
      options.grouped_prompt_experts = i != 1;
      auto loaded = Executor::Load(i == 2 ? resident : routed, model, options);
      ASSERT_TRUE(loaded.ok()) << loaded.error().ToString();
      exec[i] = std::move(*loaded);
    }
    const int64_t vocab = exec[0]->info().vocab_size;
    std::vector<int64_t> prompt;
    for (int i = 0; i < 60; ++i) prompt.push_back((i * 7919 + 13) % vocab);
    ForwardOptions fresh;
    fresh.reset = true;
    Result<Logits> outs[3] = {exec[0]->Forward(prompt, 1, fresh), exec[1]->Forward(prompt, 1, fresh),
                              exec[2]->Forward(prompt, 1, fresh)};
    ForwardOptions step;
    step.last_position_only = true;
    for (int k = 0; k < 4; ++k) {
      for (int i = 0; i < 3; ++i) ASSERT_TRUE(outs[i].ok()) << outs[i].error().ToString();
      for (int i = 1; i < 3; ++i) {
        ASSERT_EQ(outs[0]->data.size(), outs[i]->data.size());
        const double err = MaxRelError(outs[i]->data, outs[0]->data);
        EXPECT_LE(err, kChunkedBf16Tolerance) << (i == 1 ? "one by one" : "resident")
                                              << (k == 0 ? ", prompt" : ", decode step");
        if (err > kChunkedBf16Tolerance && k == 0) {  // where: each position's error
          const int64_t seq = outs[0]->seq;
          std::string where;
          for (int64_t p = 0; p < seq; ++p) {
            const std::vector<float> a(outs[i]->row(0, p), outs[i]->row(0, p) + vocab);
            const std::vector<float> b(outs[0]->row(0, p), outs[0]->row(0, p) + vocab);
            const double e = MaxRelError(a, b);
            if (e > kChunkedBf16Tolerance) where += " " + std::to_string(p) + ":" + std::to_string(e);
          }
          std::printf("positions over the tolerance:%s\n", where.c_str());
        }
      }
      const float* row = outs[1]->row(0, outs[1]->seq - 1);
      const int64_t next = std::max_element(row, row + vocab) - row;
      for (int i = 0; i < 3; ++i) outs[i] = exec[i]->Forward(std::vector<int64_t>{next}, 1, step);
    }
    const uint64_t grouped[3] = {exec[0]->stats().expert_grouped_prompt, exec[1]->stats().expert_grouped_prompt,
                                 exec[2]->stats().expert_grouped_prompt};
    EXPECT_GT(grouped[0], 0u) << "no routed expert ran grouped";
    EXPECT_EQ(grouped[1], 0u);
    EXPECT_GT(grouped[2], 0u) << "no resident expert ran grouped";
    std::printf("%-14s %-4s prompt experts grouped: routed %llu (%llu copied), resident %llu\n", family.c_str(),
                format.c_str(), static_cast<unsigned long long>(grouped[0]),
                static_cast<unsigned long long>(exec[0]->stats().expert_copied),
                static_cast<unsigned long long>(grouped[2]));
  }
}

TEST_P(E2eGpu, Float32EveryPlacementMatchesTransformers) { RunSuite("fp32", kF32Tolerance, true); }

TEST_P(E2eGpu, Bfloat16EveryPlacementAgrees) { RunSuite("bf16", kBf16Tolerance, false); }

TEST_P(E2eGpu, Float32CudaGraphsMatchEager) { RunGraphs("fp32", kF32Tolerance, 1e-5, true); }

TEST_P(E2eGpu, Bfloat16CudaGraphsMatchEager) { RunGraphs("bf16", kBf16Tolerance, kBf16Tolerance, false); }

// A plan split over two GPUs (the embedding and the first half of the layers on cuda:0, the rest on cuda:1, by an
// explicit map) decodes from CUDA graphs (one per device segment) with the same logits and tokens as the
// all-resident single-GPU plan and as its own eager steps; so does a striped plan (layers alternating between the
// GPUs, each streaming over its own link). Their batched prefills, pipelined in micro-batches of one row, give the
// one-GPU logits and KV cache, eagerly and (the second time) from prefill graphs. Skipped with fewer than two GPUs.
TEST_P(E2eGpu, TwoGpuSplitGraphsMatchOneGpu) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices < 2) GTEST_SKIP() << "fewer than two CUDA devices";
  const std::string family = GetParam();
  const std::string model = ModelDir(family);
  std::ifstream config_file(model + "/config.json");
  auto parsed = arch::ParseHfConfig(nlohmann::json::parse(config_file), model + "/config.json");
  ASSERT_TRUE(parsed.ok()) << parsed.error().ToString();
  auto ref = LoadReference(model);
  ASSERT_TRUE(ref.ok()) << ref.error().ToString();
  const uint32_t seq_len = SuiteSeqLen(model);
  if (!arch::GraphDecodeEligible(*parsed->family, parsed->config, seq_len)) GTEST_SKIP() << "no static decode step";
  // (Striped and pipelined placements are for dense models; TwoGpuRoutedExpertsMatchOneGpu splits these.)
  if (IsMoeFamily(family)) GTEST_SKIP() << "mixture of experts: see TwoGpuRoutedExpertsMatchOneGpu";
  const int64_t steps = std::min<int64_t>(ref->steps, seq_len - ref->prompt_len);
  const std::string dir = TempDir(family + "_two_gpus");
  const std::string one = dir + "/one.bplan", two = dir + "/two.bplan";
  ASSERT_TRUE(MakePlan(model, "cuda:0=8GiB,cpu=8GiB", "fp32", 2, seq_len, one).ok());
  nlohmann::json map = nlohmann::json::object();
  {
    auto plan = PlanFile::Load(one);
    ASSERT_TRUE(plan.ok()) << plan.error().ToString();
    const int layers = static_cast<int>(parsed->config.num_layers);
    for (const schema::Block* b : *plan->plan().blocks()) {
      const bool first = b->kind()->str() == "embedding" || (b->kind()->str() == "decoder_layer" && b->layer() < layers / 2);
      map[b->name()->str()] = first ? 0 : 1;
    }
  }
  const std::string map_path = dir + "/split_map.json";
  std::ofstream(map_path) << map.dump(1);
  Status planned = MakePlan(model, "cuda:0=8GiB,cuda:1=8GiB,cpu=8GiB", "fp32", 2, seq_len, two,
                            "--device-map " + map_path);
  ASSERT_TRUE(planned.ok()) << planned.error().ToString();
  // Striped (placement candidate S) at the smallest budgets it fits: layers alternate between the GPUs (these tiny
  // layers stay resident: streaming one costs a ring slot as large as itself; E2eGpuStreaming streams striped
  // layers of a larger model), so a decode step replays one graph segment per layer.
  const std::string striped = dir + "/striped.bplan";
  auto striped_at = [&](uint64_t b) {
    return MakePlan(model, "cuda:0=" + std::to_string(b) + ",cuda:1=" + std::to_string(b) + ",cpu=8GiB", "fp32", 2,
                    seq_len, striped, "--auto-candidates S");
  };
  auto budget = SmallestFeasible([&](uint64_t b) { return striped_at(b).ok(); }, 1 << 16, 1ull << 32, 4096);
  ASSERT_TRUE(budget.ok()) << budget.error().ToString();
  ASSERT_TRUE(striped_at(*budget).ok());
  auto summary = SummarizePlan(striped);
  ASSERT_TRUE(summary.ok()) << summary.error().ToString();
  const bool striped_graphs = summary->cpu_tier == 0 && summary->disk_tier == 0 && summary->cpu_compute == 0;
  constexpr int kRuns = 4;  // one GPU (graphs), two GPUs eager, two GPUs graphs, striped
  std::unique_ptr<Executor> exec[kRuns];
  ASSERT_NO_FATAL_FAILURE(LoadEach({one, two, two, striped}, 1, model, exec));
  StepErrors errors[kRuns];
  for (int i = 0; i < kRuns; ++i) {
    auto e = CompareWithReference(*exec[i], *ref, steps);
    ASSERT_TRUE(e.ok()) << e.error().ToString();
    errors[i] = std::move(*e);
    EXPECT_LE(errors[i].max_rel, kF32Tolerance) << i;
    EXPECT_EQ(exec[i]->stats().graph_capture_error, "") << i;
    EXPECT_EQ(exec[i]->stats().graph_steps > 0, (i == 0 || i == 2 || (i == 3 && striped_graphs)) && steps > 0) << i;
  }
  double worst = 0;
  for (size_t k = 0; k < errors[0].logits.size(); ++k) {
    for (int i = 1; i < kRuns; ++i) {
      worst = std::max(worst, MaxRelError(errors[i].logits[k].data, errors[0].logits[k].data));
    }
  }
  EXPECT_LE(worst, 1e-5);
  std::printf("%-14s two GPUs (graphs, eager, striped at %s each) vs one GPU: max rel %.2e\n", family.c_str(),
              std::to_string(*budget).c_str(), worst);
  GenerateOptions greedy;
  greedy.max_new_tokens = static_cast<int>(std::min<int64_t>(steps + 1, seq_len - ref->prompt_len));
  auto want = exec[0]->Generate(ref->Prompts(), greedy);
  ASSERT_TRUE(want.ok()) << want.error().ToString();
  for (int i = 1; i < kRuns; ++i) {
    auto got = exec[i]->Generate(ref->Prompts(), greedy);
    ASSERT_TRUE(got.ok()) << got.error().ToString();
    EXPECT_EQ(got->tokens, want->tokens) << i;
  }
  // Micro-batch pipelining (ExecutorOptions::micro_batch_rows): a batched prefill of the split plans, one row per
  // micro-batch (each on its own streams), gives the one-GPU plan's logits, and leaves a KV cache from which a
  // decode step continues as on one GPU. The unpipelined pass of the same plan agrees too.
  const std::vector<std::vector<int64_t>> prompts = ref->Prompts();
  ASSERT_GE(prompts.size(), 2u);
  auto one_prefill = exec[0]->Forward(prompts, ForwardOptions{.reset = true});
  ASSERT_TRUE(one_prefill.ok()) << one_prefill.error().ToString();
  std::vector<std::vector<int64_t>> next(prompts.size());
  for (size_t r = 0; r < prompts.size(); ++r) {
    const float* row = one_prefill->row(static_cast<int64_t>(r), one_prefill->seq - 1);
    next[r] = {static_cast<int64_t>(std::max_element(row, row + one_prefill->vocab) - row)};
  }
  auto one_step = exec[0]->Forward(next);
  ASSERT_TRUE(one_step.ok()) << one_step.error().ToString();
  for (int i : {1, 2, 3}) {
    if (i == 3 && !striped_graphs) continue;  // a striped plan that streams is not pipelined
    // micro_batch_rows 1 twice: the second pass replays the prefill graphs captured after the first.
    int pipelined_passes = 0;
    for (int rows : {1, 1, -1}) {
      SCOPED_TRACE("plan " + std::to_string(i) + ", micro_batch_rows " + std::to_string(rows));
      const uint64_t graph_prefills = exec[i]->stats().graph_prefills;
      auto prefill = exec[i]->Forward(prompts, ForwardOptions{.reset = true, .micro_batch_rows = rows});
      ASSERT_TRUE(prefill.ok()) << prefill.error().ToString();
      EXPECT_EQ(exec[i]->stats().last_micro_batches, rows > 0 ? prompts.size() : 0u);
      EXPECT_EQ(exec[i]->stats().graph_capture_error, "");
      // Plan 1 runs without graphs; the others replay the second pipelined pass of the shape.
      const bool replayed = i != 1 && rows > 0 && pipelined_passes > 0;
      EXPECT_EQ(exec[i]->stats().graph_prefills, graph_prefills + (replayed ? 1 : 0));
      pipelined_passes += rows > 0 ? 1 : 0;
      EXPECT_LE(MaxRelError(prefill->data, one_prefill->data), 1e-5);
      auto step = exec[i]->Forward(next);
      ASSERT_TRUE(step.ok()) << step.error().ToString();
      EXPECT_LE(MaxRelError(step->data, one_step->data), 1e-5);
    }
  }
}

// A tensor-parallel plan (placement candidate T, plan version 7): every block split over two GPUs, each computing
// its heads, MLP rows and vocabulary slice, the shards' partial sums added by the all-reduce (executor/tp_comm.h).
// In float32 it matches transformers as part 1, eagerly and from CUDA graphs (one per shard), gives the one-GPU
// plan's greedy tokens, and its graph steps agree with its eager steps within 1e-5 (only the summation order of the
// split products differs from one GPU); so do rows stepped at their own positions (StepRows). In bfloat16 it agrees with transformers within part 1's tolerance. Families
// without tensor-parallel rules are skipped (the plan says why). Skipped with fewer than two GPUs.
TEST_P(E2eGpu, TwoGpuTensorParallelMatchesTransformers) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices < 2) GTEST_SKIP() << "fewer than two CUDA devices";
  const std::string family = GetParam();
  const std::string model = ModelDir(family);
  auto ref = LoadReference(model);
  ASSERT_TRUE(ref.ok()) << ref.error().ToString();
  const uint32_t seq_len = SuiteSeqLen(model);
  const int64_t steps = std::min<int64_t>(ref->steps, seq_len - ref->prompt_len);
  const std::string dir = TempDir(family + "_tensor_parallel");
  const std::string one = dir + "/one.bplan", tp = dir + "/tp.bplan", tp_bf16 = dir + "/tp_bf16.bplan";
  Status planned = MakePlan(model, "cuda:0=8GiB,cuda:1=8GiB,cpu=8GiB", "fp32", 2, seq_len, tp, "--auto-candidates T");
  if (!planned.ok()) {
    ASSERT_NE(planned.error().message.find("has no tensor-parallel rules"), std::string::npos)
        << planned.error().ToString();
    GTEST_SKIP() << planned.error().message;
  }
  ASSERT_TRUE(MakePlan(model, "cuda:0=8GiB,cpu=8GiB", "fp32", 2, seq_len, one).ok());
  ASSERT_TRUE(MakePlan(model, "cuda:0=8GiB,cuda:1=8GiB,cpu=8GiB", "bf16", 2, seq_len, tp_bf16, "--auto-candidates T").ok());
  const std::string one_bf16 = dir + "/one_bf16.bplan";
  ASSERT_TRUE(MakePlan(model, "cuda:0=8GiB,cpu=8GiB", "bf16", 2, seq_len, one_bf16).ok());
  {
    auto plan = PlanFile::Load(tp);
    ASSERT_TRUE(plan.ok()) << plan.error().ToString();
    EXPECT_EQ(plan->plan().tensor_parallel(), 2u);
  }
  // one GPU (graphs), tensor parallel eager, tensor parallel graphs, bf16 graphs, bf16 on one GPU (graphs)
  constexpr int kRuns = 5;
  std::unique_ptr<Executor> exec[kRuns];
  ASSERT_NO_FATAL_FAILURE(LoadEach({one, tp, tp, tp_bf16, one_bf16}, 1, model, exec));
  StepErrors errors[kRuns];
  for (int i = 0; i < kRuns; ++i) {
    SCOPED_TRACE("run " + std::to_string(i));
    auto e = CompareWithReference(*exec[i], *ref, steps);
    ASSERT_TRUE(e.ok()) << e.error().ToString();
    errors[i] = std::move(*e);
    EXPECT_LE(errors[i].max_rel, i >= 3 ? kBf16Tolerance : kF32Tolerance);
    EXPECT_EQ(exec[i]->stats().graph_capture_error, "");
  }
  // bf16: each step's error against transformers, tensor parallel and one GPU, and between the two.
  std::string bf16_steps;
  for (size_t k = 0; k < errors[3].rel.size() && k < errors[4].rel.size(); ++k) {
    char buf[96];
    std::snprintf(buf, sizeof buf, " [%zu] %.2e / %.2e / %.2e", k, errors[3].rel[k], errors[4].rel[k],
                  MaxRelError(errors[3].logits[k].data, errors[4].logits[k].data));
    bf16_steps += buf;
  }
  std::printf("%-14s bf16 per step (0: prompt), tensor parallel / one GPU vs transformers / between them:%s\n",
              family.c_str(), bf16_steps.c_str());
  std::ifstream config_file(model + "/config.json");
  auto parsed = arch::ParseHfConfig(nlohmann::json::parse(config_file), model + "/config.json");
  ASSERT_TRUE(parsed.ok()) << parsed.error().ToString();
  const bool graphs = arch::GraphDecodeEligible(*parsed->family, parsed->config, seq_len) && steps > 0;
  EXPECT_EQ(exec[2]->stats().graph_steps > 0, graphs);
  EXPECT_EQ(exec[1]->stats().graph_steps, 0u);
  double worst = 0;
  for (size_t k = 0; k < errors[1].logits.size(); ++k)
    worst = std::max(worst, MaxRelError(errors[2].logits[k].data, errors[1].logits[k].data));
  EXPECT_LE(worst, 1e-5);
  std::printf("%-14s tensor parallel over two GPUs: max rel vs transformers %.2e (eager), %.2e (graphs), %.2e (bf16); "
              "graphs vs eager %.2e\n",
              family.c_str(), errors[1].max_rel, errors[2].max_rel, errors[3].max_rel, worst);
  GenerateOptions greedy;
  greedy.max_new_tokens = static_cast<int>(std::min<int64_t>(steps + 1, seq_len - ref->prompt_len));
  auto want = exec[0]->Generate(ref->Prompts(), greedy);
  ASSERT_TRUE(want.ok()) << want.error().ToString();
  for (int i : {1, 2}) {
    auto got = exec[i]->Generate(ref->Prompts(), greedy);
    ASSERT_TRUE(got.ok()) << got.error().ToString();
    EXPECT_EQ(got->tokens, want->tokens) << i;
  }
  // Continuous batching (StepRows, what `serve` runs): each prompt in its own KV-cache row, then one token per row
  // at its own position, gives the one-GPU plan's logits.
  const std::vector<std::vector<int64_t>> prompts = ref->Prompts();
  std::vector<RowStep> prefill_rows, step_rows;
  for (size_t r = 0; r < prompts.size(); ++r) {
    prefill_rows.push_back(RowStep{static_cast<int>(r), 0, prompts[r]});
    step_rows.push_back(RowStep{static_cast<int>(r), static_cast<int64_t>(prompts[r].size()), {7}});
  }
  for (const auto* pass : {&prefill_rows, &step_rows}) {
    auto want_rows = exec[0]->StepRows(*pass);
    if (!want_rows.ok() && want_rows.error().code == ErrorCode::kUnsupported) {
      // (Rows at their own positions with a sliding window: refused on one GPU too.)
      auto got_rows = exec[2]->StepRows(*pass);
      ASSERT_FALSE(got_rows.ok());
      EXPECT_EQ(got_rows.error().code, ErrorCode::kUnsupported) << got_rows.error().ToString();
      break;
    }
    ASSERT_TRUE(want_rows.ok()) << want_rows.error().ToString();
    for (int i : {1, 2}) {
      auto got_rows = exec[i]->StepRows(*pass);
      ASSERT_TRUE(got_rows.ok()) << got_rows.error().ToString();
      EXPECT_LE(MaxRelError(got_rows->data, want_rows->data), 1e-5) << i;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Families, E2eGpu, ::testing::ValuesIn(AllFamilies()),
                         [](const ::testing::TestParamInfo<std::string>& info) { return info.param; });

// A random Llama big enough that copies take milliseconds: config.json + sharded bf16 safetensors.
std::string WriteMediumLlama(const std::string& dir) {
  constexpr int64_t kHidden = 2048, kInter = 5632, kLayers = 6, kHeads = 16, kVocab = 32000;
  std::vector<WriteSpec> tensors;
  auto add = [&](const std::string& name, std::vector<int64_t> shape) {
    tensors.push_back(WriteSpec{name, std::move(shape), DType::kBF16});
  };
  add("model.embed_tokens.weight", {kVocab, kHidden});
  for (int l = 0; l < kLayers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    add(p + "input_layernorm.weight", {kHidden});
    for (const char* proj : {"q_proj", "k_proj", "v_proj", "o_proj"}) {
      add(p + "self_attn." + proj + ".weight", {kHidden, kHidden});
    }
    add(p + "post_attention_layernorm.weight", {kHidden});
    add(p + "mlp.gate_proj.weight", {kInter, kHidden});
    add(p + "mlp.up_proj.weight", {kInter, kHidden});
    add(p + "mlp.down_proj.weight", {kHidden, kInter});
  }
  add("model.norm.weight", {kHidden});
  add("lm_head.weight", {kVocab, kHidden});
  WriterOptions w;
  w.max_shard_bytes = 256ull << 20;
  w.seed = 5;
  auto shards = WriteRandomCheckpoint(dir, tensors, w);
  if (!shards.ok()) return shards.error().ToString();
  std::ofstream(dir + "/config.json")
      << R"({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": )" << kHidden
      << R"(, "intermediate_size": )" << kInter << R"(, "num_hidden_layers": )" << kLayers
      << R"(, "num_attention_heads": )" << kHeads << R"(, "num_key_value_heads": )" << kHeads
      << R"(, "vocab_size": )" << kVocab
      << R"(, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
          "hidden_act": "silu", "tie_word_embeddings": false, "torch_dtype": "bfloat16"})";
  return "";
}

// An eager prefill of `prompt` (`batch` rows) and one decode step with plan `name`: their logits, and the
// bytes the decode step streamed. (Eager on every plan compared, so they compare bit for bit.)
struct EagerLogits {
  std::vector<float> prefill, decode;
  uint64_t streamed = 0;
};
EagerLogits EagerPrefillAndDecode(const std::string& name, const std::string& model, const std::vector<int64_t>& prompt,
                                  uint32_t batch) {
  EagerLogits out;
  ExecutorOptions options;
  options.progress = false;
  options.cuda_graphs = false;
  auto exec = Executor::Load(name, model, options);
  EXPECT_TRUE(exec.ok()) << exec.error().ToString();
  if (!exec.ok()) return out;
  auto prefill = (*exec)->Forward(prompt, batch, /*reset=*/true);
  EXPECT_TRUE(prefill.ok()) << prefill.error().ToString();
  auto decode = (*exec)->Forward(std::vector<int64_t>(batch, 17), batch);
  EXPECT_TRUE(decode.ok()) << decode.error().ToString();
  if (prefill.ok()) out.prefill = prefill->data;
  if (decode.ok()) out.decode = decode->data;
  out.streamed = (*exec)->stats().last_streamed_bytes;
  return out;
}

// Striped over two GPUs (placement candidate S) at budgets that make it stream: the same prefill and decode logits as
// the model resident on one GPU. Skipped with fewer than two GPUs.
TEST(E2eGpuStreaming, StripedOverTwoGpusMatchesOneGpu) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices < 2) GTEST_SKIP() << "fewer than two CUDA devices";
  const std::string dir = TempDir("medium_llama_striped");
  const std::string model = dir + "/model";
  ASSERT_EQ(WriteMediumLlama(model), "");
  constexpr uint32_t kBatch = 2, kSeqLen = 1024;
  const std::string big = std::to_string(64ull << 30);
  const std::string resident = dir + "/resident.bplan", striped = dir + "/striped.bplan";
  Status s = MakePlan(model, "cuda:0=" + big + ",cpu=" + big, "bf16", kBatch, kSeqLen, resident);
  ASSERT_TRUE(s.ok()) << s.error().ToString();
  auto striped_at = [&](uint64_t b0, uint64_t b1) {
    return MakePlan(model, "cuda:0=" + std::to_string(b0) + ",cuda:1=" + std::to_string(b1) + ",cpu=" + big, "bf16",
                    kBatch, kSeqLen, striped, "--auto-candidates S");
  };
  // Each GPU's smallest budget (the other's large, then its own smallest).
  auto b0 = SmallestFeasible([&](uint64_t b) { return striped_at(b, 64ull << 30).ok(); }, 0, 64ull << 30, 1 << 20);
  ASSERT_TRUE(b0.ok()) << b0.error().ToString();
  auto budget = SmallestFeasible([&](uint64_t b) { return striped_at(*b0, b).ok(); }, 0, 64ull << 30, 1 << 20);
  ASSERT_TRUE(budget.ok()) << budget.error().ToString();
  ASSERT_TRUE(striped_at(*b0, *budget).ok());
  auto plan = PlanFile::Load(striped);
  ASSERT_TRUE(plan.ok()) << plan.error().ToString();
  // Layers alternate between the GPUs, and the plan streams (over one or both links: the planner tests check both).
  std::set<int32_t> streaming;
  for (const schema::Stream* st : *plan->plan().streams()) {
    if (st->units() != nullptr && st->units()->size() > 0) streaming.insert(st->device());
  }
  EXPECT_FALSE(streaming.empty()) << "budgets " << *b0 << " and " << *budget << " bytes";
  int hops = 0, prev = -1;
  for (const schema::Block* b : *plan->plan().blocks()) {
    if (prev >= 0 && b->device() != prev) ++hops;
    prev = b->device();
  }
  EXPECT_GE(hops, 3);
  std::vector<int64_t> prompt(kBatch * 512);
  for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = static_cast<int64_t>((i * 7919) % 32000);
  const EagerLogits want = EagerPrefillAndDecode(resident, model, prompt, kBatch);
  const EagerLogits got = EagerPrefillAndDecode(striped, model, prompt, kBatch);
  ASSERT_FALSE(want.prefill.empty() || want.decode.empty() || got.prefill.empty() || got.decode.empty());
  std::printf("striped over two GPUs at %.0f and %.0f MiB: prefill max rel %.2e, decode max rel %.2e vs one GPU\n",
              *b0 / 1048576.0, *budget / 1048576.0, MaxRelError(got.prefill, want.prefill),
              MaxRelError(got.decode, want.decode));
  EXPECT_LE(MaxRelError(got.prefill, want.prefill), kBf16Tolerance);
  EXPECT_LE(MaxRelError(got.decode, want.decode), kBf16Tolerance);
  EXPECT_GT(got.streamed, 0u);
}

// Tensor parallel over two GPUs too small to hold the shards (placement candidate T, streamed): every shard places
// and streams its weights as the others, each GPU over its own link (row and column slices from pinned CPU memory,
// cast at load). Eager prefill and decode give the resident tensor-parallel plan's logits bit for bit (the same
// products in the same order), and both GPUs' links stream.
TEST(E2eGpuStreaming, TensorParallelStreamedMatchesResident) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices < 2) GTEST_SKIP() << "fewer than two CUDA devices";
  const std::string dir = TempDir("medium_llama_tp_streamed");
  const std::string model = dir + "/model";
  ASSERT_EQ(WriteMediumLlama(model), "");
  constexpr uint32_t kBatch = 2, kSeqLen = 1024;
  const std::string big = std::to_string(64ull << 30);
  const std::string resident = dir + "/resident_tp.bplan", streamed = dir + "/streamed_tp.bplan";
  Status s = MakePlan(model, "cuda:0=" + big + ",cuda:1=" + big + ",cpu=" + big, "bf16", kBatch, kSeqLen, resident,
                      "--auto-candidates T");
  ASSERT_TRUE(s.ok()) << s.error().ToString();
  auto streamed_at = [&](uint64_t b) {
    return MakePlan(model, "cuda:0=" + std::to_string(b) + ",cuda:1=" + std::to_string(b) + ",cpu=" + big, "bf16",
                    kBatch, kSeqLen, streamed, "--auto-candidates T");
  };
  auto budget = SmallestFeasible([&](uint64_t b) { return streamed_at(b).ok(); }, 0, 64ull << 30, 1 << 20);
  ASSERT_TRUE(budget.ok()) << budget.error().ToString();
  ASSERT_TRUE(streamed_at(*budget).ok());
  auto plan = PlanFile::Load(streamed);
  ASSERT_TRUE(plan.ok()) << plan.error().ToString();
  EXPECT_EQ(plan->plan().tensor_parallel(), 2u);
  std::set<int32_t> streaming;
  for (const schema::Stream* st : *plan->plan().streams()) {
    if (st->units() != nullptr && st->units()->size() > 0) streaming.insert(st->device());
  }
  EXPECT_EQ(streaming, (std::set<int32_t>{0, 1})) << "budget " << *budget << " bytes";
  std::vector<int64_t> prompt(kBatch * 512);
  for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = static_cast<int64_t>((i * 7919) % 32000);
  const EagerLogits want = EagerPrefillAndDecode(resident, model, prompt, kBatch);
  const EagerLogits got = EagerPrefillAndDecode(streamed, model, prompt, kBatch);
  ASSERT_FALSE(want.prefill.empty() || want.decode.empty() || got.prefill.empty() || got.decode.empty());
  EXPECT_EQ(want.streamed, 0u);
  std::printf("tensor parallel streamed at %.0f MiB per GPU: prefill max rel %.2e, decode max rel %.2e vs resident\n",
              *budget / 1048576.0, MaxRelError(got.prefill, want.prefill), MaxRelError(got.decode, want.decode));
  EXPECT_EQ(MaxRelError(got.prefill, want.prefill), 0.0);
  EXPECT_EQ(MaxRelError(got.decode, want.decode), 0.0);
  EXPECT_GT(got.streamed, 0u);
}

// Decode steps of a streamed plan (one GPU, CPU-tier weights copied every step) replayed from CUDA graphs that hold
// the copies and their waits (StreamEngine inline passes): the eager steps' logits within 1e-2 (bf16) at batch 1
// and 2, over steps that cross from graph to eager and back (a new prefill between them: its copy thread's run-ahead
// must not leak into the graph's ring bytes), and the graph steps are counted.
TEST(E2eGpuStreaming, StreamedDecodeGraphsMatchEager) {
  if (!HaveCuda()) GTEST_SKIP() << "no CUDA device";
  const std::string dir = TempDir("medium_llama_graphs");
  const std::string model = dir + "/model";
  ASSERT_EQ(WriteMediumLlama(model), "");
  constexpr uint32_t kBatch = 2, kSeqLen = 256;
  const std::string big = std::to_string(64ull << 30), probe = dir + "/probe.bplan", plan = dir + "/cpu_tier.bplan";
  auto min_gpu = SmallestFeasible(
      [&](uint64_t b) { return MakePlan(model, "cuda:0=" + std::to_string(b) + ",cpu=" + big, "bf16", kBatch, kSeqLen, probe).ok(); },
      0, 64ull << 30, 1 << 20);
  ASSERT_TRUE(min_gpu.ok()) << min_gpu.error().ToString();
  ASSERT_TRUE(MakePlan(model, "cuda:0=" + std::to_string(*min_gpu) + ",cpu=" + big, "bf16", kBatch, kSeqLen, plan).ok());
  auto summary = SummarizePlan(plan);
  ASSERT_TRUE(summary.ok());
  ASSERT_GT(summary->cpu_tier, 0u) << summary->ToString();
  std::unique_ptr<Executor> exec[2];  // [0]: eager, [1]: graphs
  for (int g = 0; g < 2; ++g) {
    ExecutorOptions options;
    options.progress = false;
    options.cuda_graphs = g == 1;
    auto e = Executor::Load(plan, model, options);
    ASSERT_TRUE(e.ok()) << e.error().ToString();
    exec[g] = std::move(*e);
  }
  for (int64_t batch : {1, 2, 1}) {
    std::vector<int64_t> prompt(batch * 40);
    for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = static_cast<int64_t>((i * 7919 + batch) % 32000);
    ForwardOptions fresh;
    fresh.reset = true;
    fresh.last_position_only = true;
    std::vector<float> want[6];
    for (int g = 0; g < 2; ++g) {
      auto out = exec[g]->Forward(prompt, static_cast<int>(batch), fresh);
      ASSERT_TRUE(out.ok()) << out.error().ToString();
      for (int k = 0; k < 6; ++k) {
        std::vector<int64_t> tok(batch, (17 * (k + 1)) % 32000);
        auto step = exec[g]->Forward(tok, static_cast<int>(batch), ForwardOptions{.last_position_only = true});
        ASSERT_TRUE(step.ok()) << step.error().ToString();
        if (g == 0) {
          want[k] = step->data;
        } else {
          // (The captured step's attention splits its keys by the cache's length, the eager one by the position's:
          // sums in another order. Wrong weights in a ring would differ by far more.)
          EXPECT_LE(MaxRelError(step->data, want[k]), 1e-2) << "batch " << batch << ", step " << k;
        }
      }
    }
  }
  EXPECT_EQ(exec[0]->stats().graph_steps, 0u);
  EXPECT_GE(exec[1]->stats().graph_steps, 15u);  // 18 steps; the first of each batch size is captured
  EXPECT_EQ(exec[1]->stats().graph_capture_error, "");
  std::printf("streamed decode graphs: %llu of 18 steps replayed (%s)\n",
              static_cast<unsigned long long>(exec[1]->stats().graph_steps), summary->ToString().c_str());
}

TEST(E2eGpuStreaming, CopiesOverlapComputeAndStreamingIsExact) {
  if (!HaveCuda()) GTEST_SKIP() << "no CUDA device";
  const std::string dir = TempDir("medium_llama");
  const std::string model = dir + "/model";
  ASSERT_EQ(WriteMediumLlama(model), "");
  constexpr uint32_t kBatch = 2, kSeqLen = 1024;
  const std::string big = std::to_string(64ull << 30);
  auto feasible = [&](const std::string& spec, const std::string& out) {
    return MakePlan(model, spec, "bf16", kBatch, kSeqLen, out).ok();
  };
  const std::string resident = dir + "/resident.bplan", cpu_tier = dir + "/cpu_tier.bplan",
                    disk_tier = dir + "/disk_tier.bplan", probe = dir + "/probe.bplan";
  Status s = MakePlan(model, "cuda:0=" + big + ",cpu=" + big, "bf16", kBatch, kSeqLen, resident);
  ASSERT_TRUE(s.ok()) << s.error().ToString();
  auto min_gpu = SmallestFeasible([&](uint64_t b) { return feasible("cuda:0=" + std::to_string(b) + ",cpu=" + big, probe); },
                                  0, 64ull << 30, 1 << 20);
  ASSERT_TRUE(min_gpu.ok()) << min_gpu.error().ToString();
  ASSERT_TRUE(MakePlan(model, "cuda:0=" + std::to_string(*min_gpu) + ",cpu=" + big, "bf16", kBatch, kSeqLen, cpu_tier).ok());
  auto min_cpu = SmallestFeasible(
      [&](uint64_t b) { return feasible("cuda:0=" + std::to_string(*min_gpu) + ",cpu=" + std::to_string(b), probe); }, 0,
      64ull << 30, 1 << 20);
  ASSERT_TRUE(min_cpu.ok()) << min_cpu.error().ToString();
  ASSERT_TRUE(MakePlan(model, "cuda:0=" + std::to_string(*min_gpu) + ",cpu=" + std::to_string(*min_cpu), "bf16",
                       kBatch, kSeqLen, disk_tier)
                  .ok());

  std::vector<int64_t> prompt(kBatch * 512);
  for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = static_cast<int64_t>((i * 7919) % 32000);
  std::vector<float> want_prefill, want_decode;
  const std::string disk_mapped = disk_tier + " (disk_direct_io off)";
  for (const std::string& name : {resident, cpu_tier, disk_tier, disk_mapped}) {
    const bool mapped = name == disk_mapped;
    const std::string plan = mapped ? disk_tier : name;
    auto summary = SummarizePlan(plan);
    ASSERT_TRUE(summary.ok());
    SCOPED_TRACE(name + ": " + summary->ToString());
    ExecutorOptions options;
    options.progress = false;
    options.record_trace = true;
    options.disk_direct_io = !mapped;
    options.cuda_graphs = false;  // the resident plan's decode step eager too, so the tiers compare bit for bit
    auto exec = Executor::Load(plan, model, options);
    ASSERT_TRUE(exec.ok()) << exec.error().ToString();
    // Warm up (cuBLAS handles, allocator), then measure.
    ASSERT_TRUE((*exec)->Forward(prompt, kBatch, /*reset=*/true).ok());
    auto prefill = (*exec)->Forward(prompt, kBatch, /*reset=*/true);
    ASSERT_TRUE(prefill.ok()) << prefill.error().ToString();
    const Stats p = (*exec)->stats();
    auto decode = (*exec)->Forward(std::vector<int64_t>(kBatch, 17), kBatch);
    ASSERT_TRUE(decode.ok()) << decode.error().ToString();
    const Stats d = (*exec)->stats();
    if (want_prefill.empty()) {
      want_prefill = prefill->data;
      want_decode = decode->data;
    } else {
      EXPECT_EQ(prefill->data, want_prefill) << "streamed weights must give the resident plan's logits exactly";
      EXPECT_EQ(decode->data, want_decode);
    }
    if (summary->disk_tier > 0) {
      // bf16 checkpoint, bf16 execution: no cast, so every disk-tier block is read straight into pinned staging
      // (or, with disk_direct_io off, copied from the mapping).
      std::printf("disk reads: %s, %llu direct, %llu bounce, %llu mmap (%llu fallbacks), %s read\n",
                  (*exec)->info().disk_read_mode.c_str(), static_cast<unsigned long long>(d.disk_direct_blocks),
                  static_cast<unsigned long long>(d.disk_bounce_blocks),
                  static_cast<unsigned long long>(d.disk_mmap_blocks),
                  static_cast<unsigned long long>(d.disk_direct_fallbacks),
                  (std::to_string(d.disk_read_bytes >> 20) + " MiB").c_str());
      EXPECT_EQ(d.disk_direct_fallbacks, 0u);
      EXPECT_EQ((*exec)->info().disk_direct_fallback_blocks, 0);
      EXPECT_EQ(d.disk_bounce_blocks, 0u);
      if (mapped) {
        EXPECT_EQ((*exec)->info().disk_read_mode, "mmap");
        EXPECT_EQ(d.disk_direct_blocks, 0u);
        EXPECT_GT(d.disk_mmap_blocks, 0u);
      } else {
        EXPECT_GT(d.disk_direct_blocks, 0u);
        EXPECT_EQ(d.disk_mmap_blocks, 0u);
        EXPECT_GE(d.disk_read_bytes, d.disk_tier_bytes) << "direct reads cover at least the tensors' bytes";
        bool traced = false;
        for (const CopyTiming& c : d.last_copies) traced |= c.source == "disk_read" && c.read == "direct";
        EXPECT_TRUE(traced) << "no \"direct\" disk_read in the last pass's copies";
      }
    }
    if (name == resident) {
      // Last-position logits: the lm_head computes one position; the result matches the full pass's last row
      // (cuBLAS may pick another kernel for one row, so not necessarily bit for bit).
      auto last = (*exec)->Forward(prompt, kBatch, ForwardOptions{.reset = true, .last_position_only = true});
      ASSERT_TRUE(last.ok()) << last.error().ToString();
      ASSERT_EQ(last->seq, 1);
      ASSERT_EQ(last->vocab, prefill->vocab);
      for (int64_t b = 0; b < kBatch; ++b) {
        const std::vector<float> want(prefill->row(b, prefill->seq - 1), prefill->row(b, prefill->seq - 1) + prefill->vocab);
        const std::vector<float> got(last->row(b, 0), last->row(b, 0) + last->vocab);
        EXPECT_LE(MaxRelError(got, want), 1e-2) << "row " << b;
      }
    }
    for (const Stats* st : {&p, &d}) {
      double compute_ms = 0, copy_ms = 0;
      for (const StepTiming& t : st->last_steps) compute_ms += (t.end_us - t.start_us) / 1000;
      for (const CopyTiming& c : st->last_copies) {
        if (c.source != "disk_read") copy_ms += (c.end_us - c.start_us) / 1000;
      }
      // Overlap: some H2D copy for a later step runs while an earlier step computes.
      double overlap_us = 0;
      for (const CopyTiming& c : st->last_copies) {
        if (c.source == "disk_read") continue;
        for (const StepTiming& t : st->last_steps) {
          if (t.block >= c.block) continue;
          overlap_us += std::max(0.0, std::min(c.end_us, t.end_us) - std::max(c.start_us, t.start_us));
        }
      }
      std::printf("%-40s %-7s %2zu copies, forward %8.3f ms, compute %8.3f ms, copies %8.3f ms (%s), "
                  "copy/compute overlap %8.3f ms\n",
                  summary->ToString().c_str(), st == &p ? "prefill" : "decode", st->last_copies.size(),
                  st->last_forward_ms, compute_ms, copy_ms,
                  (std::to_string(st->last_streamed_bytes >> 20) + " MiB").c_str(), overlap_us / 1000);
      if (summary->cpu_tier + summary->disk_tier > 1 && st == &p) {
        EXPECT_GT(overlap_us, 0.0) << "no copy ran while an earlier step computed";
      }
    }
    EXPECT_TRUE((*exec)->WriteTrace(dir + "/" + std::to_string(summary->disk_tier) + (mapped ? ".mapped" : "") + ".trace.json").ok());
  }
}

}  // namespace
}  // namespace bigplan::e2e
