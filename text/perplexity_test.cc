#include "text/perplexity.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

namespace bigplan::text {
namespace {

std::string TempPath(const std::string& name) {
  const char* dir = std::getenv("TEST_TMPDIR");
  return std::string(dir ? dir : "/tmp") + "/" + name;
}

TEST(SplitWindows, FullWindowsThenAPartialOneOfAtLeastTwoTokens) {
  auto w = SplitWindows(10, 4);
  ASSERT_TRUE(w.ok()) << w.error().ToString();
  ASSERT_EQ(w->size(), 3u);
  EXPECT_EQ((*w)[0].begin, 0);
  EXPECT_EQ((*w)[0].length, 4);
  EXPECT_EQ((*w)[1].begin, 4);
  EXPECT_EQ((*w)[2].begin, 8);
  EXPECT_EQ((*w)[2].length, 2);
  // A last window of one token has nothing to score: dropped.
  auto w9 = SplitWindows(9, 4);
  ASSERT_TRUE(w9.ok());
  EXPECT_EQ(w9->size(), 2u);
  auto exact = SplitWindows(8, 4);
  ASSERT_TRUE(exact.ok());
  EXPECT_EQ(exact->size(), 2u);
  EXPECT_TRUE(SplitWindows(1, 4)->empty());
  EXPECT_TRUE(SplitWindows(0, 4)->empty());
}

TEST(SplitWindows, RefusesWindowsShorterThanTwo) {
  auto w = SplitWindows(10, 1);
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(w.error().message.find("at least 2"), std::string::npos);
  EXPECT_FALSE(SplitWindows(-1, 4).ok());
}

TEST(TokenNll, EqualsLogSoftmaxInDouble) {
  const std::vector<float> row = {1.0f, 2.0f, 3.0f};
  const double lse = std::log(std::exp(1.0) + std::exp(2.0) + std::exp(3.0));
  EXPECT_NEAR(TokenNll(row.data(), 3, 0), lse - 1.0, 1e-12);
  EXPECT_NEAR(TokenNll(row.data(), 3, 2), lse - 3.0, 1e-12);
  // Uniform logits: log(vocab), whatever their size (max-subtracted, no overflow).
  const std::vector<float> big(1000, 80000.0f);
  EXPECT_NEAR(TokenNll(big.data(), 1000, 17), std::log(1000.0), 1e-9);
}

TEST(Argmax, TiesGoToTheLowestId) {
  const std::vector<float> row = {0.0f, 5.0f, 1.0f, 5.0f};
  EXPECT_EQ(Argmax(row.data(), 4), 1);
}

// Two windows with hand-made logits: the accumulated NLL, mean, perplexity and argmaxes.
TEST(PerplexityAccumulator, ScoresPositionsOneToLenMinusOneOfEachWindow) {
  const int64_t vocab = 3;
  PerplexityAccumulator acc;
  // Window 0: tokens 0 2 1; rows 0 and 1 are read (row 2 would predict past the window).
  const std::vector<float> l0 = {0, 0, 10,    // predicts token 2 well
                                 0, 0, 0,     // uniform for token 1
                                 99, 99, 99}; // never read
  ASSERT_TRUE(acc.AddWindow({0, 2, 1}, l0.data(), vocab).ok());
  // Window 1: tokens 1 0.
  const std::vector<float> l1 = {3, 1, 1, -1, -1, -1};
  ASSERT_TRUE(acc.AddWindow({1, 0}, l1.data(), vocab).ok());

  const double n0 = std::log(2 + std::exp(10.0)) - 10.0;
  const double n1 = std::log(3.0);
  const double n2 = std::log(std::exp(3.0) + 2 * std::exp(1.0)) - 3.0;
  EXPECT_EQ(acc.windows(), 2);
  EXPECT_EQ(acc.tokens_scored(), 3);
  EXPECT_NEAR(acc.total_nll(), n0 + n1 + n2, 1e-9);
  EXPECT_NEAR(acc.mean_nll(), (n0 + n1 + n2) / 3, 1e-9);
  EXPECT_NEAR(acc.perplexity(), std::exp((n0 + n1 + n2) / 3), 1e-9);
  EXPECT_EQ(acc.argmax(), (std::vector<int64_t>{2, 0, 0}));
}

TEST(PerplexityAccumulator, UniformLogitsGiveThePerplexityOfTheVocabulary) {
  const int64_t vocab = 50;
  const std::vector<float> logits(8 * vocab, 0.25f);
  PerplexityAccumulator acc;
  ASSERT_TRUE(acc.AddWindow({1, 2, 3, 4, 5, 6, 7, 8}, logits.data(), vocab).ok());
  EXPECT_NEAR(acc.perplexity(), 50.0, 1e-9);
}

TEST(PerplexityAccumulator, EmptyIsOne) {
  PerplexityAccumulator acc;
  EXPECT_EQ(acc.tokens_scored(), 0);
  EXPECT_EQ(acc.perplexity(), 1.0);
}

TEST(PerplexityAccumulator, RefusesBadWindowsAndAccumulatesNothing) {
  const std::vector<float> logits(6, 0.0f);
  PerplexityAccumulator acc;
  EXPECT_EQ(acc.AddWindow({1}, logits.data(), 3).error().code, ErrorCode::kInvalidArgument);
  auto out = acc.AddWindow({1, 3}, logits.data(), 3);
  ASSERT_FALSE(out.ok());
  EXPECT_NE(out.error().message.find("outside the vocabulary"), std::string::npos);
  std::vector<float> nan = logits;
  nan[1] = std::numeric_limits<float>::quiet_NaN();
  auto bad = acc.AddWindow({1, 2}, nan.data(), 3);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().code, ErrorCode::kCorrupt);
  EXPECT_NE(bad.error().message.find("not finite"), std::string::npos);
  EXPECT_EQ(acc.tokens_scored(), 0);
  EXPECT_EQ(acc.total_nll(), 0.0);
}

TEST(TokenIdsSha256, IsTheHashOfLittleEndianInt64) {
  // Python: hashlib.sha256(struct.pack("<2q", 1, 2)).hexdigest()
  EXPECT_EQ(TokenIdsSha256({1, 2}), "0c730b69905c5ef7a4ca5269f72365400bde2dd2c04eaf9bbb3d1c4a265a0131");
}

ArgmaxRecord Sample() {
  ArgmaxRecord r;
  r.tokens = 70;
  r.window = 32;
  r.tokens_sha256 = TokenIdsSha256({5, 6, 7});
  r.source = "plan /tmp/x.bplan\nsecond line";
  for (int i = 0; i < 67; ++i) r.ids.push_back(i * 7 % 13);
  return r;
}

TEST(ArgmaxFile, RoundTrips) {
  const std::string path = TempPath("argmax_roundtrip.txt");
  const ArgmaxRecord r = Sample();
  ASSERT_TRUE(WriteArgmaxFile(path, r).ok());
  auto back = ReadArgmaxFile(path);
  ASSERT_TRUE(back.ok()) << back.error().ToString();
  EXPECT_EQ(back->tokens, r.tokens);
  EXPECT_EQ(back->window, r.window);
  EXPECT_EQ(back->tokens_sha256, r.tokens_sha256);
  EXPECT_EQ(back->source, "plan /tmp/x.bplan second line");  // one line
  EXPECT_EQ(back->ids, r.ids);
}

TEST(ArgmaxFile, NamesTheFileAndTheProblem) {
  auto missing = ReadArgmaxFile(TempPath("no_such_argmax.txt"));
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().code, ErrorCode::kNotFound);
  EXPECT_NE(missing.error().message.find("no_such_argmax.txt"), std::string::npos);

