#include "formats/quant.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <mutex>
#include <thread>

#include "support/checked_math.h"

namespace bigplan::quant {
namespace {

inline uint32_t FloatBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float BitsFloat(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// 1.5 * 2^23: adding it to a float of magnitude below 2^22 leaves round-half-even(x) in the low mantissa bits (with the
// default rounding mode); the loops below rely on it because it vectorizes, unlike nearbyint.
constexpr float kRoundMagic = 12582912.0f;
constexpr uint32_t kRoundMagicBits = 0x4B400000u;

// Encoder core for a finite value (no NaN): saturating RNE.
[[gnu::always_inline]] inline uint8_t EncodeFp8Finite(float x) {
  const uint32_t u = FloatBits(x);
  const uint32_t sign = (u >> 24) & 0x80u;
  const uint32_t a = u & 0x7FFFFFFFu;
  // Normal range [2^-6, 448): round the 23-bit mantissa to 3 bits (ties to even), then rebias 127 -> 7.
  const uint32_t normal = ((a + 0x7FFFFu + ((a >> 20) & 1u)) >> 20) - (120u << 3);
  // Subnormal range [0, 2^-6): multiples of 2^-9, round(a * 512) in 0..8 (8 is the smallest normal's code).
  const uint32_t sub = FloatBits(BitsFloat(a) * 512.0f + kRoundMagic) - kRoundMagicBits;
  uint32_t code = a >= 0x3C800000u ? normal : sub;
  code = a >= 0x43E00000u ? 0x7Eu : code;
  return static_cast<uint8_t>(code | sign);
}

[[gnu::always_inline]] inline float Bf16Value(float f) { return BitsFloat(static_cast<uint32_t>(FloatToBf16(f)) << 16); }

std::string Str(int64_t v) { return std::to_string(v); }

Error Invalid(std::string msg) { return MakeError(ErrorCode::kInvalidArgument, std::move(msg)); }

inline void StoreF32(uint8_t* p, float f) { std::memcpy(p, &f, 4); }
inline float LoadF32(const uint8_t* p) {
  float f;
  std::memcpy(&f, p, 4);
  return f;
}
inline void StoreU16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v);
  p[1] = static_cast<uint8_t>(v >> 8);
}
inline uint16_t LoadU16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
inline int32_t LoadI32(const uint8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// Source row -> float32. Returns the largest |x| as bits (>= 0x7F800000 when the row holds a NaN or infinity).
[[gnu::always_inline]] inline uint32_t LoadRow(const uint8_t* src, DType dtype, int64_t k, float* out) {
  uint32_t maxbits = 0;
  if (dtype == DType::kBF16) {
    for (int64_t i = 0; i < k; ++i) {
      const uint32_t b = static_cast<uint32_t>(LoadU16(src + 2 * i)) << 16;
      out[i] = BitsFloat(b);
      const uint32_t a = b & 0x7FFFFFFFu;
      maxbits = a > maxbits ? a : maxbits;
    }
  } else if (dtype == DType::kF16) {
    for (int64_t i = 0; i < k; ++i) {
      const float f = F16ToFloat(LoadU16(src + 2 * i));
      out[i] = f;
      const uint32_t a = FloatBits(f) & 0x7FFFFFFFu;
      maxbits = a > maxbits ? a : maxbits;
    }
  } else {
    std::memcpy(out, src, static_cast<size_t>(k) * 4);
    for (int64_t i = 0; i < k; ++i) {
      const uint32_t a = FloatBits(out[i]) & 0x7FFFFFFFu;
      maxbits = a > maxbits ? a : maxbits;
    }
  }
  return maxbits;
}

[[gnu::always_inline]] inline float AbsMax(const float* w, int64_t g) {
  uint32_t m = 0;
  for (int64_t i = 0; i < g; ++i) {
    const uint32_t a = FloatBits(w[i]) & 0x7FFFFFFFu;
    m = a > m ? a : m;
  }
  return BitsFloat(m);
}

[[gnu::always_inline]] inline void QuantizeFp8Group(const float* w, int64_t g, uint8_t* data, uint8_t* record) {
  const float amax = AbsMax(w, g);
  const float s = amax > 0 ? amax / 448.0f : 1.0f;
  const float inv = 1.0f / s;
  for (int64_t i = 0; i < g; ++i) data[i] = EncodeFp8Finite(w[i] * inv);
  StoreF32(record, s);
}

[[gnu::always_inline]] inline void QuantizeInt8Group(const float* w, int64_t g, uint8_t* data, uint8_t* record) {
  const float amax = AbsMax(w, g);
  const float s = amax > 0 ? amax / 127.0f : 1.0f;
  const float inv = 1.0f / s;
  for (int64_t i = 0; i < g; ++i) {
    float t = w[i] * inv;
    t = t < -127.0f ? -127.0f : t;
    t = t > 127.0f ? 127.0f : t;
    const int32_t q = static_cast<int32_t>(FloatBits(t + kRoundMagic) - kRoundMagicBits);
    data[i] = static_cast<uint8_t>(q);
  }
  StoreF32(record, s);
}

// q = clamp(round-half-even(w / s + (8 - z / s)), 0, 15), given inv = 1 / s and c = 8 - z * inv. The clamp is on the
// rounded integer (the same result as clamping first), where it vectorizes to integer min/max.
[[gnu::always_inline]] inline int32_t Int4Code(float w, float inv, float c) {
  int32_t q = static_cast<int32_t>(FloatBits(w * inv + c + kRoundMagic) - kRoundMagicBits);
  q = q < 0 ? 0 : q;
  q = q > 15 ? 15 : q;
  return q;
}

[[gnu::always_inline]] inline float Int4Error(const float* w, int64_t g, float s, float z, float inv) {
  constexpr int kLanes = 16;
  const float c = 8.0f - z * inv;
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= g; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const float q = static_cast<float>(Int4Code(w[i + l], inv, c));
      const float d = (q - 8.0f) * s + z - w[i + l];
      acc[l] += d * d;
    }
  }
  for (int half = kLanes / 2; half > 0; half /= 2) {  // a fixed tree: vectorizes and does not depend on the CPU
    for (int l = 0; l < half; ++l) acc[l] += acc[l + half];
  }
  float total = acc[0];
  for (; i < g; ++i) {
    const float d = (static_cast<float>(Int4Code(w[i], inv, c)) - 8.0f) * s + z - w[i];
    total += d * d;
  }
  return total;
}

