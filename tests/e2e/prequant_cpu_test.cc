// Pre-quantized checkpoints end to end on the CPU: a tiny Llama stored as FP8 (block and per-channel scales) and as
// GPTQ int4 (tools/tiny_prequant.h) is planned with the plan tool and run by the executor; its logits must equal
// those of the same model written with the dequantized weights as a plain F32 checkpoint (the oracle: the quantized
// values were drawn first, so both checkpoints hold exactly the same weights).
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <utility>


#include "executor/executor.h"
#include "tests/e2e/e2e_util.h"
#include "tools/tiny_prequant.h"

namespace bigplan::e2e {
namespace {

// fp32 execution: the kernels dequantize to float32 exactly as the oracle's weights were computed; what differs is
// the order of the float32 sums inside the matrix products (cuBLAS's, on the GPU).
#ifdef BIGPLAN_PREQUANT_ON_GPU
constexpr bool kOnGpu = true;  // prequant_gpu_test: the same plans run on cuda:0 (skips without a GPU)
constexpr double kTolerance = 1e-4;
#else
constexpr bool kOnGpu = false;
constexpr double kTolerance = 1e-5;
#endif

std::vector<std::vector<int64_t>> Prompts() {
  return {{1, 17, 200, 33, 5, 99, 128, 7}, {1, 250, 3, 64, 64, 12, 180, 41}};
}

Result<Logits> RunPlan(const std::string& model_dir, const std::string& budget, const std::string& name,
                       const std::string& extra = "") {
  const std::string plan = TempDir("prequant_plans") + "/" + name + ".bplan";
  BIGPLAN_RETURN_IF_ERROR(MakePlan(model_dir, budget, "fp32", 2, 16, plan, extra));
  ExecutorOptions options;
  options.force_cpu = !kOnGpu;
  options.progress = false;
  BIGPLAN_ASSIGN_OR_RETURN(std::unique_ptr<Executor> exec, Executor::Load(plan, model_dir, options));
  BIGPLAN_ASSIGN_OR_RETURN(Logits prefill, exec->Forward(Prompts(), true));
  // One decode step too (the KV cache path), appended to the prefill's logits.
  BIGPLAN_ASSIGN_OR_RETURN(Logits step, exec->Forward(std::vector<std::vector<int64_t>>{{42}, {77}}, false));
  prefill.data.insert(prefill.data.end(), step.data.begin(), step.data.end());
  return prefill;
}

class PreQuantCpu : public ::testing::TestWithParam<std::string> {};

TEST_P(PreQuantCpu, LogitsEqualTheDequantizedCheckpoints) {
  if (kOnGpu && !HaveCuda()) GTEST_SKIP() << "no CUDA device";
  Result<TinyQuant> kind = ParseTinyQuant(GetParam());
  ASSERT_TRUE(kind.ok());
  const std::string root = TempDir("prequant_" + GetParam());
  const std::string quantized = root + "/quantized", reference = root + "/reference";
  Status st = WriteTinyPreQuantLlama(quantized, reference, *kind);
  ASSERT_TRUE(st.ok()) << st.error().message;

  Result<Logits> want = RunPlan(reference, "cpu=1GiB", GetParam() + "_reference");
  ASSERT_TRUE(want.ok()) << want.error().message;
  // Every weight resident on the CPU; and GPU plans (run in CPU mode) whose decoder layers rest in pinned memory
  // (the converted weights in the host pool) and stream, whole or in row chunks.
  const std::string map = root + "/device_map.json";
  {
    std::ofstream out(map);
    out << R"({"model.embed_tokens": 0, "model.layers.0": "cpu", "model.layers.1": "cpu", "model.norm": 0,
              "lm_head": 0})";
  }
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"cpu=1GiB", ""},
      {"cuda:0=1GiB,cpu=1GiB", "--device-map " + map},
      {"cuda:0=1GiB,cpu=1GiB", "--device-map " + map + " --chunk-bytes 2048"},
  };
  for (const auto& [budget, extra] : cases) {
    SCOPED_TRACE(budget + " " + extra);
    Result<Logits> got = RunPlan(quantized, budget, GetParam() + "_quantized", extra);
    ASSERT_TRUE(got.ok()) << got.error().message;
    ASSERT_EQ(got->data.size(), want->data.size());
    const double err = MaxRelError(got->data, want->data);
    EXPECT_LT(err, kTolerance) << "max relative error " << err;
    std::printf("%s, %s%s: max relative error %.3g vs the dequantized checkpoint\n", GetParam().c_str(),
                budget.c_str(), extra.empty() ? "" : extra.find("chunk") != std::string::npos ? ", cpu tier, row chunks"
                                                                                             : ", cpu tier",
                err);
  }
}

INSTANTIATE_TEST_SUITE_P(Layouts, PreQuantCpu, ::testing::Values("fp8-block", "fp8-channel", "gptq", "gptq-act"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           std::string n = info.param;
                           for (char& c : n)
                             if (c == '-') c = '_';
                           return n;
                         });

}  // namespace
}  // namespace bigplan::e2e
