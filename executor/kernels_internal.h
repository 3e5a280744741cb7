// Building blocks shared by the architectures' kernels (executor/kernels_*.cc). Internal to //executor:kernels.
// Functions returning at::Tensor may throw c10::Error; ModelKernelsBase::RunBlock catches at the boundary.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "arch/rope.h"
#include "executor/kernels.h"
#include "support/result.h"

namespace bigplan::kernels_internal {

// ---- dense layers ----

// nn.Linear: x @ w^T + b, w [out, in]; `b` may be undefined.
at::Tensor Linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b);
// transformers' Conv1D (GPT-2): addmm(b, x2d, w), w [in, out] as stored; `b` may be undefined.
at::Tensor Conv1D(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b);
// LlamaRMSNorm: float32 variance and rsqrt, cast back to x's dtype, then w *.
at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& w, double eps);
// nn.LayerNorm over the last dim.
at::Tensor LayerNorm(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, double eps);

enum class Activation { kSilu, kGeluTanh, kGelu, kRelu };
// "silu"/"swish", "gelu_new"/"gelu_pytorch_tanh"/"gelu_fast", "gelu", "relu"; kUnsupported otherwise. (The
// registry's arch::IsSupportedActivation lists the same names, so the planner refuses the others at plan time.)
Result<Activation> ParseActivation(const std::string& name);
at::Tensor Activate(Activation act, const at::Tensor& x);

// ---- rotary position embeddings (Llama family) ----

// The plan's typed RoPE (arch::RopeParams, resolved by the planner) completed for the kernels: rotary_dim is the
// rotated dims (spec.rotary_dim, head_dim when 0), original_max_position_embeddings is set for every type, and
// max_position_embeddings is dynamic NTK's threshold.
struct RopeConfig : arch::RopeParams {
  using Type = arch::RopeType;  // kDefault, kLinear, kDynamic, kLlama3, kYarn, kLongrope
  int64_t max_position_embeddings = 0;  // dynamic

  // Whether the frequencies of a forward of `length` positions differ from those of short forwards (dynamic NTK
  // past max_position_embeddings, longrope past original_max_position_embeddings).
  bool LengthDependent(int64_t length) const {
    return (type == Type::kDynamic && length > max_position_embeddings) ||
           (type == Type::kLongrope && length > original_max_position_embeddings);
  }
  // The configuration for forwards within those lengths (length-independent frequencies).
  RopeConfig ShortForm() const;
};

// From the typed spec.rope (the plan's config.rope; no JSON), spec.rotary_dim / spec.head_dim (the rotary dims when
// spec.rope.rotary_dim is 0) and spec.max_position_embeddings (dynamic's threshold). kInvalidArgument when the
// rotary dims disagree or arch::CheckRopeParams refuses the values.
Result<RopeConfig> RopeFromSpec(const ModelSpec& spec);

// Inverse frequencies [dim / 2] float32 on `device`, computed with the same float32 tensor operations as
// transformers' ROPE_INIT_FUNCTIONS (modeling_rope_utils.py). `seq_len` (start_pos + new tokens) matters only for
// "dynamic": transformers recomputes with seq_len = max(seq_len, max_position_embeddings).
at::Tensor RopeInvFreq(const RopeConfig& rope, int64_t seq_len, const at::Device& device);

// cos and sin [seq, dim] of positions start_pos..start_pos+seq-1 (emb = cat(freqs, freqs)), cast to `dtype`. The
// frequencies are those of a forward of start_pos + seq positions.
void RopeCosSin(const RopeConfig& rope, int64_t start_pos, int64_t seq, at::ScalarType dtype,
                const at::Device& device, at::Tensor* cos, at::Tensor* sin);

