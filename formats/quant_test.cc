#include "formats/quant.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <ctime>
#include <iostream>
#include <random>
#include <string>
#include <vector>

namespace bigplan::quant {
namespace {

uint32_t Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

float Bf16Round(float f) { return Bf16ToFloat(FloatToBf16(f)); }

// For values with at most 11 significant bits in f16's normal range (the tests generate only those).
uint16_t ExactF16(float f) {
  if (f == 0) return 0;
  const uint32_t u = Bits(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const int e = static_cast<int>((u >> 23) & 0xFF) - 127 + 15;
  EXPECT_TRUE(e >= 1 && e <= 30 && (u & 0x1FFFu) == 0) << f;
  return static_cast<uint16_t>(sign | (static_cast<uint32_t>(e) << 10) | ((u & 0x7FFFFFu) >> 13));
}

std::vector<uint8_t> ToBytes(const std::vector<float>& w, DType dtype) {
  std::vector<uint8_t> out(w.size() * DTypeBytes(dtype));
  for (size_t i = 0; i < w.size(); ++i) {
    if (dtype == DType::kF32) {
      std::memcpy(out.data() + 4 * i, &w[i], 4);
    } else {
      const uint16_t h = dtype == DType::kBF16 ? FloatToBf16(w[i]) : ExactF16(w[i]);
      out[2 * i] = static_cast<uint8_t>(h);
      out[2 * i + 1] = static_cast<uint8_t>(h >> 8);
    }
  }
  return out;
}

std::vector<float> Normal(size_t count, uint32_t seed, float sigma = 0.02f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, sigma);
  std::vector<float> w(count);
  for (auto& x : w) x = Bf16Round(d(rng));
  return w;
}

std::vector<uint8_t> MustQuantize(const std::vector<float>& w, DType dtype, int64_t n, int64_t k, Format f,
                                  int64_t g, int threads = 0) {
  auto bytes = TensorBytes(f, n, k, g);
  EXPECT_TRUE(bytes.ok());
  std::vector<uint8_t> q(*bytes);
  const auto src = ToBytes(w, dtype);
  Status st = Quantize(src, dtype, n, k, f, g, q, threads);
  EXPECT_TRUE(st.ok()) << (st.ok() ? "" : st.error().ToString());
  return q;
}

std::vector<float> MustDequantize(const std::vector<uint8_t>& q, int64_t n, int64_t k, Format f, int64_t g) {
  std::vector<float> out(static_cast<size_t>(n * k));
  Status st = Dequantize(q, f, n, k, g, out);
  EXPECT_TRUE(st.ok()) << (st.ok() ? "" : st.error().ToString());
  return out;
}

double RelRms(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(a[i]) * a[i];
  }
  return std::sqrt(num / den);
}

// ---------------------------------------------------------------------------------------------------------------
// fp8 / bf16 / f16 scalars

TEST(Fp8Test, EveryCodeRoundTrips) {
  for (int c = 0; c < 256; ++c) {
    const float v = Fp8E4M3ToFloat(static_cast<uint8_t>(c));
    if ((c & 0x7F) == 0x7F) {
      EXPECT_TRUE(std::isnan(v)) << c;
      EXPECT_EQ(FloatToFp8E4M3(v), 0x7F);
      continue;
    }
    EXPECT_EQ(FloatToFp8E4M3(v), c) << c << " = " << v;
  }
  EXPECT_EQ(Fp8E4M3ToFloat(0x7E), 448.0f);
  EXPECT_EQ(Fp8E4M3ToFloat(0xFE), -448.0f);
  EXPECT_EQ(Fp8E4M3ToFloat(0x38), 1.0f);
  EXPECT_EQ(Fp8E4M3ToFloat(0x01), std::ldexp(1.0f, -9));
  EXPECT_EQ(Fp8E4M3ToFloat(0x07), 7 * std::ldexp(1.0f, -9));
  EXPECT_EQ(Fp8E4M3ToFloat(0x08), std::ldexp(1.0f, -6));
  EXPECT_EQ(Fp8E4M3ToFloat(0x39), 1.125f);
  EXPECT_TRUE(std::signbit(Fp8E4M3ToFloat(0x80)));
}

TEST(Fp8Test, RoundsHalfToEvenAndSaturates) {
  EXPECT_EQ(FloatToFp8E4M3(1.0625f), 0x38);   // halfway 1.0 / 1.125 -> even (1.0)
  EXPECT_EQ(FloatToFp8E4M3(std::nextafter(1.0625f, 2.0f)), 0x39);
  EXPECT_EQ(FloatToFp8E4M3(1.1875f), 0x3A);   // halfway 1.125 / 1.25 -> even (1.25)
  EXPECT_EQ(FloatToFp8E4M3(-1.1875f), 0xBA);
  EXPECT_EQ(FloatToFp8E4M3(std::ldexp(1.0f, -10)), 0x00);       // halfway 0 / 2^-9 -> 0
  EXPECT_EQ(FloatToFp8E4M3(3 * std::ldexp(1.0f, -10)), 0x02);   // halfway 1 / 2 (x 2^-9) -> 2
  EXPECT_EQ(FloatToFp8E4M3(15 * std::ldexp(1.0f, -10)), 0x08);  // halfway 7 x 2^-9 / 2^-6 -> 2^-6
  EXPECT_EQ(FloatToFp8E4M3(1e-30f), 0x00);
  EXPECT_EQ(FloatToFp8E4M3(432.0f), 0x7E);  // halfway 416 / 448 -> 448 (mantissa 6, even)
  EXPECT_EQ(FloatToFp8E4M3(420.0f), 0x7D);
  EXPECT_EQ(FloatToFp8E4M3(464.0f), 0x7E);
  EXPECT_EQ(FloatToFp8E4M3(500.0f), 0x7E);
  EXPECT_EQ(FloatToFp8E4M3(-1e30f), 0xFE);
  EXPECT_EQ(FloatToFp8E4M3(INFINITY), 0x7E);
  EXPECT_EQ(FloatToFp8E4M3(-INFINITY), 0xFE);
  EXPECT_EQ(FloatToFp8E4M3(NAN), 0x7F);
}

TEST(Fp8Test, EncoderIsNearestEvenAgainstBruteForce) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> mant(-1.0f, 1.0f);
  std::uniform_int_distribution<int> ex(-14, 10);
  for (int t = 0; t < 200000; ++t) {
    float x = std::ldexp(mant(rng), ex(rng));
    if (t % 5 == 0) {  // exact midpoints between neighbouring codes
      const int c = static_cast<int>(rng() % 126);
      x = 0.5f * (Fp8E4M3ToFloat(static_cast<uint8_t>(c)) + Fp8E4M3ToFloat(static_cast<uint8_t>(c + 1)));
    }
    const float target = std::min(std::fabs(x), 448.0f);
    int best = 0;
    float best_d = INFINITY;
    for (int c = 0; c <= 0x7E; ++c) {
      const float d = std::fabs(Fp8E4M3ToFloat(static_cast<uint8_t>(c)) - target);
      if (d < best_d || (d == best_d && c % 2 == 0)) {
        best = c;
        best_d = d;
      }
    }
    const int want = best | (std::signbit(x) ? 0x80 : 0);
    ASSERT_EQ(FloatToFp8E4M3(x), want) << x;
  }
}

