// The fused CUDA kernels (executor/fused_cuda.h) for at::Tensor arguments, on the current CUDA stream. Each function
// computes what the named LibTorch composition computes (within the execution dtype's rounding: the fused kernels
// accumulate in float32 and round where PyTorch's ops round), or returns an undefined tensor, computing nothing,
// when its arguments are not ones the fused kernels take (CPU tensors, float32, odd shapes or alignments): the
// caller then runs its LibTorch path. They never synchronize the host and allocate only their outputs (and
// DecodeAttention its workspace) through LibTorch's allocator, so they can be captured in CUDA graphs. Errors of a
// launch throw c10::Error.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "executor/fused_cuda.h"
#include "formats/quant.h"

namespace bigplan::fused_ops {

// Whether x is a tensor the fused kernels take: on a CUDA device, bf16 or fp16.
bool Eligible(const at::Tensor& x);

// at::linear(x, w, b) (+ residual): x [..., k], w [n, k] (contiguous), b [n] or undefined, residual [..., n] or
// undefined (added after the product is rounded, as `residual + linear(x)`). Up to 2 rows of x: the fused
// matrix-vector kernel (bias and residual in its epilogue); more rows: cuBLAS (addmm with the residual, so the
// residual is added before rounding). Result [..., n] contiguous. overwrite_residual: the caller never reads
// `residual` again, so cuBLAS may accumulate into its memory (the result is then a view of it; same values).
at::Tensor Linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, const at::Tensor& residual,
                  bool overwrite_residual = false);

// A row-quantized weight's product for up to 2 rows of x (fused::QuantGemv): wq [n, k + 4] uint8 rows of fp8 e4m3
// (`fp8`) or int8 values and one float32 scale each (formats/quant.h, group == k) on x's device; x [..., k] bf16 or
// fp16. The result [..., n] as QuantLinear's LibTorch path rounds it: T(T(x . q[r]) * s[r]). Undefined when not
// eligible (more rows, another layout or alignment).
at::Tensor QuantGemv(const at::Tensor& x, const at::Tensor& wq, bool fp8, int64_t k);
// An int4 weight's product for up to 2 rows of x (fused::QuantGemv, int4): wq [n, k / 2 + 4 k / group] uint8 in the
// row layout, or the same bytes in the split layout (`split`: values, then records [groups, n]); x [..., k] bf16 or
// fp16. The result [..., n], summed in float32 and rounded once. Undefined when not eligible.
at::Tensor QuantGemvInt4(const at::Tensor& x, const at::Tensor& wq, int64_t k, int64_t group, bool split);
// The same for `batch` weights at once (fused::QuantGemv batched): for i < batch, ys[i] [m, n] = xs[i] [m, k] (rows k
// apart) times ws[i] (n uint8 rows of `format`: per-row fp8 / int8, k + 4 bytes, or int4 in groups of `group`
// columns, k / 2 + 4 k / group bytes; with split_rows > 0, int4 matrices of split_rows rows in the split layout one
// after another, fused::QuantGemvArgs::split_rows), in `like`'s dtype on its device (the arrays device-readable).
// False, computing nothing, when not eligible (m > 2, alignment, dtype, layout).
bool QuantGemvBatched(const void* const* ws, const void* const* xs, void* const* ys, int64_t batch, int64_t m,
                      int64_t n, int64_t k, quant::Format format, int64_t group, const at::Tensor& like,
                      int64_t split_rows = 0);