// Shrink factors p = 1 - 0.01 i, i in [0, kInt4ShrinkSteps): first every 4th (i = 0, 4, ..., 16), then the neighbours
// within 2 of the best of those. On normal and heavy-tailed weights this matches trying all 20 to within 0.1% of the
// error at under half the work (at most 9 tries per group).
constexpr int kInt4ShrinkSteps = 20;
constexpr int kInt4CoarseStride = 4;

struct Int4Best {
  float err = std::numeric_limits<float>::infinity();
  float s = 0;
  float z = 0;
  int step = 0;
};

// Tries shrink step `step` of the range [mn, max] and keeps it in *best when its squared error is smaller.
[[gnu::always_inline]] inline void TryInt4Step(const float* w, int64_t g, float mn, float mx, int step, Int4Best* best) {
  const float p = 1.0f - 0.01f * static_cast<float>(step);
  const float lo = mn * p, hi = mx * p;
  const float s = Bf16Value((hi - lo) / 15.0f);
  if (!(s > 0) || !std::isfinite(s)) return;
  const float z = Bf16Value(lo + 8.0f * s);
  if (!std::isfinite(z)) return;
  const float err = Int4Error(w, g, s, z, 1.0f / s);
  if (err < best->err) {
    best->err = err;
    best->s = s;
    best->z = z;
    best->step = step;
  }
}

// Writes the group's codes into `codes` (one per column) and its record.
[[gnu::always_inline]] inline void QuantizeInt4Group(const float* w, int64_t g, uint8_t* codes, uint8_t* record) {
  constexpr int kLanes = 16;
  float mn = w[0], mx = w[0];
  if (g % kLanes == 0) {
    float lmn[kLanes], lmx[kLanes];
    for (int l = 0; l < kLanes; ++l) lmn[l] = lmx[l] = w[l];
    for (int64_t i = kLanes; i < g; i += kLanes) {
      for (int l = 0; l < kLanes; ++l) {
        lmn[l] = w[i + l] < lmn[l] ? w[i + l] : lmn[l];
        lmx[l] = w[i + l] > lmx[l] ? w[i + l] : lmx[l];
      }
    }
    for (int l = 0; l < kLanes; ++l) {
      mn = lmn[l] < mn ? lmn[l] : mn;
      mx = lmx[l] > mx ? lmx[l] : mx;
    }
  } else {
    for (int64_t i = 1; i < g; ++i) {
      mn = w[i] < mn ? w[i] : mn;
      mx = w[i] > mx ? w[i] : mx;
    }
  }
  float best_s = 0, best_z = Bf16Value(mn);
  if (mx > mn) {
    Int4Best best;
    for (int step = 0; step < kInt4ShrinkSteps; step += kInt4CoarseStride) TryInt4Step(w, g, mn, mx, step, &best);
    const int center = best.step;
    for (int step = std::max(0, center - 2); step <= std::min(kInt4ShrinkSteps - 1, center + 2); ++step) {
      if (step % kInt4CoarseStride != 0) TryInt4Step(w, g, mn, mx, step, &best);
    }
    if (best.s > 0) {
      best_s = best.s;
      best_z = best.z;
    }
  }
  if (best_s > 0) {
    const float inv = 1.0f / best_s, c = 8.0f - best_z * inv;
    for (int64_t i = 0; i < g; ++i) codes[i] = static_cast<uint8_t>(Int4Code(w[i], inv, c));
  } else {
    std::memset(codes, 8, static_cast<size_t>(g));
  }
  StoreU16(record, FloatToBf16(best_s));
  StoreU16(record + 2, FloatToBf16(best_z));
}

// The row quantizer, compiled for AVX2 as well as for the baseline x86-64 (picked at load time by the CPU), so that a
// portable build still runs its loops 8 floats wide. No FMA: the bytes written do not depend on the CPU.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define BIGPLAN_QUANT_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define BIGPLAN_QUANT_CLONES
#endif

// Quantizes one row of k source values into `row` (RowBytes long), using `w` (k floats) and `codes` (k bytes, int4
// only) as scratch. Returns the column of the first NaN or infinite weight (nothing written), or -1.
BIGPLAN_QUANT_CLONES int64_t QuantizeRow(const uint8_t* src, DType dtype, int64_t k, Format format, int64_t group,
                                         float* w, uint8_t* codes, uint8_t* row) {
  const uint32_t maxbits = LoadRow(src, dtype, k, w);
  if (maxbits >= 0x7F800000u) {
    for (int64_t c = 0; c < k; ++c) {
      if (!std::isfinite(w[c])) return c;
    }
  }
  const int64_t groups = k / group;
  uint8_t* records = row + (format == Format::kInt4 ? k / 2 : k);
  for (int64_t gi = 0; gi < groups; ++gi) {
    const float* wg = w + gi * group;
    switch (format) {
      case Format::kFp8E4M3: QuantizeFp8Group(wg, group, row + gi * group, records + 4 * gi); break;
      case Format::kInt8: QuantizeInt8Group(wg, group, row + gi * group, records + 4 * gi); break;
      case Format::kInt4: QuantizeInt4Group(wg, group, codes + gi * group, records + 4 * gi); break;
      case Format::kNone: break;
    }
  }
  if (format == Format::kInt4) {
    for (int64_t j = 0; j < k / 2; ++j) row[j] = static_cast<uint8_t>((codes[2 * j] << 4) | codes[2 * j + 1]);
  }
  return -1;
}

struct Shape {
  uint64_t row_bytes = 0;
  uint64_t data_bytes = 0;
  int64_t groups = 0;
  uint64_t total = 0;
};

Result<Shape> CheckShape(Format format, int64_t n, int64_t k, int64_t group) {
  if (format == Format::kNone) return Invalid("format none has no quantized layout");
  if (n < 0) return Invalid("negative row count " + Str(n));
  BIGPLAN_ASSIGN_OR_RETURN(uint64_t row, RowBytes(format, k, group));
  auto total = CheckedMul(static_cast<uint64_t>(n), row);
  if (!total) return Invalid(Str(n) + " rows of " + std::to_string(row) + " bytes overflow 64 bits");
  Shape s;
  s.row_bytes = row;
  s.groups = k / group;
  s.data_bytes = row - static_cast<uint64_t>(s.groups) * 4;
  s.total = *total;
  return s;
}