TEST(ScalarTest, Bf16AndF16) {
  EXPECT_EQ(FloatToBf16(1.0f), 0x3F80);
  EXPECT_EQ(FloatToBf16(1.00390625f), 0x3F80);  // halfway -> even
  EXPECT_EQ(FloatToBf16(1.01171875f), 0x3F82);  // halfway -> even (up)
  EXPECT_EQ(Bf16ToFloat(0xC000), -2.0f);
  EXPECT_TRUE(std::isnan(Bf16ToFloat(FloatToBf16(NAN))));
  EXPECT_EQ(F16ToFloat(0x3C00), 1.0f);
  EXPECT_EQ(F16ToFloat(0xC000), -2.0f);
  EXPECT_EQ(F16ToFloat(0x7BFF), 65504.0f);
  EXPECT_EQ(F16ToFloat(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(F16ToFloat(0x03FF), 1023 * std::ldexp(1.0f, -24));
  EXPECT_EQ(F16ToFloat(0x7C00), INFINITY);
  EXPECT_EQ(F16ToFloat(0xFC00), -INFINITY);
  EXPECT_TRUE(std::isnan(F16ToFloat(0x7E00)));
}

// ---------------------------------------------------------------------------------------------------------------
// Names and sizes

TEST(FormatTest, ParseAndName) {
  EXPECT_EQ(*ParseFormat("bf16"), Format::kNone);
  EXPECT_EQ(*ParseFormat("none"), Format::kNone);
  EXPECT_EQ(*ParseFormat("fp8"), Format::kFp8E4M3);
  EXPECT_EQ(*ParseFormat("int8"), Format::kInt8);
  EXPECT_EQ(*ParseFormat("int4"), Format::kInt4);
  auto bad = ParseFormat("nf4");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(bad.error().message.find("nf4"), std::string::npos);
  EXPECT_NE(bad.error().message.find("int4"), std::string::npos);
  for (Format f : {Format::kNone, Format::kFp8E4M3, Format::kInt8, Format::kInt4}) {
    if (f != Format::kNone) {
      EXPECT_EQ(*ParseFormat(FormatName(f)), f);
    }
  }
}

TEST(FormatTest, DefaultGroup) {
  EXPECT_EQ(*DefaultGroup(Format::kFp8E4M3, 4096), 4096);
  EXPECT_EQ(*DefaultGroup(Format::kInt8, 11008), 11008);
  EXPECT_EQ(*DefaultGroup(Format::kInt4, 4096), 128);
  EXPECT_EQ(*DefaultGroup(Format::kInt4, 11008), 128);
  EXPECT_EQ(*DefaultGroup(Format::kInt4, 192), 64);
  EXPECT_EQ(*DefaultGroup(Format::kInt4, 96), 32);
  auto bad = DefaultGroup(Format::kInt4, 100);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().code, ErrorCode::kUnsupported);
  EXPECT_NE(bad.error().message.find("100"), std::string::npos);
  EXPECT_FALSE(DefaultGroup(Format::kInt8, 0).ok());
}

TEST(FormatTest, RowAndTensorBytes) {
  EXPECT_EQ(*RowBytes(Format::kNone, 4096, 0), 8192u);
  EXPECT_EQ(*RowBytes(Format::kFp8E4M3, 4096, 4096), 4100u);
  EXPECT_EQ(*RowBytes(Format::kFp8E4M3, 7168, 128), 7168u + 56 * 4);
  EXPECT_EQ(*RowBytes(Format::kInt8, 4096, 4096), 4100u);
  EXPECT_EQ(*RowBytes(Format::kInt4, 4096, 128), 2048u + 32 * 4);
  EXPECT_EQ(*RowBytes(Format::kInt4, 11008, 128), 5504u + 86 * 4);
  EXPECT_EQ(*TensorBytes(Format::kInt4, 14336, 4096, 128), 14336u * 2176u);
  EXPECT_EQ(*TensorBytes(Format::kFp8E4M3, 128256, 4096, 4096), 128256u * 4100u);
  EXPECT_EQ(*TensorBytes(Format::kInt8, 0, 4096, 4096), 0u);

  auto g = RowBytes(Format::kInt4, 4096, 100);
  ASSERT_FALSE(g.ok());
  EXPECT_EQ(g.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(g.error().message.find("100"), std::string::npos);
  EXPECT_NE(g.error().message.find("4096"), std::string::npos);
  auto odd = RowBytes(Format::kInt4, 7, 7);
  ASSERT_FALSE(odd.ok());
  EXPECT_NE(odd.error().message.find("even"), std::string::npos);
  EXPECT_FALSE(RowBytes(Format::kInt8, 0, 1).ok());
  EXPECT_FALSE(RowBytes(Format::kInt8, 64, 0).ok());
  EXPECT_FALSE(RowBytes(Format::kInt8, 64, -64).ok());
  EXPECT_FALSE(TensorBytes(Format::kInt8, -1, 64, 64).ok());
  auto over = TensorBytes(Format::kFp8E4M3, int64_t{1} << 62, 4096, 4096);
  ASSERT_FALSE(over.ok());
  EXPECT_NE(over.error().message.find("overflow"), std::string::npos);
}

// ---------------------------------------------------------------------------------------------------------------
// Quantize / Dequantize

// Plain round-to-nearest int4 with min/max scales (rounded to bf16 first), for comparison.
std::vector<float> Int4Rtn(const std::vector<float>& w, int64_t g) {
  std::vector<float> out(w.size());
  for (size_t b = 0; b < w.size(); b += static_cast<size_t>(g)) {
    const float mn = *std::min_element(w.begin() + b, w.begin() + b + g);
    const float mx = *std::max_element(w.begin() + b, w.begin() + b + g);
    const float s = Bf16Round((mx - mn) / 15), z = Bf16Round(mn + 8 * s);
    for (size_t i = b; i < b + static_cast<size_t>(g); ++i) {
      const float q = std::clamp(std::nearbyint((w[i] - z) / s + 8), 0.0f, 15.0f);
      out[i] = (q - 8) * s + z;
    }
  }
  return out;
}

TEST(QuantizeTest, ErrorBoundsOnNormalWeights) {
  const int64_t n = 64, k = 4096;
  const auto w = Normal(static_cast<size_t>(n * k), 1);
  for (DType dt : {DType::kBF16, DType::kF32}) {
    const double fp8 = RelRms(w, MustDequantize(MustQuantize(w, dt, n, k, Format::kFp8E4M3, k), n, k, Format::kFp8E4M3, k));
    const double i8 = RelRms(w, MustDequantize(MustQuantize(w, dt, n, k, Format::kInt8, k), n, k, Format::kInt8, k));
    const double i4 = RelRms(w, MustDequantize(MustQuantize(w, dt, n, k, Format::kInt4, 128), n, k, Format::kInt4, 128));
    const double rtn = RelRms(w, Int4Rtn(w, 128));
    std::cout << DTypeString(dt) << ": relative RMS error fp8 " << fp8 << ", int8 " << i8 << ", int4 g128 " << i4
              << " (min/max RTN " << rtn << ")\n";
    EXPECT_LT(fp8, 0.03);
    EXPECT_LT(i8, 0.01);
    EXPECT_LT(i4, 0.10);
    EXPECT_LT(i4, rtn);
  }
}

TEST(QuantizeTest, Int4NeverWorseThanRtnPerGroup) {
  const int64_t n = 16, k = 512, g = 32;
  auto w = Normal(static_cast<size_t>(n * k), 2);
  for (size_t i = 0; i < w.size(); i += 97) w[i] *= 8;  // outliers
  const auto d = MustDequantize(MustQuantize(w, DType::kF32, n, k, Format::kInt4, g), n, k, Format::kInt4, g);
  const auto rtn = Int4Rtn(w, g);
  for (size_t b = 0; b < w.size(); b += g) {
    double e = 0, er = 0;
    for (size_t i = b; i < b + g; ++i) {
      e += (double(d[i]) - w[i]) * (double(d[i]) - w[i]);
      er += (double(rtn[i]) - w[i]) * (double(rtn[i]) - w[i]);
    }
    EXPECT_LE(e, er * (1 + 1e-5) + 1e-12) << "group at " << b;
  }
}

TEST(QuantizeTest, F16SourceMatchesF32Source) {
  const int64_t n = 8, k = 256;
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.0f, 300.0f);
  std::vector<float> w(static_cast<size_t>(n * k));
  for (auto& x : w) x = std::clamp(std::nearbyint(nd(rng)), -2047.0f, 2047.0f) / 1024.0f;  // exact in f16
  for (Format f : {Format::kFp8E4M3, Format::kInt8, Format::kInt4}) {
    const int64_t g = f == Format::kInt4 ? 64 : k;
    EXPECT_EQ(MustQuantize(w, DType::kF16, n, k, f, g), MustQuantize(w, DType::kF32, n, k, f, g)) << FormatName(f);
  }
}

TEST(QuantizeTest, ThreadCountDoesNotChangeBytes) {
  const int64_t n = 300, k = 1024;
  const auto w = Normal(static_cast<size_t>(n * k), 4);
  for (Format f : {Format::kFp8E4M3, Format::kInt8, Format::kInt4}) {
    const int64_t g = f == Format::kInt4 ? 128 : k;
    EXPECT_EQ(MustQuantize(w, DType::kBF16, n, k, f, g, 1), MustQuantize(w, DType::kBF16, n, k, f, g, 7))
        << FormatName(f);
  }
}

TEST(QuantizeTest, ZeroAndConstantRows) {
  const int64_t n = 3, k = 256;
  std::vector<float> w(static_cast<size_t>(n * k), 0.0f);
  for (int64_t c = 0; c < k; ++c) {
    w[static_cast<size_t>(k + c)] = 0.375f;                 // row 1 constant
    w[static_cast<size_t>(2 * k + c)] = c < 128 ? -3.0f : 0.0f;  // row 2: a constant group and a zero group
  }
  for (Format f : {Format::kFp8E4M3, Format::kInt8, Format::kInt4}) {
    for (int64_t g : {int64_t{128}, k}) {
      const auto d = MustDequantize(MustQuantize(w, DType::kF32, n, k, f, g), n, k, f, g);
      for (size_t i = 0; i < w.size(); ++i) {
        if (w[i] == 0 && (f != Format::kInt4 || g == 128)) {
          EXPECT_EQ(d[i], 0.0f) << FormatName(f) << " g" << g << " at " << i;
        } else {
          EXPECT_NEAR(d[i], w[i], std::fabs(w[i]) * 1e-6 + (g == k && f == Format::kInt4 ? 0.11 : 0.0))
              << FormatName(f) << " g" << g << " at " << i;
        }
      }
    }
  }
}

TEST(QuantizeTest, Int4ByteOrderAndRecords) {
  // One group of 4 columns with values that land on exact codes: min -8, max 7 -> s = 1, z = 0.
  const std::vector<float> w = {-8.0f, 7.0f, 0.0f, 1.0f};
  const auto q = MustQuantize(w, DType::kF32, 1, 4, Format::kInt4, 4);
  ASSERT_EQ(q.size(), 2u + 4u);
  EXPECT_EQ(q[0], 0x0F);  // q = 0 (high nibble, column 0), 15 (low nibble, column 1)
  EXPECT_EQ(q[1], 0x89);  // q = 8, 9
  EXPECT_EQ(q[2] | (q[3] << 8), FloatToBf16(1.0f));
  EXPECT_EQ(q[4] | (q[5] << 8), FloatToBf16(0.0f));
  const auto q8 = MustQuantize({-127.0f, 2.0f, 127.0f, 0.4f}, DType::kF32, 1, 4, Format::kInt8, 4);
  EXPECT_EQ(std::vector<uint8_t>(q8.begin(), q8.begin() + 4), (std::vector<uint8_t>{0x81, 2, 127, 0}));
  float s;
  std::memcpy(&s, q8.data() + 4, 4);
  EXPECT_EQ(s, 1.0f);
}

TEST(QuantizeTest, RefusesNonFiniteAndBadSizes) {
  const int64_t n = 4, k = 64;
  for (float bad : {NAN, INFINITY}) {
    std::vector<float> w(static_cast<size_t>(n * k), 0.5f);
    w[static_cast<size_t>(3 * k + 5)] = bad;
    for (DType dt : {DType::kF32, DType::kBF16}) {
      const auto src = ToBytes(w, dt);
      std::vector<uint8_t> q(*TensorBytes(Format::kInt8, n, k, k));
      Status st = Quantize(src, dt, n, k, Format::kInt8, k, q, 2);
      ASSERT_FALSE(st.ok());
      EXPECT_EQ(st.error().code, ErrorCode::kInvalidArgument);
      EXPECT_NE(st.error().message.find("row 3, column 5"), std::string::npos) << st.error().message;
    }
  }
  std::vector<float> w(static_cast<size_t>(n * k), 0.5f);
  const auto src = ToBytes(w, DType::kBF16);
  std::vector<uint8_t> q(*TensorBytes(Format::kInt4, n, k, 32));
  EXPECT_FALSE(Quantize(src, DType::kBF16, n, k, Format::kInt4, 32, std::span<uint8_t>(q).first(q.size() - 1)).ok());
  EXPECT_FALSE(Quantize(std::span<const uint8_t>(src).first(src.size() - 2), DType::kBF16, n, k, Format::kInt4, 32, q).ok());
  EXPECT_FALSE(Quantize(src, DType::kI8, n, 2 * k, Format::kInt4, 32, q).ok());
  EXPECT_FALSE(Quantize(src, DType::kBF16, n, k, Format::kNone, 32, q).ok());
  EXPECT_FALSE(Quantize(src, DType::kBF16, n, k, Format::kInt4, 48, q).ok());
  std::vector<float> out(static_cast<size_t>(n * k - 1));
  EXPECT_FALSE(Dequantize(q, Format::kInt4, n, k, 32, out).ok());
}

TEST(QuantizeTest, Throughput) {
  const int64_t n = 4096, k = 4096;
  const auto w = Normal(static_cast<size_t>(n * k), 5);
  const auto src = ToBytes(w, DType::kBF16);
  for (Format f : {Format::kFp8E4M3, Format::kInt8, Format::kInt4}) {
    const int64_t g = *DefaultGroup(f, k);
    std::vector<uint8_t> q(*TensorBytes(f, n, k, g));
    for (int threads : {1, 0}) {
      timespec c0, c1;
      clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c0);
      const auto t0 = std::chrono::steady_clock::now();
      ASSERT_TRUE(Quantize(src, DType::kBF16, n, k, f, g, q, threads).ok());
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c1);
      const double cpu = double(c1.tv_sec - c0.tv_sec) + 1e-9 * double(c1.tv_nsec - c0.tv_nsec);
      std::cout << "quantize bf16 [4096, 4096] -> " << FormatName(f) << " g" << g << ", "
                << (threads == 0 ? "all threads" : "1 thread") << ": " << s * 1e3 << " ms, "
                << src.size() / s / 1e9 << " GB/s of input";
      if (threads == 1) std::cout << " (" << src.size() / cpu / 1e9 << " GB/s per second of CPU time)";
      std::cout << "\n";
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// FromFp8

struct Fp8Case {
  std::vector<uint8_t> codes;
  std::vector<float> scale;
};

Fp8Case RandomFp8(int64_t n, int64_t k, int64_t scale_count, uint32_t seed) {
  std::mt19937 rng(seed);
  Fp8Case c;
  c.codes.resize(static_cast<size_t>(n * k));
  for (auto& b : c.codes) {
    do {
      b = static_cast<uint8_t>(rng());
    } while ((b & 0x7F) == 0x7F);
  }
  std::uniform_real_distribution<float> u(1e-4f, 1e-2f);
  c.scale.resize(static_cast<size_t>(scale_count));
  for (auto& s : c.scale) s = u(rng);
  return c;
}

void ExpectFp8Exact(const Fp8Case& c, ScaleShape shape, int64_t br, int64_t bc, int64_t n, int64_t k,
                    int64_t want_group) {
  std::vector<uint8_t> dst(*TensorBytes(Format::kFp8E4M3, n, k, want_group));
  int64_t group = -1;
  Status st = FromFp8(c.codes, c.scale.data(), shape, br, bc, n, k, dst, &group);
  ASSERT_TRUE(st.ok()) << st.error().ToString();
  EXPECT_EQ(group, want_group);
  const auto d = MustDequantize(dst, n, k, Format::kFp8E4M3, group);
  for (int64_t r = 0; r < n; ++r) {
    EXPECT_EQ(std::memcmp(dst.data() + r * (*RowBytes(Format::kFp8E4M3, k, group)), c.codes.data() + r * k, k), 0);
    for (int64_t col = 0; col < k; ++col) {
      float s;
      if (br > 0) {
        s = c.scale[static_cast<size_t>((r / br) * shape.cols + col / bc)];
      } else {
        s = c.scale[shape.rows == 1 ? 0 : static_cast<size_t>(r)];
      }
      const float want = Fp8E4M3ToFloat(c.codes[static_cast<size_t>(r * k + col)]) * s;
      ASSERT_EQ(Bits(d[static_cast<size_t>(r * k + col)]), Bits(want)) << r << "," << col;
    }
  }
}

TEST(FromFp8Test, BlockPerChannelPerTensorExact) {
  const int64_t n = 300, k = 256;
  ExpectFp8Exact(RandomFp8(n, k, 3 * 2, 1), {3, 2}, 128, 128, n, k, 128);
  ExpectFp8Exact(RandomFp8(n, k, 5 * 4, 2), {5, 4}, 64, 64, n, k, 64);
  ExpectFp8Exact(RandomFp8(n, k, n, 3), {n, 1}, 0, 0, n, k, k);
  ExpectFp8Exact(RandomFp8(n, k, 1, 4), {1, 1}, 0, 0, n, k, k);
}

TEST(FromFp8Test, RefusesBadInput) {
  const int64_t n = 256, k = 200;
  auto c = RandomFp8(n, k, 2 * 2, 5);
  std::vector<uint8_t> dst(*TensorBytes(Format::kFp8E4M3, n, k, k));
  int64_t group = 0;
  // k % block_cols != 0.
  Status st = FromFp8(c.codes, c.scale.data(), {2, 2}, 128, 128, n, k, dst, &group);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, ErrorCode::kUnsupported);
  EXPECT_NE(st.error().message.find("200"), std::string::npos);
  // Wrong block scale shape.
  st = FromFp8(c.codes, c.scale.data(), {1, 4}, 128, 100, n, k, dst, &group);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, ErrorCode::kMismatch);
  EXPECT_NE(st.error().message.find("[2, 2]"), std::string::npos) << st.error().message;
  // Per-channel scale of the wrong length.
  st = FromFp8(c.codes, c.scale.data(), {4, 1}, 0, 0, n, k, dst, &group);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, ErrorCode::kMismatch);
  // Weight size.
  st = FromFp8(std::span<const uint8_t>(c.codes).first(100), c.scale.data(), {1, 1}, 0, 0, n, k, dst, &group);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, ErrorCode::kMismatch);
  // NaN code and NaN scale.
  auto nan_codes = c.codes;
  nan_codes[static_cast<size_t>(7 * k + 9)] = 0xFF;
  st = FromFp8(nan_codes, c.scale.data(), {1, 1}, 0, 0, n, k, dst, &group);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, ErrorCode::kCorrupt);
  EXPECT_NE(st.error().message.find("row 7, column 9"), std::string::npos) << st.error().message;
  const float nan_scale = NAN;
  st = FromFp8(c.codes, &nan_scale, {1, 1}, 0, 0, n, k, dst, &group);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, ErrorCode::kCorrupt);
  // Destination size.
  st = FromFp8(c.codes, c.scale.data(), {1, 1}, 0, 0, n, k, std::span<uint8_t>(dst).first(10), &group);
  EXPECT_FALSE(st.ok());
}

