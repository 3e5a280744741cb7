// Fused CUDA kernels (executor/fused_cuda.h says what each computes).
#include "executor/fused_cuda.h"
#include "executor/pdl.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <algorithm>
#include <cmath>
#include <mutex>
#include <type_traits>
#include <vector>

namespace bigplan::fused {
namespace {

// ---- element conversions: every Round is what a PyTorch op of the execution dtype stores ----

template <typename T>
struct Cvt;
template <>
struct Cvt<__nv_bfloat16> {
  static __device__ __forceinline__ float F(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __device__ __forceinline__ __nv_bfloat16 T(float v) { return __float2bfloat16_rn(v); }
};
template <>
struct Cvt<__half> {
  static __device__ __forceinline__ float F(__half v) { return __half2float(v); }
  static __device__ __forceinline__ __half T(float v) { return __float2half_rn(v); }
};
template <>
struct Cvt<float> {  // (float32 execution: no rounding)
  static __device__ __forceinline__ float F(float v) { return v; }
  static __device__ __forceinline__ float T(float v) { return v; }
};

template <typename T>
__device__ __forceinline__ float F(T v) {
  return Cvt<T>::F(v);
}
template <typename T>
__device__ __forceinline__ T ToT(float v) {
  return Cvt<T>::T(v);
}
template <typename T>
__device__ __forceinline__ float Round(float v) {
  return F<T>(ToT<T>(v));
}

__device__ __forceinline__ float WarpSum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum over a block of up to 1024 threads; every thread gets the result. `scratch` holds 32 floats.
__device__ __forceinline__ float BlockSum(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
  v = WarpSum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float s = lane < warps ? scratch[lane] : 0.f;
  return WarpSum(s);
}

// Each lane's best (v, idx) of a[i] for i = first, first + step, ... < n (ties: the lower index; idx = n when none
// beats -inf), then the best over the warp, which every lane gets.
__device__ __forceinline__ void WarpArgMax(const float* a, int first, int step, int n, float* v_out, int* idx_out) {
  float v = -INFINITY;
  int idx = n;
  for (int i = first; i < n; i += step) {
    if (a[i] > v || (a[i] == v && i < idx)) {
      v = a[i];
      idx = i;
    }
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, v, o);
    const int oi = __shfl_xor_sync(0xffffffffu, idx, o);
    if (ov > v || (ov == v && oi < idx)) {
      v = ov;
      idx = oi;
    }
  }
  *v_out = v;
  *idx_out = idx;
}

__device__ __forceinline__ int64_t PosOf(const Positions& at, int64_t b) {
  return at.pos_dev != nullptr ? at.pos_dev[at.pos_per_row ? b : 0] : at.pos_host;
}
__device__ __forceinline__ int64_t RowOf(const Positions& at, int64_t b) {
  return at.rows_dev != nullptr ? at.rows_dev[b] : b;
}

// ---- Gemv: each warp computes one unit of R weight rows (R = 2 for two rows of x, so each x load serves both
// rows, and for the paired outputs), with 16-byte loads, four weight loads in flight per lane ----

constexpr int kGemvWarps = 8;

template <typename T, int M, int R>
__device__ __forceinline__ void GemvAccumulate(const uint4 (&wv)[R], const T* __restrict__ x, int64_t x_stride,
                                               int64_t c, float (&acc)[M][R]) {
  float wf[R][8];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const T* wp = reinterpret_cast<const T*>(&wv[r]);
#pragma unroll
    for (int i = 0; i < 8; ++i) wf[r][i] = F<T>(wp[i]);
  }
#pragma unroll
  for (int m = 0; m < M; ++m) {
    const uint4 xv = *reinterpret_cast<const uint4*>(x + m * x_stride + c);
    const T* xp = reinterpret_cast<const T*>(&xv);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const float xf = F<T>(xp[i]);
#pragma unroll
      for (int r = 0; r < R; ++r) acc[m][r] = fmaf(wf[r][i], xf, acc[m][r]);
    }
  }
}

// The block size RmsNorm launches for rows of `cols` elements on its vector path (LaunchRmsNorm).
__host__ __device__ __forceinline__ int64_t RmsNormBlock(int64_t cols) {
  const int64_t t = ((cols / 8 + 31) / 32) * 32;
  return t < 32 ? 32 : t > 1024 ? 1024 : t;
}

// rsqrt(mean(x^2) + eps) of one row x [cols] (cols % 8 == 0, 16-byte aligned), summed in exactly the order
// RmsNormKernel<T, true> sums it with RmsNormBlock(cols) threads, by a block of any whole number of warps: each warp
// takes that kernel's warps w, w + warps, ... (each lane that warp's lane), so the result is the same float.
// `scratch` holds 32 floats; every thread of the block must call it.
template <typename T>
__device__ __forceinline__ float RmsScaleAsNormKernel(const T* __restrict__ xr, int64_t cols, float eps,
                                                      float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  const int64_t vblock = RmsNormBlock(cols);
  const int vwarps = static_cast<int>(vblock / 32);
  __syncthreads();  // scratch may still be read by a previous call
  for (int vw = warp; vw < vwarps; vw += warps) {
    float ss = 0.f;
    for (int64_t i = (vw * 32 + lane) * 8; i < cols; i += vblock * 8) {
      const uint4 v = *reinterpret_cast<const uint4*>(xr + i);
      const T* p = reinterpret_cast<const T*>(&v);
#pragma unroll
      for (int j = 0; j < 8; ++j) ss = fmaf(F<T>(p[j]), F<T>(p[j]), ss);
    }
    ss = WarpSum(ss);
    if (lane == 0) scratch[vw] = ss;
  }
  __syncthreads();
  const float s = lane < vwarps ? scratch[lane] : 0.f;
  return rsqrtf(WarpSum(s) / static_cast<float>(cols) + eps);
}

// out[i] = round(w[i] * round(x[i] * r)) for i < cols (cols % 8 == 0, 16-byte aligned rows), 8 elements a thread
// at a time, the block's threads striding over the row: RMSNorm's output once its scale r is known.
template <typename T>
__device__ __forceinline__ void WriteNormRow(const T* __restrict__ xr, const T* __restrict__ w, float r, int64_t cols,
                                             T* __restrict__ out) {
  for (int64_t i = threadIdx.x * 8; i < cols; i += blockDim.x * 8) {
    const uint4 v = *reinterpret_cast<const uint4*>(xr + i);
    const uint4 wv = *reinterpret_cast<const uint4*>(w + i);
    const T* p = reinterpret_cast<const T*>(&v);
    const T* wp = reinterpret_cast<const T*>(&wv);
    uint4 o;
    T* op = reinterpret_cast<T*>(&o);
#pragma unroll
    for (int j = 0; j < 8; ++j) op[j] = ToT<T>(F<T>(wp[j]) * Round<T>(F<T>(p[j]) * r));
    *reinterpret_cast<uint4*>(out + i) = o;
  }
}

// The weight rows of unit `unit`: R consecutive rows (kRows); gate row j and up row inter + j (kSiluPairs, j =
// unit); element i and i + head_dim / 2 of a head's rows (kRope, unit = head x head_dim / 2 + i).
template <GemvOut kOut, int R>
__device__ __forceinline__ void GemvRowsOf(const GemvArgs& a, int64_t unit, int64_t (&rows)[R]) {
  if constexpr (kOut == GemvOut::kRows) {
#pragma unroll
    for (int r = 0; r < R; ++r) rows[r] = unit * R + r;
  } else if constexpr (kOut == GemvOut::kSiluPairs) {
    rows[0] = unit;
    rows[1] = unit + a.n / 2;
  } else {
    const int64_t half = a.rope.head_dim / 2;
    const int64_t head = unit / half;
    rows[0] = head * a.rope.head_dim + (unit - head * half);
    rows[1] = rows[0] + half;
  }
}

// The kRope epilogue for token `t`: x0, x1 (the rounded products of elements i and i + half of a q, k or v head)
// rotated as RopeKvWrite rotates them (v: as they are) and written where it writes them.
template <typename T>
__device__ __forceinline__ void GemvRopeStore(const RopeKvArgs& a, int64_t t, int64_t unit, float x0, float x1) {
  const int64_t D = a.head_dim, half = D / 2;
  const int64_t b = t / a.seq, s = t - b * a.seq;
  const int64_t pos = PosOf(a.at, b) + s;
  if (pos < 0 || pos >= a.max_seq || pos >= a.table_rows) return;
  const int64_t head = unit / half, i = unit - head * half;
  const int kind = head < a.heads ? 0 : head < a.heads + a.kv_heads ? 1 : 2;
  const int64_t h = kind == 0 ? head : kind == 1 ? head - a.heads : head - a.heads - a.kv_heads;
  T* dst = kind == 0 ? static_cast<T*>(a.q_out) + (t * a.heads + h) * D
                     : static_cast<T*>(kind == 1 ? a.k_cache : a.v_cache) +
                           ((RowOf(a.at, b) * a.kv_heads + h) * a.max_seq + pos) * D;
  if (kind == 2) {
    dst[i] = ToT<T>(x0);
    dst[i + half] = ToT<T>(x1);
    return;
  }
  const T* cs = static_cast<const T*>(a.cos) + pos * D;
  const T* sn = static_cast<const T*>(a.sin) + pos * D;
  dst[i] = ToT<T>(Round<T>(x0 * F<T>(cs[i])) + Round<T>(-x1 * F<T>(sn[i])));
  dst[i + half] = ToT<T>(Round<T>(x1 * F<T>(cs[i + half])) + Round<T>(x0 * F<T>(sn[i + half])));
}

// One unit of GemvKernel: its weight rows' products with x (x_stride apart for M rows), then the epilogue. kPeeled:
// `first` holds the unit's first U steps of weights, loaded already.
template <typename T, int M, int R, GemvOut kOut, bool kPeeled>
__device__ __forceinline__ void GemvUnit(const GemvArgs& a, int64_t unit, const T* x, int64_t x_stride,
                                         const uint4 (&first)[4 / R][R]) {
  constexpr int U = 4 / R;
  constexpr int64_t kStep = 32 * 8;
  const int lane = threadIdx.x & 31;
  const int64_t n = a.n, k = a.k;
  const T* __restrict__ w = static_cast<const T*>(a.w);
  int64_t rows[R];
  GemvRowsOf<kOut, R>(a, unit, rows);
  const T* wr[R];
#pragma unroll
  for (int r = 0; r < R; ++r) wr[r] = w + (rows[r] < n ? rows[r] : rows[0]) * k;  // past the end: rows[0], unused
  float acc[M][R];
#pragma unroll
  for (int m = 0; m < M; ++m) {
#pragma unroll
    for (int r = 0; r < R; ++r) acc[m][r] = 0.f;
  }
  int64_t c = lane * 8;
  if constexpr (kPeeled) {
#pragma unroll
    for (int u = 0; u < U; ++u) GemvAccumulate<T, M, R>(first[u], x, x_stride, c + u * kStep, acc);
    c += U * kStep;
  }
  for (; c + (U - 1) * kStep < k; c += U * kStep) {
    uint4 wv[U][R];
#pragma unroll
    for (int u = 0; u < U; ++u) {
#pragma unroll
      for (int r = 0; r < R; ++r) wv[u][r] = __ldg(reinterpret_cast<const uint4*>(wr[r] + c + u * kStep));
    }
#pragma unroll
    for (int u = 0; u < U; ++u) GemvAccumulate<T, M, R>(wv[u], x, x_stride, c + u * kStep, acc);
  }
  for (; c < k; c += kStep) {
    uint4 wv[R];
#pragma unroll
    for (int r = 0; r < R; ++r) wv[r] = __ldg(reinterpret_cast<const uint4*>(wr[r] + c));
    GemvAccumulate<T, M, R>(wv, x, x_stride, c, acc);
  }
  float sum[M][R];
#pragma unroll
  for (int m = 0; m < M; ++m) {
#pragma unroll
    for (int r = 0; r < R; ++r) sum[m][r] = WarpSum(acc[m][r]);
  }
  if (lane != 0) return;
  const T* bias = static_cast<const T*>(a.bias);
  T* y = static_cast<T*>(a.y);
#pragma unroll
  for (int m = 0; m < M; ++m) {
    if constexpr (kOut == GemvOut::kRows) {
      const T* residual = static_cast<const T*>(a.residual);
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const int64_t row = rows[r];
        if (row < n) {
          float o = bias != nullptr ? sum[m][r] + F<T>(bias[row]) : sum[m][r];
          if (residual != nullptr) o = Round<T>(o) + F<T>(residual[m * a.residual_stride + row]);
          y[m * a.y_stride + row] = ToT<T>(o);
        }
      }
    } else {
      // Each product rounded as the plain product stores it (bias added first).
      const float x0 = Round<T>(bias != nullptr ? sum[m][0] + F<T>(bias[rows[0]]) : sum[m][0]);
      const float x1 = Round<T>(bias != nullptr ? sum[m][1] + F<T>(bias[rows[1]]) : sum[m][1]);
      if constexpr (kOut == GemvOut::kSiluPairs) {
        y[m * a.y_stride + unit] = ToT<T>(Round<T>(x0 / (1.f + __expf(-x0))) * x1);  // as SiluMulKernel
      } else {
        GemvRopeStore<T>(a.rope, m, unit, x0, x1);
      }
    }
  }
}

