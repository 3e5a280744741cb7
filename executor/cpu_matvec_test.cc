#include "executor/cpu_matvec.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace bigplan::cpu_matvec {
namespace {

// ---- an independent reference: decode by formula, sum in double ----

double Fp8Ref(uint8_t c) {
  const int e = (c >> 3) & 15, m = c & 7;
  const double mag = e == 0 ? m / 8.0 * std::pow(2.0, -6) : (1 + m / 8.0) * std::pow(2.0, e - 7);
  return (c & 0x80) ? -mag : mag;
}
double Bf16Ref(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
uint16_t ToBf16(float f) {  // truncation is enough for test data
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  return static_cast<uint16_t>(bits >> 16);
}

// W[r, j] of a matrix in the documented layout.
double WeightRef(const Matrix& w, int64_t r, int64_t j) {
  const uint8_t* row = w.base + r * w.row_stride;
  const int64_t k = w.cols;
  auto f32 = [](const uint8_t* p) {
    float f;
    std::memcpy(&f, p, 4);
    return static_cast<double>(f);
  };
  auto u16 = [](const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); };
  const auto rec0 = [&](int64_t data) { return w.record_offset > 0 ? w.record_offset : data; };
  switch (w.format) {
    case Format::kNone: return Bf16Ref(u16(row + 2 * j));
    case Format::kFp8E4M3: return Fp8Ref(row[j]) * f32(row + rec0(k) + 4 * (j / w.group));
    case Format::kInt8: return static_cast<int8_t>(row[j]) * f32(row + rec0(k) + 4 * (j / w.group));
    case Format::kInt4: {
      const int q = j % 2 == 0 ? row[j / 2] >> 4 : row[j / 2] & 15;
      const uint8_t* rec = row + rec0(k / 2) + 4 * (j / w.group);
      return (q - 8) * Bf16Ref(u16(rec)) + Bf16Ref(u16(rec + 2));
    }
  }
  return 0;
}

// A random matrix in the layout, with `pad` extra bytes per row.
struct TestMatrix {
  std::vector<uint8_t> bytes;
  Matrix m;
};
TestMatrix MakeMatrix(Format f, int64_t rows, int64_t cols, int64_t group, int64_t pad, uint32_t seed) {
  TestMatrix t;
  const int64_t row_bytes = quant::RowBytes(f, cols, group).value();
  t.m = Matrix{f, nullptr, rows, cols, group, row_bytes + pad};
  t.bytes.assign(rows * t.m.row_stride, 0xAB);
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> uni(-1.f, 1.f);
  for (int64_t r = 0; r < rows; ++r) {
    uint8_t* row = t.bytes.data() + r * t.m.row_stride;
    switch (f) {
      case Format::kNone:
        for (int64_t j = 0; j < cols; ++j) {
          const uint16_t h = ToBf16(uni(rng));
          std::memcpy(row + 2 * j, &h, 2);
        }
        break;
      case Format::kFp8E4M3:
      case Format::kInt8:
        for (int64_t j = 0; j < cols; ++j) {
          uint8_t c = static_cast<uint8_t>(rng());
          if (f == Format::kFp8E4M3 && (c & 0x7F) == 0x7F) c &= 0xFE;  // no NaN codes
          row[j] = c;
        }
        for (int64_t g = 0; g < cols / group; ++g) {
          const float s = uni(rng) * 0.01f;
          std::memcpy(row + cols + 4 * g, &s, 4);
        }
        break;
      case Format::kInt4:
        for (int64_t j = 0; j < cols / 2; ++j) row[j] = static_cast<uint8_t>(rng());
        for (int64_t g = 0; g < cols / group; ++g) {
          const uint16_t s = ToBf16(uni(rng) * 0.1f), z = ToBf16(uni(rng) * 0.05f);
          std::memcpy(row + cols / 2 + 4 * g, &s, 2);
          std::memcpy(row + cols / 2 + 4 * g + 2, &z, 2);
        }
        break;
    }
  }
  t.m.base = t.bytes.data();
  return t;
}

std::vector<float> RandomX(int batch, int64_t cols, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> uni(-2.f, 2.f);
  std::vector<float> x(batch * cols);
  for (float& v : x) v = uni(rng);
  return x;
}

// Checks y against the double reference within 1e-5 of sum |w x| (plus an absolute floor for all-zero rows).
void ExpectMatches(const Job& job, int batch, const std::string& what) {
  for (int b = 0; b < batch; ++b)
    for (int64_t r = job.row_begin; r < job.row_end; ++r) {
      double sum = 0, abs_sum = 0;
      for (int64_t j = 0; j < job.w.cols; ++j) {
        const double p = WeightRef(job.w, r, j) * job.x[b * job.w.cols + j];
        sum += p;
        abs_sum += std::fabs(p);
      }
      const double got = job.y[b * job.y_stride + (r - job.row_begin)];
      ASSERT_NEAR(got, sum, 1e-5 * abs_sum + 1e-30) << what << " row " << r << " batch " << b;
    }
}

std::vector<Isa> SupportedIsas() {
  std::vector<Isa> out = {Isa::kScalar};
  if (DetectIsa() >= Isa::kAvx2) out.push_back(Isa::kAvx2);
  if (DetectIsa() >= Isa::kAvx512) out.push_back(Isa::kAvx512);
  return out;
}

const Format kFormats[] = {Format::kNone, Format::kFp8E4M3, Format::kInt8, Format::kInt4};

// The kernels read formats/quant.h's rows (sizes: quant::RowBytes) and add their own limits, checked by Validate.
TEST(CpuMatVecTest, ValidateUsesTheLayoutsRowBytes) {
  EXPECT_EQ(quant::RowBytes(Format::kNone, 4096, 0).value(), 8192u);
  EXPECT_EQ(quant::RowBytes(Format::kFp8E4M3, 4096, 128).value(), 4096u + 32 * 4);
  EXPECT_EQ(quant::RowBytes(Format::kInt8, 4096, 4096).value(), 4096u + 4);
  EXPECT_EQ(quant::RowBytes(Format::kInt4, 4096, 64).value(), 2048u + 64 * 4);
  static const uint8_t byte = 0;
  auto valid = [](Format f, int64_t cols, int64_t group) {
    return Validate(Matrix{f, &byte, 1, cols, group, int64_t{1} << 20});
  };
  EXPECT_TRUE(valid(Format::kInt4, 4096, 64).ok());
  EXPECT_TRUE(valid(Format::kNone, 4096, 0).ok());
  EXPECT_FALSE(valid(Format::kInt8, 100, 64).ok());
  EXPECT_FALSE(valid(Format::kInt8, 64, 0).ok());
  EXPECT_FALSE(valid(Format::kInt4, 63, 63).ok());
  EXPECT_FALSE(valid(Format::kInt4, 66, 33).ok());  // the layout allows it; the kernels need even int4 groups
  EXPECT_FALSE(valid(Format::kNone, 0, 0).ok());
  EXPECT_FALSE(valid(static_cast<Format>(9), 64, 64).ok());
  EXPECT_EQ(valid(Format::kInt8, 100, 64).error().code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(Validate(Matrix{Format::kInt8, &byte, 1, 64, 64, 67}).error().code, ErrorCode::kInvalidArgument);  // stride
}

// Every non-NaN fp8 code through each kernel: row c holds code c in column 0 and zeros elsewhere; x = e_0. The
// products are exact, so y must equal code * scale exactly (scale 1, a small one and one above 2^7). Runs with
// denormals-are-zero set on the calling thread: the kernels must not depend on it.
TEST(CpuMatVecTest, Fp8AllCodesEachKernel) {
  const int64_t cols = 32, group = 16, rows = 256;
  const int64_t row_bytes = quant::RowBytes(Format::kFp8E4M3, cols, group).value();
  for (float scale : {1.0f, 0.0078125f, 1000.0f}) {
    std::vector<uint8_t> bytes(rows * row_bytes, 0);
    for (int64_t c = 0; c < rows; ++c) {
      uint8_t* row = bytes.data() + c * row_bytes;
      row[0] = (c & 0x7F) == 0x7F ? 0 : static_cast<uint8_t>(c);
      for (int g = 0; g < 2; ++g) std::memcpy(row + cols + 4 * g, &scale, 4);
    }
    std::vector<float> x(cols, 0.0f);
    x[0] = 1.0f;
    for (Isa isa : SupportedIsas()) {
      std::vector<float> y(rows, -1.0f);
      Job job{Matrix{Format::kFp8E4M3, bytes.data(), rows, cols, group, row_bytes}, 0, rows, x.data(), y.data(), rows};
#if defined(__x86_64__)
      const unsigned csr = _mm_getcsr();
      _mm_setcsr(csr | 0x8040);  // DAZ and FTZ
#endif
      MatVecPool pool(1, isa);
      ASSERT_EQ(pool.isa(), isa);
      ASSERT_TRUE(pool.Run({&job, 1}, 1).ok());
#if defined(__x86_64__)
      const unsigned after = _mm_getcsr();
      _mm_setcsr(csr);
      EXPECT_EQ(after, csr | 0x8040) << "Run must restore the caller's MXCSR";
#endif
      for (int c = 0; c < 256; ++c) {
        const double want = (c & 0x7F) == 0x7F ? 0.0 : Fp8Ref(static_cast<uint8_t>(c)) * scale;
        EXPECT_EQ(static_cast<double>(y[c]), want) << IsaName(isa) << " code " << c << " scale " << scale;
      }
    }
  }
}

// Int4 nibble order: the high nibble is the even column.
TEST(CpuMatVecTest, Int4NibbleOrder) {
  const int64_t cols = 16;
  const int64_t row_bytes = quant::RowBytes(Format::kInt4, cols, cols).value();
  std::vector<uint8_t> row(row_bytes, 0x88);  // every q = 8: w = z
  row[0] = 0xF0;                               // q[0] = 15, q[1] = 0
  const uint16_t s = ToBf16(1.0f), z = ToBf16(0.0f);
  std::memcpy(row.data() + 8, &s, 2);
  std::memcpy(row.data() + 10, &z, 2);
  std::vector<float> x(2 * cols, 0.0f);
  x[0] = 1.0f;             // batch 0 picks column 0
  x[cols + 1] = 1.0f;      // batch 1 picks column 1
  for (Isa isa : SupportedIsas()) {
    float y[2] = {0, 0};
    Job job{Matrix{Format::kInt4, row.data(), 1, cols, cols, row_bytes}, 0, 1, x.data(), y, 1};
    MatVecPool pool(1, isa);
    ASSERT_TRUE(pool.Run({&job, 1}, 2).ok());
    EXPECT_EQ(y[0], 7.0f) << IsaName(isa);
    EXPECT_EQ(y[1], -8.0f) << IsaName(isa);
  }
}

// Every format x batch x shape x group x kernel, with padded rows, against the reference.
TEST(CpuMatVecTest, MatchesReference) {
  struct Shape {
    int64_t rows, cols;
  };
  const Shape shapes[] = {{37, 64}, {13, 576}, {21, 4096}};
  uint32_t seed = 1;
  for (Isa isa : SupportedIsas()) {
    MatVecPool pool(3, isa);
    for (Format f : kFormats)
      for (const Shape& sh : shapes)
        for (int64_t group : {int64_t{32}, int64_t{64}, int64_t{128}, sh.cols}) {
          if (sh.cols % group != 0) continue;
          if (f == Format::kNone && group != sh.cols) continue;
          TestMatrix t = MakeMatrix(f, sh.rows, sh.cols, group, /*pad=*/24, seed++);
          for (int batch : {1, 3, 8}) {
            std::vector<float> x = RandomX(batch, sh.cols, seed++);
            const int64_t y_stride = sh.rows + 5;
            std::vector<float> y(batch * y_stride, -7.0f);
            Job job{t.m, 0, sh.rows, x.data(), y.data(), y_stride};
            ASSERT_TRUE(pool.Run({&job, 1}, batch).ok());
            const std::string what = std::string(IsaName(isa)) + " " + quant::FormatName(f) + " " +
                                     std::to_string(sh.rows) + "x" + std::to_string(sh.cols) + " group " +
                                     std::to_string(group) + " batch " + std::to_string(batch);
            ExpectMatches(job, batch, what);
            for (int b = 0; b < batch; ++b)
              for (int64_t r = sh.rows; r < y_stride; ++r) ASSERT_EQ(y[b * y_stride + r], -7.0f) << what;
          }
        }
  }
}

// Groups that are not a multiple of the vector width, and bf16 columns with a tail: portable kernel or tails.
TEST(CpuMatVecTest, OddGroupsAndColumns) {
  uint32_t seed = 100;
  for (Isa isa : SupportedIsas()) {
    MatVecPool pool(2, isa);
    struct Case {
      Format f;
      int64_t cols, group;
    };
    const Case cases[] = {{Format::kNone, 1, 1},          {Format::kNone, 23, 23},  {Format::kNone, 100, 100},
                          {Format::kInt8, 48, 24},        {Format::kFp8E4M3, 36, 12}, {Format::kInt4, 40, 8},
                          {Format::kInt4, 96, 6},         {Format::kInt8, 7, 7}};
    for (const Case& c : cases)
      for (int batch : {1, 5, 16}) {
        TestMatrix t = MakeMatrix(c.f, 11, c.cols, c.group, 3, seed++);
        std::vector<float> x = RandomX(batch, c.cols, seed++);
        std::vector<float> y(batch * 11);
        Job job{t.m, 0, 11, x.data(), y.data(), 11};
        ASSERT_TRUE(pool.Run({&job, 1}, batch).ok());
        ExpectMatches(job, batch, std::string(IsaName(isa)) + " " + quant::FormatName(c.f) + " cols " +
                                      std::to_string(c.cols) + " group " + std::to_string(c.group));
      }
  }
}

// The first columns of longer rows, their records where the longer rows keep them (Matrix::record_offset: a split
// expert's first down columns): each format, one scale a row and groups, every instruction set; the product is that
// of the full rows' first columns. Records that do not fit the row are refused.
TEST(CpuMatVecTest, LeadingColumnsOfLongerRows) {
  struct Case {
    Format f;
    int64_t cols, group, lead;
  };
  const Case cases[] = {{Format::kInt8, 576, 576, 192}, {Format::kFp8E4M3, 576, 576, 64},
                        {Format::kInt8, 576, 64, 128},  {Format::kInt4, 576, 32, 64},
                        {Format::kInt4, 1024, 128, 512}};
  uint32_t seed = 300;
  for (Isa isa : SupportedIsas()) {
    MatVecPool pool(2, isa);
    for (const Case& c : cases)
      for (int batch : {1, 3}) {
        TestMatrix t = MakeMatrix(c.f, 19, c.cols, c.group, 4, seed++);
        Matrix lead = t.m;
        lead.cols = c.lead;
        lead.group = c.group == c.cols ? c.lead : c.group;  // one scale a row stays one
        lead.record_offset = c.f == Format::kInt4 ? c.cols / 2 : c.cols;
        ASSERT_TRUE(Validate(lead).ok()) << Validate(lead).error().ToString();
        std::vector<float> x = RandomX(batch, c.lead, seed++);
        std::vector<float> y(batch * 19);
        Job job{lead, 0, 19, x.data(), y.data(), 19};
        const std::string what = std::string(IsaName(isa)) + " " + quant::FormatName(c.f) + " first " +
                                 std::to_string(c.lead) + " of " + std::to_string(c.cols);
        ASSERT_TRUE(pool.Run({&job, 1}, batch).ok()) << what;
        ExpectMatches(job, batch, what);
        // The same values as the full rows' first columns (x zero past them).
        std::vector<float> xf(batch * c.cols, 0.0f), yf(batch * 19);
        for (int b = 0; b < batch; ++b) std::copy_n(&x[b * c.lead], c.lead, &xf[b * c.cols]);
        Job full{t.m, 0, 19, xf.data(), yf.data(), 19};
        ASSERT_TRUE(pool.Run({&full, 1}, batch).ok());
        for (int i = 0; i < batch * 19; ++i) EXPECT_NEAR(y[i], yf[i], 1e-4 * (1 + std::fabs(yf[i]))) << what;
      }
  }
  TestMatrix t = MakeMatrix(Format::kInt8, 4, 64, 64, 0, 9);
  Matrix bad = t.m;
  bad.cols = 32;
  bad.group = 32;
  bad.record_offset = 16;  // inside the 32 columns' data
  EXPECT_FALSE(Validate(bad).ok());
  bad.record_offset = 64 + 4;  // the record would end past the row
  EXPECT_FALSE(Validate(bad).ok());
  bad.record_offset = 64;
  EXPECT_TRUE(Validate(bad).ok());
}

// Several jobs in one call (sharing x, with row sub-ranges), on more threads than pieces and on many.
TEST(CpuMatVecTest, SeveralJobsAndSubRanges) {
  const int64_t cols = 576;
  TestMatrix a = MakeMatrix(Format::kNone, 203, cols, cols, 0, 7);
  TestMatrix b = MakeMatrix(Format::kInt4, 150, cols, 64, 8, 8);
  TestMatrix c = MakeMatrix(Format::kFp8E4M3, 77, cols, 32, 0, 9);
  TestMatrix d = MakeMatrix(Format::kInt8, 1000, cols, 576, 4, 10);
  const int batch = 3;
  std::vector<float> x = RandomX(batch, cols, 11);
  for (int threads : {1, 2, 5, 0}) {
    MatVecPool pool(threads);
    std::vector<float> ya(batch * 203), yb(batch * 100), yc(batch * 1), yd(batch * 999);
    const Job jobs[] = {
        {a.m, 0, 203, x.data(), ya.data(), 203},
        {b.m, 37, 137, x.data(), yb.data(), 100},
        {c.m, 76, 77, x.data(), yc.data(), 1},
        {c.m, 5, 5, nullptr, nullptr, 0},  // empty: nothing to do
        {d.m, 1, 1000, x.data(), yd.data(), 999},
    };
    for (int rep = 0; rep < 3; ++rep) {
      ASSERT_TRUE(pool.Run(jobs, batch).ok());
      for (const Job& j : jobs)
        if (j.row_end > j.row_begin) ExpectMatches(j, batch, "threads " + std::to_string(threads));
    }
  }
}

TEST(CpuMatVecTest, ManyCallsAfterIdle) {
  TestMatrix t = MakeMatrix(Format::kInt8, 512, 256, 64, 0, 21);
  std::vector<float> x = RandomX(1, 256, 22);
  std::vector<float> y(512);
  MatVecPool pool(4);
  Job job{t.m, 0, 512, x.data(), y.data(), 512};
  for (int i = 0; i < 200; ++i) {
    if (i % 50 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(2));  // let the workers sleep
    std::fill(y.begin(), y.end(), 0.0f);
    ASSERT_TRUE(pool.Run({&job, 1}, 1).ok());
    ExpectMatches(job, 1, "call " + std::to_string(i));
  }
}

// Two threads calling Run on one pool: each call either runs (and is right) or says kBusy; never both at once.
TEST(CpuMatVecTest, ConcurrentRunIsBusyOrCorrect) {
  TestMatrix t = MakeMatrix(Format::kNone, 256, 1024, 1024, 0, 41);
  std::vector<float> x = RandomX(2, 1024, 42);
  MatVecPool pool(3);
  std::atomic<int> ok{0}, busy{0}, other{0};
  auto caller = [&] {
    std::vector<float> y(2 * 256);
    const Job job{t.m, 0, 256, x.data(), y.data(), 256};
    for (int i = 0; i < 100; ++i) {
      Status s = pool.Run({&job, 1}, 2);
      if (s.ok()) {
        ++ok;
        ExpectMatches(job, 2, "concurrent");
      } else if (s.error().code == ErrorCode::kBusy) {
        ++busy;
      } else {
        ++other;
      }
    }
  };
  std::thread a(caller), b(caller);
  a.join();
  b.join();
  EXPECT_EQ(other.load(), 0);
  EXPECT_EQ(ok.load() + busy.load(), 200);
  EXPECT_GT(ok.load(), 0);
}

TEST(CpuMatVecTest, BadArguments) {
  TestMatrix t = MakeMatrix(Format::kInt8, 8, 64, 32, 0, 31);
  std::vector<float> x(16 * 64), y(16 * 8, -1.0f);
  MatVecPool pool(2);
  auto run = [&](Job job, int batch) { return pool.Run({&job, 1}, batch); };
  const Job good{t.m, 0, 8, x.data(), y.data(), 8};
  ASSERT_TRUE(run(good, 1).ok());
  std::fill(y.begin(), y.end(), -1.0f);

  auto expect_invalid = [&](Job job, int batch, const char* what) {
    Status s = run(job, batch);
    ASSERT_FALSE(s.ok()) << what;
    EXPECT_EQ(s.error().code, ErrorCode::kInvalidArgument) << what;
    EXPECT_NE(s.error().message.find("cpu_matvec"), std::string::npos) << s.error().message;
  };
  expect_invalid(good, 0, "batch 0");
  expect_invalid(good, 17, "batch 17");
  Job j = good;
  j.row_end = 9;
  expect_invalid(j, 1, "rows past the end");
  j = good;
  j.row_begin = 5, j.row_end = 4;
  expect_invalid(j, 1, "reversed rows");
  j = good;
  j.row_begin = -1;
  expect_invalid(j, 1, "negative row");
  j = good;
  j.x = nullptr;
  expect_invalid(j, 1, "null x");
  j = good;
  j.y = nullptr;
  expect_invalid(j, 1, "null y");
  j = good;
  j.y_stride = 7;
  expect_invalid(j, 1, "small y stride");
  j = good;
  j.w.row_stride = 60;
  expect_invalid(j, 1, "small row stride");
  j = good;
  j.w.group = 48;
  expect_invalid(j, 1, "group does not divide");
  j = good;
  j.w.base = nullptr;
  expect_invalid(j, 1, "null base");
  j = good;
  j.w.cols = 0;
  expect_invalid(j, 1, "no columns");
  j = good;
  j.w.format = static_cast<Format>(42);
  expect_invalid(j, 1, "unknown format");
  j = good;
  j.w.row_stride = int64_t{1} << 62;
  expect_invalid(j, 1, "overflowing size");
  // A bad job after a good one: nothing is written.
  const Job pair[] = {good, Job{t.m, 0, 9, x.data(), y.data(), 9}};
  EXPECT_FALSE(pool.Run(pair, 1).ok());
  for (float v : y) ASSERT_EQ(v, -1.0f);
  EXPECT_TRUE(pool.Run({}, 1).ok());
}

TEST(CpuMatVecTest, ForcedIsaFallsBack) {
  EXPECT_NE(DetectIsa(), Isa::kAuto);
  MatVecPool best(1);
  EXPECT_EQ(best.isa(), DetectIsa());
  MatVecPool scalar(1, Isa::kScalar);
  EXPECT_EQ(scalar.isa(), Isa::kScalar);
  MatVecPool wide(1, Isa::kAvx512);
  EXPECT_LE(wide.isa(), DetectIsa());
  EXPECT_GE(MatVecPool(0).threads(), 1);
}

}  // namespace
}  // namespace bigplan::cpu_matvec