// Row-quantized weights dequantized as kernels_internal::DequantizeWeight computes them in the outputs' dtype
// (fused::Dequantize), up to fused::kDequantMaxJobs at once in one launch: for each input, out [n, cols] (bf16 or fp16,
// on wq's device, rows out.stride(0) apart and 16-byte aligned) takes the values of wq (uint8 [n, row bytes] of
// `format` in groups of `group` columns: rows of contiguous bytes, maybe a strided view of longer rows; `split`: int4's
// split layout, wq contiguous). False, writing nothing, when not eligible (layout, alignment, dtypes).
struct DequantInput {
  at::Tensor wq;
  int64_t cols = 0, group = 0;
  bool split = false;
  at::Tensor out;
  // Defined (float32 [n] contiguous on the device; per-row fp8/int8 only, group == cols): out takes the values alone
  // (exact in its dtype) and scales each row's scale (fused::DequantJob::scales).
  at::Tensor scales;
};
bool DequantizeInto(const std::vector<DequantInput>& inputs, quant::Format format);
// DequantizeInto's work gathered over several calls into launches of up to fused::kDequantMaxJobs weights, for a
// caller that fills many outputs in raw memory (a MoE prompt's experts): Add checks one weight as DequantizeInto does
// and queues it; Launch issues the queued ones (one fused::Dequantize on the current stream) and empties the queue.
// The weights' and outputs' memory must stay as they are until Launch has issued them.
class DequantBatch {
 public:
  // Outputs in `dtype` (bf16 or fp16) of weights in `format` (not kNone).
  DequantBatch(quant::Format format, at::ScalarType dtype);
  // Queues wq (uint8 [n, row bytes] on the current CUDA device, as DequantInput's; a queue's weights on one device)
  // into out: n rows of `cols` values in the batch's dtype, `out_stride` elements apart (16-byte aligned, a multiple
  // of 8, >= cols), and for per-row fp8/int8 (group == cols) optionally `scales` (n float32, device memory):
  // DequantInput's scales. False, queuing nothing, when not eligible (also when full(): callers launch first).
  bool Add(const at::Tensor& wq, int64_t cols, int64_t group, bool split, void* out, int64_t out_stride,
           float* scales = nullptr);
  // Whether `more` further weights would not fit the queue.
  bool full(int more = 1) const { return args_.jobs + more > fused::kDequantMaxJobs; }
  int size() const { return args_.jobs; }
  // Drops the weights queued after the first `jobs` (0 <= jobs <= size()).
  void Truncate(int jobs) { args_.jobs = std::clamp(jobs, 0, args_.jobs); }
  // Issues the queued weights (nothing when none). False when the kernel declined them (none issued; the queue is
  // emptied either way).
  bool Launch();

 private:
  quant::Format format_;
  fused::DequantArgs args_;
  int device_ = -1;  // the queued weights' device
};
// Rows of grouped products scaled in place by their group's scales (fused::ScaleGroupedRows): y [rows, n] (bf16 or
// fp16, rows contiguous), ends int32 [groups] on y's device (each group's end row, ascending, as at::_grouped_mm's
// offsets), scales float32 [groups, n] (rows contiguous). False, computing nothing, when not eligible.
bool ScaleGroupedRows(const at::Tensor& y, const at::Tensor& ends, const at::Tensor& scales);
// One weight's dequantized values [n, cols] in `dtype` (bf16 or fp16); undefined when not eligible.
at::Tensor Dequantize(const at::Tensor& wq, quant::Format format, int64_t cols, int64_t group, bool split,
                      at::ScalarType dtype);

// The `top` rows r of w [n, k] with the largest x . (scale * w[r]) for one row x [k] (or [1, k]), float32 `scale`
// [k], written as int64 indices into out[0..top) (a device-accessible pointer, e.g. mapped pinned memory), largest
// first. False, computing nothing, when not eligible (fused::TopRows's preconditions, dtypes of x and w differ).
bool TopRows(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& w, int top, int64_t* out);

// A router's choices for one token in one kernel (fused::RouterTopK): logits [1, n] (bf16, fp16 or fp32, contiguous,
// on the GPU) -> {weights [1, top] of `weight_dtype` (the top softmax probabilities, divided by their sum when
// `renorm`), ids [1, top] int64}, as at::softmax over float32 logits, at::topk and the division compute them (the
// same softmax sums for n <= 1024; the renormalizing sum may differ in its last bit). Undefined tensors when not
// eligible.
std::pair<at::Tensor, at::Tensor> RouterTopK(const at::Tensor& logits, int top, bool renorm, at::ScalarType weight_dtype);
// The same, also writing the choices for the host (fused::RouterExport; each pointer may be null, e.g. mapped pinned
// memory): the ids to host_ids[0..top), the weights' values as float32 to host_weights[0..top), and x (the router's
// input, one contiguous row of bf16, fp16 or fp32 on the GPU) as float32 to host_x. Undefined tensors, writing
// nothing, when not eligible.
std::pair<at::Tensor, at::Tensor> RouterTopK(const at::Tensor& logits, int top, bool renorm,
                                             at::ScalarType weight_dtype, int64_t* host_ids, float* host_weights,
                                             const at::Tensor& x, float* host_x);

