// Fused CUDA kernels for the Llama-family decoder layer (CUDA C++ built by nvcc, executor/BUILD): a matrix-vector
// product for decode-sized batches with its bias and residual in the epilogue, RMSNorm in one pass, SiLU(gate) * up
// in one pass, RoPE (with Qwen3's per-head q/k RMSNorm) fused with the KV-cache write, and a split-K
// (flash-decoding) attention over the cache that reads only the positions a token attends to.
//
// This header is plain C++ (no LibTorch): executor/fused_ops.h wraps it for at::Tensor. Every launcher checks its
// arguments (returning cudaErrorInvalidValue without launching when they do not fit the preconditions stated) and
// returns the launch's error; none synchronizes the host. Pointers are device pointers; strides are in elements.
// Rounding follows transformers' modules in the execution dtype: every value a PyTorch op would round to bf16/fp16 is
// rounded here too (products and sums accumulate in float32).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace bigplan::fused {

enum class DType : int { kBF16 = 0, kF16 = 1 };

// The most rows of x Gemv takes (decode batches of 1 or 2; at 4 and 8 rows cuBLAS reads large matrices faster,
// benchmarks/gpu/fused_ops_bench).
inline constexpr int kGemvMaxRows = 2;

// The matrix-vector product (Gemv, with GemvArgs below, after the RoPE arguments it may take):
// y[i, r] = round(x[i, :] . w[r, :] + bias[r]), then (with `residual`) y[i, r] = round(y[i, r] + residual[i, r]),
// for i < m <= kGemvMaxRows, r < n; w is [n, k] row-major (nn.Linear's layout). k % 8 == 0; x, w and the row
// strides 16-byte aligned (x_stride % 8 == 0). bias and residual may be null. y may alias residual.

// The `top` largest of s[r] = sum_j x[j] * scale[j] * w[r, j] (float32 sums; r < n), their indices written to
// out[0..top) from the largest (ties: the lower index); w is [n, k] row-major. A prediction of which experts a router
// picks (executor/expert_engine.h), not a rounding-faithful product. k % 8 == 0 and x, scale, w 16-byte aligned;
// 1 <= n <= kTopRowsMax, 1 <= top <= min(n, 64). `out` may be mapped host memory.
inline constexpr int64_t kTopRowsMax = 4096;
cudaError_t TopRows(DType dtype, const void* x, const float* scale, const void* w, int64_t n, int64_t k, int top,
                    int64_t* out, cudaStream_t stream);

// A router's choices for one token, as transformers' MoE blocks make them: p = softmax(float32(logits[0..n))) (the
// max, then exp(x - max) summed per lane of one warp, lane l taking l, l + 32, ..., and the lanes' sums combined by
// XOR shuffles, as PyTorch's warp softmax does for n <= 1024), the `top` largest p (ties: the lower index) written
// to ids[0..top) from the largest, and their p, divided by their sum when `renorm`, to weights[0..top) in
// `weight_elem`. 1 <= n <= kTopRowsMax, 1 <= top <= min(n, 64).
enum class Elem : int { kBF16 = 0, kF16 = 1, kF32 = 2 };
cudaError_t RouterTopK(Elem logits_elem, const void* logits, int64_t n, int top, bool renorm, int64_t* ids,
                       Elem weight_elem, void* weights, cudaStream_t stream);
// The same, also writing a copy for the host (each pointer may be null, e.g. mapped pinned memory): host_ids[0..top)
// the ids, host_weights[0..top) each stored weight's value as float32, and host_x[0..x_n) = float32(x[0..x_n))
// (x of `x_elem`: the router's input, which the host's experts read).
struct RouterExport {
  int64_t* host_ids = nullptr;
  float* host_weights = nullptr;
  const void* x = nullptr;
  Elem x_elem = Elem::kF32;
  int64_t x_n = 0;
  float* host_x = nullptr;
};
cudaError_t RouterTopK(Elem logits_elem, const void* logits, int64_t n, int top, bool renorm, int64_t* ids,
                       Elem weight_elem, void* weights, const RouterExport& exported, cudaStream_t stream);

// Makes `stream` wait until the 32-bit sequence number at `flag` (written by the host, in mapped pinned memory) has
// reached `value` (wrapping: (int32)(*flag - value) >= 0), polling it from one thread. After `timeout_ns` of
// waiting it gives up and sets *timed_out = 1 (mapped memory too), so a host that never writes cannot hang the GPU.
cudaError_t WaitFlag(const uint32_t* flag, uint32_t value, uint64_t timeout_ns, uint32_t* timed_out,
                     cudaStream_t stream);
