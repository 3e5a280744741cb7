// The generation loop over a fake forward pass whose logits make (last token + 1) % vocab the argmax.
#include "executor/generation.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <set>

namespace bigplan::executor_internal {
namespace {

constexpr int64_t kVocab = 10;

// Row b's logits: `peak` at (last token of b + 1) % vocab, 0 elsewhere. Records every call.
struct FakeModel {
  float peak = 10.0f;
  int fail_at_step = -1;
  struct Call {
    int step;
    std::vector<int64_t> tokens;
    int64_t batch, seq;
  };
  std::vector<Call> calls;
  std::vector<float> logits;

  GenerationForward Forward() {
    return [this](int step, const std::vector<int64_t>& tokens, int64_t batch, int64_t seq) -> Result<LastLogits> {
      calls.push_back({step, tokens, batch, seq});
      if (step == fail_at_step) return MakeError(ErrorCode::kDevice, "cuda:0 fell off the bus");
      logits.assign(batch * kVocab, 0.0f);
      for (int64_t b = 0; b < batch; ++b) {
        const int64_t last = tokens[b * seq + seq - 1];
        logits[b * kVocab + (last + 1) % kVocab] = peak;
      }
      return LastLogits{logits.data(), kVocab};
    };
  }
};

TEST(Generation, GreedyFollowsTheArgmaxForMaxNewTokens) {
  FakeModel model;
  GenerateOptions options;
  options.max_new_tokens = 5;
  Result<GenerateResult> r = Generate({{1, 2, 3}}, options, 64, model.Forward());
  ASSERT_TRUE(r.ok()) << r.error().ToString();
  EXPECT_EQ(r->tokens, (std::vector<std::vector<int64_t>>{{4, 5, 6, 7, 8}}));
  EXPECT_EQ(r->stopped, std::vector<bool>{false});
  EXPECT_EQ(r->decode_ms.size(), 4u);
  EXPECT_GE(r->prefill_ms, 0.0);
  // The prefill gets the whole prompt, every later step the previous token alone.
  ASSERT_EQ(model.calls.size(), 5u);
  EXPECT_EQ(model.calls[0].step, 0);
  EXPECT_EQ(model.calls[0].tokens, (std::vector<int64_t>{1, 2, 3}));
  EXPECT_EQ(model.calls[0].seq, 3);
  for (int n = 1; n < 5; ++n) {
    EXPECT_EQ(model.calls[n].step, n);
    EXPECT_EQ(model.calls[n].seq, 1);
    EXPECT_EQ(model.calls[n].tokens, (std::vector<int64_t>{3 + n}));
  }
}

TEST(Generation, WrapsAroundTheVocabulary) {
  FakeModel model;
  GenerateOptions options;
  options.max_new_tokens = 3;
  Result<GenerateResult> r = Generate({{8}}, options, 64, model.Forward());
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->tokens[0], (std::vector<int64_t>{9, 0, 1}));
}

TEST(Generation, StopTokenEndsTheRowAndIsIncluded) {
  FakeModel model;
  GenerateOptions options;
  options.max_new_tokens = 10;
  options.stop_token_ids = {42, 6};
  Result<GenerateResult> r = Generate({{2, 3}}, options, 64, model.Forward());
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->tokens[0], (std::vector<int64_t>{4, 5, 6}));
  EXPECT_EQ(r->stopped[0], true);
  EXPECT_EQ(model.calls.size(), 3u);  // every row stopped: no further pass
  EXPECT_EQ(r->decode_ms.size(), 2u);
}

TEST(Generation, RowsFinishAtDifferentTimes) {
  FakeModel model;
  GenerateOptions options;
  options.max_new_tokens = 6;
  options.stop_token_ids = {5};
  std::vector<std::pair<int, std::vector<int64_t>>> steps;
  options.on_step = [&](int step, const std::vector<int64_t>& emitted) {
    steps.emplace_back(step, emitted);
    return true;
  };
  // Row 0 reaches 5 at its second token, row 1 at its fourth, row 2 never (within 6 tokens).
  Result<GenerateResult> r = Generate({{0, 3}, {7, 1}, {9, 5}}, options, 64, model.Forward());
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->tokens[0], (std::vector<int64_t>{4, 5}));
  EXPECT_EQ(r->tokens[1], (std::vector<int64_t>{2, 3, 4, 5}));
  EXPECT_EQ(r->tokens[2], (std::vector<int64_t>{6, 7, 8, 9, 0, 1}));
  EXPECT_EQ(r->stopped, (std::vector<bool>{true, true, false}));
  // on_step: -1 for rows already stopped.
  ASSERT_EQ(steps.size(), 6u);
  EXPECT_EQ(steps[0].second, (std::vector<int64_t>{4, 2, 6}));
  EXPECT_EQ(steps[1].second, (std::vector<int64_t>{5, 3, 7}));
  EXPECT_EQ(steps[2].second, (std::vector<int64_t>{-1, 4, 8}));
  EXPECT_EQ(steps[4].second, (std::vector<int64_t>{-1, -1, 0}));
  // A stopped row keeps the batch's shape, fed its stop token.
  ASSERT_EQ(model.calls.size(), 6u);
  EXPECT_EQ(model.calls[0].tokens, (std::vector<int64_t>{0, 3, 7, 1, 9, 5}));
  EXPECT_EQ(model.calls[0].batch, 3);
  EXPECT_EQ(model.calls[3].tokens, (std::vector<int64_t>{5, 4, 8}));
  EXPECT_EQ(model.calls[5].tokens, (std::vector<int64_t>{5, 5, 0}));
}

