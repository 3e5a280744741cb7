// The threading contract of executor.h: concurrent calls on one executor are serialized and never corrupt its
// state. Several threads call Forward (a fresh sequence each time: reset + prefill as one call) and Generate at
// once on one executor whose plan streams disk-tier blocks through worker threads (CPU compute, and explicit
// GPU/CPU/disk tiers, on cuda:0 where there is one); every result must equal the single-threaded one, bit for bit.
#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "executor/executor.h"
#include "tests/e2e/e2e_util.h"

namespace bigplan::e2e {
namespace {

void CheckConcurrentCalls(const std::string& model, const std::string& plan) {
  ExecutorOptions options;  // CPU-only mode when there is no CUDA device
  options.progress = false;
  auto loaded = Executor::Load(plan, model, options);
  ASSERT_TRUE(loaded.ok()) << loaded.error().ToString();
  Executor& exec = **loaded;

  const std::vector<std::vector<std::vector<int64_t>>> prompts = {
      {{1, 2, 3, 4, 5}}, {{9, 8, 7}, {6, 5, 4}}, {{17, 3, 150, 42, 8, 8, 1}}, {{100}, {101}}};
  GenerateOptions greedy;
  greedy.max_new_tokens = 6;
  GenerateOptions sampled = greedy;
  sampled.temperature = 0.8f;
  sampled.top_k = 20;
  sampled.seed = 3;

  std::vector<Logits> want_logits;
  std::vector<std::vector<std::vector<int64_t>>> want_greedy, want_sampled;
  for (const auto& p : prompts) {
    auto l = exec.Forward(p, /*reset=*/true);
    ASSERT_TRUE(l.ok()) << l.error().ToString();
    want_logits.push_back(std::move(*l));
    auto g = exec.Generate(p, greedy);
    ASSERT_TRUE(g.ok()) << g.error().ToString();
    want_greedy.push_back(g->tokens);
    auto s = exec.Generate(p, sampled);
    ASSERT_TRUE(s.ok()) << s.error().ToString();
    want_sampled.push_back(s->tokens);
  }

  constexpr int kThreads = 6, kIterations = 8;
  std::atomic<int> mismatches{0}, failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kIterations; ++i) {
        const size_t p = (t + i) % prompts.size();
        switch ((t + 2 * i) % 3) {
          case 0: {
            auto l = exec.Forward(prompts[p], /*reset=*/true);
            if (!l.ok()) ++failures;
            else if (l->data != want_logits[p].data) ++mismatches;
            break;
          }
          case 1: {
            auto g = exec.Generate(prompts[p], greedy);
            if (!g.ok()) ++failures;
            else if (g->tokens != want_greedy[p]) ++mismatches;
            break;
          }
          default: {
            auto s = exec.Generate(prompts[p], sampled);
            if (!s.ok()) ++failures;
            else if (s->tokens != want_sampled[p]) ++mismatches;
            (void)exec.stats();  // safe at any time
            break;
          }
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(mismatches.load(), 0);
  // Still consistent afterwards.
  auto l = exec.Forward(prompts[2], /*reset=*/true);
  ASSERT_TRUE(l.ok());
  EXPECT_EQ(l->data, want_logits[2].data);
  EXPECT_GE(exec.stats().forward_count, uint64_t{kThreads * kIterations});
}

TEST(ThreadSafety, ConcurrentCallsEqualSingleThreadedResults) {
  ASSERT_FALSE(ModelsRoot().empty()) << "no tiny models";
  const std::string model = ModelDir("llama_gqa");
  // bf16 from a float32 checkpoint: disk-tier blocks are cast by worker threads while staging.
  auto plans = PlanSuite(model, TempDir("threads"), "bf16");
  ASSERT_TRUE(plans.ok()) << plans.error().ToString();
  for (const PlanCase& c : *plans) {
    if (c.name != "cpu_compute_disk" && c.name != "explicit_tiers") continue;
    SCOPED_TRACE(c.name + ": " + c.summary.ToString());
    CheckConcurrentCalls(model, c.path);
  }
}

}  // namespace
}  // namespace bigplan::e2e