// A group of experts' outputs combined: out[t, j] = round(float(out[t, j]) + float(round(sum_i round(y[i, t, j] *
// w[i, t])))) for y [n, tokens, hidden] and out [tokens, hidden] of `elem`, w [n, tokens] of `w_elem` (float32 sums;
// round: to `elem`), as LibTorch's out.add_((y * w).to(y's dtype).sum(0)) computes it. n >= 1.
cudaError_t ExpertSum(Elem elem, const void* y, Elem w_elem, const void* w, int64_t n, int64_t tokens, int64_t hidden,
                      void* out, cudaStream_t stream);

// WaitFlag, then out[i] = round(float(out[i]) + float(round(y[i]))) for i < n (out of `out_elem` in device memory; y
// float32, e.g. the host's sum in mapped pinned memory, read only once the flag has reached `value`): the wait and
// what LibTorch's out + y.to(out's dtype) computes, in one kernel. `waited_ns` (optional, device-writable, e.g. mapped
// pinned memory): the nanoseconds the GPU spent polling are added to it.
cudaError_t WaitFlagAdd(const uint32_t* flag, uint32_t value, uint64_t timeout_ns, uint32_t* timed_out, Elem out_elem,
                        void* out, const float* y, int64_t n, cudaStream_t stream, uint64_t* waited_ns = nullptr);

// Routed experts resident on the GPU, for a few tokens, without the host (so a decode step may be captured in a
// graph): the chosen experts' SwiGLU products read their matrices through tables of addresses indexed by the router's
// choices. For choice j = t * k + i of token t (expert e = ids[j]):
//   h[j, r] = round(round(silu(round(gate_e[r] . x[t]))) * round(up_e[r] . x[t]))            (r < inter)
//   out[t, c] = the sum over t's choices in expert order, from 0, of round(round(down_e[c] . h[j]) * w[j]), rounded
//               after each addition: what transformers' index_add_ of each expert's weighted output does.
// gate_up[e]: the address of expert e's [2 inter, hidden] rows (gate's, then up's), down[e]: its [hidden, inter]
// matrix, row-major; x [tokens, hidden], h [tokens * k, inter] (scratch) and out [tokens, hidden] contiguous, all of
// `elem`; w [tokens, k] of `w_elem`; ids int64 [tokens, k] (an id outside [0, num_experts) makes its outputs NaN).
// hidden % 8 == 0 and inter % 8 == 0, every address 16-byte aligned; 1 <= num_experts <= kMoeMaxExperts,
// 1 <= tokens <= kMoeMaxTokens, 1 <= k <= 32. Sums in float32.
inline constexpr int kMoeMaxExperts = 128;
inline constexpr int kMoeMaxTokens = 16;
struct MoeArgs {
  Elem elem = Elem::kBF16;
  const void* x = nullptr;
  const int64_t* ids = nullptr;
  Elem w_elem = Elem::kF32;
  const void* w = nullptr;
  int64_t tokens = 0, k = 0, hidden = 0, inter = 0, num_experts = 0;
  uint64_t gate_up[kMoeMaxExperts] = {};
  uint64_t down[kMoeMaxExperts] = {};
  void* h = nullptr;
  void* out = nullptr;
  // [tokens, hidden] contiguous, of `elem`, or null: out = round(residual + the experts' sum), rounded as adding the
  // two tensors rounds. Must not overlap out.
  const void* residual = nullptr;
};
cudaError_t MoeExperts(const MoeArgs& a, cudaStream_t stream);

// A prompt's (token, choice) pairs grouped by expert, for grouped products over every expert. For ids int64
// [pairs] (pair p: token p / k, choice p % k) over num_experts experts (1 <= num_experts <= kMoeRouteMaxExperts,
// 1 <= pairs): offs[e] (int32) = the number of pairs choosing experts 0..e; the pairs of expert e take sorted places
// [offs[e-1], offs[e]) (their order within an expert is unspecified); token[s] (int64 [pairs]) = the token of the
// pair at sorted place s, 0 past the pairs with a valid id; place[p] (int64 [pairs]) = pair p's sorted place, -1
// for an id outside [0, num_experts). One block.
inline constexpr int kMoeRouteMaxExperts = 1024;
cudaError_t MoeRoute(const int64_t* ids, int64_t pairs, int64_t k, int64_t num_experts, int32_t* offs,
                     int64_t* token, int64_t* place, cudaStream_t stream);