// out.add_((y * w).to(y's dtype).sum(0)) in one kernel (fused::ExpertSum): y [n, tokens, hidden] bf16, fp16 or fp32
// contiguous on the GPU, w [n, tokens, 1] (or [n, tokens]) contiguous of any of those dtypes, device-readable (e.g.
// mapped pinned memory), out [tokens, hidden] contiguous of y's dtype on y's device. False, queuing nothing, when not
// eligible.
bool ExpertSum(const at::Tensor& y, const at::Tensor& w, const at::Tensor& out);

// Routed experts resident on x's GPU, for up to fused::kMoeMaxTokens tokens (fused::MoeExperts, SiLU experts): each
// token's chosen experts' SwiGLU outputs weighted and summed as transformers' MoE blocks do, [tokens, hidden] in x's
// dtype, from x [tokens, hidden] (bf16, fp16 or fp32), ids [tokens, k] int64 and w [tokens, k] (bf16, fp16 or fp32)
// on x's device, and per expert e the device addresses of its [gate; up] rows ([2 inter, hidden]) and of its down
// matrix ([hidden, inter]), in x's dtype. Reads the choices on the device: nothing waits for the host. With
// `residual` (x's shape, dtype and device, contiguous): residual + that sum, rounded as adding the two tensors rounds.
// Undefined, queuing nothing, when these are not what the kernels take.
inline constexpr int64_t kMoeMaxTokens = 16, kMoeMaxExperts = 128;  // = fused::kMoeMaxTokens, kMoeMaxExperts
at::Tensor MoeExperts(const at::Tensor& x, const at::Tensor& ids, const at::Tensor& w,
                      const std::vector<uint64_t>& gate_up, const std::vector<uint64_t>& down, int64_t inter,
                      const at::Tensor& residual = at::Tensor());

// A prompt's (token, choice) pairs grouped by expert on the device (fused::MoeRoute), for ids [tokens, k] int64 on
// the GPU over num_experts experts: *offs [num_experts] int32 (where each expert's rows end, as at::_grouped_mm takes
// them), *token [tokens x k] int64 (the token of each sorted pair, to gather the inputs; 0 past the valid pairs) and
// *place [tokens, k] int64 (each pair's sorted row; -1 for an id out of range). False, queuing nothing, when not
// eligible (num_experts above kMoeRouteMaxExperts).
inline constexpr int64_t kMoeRouteMaxExperts = 1024;  // = fused::kMoeRouteMaxExperts
bool MoeRoute(const at::Tensor& ids, int64_t num_experts, at::Tensor* offs, at::Tensor* token, at::Tensor* place);
// Each token's experts' outputs y [rows, hidden] (rows sorted by MoeRoute; row stride at least hidden) weighted by w
// [tokens, k] (any of bf16, fp16, fp32) and summed in expert order with the host-dispatched path's roundings
// (fused::MoeCombine): [tokens, hidden] in y's dtype. Undefined, queuing nothing, when not eligible.
at::Tensor MoeCombine(const at::Tensor& y, const at::Tensor& ids, const at::Tensor& w, const at::Tensor& place);

// at::mul_out(out, at::silu(gate), up) for gu [..., 2 inter] = [gate | up] into out [..., inter] (contiguous, gu's
// dtype and device) by fused::SiluMul. False, queuing nothing, when not eligible.
bool SiluMulInto(const at::Tensor& gu, const at::Tensor& out);

// kernels_internal::RmsNorm(x, w, eps) (LlamaRMSNorm): x [..., cols] with a contiguous last dimension.
at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& w, double eps);

