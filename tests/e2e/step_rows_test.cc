// Executor::StepRows (continuous batching): sequences that start at different steps, each in its own KV-cache
// row at its own position, give the logits each sequence gets alone with Forward (prefill, then one token per
// step), for the Llama family's batched per-row step (llama_gqa, qwen2, and the mixture-of-experts families, whose
// one-token rows reach their experts as one batch) and the one-row-at-a-time path of other architectures (gpt2);
// plus StepRows' argument checks.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "executor/executor.h"
#include "tests/e2e/e2e_util.h"

namespace bigplan::e2e {
namespace {

int64_t Argmax(const float* row, int64_t vocab) { return std::max_element(row, row + vocab) - row; }

// Logits of the last position of each step when `prompt` runs alone: the prefill, then `steps` greedy tokens.
std::vector<std::vector<float>> Alone(Executor& exec, const std::vector<int64_t>& prompt, int steps) {
  std::vector<std::vector<float>> out;
  auto l = exec.Forward(prompt, 1, ForwardOptions{.reset = true, .last_position_only = true});
  EXPECT_TRUE(l.ok()) << l.error().ToString();
  if (!l.ok()) return out;
  out.push_back(l->data);
  for (int s = 0; s < steps; ++s) {
    const int64_t next = Argmax(out.back().data(), l->vocab);
    auto d = exec.Forward({next}, 1, ForwardOptions{.last_position_only = true});
    EXPECT_TRUE(d.ok()) << d.error().ToString();
    if (!d.ok()) return out;
    out.push_back(d->data);
  }
  return out;
}

// `gpu`: plan for cuda:0 and run there; returns without checking when no CUDA device is present.
void CheckStaggered(const std::string& family, bool gpu) {
  const std::string model = ModelDir(family);
  const std::string plan = TempDir(std::string("rows_") + (gpu ? "gpu_" : "cpu_") + family) + "/p.bplan";
  Status s = MakePlan(model, gpu ? "cuda:0=8GiB,cpu=8GiB" : "cpu=8GiB", "fp32", /*batch=*/4, /*seq_len=*/16, plan);
  ASSERT_TRUE(s.ok()) << s.error().ToString();
  ExecutorOptions options;
  options.progress = false;
  options.force_cpu = !gpu;
  auto loaded = Executor::Load(plan, model, options);
  ASSERT_TRUE(loaded.ok()) << loaded.error().ToString();
  Executor& exec = **loaded;
  if (gpu && exec.info().cpu_mode) {
    std::printf("no CUDA device: %s on cuda:0 skipped\n", family.c_str());
    return;
  }

  // Sequence i joins at step join[i] in row rows[i].
  const std::vector<std::vector<int64_t>> prompts = {{1, 2, 3, 4, 5}, {7, 9}, {30, 31, 32}, {5}};
  const std::vector<int> join = {0, 0, 2, 3};
  const std::vector<int> rows = {3, 0, 1, 2};
  constexpr int kSteps = 6;
  std::vector<std::vector<std::vector<float>>> want;
  for (const auto& p : prompts) want.push_back(Alone(exec, p, kSteps));

  std::vector<int64_t> pos(prompts.size(), 0), last(prompts.size(), -1);
  std::vector<int> done(prompts.size(), 0);  // steps of logits checked
  for (int step = 0; step < kSteps + 4; ++step) {
    std::vector<RowStep> batch;
    std::vector<size_t> who;
    for (size_t i = 0; i < prompts.size(); ++i) {
      if (step < join[i] || done[i] > kSteps) continue;
      RowStep r;
      r.row = rows[i];
      r.start_pos = pos[i];
      r.tokens = pos[i] == 0 ? prompts[i] : std::vector<int64_t>{last[i]};
      batch.push_back(r);
      who.push_back(i);
    }
    if (batch.empty()) break;
    auto l = exec.StepRows(batch);
    ASSERT_TRUE(l.ok()) << l.error().ToString();
    ASSERT_EQ(l->batch, static_cast<int64_t>(batch.size()));
    for (size_t j = 0; j < who.size(); ++j) {
      const size_t i = who[j];
      const std::vector<float>& w = want[i][done[i]];
      double max_err = 0, max_ref = 0;
      for (int64_t v = 0; v < l->vocab; ++v) {
        max_err = std::max(max_err, static_cast<double>(std::fabs(l->at(j, 0, v) - w[v])));
        max_ref = std::max(max_ref, static_cast<double>(std::fabs(w[v])));
      }
      EXPECT_LE(max_err, 1e-4 * std::max(1.0, max_ref))
          << family << ": sequence " << i << " (row " << rows[i] << ") step " << done[i];
      EXPECT_EQ(Argmax(l->row(j, 0), l->vocab), Argmax(w.data(), l->vocab)) << family << " sequence " << i;
      pos[i] += static_cast<int64_t>(batch[j].tokens.size());
      last[i] = Argmax(l->row(j, 0), l->vocab);
      ++done[i];
    }
  }
  for (size_t i = 0; i < prompts.size(); ++i) EXPECT_EQ(done[i], kSteps + 1) << "sequence " << i;

  // Argument checks.
  auto bad = exec.StepRows({});
  ASSERT_FALSE(bad.ok());
  bad = exec.StepRows({RowStep{.row = 4, .start_pos = 0, .tokens = {1}}});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message.find("max_batch"), std::string::npos) << bad.error().message;
  bad = exec.StepRows(
      {RowStep{.row = 1, .start_pos = 0, .tokens = {1}}, RowStep{.row = 1, .start_pos = 0, .tokens = {2}}});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message.find("twice"), std::string::npos);
  bad = exec.StepRows({RowStep{.row = 0, .start_pos = 15, .tokens = {1, 2}}});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message.find("max_seq_len"), std::string::npos);
  bad = exec.StepRows({RowStep{.row = 0, .start_pos = 0, .tokens = {-1}}});
  ASSERT_FALSE(bad.ok());
}

TEST(StepRows, StaggeredSequencesEqualEachAlone) {
  ASSERT_FALSE(ModelsRoot().empty()) << "no tiny models";
  for (const char* family : {"llama_gqa", "qwen2", "gpt2", "mixtral", "qwen2_moe", "qwen3_moe"}) {
    SCOPED_TRACE(family);
    CheckStaggered(family, /*gpu=*/false);
  }
}

// The same on cuda:0 (a no-op without a CUDA device; run on the GPU machine).
TEST(StepRows, StaggeredSequencesEqualEachAloneOnGpu) {
  ASSERT_FALSE(ModelsRoot().empty()) << "no tiny models";
  for (const char* family : {"llama_gqa", "qwen2", "gpt2", "mixtral", "qwen2_moe", "qwen3_moe"}) {
    SCOPED_TRACE(family);
    CheckStaggered(family, /*gpu=*/true);
  }
}

}  // namespace
}  // namespace bigplan::e2e