// Runs body(begin, end) over [0, n) split into contiguous ranges on up to `threads` threads (at least min_per_thread
// items each); returns the first error in index order.
template <typename Body>
Status ParallelRows(int64_t n, int threads, int64_t min_per_thread, Body body) {
  int t = threads > 0 ? threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  t = static_cast<int>(std::min<int64_t>(t, std::max<int64_t>(1, n / std::max<int64_t>(1, min_per_thread))));
  if (t <= 1) return body(int64_t{0}, n);
  std::vector<Status> results(static_cast<size_t>(t));
  std::vector<std::thread> pool;
  pool.reserve(static_cast<size_t>(t));
  for (int i = 0; i < t; ++i) {
    const int64_t b = n * i / t, e = n * (i + 1) / t;
    pool.emplace_back([&, i, b, e] { results[static_cast<size_t>(i)] = body(b, e); });
  }
  for (auto& th : pool) th.join();
  for (auto& r : results) {
    if (!r.ok()) return r;
  }
  return Status::Ok();
}

}  // namespace

float Fp8E4M3ToFloat(uint8_t code) {
  const uint32_t e = (code >> 3) & 0xFu, m = code & 7u;
  float v;
  if (e == 15 && m == 7) {
    v = std::numeric_limits<float>::quiet_NaN();
  } else if (e == 0) {
    v = static_cast<float>(m) * 0x1p-9f;
  } else {
    v = BitsFloat(((e + 120u) << 23) | (m << 20));
  }
  return (code & 0x80) ? -v : v;
}

uint8_t FloatToFp8E4M3(float value) {
  if (std::isnan(value)) return 0x7F;
  return EncodeFp8Finite(value);
}


Result<Format> ParseFormat(std::string_view name) {
  if (name == "bf16" || name == "none") return Format::kNone;
  if (name == "fp8") return Format::kFp8E4M3;
  if (name == "int8") return Format::kInt8;
  if (name == "int4") return Format::kInt4;
  return Invalid("unknown weight format \"" + std::string(name) + "\" (choices: bf16, none, fp8, int8, int4)");
}

const char* FormatName(Format format) {
  switch (format) {
    case Format::kNone: return "none";
    case Format::kFp8E4M3: return "fp8";
    case Format::kInt8: return "int8";
    case Format::kInt4: return "int4";
  }
  return "unknown";
}

Result<int64_t> DefaultGroup(Format format, int64_t k) {
  if (k <= 0) return Invalid("column count " + Str(k) + " must be positive");
  switch (format) {
    case Format::kNone: return Invalid("format none has no groups");
    case Format::kFp8E4M3:
    case Format::kInt8: return k;
    case Format::kInt4:
      for (int64_t g : {128, 64, 32}) {
        if (k % g == 0) return g;
      }
      return MakeError(ErrorCode::kUnsupported,
                       "int4 needs a column count divisible by 32 (group 128, 64 or 32); got " + Str(k));
  }
  return Invalid("unknown format");
}

Result<uint64_t> RowBytes(Format format, int64_t k, int64_t group) {
  if (k <= 0) return Invalid("column count " + Str(k) + " must be positive");
  if (format == Format::kNone) {
    auto r = CheckedMul(static_cast<uint64_t>(k), 2);
    if (!r) return Invalid("row of " + Str(k) + " columns overflows");
    return *r;
  }
  if (group <= 0 || k % group != 0) {
    return Invalid(std::string(FormatName(format)) + ": group size " + Str(group) + " does not divide the column count " +
                   Str(k));
  }
  const uint64_t groups = static_cast<uint64_t>(k / group);
  uint64_t data = static_cast<uint64_t>(k);
  if (format == Format::kInt4) {
    if (k % 2 != 0) return Invalid("int4 needs an even column count; got " + Str(k));
    data = static_cast<uint64_t>(k) / 2;
  } else if (format != Format::kFp8E4M3 && format != Format::kInt8) {
    return Invalid("unknown format");
  }
  auto r = CheckedAdd(data, groups * 4);  // groups <= k < 2^63, so groups * 4 fits
  if (!r) return Invalid("row of " + Str(k) + " columns overflows");
  return *r;
}

uint64_t DataBytes(Format format, int64_t k) {
  if (k <= 0) return 0;
  const uint64_t n = static_cast<uint64_t>(k);
  switch (format) {
    case Format::kNone: return 2 * n;
    case Format::kFp8E4M3:
    case Format::kInt8: return n;
    case Format::kInt4: return n / 2;
  }
  return 0;
}

Result<uint64_t> TensorBytes(Format format, int64_t n, int64_t k, int64_t group) {
  if (n < 0) return Invalid("negative row count " + Str(n));
  BIGPLAN_ASSIGN_OR_RETURN(uint64_t row, RowBytes(format, k, group));
  auto total = CheckedMul(static_cast<uint64_t>(n), row);
  if (!total) return Invalid(Str(n) + " rows of " + std::to_string(row) + " bytes overflow 64 bits");
  return *total;
}