TEST(Generation, OnStepFalseEndsEarly) {
  FakeModel model;
  GenerateOptions options;
  options.max_new_tokens = 8;
  options.on_step = [](int step, const std::vector<int64_t>&) { return step < 2; };
  Result<GenerateResult> r = Generate({{1}, {4}}, options, 64, model.Forward());
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->tokens[0], (std::vector<int64_t>{2, 3, 4}));
  EXPECT_EQ(r->tokens[1], (std::vector<int64_t>{5, 6, 7}));
  EXPECT_EQ(r->stopped, (std::vector<bool>{false, false}));
  EXPECT_EQ(model.calls.size(), 3u);
}

TEST(Generation, SamplingIsDeterministicPerSeed) {
  // Flat logits: with a temperature every token is likely, so tokens come from the generator alone.
  auto run = [](uint64_t seed, double temperature, double top_p) {
    FakeModel model;
    model.peak = 0.0f;
    GenerateOptions options;
    options.max_new_tokens = 16;
    options.temperature = temperature;
    options.top_p = top_p;
    options.seed = seed;
    Result<GenerateResult> r = Generate({{1}, {2}}, options, 64, model.Forward());
    EXPECT_TRUE(r.ok());
    return r->tokens;
  };
  const auto a = run(7, 1.0, 1.0);
  EXPECT_EQ(a, run(7, 1.0, 1.0));
  EXPECT_NE(a, run(8, 1.0, 1.0));
  std::set<int64_t> seen(a[0].begin(), a[0].end());
  EXPECT_GT(seen.size(), 3u);  // really sampled
  // Greedy ignores the seed: ties go to the lowest id.
  EXPECT_EQ(run(1, 0.0, 1.0), run(2, 0.0, 1.0));
  EXPECT_EQ(run(1, 0.0, 1.0)[0], std::vector<int64_t>(16, 0));
}

TEST(Generation, TinyTopPKeepsTheMostLikelyToken) {
  // top_p is a double throughout: 1e-300 (0 as a float) keeps the argmax, whatever the temperature.
  FakeModel model;
  model.peak = 0.5f;
  GenerateOptions options;
  options.max_new_tokens = 6;
  options.temperature = 5.0;
  options.top_p = 1e-300;
  options.seed = 3;
  Result<GenerateResult> r = Generate({{0}}, options, 64, model.Forward());
  ASSERT_TRUE(r.ok()) << r.error().ToString();
  EXPECT_EQ(r->tokens[0], (std::vector<int64_t>{1, 2, 3, 4, 5, 6}));
}

TEST(Generation, BadArgumentsAreRefusedBeforeAnyForward) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  struct Case {
    std::vector<std::vector<int64_t>> prompts;
    GenerateOptions options;
    std::string message;
  };
  std::vector<Case> cases;
  auto with = [](auto change) {
    GenerateOptions o;
    change(o);
    return o;
  };
  cases.push_back({{}, {}, "empty prompt"});
  cases.push_back({{{}}, {}, "empty prompt"});
  cases.push_back({{{1, 2}, {3}}, {}, "prompts of different lengths (2 and 1 tokens)"});
  cases.push_back({{{1}}, with([](auto& o) { o.max_new_tokens = 0; }), "max_new_tokens 0 must be at least 1"});
  cases.push_back({{{1}}, with([&](auto& o) { o.temperature = nan; }), "temperature nan"});
  cases.push_back({{{1}}, with([&](auto& o) { o.temperature = inf; }), "temperature inf"});
  cases.push_back({{{1}}, with([](auto& o) { o.top_p = 0.0; }), "top_p 0,"});
  cases.push_back({{{1}}, with([](auto& o) { o.top_p = 1.5; }), "top_p 1.5,"});
  cases.push_back({{{1}}, with([&](auto& o) { o.top_p = nan; }), "top_p nan"});
  cases.push_back({{{1}}, with([](auto& o) { o.top_k = -1; }), "top_k -1"});
  cases.push_back({{{1, 2, 3}}, with([](auto& o) { o.max_new_tokens = 6; }),
                   "prompt of 3 tokens + 6 new tokens = 9 exceeds the plan's max_seq_len 8"});
  for (const Case& c : cases) {
    FakeModel model;
    Result<GenerateResult> r = Generate(c.prompts, c.options, 8, model.Forward());
    ASSERT_FALSE(r.ok()) << c.message;
    EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument) << c.message;
    EXPECT_NE(r.error().message.find(c.message), std::string::npos) << r.error().message;
    EXPECT_TRUE(model.calls.empty()) << c.message;
  }
  // The limit itself is fine: 3 + 5 = 8.
  FakeModel model;
  GenerateOptions ok;
  ok.max_new_tokens = 5;
  EXPECT_TRUE(Generate({{1, 2, 3}}, ok, 8, model.Forward()).ok());
}

TEST(Generation, ForwardErrorsAreReturned) {
  FakeModel model;
  model.fail_at_step = 2;
  GenerateOptions options;
  options.max_new_tokens = 5;
  Result<GenerateResult> r = Generate({{1}}, options, 64, model.Forward());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kDevice);
  EXPECT_EQ(r.error().message, "cuda:0 fell off the bus");
  EXPECT_EQ(model.calls.size(), 3u);
}

}  // namespace
}  // namespace bigplan::executor_internal