// ---------------------------------------------------------------------------------------------------------------
// FromGptq

struct GptqCase {
  int64_t n = 0, k = 0, g = 0;
  std::vector<uint8_t> q;      // [k][n] (k-index, output row), 0..15
  std::vector<uint8_t> zero;   // [k/g][n] stored zero, 0..15
  std::vector<float> scale;    // [k/g][n], exact in f16
  std::vector<int32_t> g_idx;  // [k]
  std::vector<int32_t> qweight, qzeros;
  std::vector<uint16_t> scales_f16;
  GptqTensors tensors() const {
    GptqTensors t;
    t.qweight = {reinterpret_cast<const uint8_t*>(qweight.data()), qweight.size() * 4};
    t.qweight_shape = {k / 8, n};
    t.qzeros = {reinterpret_cast<const uint8_t*>(qzeros.data()), qzeros.size() * 4};
    t.qzeros_shape = {k / g, n / 8};
    t.scales = {reinterpret_cast<const uint8_t*>(scales_f16.data()), scales_f16.size() * 2};
    t.scales_shape = {k / g, n};
    if (!g_idx.empty()) {
      t.g_idx = {reinterpret_cast<const uint8_t*>(g_idx.data()), g_idx.size() * 4};
      t.g_idx_shape = {k};
    }
    return t;
  }
};

