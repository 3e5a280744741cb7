#include "executor/expert_share.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

namespace bigplan::executor_internal {
namespace {

constexpr uint64_t kMiB = 1ull << 20;

std::vector<int64_t> Rows(const std::vector<HostableExpert>& e, double share, int64_t split_rows, uint64_t min_bytes,
                          int* split) {
  std::vector<int64_t> rows(e.size(), -1);
  *split = ShareHostRows(e, share, split_rows, min_bytes, rows);
  return rows;
}

// Small experts stay whole: the host takes round(share x n) of n equal ones, the last ones.
TEST(ExpertShareTest, SmallExpertsGoWholeByRounding) {
  const std::vector<HostableExpert> seven(7, HostableExpert{9 * kMiB, 768});
  for (const double share : {0.0, 0.3, 0.45, 0.5, 0.65, 0.99, 1.0}) {
    int split = 0;
    const std::vector<int64_t> rows = Rows(seven, share, 64, 32 * kMiB, &split);
    EXPECT_EQ(split, -1);
    int host = 0;
    for (size_t i = 0; i < rows.size(); ++i) {
      if (rows[i] == 768) ++host;
      else EXPECT_EQ(rows[i], 0) << i;
      if (i > 0 && rows[i - 1] == 768) EXPECT_EQ(rows[i], 768) << "the host takes the last experts";
    }
    EXPECT_EQ(host, static_cast<int>(std::lround(share * 7))) << share;
  }
  // Half of an odd count rounds up.
  int split = 0;
  const std::vector<int64_t> five = Rows(std::vector<HostableExpert>(5, {9 * kMiB, 768}), 0.5, 64, 32 * kMiB, &split);
  EXPECT_EQ(five, (std::vector<int64_t>{0, 0, 768, 768, 768}));
}

// A large expert is split where the share ends: the host's rows a multiple of split_rows, the GPU keeping some.
TEST(ExpertShareTest, LargeExpertSplitAtTheShare) {
  const HostableExpert mixtral{352 * kMiB, 14336};
  int split = 0;
  std::vector<int64_t> rows = Rows({mixtral}, 0.7, 64, 32 * kMiB, &split);
  EXPECT_EQ(split, 0);
  EXPECT_EQ(rows[0], std::llround(0.7 * 14336 / 64) * 64);
  // Two experts at 0.7: the last whole, the first split at what is left (0.4 of it).
  rows = Rows({mixtral, mixtral}, 0.7, 64, 32 * kMiB, &split);
  EXPECT_EQ(split, 0);
  EXPECT_EQ(rows[1], 14336);
  EXPECT_EQ(rows[0], std::llround(0.4 * 14336 / 64) * 64);
  // Nearly all of it: the whole expert; nearly none: nothing (each side keeps at least split_rows rows).
  rows = Rows({mixtral}, 1.0 - 20.0 / 14336, 64, 32 * kMiB, &split);
  EXPECT_EQ(split, -1);
  EXPECT_EQ(rows[0], 14336);
  rows = Rows({mixtral}, 20.0 / 14336, 64, 32 * kMiB, &split);
  EXPECT_EQ(split, -1);
  EXPECT_EQ(rows[0], 0);
  // Splitting off (split_rows 0) or the expert below split_min_bytes: whole when the share covers half of it.
  rows = Rows({mixtral}, 0.7, 0, 32 * kMiB, &split);
  EXPECT_EQ(split, -1);
  EXPECT_EQ(rows[0], 14336);
  rows = Rows({mixtral}, 0.4, 64, 400 * kMiB, &split);
  EXPECT_EQ(split, -1);
  EXPECT_EQ(rows[0], 0);
}

// The host's bytes follow the share within one split granule, for any count of large experts.
TEST(ExpertShareTest, HostBytesFollowTheShare) {
  for (int n = 1; n <= 4; ++n) {
    const std::vector<HostableExpert> e(n, HostableExpert{352 * kMiB, 14336});
    for (double share = 0.05; share < 1.0; share += 0.05) {
      int split = 0;
      const std::vector<int64_t> rows = Rows(e, share, 64, 32 * kMiB, &split);
      double host_rows = 0;
      for (int64_t r : rows) host_rows += static_cast<double>(r);
      EXPECT_NEAR(host_rows, share * n * 14336, 64) << n << " experts, share " << share;
    }
  }
}

TEST(ExpertShareTest, EmptyAndDegenerate) {
  int split = 0;
  EXPECT_TRUE(Rows({}, 0.5, 64, 0, &split).empty());
  EXPECT_EQ(split, -1);
  // An expert without bytes or rows is never the host's.
  EXPECT_EQ(Rows({{0, 768}, {9 * kMiB, 0}}, 1.0, 64, 0, &split), (std::vector<int64_t>{0, 0}));
}

}  // namespace
// The adaptive share moves half-way to where the host's jobs and the copies would take equally long, within
// [kShareMin, kShareMax]; nothing to adapt without a share or times.
TEST(ExpertShareTest, AdaptShareBalancesHostAndCopies) {
  // Equal times: already balanced.
  EXPECT_DOUBLE_EQ(AdaptShare(0.6, 1000.0, 1000.0), 0.6);
  // The host took twice as long as the copies at share 0.5: its rate is half the copies', balance at 1/3.
  EXPECT_DOUBLE_EQ(AdaptShare(0.5, 2000.0, 1000.0), 0.5 + kShareGain * (1.0 / 3 - 0.5));
  // The copies took longer: the share grows.
  EXPECT_GT(AdaptShare(0.5, 1000.0, 3000.0), 0.5);
  // Clamped.
  EXPECT_DOUBLE_EQ(AdaptShare(0.94, 1.0, 1e9), kShareMax);
  EXPECT_DOUBLE_EQ(AdaptShare(0.03, 1e9, 1.0), kShareMin);
  // Nothing to adapt.
  EXPECT_DOUBLE_EQ(AdaptShare(0.0, 100.0, 100.0), 0.0);
  EXPECT_DOUBLE_EQ(AdaptShare(0.6, 0.0, 100.0), 0.6);
  EXPECT_DOUBLE_EQ(AdaptShare(0.6, 100.0, 0.0), 0.6);
  // Repeated forwards of a host at half the copies' rate with fixed costs on each side (100 us) settle near where
  // both take equally long.
  double share = 0.65;
  for (int i = 0; i < 30; ++i) share = AdaptShare(share, 100 + 2000 * share, 100 + 1000 * (1 - share));
  EXPECT_NEAR(100 + 2000 * share, 100 + 1000 * (1 - share), 30);
}

}  // namespace bigplan::executor_internal