Status Quantize(std::span<const uint8_t> src, DType src_dtype, int64_t n, int64_t k, Format format, int64_t group,
                std::span<uint8_t> dst, int threads) {
  BIGPLAN_ASSIGN_OR_RETURN(Shape shape, CheckShape(format, n, k, group));
  if (src_dtype != DType::kBF16 && src_dtype != DType::kF16 && src_dtype != DType::kF32) {
    return Invalid(std::string("cannot quantize dtype ") + DTypeString(src_dtype) + " (BF16, F16 or F32 only)");
  }
  const uint64_t esize = DTypeBytes(src_dtype);
  auto src_bytes = CheckedProduct({static_cast<uint64_t>(n), static_cast<uint64_t>(k), esize});
  if (!src_bytes || *src_bytes != src.size()) {
    return Invalid("source holds " + std::to_string(src.size()) + " bytes, not " + Str(n) + " x " + Str(k) + " " +
                   DTypeString(src_dtype));
  }
  if (dst.size() != shape.total) {
    return Invalid("destination holds " + std::to_string(dst.size()) + " bytes, not the " + std::to_string(shape.total) +
                   " of " + Str(n) + " x " + Str(k) + " " + FormatName(format) + " group " + Str(group));
  }
  const uint64_t src_row = static_cast<uint64_t>(k) * esize;
  // About 256 KiB of input per thread at least, so that small tensors do not pay for threads.
  const int64_t min_rows = std::max<int64_t>(1, static_cast<int64_t>((256u << 10) / src_row));
  return ParallelRows(n, threads, min_rows, [&](int64_t begin, int64_t end) -> Status {
    std::vector<float> w(static_cast<size_t>(k));
    std::vector<uint8_t> codes(format == Format::kInt4 ? static_cast<size_t>(k) : 0);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t bad = QuantizeRow(src.data() + r * src_row, src_dtype, k, format, group, w.data(), codes.data(),
                                      dst.data() + static_cast<uint64_t>(r) * shape.row_bytes);
      if (bad >= 0) {
        return Invalid(std::string(std::isnan(w[static_cast<size_t>(bad)]) ? "NaN" : "infinite") + " weight at row " +
                       Str(r) + ", column " + Str(bad));
      }
    }
    return Status::Ok();
  });
}

Status Dequantize(std::span<const uint8_t> q, Format format, int64_t n, int64_t k, int64_t group, std::span<float> dst) {
  BIGPLAN_ASSIGN_OR_RETURN(Shape shape, CheckShape(format, n, k, group));
  if (q.size() != shape.total) {
    return Invalid("quantized tensor holds " + std::to_string(q.size()) + " bytes, not " + std::to_string(shape.total));
  }
  auto count = CheckedMul(static_cast<uint64_t>(n), static_cast<uint64_t>(k));
  if (!count || *count != dst.size()) {
    return Invalid("destination holds " + std::to_string(dst.size()) + " floats, not " + Str(n) + " x " + Str(k));
  }
  for (int64_t r = 0; r < n; ++r) {
    const uint8_t* row = q.data() + static_cast<uint64_t>(r) * shape.row_bytes;
    const uint8_t* records = row + shape.data_bytes;
    float* out = dst.data() + r * k;
    for (int64_t c = 0; c < k; ++c) {
      const int64_t gi = c / group;
      switch (format) {
        case Format::kFp8E4M3: out[c] = Fp8E4M3ToFloat(row[c]) * LoadF32(records + 4 * gi); break;
        case Format::kInt8: out[c] = static_cast<float>(static_cast<int8_t>(row[c])) * LoadF32(records + 4 * gi); break;
        case Format::kInt4: {
          const uint8_t byte = row[c / 2];
          const int qv = (c % 2 == 0) ? (byte >> 4) : (byte & 0xF);
          const float s = Bf16ToFloat(LoadU16(records + 4 * gi));
          const float z = Bf16ToFloat(LoadU16(records + 4 * gi + 2));
          out[c] = static_cast<float>(qv - 8) * s + z;
          break;
        }
        case Format::kNone: break;
      }
    }
  }
  return Status::Ok();
}

// ---------------------------------------------------------------------------------------------------------------

Status FromFp8(std::span<const uint8_t> fp8, const float* scale, ScaleShape scale_shape, int64_t block_rows,
               int64_t block_cols, int64_t n, int64_t k, std::span<uint8_t> dst, int64_t* group_out) {
  if (n < 0 || k <= 0) return Invalid("fp8 weight shape [" + Str(n) + ", " + Str(k) + "] is invalid");
  const bool block = block_rows != 0 || block_cols != 0;
  if (block && (block_rows <= 0 || block_cols <= 0)) {
    return Invalid("fp8 block size [" + Str(block_rows) + ", " + Str(block_cols) + "] must be two positive integers");
  }
  auto count = CheckedMul(static_cast<uint64_t>(n), static_cast<uint64_t>(k));
  if (!count || *count != fp8.size()) {
    return MakeError(ErrorCode::kMismatch, "fp8 weight holds " + std::to_string(fp8.size()) + " bytes, not " + Str(n) +
                                               " x " + Str(k));
  }
  int64_t group = k;
  if (block) {
    const int64_t want_rows = (n + block_rows - 1) / block_rows, want_cols = (k + block_cols - 1) / block_cols;
    if (scale_shape.rows != want_rows || scale_shape.cols != want_cols) {
      return MakeError(ErrorCode::kMismatch, "block scale shape [" + Str(scale_shape.rows) + ", " +
                                                 Str(scale_shape.cols) + "] does not match weight [" + Str(n) + ", " +
                                                 Str(k) + "] in blocks of [" + Str(block_rows) + ", " +
                                                 Str(block_cols) + "] (expected [" + Str(want_rows) + ", " +
                                                 Str(want_cols) + "])");
    }
    if (k % block_cols != 0) {
      return MakeError(ErrorCode::kUnsupported, "fp8 block width " + Str(block_cols) +
                                                    " does not divide the column count " + Str(k) +
                                                    " (a partial last block has no place in the row layout)");
    }
    group = block_cols;
  } else {
    const bool per_channel = scale_shape.rows == n && scale_shape.cols == 1;
    const bool per_tensor = scale_shape.rows == 1 && scale_shape.cols == 1;
    if (!per_channel && !per_tensor) {
      return MakeError(ErrorCode::kMismatch, "scale shape [" + Str(scale_shape.rows) + ", " + Str(scale_shape.cols) +
                                                 "] is neither per-channel [" + Str(n) +
                                                 ", 1] nor per-tensor [1] for weight [" + Str(n) + ", " + Str(k) + "]");
    }
  }
  BIGPLAN_ASSIGN_OR_RETURN(Shape shape, CheckShape(Format::kFp8E4M3, n, k, group));
  if (dst.size() != shape.total) {
    return Invalid("destination holds " + std::to_string(dst.size()) + " bytes, not " + std::to_string(shape.total));
  }
  const int64_t scale_count = scale_shape.rows * scale_shape.cols;
  for (int64_t i = 0; i < scale_count; ++i) {
    if (!std::isfinite(scale[i])) {
      return MakeError(ErrorCode::kCorrupt, "fp8 scale " + Str(i / scale_shape.cols) + ", " + Str(i % scale_shape.cols) +
                                                " is " + (std::isnan(scale[i]) ? "NaN" : "infinite"));
    }
  }
  const int64_t groups = k / group;
  Status st = ParallelRows(n, 0, std::max<int64_t>(1, (1 << 20) / k), [&](int64_t begin, int64_t end) -> Status {
    for (int64_t r = begin; r < end; ++r) {
      const uint8_t* in = fp8.data() + r * k;
      uint8_t* row = dst.data() + static_cast<uint64_t>(r) * shape.row_bytes;
      std::memcpy(row, in, static_cast<size_t>(k));
      bool nan = false;
      for (int64_t c = 0; c < k; ++c) nan |= (in[c] & 0x7F) == 0x7F;
      if (nan) {
        for (int64_t c = 0; c < k; ++c) {
          if ((in[c] & 0x7F) == 0x7F) {
            return MakeError(ErrorCode::kCorrupt, "fp8 weight holds a NaN code at row " + Str(r) + ", column " + Str(c));
          }
        }
      }
      uint8_t* records = row + shape.data_bytes;
      for (int64_t gi = 0; gi < groups; ++gi) {
        float s;
        if (block) {
          s = scale[(r / block_rows) * scale_shape.cols + gi];
        } else {
          s = scale_shape.rows == 1 ? scale[0] : scale[r];
        }
        StoreF32(records + 4 * gi, s);
      }
    }
    return Status::Ok();
  });
  if (!st.ok()) return st;
  if (group_out != nullptr) *group_out = group;
  return Status::Ok();
}