GptqCase RandomGptq(int64_t n, int64_t k, int64_t g, bool act_order, bool with_g_idx, uint32_t seed) {
  std::mt19937 rng(seed);
  GptqCase c;
  c.n = n, c.k = k, c.g = g;
  const int64_t groups = k / g;
  c.q.resize(static_cast<size_t>(k * n));
  for (auto& x : c.q) x = static_cast<uint8_t>(rng() & 15);
  c.zero.resize(static_cast<size_t>(groups * n));
  for (auto& x : c.zero) x = static_cast<uint8_t>(rng() & 15);
  c.scale.resize(static_cast<size_t>(groups * n));
  for (auto& s : c.scale) s = static_cast<float>(1024 + rng() % 1024) / 131072.0f;  // 11 bits: exact in f16
  for (float s : c.scale) c.scales_f16.push_back(ExactF16(s));
  if (with_g_idx || act_order) {
    c.g_idx.resize(static_cast<size_t>(k));
    for (int64_t i = 0; i < k; ++i) c.g_idx[static_cast<size_t>(i)] = static_cast<int32_t>(i / g);
    if (act_order) std::shuffle(c.g_idx.begin(), c.g_idx.end(), rng);
  }
  // Pack with the documented bit layouts.
  c.qweight.assign(static_cast<size_t>(k / 8 * n), 0);
  for (int64_t j = 0; j < k / 8; ++j) {
    for (int64_t col = 0; col < n; ++col) {
      uint32_t word = 0;
      for (int i = 0; i < 8; ++i) word |= uint32_t{c.q[static_cast<size_t>((8 * j + i) * n + col)]} << (4 * i);
      c.qweight[static_cast<size_t>(j * n + col)] = static_cast<int32_t>(word);
    }
  }
  c.qzeros.assign(static_cast<size_t>(groups * n / 8), 0);
  for (int64_t gi = 0; gi < groups; ++gi) {
    for (int64_t j = 0; j < n / 8; ++j) {
      uint32_t word = 0;
      for (int i = 0; i < 8; ++i) word |= uint32_t{c.zero[static_cast<size_t>(gi * n + 8 * j + i)]} << (4 * i);
      c.qzeros[static_cast<size_t>(gi * (n / 8) + j)] = static_cast<int32_t>(word);
    }
  }
  return c;
}