// kNorm: the block first stages RMSNorm(x) * norm_w of its M rows in shared memory (as RmsNorm computes them) and
// reads x there; its grid is capped at what the device holds at once, each warp taking units unit0, unit0 + the
// grid's warps, ..., so the staging is paid once per resident block rather than once per row group.
template <typename T, int M, int R, bool kNorm, GemvOut kOut>
__device__ __forceinline__ void GemvBody(const GemvArgs& a) {
  extern __shared__ __align__(16) unsigned char gemv_smem[];
  constexpr int U = 4 / R;  // unrolled steps: U x R weight loads in flight
  const int lane = threadIdx.x & 31;
  const int64_t n = a.n, k = a.k;
  const int64_t units = kOut == GemvOut::kRows ? (n + R - 1) / R : n / 2;
  const int64_t unit0 = static_cast<int64_t>(blockIdx.x) * kGemvWarps + (threadIdx.x >> 5);
  const int64_t unit_step = static_cast<int64_t>(gridDim.x) * kGemvWarps;
  if (!kNorm && unit0 >= units) return;
  const T* __restrict__ w = static_cast<const T*>(a.w);
  constexpr int64_t kStep = 32 * 8;  // elements a warp reads per 16-byte load per lane
  // The first unit's first step reads weights only: its loads are issued before waiting for the kernels before this
  // one (executor/pdl.cuh), so a product launched while the previous op still runs starts with its loads in flight.
  const bool peeled = unit0 < units && lane * 8 + (U - 1) * kStep < k;
  uint4 first[U][R];
  if (peeled) {
    int64_t rows[R];
    GemvRowsOf<kOut, R>(a, unit0, rows);
    const T* wr[R];
#pragma unroll
    for (int r = 0; r < R; ++r) wr[r] = w + (rows[r] < n ? rows[r] : rows[0]) * k;
#pragma unroll
    for (int u = 0; u < U; ++u) {
#pragma unroll
      for (int r = 0; r < R; ++r) first[u][r] = __ldg(reinterpret_cast<const uint4*>(wr[r] + lane * 8 + u * kStep));
    }
  }
  pdl::PdlBegin();
  const T* x = static_cast<const T*>(a.x);
  int64_t x_stride = a.x_stride;
  if constexpr (kNorm) {
    T* staged = reinterpret_cast<T*>(gemv_smem);
    float* scratch = reinterpret_cast<float*>(gemv_smem + M * k * sizeof(T));
    const T* nw = static_cast<const T*>(a.norm_w);
#pragma unroll
    for (int m = 0; m < M; ++m) {
      const T* xr = x + m * x_stride;
      WriteNormRow<T>(xr, nw, RmsScaleAsNormKernel<T>(xr, k, a.eps, scratch), k, staged + m * k);
    }
    __syncthreads();
    if (a.norm_out != nullptr && blockIdx.x == 0) {  // the normed rows for the kernels after this one
      for (int64_t i = threadIdx.x * 8; i < M * k; i += blockDim.x * 8) {
        *reinterpret_cast<uint4*>(static_cast<T*>(a.norm_out) + i) = *reinterpret_cast<const uint4*>(staged + i);
      }
    }
    x = staged;
    x_stride = k;
  }
  if (unit0 >= units) return;
  if (peeled) {
    GemvUnit<T, M, R, kOut, true>(a, unit0, x, x_stride, first);
  } else {
    GemvUnit<T, M, R, kOut, false>(a, unit0, x, x_stride, first);
  }
  if constexpr (kNorm) {  // (other grids give every warp one unit)
    for (int64_t unit = unit0 + unit_step; unit < units; unit += unit_step) {
      GemvUnit<T, M, R, kOut, false>(a, unit, x, x_stride, first);
    }
  }
}

template <typename T, int M, int R, bool kNorm, GemvOut kOut>
__global__ void __launch_bounds__(kGemvWarps * 32) GemvKernel(const GemvArgs a) {
  GemvBody<T, M, R, false, kOut>(a);
}
// (at most 85 registers a thread: three blocks a multiprocessor, the grid's cap)
template <typename T, int M, int R, bool kNorm, GemvOut kOut>
__global__ void __launch_bounds__(kGemvWarps * 32, 3) GemvNormKernel(const GemvArgs a) {
  GemvBody<T, M, R, true, kOut>(a);
}

// The blocks of a GemvNormKernel the current device holds at once with `smem` bytes each (cached per
// device and size).
template <typename Kernel>
int64_t ResidentBlocks(Kernel kernel, size_t smem) {
  struct Entry {
    int device;
    size_t smem;
    int64_t blocks;
  };
  static std::mutex mu;
  static std::vector<Entry> cache;
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return 0;
  std::lock_guard<std::mutex> lock(mu);
  for (const Entry& e : cache) {
    if (e.device == device && e.smem == smem) return e.blocks;
  }
  int per_sm = 0, sms = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kGemvWarps * 32, smem) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  const int64_t blocks = static_cast<int64_t>(std::max(1, per_sm)) * sms;
  cache.push_back({device, smem, blocks});
  return blocks;
}

template <typename T, int M, int R, bool kNorm, GemvOut kOut>
cudaError_t LaunchGemvKernel(const GemvArgs& a, cudaStream_t stream) {
  const int64_t units = kOut == GemvOut::kRows ? (a.n + R - 1) / R : a.n / 2;
  int64_t blocks = (units + kGemvWarps - 1) / kGemvWarps;
  const size_t smem = kNorm ? GemvNormSmemBytes(M, a.k, sizeof(T)) : 0;
  if constexpr (kNorm) {
    // At most the resident blocks, every warp with the same number of units (but the last ones).
    const int64_t resident = ResidentBlocks(GemvNormKernel<T, M, R, kNorm, kOut>, smem);
    if (resident > 0 && blocks > resident) {
      const int64_t per_warp = (units + resident * kGemvWarps - 1) / (resident * kGemvWarps);
      blocks = (units + per_warp * kGemvWarps - 1) / (per_warp * kGemvWarps);
    }
    return pdl::LaunchDependentSmem(GemvNormKernel<T, M, R, kNorm, kOut>, dim3(static_cast<unsigned>(blocks)),
                                    dim3(kGemvWarps * 32), smem, stream, a);
  } else {
    return pdl::LaunchDependentSmem(GemvKernel<T, M, R, kNorm, kOut>, dim3(static_cast<unsigned>(blocks)),
                                    dim3(kGemvWarps * 32), smem, stream, a);
  }
}

template <typename T, int M, bool kNorm>
cudaError_t LaunchGemvOut(const GemvArgs& a, cudaStream_t stream) {
  switch (a.out) {
    case GemvOut::kRows: return LaunchGemvKernel<T, M, M, kNorm, GemvOut::kRows>(a, stream);
    case GemvOut::kSiluPairs: return LaunchGemvKernel<T, M, 2, kNorm, GemvOut::kSiluPairs>(a, stream);
    case GemvOut::kRope: return LaunchGemvKernel<T, M, 2, kNorm, GemvOut::kRope>(a, stream);
  }
  return cudaErrorInvalidValue;
}

template <typename T>
cudaError_t LaunchGemv(const GemvArgs& a, cudaStream_t stream) {
  const bool norm = a.norm_w != nullptr;
  if (a.m == 1) return norm ? LaunchGemvOut<T, 1, true>(a, stream) : LaunchGemvOut<T, 1, false>(a, stream);
  return norm ? LaunchGemvOut<T, 2, true>(a, stream) : LaunchGemvOut<T, 2, false>(a, stream);
}

// ---- QuantGemv: per-row-scaled fp8/int8 weights; each warp takes kQuantRows rows, each lane 4 values of each at a
// time (4-byte loads: a row of k values and its scale is not 16-byte aligned), kQuantUnroll steps in flight ----

constexpr int kQuantWarps = 8, kQuantRows = 2, kQuantUnroll = 4;

__device__ __forceinline__ void Decode4(uint32_t v, bool fp8, float (&out)[4]) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const uint8_t b = static_cast<uint8_t>(v >> (8 * i));
    if (fp8) {
      __nv_fp8_e4m3 f;
      f.__x = b;
      out[i] = static_cast<float>(f);
    } else {
      out[i] = static_cast<float>(static_cast<int8_t>(b));
    }
  }
}

// The end of a QuantGemv warp's rows: each sum over the warp, then lane 0 stores y[m, row] = T(out(row, sum)) for its
// rows within n (y: ys[blockIdx.y] when batched).
template <typename T, int M, typename Out>
__device__ __forceinline__ void StoreQuantRows(const QuantGemvArgs& a, int64_t row0, float (&acc)[M][kQuantRows],
                                               Out out) {
#pragma unroll
  for (int m = 0; m < M; ++m) {
#pragma unroll
    for (int r = 0; r < kQuantRows; ++r) acc[m][r] = WarpSum(acc[m][r]);
  }
  if ((threadIdx.x & 31) != 0) return;
  T* y = static_cast<T*>(a.batch > 0 ? a.ys[blockIdx.y] : a.y);
#pragma unroll
  for (int r = 0; r < kQuantRows; ++r) {
    const int64_t row = row0 + r;
    if (row >= a.n) break;
#pragma unroll
    for (int m = 0; m < M; ++m) y[m * a.n + row] = ToT<T>(out(row, acc[m][r]));
  }
}

template <typename T, int M>
__global__ void __launch_bounds__(kQuantWarps * 32) QuantGemvKernel(const QuantGemvArgs a) {
  const int lane = threadIdx.x & 31;
  const int64_t row0 = (static_cast<int64_t>(blockIdx.x) * kQuantWarps + (threadIdx.x >> 5)) * kQuantRows;
  if (row0 >= a.n) return;
  const bool batched = a.batch > 0;
  const uint8_t* w = static_cast<const uint8_t*>(batched ? a.ws[blockIdx.y] : a.w);
  const uint32_t* wr[kQuantRows];
#pragma unroll
  for (int r = 0; r < kQuantRows; ++r) {
    const int64_t row = row0 + r < a.n ? row0 + r : row0;  // past the end: row0 again, unused
    wr[r] = reinterpret_cast<const uint32_t*>(w + row * a.row_bytes);
  }
  const T* x = static_cast<const T*>(batched ? a.xs[blockIdx.y] : a.x);
  float acc[M][kQuantRows] = {};
  const int64_t words = a.k / 4;  // 4 values a word
  auto step = [&](const uint32_t (&wv)[kQuantRows], int64_t word) {
    float wf[kQuantRows][4];
#pragma unroll
    for (int r = 0; r < kQuantRows; ++r) Decode4(wv[r], a.fp8, wf[r]);
#pragma unroll
    for (int m = 0; m < M; ++m) {
      const T* xp = x + m * a.x_stride + word * 4;
      const uint2 xv = *reinterpret_cast<const uint2*>(xp);  // 4 values of T (8 bytes: x 8-byte aligned, x_stride % 4 == 0)
      const T* xe = reinterpret_cast<const T*>(&xv);
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float xf = F<T>(xe[i]);
#pragma unroll
        for (int r = 0; r < kQuantRows; ++r) acc[m][r] = fmaf(wf[r][i], xf, acc[m][r]);
      }
    }
  };
  int64_t word = lane;
  for (; word + (kQuantUnroll - 1) * 32 < words; word += kQuantUnroll * 32) {
    uint32_t wv[kQuantUnroll][kQuantRows];
#pragma unroll
    for (int u = 0; u < kQuantUnroll; ++u) {
#pragma unroll
      for (int r = 0; r < kQuantRows; ++r) wv[u][r] = __ldg(wr[r] + word + u * 32);
    }
#pragma unroll
    for (int u = 0; u < kQuantUnroll; ++u) step(wv[u], word + u * 32);
  }
  for (; word < words; word += 32) {
    uint32_t wv[kQuantRows];
#pragma unroll
    for (int r = 0; r < kQuantRows; ++r) wv[r] = __ldg(wr[r] + word);
    step(wv, word);
  }
  // The product rounded to T, then scaled by the row's float32 scale (after its k values).
  StoreQuantRows<T, M>(a, row0, acc, [&](int64_t row, float sum) {
    return Round<T>(sum) * *reinterpret_cast<const float*>(w + row * a.row_bytes + a.k);
  });
}