namespace {

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + Str(shape[i]);
  return s + "]";
}

Status CheckGptqTensor(const char* name, std::span<const uint8_t> bytes, DType dtype, const std::vector<int64_t>& shape,
                       std::initializer_list<DType> dtypes, const std::vector<int64_t>& want) {
  if (std::find(dtypes.begin(), dtypes.end(), dtype) == dtypes.end()) {
    std::string allowed;
    for (DType d : dtypes) allowed += std::string(allowed.empty() ? "" : " or ") + DTypeString(d);
    return MakeError(ErrorCode::kMismatch,
                     std::string("gptq ") + name + " has dtype " + DTypeString(dtype) + ", expected " + allowed);
  }
  if (shape != want) {
    return MakeError(ErrorCode::kMismatch,
                     std::string("gptq ") + name + " has shape " + ShapeString(shape) + ", expected " + ShapeString(want));
  }
  uint64_t count = DTypeBytes(dtype);
  for (int64_t d : want) count = SatMul(count, static_cast<uint64_t>(d));
  if (bytes.size() != count) {
    return MakeError(ErrorCode::kMismatch, std::string("gptq ") + name + " holds " + std::to_string(bytes.size()) +
                                               " bytes, not the " + std::to_string(count) + " of shape " +
                                               ShapeString(want));
  }
  return Status::Ok();
}

float LoadScale(const uint8_t* base, DType dtype, uint64_t index) {
  switch (dtype) {
    case DType::kF16: return F16ToFloat(LoadU16(base + 2 * index));
    case DType::kBF16: return Bf16ToFloat(LoadU16(base + 2 * index));
    default: return LoadF32(base + 4 * index);
  }
}

}  // namespace