void ExpectGptq(const GptqCase& c, bool v1, bool expect_perm) {
  const int64_t n = c.n, k = c.k, g = c.g;
  std::vector<uint8_t> dst(*TensorBytes(Format::kInt4, n, k, g));
  std::vector<int32_t> perm = {42};
  Status st = FromGptq(c.tensors(), n, k, g, v1, dst, &perm);
  ASSERT_TRUE(st.ok()) << st.error().ToString();
  ASSERT_EQ(!perm.empty(), expect_perm);
  if (expect_perm) {
    ASSERT_EQ(perm.size(), static_cast<size_t>(k));
    for (int64_t i = 0; i < k; ++i) ASSERT_EQ(c.g_idx[static_cast<size_t>(perm[static_cast<size_t>(i)])], i / g);
    for (int64_t i = 1; i < k; ++i) {
      if (i % g != 0) {
        ASSERT_LT(perm[static_cast<size_t>(i - 1)], perm[static_cast<size_t>(i)]);  // stable
      }
    }
  }
  const auto d = MustDequantize(dst, n, k, Format::kInt4, g);
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t i = 0; i < k; ++i) {
      const int64_t col = expect_perm ? perm[static_cast<size_t>(i)] : i;  // checkpoint column
      const int64_t gi = c.g_idx.empty() ? col / g : c.g_idx[static_cast<size_t>(col)];
      const float s = c.scale[static_cast<size_t>(gi * n + r)];
      const int z = c.zero[static_cast<size_t>(gi * n + r)] + (v1 ? 1 : 0);
      const int q = c.q[static_cast<size_t>(col * n + r)];
      // The formula of the checkpoint, and the same in our layout with s and (8 - z) s rounded to bf16.
      const float truth = static_cast<float>(q - z) * s;
      const float ours = static_cast<float>(q - 8) * Bf16Round(s) + Bf16Round(static_cast<float>(8 - z) * s);
      const float got = d[static_cast<size_t>(r * k + i)];
      ASSERT_EQ(Bits(got), Bits(ours)) << r << "," << i;
      ASSERT_LE(std::fabs(got - truth), (8 * s + std::fabs(8 - z) * s) * std::ldexp(1.0f, -8)) << r << "," << i;
    }
  }
}