// q * cos + rotate_half(q) * sin for x [..., seq, dim] and cos/sin [seq, dim]. With cos/sin narrower than x's last
// dim (partial rotary, transformers' apply_rotary_pos_emb), only the first cos.size(-1) dims rotate; the rest pass.
at::Tensor ApplyRopeHalf(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

// cos/sin tables by position, built once per (device, current stream, dtype) and grown to the next power of two
// of the positions asked for (at least 256 rows), so a step reads rows [start, start + seq) as views instead of
// launching a few dozen small kernels per layer. Each table is built and read on one stream (the device's current
// stream at the call), so no cross-stream ordering is needed. Thread-safe.
class RopeTableCache {
 public:
  // Fills cos/sin with rows [0, length), each row a position (any trailing shape), in `dtype` on `device`.
  using Builder = std::function<void(int64_t length, at::ScalarType dtype, const at::Device& device, at::Tensor* cos,
                                     at::Tensor* sin)>;
  explicit RopeTableCache(Builder builder) : builder_(std::move(builder)) {}
  // Rows [start, start + seq) (views of the cached tables).
  void Get(int64_t start, int64_t seq, at::ScalarType dtype, const at::Device& device, at::Tensor* cos,
           at::Tensor* sin) const;

 private:
  struct Entry {
    at::Device device;
    int64_t stream;
    at::ScalarType dtype;
    at::Tensor cos, sin;
  };
  Builder builder_;
  mutable std::mutex mu_;
  mutable std::vector<Entry> entries_;
};

// ---- attention ----

// Checks a decoder layer's cache against the step: k, v are [>= batch, kv_heads, >= start_pos + seq, head_dim]
// on `device`. kInvalidArgument naming the block otherwise. A null cache is allowed only when start_pos == 0.
Status CheckKvCache(const KvCache* kv, int64_t batch, int64_t kv_heads, int64_t start_pos, int64_t seq,
                    int64_t head_dim, const at::Device& device, const std::string& block);

// Writes k, v ([batch, kv_heads, seq, head_dim]) at [start_pos, start_pos + seq) of the cache (when given) and
// attends q ([batch, heads, seq, head_dim]) over positions [0, start_pos + seq), causally for the new tokens, with
// SDPA (GQA when heads != kv_heads). Returns [batch, heads, seq, head_dim].
// `window` > 0: sliding-window attention as transformers' mask: the token at position p attends to keys
// p - window < j <= p only (the cache keeps every position; older ones are masked out).
// `upcast`: GPT-2's reorder_and_upcast_attn: scores (q k^T x scale) and softmax in float32, the probabilities cast to
// v's dtype before the product with v (a no-op when q is float32).
at::Tensor CachedAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, KvCache* kv,
                           int64_t start_pos, double scale, int64_t window = 0, bool upcast = false);

// CachedAttention's attention alone, for new tokens whose k and v are already in the cache: q [batch, heads, seq,
// head_dim] over keys/values [batch, kv_heads, start_pos + seq, head_dim] (cache views).
at::Tensor AttendCache(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values, int64_t start_pos,
                       double scale, int64_t window = 0, bool upcast = false);

// The static single-token step (ForwardContext::position): writes k, v ([batch, kv_heads, 1, head_dim]) at
// `position` (a one-element int64 device tensor) of the cache with index_copy_, and attends q ([batch, heads, 1,
// head_dim]) over every cache position with an additive mask (0 up to `position`, -inf after), as transformers'
// eager attention: scores in q's dtype, softmax in float32, cast back. Returns [batch, heads, 1, head_dim].
// `window` > 0 also masks the positions <= position - window (sliding-window attention).
at::Tensor StaticDecodeAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, KvCache* kv,
                                 const at::Tensor& position, double scale, int64_t window = 0);

// ---- weights that may be streamed in row chunks ----

// A block weight by slot: whole (resident, or streamed whole) or streamed in row chunks (BlockWeights::NumChunks).
struct WeightRef {
  const BlockWeights* weights = nullptr;
  arch::Slot slot = arch::Slot::kCount;
  at::Tensor whole;  // defined when whole
  int chunks = 0;    // > 0 when chunked
  WeightQuant quant; // row-quantized: whole and each chunk are uint8 rows (BlockWeights::Quant)
  bool present() const { return whole.defined() || chunks > 0; }
};
WeightRef FindRef(const BlockWeights& weights, arch::Slot slot);