// int4 rows (QuantGemvArgs::int4): each lane reads 4 bytes (8 values) of each of its warp's kQuantRows rows a step,
// with the group's scale and zero.
template <typename T, int M>
__global__ void __launch_bounds__(kQuantWarps * 32) QuantGemv4Kernel(const QuantGemvArgs a) {
  const int lane = threadIdx.x & 31;
  const int64_t row0 = (static_cast<int64_t>(blockIdx.x) * kQuantWarps + (threadIdx.x >> 5)) * kQuantRows;
  if (row0 >= a.n) return;
  const bool batched = a.batch > 0;
  const uint8_t* w = static_cast<const uint8_t*>(batched ? a.ws[blockIdx.y] : a.w);
  const int64_t data = a.k / 2;  // bytes of values a row
  // Row r's values at wr[r], its group g's record at rec[r] + g * rec_step.
  const uint8_t* wr[kQuantRows];
  const uint8_t* rec[kQuantRows];
  int64_t rec_step = 4;
#pragma unroll
  for (int r = 0; r < kQuantRows; ++r) {
    const int64_t row = row0 + r < a.n ? row0 + r : row0;
    if (a.split_rows > 0) {
      const int64_t mat = row / a.split_rows, local = row - mat * a.split_rows;
      const uint8_t* base = w + mat * a.split_rows * a.row_bytes;
      wr[r] = base + local * data;
      rec[r] = base + a.split_rows * data + local * 4;
      rec_step = a.split_rows * 4;
    } else {
      wr[r] = w + row * a.row_bytes;
      rec[r] = wr[r] + data;
    }
  }
  const T* x = static_cast<const T*>(batched ? a.xs[blockIdx.y] : a.x);
  float acc[M][kQuantRows] = {};
  const int64_t words = a.k / 8;  // 8 values a word
  for (int64_t word = lane; word < words; word += 32) {
    const int64_t g = word * 8 / a.group;
    uint32_t wv[kQuantRows];
    float sc[kQuantRows], ze[kQuantRows];
#pragma unroll
    for (int r = 0; r < kQuantRows; ++r) {
      wv[r] = __ldg(reinterpret_cast<const uint32_t*>(wr[r]) + word);
      const uint32_t sz = __ldg(reinterpret_cast<const uint32_t*>(rec[r] + g * rec_step));
      sc[r] = __uint_as_float((sz & 0xFFFFu) << 16);
      ze[r] = __uint_as_float(sz & 0xFFFF0000u);
    }
#pragma unroll
    for (int m = 0; m < M; ++m) {
      const T* xp = x + m * a.x_stride + word * 8;
      const uint2 x0 = *reinterpret_cast<const uint2*>(xp), x1 = *reinterpret_cast<const uint2*>(xp + 4);
      const T* xa = reinterpret_cast<const T*>(&x0);
      const T* xb = reinterpret_cast<const T*>(&x1);
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const float xf = F<T>(i < 4 ? xa[i] : xb[i - 4]);
#pragma unroll
        for (int r = 0; r < kQuantRows; ++r) {
          // Byte b of the word holds columns 2b (high nibble) and 2b + 1 (low).
          const uint32_t byte = (wv[r] >> (8 * (i / 2))) & 0xFFu;
          const float q = static_cast<float>((i % 2 == 0) ? (byte >> 4) : (byte & 15u));
          acc[m][r] = fmaf(fmaf(q - 8.f, sc[r], ze[r]), xf, acc[m][r]);
        }
      }
    }
  }
  StoreQuantRows<T, M>(a, row0, acc, [](int64_t, float sum) { return sum; });
}

// ---- Dequantize: a block a row, or a few short rows; each thread writes units of 8 consecutive values ----
// A block takes DequantRowsPerBlock consecutive rows of its job (rows of more than kDequantThreads x kDequantBatch
// units: one; short rows, as a small expert's, share a block); its threads take the rows' units kDequantThreads apart
// (each load and store instruction of a warp is contiguous), and a thread issues the loads of kDequantBatch units
// before their stores (a few independent loads in flight). 32-bit unit arithmetic: a 64-bit division per unit cost
// as much as the memory traffic. The one-row form keeps the row's pointers out of the loop (32 registers against
// 48: full occupancy; the 14336 x 4096 int4 weight in 48.7 us against 68.6 us with the several-rows form).

constexpr int kDequantThreads = 128;
constexpr int kDequantBatch = 4;

__host__ __device__ inline int64_t DequantRowsPerBlock(int64_t k) {
  const int64_t rows = kDequantThreads * kDequantBatch / (k / 8);
  return rows > 1 ? rows : 1;
}

// One unit: the 8 values of row r from column c0, written to j.out. The row's records start at `rec`, rec_step bytes
// apart; v0 (and v1 for fp8/int8) are the unit's value words and r0 its first value's record, loaded by the caller.
template <typename T>
__device__ __forceinline__ void DequantUnit(const DequantArgs& a, const DequantJob& j, int64_t r, uint32_t c0,
                                            const uint8_t* rec, int64_t rec_step, uint32_t v0, uint32_t v1,
                                            uint32_t r0) {
  const uint32_t group = static_cast<uint32_t>(j.group);
  // Groups of a multiple of 8 columns (per row, or plan --weights' 128, 64, 32): a unit's 8 values share a record.
  const bool one_group = group % 8 == 0;
  auto record = [&](int i) {
    return one_group || i == 0 ? r0 : __ldg(reinterpret_cast<const uint32_t*>(rec + ((c0 + i) / group) * rec_step));
  };
  float v[8];
  if (a.int4) {
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const uint32_t sz = record(i);
      const float s = Round<T>(__uint_as_float((sz & 0xFFFFu) << 16));
      const float z = Round<T>(__uint_as_float(sz & 0xFFFF0000u));
      // Byte b of the word holds columns 2b (high nibble) and 2b + 1 (low).
      const uint32_t byte = (v0 >> (8 * (i / 2))) & 0xFFu;
      const float q = static_cast<float>((i % 2 == 0) ? (byte >> 4) : (byte & 15u)) - 8.f;
      v[i] = z + q * s;
    }
  } else {
    float q[8];
    Decode4(v0, a.fp8, *reinterpret_cast<float(*)[4]>(q));
    Decode4(v1, a.fp8, *reinterpret_cast<float(*)[4]>(q + 4));
    if (j.scales != nullptr) {  // the values alone; the row's scale beside them
#pragma unroll
      for (int i = 0; i < 8; ++i) v[i] = q[i];
      if (c0 == 0) j.scales[r] = __uint_as_float(r0);
    } else {
#pragma unroll
      for (int i = 0; i < 8; ++i) v[i] = Round<T>(q[i]) * Round<T>(__uint_as_float(record(i)));
    }
  }
  uint4 packed;
  T* o = reinterpret_cast<T*>(&packed);
#pragma unroll
  for (int i = 0; i < 8; ++i) o[i] = ToT<T>(v[i]);
  *reinterpret_cast<uint4*>(static_cast<T*>(j.out) + r * j.out_stride + c0) = packed;
}

template <typename T, bool kSeveralRows>
__global__ void __launch_bounds__(kDequantThreads) DequantizeKernel(const DequantArgs a) {
  const DequantJob& j = a.job[blockIdx.y];
  const uint32_t per_row = static_cast<uint32_t>(j.k / 8);
  const int64_t rows_per_block = kSeveralRows ? DequantRowsPerBlock(j.k) : 1;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * rows_per_block;
  if (row0 >= j.n) return;
  const int64_t rows = rows_per_block < j.n - row0 ? rows_per_block : j.n - row0;
  const uint32_t units = static_cast<uint32_t>(rows) * per_row;
  const uint32_t group = static_cast<uint32_t>(j.group);
  const uint8_t* w = static_cast<const uint8_t*>(j.w);
  const int64_t data = a.int4 ? j.k / 2 : j.k;  // a row's value bytes
  const bool split = a.int4 && j.split;
  const int64_t rec_step = split ? j.n * 4 : 4;
  // Row r's value bytes and records.
  auto values_of = [&](int64_t r) { return split ? w + r * data : w + r * j.row_stride; };
  auto records_of = [&](int64_t r) { return split ? w + j.n * data + r * 4 : values_of(r) + data; };
  const uint8_t* values0 = values_of(row0);
  const uint8_t* rec0 = records_of(row0);
  for (uint32_t first = threadIdx.x; first < units; first += kDequantThreads * kDequantBatch) {
    uint32_t v0[kDequantBatch], v1[kDequantBatch], r0[kDequantBatch];
#pragma unroll
    for (int b = 0; b < kDequantBatch; ++b) {
      const uint32_t u = first + b * kDequantThreads;
      if (u >= units) continue;
      const uint32_t rr = kSeveralRows ? u / per_row : 0;  // the row within the block's
      const uint32_t c0 = (u - rr * per_row) * 8;
      const uint8_t* values = kSeveralRows ? values_of(row0 + rr) : values0;
      const uint8_t* rec = kSeveralRows ? records_of(row0 + rr) : rec0;
      if (a.int4) {
        v0[b] = __ldg(reinterpret_cast<const uint32_t*>(values + c0 / 2));
      } else {
        v0[b] = __ldg(reinterpret_cast<const uint32_t*>(values + c0));
        v1[b] = __ldg(reinterpret_cast<const uint32_t*>(values + c0 + 4));
      }
      r0[b] = __ldg(reinterpret_cast<const uint32_t*>(rec + (c0 / group) * rec_step));
    }
#pragma unroll
    for (int b = 0; b < kDequantBatch; ++b) {
      const uint32_t u = first + b * kDequantThreads;
      if (u >= units) continue;
      const uint32_t rr = kSeveralRows ? u / per_row : 0;
      const uint32_t c0 = (u - rr * per_row) * 8;
      DequantUnit<T>(a, j, row0 + rr, c0, kSeveralRows ? records_of(row0 + rr) : rec0, rec_step, v0[b], v1[b], r0[b]);
    }
  }
}

// ---- ScaleGroupedRows: one block per row; its group found by the first thread ----

template <typename T>
__global__ void __launch_bounds__(256) ScaleGroupedRowsKernel(T* y, int64_t y_stride, int64_t n, const int32_t* ends,
                                                              int groups, const float* scales, int64_t scale_stride) {
  __shared__ int group;
  const int64_t r = blockIdx.x;
  if (threadIdx.x == 0) {
    int g = 0;
    while (g + 1 < groups && r >= ends[g]) ++g;
    group = g;
  }
  __syncthreads();
  T* row = y + r * y_stride;
  const float* s = scales + group * scale_stride;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) row[j] = ToT<T>(F<T>(row[j]) * s[j]);
}

// ---- RMSNorm: one block per row; 16-byte loads when the row allows ----

template <typename T, bool kVec>
__global__ void RmsNormKernel(const T* __restrict__ x, int64_t x_stride, const T* __restrict__ w, T* __restrict__ out,
                              int64_t out_stride, int64_t cols, float eps) {
  pdl::PdlBegin();  // executor/pdl.cuh: after the kernels before it, then the next may be scheduled
  __shared__ float scratch[32];
  const T* xr = x + blockIdx.x * x_stride;
  T* orow = out + blockIdx.x * out_stride;
  float ss = 0.f;
  if constexpr (kVec) {
    for (int64_t i = threadIdx.x * 8; i < cols; i += blockDim.x * 8) {
      const uint4 v = *reinterpret_cast<const uint4*>(xr + i);
      const T* p = reinterpret_cast<const T*>(&v);
#pragma unroll
      for (int j = 0; j < 8; ++j) ss = fmaf(F<T>(p[j]), F<T>(p[j]), ss);
    }
  } else {
    for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) ss = fmaf(F<T>(xr[i]), F<T>(xr[i]), ss);
  }
  const float r = rsqrtf(BlockSum(ss, scratch) / static_cast<float>(cols) + eps);
  if constexpr (kVec) {
    WriteNormRow<T>(xr, w, r, cols, orow);
  } else {
    for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) {
      orow[i] = ToT<T>(F<T>(w[i]) * Round<T>(F<T>(xr[i]) * r));
    }
  }
}

// ---- SiLU(gate) * up: blocks (column range, row); 16-byte loads when the rows allow ----

