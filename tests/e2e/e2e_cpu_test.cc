// End to end on the CPU: tiny random-weight models of every family (made with transformers), planned with the
// `plan` tool under the budgets of PlanSuite (all resident on cuda:0, CPU tier, disk tier, mixed, CPU compute,
// CPU compute + disk, explicit tiers), run by the executor in CPU-only mode, and compared with transformers'
// logits for a prefill and KV-cached decode steps.
//   float32: max|ours - transformers| / max|transformers| <= 1e-4 at every step, and the greedy tokens equal
//            transformers'.
//   placement never changes the result: every plan of one model gives the same tokens, and logits equal to
//            1e-6 relative (the same kernels run on the same device; only where the weights rest differs).
//   bfloat16 (weights cast from the float32 checkpoint at load, or while staging disk-tier blocks): max relative
//            error <= 3e-2 (bf16 keeps 8 significant bits, ~4e-3 relative per rounding, compounded over the
//            layers), top-1 agreement >= 90% where transformers' top-1 leads by more than 2% of the logit range,
//            and every bf16 plan gives the same tokens.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <memory>

#include "executor/executor.h"
#include "tests/e2e/e2e_util.h"

namespace bigplan::e2e {
namespace {

constexpr double kF32Tolerance = 1e-4;
constexpr double kSamePlacementTolerance = 1e-6;
constexpr double kBf16Tolerance = 3e-2;
constexpr double kBf16TopOne = 0.9;
constexpr double kTopOneMargin = 0.02;

class E2eCpu : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (ModelsRoot().empty()) GTEST_FAIL() << "no tiny models (see the generator's output above)";
  }

  void RunSuite(const std::string& dtype, double tolerance, bool exact_tokens) {
    const std::string family = GetParam();
    const std::string model = ModelDir(family);
    auto ref = LoadReference(model);
    ASSERT_TRUE(ref.ok()) << ref.error().ToString();
    // llama_dynamic's max_position_embeddings (8) caps the run shape: its prefill (7) and first decode step.
    const uint32_t seq_len = SuiteSeqLen(model);
    const int64_t steps = std::min<int64_t>(ref->steps, seq_len - ref->prompt_len);
    auto plans = PlanSuite(model, TempDir(family + "_" + dtype), dtype, seq_len);
    ASSERT_TRUE(plans.ok()) << plans.error().ToString();

    std::vector<std::vector<int64_t>> first_tokens;
    std::vector<Logits> first_logits;
    std::string first_name;
    for (const PlanCase& c : *plans) {
      SCOPED_TRACE(family + " " + dtype + " " + c.name + " (" + c.max_memory + "; " + c.summary.ToString() + ")");
      ExecutorOptions options;
      options.force_cpu = true;
      options.progress = false;
      auto exec = Executor::Load(c.path, model, options);
      ASSERT_TRUE(exec.ok()) << exec.error().ToString();
      ASSERT_TRUE((*exec)->info().cpu_mode);
      auto errors = CompareWithReference(**exec, *ref, steps);
      ASSERT_TRUE(errors.ok()) << errors.error().ToString();
      const double top1 = TopOneAgreement(*errors, *ref, kTopOneMargin);
      EXPECT_LE(errors->max_rel, tolerance);
      if (!exact_tokens) {
        EXPECT_GE(top1, kBf16TopOne);
      }
      const Stats stats = (*exec)->stats();
      if (c.summary.disk_tier > 0) {
        EXPECT_GT(stats.disk_tier_bytes, 0u);
      }
      EXPECT_EQ(stats.cpu_tier_bytes, 0u) << "CPU-tier weights are used in place on the CPU";

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
      if (first_tokens.empty()) {
        first_tokens = gen->tokens;
        first_logits = errors->logits;
        first_name = c.name;
      } else {
        EXPECT_EQ(gen->tokens, first_tokens) << "plan " << c.name << " vs " << first_name;
        for (size_t k = 0; k < first_logits.size(); ++k) {
          EXPECT_LE(MaxRelError(errors->logits[k].data, first_logits[k].data), kSamePlacementTolerance)
              << "step " << k << ": plan " << c.name << " vs " << first_name;
        }
      }
    }
    // The suite covers what it is meant to.
    auto find = [&](const std::string& name) -> const PlanSummary& {
      for (const PlanCase& c : *plans) {
        if (c.name == name) return c.summary;
      }
      static PlanSummary none;
      return none;
    };
    EXPECT_EQ(find("gpu_resident").gpu_tier, find("gpu_resident").blocks);
    EXPECT_GT(find("cpu_tier").cpu_tier, 0);
    EXPECT_GT(find("disk_tier").disk_tier, 0);
    EXPECT_EQ(find("cpu_compute").cpu_compute, find("cpu_compute").blocks);
    EXPECT_GT(find("cpu_compute_disk").disk_tier, 0);
    EXPECT_EQ(find("cpu_compute_disk").cpu_compute, find("cpu_compute_disk").blocks);
    EXPECT_GT(find("explicit_tiers").cpu_tier, 0);
    EXPECT_GT(find("explicit_tiers").disk_tier, 0);
  }
};

TEST_P(E2eCpu, Float32EveryPlacementMatchesTransformers) { RunSuite("fp32", kF32Tolerance, true); }

TEST_P(E2eCpu, Bfloat16EveryPlacementAgrees) { RunSuite("bf16", kBf16Tolerance, false); }

INSTANTIATE_TEST_SUITE_P(Families, E2eCpu, ::testing::ValuesIn(AllFamilies()),
                         [](const ::testing::TestParamInfo<std::string>& info) { return info.param; });

}  // namespace
}  // namespace bigplan::e2e
