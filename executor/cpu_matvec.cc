#include "executor/cpu_matvec.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>

#include "formats/dtype.h"

#if defined(__x86_64__) || defined(__i386__)
#define BIGPLAN_CPU_MATVEC_X86 1
#include <cpuid.h>
#include <immintrin.h>
#else
#define BIGPLAN_CPU_MATVEC_X86 0
#endif

namespace bigplan::cpu_matvec {
namespace {

// Bytes ahead of the current column that the kernels prefetch in each row they read.
constexpr int64_t kPrefetchBytes = 1024;
// How long an idle worker (or a caller waiting for the workers) spins before it sleeps.
constexpr auto kSpinTime = std::chrono::microseconds(50);

inline float LoadF32(const uint8_t* p) {
  float f;
  std::memcpy(&f, p, 4);
  return f;
}
inline uint16_t LoadU16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}
inline void Prefetch(const uint8_t* p) { __builtin_prefetch(p, 0, 3); }
// Prefetches kPrefetchBytes ahead of byte `pos` of a row of `row_bytes` data bytes, or, past its end, as far into
// `next` (the row the kernel reads after it at the same place in its block). A prefetch never faults, so `next` may
// lie past the matrix.
inline void PrefetchAhead(const uint8_t* row, const uint8_t* next, int64_t pos, int64_t row_bytes) {
  const int64_t a = pos + kPrefetchBytes;
  Prefetch(a < row_bytes ? row + a : next + (a - row_bytes));
}

// Bytes of a row's data before its scale records.
inline int64_t RowData(Format f, int64_t k) { return static_cast<int64_t>(quant::DataBytes(f, k)); }
inline int64_t RecordBytes(Format f) { return f == Format::kNone ? 0 : 4; }
// Bytes from a row's start to its first scale record.
inline int64_t RecordOffset(const Matrix& w) {
  return w.record_offset > 0 ? w.record_offset : RowData(w.format, w.cols);
}

// quant::RowBytes, with the kernels' own limits: a known format, at most 2^40 columns, even int4 groups.
Result<int64_t> KernelRowBytes(Format format, int64_t cols, int64_t group) {
  if (format != Format::kNone && format != Format::kFp8E4M3 && format != Format::kInt8 && format != Format::kInt4)
    return MakeError(ErrorCode::kInvalidArgument, "unknown weight format " + std::to_string(static_cast<int>(format)));
  if (cols > (int64_t{1} << 40)) return MakeError(ErrorCode::kInvalidArgument, "too many columns");
  BIGPLAN_ASSIGN_OR_RETURN(uint64_t bytes, quant::RowBytes(format, cols, group));
  if (format == Format::kInt4 && group % 2 != 0)
    return MakeError(ErrorCode::kInvalidArgument, "int4 needs an even group (group " + std::to_string(group) + ")");
  return static_cast<int64_t>(bytes);
}

struct Fp8Table {
  float v[256];
  Fp8Table() {
    for (int c = 0; c < 256; ++c) v[c] = quant::Fp8E4M3ToFloat(static_cast<uint8_t>(c));
  }
};
const Fp8Table& Fp8() {
  static const Fp8Table table;
  return table;
}

// ---- portable kernel ----

template <Format F>
void ScalarRows(const Job& job, int64_t r0, int64_t r1, int batch) {
  const Matrix& w = job.w;
  const int64_t k = w.cols;
  const int64_t group = F == Format::kNone ? k : w.group;
  const int64_t rec = RecordOffset(w);
  const float* fp8 = Fp8().v;
  constexpr int kChunk = 64;
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = w.base + r * w.row_stride;
    float acc[kMaxBatch][4] = {};
    for (int64_t g = 0; g < k / group; ++g) {
      float s = 1, z = 0;
      if constexpr (F == Format::kFp8E4M3 || F == Format::kInt8) s = LoadF32(row + rec + 4 * g);
      if constexpr (F == Format::kInt4) {
        s = Bf16ToFloat(LoadU16(row + rec + 4 * g));
        z = Bf16ToFloat(LoadU16(row + rec + 4 * g + 2));
      }
      for (int64_t j0 = g * group; j0 < (g + 1) * group; j0 += kChunk) {
        const int n = static_cast<int>(std::min<int64_t>(kChunk, (g + 1) * group - j0));
        float wv[kChunk];
        for (int t = 0; t < n; ++t) {
          const int64_t j = j0 + t;
          if constexpr (F == Format::kNone) {
            wv[t] = Bf16ToFloat(LoadU16(row + 2 * j));
          } else if constexpr (F == Format::kFp8E4M3) {
            wv[t] = fp8[row[j]] * s;
          } else if constexpr (F == Format::kInt8) {
            wv[t] = static_cast<float>(static_cast<int8_t>(row[j])) * s;
          } else {
            const uint8_t byte = row[j / 2];
            const int q = (j % 2 == 0) ? byte >> 4 : byte & 15;
            wv[t] = std::fma(static_cast<float>(q - 8), s, z);
          }
        }
        for (int b = 0; b < batch; ++b) {
          const float* xb = job.x + b * k + j0;
          int t = 0;
          for (; t + 4 <= n; t += 4)
            for (int u = 0; u < 4; ++u) acc[b][u] += wv[t + u] * xb[t + u];
          for (; t < n; ++t) acc[b][0] += wv[t] * xb[t];
        }
      }
    }
    for (int b = 0; b < batch; ++b)
      job.y[b * job.y_stride + (r - job.row_begin)] = (acc[b][0] + acc[b][1]) + (acc[b][2] + acc[b][3]);
  }
}