template <typename T, bool kVec>
__global__ void SiluMulKernel(const T* __restrict__ gu, int64_t gu_stride, T* __restrict__ out, int64_t inter) {
  pdl::PdlBegin();  // executor/pdl.cuh: after the kernels before it, then the next may be scheduled
  const T* g = gu + blockIdx.y * gu_stride;
  const T* u = g + inter;
  T* o = out + blockIdx.y * inter;
  auto one = [](T gv, T uv) {
    const float gf = F<T>(gv);
    return ToT<T>(Round<T>(gf / (1.f + __expf(-gf))) * F<T>(uv));
  };
  if constexpr (kVec) {
    const int64_t j = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * 8;
    if (j >= inter) return;
    const uint4 gv = *reinterpret_cast<const uint4*>(g + j), uv = *reinterpret_cast<const uint4*>(u + j);
    const T* gp = reinterpret_cast<const T*>(&gv);
    const T* up = reinterpret_cast<const T*>(&uv);
    uint4 ov;
    T* op = reinterpret_cast<T*>(&ov);
#pragma unroll
    for (int i = 0; i < 8; ++i) op[i] = one(gp[i], up[i]);
    *reinterpret_cast<uint4*>(o + j) = ov;
  } else {
    const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (j < inter) o[j] = one(g[j], u[j]);
  }
}

// ---- RoPE + KV-cache write: one warp per head of one token ----

constexpr int kRopeWarps = 4;

// What warp `warp` of a RoPE + KV-write block works on: head blockIdx.y x kRopeWarps + warp (the q heads, then k,
// then v) of token blockIdx.x, its source row, its destination (q_out, or the KV cache at the token's position) and
// that position; false when the warp has nothing to do (a head past the last, or a position outside the cache or
// the tables).
template <typename T>
struct RopeSite {
  int kind;  // 0 q, 1 k, 2 v
  int64_t pos;
  const T* src;
  T* dst;
};

template <typename T>
__device__ __forceinline__ bool RopeSiteOf(const RopeKvArgs& a, int64_t D, int warp, RopeSite<T>* site) {
  const int64_t token = blockIdx.x;
  const int64_t b = token / a.seq, s = token - b * a.seq;
  const int64_t head = static_cast<int64_t>(blockIdx.y) * kRopeWarps + warp;
  if (head >= a.heads + 2 * a.kv_heads) return false;
  const int64_t pos = PosOf(a.at, b) + s;
  if (pos < 0 || pos >= a.max_seq || pos >= a.table_rows) return false;
  const int kind = head < a.heads ? 0 : head < a.heads + a.kv_heads ? 1 : 2;
  const int64_t h = kind == 0 ? head : kind == 1 ? head - a.heads : head - a.heads - a.kv_heads;
  const int64_t row = RowOf(a.at, b);
  site->kind = kind;
  site->pos = pos;
  site->src = kind == 0   ? static_cast<const T*>(a.q) + token * a.q_stride + h * D
              : kind == 1 ? static_cast<const T*>(a.k) + token * a.k_stride + h * D
                          : static_cast<const T*>(a.v) + token * a.v_stride + h * D;
  site->dst = kind == 0   ? static_cast<T*>(a.q_out) + (token * a.heads + h) * D
              : kind == 1 ? static_cast<T*>(a.k_cache) + ((row * a.kv_heads + h) * a.max_seq + pos) * D
                          : static_cast<T*>(a.v_cache) + ((row * a.kv_heads + h) * a.max_seq + pos) * D;
  return true;
}

template <typename T>
__global__ void __launch_bounds__(kRopeWarps * 32) RopeKvKernel(RopeKvArgs a) {
  pdl::PdlBegin();  // executor/pdl.cuh: after the kernels before it, then the next may be scheduled
  __shared__ float buf[kRopeWarps][256];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t D = a.head_dim, half = D / 2;
  RopeSite<T> site;
  if (!RopeSiteOf(a, D, warp, &site)) return;
  const auto [kind, pos, src, dst] = site;
  if (kind == 2) {
    for (int64_t i = lane; i < D; i += 32) dst[i] = src[i];
    return;
  }
  float* x = buf[warp];
  for (int64_t i = lane; i < D; i += 32) x[i] = F<T>(src[i]);
  const T* norm = static_cast<const T*>(kind == 0 ? a.q_norm : a.k_norm);
  if (norm != nullptr) {  // Qwen3's per-head RMSNorm before RoPE
    float ss = 0.f;
    for (int64_t i = lane; i < D; i += 32) ss = fmaf(x[i], x[i], ss);
    const float r = rsqrtf(WarpSum(ss) / static_cast<float>(D) + a.eps);
    for (int64_t i = lane; i < D; i += 32) x[i] = Round<T>(F<T>(norm[i]) * Round<T>(x[i] * r));
  }
  __syncwarp();
  const T* cs = static_cast<const T*>(a.cos) + pos * D;
  const T* sn = static_cast<const T*>(a.sin) + pos * D;
  for (int64_t i = lane; i < D; i += 32) {
    const float rot = i < half ? -x[i + half] : x[i - half];  // rotate_half
    const float p = Round<T>(x[i] * F<T>(cs[i])), q = Round<T>(rot * F<T>(sn[i]));
    dst[i] = ToT<T>(p + q);
  }
}

// E 16-bit values as one load: 4, 8 or 16 bytes.
template <typename T, int E>
struct VecOf;
template <typename T>
struct VecOf<T, 2> {
  using type = uint32_t;
};
template <typename T>
struct VecOf<T, 4> {
  using type = uint2;
};
template <typename T>
struct VecOf<T, 8> {
  using type = uint4;
};

// The same for head_dim = 32 x E (E = 2, 4, 8: 64, 128, 256): lane l holds elements [l E, l E + E) in registers
// (one 4-, 8- or 16-byte load and store); rotate_half's partner of an element is in lane l ^ 16. Bit for bit the
// scalar kernel's results.
template <typename T, int E>
__global__ void __launch_bounds__(kRopeWarps * 32) RopeKvVecKernel(RopeKvArgs a) {
  pdl::PdlBegin();  // executor/pdl.cuh: after the kernels before it, then the next may be scheduled
  using Vec = typename VecOf<T, E>::type;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  constexpr int64_t D = 32 * E;
  RopeSite<T> site;
  if (!RopeSiteOf(a, D, warp, &site)) return;
  const auto [kind, pos, src, dst] = site;
  const Vec in = *reinterpret_cast<const Vec*>(src + lane * E);
  if (kind == 2) {
    *reinterpret_cast<Vec*>(dst + lane * E) = in;
    return;
  }
  const T* iv = reinterpret_cast<const T*>(&in);
  float x[E];
#pragma unroll
  for (int e = 0; e < E; ++e) x[e] = F<T>(iv[e]);
  const T* norm = static_cast<const T*>(kind == 0 ? a.q_norm : a.k_norm);
  if (norm != nullptr) {  // Qwen3's per-head RMSNorm before RoPE
    // The scalar kernel's sum: lane j accumulates elements j, j + 32, ... in that order (fmaf), then WarpSum. Here
    // element j + 32 i lies in lane (j + 32 i) / E at (j + 32 i) % E: fetched by shuffles, summed in the same order.
    const Vec nv = *reinterpret_cast<const Vec*>(norm + lane * E);
    const T* np = reinterpret_cast<const T*>(&nv);
    float ss = 0.f;
#pragma unroll
    for (int i = 0; i < E; ++i) {
      const int idx = lane + 32 * i;
      float v = 0.f;
#pragma unroll
      for (int e = 0; e < E; ++e) {
        const float got = __shfl_sync(0xffffffffu, x[e], idx / E);
        if (idx % E == e) v = got;
      }
      ss = fmaf(v, v, ss);
    }
    const float r = rsqrtf(WarpSum(ss) / static_cast<float>(D) + a.eps);
#pragma unroll
    for (int e = 0; e < E; ++e) x[e] = Round<T>(F<T>(np[e]) * Round<T>(x[e] * r));
  }
  const Vec cv = *reinterpret_cast<const Vec*>(static_cast<const T*>(a.cos) + pos * D + lane * E);
  const Vec sv = *reinterpret_cast<const Vec*>(static_cast<const T*>(a.sin) + pos * D + lane * E);
  const T* cp = reinterpret_cast<const T*>(&cv);
  const T* sp = reinterpret_cast<const T*>(&sv);
  Vec out;
  T* op = reinterpret_cast<T*>(&out);
  const bool low = lane < 16;  // elements below head_dim / 2
#pragma unroll
  for (int e = 0; e < E; ++e) {
    const float partner = __shfl_xor_sync(0xffffffffu, x[e], 16);
    const float rot = low ? -partner : partner;  // rotate_half
    const float p = Round<T>(x[e] * F<T>(cp[e])), q = Round<T>(rot * F<T>(sp[e]));
    op[e] = ToT<T>(p + q);
  }
  *reinterpret_cast<Vec*>(dst + lane * E) = out;
}

// ---- split-K decode attention ----

constexpr int kAttnWarps = 4;
constexpr int kMaxGroup = 8;
constexpr int kMaxSplits = 64;  // DecodeAttentionSplits' most

// E consecutive elements of a key or value row into floats: one vector load where E elements fill 4, 8 or 16
// bytes and the address allows it (`vec`), else element by element.
template <typename T, int E>
__device__ __forceinline__ void LoadRow(const T* p, bool vec, float (&out)[E]) {
  constexpr int kBytes = E * static_cast<int>(sizeof(T));
  if constexpr (kBytes == 4 || kBytes == 8 || kBytes == 16) {
    if (vec) {
      using V = typename std::conditional<kBytes == 4, uint32_t, typename std::conditional<kBytes == 8, uint2,
                                                                                            uint4>::type>::type;
      const V u = *reinterpret_cast<const V*>(p);
      const T* t = reinterpret_cast<const T*>(&u);
#pragma unroll
      for (int e = 0; e < E; ++e) out[e] = F<T>(t[e]);
      return;
    }
  }
#pragma unroll
  for (int e = 0; e < E; ++e) out[e] = F<T>(p[e]);
}

// The keys a split of a row attending n keys takes (DecodeAttnArgs::min_chunk), and the splits that hold them (at
// least one: a row with no keys still writes its empty split 0).
__device__ __forceinline__ int64_t AttnChunk(int64_t n, const DecodeAttnArgs& a) {
  const int64_t even = (n + a.splits - 1) / a.splits;
  return even > a.min_chunk ? even : (a.min_chunk > 0 ? a.min_chunk : 1);
}
__device__ __forceinline__ int AttnUsedSplits(int64_t n, const DecodeAttnArgs& a) {
  const int64_t chunk = AttnChunk(n, a);
  const int64_t used = (n + chunk - 1) / chunk;
  return static_cast<int>(used < 1 ? 1 : used > a.splits ? a.splits : used);
}

