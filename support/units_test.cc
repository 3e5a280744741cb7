#include "support/units.h"

#include <gtest/gtest.h>

namespace bigplan {
namespace {

uint64_t Parse(const char* s) {
  auto r = ParseByteSize(s);
  EXPECT_TRUE(r.ok()) << s << ": " << (r.ok() ? "" : r.error().ToString());
  return r.ok() ? *r : 0;
}

TEST(UnitsTest, ParsesAccelerateUnits) {
  EXPECT_EQ(Parse("10GiB"), 10ull << 30);
  EXPECT_EQ(Parse("10GB"), 10'000'000'000ull);
  EXPECT_EQ(Parse("512MiB"), 512ull << 20);
  EXPECT_EQ(Parse("512MB"), 512'000'000ull);
  EXPECT_EQ(Parse("4KiB"), 4096ull);
  EXPECT_EQ(Parse("4KB"), 4000ull);
  EXPECT_EQ(Parse("2TiB"), 2ull << 40);
  EXPECT_EQ(Parse("2TB"), 2'000'000'000'000ull);
  EXPECT_EQ(Parse("123"), 123ull);
  EXPECT_EQ(Parse("123B"), 123ull);
  EXPECT_EQ(Parse("123bytes"), 123ull);
  EXPECT_EQ(Parse("0"), 0ull);
}

TEST(UnitsTest, CaseInsensitiveAndWhitespace) {
  EXPECT_EQ(Parse("10gib"), 10ull << 30);
  EXPECT_EQ(Parse("10GIB"), 10ull << 30);
  EXPECT_EQ(Parse("10gb"), 10'000'000'000ull);
  EXPECT_EQ(Parse(" 10 GiB "), 10ull << 30);
  EXPECT_EQ(Parse("123 Bytes"), 123ull);
}

TEST(UnitsTest, Decimals) {
  EXPECT_EQ(Parse("1.5GiB"), 3ull << 29);
  EXPECT_EQ(Parse("0.5KB"), 500ull);
  EXPECT_EQ(Parse("1.25MiB"), (1ull << 20) + (1ull << 18));
  EXPECT_EQ(Parse("2.0"), 2ull);
  EXPECT_EQ(Parse("0.001KiB"), 1ull);  // 1.024 rounds down
}

TEST(UnitsTest, Rejects) {
  for (const char* bad : {"", "   ", "GiB", "abc", "10XB", "10 G", "-5GB", "1.5", "1.5B", "1.", ".5GB",
                          "10GiBs", "1e9", "99999999999999999999", "20000000TiB", "10 GiB extra"}) {
    auto r = ParseByteSize(bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument) << bad;
    EXPECT_NE(r.error().message.find(std::string("\"") + bad + "\""), std::string::npos) << r.error().message;
  }
}

TEST(UnitsTest, Formats) {
  EXPECT_EQ(FormatBytes(0), "0 B");
  EXPECT_EQ(FormatBytes(100), "100 B");
  EXPECT_EQ(FormatBytes(1023), "1023 B");
  EXPECT_EQ(FormatBytes(1024), "1.00 KiB");
  EXPECT_EQ(FormatBytes(512ull << 20), "512.00 MiB");
  EXPECT_EQ(FormatBytes(13'475'000'000ull), "12.55 GiB");
  EXPECT_EQ(FormatBytes(3ull << 40), "3.00 TiB");
  EXPECT_EQ(FormatBytes(UINT64_MAX), "16.00 EiB");
}

}  // namespace
}  // namespace bigplan
