#include "executor/sampling.h"

#include <cmath>
#include <random>
#include <set>
#include <vector>

#include <gtest/gtest.h>

namespace bigplan::sampling {
namespace {

TEST(SamplingTest, GreedyIsArgmaxWithLowestIdOnTies) {
  const std::vector<float> logits = {0.5f, 2.0f, 2.0f, -1.0f};
  std::mt19937_64 rng(1);
  EXPECT_EQ(Argmax(logits.data(), 4), 1);
  EXPECT_EQ(SampleToken(logits.data(), 4, 0.0, 0, 1.0, rng), 1);
  EXPECT_EQ(SampleToken(logits.data(), 4, -1.0, 0, 1.0, rng), 1);
}

TEST(SamplingTest, TinyTopPKeepsOnlyTheMostLikelyToken) {
  // 1e-300 is 0 as a float, which used to turn top-p off and sample from everything.
  ASSERT_EQ(static_cast<float>(1e-300), 0.0f);
  const std::vector<float> logits = {1.0f, 1.2f, 0.9f, 1.1f};
  std::mt19937_64 rng(3);
  for (int i = 0; i < 200; ++i) EXPECT_EQ(SampleToken(logits.data(), 4, 1.0, 0, 1e-300, rng), 1);
}

TEST(SamplingTest, TopPOneSamplesEveryToken) {
  const std::vector<float> logits = {1.0f, 1.2f, 0.9f, 1.1f};
  std::mt19937_64 rng(3);
  std::set<int64_t> seen;
  for (int i = 0; i < 400; ++i) seen.insert(SampleToken(logits.data(), 4, 1.0, 0, 1.0, rng));
  EXPECT_EQ(seen.size(), 4u);
}

TEST(SamplingTest, TinyTemperatureIsGreedyInDoubles) {
  const std::vector<float> logits = {1.0f, 1.0001f, 0.9f};
  std::mt19937_64 rng(5);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(SampleToken(logits.data(), 3, 1e-300, 0, 1.0, rng), 1);
}

TEST(SamplingTest, TopKLimitsCandidates) {
  const std::vector<float> logits = {5.0f, 4.9f, 0.0f, 0.0f, 0.0f};
  std::mt19937_64 rng(9);
  for (int i = 0; i < 200; ++i) EXPECT_LT(SampleToken(logits.data(), 5, 10.0, 2, 1.0, rng), 2);
}

}  // namespace
}  // namespace bigplan::sampling