Status FromGptq(const GptqTensors& t, int64_t n, int64_t k, int64_t group, bool v1_zero_offset, std::span<uint8_t> dst,
                std::vector<int32_t>* perm) {
  if (perm != nullptr) perm->clear();
  if (n <= 0 || k <= 0) return Invalid("gptq weight shape [" + Str(n) + ", " + Str(k) + "] is invalid");
  if (group == -1) group = k;
  if (group <= 0) return Invalid("gptq group size " + Str(group) + " must be positive or -1");
  if (n % 8 != 0 || k % 8 != 0) {
    return MakeError(ErrorCode::kUnsupported,
                     "gptq weight [" + Str(n) + ", " + Str(k) + "]: both dimensions must be multiples of 8");
  }
  if (k % group != 0) {
    return MakeError(ErrorCode::kUnsupported,
                     "gptq group size " + Str(group) + " does not divide the column count " + Str(k));
  }
  const int64_t groups = k / group;
  BIGPLAN_RETURN_IF_ERROR(CheckGptqTensor("qweight", t.qweight, t.qweight_dtype, t.qweight_shape, {DType::kI32},
                                          {k / 8, n}));
  BIGPLAN_RETURN_IF_ERROR(CheckGptqTensor("qzeros", t.qzeros, t.qzeros_dtype, t.qzeros_shape, {DType::kI32},
                                          {groups, n / 8}));
  BIGPLAN_RETURN_IF_ERROR(CheckGptqTensor("scales", t.scales, t.scales_dtype, t.scales_shape,
                                          {DType::kF16, DType::kBF16, DType::kF32}, {groups, n}));
  const bool has_g_idx = !t.g_idx.empty() || !t.g_idx_shape.empty();
  std::vector<int32_t> order;  // our column i is checkpoint column order[i]; empty for the identity
  if (has_g_idx) {
    BIGPLAN_RETURN_IF_ERROR(CheckGptqTensor("g_idx", t.g_idx, t.g_idx_dtype, t.g_idx_shape, {DType::kI32}, {k}));
    std::vector<int32_t> g_idx(static_cast<size_t>(k));
    std::vector<int64_t> count(static_cast<size_t>(groups), 0);
    bool trivial = true;
    for (int64_t c = 0; c < k; ++c) {
      const int32_t gi = LoadI32(t.g_idx.data() + 4 * c);
      if (gi < 0 || gi >= groups) {
        return MakeError(ErrorCode::kCorrupt, "gptq g_idx[" + Str(c) + "] = " + Str(gi) + " is outside [0, " +
                                                  Str(groups) + ")");
      }
      g_idx[static_cast<size_t>(c)] = gi;
      ++count[static_cast<size_t>(gi)];
      trivial = trivial && gi == c / group;
    }
    for (int64_t gi = 0; gi < groups; ++gi) {
      if (count[static_cast<size_t>(gi)] != group) {
        return MakeError(ErrorCode::kCorrupt, "gptq g_idx puts " + Str(count[static_cast<size_t>(gi)]) +
                                                  " columns in group " + Str(gi) + ", not the group size " +
                                                  Str(group));
      }
    }
    if (!trivial) {
      // Counting sort by group: stable.
      std::vector<int64_t> next(static_cast<size_t>(groups));
      for (int64_t gi = 0; gi < groups; ++gi) next[static_cast<size_t>(gi)] = gi * group;
      order.assign(static_cast<size_t>(k), 0);
      for (int64_t c = 0; c < k; ++c) {
        order[static_cast<size_t>(next[static_cast<size_t>(g_idx[static_cast<size_t>(c)])]++)] = static_cast<int32_t>(c);
      }
    }
  }
  BIGPLAN_ASSIGN_OR_RETURN(Shape shape, CheckShape(Format::kInt4, n, k, group));
  if (dst.size() != shape.total) {
    return Invalid("destination holds " + std::to_string(dst.size()) + " bytes, not " + std::to_string(shape.total));
  }
  const uint64_t scale_count = static_cast<uint64_t>(groups) * static_cast<uint64_t>(n);
  for (uint64_t i = 0; i < scale_count; ++i) {
    const float s = LoadScale(t.scales.data(), t.scales_dtype, i);
    if (!std::isfinite(s)) {
      return MakeError(ErrorCode::kCorrupt, "gptq scales[" + std::to_string(i / static_cast<uint64_t>(n)) + "][" +
                                                std::to_string(i % static_cast<uint64_t>(n)) + "] is " +
                                                (std::isnan(s) ? "NaN" : "infinite"));
    }
  }
  constexpr int64_t kBlock = 32;  // rows per step: 128 contiguous bytes of each qweight row
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  const int64_t zero_offset = v1_zero_offset ? 1 : 0;
  Status st = ParallelRows(blocks, 0, std::max<int64_t>(1, (int64_t{1} << 18) / k), [&](int64_t b0, int64_t b1) -> Status {
    std::vector<uint8_t> codes(order.empty() ? 0 : static_cast<size_t>(kBlock * k));
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r0 = b * kBlock, rows = std::min(kBlock, n - r0);
      if (order.empty()) {
        // Byte m of a word holds q[8j + 2m] (low nibble) and q[8j + 2m + 1] (high): swapping the nibbles of each byte
        // gives our bytes 4j..4j+3 directly.
        for (int64_t j = 0; j < k / 8; ++j) {
          const uint8_t* in = t.qweight.data() + 4 * (j * n + r0);
          for (int64_t rr = 0; rr < rows; ++rr) {
            uint32_t word;
            std::memcpy(&word, in + 4 * rr, 4);
            word = ((word & 0x0F0F0F0Fu) << 4) | ((word >> 4) & 0x0F0F0F0Fu);
            std::memcpy(dst.data() + static_cast<uint64_t>(r0 + rr) * shape.row_bytes + 4 * j, &word, 4);
          }
        }
      } else {
        // Unpack the block's codes in checkpoint column order, then write them in ours.
        for (int64_t j = 0; j < k / 8; ++j) {
          const uint8_t* in = t.qweight.data() + 4 * (j * n + r0);
          for (int64_t rr = 0; rr < rows; ++rr) {
            const uint32_t word = static_cast<uint32_t>(LoadI32(in + 4 * rr));
            uint8_t* out = codes.data() + rr * k + 8 * j;
            for (int i = 0; i < 8; ++i) out[i] = static_cast<uint8_t>((word >> (4 * i)) & 0xFu);
          }
        }
        for (int64_t rr = 0; rr < rows; ++rr) {
          const uint8_t* q = codes.data() + rr * k;
          uint8_t* row = dst.data() + static_cast<uint64_t>(r0 + rr) * shape.row_bytes;
          for (int64_t j = 0; j < k / 2; ++j) {
            row[j] = static_cast<uint8_t>((q[order[static_cast<size_t>(2 * j)]] << 4) |
                                          q[order[static_cast<size_t>(2 * j + 1)]]);
          }
        }
      }
      for (int64_t rr = 0; rr < rows; ++rr) {
        const int64_t r = r0 + rr;
        uint8_t* row = dst.data() + static_cast<uint64_t>(r) * shape.row_bytes;
        uint8_t* records = row + shape.data_bytes;
        for (int64_t gi = 0; gi < groups; ++gi) {
          const float s = LoadScale(t.scales.data(), t.scales_dtype, static_cast<uint64_t>(gi * n + r));
          const uint32_t zword = static_cast<uint32_t>(LoadI32(t.qzeros.data() + 4 * (gi * (n / 8) + r / 8)));
          const int64_t z = static_cast<int64_t>((zword >> (4 * (r % 8))) & 0xFu) + zero_offset;
          StoreU16(records + 4 * gi, FloatToBf16(s));
          StoreU16(records + 4 * gi + 2, FloatToBf16(static_cast<float>(8 - z) * s));
        }
      }
    }
    return Status::Ok();
  });
  if (!st.ok()) return st;
  if (perm != nullptr) *perm = std::move(order);
  return Status::Ok();
}

// ---------------------------------------------------------------------------------------------------------------