void ScalarKernel(const Job& job, int64_t r0, int64_t r1, int batch) {
  switch (job.w.format) {
    case Format::kNone: ScalarRows<Format::kNone>(job, r0, r1, batch); break;
    case Format::kFp8E4M3: ScalarRows<Format::kFp8E4M3>(job, r0, r1, batch); break;
    case Format::kInt8: ScalarRows<Format::kInt8>(job, r0, r1, batch); break;
    case Format::kInt4: ScalarRows<Format::kInt4>(job, r0, r1, batch); break;
  }
}

}  // namespace

// ---- AVX-512 (F, BW, DQ, VL) ----
#if BIGPLAN_CPU_MATVEC_X86
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c"))), \
                             apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")
// GCC 12's AVX-512 headers build vectors from _mm512_undefined_*(), which its flow analysis reports as unset.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
namespace avx512 {
namespace {
struct Vec {
  using V = __m512;
  static constexpr int kLanes = 16;
  static constexpr int kRows = 4;  // rows per block: 4 x 4 accumulators + 4 weights + 8 group constants
  static inline V Zero() { return _mm512_setzero_ps(); }
  static inline V Set1(float f) { return _mm512_set1_ps(f); }
  static inline V LoadX(const float* p) { return _mm512_loadu_ps(p); }
  static inline V Fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static inline V Mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static inline float Sum(V v) { return _mm512_reduce_add_ps(v); }
  static inline V Bf16(const uint8_t* p) {
    const __m512i h = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(h, 16));
  }
  static inline V I8(const uint8_t* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
  // float8 e4m3fn -> float16 is a shift: ((c & 0x7F) << 7) | ((c & 0x80) << 8) is the code's value times 2^-8 as
  // float16 (exponent 0 gives float16 subnormals of the same scaled value), and the float16 -> float32 conversion
  // is exact. So every code decodes exactly, with no table, as value * 2^-8 (the kernel folds 2^8 into the scale).
  // (c << 7) puts the sign in bit 14; adding bit 14 to itself moves it to bit 15.
  static inline V Fp8Over256(const uint8_t* p) {
    const __m256i c = _mm256_slli_epi16(_mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 7);
    const __m256i h = _mm256_add_epi16(c, _mm256_and_si256(c, _mm256_set1_epi16(0x4000)));
    return _mm512_cvtph_ps(h);
  }
  // 16 columns from 8 bytes (high nibble first): q - 8 as floats. XOR 0x88 turns each nibble into q - 8 as a 4-bit
  // two's complement number; lane i takes the dword holding column i, shifts that nibble to the top and shifts it
  // back arithmetically (one lane permute, no byte shuffles or widening).
  static inline V I4Minus8(const uint8_t* p) {
    const __m128i bytes = _mm_xor_si128(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)), _mm_set1_epi8(-0x78));
    const __m512i dwords = _mm512_permutexvar_epi32(_mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0),
                                                    _mm512_castsi128_si512(bytes));
    // Column c sits in byte (c / 2) % 4 of its dword, in the high nibble when c is even.
    const __m512i shift = _mm512_set_epi32(4, 0, 12, 8, 20, 16, 28, 24, 4, 0, 12, 8, 20, 16, 28, 24);
    return _mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_sllv_epi32(dwords, shift), 28));
  }
};
#include "executor/cpu_matvec_kernel.inc"
}  // namespace
}  // namespace avx512
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC diagnostic pop
#pragma GCC pop_options
#endif

