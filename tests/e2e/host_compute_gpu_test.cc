// Host compute in decode (plan --cpu-share) on the GPU: a random-weight Llama whose decoder layers and lm_head
// stream from pinned CPU memory is planned with and without a host share, for bf16 and each --weights format. The
// plan with the share must give the same logits as the plan without (the oracle: the same weights, every row
// streamed and multiplied on the GPU; that path matches transformers in e2e_gpu_test) within the rounding of
// bf16 outputs, for a prefill (more tokens than host_max_tokens: every row streams), KV-cached decode steps of
// batch 2 and 1 (the host multiplies its rows), greedy generation and continuous batching (StepRows, slots ring);
// the host must have computed the bytes the plan gives it. Needs CUDA (skips without it) and the plan and gen_checkpoint tools (runfiles).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "executor/executor.h"
#include "tests/e2e/e2e_util.h"

namespace bigplan::e2e {
namespace {

constexpr int kHidden = 512, kInter = 1024, kLayers = 3, kHeads = 8, kKvHeads = 4, kHeadDim = 64, kVocab = 2048;

// config.json, spec.json and the random bf16 checkpoint (gen_checkpoint) in `dir`.
Status WriteModel(const std::string& dir) {
  return WriteRandomLlama(dir, RandomLlama{.hidden = kHidden, .intermediate = kInter, .layers = kLayers,
                                           .heads = kHeads, .kv_heads = kKvHeads, .head_dim = kHeadDim,
                                           .vocab = kVocab, .max_positions = 256, .dtype = "BF16", .seed = 11,
                                           .scale = 0.05});
}

struct RunResult {
  std::vector<Logits> logits;  // prefill, then each decode step
  std::vector<std::vector<int64_t>> generated;
  Stats stats;
  ModelInfo info;
  Status step_rows;
};

Result<RunResult> RunPlan(const std::string& model, const std::string& plan) {
  ExecutorOptions options;
  options.progress = false;
  options.record_trace = true;
  BIGPLAN_ASSIGN_OR_RETURN(std::unique_ptr<Executor> exec, Executor::Load(plan, model, options));
  RunResult r;
  r.info = exec->info();
  const std::vector<std::vector<int64_t>> prompts = {{1, 17, 200, 33, 5, 99, 128, 7, 1500, 3},
                                                     {1, 250, 3, 64, 64, 12, 180, 41, 2000, 9}};
  BIGPLAN_ASSIGN_OR_RETURN(Logits prefill, exec->Forward(prompts, true));
  r.logits.push_back(prefill);
  for (int step = 0; step < 4; ++step) {
    BIGPLAN_ASSIGN_OR_RETURN(Logits l, exec->Forward(std::vector<std::vector<int64_t>>{{42 + step}, {77 + step}}, false));
    r.logits.push_back(l);
  }
  // Batch 1 decode (fewer tokens than host_max_tokens).
  BIGPLAN_ASSIGN_OR_RETURN(Logits one, exec->Forward(std::vector<std::vector<int64_t>>{{5, 6, 7}}, true));
  r.logits.push_back(one);
  BIGPLAN_ASSIGN_OR_RETURN(Logits step, exec->Forward(std::vector<std::vector<int64_t>>{{8}}, false));
  r.logits.push_back(step);
  GenerateOptions g;
  g.max_new_tokens = 12;
  BIGPLAN_ASSIGN_OR_RETURN(GenerateResult gen, exec->Generate(prompts, g));
  r.generated = gen.tokens;
  // Continuous batching: two prompts in their own rows (a pass of 7 tokens: every row streams), then two passes of
  // both rows' next tokens (2 tokens: the host computes its rows). Refused for the chunks ring (--chunk-bytes).
  Result<Logits> rows_prefill = exec->StepRows({{0, 0, {1, 2, 3, 4}}, {1, 0, {9, 8, 7}}});
  r.step_rows = rows_prefill.status();
  if (rows_prefill.ok()) {
    r.logits.push_back(*rows_prefill);
    for (int step = 0; step < 2; ++step) {
      BIGPLAN_ASSIGN_OR_RETURN(Logits l, exec->StepRows({{0, 4 + step, {11 + step}}, {1, 3 + step, {21 + step}}}));
      r.logits.push_back(l);
    }
  }
  r.stats = exec->stats();
  return r;
}

TEST(HostComputeGpu, SameLogitsAsStreamingEveryRow) {
  if (!HaveCuda()) GTEST_SKIP() << "no CUDA device";
  const std::string dir = TempDir("host_compute_model");
  Status written = WriteModel(dir);
  ASSERT_TRUE(written.ok()) << written.error().ToString();
  // Embedding, final norm resident; decoder layers and lm_head stream from pinned CPU memory.
  const std::string map = dir + "/device_map.json";
  {
    std::ofstream out(map);
    out << R"({"model.embed_tokens": 0, "model.layers.0": "cpu", "model.layers.1": "cpu", "model.layers.2": "cpu",
               "model.norm": 0, "lm_head": "cpu"})";
  }
  for (const std::string weights : {"bf16", "fp8", "int8", "int4"}) {
    for (const std::string chunks : {"", " --chunk-bytes 256KiB"}) {
      SCOPED_TRACE(weights + chunks);
      const std::string extra = "--device-map " + map + " --weights " + weights + chunks;
      const std::string plain = dir + "/" + weights + "_plain.bplan", hybrid = dir + "/" + weights + "_host.bplan";
      Status a = MakePlan(dir, "cuda:0=1GiB,cpu=4GiB", "bf16", 2, 64, plain, extra);
      ASSERT_TRUE(a.ok()) << a.error().ToString();
      Status b = MakePlan(dir, "cuda:0=1GiB,cpu=4GiB", "bf16", 2, 64, hybrid, extra + " --cpu-share 0.4");
      ASSERT_TRUE(b.ok()) << b.error().ToString();
      Result<RunResult> want = RunPlan(dir, plain);
      ASSERT_TRUE(want.ok()) << want.error().ToString();
      Result<RunResult> got = RunPlan(dir, hybrid);
      ASSERT_TRUE(got.ok()) << got.error().ToString();
      EXPECT_EQ(want->info.host_max_tokens, 0u);
      EXPECT_EQ(got->info.host_max_tokens, 2u);
      ASSERT_GT(got->info.host_bytes, 0u);
      // Decode forwards (4 batch-2 steps, 1 batch-1 step, 11 generation steps, and 2 StepRows passes of two
      // one-token rows in the slots ring) used the host; prefills did not.
      // The slots ring always serves StepRows; the chunks ring does when no chunk reuses another's ring bytes within
      // its block (depends on the ring's size).
      if (chunks.empty()) {
        EXPECT_TRUE(want->step_rows.ok()) << want->step_rows.error().message;
        EXPECT_TRUE(got->step_rows.ok()) << got->step_rows.error().message;
      }
      const uint64_t decodes = got->step_rows.ok() ? 18 : 16;
      EXPECT_EQ(got->stats.host_compute_forwards, decodes);
      EXPECT_EQ(got->stats.host_compute_bytes, decodes * got->info.host_bytes);
      if (!got->step_rows.ok()) {
        EXPECT_EQ(got->step_rows.error().code, ErrorCode::kUnsupported);
        EXPECT_NE(got->step_rows.error().message.find("plan without --cpu-share"), std::string::npos)
            << got->step_rows.error().message;
      }
      EXPECT_EQ(want->stats.host_compute_bytes, 0u);
      // The last forward (a generation step, or a StepRows pass) multiplied on the host: its timings show the host's
      // products.
      int host_products = 0;
      for (const CopyTiming& c : got->stats.last_copies) host_products += c.source == "host";
      EXPECT_EQ(host_products, kLayers * 7 + 1);
      if (got->step_rows.ok() != want->step_rows.ok()) {
        // One of the two plans' rings could not serve StepRows: compare the forwards both ran.
        const size_t n = std::min(got->logits.size(), want->logits.size());
        got->logits.resize(n);
        want->logits.resize(n);
      }
      ASSERT_EQ(got->logits.size(), want->logits.size());
      double worst = 0;
      for (size_t k = 0; k < want->logits.size(); ++k) {
        const double e = MaxRelError(got->logits[k].data, want->logits[k].data);
        worst = std::max(worst, e);
        // bf16 outputs: the host sums in float32 and rounds once, like cuBLAS, in another order; a last-bit
        // difference in one output moves the later layers a little.
        EXPECT_LE(e, 3e-2) << "forward " << k;
      }
      int same = 0, total = 0;
      for (size_t b = 0; b < want->generated.size(); ++b) {
        for (size_t i = 0; i < want->generated[b].size() && i < got->generated[b].size(); ++i) {
          ++total;
          if (got->generated[b][i] != want->generated[b][i]) break;
          ++same;
        }
      }
      EXPECT_GE(same, total * 3 / 4) << "greedy tokens diverged early";
      std::printf("%-5s%-22s host share %.2f MiB per decode forward: max rel err %.2e, same greedy prefix %d/%d\n",
                  weights.c_str(), chunks.c_str(), got->info.host_bytes / 1048576.0, worst, same, total);
    }
  }
}