  auto write = [](const std::string& name, const std::string& text) {
    const std::string path = TempPath(name);
    std::ofstream(path) << text;
    return path;
  };
  auto bad_magic = ReadArgmaxFile(write("a1.txt", "hello\n"));
  ASSERT_FALSE(bad_magic.ok());
  EXPECT_EQ(bad_magic.error().code, ErrorCode::kCorrupt);
  EXPECT_NE(bad_magic.error().message.find("a1.txt"), std::string::npos);
  auto count = ReadArgmaxFile(
      write("a2.txt", "bigplan-argmax 1\ntokens 4\nwindow 4\ntokens_sha256 ab\npositions 3\nids\n1 2\n"));
  ASSERT_FALSE(count.ok());
  EXPECT_NE(count.error().message.find("positions 3"), std::string::npos);
  auto no_key = ReadArgmaxFile(write("a3.txt", "bigplan-argmax 1\ntokens 4\npositions 0\ntokens_sha256 ab\nids\n"));
  ASSERT_FALSE(no_key.ok());
  EXPECT_NE(no_key.error().message.find("\"window\""), std::string::npos);
  auto bad_id = ReadArgmaxFile(
      write("a4.txt", "bigplan-argmax 1\ntokens 4\nwindow 4\ntokens_sha256 ab\npositions 1\nids\nx\n"));
  ASSERT_FALSE(bad_id.ok());
  EXPECT_NE(bad_id.error().message.find("\"x\""), std::string::npos);
}

TEST(GreedyAgreement, FractionOfEqualPositions) {
  ArgmaxRecord a = Sample(), b = Sample();
  auto same = GreedyAgreement(a, b, "ref.txt");
  ASSERT_TRUE(same.ok());
  EXPECT_EQ(*same, 1.0);
  b.ids[0] += 1;
  b.ids[10] += 1;
  auto two = GreedyAgreement(a, b, "ref.txt");
  ASSERT_TRUE(two.ok());
  EXPECT_NEAR(*two, 65.0 / 67.0, 1e-12);
}

TEST(GreedyAgreement, RefusesAReferenceOfOtherTokens) {
  const ArgmaxRecord a = Sample();
  ArgmaxRecord b = Sample();
  b.window = 64;
  auto w = GreedyAgreement(a, b, "ref.txt");
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.error().code, ErrorCode::kMismatch);
  EXPECT_NE(w.error().message.find("ref.txt"), std::string::npos);
  EXPECT_NE(w.error().message.find("window 64 there, 32 here"), std::string::npos);
  b = Sample();
  b.tokens_sha256 = TokenIdsSha256({5, 6, 8});
  EXPECT_NE(GreedyAgreement(a, b, "ref.txt").error().message.find("tokens_sha256"), std::string::npos);
  b = Sample();
  b.tokens = 71;
  EXPECT_NE(GreedyAgreement(a, b, "ref.txt").error().message.find("tokens 71"), std::string::npos);
  b = Sample();
  b.ids.pop_back();
  EXPECT_NE(GreedyAgreement(a, b, "ref.txt").error().message.find("positions 66"), std::string::npos);
}

}  // namespace
}  // namespace bigplan::text
