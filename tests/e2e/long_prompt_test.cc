// Every position's logits of a prompt longer than arch::kLogitsTokens come from consecutive passes (Executor::Forward,
// so the device holds one pass's logits, as the plan's activation reserve assumes): each position's logits equal the
// last-position logits of one pass over the prompt up to it, and the KV cache continues after them. CPU, float32, a
// small random Llama written by gen_checkpoint (2048 positions). On a GPU, prefill graphs capture short prompts only.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "arch/temporaries.h"
#include "executor/executor.h"
#include "tests/e2e/e2e_util.h"

namespace bigplan::e2e {
namespace {

constexpr int kVocab = 256;

Status WriteModel(const std::string& dir) { return WriteRandomLlama(dir, RandomLlama{.vocab = kVocab}); }

std::vector<float> Row(const Logits& l, int64_t b, int64_t s) { return {l.row(b, s), l.row(b, s) + l.vocab}; }

TEST(LongPrompt, EveryPositionsLogitsComeFromPassesOfBoundedLength) {
  const std::string dir = TempDir("long_prompt_model");
  ASSERT_TRUE(WriteModel(dir).ok());
  const std::string plan = dir + "/plan.bplan";
  Status planned = MakePlan(dir, "cpu=4GiB", "fp32", 2, 1200, plan);
  ASSERT_TRUE(planned.ok()) << planned.error().ToString();
  ExecutorOptions options;
  options.progress = false;
  options.force_cpu = true;
  auto exec = Executor::Load(plan, dir, options);
  ASSERT_TRUE(exec.ok()) << exec.error().ToString();
  // Two rows of 1000 tokens: 2000 tokens, passes of kLogitsTokens / 2 positions.
  constexpr int64_t kLen = 1000;
  static_assert(2 * kLen > arch::kLogitsTokens);
  std::vector<std::vector<int64_t>> rows(2);
  for (int64_t i = 0; i < kLen; ++i) {
    rows[0].push_back((i * 37 + 11) % kVocab);
    rows[1].push_back((i * i + 5) % kVocab);
  }
  auto all = (*exec)->Forward(rows, ForwardOptions{.reset = true});
  ASSERT_TRUE(all.ok()) << all.error().ToString();
  ASSERT_EQ(all->batch, 2);
  ASSERT_EQ(all->seq, kLen);
  ASSERT_EQ(all->vocab, kVocab);
  EXPECT_EQ((*exec)->cached_tokens(), kLen);
  // The cache continues: the next token's logits equal those of one pass over the 1001 tokens.
  auto next = (*exec)->Forward(std::vector<std::vector<int64_t>>{{7}, {9}}, false);
  ASSERT_TRUE(next.ok()) << next.error().ToString();
  const int64_t per_pass = arch::kLogitsTokens / 2;
  for (int64_t end : {int64_t{1}, per_pass - 1, per_pass, per_pass + 1, kLen - 1, kLen}) {
    SCOPED_TRACE("positions up to " + std::to_string(end));
    std::vector<std::vector<int64_t>> prefix(2);
    for (int b = 0; b < 2; ++b) prefix[b].assign(rows[b].begin(), rows[b].begin() + std::min(end, kLen));
    if (end == kLen) {
      prefix[0].push_back(7);
      prefix[1].push_back(9);
    }
    auto one = (*exec)->Forward(prefix, ForwardOptions{.reset = true, .last_position_only = true});
    ASSERT_TRUE(one.ok()) << one.error().ToString();
    for (int b = 0; b < 2; ++b) {
      const std::vector<float> want = Row(*one, b, 0);
      const std::vector<float> got = end == kLen ? Row(*next, b, 0) : Row(*all, b, end - 1);
      EXPECT_LE(MaxRelError(got, want), 1e-5) << "row " << b;
    }
  }
}

// On a GPU, a plan resident on one GPU pads short prompts and replays them from prefill graphs (whose memory pools
// lie outside the plan's activation reserve), but a prompt of more than arch::kPrefillGraphTokens padded tokens runs
// eagerly every time; both give the CPU's logits. Skips without a CUDA device.
TEST(LongPrompt, OnAGpuOnlyShortPromptsAreCapturedInGraphs) {
  if (!HaveCuda()) GTEST_SKIP() << "no CUDA device";
  const std::string dir = TempDir("long_prompt_gpu_model");
  ASSERT_TRUE(WriteModel(dir).ok());
  const std::string plan = dir + "/plan.bplan";
  Status planned = MakePlan(dir, "cuda:0=4GiB,cpu=4GiB", "fp32", 2, 1200, plan);
  ASSERT_TRUE(planned.ok()) << planned.error().ToString();
  ExecutorOptions options;
  options.progress = false;
  auto gpu = Executor::Load(plan, dir, options);
  ASSERT_TRUE(gpu.ok()) << gpu.error().ToString();
  options.force_cpu = true;
  auto cpu = Executor::Load(plan, dir, options);
  ASSERT_TRUE(cpu.ok()) << cpu.error().ToString();
  for (int64_t len : {int64_t{300}, int64_t{1100}}) {
    SCOPED_TRACE("rows of " + std::to_string(len) + " tokens");
    std::vector<std::vector<int64_t>> rows(2);
    for (int64_t i = 0; i < len; ++i) {
      rows[0].push_back((i * 31 + 3) % kVocab);
      rows[1].push_back((i * 17 + 8) % kVocab);
    }
    const ForwardOptions fresh{.reset = true, .last_position_only = true};
    auto want = (*cpu)->Forward(rows, fresh);
    ASSERT_TRUE(want.ok()) << want.error().ToString();
    const uint64_t before = (*gpu)->stats().graph_prefills;
    for (int pass = 0; pass < 3; ++pass) {
      auto got = (*gpu)->Forward(rows, fresh);
      ASSERT_TRUE(got.ok()) << got.error().ToString();
      EXPECT_LE(MaxRelError(got->data, want->data), 1e-4) << "pass " << pass;
    }
    // 2 x 320 padded tokens: captured at the second pass, replayed at the third; 2 x 1100: never.
    EXPECT_EQ((*gpu)->stats().graph_prefills - before, 2 * len <= arch::kPrefillGraphTokens ? 1u : 0u);
  }
}

}  // namespace
}  // namespace bigplan::e2e
