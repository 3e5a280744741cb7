#include "support/checked_math.h"

#include "gtest/gtest.h"

namespace bigplan {
namespace {

TEST(CheckedMathTest, ExactResults) {
  EXPECT_EQ(CheckedMul(1u << 20, 1u << 20), uint64_t{1} << 40);
  EXPECT_EQ(CheckedAdd(kU64Max - 1, 1), kU64Max);
  EXPECT_EQ(CheckedProduct({2, 3, 7}), 42u);
  EXPECT_EQ(CheckedProduct({}), 1u);
  EXPECT_EQ(CheckedSum({1, 2, 3}), 6u);
}

TEST(CheckedMathTest, OverflowIsDetected) {
  EXPECT_FALSE(CheckedMul(uint64_t{1} << 32, uint64_t{1} << 32).has_value());
  EXPECT_FALSE(CheckedAdd(kU64Max, 1).has_value());
  // batch x heads x seq^2 x 4 with batch 65536, 128 heads, seq 2^31: wraps to 0 in plain arithmetic.
  const uint64_t seq = uint64_t{1} << 31;
  EXPECT_EQ(uint64_t{65536} * 128 * seq * seq * 4, 0u);
  EXPECT_FALSE(CheckedProduct({65536, 128, seq, seq, 4}).has_value());
  EXPECT_FALSE(CheckedSum({kU64Max / 2, kU64Max / 2, 2}).has_value());
}

TEST(CheckedMathTest, Saturates) {
  EXPECT_EQ(SatMul(uint64_t{1} << 40, uint64_t{1} << 40), kU64Max);
  EXPECT_EQ(SatAdd(kU64Max, 5), kU64Max);
  EXPECT_EQ(SatProduct({3, 5}), 15u);
  EXPECT_EQ(SatSum({kU64Max, kU64Max}), kU64Max);
  static_assert(SatMul(6, 7) == 42);
}

}  // namespace
}  // namespace bigplan