// Blocks (b * kv_heads + kv head, split): each warp takes batches of B consecutive keys of the split's range (4; 2
// for heads of 192 dims or more; batch i of the block goes to warp i % kAttnWarps), loads a batch's keys and values
// at once, and keeps an online softmax per query head of the group, updated once per batch; the warps then merge
// and write (acc[D], max, sum) per head.
template <typename T, int E>  // E = head_dim / 32 values per lane
__global__ void __launch_bounds__(kAttnWarps * 32) AttnPartialKernel(DecodeAttnArgs a) {
  pdl::PdlBegin();  // executor/pdl.cuh: after the kernels before it, then the next may be scheduled
  constexpr int D = E * 32;
  constexpr int B = E >= 6 ? 2 : 4;  // keys per batch (fewer for wide heads: registers)
  __shared__ float s_acc[kAttnWarps][kMaxGroup][D];
  __shared__ float s_m[kAttnWarps][kMaxGroup];
  __shared__ float s_l[kAttnWarps][kMaxGroup];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t b = blockIdx.x / a.kv_heads, kh = blockIdx.x - b * a.kv_heads;
  const int split = blockIdx.y;
  const int G = static_cast<int>(a.heads / a.kv_heads);
  const int64_t pos = PosOf(a.at, b);
  const int64_t row = RowOf(a.at, b);
  const int64_t hi = (pos < a.max_seq - 1 ? pos : a.max_seq - 1) + 1;  // keys [lo, hi)
  const int64_t lo = a.window > 0 && pos - a.window + 1 > 0 ? pos - a.window + 1 : 0;
  const int64_t n = hi > lo ? hi - lo : 0;
  const int64_t chunk = AttnChunk(n, a);
  const int64_t k0 = lo + split * chunk, k1 = k0 + chunk < hi ? k0 + chunk : hi;
  if (split > 0 && k0 >= hi) return;  // a split past the row's keys (the combine reads only those before it)

  float q[kMaxGroup][E];
  const T* qb = static_cast<const T*>(a.q) + (b * a.heads + kh * G) * D;
#pragma unroll
  for (int g = 0; g < kMaxGroup; ++g) {
#pragma unroll
    for (int e = 0; e < E; ++e) q[g][e] = g < G ? F<T>(qb[g * D + lane * E + e]) * a.scale : 0.f;
  }
  float m[kMaxGroup], l[kMaxGroup], acc[kMaxGroup][E];
#pragma unroll
  for (int g = 0; g < kMaxGroup; ++g) {
    m[g] = -INFINITY;
    l[g] = 0.f;
#pragma unroll
    for (int e = 0; e < E; ++e) acc[g][e] = 0.f;
  }
  const int64_t head_off = (row * a.kv_heads + kh) * a.max_seq;
  const T* kc = static_cast<const T*>(a.k_cache) + head_off * D;
  const T* vc = static_cast<const T*>(a.v_cache) + head_off * D;
  const bool vec = ((reinterpret_cast<uintptr_t>(kc) | reinterpret_cast<uintptr_t>(vc)) & 15u) == 0;
  for (int64_t j0 = k0 + warp * B; j0 < k1; j0 += kAttnWarps * B) {
    float kv[B][E], vv[B][E];
#pragma unroll
    for (int u = 0; u < B; ++u) {
      if (j0 + u < k1) {
        LoadRow<T, E>(kc + (j0 + u) * D + lane * E, vec, kv[u]);
        LoadRow<T, E>(vc + (j0 + u) * D + lane * E, vec, vv[u]);
      } else {
#pragma unroll
        for (int e = 0; e < E; ++e) kv[u][e] = vv[u][e] = 0.f;
      }
    }
#pragma unroll
    for (int g = 0; g < kMaxGroup; ++g) {
      if (g >= G) break;
      float sc[B];
#pragma unroll
      for (int u = 0; u < B; ++u) {
        float d = 0.f;
#pragma unroll
        for (int e = 0; e < E; ++e) d = fmaf(q[g][e], kv[u][e], d);
        sc[u] = WarpSum(d);
      }
      float mn = m[g];
#pragma unroll
      for (int u = 0; u < B; ++u) {
        if (j0 + u < k1) mn = fmaxf(mn, sc[u]);
      }
      const float corr = __expf(m[g] - mn);  // 0 while m is -inf (key j0 is in range, so mn is finite)
      float p[B], psum = 0.f;
#pragma unroll
      for (int u = 0; u < B; ++u) {
        p[u] = j0 + u < k1 ? __expf(sc[u] - mn) : 0.f;
        psum += p[u];
      }
      l[g] = l[g] * corr + psum;
#pragma unroll
      for (int e = 0; e < E; ++e) {
        float v = acc[g][e] * corr;
#pragma unroll
        for (int u = 0; u < B; ++u) v = fmaf(p[u], vv[u][e], v);
        acc[g][e] = v;
      }
      m[g] = mn;
    }
  }
#pragma unroll
  for (int g = 0; g < kMaxGroup; ++g) {
    if (g >= G) break;
#pragma unroll
    for (int e = 0; e < E; ++e) s_acc[warp][g][lane * E + e] = acc[g][e];
    if (lane == 0) {
      s_m[warp][g] = m[g];
      s_l[warp][g] = l[g];
    }
  }
  __syncthreads();
  // Merge the warps: thread t handles dims t, t + 128, ... of every head of the group.
  for (int g = 0; g < G; ++g) {
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < kAttnWarps; ++w) mx = fmaxf(mx, s_m[w][g]);
    float wsc[kAttnWarps], lsum = 0.f;
#pragma unroll
    for (int w = 0; w < kAttnWarps; ++w) {
      wsc[w] = mx == -INFINITY ? 0.f : __expf(s_m[w][g] - mx);
      lsum += wsc[w] * s_l[w][g];
    }
    float* out = a.workspace + ((b * a.heads + kh * G + g) * a.splits + split) * (D + 2);
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
      float v = 0.f;
#pragma unroll
      for (int w = 0; w < kAttnWarps; ++w) v = fmaf(wsc[w], s_acc[w][g][d], v);
      out[d] = v;
    }
    if (threadIdx.x == 0) {
      out[D] = mx;
      out[D + 1] = lsum;
    }
  }
}

// Blocks b * heads + h, head_dim threads: merges the splits of one head. The splits' weights exp(max_s - max) are
// computed once per split into shared memory; each thread then sums its dimension over the splits, its loads
// independent of one another (in split order, as the sums were made before).
template <typename T>
__global__ void AttnCombineKernel(DecodeAttnArgs a) {
  pdl::PdlBegin();  // executor/pdl.cuh: after the kernels before it, then the next may be scheduled
  __shared__ float s_w[kMaxSplits];
  __shared__ float s_l[kMaxSplits];
  __shared__ float s_max[32];
  const int64_t bh = blockIdx.x;
  const int64_t D = a.head_dim;
  const float* part = a.workspace + bh * a.splits * (D + 2);
  // The splits holding this row's keys (AttnPartialKernel's ranges).
  int S;
  {
    const int64_t b = bh / a.heads;
    const int64_t pos = PosOf(a.at, b);
    const int64_t hi = (pos < a.max_seq - 1 ? pos : a.max_seq - 1) + 1;
    const int64_t lo = a.window > 0 && pos - a.window + 1 > 0 ? pos - a.window + 1 : 0;
    S = AttnUsedSplits(hi > lo ? hi - lo : 0, a);
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
  float mx = -INFINITY;
  for (int s = threadIdx.x; s < S; s += blockDim.x) {
    s_w[s] = part[s * (D + 2) + D];
    s_l[s] = part[s * (D + 2) + D + 1];
    mx = fmaxf(mx, s_w[s]);
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
  if (lane == 0) s_max[warp] = mx;
  __syncthreads();
  mx = -INFINITY;
  for (int w = 0; w < warps; ++w) mx = fmaxf(mx, s_max[w]);
  for (int s = threadIdx.x; s < S; s += blockDim.x) s_w[s] = s_w[s] == -INFINITY ? 0.f : __expf(s_w[s] - mx);
  __syncthreads();
  const int64_t d = threadIdx.x;
  if (d >= D) return;
  float num = 0.f, den = 0.f;
  const float* p = part + d;
  // 16 splits' loads in flight at a time, summed in split order.
  constexpr int kLoads = 16;
  for (int s0 = 0; s0 < S; s0 += kLoads) {
    float v[kLoads];
#pragma unroll
    for (int i = 0; i < kLoads; ++i) v[i] = s0 + i < S ? p[(s0 + i) * (D + 2)] : 0.f;
#pragma unroll
    for (int i = 0; i < kLoads; ++i) {
      if (s0 + i < S) {
        den = fmaf(s_w[s0 + i], s_l[s0 + i], den);
        num = fmaf(s_w[s0 + i], v[i], num);
      }
    }
  }
  static_cast<T*>(a.out)[bh * D + d] = ToT<T>(den > 0.f ? num / den : 0.f);
}

template <typename T, int E>
void LaunchAttn(const DecodeAttnArgs& a, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(a.batch * a.kv_heads), static_cast<unsigned>(a.splits));
  pdl::LaunchDependent(AttnPartialKernel<T, E>, grid, dim3(kAttnWarps * 32), stream, a);
  pdl::LaunchDependent(AttnCombineKernel<T>, dim3(static_cast<unsigned>(a.batch * a.heads)),
                       dim3(static_cast<unsigned>(a.head_dim)), stream, a);
}

bool Aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }



// ---- WaitFlag: one thread polls the host's sequence number ----

// Polls until *flag reaches value (wrapping) or timeout_ns pass (then sets *timed_out); one thread.
__device__ void PollFlag(const volatile uint32_t* flag, uint32_t value, uint64_t timeout_ns,
                         volatile uint32_t* timed_out, unsigned long long* waited_ns = nullptr) {
  uint64_t start = 0, now = 0;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
  now = start;
  while (static_cast<int32_t>(*flag - value) < 0) {
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
    if (now - start > timeout_ns) {
      *timed_out = 1u;
      break;
    }
    __nanosleep(200);
  }
  if (waited_ns != nullptr) atomicAdd(waited_ns, static_cast<unsigned long long>(now - start));
  __threadfence_system();
}

__global__ void WaitFlagKernel(const volatile uint32_t* flag, uint32_t value, uint64_t timeout_ns,
                               volatile uint32_t* timed_out) {
  PollFlag(flag, value, timeout_ns, timed_out);
}

// ---- TopRows: one block scores every row (a warp per row at a time, 16-byte loads), then picks the top ----

template <typename T>
__global__ void TopRowsKernel(const T* __restrict__ x, const float* __restrict__ scale, const T* __restrict__ w,
                              int n, int64_t k, int top, int64_t* __restrict__ out) {
  __shared__ float score[kTopRowsMax];
  __shared__ float best_v[32];
  __shared__ int best_i[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  for (int r = warp; r < n; r += warps) {
    const T* wr = w + static_cast<int64_t>(r) * k;
    float acc = 0.f;
    for (int64_t i = static_cast<int64_t>(lane) * 8; i < k; i += 32 * 8) {
      const uint4 xv = *reinterpret_cast<const uint4*>(x + i);
      const uint4 wv = *reinterpret_cast<const uint4*>(wr + i);
      const float4 s0 = *reinterpret_cast<const float4*>(scale + i);
      const float4 s1 = *reinterpret_cast<const float4*>(scale + i + 4);
      const T* xp = reinterpret_cast<const T*>(&xv);
      const T* wp = reinterpret_cast<const T*>(&wv);
      const float sc[8] = {s0.x, s0.y, s0.z, s0.w, s1.x, s1.y, s1.z, s1.w};
#pragma unroll
      for (int j = 0; j < 8; ++j) acc = fmaf(F<T>(xp[j]) * sc[j], F<T>(wp[j]), acc);
    }
    acc = WarpSum(acc);
    if (lane == 0) score[r] = acc;
  }
  __syncthreads();
  for (int t = 0; t < top; ++t) {
    float v;
    int idx;
    WarpArgMax(score, threadIdx.x, blockDim.x, n, &v, &idx);
    if (lane == 0) {
      best_v[warp] = v;
      best_i[warp] = idx;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      float bv = best_v[0];
      int bi = best_i[0];
      for (int q = 1; q < warps; ++q) {
        if (best_v[q] > bv || (best_v[q] == bv && best_i[q] < bi)) {
          bv = best_v[q];
          bi = best_i[q];
        }
      }
      if (bi >= n) bi = 0;  // (only with NaN scores)
      out[t] = bi;
      score[bi] = -INFINITY;
    }
    __syncthreads();
  }
}

}  // namespace

namespace {
// QuantGemv's kernel for the layout (int4 or per-row fp8/int8), T and M.
template <typename T, int M>
void LaunchQuantGemv(const QuantGemvArgs& a, dim3 grid, cudaStream_t stream) {
  if (a.int4) {
    QuantGemv4Kernel<T, M><<<grid, kQuantWarps * 32, 0, stream>>>(a);
  } else {
    QuantGemvKernel<T, M><<<grid, kQuantWarps * 32, 0, stream>>>(a);
  }
}
}  // namespace

cudaError_t QuantGemv(const QuantGemvArgs& a, cudaStream_t stream) {
  const auto aligned4 = [](const void* p) { return (reinterpret_cast<uintptr_t>(p) & 3u) == 0; };
  const auto aligned8 = [](const void* p) { return (reinterpret_cast<uintptr_t>(p) & 7u) == 0; };
  const bool batched = a.batch > 0;
  const bool rows_ok = a.int4 ? a.k % 8 == 0 && a.group >= 8 && a.group % 8 == 0 && a.k % a.group == 0 &&
                                    a.row_bytes == a.k / 2 + 4 * (a.k / a.group) && a.split_rows >= 0 &&
                                    (a.split_rows == 0 || a.n % a.split_rows == 0)
                              : a.k % 4 == 0 && a.row_bytes == a.k + 4 && a.split_rows == 0;
  if (a.m < 1 || a.m > kGemvMaxRows || a.n < 1 || a.k < 4 || !rows_ok ||
      a.x_stride % 4 != 0 || (a.dtype != DType::kBF16 && a.dtype != DType::kF16) ||
      a.n > (int64_t{1} << 31) * kQuantWarps * kQuantRows || a.batch < 0 || a.batch > 65535) {
    return cudaErrorInvalidValue;
  }
  if (batched ? a.ws == nullptr || a.xs == nullptr || a.ys == nullptr
              : a.x == nullptr || a.w == nullptr || a.y == nullptr || !aligned8(a.x) || !aligned4(a.w)) {
    return cudaErrorInvalidValue;
  }
  const int64_t units = (a.n + kQuantRows - 1) / kQuantRows;
  const dim3 grid(static_cast<unsigned>((units + kQuantWarps - 1) / kQuantWarps),
                  static_cast<unsigned>(batched ? a.batch : 1));
  if (a.dtype == DType::kBF16) {
    if (a.m == 1) LaunchQuantGemv<__nv_bfloat16, 1>(a, grid, stream);
    else LaunchQuantGemv<__nv_bfloat16, 2>(a, grid, stream);
  } else {
    if (a.m == 1) LaunchQuantGemv<__half, 1>(a, grid, stream);
    else LaunchQuantGemv<__half, 2>(a, grid, stream);
  }
  return cudaGetLastError();
}