// The pairs' outputs combined per token: out[t, c] = the sum over token t's choices in expert order, from 0, of
// round(y[place[t k + j], c] x w[t, j]) rounded after each addition (the host-dispatched path's index_add_ of each
// expert's weighted output), for y [rows, hidden] (row stride y_stride) and out [tokens, hidden] contiguous, both of
// `elem`, w [tokens, k] of `w_elem`, ids and place int64 [tokens, k] (a place of -1 makes the row NaN); k <= 32.
cudaError_t MoeCombine(Elem elem, const void* y, int64_t y_stride, Elem w_elem, const void* w, const int64_t* ids,
                       const int64_t* place, int64_t tokens, int64_t k, int64_t hidden, void* out,
                       cudaStream_t stream);

// LlamaRMSNorm of each row: out = round(w * round(x * rsqrt(mean(x^2) + eps))) with the mean in float32.
cudaError_t RmsNorm(DType dtype, const void* x, int64_t x_stride, const void* w, void* out, int64_t out_stride,
                    int64_t rows, int64_t cols, float eps, cudaStream_t stream);

// out[i, j] = round(round(silu(gu[i, j])) * gu[i, inter + j]) for gu [rows, 2 inter] ([gate | up] per row), out
// [rows, inter] contiguous; rows <= 65535.
cudaError_t SiluMul(DType dtype, const void* gu, int64_t gu_stride, void* out, int64_t rows, int64_t inter,
                    cudaStream_t stream);

// Token t = b * seq + s of a step (row b of the batch, its s-th new token) sits at position pos(b) + s, where pos(b)
// is pos_dev[pos_per_row ? b : 0] when pos_dev is set, else pos_host; its cache row is rows_dev[b] when set, else b.
struct Positions {
  const int64_t* pos_dev = nullptr;
  bool pos_per_row = false;
  int64_t pos_host = 0;
  const int64_t* rows_dev = nullptr;
};

// RoPE (rotate_half, cos/sin tables [table_rows, head_dim] in the execution dtype indexed by position) of q and k,
// after an optional per-head RMSNorm of each (q_norm / k_norm [head_dim], Qwen3), fused with the KV-cache write:
// q_out [batch, seq, heads, head_dim] (contiguous, token-major) gets the rotated q; k_cache/v_cache [cache_rows, kv_heads,
// max_seq, head_dim] (contiguous) get the rotated k and v at each token's position of its cache row. q, k, v are
// token rows ([batch * seq] rows of heads * head_dim / kv_heads * head_dim values at the given strides, e.g. views
// of one fused qkv product). head_dim even and <= 256. Tokens whose position falls outside [0, max_seq) or the table
// are not written (callers check positions they know on the host).
struct RopeKvArgs {
  DType dtype = DType::kBF16;
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  int64_t q_stride = 0, k_stride = 0, v_stride = 0;
  int64_t batch = 0, seq = 0, heads = 0, kv_heads = 0, head_dim = 0;
  const void* cos = nullptr;
  const void* sin = nullptr;
  int64_t table_rows = 0;
  Positions at;
  void* k_cache = nullptr;
  void* v_cache = nullptr;
  int64_t cache_rows = 0, max_seq = 0;
  const void* q_norm = nullptr;
  const void* k_norm = nullptr;
  float eps = 0;
  void* q_out = nullptr;
};
cudaError_t RopeKvWrite(const RopeKvArgs& a, cudaStream_t stream);