// ---- row-quantized weights (formats/quant.h) ----

// A row-quantized weight (uint8 [rows, RowBytes], or some of its rows) dequantized to [rows, q.cols] of `dtype`:
// fp8/int8 values x scale, int4 (q - 8) x scale + zero, per group, computed in float32 for float32 results and in
// `dtype` itself for half-precision ones.
at::Tensor DequantizeWeight(const at::Tensor& wq, const WeightQuant& q, at::ScalarType dtype);
// x @ w^T + b for a row-quantized w. On CUDA with bf16 activations and at most 16 rows of x (decode), int4 weights
// (rows a multiple of 8, groups of 32-256) run PyTorch's tinygemm kernel (_weight_int4pack_mm) after packing the
// rows; per-row fp8/int8 multiply
// by the stored values and scale the output; everything else dequantizes first. Throws c10::Error on bad shapes.
at::Tensor QuantLinear(const at::Tensor& x, const at::Tensor& wq, const WeightQuant& q, const at::Tensor& b);

// x @ w^T + b for w [out, in] (nn.Linear). Chunks of w's rows give columns of the output: each chunk's product is
// written into its columns, then the chunk is released. `b` may be undefined.
Result<at::Tensor> LinearW(const WeightRef& w, const at::Tensor& x, const at::Tensor& b);
// transformers' Conv1D (GPT-2), w [in, out]: addmm(b, x2d, w). Chunks of w's rows multiply the matching slice of
// x's last dimension; their products are summed.
Result<at::Tensor> Conv1DW(const WeightRef& w, const at::Tensor& x, const at::Tensor& b);
// Embedding lookup of `ids` in w [vocab, hidden]. Chunks of w's rows serve the ids in their range (masked lookups,
// summed), so no host synchronization is needed.
Result<at::Tensor> EmbeddingW(const WeightRef& w, const at::Tensor& ids);

// The per-row single-token step (ForwardContext::rows, continuous batching): row b of q, k, v ([n, heads or
// kv_heads, 1, head_dim]) belongs to cache row rows[b] at position positions[b] (both [n] int64 device tensors).
// Writes each row's k, v at its position of its cache row, and attends over the first `attend_len` positions of
// its cache row with an additive mask (0 up to its position, -inf after), computed as StaticDecodeAttention.
// `kv` is the whole cache ([max_batch, ...]). Returns [n, heads, 1, head_dim].
at::Tensor RowsDecodeAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, KvCache* kv,
                               const at::Tensor& rows, const at::Tensor& positions, int64_t attend_len,
                               double scale);

// ---- grouped experts (GPU) ----

// Adds to *out ([tokens, hidden], x's dtype) the weighted sum over a group's experts of act(x gate^T) * (x up^T)
// down^T (executor/kernels_grouped.cc): two cuBLAS batched products through the group's pointer arrays (for a
// quantized group, g.format, two batched fused_ops::QuantGemvBatched products: kUnsupported where not eligible), the
// activation over every expert at once, and the routing weights applied in their dtype (g.weights', the router's) as
// transformers does, the sum rounded to x's dtype before it is added. `fused_kernels`: the activation and the
// weighted sum as one kernel each (fused_ops::SiluMulInto, fused_ops::ExpertSum) where eligible.
Status GroupedSwiGlu(const BlockWeights::ExpertGroup& g, Activation act, bool fused_kernels, at::Tensor* out);