// at::silu(gate) * up for gu [..., 2 inter] holding [gate | up] in its last dimension: [..., inter].
at::Tensor SiluMul(const at::Tensor& gu);

// Where a step's tokens sit (fused::Positions): `pos` a device int64 tensor of one position (every row) or one per
// row (`per_row`), else `pos_host`; `rows` (device int64 [batch]) the cache row of each row, or undefined (row b).
struct StepPositions {
  at::Tensor pos;
  bool per_row = false;
  int64_t pos_host = 0;
  at::Tensor rows;
};

// RoPE of q and k (after Qwen3's per-head RMSNorm when q_norm/k_norm are defined) with cos/sin tables [table_rows,
// head_dim] by position, k and v written into k_cache/v_cache [cache_rows, kv_heads, max_seq, head_dim]
// (contiguous) at each token's position; returns the rotated q [batch, heads, seq, head_dim], a transposed view of
// token-major memory [batch, seq, heads, head_dim] (contiguous when seq is 1). q, k, v are
// [batch, seq, heads or kv_heads x head_dim] (views of one product are fine). Undefined when not eligible (full
// rotary only: the tables' width is head_dim).
at::Tensor RopeKvWrite(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t heads, int64_t kv_heads,
                       int64_t head_dim, const at::Tensor& cos, const at::Tensor& sin, const StepPositions& at,
                       const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& q_norm,
                       const at::Tensor& k_norm, double eps);

// Products with what precedes and follows them in a decoder layer, each one kernel (fused::GemvArgs) for up to
// fused::kGemvMaxRows rows of x (decode); undefined tensors, computing nothing, when not eligible (the caller then
// runs the ops one by one). Each gives the bits of the ops one by one (RmsNorm, Linear, SiluMul, RopeKvWrite).
//   NormLinear: Linear(RmsNorm(x, norm_w, eps), w, b); with `normed`, RmsNorm(x, norm_w, eps) too (a new tensor
//   shaped as x, written by the same kernel).
at::Tensor NormLinear(const at::Tensor& x, const at::Tensor& norm_w, double eps, const at::Tensor& w,
                      const at::Tensor& b, at::Tensor* normed = nullptr);
//   GateUpSiluMul: SiluMul(Linear(x', w, b)) for w = [gate; up] (2 inter rows), x' = RmsNorm(x, norm_w, eps) when
//   norm_w is defined, else x: [..., inter].
at::Tensor GateUpSiluMul(const at::Tensor& x, const at::Tensor& norm_w, double eps, const at::Tensor& w,
                         const at::Tensor& b);
//   QkvRopeKvWrite: RopeKvWrite(q, k, v, ...) (no q/k norms) of [q | k | v] = Linear(x', w, b) for w = [q; k; v]
//   ((heads + 2 kv_heads) head_dim rows), x [batch, seq, hidden], x' as above; returns the rotated q as RopeKvWrite
//   does. The product itself is not kept.
at::Tensor QkvRopeKvWrite(const at::Tensor& x, const at::Tensor& norm_w, double eps, const at::Tensor& w,
                          const at::Tensor& b, int64_t heads, int64_t kv_heads, int64_t head_dim, const at::Tensor& cos,
                          const at::Tensor& sin, const StepPositions& at, const at::Tensor& k_cache,
                          const at::Tensor& v_cache);

// Whether DecodeAttention takes these head counts and head size (head_dim a multiple of 32 up to 256, heads a
// multiple of kv_heads, at most 8 query heads per kv head).
bool DecodeAttentionTakes(int64_t heads, int64_t kv_heads, int64_t head_dim);

// One new token per row: q [batch, heads, 1, head_dim] attends over its cache row's positions up to its own (within
// `window` when > 0), as kernels_internal::StaticDecodeAttention after the cache write; [batch, heads, 1, head_dim].
// `max_len` bounds the attended positions (the split count depends on it alone, so a graph-captured step may replay
// at any position below it). Undefined when not eligible.
at::Tensor DecodeAttention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                           const StepPositions& at, int64_t max_len, int64_t window, double scale);

}  // namespace bigplan::fused_ops