TEST(HostComputeGpu, OffByOptionStreamsEveryRow) {
  if (!HaveCuda()) GTEST_SKIP() << "no CUDA device";
  const std::string dir = TempDir("host_compute_model_off");
  Status written = WriteModel(dir);
  ASSERT_TRUE(written.ok()) << written.error().ToString();
  const std::string map = dir + "/device_map.json";
  std::ofstream(map) << R"({"model.embed_tokens": 0, "model.layers.0": "cpu", "model.layers.1": "cpu",
                            "model.layers.2": "cpu", "model.norm": 0, "lm_head": 0})";
  const std::string plan = dir + "/host.bplan";
  Status made = MakePlan(dir, "cuda:0=1GiB,cpu=4GiB", "bf16", 1, 64, plan, "--device-map " + map + " --cpu-share 0.5");
  ASSERT_TRUE(made.ok()) << made.error().ToString();
  ExecutorOptions options;
  options.progress = false;
  options.host_compute = false;
  auto exec = Executor::Load(plan, dir, options);
  ASSERT_TRUE(exec.ok()) << exec.error().ToString();
  EXPECT_EQ((*exec)->info().host_max_tokens, 0u);
  auto l = (*exec)->Forward(std::vector<std::vector<int64_t>>{{1, 2, 3}}, true);
  ASSERT_TRUE(l.ok()) << l.error().ToString();
  auto s = (*exec)->Forward(std::vector<std::vector<int64_t>>{{4}}, false);
  ASSERT_TRUE(s.ok()) << s.error().ToString();
  EXPECT_EQ((*exec)->stats().host_compute_bytes, 0u);
  EXPECT_GT((*exec)->stats().cpu_tier_bytes, 0u);
}

}  // namespace
}  // namespace bigplan::e2e