cudaError_t Dequantize(const DequantArgs& a, cudaStream_t stream) {
  if (a.jobs < 1 || a.jobs > kDequantMaxJobs || (a.dtype != DType::kBF16 && a.dtype != DType::kF16)) {
    return cudaErrorInvalidValue;
  }
  int64_t blocks = 0;  // the most any job takes (DequantRowsPerBlock rows a block)
  bool several = false;  // some job's rows share blocks
  for (int i = 0; i < a.jobs; ++i) {
    const DequantJob& j = a.job[i];
    const int64_t groups = j.group > 0 ? j.k / j.group : 0;
    const int64_t row_bytes = a.int4 ? j.k / 2 + 4 * groups : j.k + 4 * groups;
    const bool layout_ok = (j.split ? a.int4 : j.row_stride >= row_bytes && j.row_stride % 4 == 0) &&
                           (j.scales == nullptr || (!a.int4 && j.group == j.k));
    if (j.w == nullptr || j.out == nullptr || j.n < 1 || j.k < 8 || j.k % 8 != 0 || j.group < 1 || j.k % j.group != 0 ||
        !layout_ok || (reinterpret_cast<uintptr_t>(j.w) & 3u) != 0 || !Aligned16(j.out) || j.out_stride < j.k ||
        j.out_stride % 8 != 0 || j.k > (int64_t{1} << 31)) {
      return cudaErrorInvalidValue;
    }
    const int64_t per_block = DequantRowsPerBlock(j.k);
    blocks = std::max(blocks, (j.n + per_block - 1) / per_block);
    several = several || per_block > 1;
  }
  if (blocks > (int64_t{1} << 31) - 1) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>(a.jobs));
  // (A job of long rows in the several-rows form takes one row a block all the same.)
  if (a.dtype == DType::kBF16) {
    if (several) DequantizeKernel<__nv_bfloat16, true><<<grid, kDequantThreads, 0, stream>>>(a);
    else DequantizeKernel<__nv_bfloat16, false><<<grid, kDequantThreads, 0, stream>>>(a);
  } else {
    if (several) DequantizeKernel<__half, true><<<grid, kDequantThreads, 0, stream>>>(a);
    else DequantizeKernel<__half, false><<<grid, kDequantThreads, 0, stream>>>(a);
  }
  return cudaGetLastError();
}

cudaError_t ScaleGroupedRows(DType dtype, void* y, int64_t y_stride, int64_t rows, int64_t n, const int32_t* ends,
                             int groups, const float* scales, int64_t scale_stride, cudaStream_t stream) {
  if (y == nullptr || ends == nullptr || scales == nullptr || rows < 0 || n < 1 || y_stride < n || groups < 1 ||
      groups > 1024 || scale_stride < n || rows > (int64_t{1} << 31) - 1 ||
      (dtype != DType::kBF16 && dtype != DType::kF16)) {
    return cudaErrorInvalidValue;
  }
  if (rows == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(rows));
  if (dtype == DType::kBF16) {
    ScaleGroupedRowsKernel<__nv_bfloat16><<<grid, 256, 0, stream>>>(static_cast<__nv_bfloat16*>(y), y_stride, n, ends,
                                                                    groups, scales, scale_stride);
  } else {
    ScaleGroupedRowsKernel<__half><<<grid, 256, 0, stream>>>(static_cast<__half*>(y), y_stride, n, ends, groups, scales,
                                                             scale_stride);
  }
  return cudaGetLastError();
}

cudaError_t Gemv(const GemvArgs& a, cudaStream_t stream) {
  if (a.m < 1 || a.m > kGemvMaxRows || a.n < 1 || a.k < 8 || a.k % 8 != 0 || a.x_stride % 8 != 0 || !Aligned16(a.x) ||
      !Aligned16(a.w) || a.x == nullptr || a.w == nullptr || a.n > (int64_t{1} << 31) * kGemvWarps) {
    return cudaErrorInvalidValue;
  }
  if (a.norm_w != nullptr &&
      (!Aligned16(a.norm_w) || GemvNormSmemBytes(a.m, a.k, 2) > static_cast<size_t>(kGemvNormMaxSmem))) {
    return cudaErrorInvalidValue;
  }
  if (a.norm_out != nullptr && (a.norm_w == nullptr || !Aligned16(a.norm_out))) return cudaErrorInvalidValue;
  switch (a.out) {
    case GemvOut::kRows:
      if (a.y == nullptr) return cudaErrorInvalidValue;
      break;
    case GemvOut::kSiluPairs:
      if (a.y == nullptr || a.n % 2 != 0 || a.residual != nullptr || (a.m > 1 && a.y_stride < a.n / 2)) {
        return cudaErrorInvalidValue;
      }
      break;
    case GemvOut::kRope: {
      const RopeKvArgs& r = a.rope;
      if (a.residual != nullptr || r.head_dim < 2 || r.head_dim % 2 != 0 || r.head_dim > 256 || r.heads < 1 ||
          r.kv_heads < 1 || r.seq < 1 || r.batch < 1 || r.batch * r.seq != a.m ||
          a.n != (r.heads + 2 * r.kv_heads) * r.head_dim || r.cos == nullptr || r.sin == nullptr ||
          r.k_cache == nullptr || r.v_cache == nullptr || r.q_out == nullptr || r.q_norm != nullptr ||
          r.k_norm != nullptr || r.max_seq < 1 || r.table_rows < 1) {
        return cudaErrorInvalidValue;
      }
      break;
    }
    default: return cudaErrorInvalidValue;
  }
  const cudaError_t e = a.dtype == DType::kBF16 ? LaunchGemv<__nv_bfloat16>(a, stream) : LaunchGemv<__half>(a, stream);
  return e != cudaSuccess ? e : cudaGetLastError();
}

template <typename T>
void LaunchRmsNorm(const void* x, int64_t x_stride, const void* w, void* out, int64_t out_stride, int64_t rows,
                   int64_t cols, float eps, cudaStream_t stream) {
  const bool vec = cols % 8 == 0 && x_stride % 8 == 0 && out_stride % 8 == 0 && Aligned16(x) && Aligned16(w) &&
                   Aligned16(out);
  // (RmsScaleAsNormKernel sums the vector path's way: keep the two in step.)
  const unsigned block = static_cast<unsigned>(
      vec ? RmsNormBlock(cols) : std::max<int64_t>(32, std::min<int64_t>(1024, ((cols / 4 + 31) / 32) * 32)));
  const auto xs = static_cast<const T*>(x);
  const auto ws = static_cast<const T*>(w);
  const auto os = static_cast<T*>(out);
  if (vec) {
    pdl::LaunchDependent(RmsNormKernel<T, true>, dim3(static_cast<unsigned>(rows)), dim3(block), stream, xs, x_stride, ws,
                         os, out_stride, cols, eps);
  } else {
    pdl::LaunchDependent(RmsNormKernel<T, false>, dim3(static_cast<unsigned>(rows)), dim3(block), stream, xs, x_stride,
                         ws, os, out_stride, cols, eps);
  }
}

template <typename T>
void LaunchSiluMul(const void* gu, int64_t gu_stride, void* out, int64_t rows, int64_t inter, cudaStream_t stream) {
  const bool vec = inter % 8 == 0 && gu_stride % 8 == 0 && Aligned16(gu) && Aligned16(out);
  const int64_t per_block = 256 * (vec ? 8 : 1);
  const dim3 grid(static_cast<unsigned>((inter + per_block - 1) / per_block), static_cast<unsigned>(rows));
  const auto g = static_cast<const T*>(gu);
  const auto o = static_cast<T*>(out);
  if (vec) {
    pdl::LaunchDependent(SiluMulKernel<T, true>, grid, dim3(256), stream, g, gu_stride, o, inter);
  } else {
    pdl::LaunchDependent(SiluMulKernel<T, false>, grid, dim3(256), stream, g, gu_stride, o, inter);
  }
}

cudaError_t RmsNorm(DType dtype, const void* x, int64_t x_stride, const void* w, void* out, int64_t out_stride,
                    int64_t rows, int64_t cols, float eps, cudaStream_t stream) {
  if (rows < 1 || cols < 1 || rows > 0x7fffffff || x == nullptr || w == nullptr || out == nullptr) {
    return cudaErrorInvalidValue;
  }
  if (dtype == DType::kBF16) {
    LaunchRmsNorm<__nv_bfloat16>(x, x_stride, w, out, out_stride, rows, cols, eps, stream);
  } else {
    LaunchRmsNorm<__half>(x, x_stride, w, out, out_stride, rows, cols, eps, stream);
  }
  return cudaGetLastError();
}

cudaError_t SiluMul(DType dtype, const void* gu, int64_t gu_stride, void* out, int64_t rows, int64_t inter,
                    cudaStream_t stream) {
  if (rows < 1 || rows > 65535 || inter < 1 || gu == nullptr || out == nullptr) return cudaErrorInvalidValue;
  if (dtype == DType::kBF16) {
    LaunchSiluMul<__nv_bfloat16>(gu, gu_stride, out, rows, inter, stream);
  } else {
    LaunchSiluMul<__half>(gu, gu_stride, out, rows, inter, stream);
  }
  return cudaGetLastError();
}

cudaError_t RopeKvWrite(const RopeKvArgs& a, cudaStream_t stream) {
  if (a.batch < 1 || a.seq < 1 || a.heads < 1 || a.kv_heads < 1 || a.head_dim < 2 || a.head_dim % 2 != 0 ||
      a.head_dim > 256 || a.q == nullptr || a.k == nullptr || a.v == nullptr || a.cos == nullptr ||
      a.sin == nullptr || a.k_cache == nullptr || a.v_cache == nullptr || a.q_out == nullptr ||
      a.batch * a.seq > 0x7fffffff) {
    return cudaErrorInvalidValue;
  }
  const dim3 grid(static_cast<unsigned>(a.batch * a.seq),
                  static_cast<unsigned>((a.heads + 2 * a.kv_heads + kRopeWarps - 1) / kRopeWarps));
  // Vector loads need every row, table and cache base 4/8/16-byte aligned for the head_dim's width.
  const int e = a.head_dim == 64 ? 2 : a.head_dim == 128 ? 4 : a.head_dim == 256 ? 8 : 0;
  const uintptr_t align = static_cast<uintptr_t>(e * 2);
  auto aligned = [&](const void* p) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % align == 0; };
  const bool vec = e > 0 && aligned(a.q) && aligned(a.k) && aligned(a.v) && aligned(a.cos) && aligned(a.sin) &&
                   aligned(a.k_cache) && aligned(a.v_cache) && aligned(a.q_norm) && aligned(a.k_norm) &&
                   aligned(a.q_out) && a.q_stride % e == 0 && a.k_stride % e == 0 && a.v_stride % e == 0;
  auto launch = [&](auto tag) {
    using T = decltype(tag);
    const dim3 block(kRopeWarps * 32);
    if (!vec) pdl::LaunchDependent(RopeKvKernel<T>, grid, block, stream, a);
    else if (e == 2) pdl::LaunchDependent(RopeKvVecKernel<T, 2>, grid, block, stream, a);
    else if (e == 4) pdl::LaunchDependent(RopeKvVecKernel<T, 4>, grid, block, stream, a);
    else pdl::LaunchDependent(RopeKvVecKernel<T, 8>, grid, block, stream, a);
  };
  if (a.dtype == DType::kBF16) {
    launch(__nv_bfloat16{});
  } else {
    launch(__half{});
  }
  return cudaGetLastError();
}