// Gemv: the product above, with what may precede and follow it in a decoder layer fused into it (one kernel):
//   - norm_w set: x's rows first become RMSNorm's rows, round(norm_w * round(x * rsqrt(mean(x^2) + eps))), the
//     bits RmsNorm computes (the same float32 sum in the same order), staged in shared memory: m x k elements of
//     2 bytes, at most GemvNormSmemBytes(m, k, 2) <= kGemvNormMaxSmem. norm_w [k], 16-byte aligned.
//   - out = kRows: the plain product's y (bias, residual).
//   - out = kSiluPairs: w holds [gate; up] (n = 2 inter rows); y[i, j] = SiluMul's value of the plain product's
//     row i (gate j and up inter + j, each rounded after its bias), for j < inter; no residual.
//   - out = kRope: w holds [q; k; v] (n = (heads + 2 kv_heads) head_dim rows, bias [n] or null); the product's
//     token rows (m = batch x seq) go through RopeKvWrite with `rope`'s tables, positions, caches and q_out (its
//     q/k/v pointers and strides are not read; q_norm and k_norm must be null): the same bits RopeKvWrite writes,
//     and nothing else is written. No residual.
// The other preconditions are the plain product's (above).
enum class GemvOut : int { kRows = 0, kSiluPairs = 1, kRope = 2 };
struct GemvArgs {
  DType dtype = DType::kBF16;
  const void* x = nullptr;
  int64_t x_stride = 0;
  const void* w = nullptr;
  const void* bias = nullptr;
  const void* residual = nullptr;
  int64_t residual_stride = 0;
  void* y = nullptr;
  int64_t y_stride = 0;
  int m = 0;
  int64_t n = 0, k = 0;
  const void* norm_w = nullptr;
  float eps = 0;
  // With norm_w: also RmsNorm(x)'s rows, m x k contiguous, written here (the bits RmsNorm writes), or null.
  void* norm_out = nullptr;
  GemvOut out = GemvOut::kRows;
  RopeKvArgs rope;
};
inline constexpr int64_t kGemvNormMaxSmem = 48 * 1024;
constexpr size_t GemvNormSmemBytes(int m, int64_t k, size_t element_bytes) {
  return static_cast<size_t>(m) * static_cast<size_t>(k) * element_bytes + 32 * sizeof(float);
}
cudaError_t Gemv(const GemvArgs& a, cudaStream_t stream);

// y[i, r] = T(T(sum_c q[r, c] * x[i, c]) * s[r]) for i < m <= kGemvMaxRows, r < n: a row-quantized weight with one
// float32 scale per row (formats/quant.h: fp8 e4m3 or int8 values `q`, group == k), as QuantLinear's LibTorch path
// computes it (the product of x with the values cast to T, rounded to T, then scaled in float32 and rounded), the
// sum in float32 in another order. Rows of row_bytes = k + 4 bytes (k values then the scale), k % 4 == 0, w 4-byte
// aligned, x rows of k elements x_stride apart (x 8-byte aligned, x_stride % 4 == 0), y [m, n] contiguous; T bf16 or
// fp16.
//
// int4 (`int4`): rows of k / 2 bytes of values (the high nibble of byte j is column 2j, q in 0..15) then k / group
// records of two bf16, the scale s and the zero z: w = (q - 8) s + z (formats/quant.h), row_bytes = k / 2 + 4 k /
// group, k % 8 == 0, group % 8 == 0; y[i, r] = T(sum_c w[r, c] x[i, c]) summed in float32 (tinygemm's sum rounds
// otherwise: within bf16 rounding of it).
struct QuantGemvArgs {
  DType dtype = DType::kBF16;
  bool fp8 = false;  // fp8 e4m3 values; else int8
  bool int4 = false;
  int64_t group = 0;  // int4's columns per record
  // int4 only, > 0: the n rows are n / split_rows matrices of split_rows rows one after another, each in the split
  // layout (the executor's GPU-resident int4: its values [split_rows, k / 2], then its records [k / group,
  // split_rows] of 4 bytes); n % split_rows == 0. 0: rows of row_bytes.
  int64_t split_rows = 0;
  const void* x = nullptr;
  int64_t x_stride = 0;
  const void* w = nullptr;
  int64_t row_bytes = 0;
  void* y = nullptr;
  int m = 0;
  int64_t n = 0, k = 0;
  // Batched (`batch` > 0): `batch` products of the same shape, the i-th reading ws[i], xs[i] and writing ys[i]
  // (device-readable arrays, each pointer aligned as above); w, x and y are then ignored.
  int64_t batch = 0;
  const void* const* ws = nullptr;
  const void* const* xs = nullptr;
  void* const* ys = nullptr;
};
cudaError_t QuantGemv(const QuantGemvArgs& a, cudaStream_t stream);