TEST(FromGptqTest, TrivialGroupsExact) {
  for (bool v1 : {true, false}) {
    ExpectGptq(RandomGptq(64, 256, 64, false, false, 1), v1, false);
    ExpectGptq(RandomGptq(64, 256, 64, false, true, 2), v1, false);  // g_idx present but trivial
    ExpectGptq(RandomGptq(40, 128, 128, false, false, 3), v1, false);
  }
}

TEST(FromGptqTest, ActOrderExact) {
  for (bool v1 : {true, false}) {
    ExpectGptq(RandomGptq(64, 256, 32, true, true, 4), v1, true);
    ExpectGptq(RandomGptq(16, 512, 128, true, true, 5), v1, true);
  }
}

TEST(FromGptqTest, Throughput) {
  const int64_t n = 4096, k = 4096, g = 128;
  for (bool act_order : {false, true}) {
    const auto c = RandomGptq(n, k, g, act_order, act_order, 8);
    std::vector<uint8_t> dst(*TensorBytes(Format::kInt4, n, k, g));
    std::vector<int32_t> perm;
    const auto t0 = std::chrono::steady_clock::now();
    ASSERT_TRUE(FromGptq(c.tensors(), n, k, g, true, dst, &perm).ok());
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::cout << "FromGptq [4096, 4096] g128" << (act_order ? " act-order" : "") << ": " << s * 1e3 << " ms, "
              << double(n) * double(k) / s / 1e9 << " G weights/s\n";
  }
}