namespace {

Error Unsupported(const std::string& key, const nlohmann::json& value, const std::string& why) {
  return MakeError(ErrorCode::kUnsupported, "quantization_config." + key + " " + value.dump() + ": " + why);
}
Error BadType(const std::string& key, const nlohmann::json& value, const char* want) {
  return MakeError(ErrorCode::kCorrupt, "quantization_config." + key + " is a JSON " + std::string(value.type_name()) +
                                            " (" + value.dump() + "), expected " + want);
}

// The value at `key` or nullptr when absent or null.
const nlohmann::json* Get(const nlohmann::json& obj, const char* key) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

Result<int64_t> GetInt(const nlohmann::json& obj, const std::string& prefix, const char* key, int64_t fallback) {
  const nlohmann::json* v = Get(obj, key);
  if (v == nullptr) return fallback;
  if (!v->is_number_integer()) return BadType(prefix + key, *v, "an integer");
  return v->get<int64_t>();
}
Result<bool> GetBool(const nlohmann::json& obj, const std::string& prefix, const char* key, bool fallback) {
  const nlohmann::json* v = Get(obj, key);
  if (v == nullptr) return fallback;
  if (!v->is_boolean()) return BadType(prefix + key, *v, "true or false");
  return v->get<bool>();
}
Result<std::string> GetString(const nlohmann::json& obj, const std::string& prefix, const char* key,
                              const std::string& fallback) {
  const nlohmann::json* v = Get(obj, key);
  if (v == nullptr) return fallback;
  if (!v->is_string()) return BadType(prefix + key, *v, "a string");
  return v->get<std::string>();
}
Status AppendStrings(const nlohmann::json& obj, const std::string& prefix, const char* key,
                     std::vector<std::string>* out) {
  const nlohmann::json* v = Get(obj, key);
  if (v == nullptr) return Status::Ok();
  if (!v->is_array()) return BadType(prefix + key, *v, "an array of strings");
  for (const auto& e : *v) {
    if (!e.is_string()) return BadType(prefix + key, *v, "an array of strings");
    out->push_back(e.get<std::string>());
  }
  return Status::Ok();
}
// A [rows, cols] pair of positive integers.
Status GetBlock(const nlohmann::json& v, const std::string& key, int64_t* rows, int64_t* cols) {
  if (!v.is_array() || v.size() != 2 || !v[0].is_number_integer() || !v[1].is_number_integer() ||
      v[0].get<int64_t>() <= 0 || v[1].get<int64_t>() <= 0) {
    return MakeError(ErrorCode::kCorrupt,
                     "quantization_config." + key + " " + v.dump() + " is not two positive integers [rows, cols]");
  }
  *rows = v[0].get<int64_t>();
  *cols = v[1].get<int64_t>();
  return Status::Ok();
}
// A key whose presence with a non-empty value changes what the checkpoint means in a way not implemented.
Status RefuseIfSet(const nlohmann::json& obj, const std::string& prefix, const char* key, const std::string& why) {
  const nlohmann::json* v = Get(obj, key);
  if (v == nullptr || (v->is_boolean() && !v->get<bool>()) || ((v->is_object() || v->is_array()) && v->empty())) {
    return Status::Ok();
  }
  return Unsupported(prefix + key, *v, why);
}

Result<CheckpointQuant> ParseFp8(const nlohmann::json& q, CheckpointQuant out) {
  if (const nlohmann::json* b = Get(q, "weight_block_size")) {
    BIGPLAN_RETURN_IF_ERROR(GetBlock(*b, "weight_block_size", &out.block_rows, &out.block_cols));
    out.kind = CheckpointQuant::Kind::kFp8Block;
  } else {
    out.kind = CheckpointQuant::Kind::kFp8Scaled;
  }
  BIGPLAN_ASSIGN_OR_RETURN(std::string fmt, GetString(q, "", "fmt", "e4m3"));
  if (fmt != "e4m3") return Unsupported("fmt", q["fmt"], "only e4m3 fp8 weights are supported");
  BIGPLAN_RETURN_IF_ERROR(AppendStrings(q, "", "modules_to_not_convert", &out.not_quantized));
  BIGPLAN_RETURN_IF_ERROR(AppendStrings(q, "", "ignored_layers", &out.not_quantized));
  return out;
}

Result<CheckpointQuant> ParseFbgemmFp8(const nlohmann::json& q, CheckpointQuant out) {
  out.kind = CheckpointQuant::Kind::kFp8Scaled;
  BIGPLAN_RETURN_IF_ERROR(AppendStrings(q, "", "modules_to_not_convert", &out.not_quantized));
  return out;
}

Result<CheckpointQuant> ParseCompressedTensors(const nlohmann::json& q, CheckpointQuant out) {
  BIGPLAN_RETURN_IF_ERROR(RefuseIfSet(q, "", "sparsity_config", "sparse checkpoints are not supported"));
  BIGPLAN_RETURN_IF_ERROR(RefuseIfSet(q, "", "kv_cache_scheme", "quantized KV caches are not supported"));
  BIGPLAN_RETURN_IF_ERROR(RefuseIfSet(q, "", "transform_config", "weight transforms are not supported"));
  BIGPLAN_ASSIGN_OR_RETURN(std::string format, GetString(q, "", "format", ""));
  auto check_format = [](const std::string& key, const std::string& f, const nlohmann::json& v) -> Status {
    if (f == "float-quantized" || f == "naive-quantized") return Status::Ok();
    return Unsupported(key, v, "only the float-quantized and naive-quantized formats (fp8 weights) are supported");
  };
  if (const nlohmann::json* f = Get(q, "format")) BIGPLAN_RETURN_IF_ERROR(check_format("format", format, *f));
  BIGPLAN_ASSIGN_OR_RETURN(std::string status, GetString(q, "", "quantization_status", "compressed"));
  if (status != "compressed" && status != "frozen") {
    return Unsupported("quantization_status", q["quantization_status"], "only compressed or frozen checkpoints load");
  }
  const nlohmann::json* groups = Get(q, "config_groups");
  if (groups == nullptr || !groups->is_object() || groups->empty()) {
    return MakeError(ErrorCode::kCorrupt, "quantization_config.config_groups must be a non-empty object");
  }
  if (groups->size() != 1) {
    return MakeError(ErrorCode::kUnsupported, "quantization_config.config_groups has " +
                                                  std::to_string(groups->size()) +
                                                  " groups; only one quantization scheme per checkpoint is supported");
  }
  const std::string gname = groups->begin().key();
  const nlohmann::json& g = groups->begin().value();
  const std::string gp = "config_groups." + gname + ".";
  if (!g.is_object()) return BadType(gp.substr(0, gp.size() - 1), g, "an object");
  if (const nlohmann::json* f = Get(g, "format")) {
    if (!f->is_string()) return BadType(gp + "format", *f, "a string");
    BIGPLAN_RETURN_IF_ERROR(check_format(gp + "format", f->get<std::string>(), *f));
  } else if (format.empty()) {
    return MakeError(ErrorCode::kCorrupt, "quantization_config has no format");
  }
  const nlohmann::json* targets = Get(g, "targets");
  if (targets == nullptr || *targets != nlohmann::json::array({"Linear"})) {
    return Unsupported(gp + "targets", targets ? *targets : nlohmann::json(),
                       "only [\"Linear\"] (every linear layer) is supported");
  }
  const nlohmann::json* w = Get(g, "weights");
  if (w == nullptr || !w->is_object()) {
    return MakeError(ErrorCode::kCorrupt, "quantization_config." + gp + "weights must be an object");
  }
  const std::string wp = gp + "weights.";
  BIGPLAN_ASSIGN_OR_RETURN(std::string type, GetString(*w, wp, "type", ""));
  BIGPLAN_ASSIGN_OR_RETURN(int64_t bits, GetInt(*w, wp, "num_bits", 0));
  if (type != "float") return Unsupported(wp + "type", (*w)["type"], "only float (fp8) weights are supported");
  if (bits != 8) return Unsupported(wp + "num_bits", (*w)["num_bits"], "only 8-bit float weights are supported");
  BIGPLAN_RETURN_IF_ERROR(RefuseIfSet(*w, wp, "dynamic", "dynamically quantized weights are not supported"));
  BIGPLAN_RETURN_IF_ERROR(RefuseIfSet(*w, wp, "actorder", "act-order float weights are not supported"));
  BIGPLAN_ASSIGN_OR_RETURN(bool sym, GetBool(*w, wp, "symmetric", true));
  if (!sym) return Unsupported(wp + "symmetric", (*w)["symmetric"], "only symmetric fp8 weights are supported");
  BIGPLAN_ASSIGN_OR_RETURN(std::string strategy, GetString(*w, wp, "strategy", ""));
  if (strategy == "channel" || strategy == "tensor") {
    out.kind = CheckpointQuant::Kind::kFp8Scaled;
  } else if (strategy == "block") {
    const nlohmann::json* b = Get(*w, "block_structure");
    if (b == nullptr) return MakeError(ErrorCode::kCorrupt, "quantization_config." + wp + "block_structure is missing");
    BIGPLAN_RETURN_IF_ERROR(GetBlock(*b, wp + "block_structure", &out.block_rows, &out.block_cols));
    out.kind = CheckpointQuant::Kind::kFp8Block;
  } else {
    return Unsupported(wp + "strategy", Get(*w, "strategy") ? (*w)["strategy"] : nlohmann::json(),
                       "only channel, tensor and block fp8 scales are supported");
  }
  BIGPLAN_RETURN_IF_ERROR(AppendStrings(q, "", "ignore", &out.not_quantized));
  return out;
}

Result<CheckpointQuant> ParseGptq(const nlohmann::json& q, CheckpointQuant out) {
  out.kind = CheckpointQuant::Kind::kGptq;
  BIGPLAN_ASSIGN_OR_RETURN(int64_t bits, GetInt(q, "", "bits", 0));
  if (bits != 4) return Unsupported("bits", Get(q, "bits") ? q["bits"] : nlohmann::json(), "gptq: only 4-bit weights are supported");
  out.gptq.bits = 4;
  BIGPLAN_ASSIGN_OR_RETURN(out.gptq.group_size, GetInt(q, "", "group_size", 128));
  if (out.gptq.group_size == 0 || out.gptq.group_size < -1) {
    return MakeError(ErrorCode::kCorrupt,
                     "quantization_config.group_size " + Str(out.gptq.group_size) + " must be -1 or positive");
  }
  BIGPLAN_ASSIGN_OR_RETURN(out.gptq.desc_act, GetBool(q, "", "desc_act", false));
  BIGPLAN_ASSIGN_OR_RETURN(out.gptq.sym, GetBool(q, "", "sym", true));
  BIGPLAN_ASSIGN_OR_RETURN(out.gptq.lm_head, GetBool(q, "", "lm_head", false));
  BIGPLAN_ASSIGN_OR_RETURN(std::string cf, GetString(q, "", "checkpoint_format", ""));
  BIGPLAN_ASSIGN_OR_RETURN(std::string f, GetString(q, "", "format", ""));
  if (!cf.empty() && !f.empty() && cf != f) {
    return MakeError(ErrorCode::kCorrupt, "quantization_config.checkpoint_format \"" + cf +
                                              "\" and quantization_config.format \"" + f + "\" disagree");
  }
  const std::string fmt = !cf.empty() ? cf : (!f.empty() ? f : "gptq");
  if (fmt == "gptq") {
    out.gptq.v1_zero_offset = true;
  } else if (fmt == "gptq_v2") {
    out.gptq.v1_zero_offset = false;
  } else {
    return Unsupported(!cf.empty() ? "checkpoint_format" : "format", nlohmann::json(fmt),
                       "only the gptq and gptq_v2 checkpoint formats are supported");
  }
  BIGPLAN_RETURN_IF_ERROR(RefuseIfSet(q, "", "is_marlin_format", "Marlin-repacked weights are not supported"));
  BIGPLAN_RETURN_IF_ERROR(RefuseIfSet(q, "", "dynamic", "per-module quantization overrides are not supported"));
  BIGPLAN_RETURN_IF_ERROR(AppendStrings(q, "", "modules_to_not_convert", &out.not_quantized));
  return out;
}

}  // namespace

