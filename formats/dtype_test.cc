#include "formats/dtype.h"

#include <gtest/gtest.h>

namespace bigplan {
namespace {

TEST(DTypeTest, RoundTripsEveryName) {
  struct Case {
    const char* name;
    DType dtype;
    size_t bytes;
    bool floating;
  };
  const Case cases[] = {
      {"F64", DType::kF64, 8, true},   {"F32", DType::kF32, 4, true},        {"F16", DType::kF16, 2, true},
      {"BF16", DType::kBF16, 2, true}, {"I64", DType::kI64, 8, false},       {"I32", DType::kI32, 4, false},
      {"I16", DType::kI16, 2, false},  {"I8", DType::kI8, 1, false},         {"U8", DType::kU8, 1, false},
      {"BOOL", DType::kBool, 1, false}, {"F8_E4M3", DType::kF8E4M3, 1, true}, {"F8_E5M2", DType::kF8E5M2, 1, true},
  };
  for (const Case& c : cases) {
    auto parsed = ParseDType(c.name);
    ASSERT_TRUE(parsed.ok()) << c.name;
    EXPECT_EQ(*parsed, c.dtype);
    EXPECT_STREQ(DTypeString(c.dtype), c.name);
    EXPECT_EQ(DTypeBytes(c.dtype), c.bytes) << c.name;
    EXPECT_EQ(IsFloatingPoint(c.dtype), c.floating) << c.name;
  }
}

TEST(DTypeTest, ValuesMatchSchemaOrder) {
  EXPECT_EQ(static_cast<int>(DType::kF32), 0);
  EXPECT_EQ(static_cast<int>(DType::kBF16), 2);
  EXPECT_EQ(static_cast<int>(DType::kF8E5M2), 11);
}

TEST(DTypeTest, UnknownIsUnsupportedAndNamed) {
  for (const char* bad : {"", "f32", "FP32", "F8_E4M3FNUZ", "U16", "C64"}) {
    auto r = ParseDType(bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.error().code, ErrorCode::kUnsupported);
    EXPECT_NE(r.error().message.find(std::string("\"") + bad + "\""), std::string::npos);
  }
}

}  // namespace
}  // namespace bigplan