// ---- AVX2 + FMA ----
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif
namespace avx2 {
namespace {
struct Vec {
  using V = __m256;
  static constexpr int kLanes = 8;
  static constexpr int kRows = 2;  // 16 registers: 2 x 4 accumulators + 2 weights + 4 group constants
  static inline V Zero() { return _mm256_setzero_ps(); }
  static inline V Set1(float f) { return _mm256_set1_ps(f); }
  static inline V LoadX(const float* p) { return _mm256_loadu_ps(p); }
  static inline V Fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static inline V Mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static inline float Sum(V v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static inline V Bf16(const uint8_t* p) {
    const __m256i h = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(h, 16));
  }
  static inline V I8(const uint8_t* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
  static inline V Fp8Over256(const uint8_t* p) {  // as the AVX-512 version
    const __m128i c = _mm_slli_epi16(_mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))), 7);
    return _mm256_cvtph_ps(_mm_add_epi16(c, _mm_and_si128(c, _mm_set1_epi16(0x4000))));
  }
  // As the AVX-512 version: 8 columns from one dword, broadcast (a load, no shuffle) and shifted per lane.
  static inline V I4Minus8(const uint8_t* p) {
    uint32_t four;
    std::memcpy(&four, p, 4);
    const __m256i dwords = _mm256_set1_epi32(static_cast<int32_t>(four ^ 0x88888888u));
    const __m256i shift = _mm256_set_epi32(4, 0, 12, 8, 20, 16, 28, 24);
    return _mm256_cvtepi32_ps(_mm256_srai_epi32(_mm256_sllv_epi32(dwords, shift), 28));
  }
};
#include "executor/cpu_matvec_kernel.inc"
}  // namespace
}  // namespace avx2
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif  // BIGPLAN_CPU_MATVEC_X86

namespace {

// The kernel a job runs under the pool's instruction set: quantized groups must hold whole vectors.
Isa KernelIsa(const Matrix& w, Isa isa) {
  const bool bf16 = w.format == Format::kNone;
  if (isa == Isa::kAvx512 && (bf16 || w.group % 16 == 0)) return Isa::kAvx512;
  if (isa >= Isa::kAvx2 && (bf16 || w.group % 8 == 0)) return Isa::kAvx2;
  return Isa::kScalar;
}

void RunKernel(const Job& job, int64_t r0, int64_t r1, int batch, Isa isa) {
  switch (KernelIsa(job.w, isa)) {
#if BIGPLAN_CPU_MATVEC_X86
    case Isa::kAvx512: avx512::Rows(job, r0, r1, batch); return;
    case Isa::kAvx2: avx2::Rows(job, r0, r1, batch); return;
#endif
    default: ScalarKernel(job, r0, r1, batch); return;
  }
}

bool MulOverflows(int64_t a, int64_t b) {
  int64_t out;
  return __builtin_mul_overflow(a, b, &out);
}

std::string Str(int64_t v) { return std::to_string(v); }

}  // namespace

const char* RowsName(Format format) { return format == Format::kNone ? "bf16" : quant::FormatName(format); }

const char* IsaName(Isa isa) {
  switch (isa) {
    case Isa::kAuto: return "auto";
    case Isa::kScalar: return "scalar";
    case Isa::kAvx2: return "avx2";
    case Isa::kAvx512: return "avx512";
  }
  return "unknown";
}