// Row-quantized weights (formats/quant.h) dequantized to T (bf16 or fp16), as kernels_internal::DequantizeWeight
// computes them in T: fp8/int8 T(T(q) x T(s)) with the group's float32 scale s; int4 T(z + (q - 8) s) with the group's
// bf16 scale s and zero z (each first converted to T), computed in float32. Up to kDequantMaxJobs weights of one format
// in one launch, each with its own shape: job j reads n rows of k columns from w (the row layout: rows of
// k / 2 + 4 k / group bytes for int4, k + 4 k / group for fp8/int8, row_stride bytes apart, w 4-byte aligned,
// row_stride % 4 == 0; or int4's split layout, `split`: n rows of values, then records [k / group, n]) and writes
// out [n, k] rows out_stride elements apart (out 16-byte aligned, out_stride % 8 == 0). k % 8 == 0, k % group == 0,
// k <= 2^31, n < 2^31.
// With `scales` (fp8/int8 with one scale a row, group == k): out takes the values alone, T(q) (exact), and scales[r]
// row r's float32 scale, for products scaled after they are rounded (as QuantLinear's per-row path computes them).
// (48: sixteen experts' three matrices in one launch; the arguments stay within a kernel's 4 KB of parameters.)
inline constexpr int kDequantMaxJobs = 48;
struct DequantJob {
  const void* w = nullptr;
  int64_t row_stride = 0;  // bytes (the row layout)
  bool split = false;      // int4 only
  int64_t n = 0, k = 0, group = 0;
  void* out = nullptr;
  int64_t out_stride = 0;  // elements
  float* scales = nullptr;
};
struct DequantArgs {
  DType dtype = DType::kBF16;
  bool fp8 = false;  // fp8 e4m3 values; else int8 (ignored for int4)
  bool int4 = false;
  int jobs = 0;
  DequantJob job[kDequantMaxJobs];
};
static_assert(sizeof(DequantArgs) <= 4096, "fused::Dequantize's arguments exceed a kernel's parameter space");
cudaError_t Dequantize(const DequantArgs& a, cudaStream_t stream);

// Rows of grouped products scaled in place by their group's per-column scales: for r < rows and j < n,
// y[r * y_stride + j] = T(float(y[...]) x scales[g * scale_stride + j]), g the group of row r (the first g with
// r < ends[g]; ends ascending int32, `groups` of them at most 1024, ends[groups - 1] >= rows). T bf16 or fp16.
cudaError_t ScaleGroupedRows(DType dtype, void* y, int64_t y_stride, int64_t rows, int64_t n, const int32_t* ends,
                             int groups, const float* scales, int64_t scale_stride, cudaStream_t stream);

// One new token per row: q [batch, heads, head_dim] (contiguous) attends over positions [lo, pos] of its cache row
// (lo = max(0, pos - window + 1) when window > 0, else 0), softmax(q k^T x scale) v in float32, GQA (head h reads kv
// head h / (heads / kv_heads)). out [batch, heads, head_dim] contiguous. The keys are split into `splits` ranges
// computed by blocks of their own (sized on the device from pos, so a CUDA graph replays at any position), then
// combined; within a range, each warp loads a few consecutive keys and values at once (vector loads where the cache
// is 16-byte aligned). workspace: float [batch * heads * splits * (head_dim + 2)]. head_dim a multiple of 32 up to
// 256, heads / kv_heads <= 8, 1 <= splits <= 64.
// DecodeAttnArgs::min_chunk's default and DecodeAttentionSplits': splits of at least 16 keys.
inline constexpr int kAttnMinChunk = 16;
struct DecodeAttnArgs {
  DType dtype = DType::kBF16;
  const void* q = nullptr;
  const void* k_cache = nullptr;
  const void* v_cache = nullptr;
  int64_t cache_rows = 0, max_seq = 0;
  int64_t batch = 0, heads = 0, kv_heads = 0, head_dim = 0;
  Positions at;
  int64_t window = 0;
  float scale = 1;
  int splits = 1;
  // The fewest keys a split takes: a row attending n keys uses max(min_chunk, ceil(n / splits)) keys a split and
  // only the splits that cover them, so short rows pay for few splits (the combine reads only those).
  int min_chunk = kAttnMinChunk;
  float* workspace = nullptr;
  void* out = nullptr;
};
cudaError_t DecodeAttention(const DecodeAttnArgs& a, cudaStream_t stream);

// The split count DecodeAttention should use for `batch` rows, `kv_heads` and at most `max_len` attended positions
// on a device with `sms` multiprocessors, with splits of at least `min_chunk` keys (DecodeAttnArgs::min_chunk):
// enough blocks to fill the device twice, no more splits than max_len needs, at most 64. A row's ranges then depend
// on max_len only through this count, and not at all while it attends at most min_chunk x the count keys: a step
// captured for a long cache splits a short row as the step made for that row alone does.
int DecodeAttentionSplits(int64_t batch, int64_t kv_heads, int64_t max_len, int sms, int min_chunk = kAttnMinChunk);

}  // namespace bigplan::fused
