#include "arch/temporaries.h"

#include <gtest/gtest.h>

namespace bigplan::arch {
namespace {

TEST(AttentionQueryChunkTest, KeepsAChunksScoresWithinTheBound) {
  // 32 heads over 8192 keys: 128 queries make 32 x 128 x 8192 = 2^25 elements.
  EXPECT_EQ(AttentionQueryChunk(1, 32, 8192, 8192), 128);
  EXPECT_LE(1 * 32 * AttentionQueryChunk(1, 32, 8192, 8192) * 8192, kAttentionScoreElements);
  // Batch 4: a quarter of the queries.
  EXPECT_EQ(AttentionQueryChunk(4, 32, 8192, 8192), 32);
}

TEST(AttentionQueryChunkTest, TakesEveryQueryWhereTheyFit) {
  EXPECT_EQ(AttentionQueryChunk(1, 32, 512, 512), 512);
  EXPECT_EQ(AttentionQueryChunk(1, 4, 64, 7), 7);
}

TEST(AttentionQueryChunkTest, TakesOneQueryWhereOneRowIsMoreThanTheBound) {
  EXPECT_EQ(AttentionQueryChunk(64, 128, 1 << 20, 1 << 20), 1);
  EXPECT_EQ(AttentionQueryChunk(1, 1, 1, 0), 1);
  EXPECT_EQ(AttentionQueryChunk(0, 0, 0, 5), 5);
}

}  // namespace
}  // namespace bigplan::arch