Isa DetectIsa() {
#if BIGPLAN_CPU_MATVEC_X86
  __builtin_cpu_init();
  // F16C (float16 conversions) by CPUID leaf 1, ECX bit 29: Clang 14's __builtin_cpu_supports does not name it.
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  const bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & (1u << 29)) != 0;
  if (f16c && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
    return Isa::kAvx512;
  if (f16c && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2;
#endif
  return Isa::kScalar;
}

Status Validate(const Matrix& w) {
  // The message prefix is built only on failure, so a passing check does not allocate.
  auto what = [&] { return std::string(RowsName(w.format)) + " matrix " + Str(w.rows) + "x" + Str(w.cols); };
  Result<int64_t> bytes = KernelRowBytes(w.format, w.cols, w.group);
  if (!bytes.ok()) return WithContext(bytes.take_error(), what());
  if (w.rows < 0) return MakeError(ErrorCode::kInvalidArgument, what() + ": negative row count");
  if (w.row_stride < *bytes)
    return MakeError(ErrorCode::kInvalidArgument, what() + ": row stride " + Str(w.row_stride) +
                                                      " is below the row's " + Str(*bytes) + " bytes");
  if (w.record_offset != 0) {
    const int64_t data = RowData(w.format, w.cols);
    const int64_t records = w.format == Format::kNone ? 0 : 4 * (w.cols / w.group);
    if (w.format == Format::kNone || w.record_offset < data || w.record_offset > w.row_stride - records)
      return MakeError(ErrorCode::kInvalidArgument, what() + ": records at byte " + Str(w.record_offset) +
                                                        " of rows of " + Str(w.row_stride) + " bytes (data " +
                                                        Str(data) + ", records " + Str(records) + ")");
  }
  if (w.rows > 0 && w.base == nullptr) return MakeError(ErrorCode::kInvalidArgument, what() + ": null base");
  if (MulOverflows(w.rows, w.row_stride)) return MakeError(ErrorCode::kInvalidArgument, what() + ": size overflows");
  return Status::Ok();
}


// ---- the pool ----

MatVecPool::MatVecPool(int threads, Isa isa) {
  if (threads <= 0) threads = static_cast<int>(std::thread::hardware_concurrency());
  threads_ = std::max(1, threads);
  const Isa best = DetectIsa();
  isa_ = (isa == Isa::kAuto || isa > best) ? best : isa;
  (void)Fp8();  // the portable kernel's table, built before any call
  workers_.reserve(threads_ - 1);
  for (int i = 1; i < threads_; ++i) workers_.emplace_back([this] { WorkerLoop(); });
}

MatVecPool::~MatVecPool() {
  stop_.store(true);
  generation_.fetch_add(1, std::memory_order_acq_rel);
  generation_.notify_all();
  for (auto& t : workers_) t.join();
}

void MatVecPool::Work() {
  uint64_t c = claims_.load(std::memory_order_acquire);
  for (;;) {
    const uint64_t count = (c >> 16) & 0xFFFF, next = c & 0xFFFF;
    if (next >= count) return;
    if (!claims_.compare_exchange_weak(c, c + 1, std::memory_order_acq_rel, std::memory_order_acquire)) continue;
    const Piece& p = pieces_[next];
    RunKernel(jobs_[p.job], p.row_begin, p.row_end, batch_, isa_);
    if (done_pieces_.fetch_add(1, std::memory_order_acq_rel) + 1 == static_cast<int>(count))
      done_pieces_.notify_all();
    c = claims_.load(std::memory_order_acquire);
  }
}

void MatVecPool::WorkerLoop() {
  uint32_t seen = 0;  // the constructor's value: a bump before this thread started still wakes it
  for (;;) {
    uint32_t g;
    const auto until = std::chrono::steady_clock::now() + kSpinTime;
    for (int spins = 0; (g = generation_.load(std::memory_order_acquire)) == seen; ++spins) {
      if ((spins & 63) == 63 && std::chrono::steady_clock::now() > until) {
        generation_.wait(seen, std::memory_order_acquire);
      } else {
#if BIGPLAN_CPU_MATVEC_X86
        _mm_pause();
#endif
      }
    }
    seen = g;
    if (stop_.load(std::memory_order_acquire)) return;
    Work();
  }
}

Status MatVecPool::Run(std::span<const Job> jobs, int batch) {
  if (batch < 1 || batch > kMaxBatch)
    return MakeError(ErrorCode::kInvalidArgument,
                     "cpu_matvec: batch " + Str(batch) + " is outside 1.." + Str(kMaxBatch));
  if (jobs.size() > static_cast<size_t>(kMaxJobs))
    return MakeError(ErrorCode::kInvalidArgument,
                     "cpu_matvec: " + std::to_string(jobs.size()) + " jobs, more than " + Str(kMaxJobs));
  int64_t total_bytes = 0;
  for (size_t i = 0; i < jobs.size(); ++i) {
    const Job& j = jobs[i];
    auto what = [&] { return "cpu_matvec job " + std::to_string(i); };  // built only on failure
    if (Status s = Validate(j.w); !s.ok()) return WithContext(s.take_error(), what());
    if (j.row_begin < 0 || j.row_end < j.row_begin || j.row_end > j.w.rows)
      return MakeError(ErrorCode::kInvalidArgument, what() + ": rows [" + Str(j.row_begin) + ", " + Str(j.row_end) +
                                                        ") are outside the matrix's " + Str(j.w.rows));
    const int64_t n = j.row_end - j.row_begin;
    if (n == 0) continue;
    if (j.x == nullptr || j.y == nullptr) return MakeError(ErrorCode::kInvalidArgument, what() + ": null x or y");
    if (j.y_stride < n || MulOverflows(j.y_stride, batch) || MulOverflows(j.w.cols, batch))
      return MakeError(ErrorCode::kInvalidArgument,
                       what() + ": y stride " + Str(j.y_stride) + " is below its " + Str(n) + " rows");
    total_bytes += n * KernelRowBytes(j.w.format, j.w.cols, j.w.group).value();
  }
  if (in_run_.exchange(true, std::memory_order_acquire))
    return MakeError(ErrorCode::kBusy, "cpu_matvec: another thread is running this pool");

  // Pieces: about 16 per thread over all jobs, at least 64 KiB each (whole jobs when single-threaded), rows in
  // multiples of 4 so the kernels' row blocks stay whole; fewer, larger pieces if they would not fit in 16 bits.
  int64_t piece_bytes = threads_ == 1 ? std::numeric_limits<int64_t>::max()
                                      : std::max<int64_t>(int64_t{64} << 10, total_bytes / (int64_t{16} * threads_));
  for (;;) {
    pieces_.clear();
    for (size_t i = 0; i < jobs.size(); ++i) {
      const Job& j = jobs[i];
      if (j.row_end == j.row_begin) continue;
      const int64_t row_bytes = KernelRowBytes(j.w.format, j.w.cols, j.w.group).value();
      int64_t rows_per_piece = std::max<int64_t>(1, piece_bytes / row_bytes);
      if (rows_per_piece > 4) rows_per_piece -= rows_per_piece % 4;
      for (int64_t r = j.row_begin; r < j.row_end; r += rows_per_piece)
        pieces_.push_back(Piece{static_cast<int32_t>(i), r, std::min(j.row_end, r + rows_per_piece)});
    }
    if (pieces_.size() <= 0xFFFF) break;
    piece_bytes *= 2;  // at most kMaxJobs + total / piece_bytes pieces
  }
  jobs_ = jobs;
  batch_ = batch;
  const int count = static_cast<int>(pieces_.size());
  done_pieces_.store(0, std::memory_order_relaxed);
  const uint64_t call = (claims_.load(std::memory_order_relaxed) >> 32) + 1;
  claims_.store((call << 32) | (static_cast<uint64_t>(count) << 16), std::memory_order_release);

  if (!workers_.empty() && count > 1) {
    generation_.fetch_add(1, std::memory_order_acq_rel);
    generation_.notify_all();
  }
  Work();
  const auto until = std::chrono::steady_clock::now() + kSpinTime;
  int done;
  for (int spins = 0; (done = done_pieces_.load(std::memory_order_acquire)) != count; ++spins) {
    if ((spins & 63) == 63 && std::chrono::steady_clock::now() > until) {
      done_pieces_.wait(done, std::memory_order_acquire);
    } else {
#if BIGPLAN_CPU_MATVEC_X86
      _mm_pause();
#endif
    }
  }
  jobs_ = {};
  in_run_.store(false, std::memory_order_release);
  return Status::Ok();
}

}  // namespace bigplan::cpu_matvec