Result<CheckpointQuant> ParseQuantizationConfig(const nlohmann::json& config) {
  CheckpointQuant out;
  if (!config.is_object()) {
    return MakeError(ErrorCode::kCorrupt, std::string("config is a JSON ") + config.type_name() + ", not an object");
  }
  const nlohmann::json* q = Get(config, "quantization_config");
  const nlohmann::json* c = Get(config, "compression_config");
  if (q != nullptr && c != nullptr) {
    return MakeError(ErrorCode::kCorrupt, "config has both quantization_config and compression_config");
  }
  if (q == nullptr) q = c;
  if (q == nullptr) return out;
  if (!q->is_object()) return BadType("", *q, "an object");
  const nlohmann::json* method = Get(*q, "quant_method");
  if (method == nullptr) {
    return MakeError(ErrorCode::kUnsupported, "quantization_config without quant_method: " + q->dump());
  }
  if (!method->is_string()) return BadType("quant_method", *method, "a string");
  out.method = method->get<std::string>();
  if (out.method == "fp8") return ParseFp8(*q, std::move(out));
  if (out.method == "fbgemm_fp8") return ParseFbgemmFp8(*q, std::move(out));
  if (out.method == "compressed-tensors") return ParseCompressedTensors(*q, std::move(out));
  if (out.method == "gptq") return ParseGptq(*q, std::move(out));
  return Unsupported("quant_method", *method,
                     "supported quantized checkpoints are fp8, fbgemm_fp8, compressed-tensors fp8 and gptq 4-bit");
}

}  // namespace bigplan::quant