TEST(FromGptqTest, GroupMinusOneMeansK) {
  const auto c = RandomGptq(16, 64, 64, false, false, 6);
  std::vector<uint8_t> dst(*TensorBytes(Format::kInt4, 16, 64, 64));
  std::vector<int32_t> perm;
  Status st = FromGptq(c.tensors(), 16, 64, -1, true, dst, &perm);
  ASSERT_TRUE(st.ok()) << st.error().ToString();
  std::vector<uint8_t> dst2(dst.size());
  ASSERT_TRUE(FromGptq(c.tensors(), 16, 64, 64, true, dst2, &perm).ok());
  EXPECT_EQ(dst, dst2);
}

TEST(FromGptqTest, RefusesBadShapesAndIndices) {
  const int64_t n = 32, k = 128, g = 32;
  auto c = RandomGptq(n, k, g, true, true, 7);
  std::vector<uint8_t> dst(*TensorBytes(Format::kInt4, n, k, g));
  std::vector<int32_t> perm;
  auto expect = [&](const GptqTensors& t, int64_t nn, int64_t kk, int64_t gg, ErrorCode code, const std::string& text) {
    Status st = FromGptq(t, nn, kk, gg, true, dst, &perm);
    ASSERT_FALSE(st.ok()) << text;
    EXPECT_EQ(st.error().code, code) << st.error().ToString();
    EXPECT_NE(st.error().message.find(text), std::string::npos) << st.error().message;
  };
  GptqTensors t = c.tensors();
  t.qweight_shape = {n, k / 8};
  expect(t, n, k, g, ErrorCode::kMismatch, "qweight has shape [32, 16], expected [16, 32]");
  t = c.tensors();
  t.qzeros_shape = {k / g, n};
  expect(t, n, k, g, ErrorCode::kMismatch, "qzeros");
  t = c.tensors();
  t.scales_dtype = DType::kI32;
  expect(t, n, k, g, ErrorCode::kMismatch, "scales has dtype I32");
  t = c.tensors();
  t.qweight = t.qweight.first(t.qweight.size() - 4);
  expect(t, n, k, g, ErrorCode::kMismatch, "qweight holds");
  expect(c.tensors(), n, k, 48, ErrorCode::kUnsupported, "group size 48");
  expect(c.tensors(), 12, k, g, ErrorCode::kUnsupported, "multiples of 8");
  auto bad = c;
  bad.g_idx[5] = 4;
  expect(bad.tensors(), n, k, g, ErrorCode::kCorrupt, "g_idx[5] = 4");
  bad = c;
  for (auto& x : bad.g_idx) {
    if (x == 1) {
      x = 2;
      break;
    }
  }
  expect(bad.tensors(), n, k, g, ErrorCode::kCorrupt, "columns in group");
  bad = c;
  bad.scales_f16[3] = 0x7E00;
  expect(bad.tensors(), n, k, g, ErrorCode::kCorrupt, "NaN");
  Status st = FromGptq(c.tensors(), n, k, g, true, std::span<uint8_t>(dst).first(5), &perm);
  EXPECT_FALSE(st.ok());
}

// ---------------------------------------------------------------------------------------------------------------
// quantization_config

Result<CheckpointQuant> ParseQ(const char* quant_json) {
  nlohmann::json config = {{"model_type", "llama"}};
  config["quantization_config"] = nlohmann::json::parse(quant_json);
  return ParseQuantizationConfig(config);
}

void ExpectRefused(const char* quant_json, ErrorCode code, const std::string& text) {
  auto r = ParseQ(quant_json);
  ASSERT_FALSE(r.ok()) << quant_json;
  EXPECT_EQ(r.error().code, code) << r.error().ToString();
  EXPECT_NE(r.error().message.find(text), std::string::npos) << r.error().message;
}

TEST(ConfigTest, NoneAndNull) {
  auto r = ParseQuantizationConfig(nlohmann::json{{"model_type", "llama"}});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->kind, CheckpointQuant::Kind::kNone);
  r = ParseQ("null");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->kind, CheckpointQuant::Kind::kNone);
}

TEST(ConfigTest, Fp8) {
  auto r = ParseQ(R"({"quant_method": "fp8", "activation_scheme": "dynamic", "fmt": "e4m3",
                      "weight_block_size": [128, 128], "modules_to_not_convert": ["lm_head"]})");
  ASSERT_TRUE(r.ok()) << r.error().ToString();
  EXPECT_EQ(r->kind, CheckpointQuant::Kind::kFp8Block);
  EXPECT_EQ(r->block_rows, 128);
  EXPECT_EQ(r->block_cols, 128);
  EXPECT_EQ(r->not_quantized, std::vector<std::string>{"lm_head"});
  r = ParseQ(R"({"quant_method": "fp8", "activation_scheme": "static", "ignored_layers": ["lm_head"]})");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->kind, CheckpointQuant::Kind::kFp8Scaled);
  r = ParseQ(R"({"quant_method": "fbgemm_fp8", "activation_scale_ub": 1200.0, "modules_to_not_convert": ["lm_head"]})");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->kind, CheckpointQuant::Kind::kFp8Scaled);
  EXPECT_EQ(r->method, "fbgemm_fp8");
  ExpectRefused(R"({"quant_method": "fp8", "weight_block_size": [128]})", ErrorCode::kCorrupt, "weight_block_size");
  ExpectRefused(R"({"quant_method": "fp8", "weight_block_size": [0, 128]})", ErrorCode::kCorrupt, "weight_block_size");
  ExpectRefused(R"({"quant_method": "fp8", "fmt": "e5m2"})", ErrorCode::kUnsupported, "e5m2");
}