// Whether x's GPU runs at::_grouped_mm (compute capability 9 or above).
bool GroupedProductsRun(const at::Tensor& x);
// A sparse layer's routed experts (SwiGLU) for the tokens x [T, hidden] with the router's choices topi [T, k] (int64)
// and weights topw [T, k] (x's dtype, or float32 for Mixtral), where every expert rests on x's GPU at equal distances
// (table's strides): the (token, expert) pairs sorted by expert, gathered, and two grouped products
// (at::_grouped_mm: [gate; up], then down) over all the experts at once, nothing read on the host (the pairs are
// grouped by fused_ops::MoeRoute and combined by fused_ops::MoeCombine); each token's experts' outputs, scaled by
// their weights and cast to x's dtype, summed in expert order (the host-dispatched path's order and roundings; the
// products' own sums may round differently). Tokens in chunks of arch::kMoeGroupedTokens. Undefined (nothing
// queued) where it does not apply: x not bfloat16, a GPU before sm_90, more than fused_ops::kMoeRouteMaxExperts
// experts, strides of 0 or addresses, strides, hidden or inter not multiples of 16 bytes.
at::Tensor GroupedResidentExperts(const at::Tensor& x, const at::Tensor& topi, const at::Tensor& topw,
                                  const BlockWeights::ResidentExpertTable& table);

// ---- the block-kind boundary ----

// Validates the common arguments, dispatches on `kind` and converts LibTorch exceptions into errors naming the
// block. Subclasses implement the per-kind math; they may throw c10::Error.
class ModelKernelsBase : public ModelKernels {
 public:
  explicit ModelKernelsBase(ModelSpec spec) : spec_(std::move(spec)) {}
  Status RunBlock(arch::BlockKind kind, const std::string& block, int layer, const BlockWeights& weights,
                  const ForwardContext& ctx, KvCache* kv, at::Tensor* hidden, at::Tensor* logits) const override;

 protected:
  struct Call {
    arch::BlockKind kind;
    int layer;
    const BlockWeights& weights;
    const ForwardContext& ctx;
    std::string block;  // "block 'model.layers.3' (decoder_layer)" for messages
  };
  // `hidden` is [batch, seq, hidden_size] (checked) except for Embedding.
  virtual Status Embedding(const Call& c, at::Tensor* hidden) const = 0;
  virtual Status PositionEmbedding(const Call& c, at::Tensor* hidden) const;  // default: kUnsupported
  virtual Status DecoderLayer(const Call& c, KvCache* kv, at::Tensor* hidden) const = 0;
  virtual Status FinalNorm(const Call& c, at::Tensor* hidden) const = 0;
  // `h` is the (possibly last-position-only) hidden state; returns logits in the weights' dtype.
  virtual Result<at::Tensor> LmHead(const Call& c, const at::Tensor& h) const = 0;

  // The whole tensor in `slot`; kNotFound naming the block and the slot when absent (or chunked).
  Result<at::Tensor> Get(const Call& c, arch::Slot slot) const;
  // The tensor in `slot` if the block has one (an undefined tensor otherwise).
  at::Tensor Optional(const Call& c, arch::Slot slot) const { return c.weights.Find(slot); }
  // A weight that may be chunked; kNotFound naming the block and the slot when `required` and absent.
  Result<WeightRef> Ref(const Call& c, arch::Slot slot, bool required = true) const;

  // Tensor parallelism (c.ctx.shards set; arch/tensor_parallel.h): the embedding from this shard's vocabulary rows
  // (zeros for the other tokens), summed over the shards.
  Status ShardEmbedding(const Call& c, at::Tensor* hidden) const;
  // The logits from this shard's vocabulary rows of the lm_head (and of `bias`, its slice, when defined), placed in
  // the whole vocabulary and summed over the shards.
  Result<at::Tensor> ShardLmHead(const Call& c, const at::Tensor& h, const at::Tensor& bias) const;

  const ModelSpec spec_;
};

// Per-architecture factories (spec already validated for the common fields).
Result<std::unique_ptr<ModelKernels>> MakeLlamaKernels(const ModelSpec& spec);
Result<std::unique_ptr<ModelKernels>> MakeGpt2Kernels(const ModelSpec& spec);
Result<std::unique_ptr<ModelKernels>> MakeGptjKernels(const ModelSpec& spec);

}  // namespace bigplan::kernels_internal