cudaError_t DecodeAttention(const DecodeAttnArgs& a, cudaStream_t stream) {
  if (a.batch < 1 || a.heads < 1 || a.kv_heads < 1 || a.heads % a.kv_heads != 0 ||
      a.heads / a.kv_heads > kMaxGroup || a.head_dim % 32 != 0 || a.head_dim < 32 || a.head_dim > 256 ||
      a.splits < 1 || a.splits > kMaxSplits || a.max_seq < 1 || a.q == nullptr || a.k_cache == nullptr ||
      a.v_cache == nullptr || a.workspace == nullptr || a.out == nullptr) {
    return cudaErrorInvalidValue;
  }
  const bool bf16 = a.dtype == DType::kBF16;
  switch (a.head_dim / 32) {
#define BIGPLAN_ATTN_CASE(E)                                    \
  case E:                                                      \
    if (bf16) {                                                \
      LaunchAttn<__nv_bfloat16, E>(a, stream);                 \
    } else {                                                   \
      LaunchAttn<__half, E>(a, stream);                        \
    }                                                          \
    break;
    BIGPLAN_ATTN_CASE(1)
    BIGPLAN_ATTN_CASE(2)
    BIGPLAN_ATTN_CASE(3)
    BIGPLAN_ATTN_CASE(4)
    BIGPLAN_ATTN_CASE(5)
    BIGPLAN_ATTN_CASE(6)
    BIGPLAN_ATTN_CASE(7)
    BIGPLAN_ATTN_CASE(8)
#undef BIGPLAN_ATTN_CASE
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

// ---- RouterTopK: one warp, softmax as PyTorch's warp softmax, then the top by repeated warp argmax ----

namespace {

__device__ __forceinline__ float LoadElem(const void* p, Elem e, int64_t i) {
  switch (e) {
    case Elem::kBF16: return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    case Elem::kF16: return __half2float(static_cast<const __half*>(p)[i]);
    default: return static_cast<const float*>(p)[i];
  }
}
__device__ __forceinline__ void StoreElem(void* p, Elem e, int64_t i, float v) {
  switch (e) {
    case Elem::kBF16: static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v); break;
    case Elem::kF16: static_cast<__half*>(p)[i] = __float2half_rn(v); break;
    default: static_cast<float*>(p)[i] = v; break;
  }
}

__global__ void RouterTopKKernel(Elem le, const void* __restrict__ logits, int n, int top, bool renorm,
                                 int64_t* __restrict__ ids, Elem we, void* __restrict__ weights, RouterExport ex) {
  __shared__ float p[kTopRowsMax];
  __shared__ float pick_v[64];
  __shared__ int pick_i[64];
  pdl::PdlBegin();  // executor/pdl.cuh: after the router's product, then the next may be scheduled
  // Warps past the first copy x for the host (stores to mapped memory, spread so that none waits long).
  if (threadIdx.x >= 32) {
    if (ex.host_x != nullptr) {
      for (int64_t i = threadIdx.x - 32; i < ex.x_n; i += blockDim.x - 32) ex.host_x[i] = LoadElem(ex.x, ex.x_elem, i);
    }
    return;
  }
  const int lane = threadIdx.x;
  float m = -INFINITY;
  for (int i = lane; i < n; i += 32) {
    const float v = LoadElem(logits, le, i);
    p[i] = v;
    m = m > v ? m : v;
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float other = __shfl_xor_sync(0xffffffffu, m, o);
    m = m > other ? m : other;
  }
  float s = 0.f;
  for (int i = lane; i < n; i += 32) {
    const float e = expf(p[i] - m);
    p[i] = e;
    s += e;
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  for (int i = lane; i < n; i += 32) p[i] = p[i] / s;
  __syncwarp();
  for (int t = 0; t < top; ++t) {
    float v;
    int idx;
    WarpArgMax(p, lane, 32, n, &v, &idx);
    if (lane == 0) {
      if (idx >= n) idx = 0;  // (only with NaN probabilities)
      pick_i[t] = idx;
      pick_v[t] = p[idx];
      p[idx] = -INFINITY;
    }
    __syncwarp();
  }
  if (lane == 0) {
    float sum = 0.f;
    for (int t = 0; t < top; ++t) sum += pick_v[t];
    for (int t = 0; t < top; ++t) {
      ids[t] = pick_i[t];
      StoreElem(weights, we, t, renorm ? pick_v[t] / sum : pick_v[t]);
      if (ex.host_ids != nullptr) ex.host_ids[t] = pick_i[t];
      if (ex.host_weights != nullptr) ex.host_weights[t] = LoadElem(weights, we, t);
    }
  }
}

// ---- ExpertSum: one thread per output value, the experts in order ----

__device__ __forceinline__ float RoundTo(Elem e, float v) {
  switch (e) {
    case Elem::kBF16: return __bfloat162float(__float2bfloat16_rn(v));
    case Elem::kF16: return __half2float(__float2half_rn(v));
    default: return v;
  }
}

__global__ void ExpertSumKernel(Elem e, const void* __restrict__ y, Elem we, const void* __restrict__ w, int n,
                                int64_t tokens, int64_t hidden, void* __restrict__ out) {
  const int64_t values = tokens * hidden;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < values;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = idx / hidden;
    float sum = 0.f;
    for (int i = 0; i < n; ++i) sum += RoundTo(e, LoadElem(y, e, i * values + idx) * LoadElem(w, we, i * tokens + t));
    StoreElem(out, e, idx, LoadElem(out, e, idx) + RoundTo(e, sum));
  }
}

// ---- WaitFlagAdd: every block waits for the host's number (thread 0 polls), then adds its part of y ----

__global__ void WaitFlagAddKernel(const volatile uint32_t* flag, uint32_t value, uint64_t timeout_ns,
                                  volatile uint32_t* timed_out, Elem oe, void* out, const volatile float* y,
                                  int64_t n, unsigned long long* waited_ns) {
  if (threadIdx.x == 0) PollFlag(flag, value, timeout_ns, timed_out, blockIdx.x == 0 ? waited_ns : nullptr);
  __syncthreads();
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float v = y[i];
    if (oe == Elem::kBF16) v = __bfloat162float(__float2bfloat16_rn(v));
    if (oe == Elem::kF16) v = __half2float(__float2half_rn(v));
    StoreElem(out, oe, i, LoadElem(out, oe, i) + v);
  }
}

// ---- MoeExperts: one warp per output row; each lane reads 16 bytes of every row it multiplies per step ----

// out[r] = w[r] . x[r] over n elements (n % (16 / sizeof(T)) == 0, 16-byte aligned rows) for R rows, each with its own
// x, summed over the warp (every lane gets the sums).
template <typename T, int R>
__device__ __forceinline__ void WarpDots(const T* const (&w)[R], const T* const (&x)[R], int64_t n, float (&out)[R]) {
  constexpr int V = 16 / sizeof(T);
  constexpr int U = R <= 2 ? 4 : R <= 4 ? 2 : 1;  // steps whose loads are issued together (U x R weight loads)
  constexpr int64_t kStep = 32 * V;
  const int lane = threadIdx.x & 31;
  float acc[R];
#pragma unroll
  for (int r = 0; r < R; ++r) acc[r] = 0.f;
  const auto step = [&](const uint4 (&wv)[R], const uint4 (&xv)[R]) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const T* wp = reinterpret_cast<const T*>(&wv[r]);
      const T* xp = reinterpret_cast<const T*>(&xv[r]);
#pragma unroll
      for (int i = 0; i < V; ++i) acc[r] = fmaf(F<T>(wp[i]), F<T>(xp[i]), acc[r]);
    }
  };
  int64_t c = lane * V;
  for (; c + (U - 1) * kStep < n; c += U * kStep) {
    uint4 wv[U][R], xv[U][R];
#pragma unroll
    for (int u = 0; u < U; ++u) {
#pragma unroll
      for (int r = 0; r < R; ++r) {
        wv[u][r] = __ldg(reinterpret_cast<const uint4*>(w[r] + c + u * kStep));
        xv[u][r] = *reinterpret_cast<const uint4*>(x[r] + c + u * kStep);
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) step(wv[u], xv[u]);
  }
  for (; c < n; c += kStep) {
    uint4 wv[R], xv[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      wv[r] = __ldg(reinterpret_cast<const uint4*>(w[r] + c));
      xv[r] = *reinterpret_cast<const uint4*>(x[r] + c);
    }
    step(wv, xv);
  }
#pragma unroll
  for (int r = 0; r < R; ++r) out[r] = WarpSum(acc[r]);
}

constexpr int kMoeWarps = 8;      // MoeGateUpKernel's warps a block
constexpr int kMoeDownWarps = 4;  // MoeDownKernel's

// A token's k <= 32 choices `ids` (distinct experts) in expert order: order[0..k) holds their indices by increasing
// expert (an insertion sort: k is small).
__device__ __forceinline__ void ExpertOrder(const int64_t* ids, int k, int (&order)[32]) {
  for (int i = 0; i < k; ++i) {
    const int64_t e = ids[i];
    int at = i;
    while (at > 0 && ids[order[at - 1]] > e) {
      order[at] = order[at - 1];
      --at;
    }
    order[at] = i;
  }
}

// grid (ceil(inter / kMoeWarps), tokens * k): warp w of block (b, j) computes h[j, b * kMoeWarps + w].
// Launched as a programmatic dependent (executor/pdl.cuh): it waits for the router's choices, and lets the down
// products be scheduled only once its blocks are done (they would hold the places its later blocks need).
template <typename T>
__global__ void __launch_bounds__(kMoeWarps * 32) MoeGateUpKernel(const MoeArgs a) {
  pdl::PdlWait();
  const int64_t j = blockIdx.y, r = static_cast<int64_t>(blockIdx.x) * kMoeWarps + (threadIdx.x >> 5);
  if (r >= a.inter) return;
  const int64_t e = a.ids[j];
  T* h = static_cast<T*>(a.h) + j * a.inter + r;
  if (e < 0 || e >= a.num_experts) {
    if ((threadIdx.x & 31) == 0) *h = ToT<T>(NAN);
    return;
  }
  const T* gu = reinterpret_cast<const T*>(a.gate_up[e]);
  const T* x = static_cast<const T*>(a.x) + (j / a.k) * a.hidden;
  const T* const rows[2] = {gu + r * a.hidden, gu + (a.inter + r) * a.hidden};
  const T* const xs[2] = {x, x};
  float d[2];
  WarpDots<T, 2>(rows, xs, a.hidden, d);
  if ((threadIdx.x & 31) == 0) {
    const float g = Round<T>(d[0]), u = Round<T>(d[1]);
    const float act = Round<T>(g / (1.f + expf(-g)));  // SiLU, as PyTorch computes it in float
    *h = ToT<T>(act * u);
  }
  pdl::PdlLaunchDependents();
}

// grid (ceil(hidden / kMoeDownWarps), tokens): warp w of block (b, t) computes out[t, b * kMoeDownWarps + w], token
// t's choices taken in expert order, R products at a time (their rows' loads in flight together: with few columns
// of `inter` a warp's products are short, and one at a time they would wait on memory in turn), plus the residual's
// value where there is one (rounded after the sum, as adding the two tensors rounds). A programmatic dependent: it
// waits for the gate/up products, and lets the next kernel be scheduled once its own products are done.
template <typename T, int R>
__global__ void __launch_bounds__(kMoeDownWarps * 32) MoeDownKernel(const MoeArgs a) {
  pdl::PdlWait();
  const int64_t t = blockIdx.y, c = static_cast<int64_t>(blockIdx.x) * kMoeDownWarps + (threadIdx.x >> 5);
  if (c >= a.hidden) return;
  // Token t's choices by expert (an invalid one poisons the row).
  int order[32];
  const int k = static_cast<int>(a.k);
  ExpertOrder(a.ids + t * a.k, k, order);
  bool bad = false;
  for (int i = 0; i < k; ++i) bad = bad || a.ids[t * a.k + i] < 0 || a.ids[t * a.k + i] >= a.num_experts;
  T* out = static_cast<T*>(a.out) + t * a.hidden + c;
  if (bad) {
    if ((threadIdx.x & 31) == 0) *out = ToT<T>(NAN);
    return;
  }
  float sum = 0.f;
  for (int i0 = 0; i0 < k; i0 += R) {
    const T* rows[R];
    const T* hs[R];
#pragma unroll
    for (int q = 0; q < R; ++q) {
      // (Past the last choice, a group multiplies its last row again and keeps one result.)
      const int j = static_cast<int>(t * a.k) + order[i0 + q < k ? i0 + q : k - 1];
      rows[q] = reinterpret_cast<const T*>(a.down[a.ids[j]]) + c * a.inter;
      hs[q] = static_cast<const T*>(a.h) + j * a.inter;
    }
    float d[R];
    WarpDots<T, R>(rows, hs, a.inter, d);
#pragma unroll
    for (int q = 0; q < R; ++q) {
      if (i0 + q >= k) break;
      const int64_t j = t * a.k + order[i0 + q];
      const float y = Round<T>(d[q]);
      sum = Round<T>(sum + Round<T>(y * LoadElem(a.w, a.w_elem, j)));
    }
  }
  pdl::PdlLaunchDependents();
  if ((threadIdx.x & 31) == 0) {
    const T* residual = static_cast<const T*>(a.residual);
    *out = ToT<T>(residual != nullptr ? F<T>(residual[t * a.hidden + c]) + sum : sum);
  }
}