TEST(ConfigTest, CompressedTensors) {
  const char* channel = R"({"quant_method": "compressed-tensors", "format": "float-quantized",
      "quantization_status": "compressed", "ignore": ["lm_head"],
      "config_groups": {"group_0": {"targets": ["Linear"],
        "weights": {"num_bits": 8, "type": "float", "strategy": "channel", "symmetric": true, "dynamic": false},
        "input_activations": {"num_bits": 8, "type": "float", "strategy": "token", "dynamic": true}}}})";
  auto r = ParseQ(channel);
  ASSERT_TRUE(r.ok()) << r.error().ToString();
  EXPECT_EQ(r->kind, CheckpointQuant::Kind::kFp8Scaled);
  EXPECT_EQ(r->not_quantized, std::vector<std::string>{"lm_head"});
  r = ParseQ(R"({"quant_method": "compressed-tensors", "format": "float-quantized",
      "config_groups": {"g": {"targets": ["Linear"],
        "weights": {"num_bits": 8, "type": "float", "strategy": "block", "block_structure": [128, 128]}}}})");
  ASSERT_TRUE(r.ok()) << r.error().ToString();
  EXPECT_EQ(r->kind, CheckpointQuant::Kind::kFp8Block);
  EXPECT_EQ(r->block_cols, 128);
  // The older key.
  nlohmann::json config = {{"compression_config", nlohmann::json::parse(channel)}};
  ASSERT_TRUE(ParseQuantizationConfig(config).ok());
  ExpectRefused(R"({"quant_method": "compressed-tensors", "format": "pack-quantized",
      "config_groups": {"g": {"targets": ["Linear"], "weights": {"num_bits": 4, "type": "int", "strategy": "group"}}}})",
                ErrorCode::kUnsupported, "format \"pack-quantized\"");
  ExpectRefused(R"({"quant_method": "compressed-tensors", "format": "int-quantized",
      "config_groups": {"g": {"targets": ["Linear"], "weights": {"num_bits": 8, "type": "int", "strategy": "channel"}}}})",
                ErrorCode::kUnsupported, "int-quantized");
  ExpectRefused(R"({"quant_method": "compressed-tensors", "format": "naive-quantized",
      "config_groups": {"g": {"targets": ["Linear"], "weights": {"num_bits": 8, "type": "int", "strategy": "channel"}}}})",
                ErrorCode::kUnsupported, "weights.type \"int\"");
  ExpectRefused(R"({"quant_method": "compressed-tensors", "format": "float-quantized",
      "kv_cache_scheme": {"num_bits": 8, "type": "float"},
      "config_groups": {"g": {"targets": ["Linear"], "weights": {"num_bits": 8, "type": "float", "strategy": "channel"}}}})",
                ErrorCode::kUnsupported, "kv_cache_scheme");
  ExpectRefused(R"({"quant_method": "compressed-tensors", "format": "float-quantized",
      "config_groups": {"g": {"targets": ["re:.*mlp.*"], "weights": {"num_bits": 8, "type": "float", "strategy": "channel"}}}})",
                ErrorCode::kUnsupported, "targets");
}

TEST(ConfigTest, Gptq) {
  auto r = ParseQ(R"({"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": true, "sym": true,
                      "damp_percent": 0.01, "true_sequential": true})");
  ASSERT_TRUE(r.ok()) << r.error().ToString();
  EXPECT_EQ(r->kind, CheckpointQuant::Kind::kGptq);
  EXPECT_EQ(r->gptq.bits, 4);
  EXPECT_EQ(r->gptq.group_size, 128);
  EXPECT_TRUE(r->gptq.desc_act);
  EXPECT_TRUE(r->gptq.sym);
  EXPECT_TRUE(r->gptq.v1_zero_offset);
  r = ParseQ(R"({"quant_method": "gptq", "bits": 4, "group_size": -1, "desc_act": false, "sym": false,
                 "checkpoint_format": "gptq_v2"})");
  ASSERT_TRUE(r.ok()) << r.error().ToString();
  EXPECT_EQ(r->gptq.group_size, -1);
  EXPECT_FALSE(r->gptq.v1_zero_offset);
  EXPECT_FALSE(r->gptq.sym);
  ExpectRefused(R"({"quant_method": "gptq", "bits": 8, "group_size": 128})", ErrorCode::kUnsupported, "bits 8");
  ExpectRefused(R"({"quant_method": "gptq", "bits": 4, "group_size": 0})", ErrorCode::kCorrupt, "group_size 0");
  ExpectRefused(R"({"quant_method": "gptq", "bits": 4, "group_size": "128"})", ErrorCode::kCorrupt, "group_size");
  ExpectRefused(R"({"quant_method": "gptq", "bits": 4, "checkpoint_format": "marlin"})", ErrorCode::kUnsupported,
                "marlin");
  ExpectRefused(R"({"quant_method": "gptq", "bits": 4, "is_marlin_format": true})", ErrorCode::kUnsupported,
                "is_marlin_format");
  ExpectRefused(R"({"quant_method": "gptq", "bits": 4, "dynamic": {"-:.*lm_head": {}}})", ErrorCode::kUnsupported,
                "dynamic");
}

TEST(ConfigTest, OtherMethodsRefused) {
  ExpectRefused(R"({"quant_method": "awq", "bits": 4, "group_size": 128, "version": "gemm"})", ErrorCode::kUnsupported,
                "quant_method \"awq\"");
  ExpectRefused(R"({"quant_method": "bitsandbytes", "load_in_4bit": true})", ErrorCode::kUnsupported, "bitsandbytes");
  ExpectRefused(R"({"load_in_8bit": true})", ErrorCode::kUnsupported, "without quant_method");
  ExpectRefused(R"({"quant_method": 3})", ErrorCode::kCorrupt, "quant_method");
  ExpectRefused(R"([1, 2])", ErrorCode::kCorrupt, "quantization_config");
  auto r = ParseQuantizationConfig(nlohmann::json::array());
  EXPECT_FALSE(r.ok());
}

}  // namespace
}  // namespace bigplan::quant