template <typename T>
void LaunchMoe(const MoeArgs& a, cudaStream_t stream) {
  const dim3 gu(static_cast<unsigned>((a.inter + kMoeWarps - 1) / kMoeWarps), static_cast<unsigned>(a.tokens * a.k));
  pdl::LaunchDependent(MoeGateUpKernel<T>, gu, dim3(kMoeWarps * 32), stream, a);
  const dim3 dn(static_cast<unsigned>((a.hidden + kMoeDownWarps - 1) / kMoeDownWarps), static_cast<unsigned>(a.tokens));
  if (a.k >= 8) {
    pdl::LaunchDependent(MoeDownKernel<T, 8>, dn, dim3(kMoeDownWarps * 32), stream, a);
  } else if (a.k >= 4) {
    pdl::LaunchDependent(MoeDownKernel<T, 4>, dn, dim3(kMoeDownWarps * 32), stream, a);
  } else {
    pdl::LaunchDependent(MoeDownKernel<T, 2>, dn, dim3(kMoeDownWarps * 32), stream, a);
  }
}

}  // namespace

cudaError_t MoeExperts(const MoeArgs& a, cudaStream_t stream) {
  const auto aligned = [](uint64_t p) { return p != 0 && (p & 15u) == 0; };
  if (a.x == nullptr || a.ids == nullptr || a.w == nullptr || a.h == nullptr || a.out == nullptr ||
      a.num_experts < 1 || a.num_experts > kMoeMaxExperts || a.tokens < 1 || a.tokens > kMoeMaxTokens || a.k < 1 ||
      a.k > 32 || a.hidden < 8 || a.hidden % 8 != 0 || a.inter < 8 || a.inter % 8 != 0 ||
      !aligned(reinterpret_cast<uint64_t>(a.x)) || !aligned(reinterpret_cast<uint64_t>(a.h))) {
    return cudaErrorInvalidValue;
  }
  for (int64_t e = 0; e < a.num_experts; ++e) {
    if (!aligned(a.gate_up[e]) || !aligned(a.down[e])) return cudaErrorInvalidValue;
  }
  switch (a.elem) {
    case Elem::kBF16: LaunchMoe<__nv_bfloat16>(a, stream); break;
    case Elem::kF16: LaunchMoe<__half>(a, stream); break;
    case Elem::kF32: LaunchMoe<float>(a, stream); break;
  }
  return cudaGetLastError();
}

namespace {

__global__ void __launch_bounds__(1024) MoeRouteKernel(const int64_t* ids, int64_t pairs, int64_t k,
                                                      int64_t num_experts, int32_t* offs, int64_t* token,
                                                      int64_t* place) {
  __shared__ int count[kMoeRouteMaxExperts], cursor[kMoeRouteMaxExperts];
  for (int64_t e = threadIdx.x; e < num_experts; e += blockDim.x) count[e] = 0;
  for (int64_t s = threadIdx.x; s < pairs; s += blockDim.x) token[s] = 0;
  __syncthreads();
  for (int64_t p = threadIdx.x; p < pairs; p += blockDim.x) {
    const int64_t e = ids[p];
    if (e >= 0 && e < num_experts) atomicAdd(&count[e], 1);
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int run = 0;
    for (int64_t e = 0; e < num_experts; ++e) {
      cursor[e] = run;
      run += count[e];
      offs[e] = run;
    }
  }
  __syncthreads();
  for (int64_t p = threadIdx.x; p < pairs; p += blockDim.x) {
    const int64_t e = ids[p];
    if (e >= 0 && e < num_experts) {
      const int s = atomicAdd(&cursor[e], 1);
      token[s] = p / k;
      place[p] = s;
    } else {
      place[p] = -1;
    }
  }
}

// grid (ceil(hidden / 256), tokens), 256 threads: thread i of block (b, t) writes out[t, b * 256 + i].
template <typename T>
__global__ void __launch_bounds__(256) MoeCombineKernel(const T* y, int64_t y_stride, Elem w_elem, const void* w,
                                                        const int64_t* ids, const int64_t* place, int64_t k,
                                                        int64_t hidden, T* out) {
  const int64_t t = blockIdx.y, c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= hidden) return;
  // Token t's choices by expert.
  int order[32];
  const int kk = static_cast<int>(k);
  ExpertOrder(ids + t * k, kk, order);
  float sum = 0.f;
  for (int i = 0; i < kk; ++i) {
    const int64_t j = t * k + order[i];
    const int64_t s = place[j];
    if (s < 0) {
      sum = NAN;
      break;
    }
    sum = Round<T>(sum + Round<T>(F<T>(y[s * y_stride + c]) * LoadElem(w, w_elem, j)));
  }
  out[t * hidden + c] = ToT<T>(sum);
}

}  // namespace

cudaError_t MoeRoute(const int64_t* ids, int64_t pairs, int64_t k, int64_t num_experts, int32_t* offs,
                     int64_t* token, int64_t* place, cudaStream_t stream) {
  if (ids == nullptr || offs == nullptr || token == nullptr || place == nullptr || pairs < 1 || k < 1 ||
      num_experts < 1 || num_experts > kMoeRouteMaxExperts || pairs > (int64_t{1} << 30)) {
    return cudaErrorInvalidValue;
  }
  MoeRouteKernel<<<1, 1024, 0, stream>>>(ids, pairs, k, num_experts, offs, token, place);
  return cudaGetLastError();
}

cudaError_t MoeCombine(Elem elem, const void* y, int64_t y_stride, Elem w_elem, const void* w, const int64_t* ids,
                       const int64_t* place, int64_t tokens, int64_t k, int64_t hidden, void* out,
                       cudaStream_t stream) {
  if (y == nullptr || w == nullptr || ids == nullptr || place == nullptr || out == nullptr || tokens < 1 ||
      tokens > 65535 || k < 1 || k > 32 || hidden < 1 || y_stride < hidden) {
    return cudaErrorInvalidValue;
  }
  const dim3 grid(static_cast<unsigned>((hidden + 255) / 256), static_cast<unsigned>(tokens));
  switch (elem) {
    case Elem::kBF16:
      MoeCombineKernel<__nv_bfloat16><<<grid, 256, 0, stream>>>(static_cast<const __nv_bfloat16*>(y), y_stride, w_elem,
                                                                w, ids, place, k, hidden,
                                                                static_cast<__nv_bfloat16*>(out));
      break;
    case Elem::kF16:
      MoeCombineKernel<__half><<<grid, 256, 0, stream>>>(static_cast<const __half*>(y), y_stride, w_elem, w, ids,
                                                         place, k, hidden, static_cast<__half*>(out));
      break;
    case Elem::kF32:
      MoeCombineKernel<float><<<grid, 256, 0, stream>>>(static_cast<const float*>(y), y_stride, w_elem, w, ids, place,
                                                        k, hidden, static_cast<float*>(out));
      break;
  }
  return cudaGetLastError();
}

cudaError_t RouterTopK(Elem logits_elem, const void* logits, int64_t n, int top, bool renorm, int64_t* ids,
                       Elem weight_elem, void* weights, cudaStream_t stream) {
  if (n < 1 || n > kTopRowsMax || top < 1 || top > 64 || top > n || logits == nullptr || ids == nullptr ||
      weights == nullptr) {
    return cudaErrorInvalidValue;
  }
  return pdl::LaunchDependent(RouterTopKKernel, dim3(1), dim3(32), stream, logits_elem, logits, static_cast<int>(n), top,
                              renorm, ids, weight_elem, weights, RouterExport{});
}

cudaError_t RouterTopK(Elem logits_elem, const void* logits, int64_t n, int top, bool renorm, int64_t* ids,
                       Elem weight_elem, void* weights, const RouterExport& exported, cudaStream_t stream) {
  if (n < 1 || n > kTopRowsMax || top < 1 || top > 64 || top > n || logits == nullptr || ids == nullptr ||
      weights == nullptr || (exported.host_x != nullptr && (exported.x == nullptr || exported.x_n < 0))) {
    return cudaErrorInvalidValue;
  }
  const unsigned threads = exported.host_x != nullptr ? 32 + 256 : 32;
  return pdl::LaunchDependent(RouterTopKKernel, dim3(1), dim3(threads), stream, logits_elem, logits, static_cast<int>(n),
                              top, renorm, ids, weight_elem, weights, exported);
}

cudaError_t ExpertSum(Elem elem, const void* y, Elem w_elem, const void* w, int64_t n, int64_t tokens, int64_t hidden,
                      void* out, cudaStream_t stream) {
  if (y == nullptr || w == nullptr || out == nullptr || n < 1 || n > (int64_t{1} << 20) || tokens < 1 || hidden < 1) {
    return cudaErrorInvalidValue;
  }
  constexpr int kThreads = 256;
  const int64_t blocks = std::min<int64_t>((tokens * hidden + kThreads - 1) / kThreads, 4096);
  ExpertSumKernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(elem, y, w_elem, w, static_cast<int>(n),
                                                                          tokens, hidden, out);
  return cudaGetLastError();
}

cudaError_t WaitFlagAdd(const uint32_t* flag, uint32_t value, uint64_t timeout_ns, uint32_t* timed_out, Elem out_elem,
                        void* out, const float* y, int64_t n, cudaStream_t stream, uint64_t* waited_ns) {
  if (flag == nullptr || timed_out == nullptr || out == nullptr || y == nullptr || n < 0) return cudaErrorInvalidValue;
  // One block (its thread 0 polls, as WaitFlag's one thread does) per 8192 values, at most 16: a decode step's sum
  // is one block, and each thread's loads from mapped memory are few.
  constexpr int kThreads = 1024;
  const int64_t blocks = std::min<int64_t>(std::max<int64_t>(1, (n + 8191) / 8192), 16);
  WaitFlagAddKernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(flag, value, timeout_ns, timed_out,
                                                                            out_elem, out, y, n,
                                                                            reinterpret_cast<unsigned long long*>(waited_ns));
  return cudaGetLastError();
}

cudaError_t TopRows(DType dtype, const void* x, const float* scale, const void* w, int64_t n, int64_t k, int top,
                    int64_t* out, cudaStream_t stream) {
  const auto aligned = [](const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; };
  if (n < 1 || n > kTopRowsMax || k < 8 || k % 8 != 0 || top < 1 || top > 64 || top > n || x == nullptr ||
      scale == nullptr || w == nullptr || out == nullptr || !aligned(x) || !aligned(scale) || !aligned(w)) {
    return cudaErrorInvalidValue;
  }
  if (dtype == DType::kBF16) {
    TopRowsKernel<__nv_bfloat16><<<1, 1024, 0, stream>>>(static_cast<const __nv_bfloat16*>(x), scale,
                                                         static_cast<const __nv_bfloat16*>(w), static_cast<int>(n), k,
                                                         top, out);
  } else {
    TopRowsKernel<__half><<<1, 1024, 0, stream>>>(static_cast<const __half*>(x), scale,
                                                  static_cast<const __half*>(w), static_cast<int>(n), k, top, out);
  }
  return cudaGetLastError();
}

cudaError_t WaitFlag(const uint32_t* flag, uint32_t value, uint64_t timeout_ns, uint32_t* timed_out,
                     cudaStream_t stream) {
  if (flag == nullptr || timed_out == nullptr) return cudaErrorInvalidValue;
  WaitFlagKernel<<<1, 1, 0, stream>>>(flag, value, timeout_ns, timed_out);
  return cudaGetLastError();
}

int DecodeAttentionSplits(int64_t batch, int64_t kv_heads, int64_t max_len, int sms, int min_chunk) {
  const int64_t blocks = std::max<int64_t>(1, batch * kv_heads);
  const int64_t want = (2 * std::max(1, sms) + blocks - 1) / blocks;
  const int64_t chunk = std::max(1, min_chunk);
  const int64_t by_len = std::max<int64_t>(1, (max_len + chunk - 1) / chunk);
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>({want, by_len, 64})));
}

}  // namespace bigplan::fused
