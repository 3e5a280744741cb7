// Llama-family kernels (Llama 2/3/3.1, Mistral, Qwen2) and Phi-3, as transformers' modeling_llama.py /
// modeling_qwen2.py / modeling_phi3.py: RMSNorm -> q/k/v projections (optional biases) -> RoPE -> GQA attention over
// the KV cache -> o_proj -> residual -> RMSNorm -> SwiGLU MLP -> residual. Phi-3 stores q/k/v and gate/up fused
// along the rows (qkv_proj, gate_up_proj: the registry's kQkv / kGateUp slots); the kernel slices them into narrow
// views (no copies) and runs the same math. Partial rotary (Phi-3's partial_rotary_factor) rotates the first
// rotary_dim dims of each head.
#include <ATen/ATen.h>

#include <cmath>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "executor/kernels.h"
#include "executor/kernels_internal.h"

namespace bigplan::kernels_internal {
namespace {

// Tensor names of the Llama family (transformers' LlamaForCausalLM state dict), relative to a block's prefix.
namespace names {
constexpr char kWeight[] = "weight";  // embedding, final_norm, lm_head
constexpr char kTiedEmbedding[] = "model.embed_tokens.weight";  // lm_head when tie_word_embeddings
constexpr char kInputNorm[] = "input_layernorm.weight";
constexpr char kPostNorm[] = "post_attention_layernorm.weight";
constexpr char kQ[] = "self_attn.q_proj.";
constexpr char kK[] = "self_attn.k_proj.";
constexpr char kV[] = "self_attn.v_proj.";
constexpr char kO[] = "self_attn.o_proj.";
constexpr char kGate[] = "mlp.gate_proj.";
constexpr char kUp[] = "mlp.up_proj.";
constexpr char kDown[] = "mlp.down_proj.";
// Phi-3's fused projections: rows [q; k; v] and [gate; up] (arch::FusedRows gives the same row ranges).
constexpr char kQkv[] = "self_attn.qkv_proj.";
constexpr char kGateUp[] = "mlp.gate_up_proj.";
}  // namespace names

// Narrow row views [rows[0]; rows[1]; ...] of a fused weight or bias; kInvalidArgument naming the block if its first
// dim is not their sum. Views share the fused tensor's storage (rows are contiguous), so nothing is copied.
Result<std::vector<at::Tensor>> SplitRows(const std::string& block, const std::string& name, const at::Tensor& fused,
                                          const std::vector<int64_t>& rows) {
  int64_t total = 0;
  for (int64_t r : rows) total += r;
  if (fused.dim() < 1 || fused.size(0) != total) {
    return MakeError(ErrorCode::kInvalidArgument, block + ": fused weight '" + name + "' has " +
                                                      (fused.dim() < 1 ? std::string("no rows") : std::to_string(fused.size(0)) + " rows") +
                                                      ", expected " + std::to_string(total));
  }
  std::vector<at::Tensor> parts;
  int64_t begin = 0;
  for (int64_t r : rows) {
    parts.push_back(fused.narrow(0, begin, r));
    begin += r;
  }
  return parts;
}

class LlamaKernels final : public ModelKernelsBase {
 public:
  LlamaKernels(ModelSpec spec, RopeConfig rope, Activation act)
      : ModelKernelsBase(std::move(spec)),
        rope_(rope),
        act_(act),
        rope_tables_([rope](int64_t length, at::ScalarType dtype, const at::Device& device, at::Tensor* cos,
                            at::Tensor* sin) {
          // The table holds the length-independent frequencies (dynamic NTK unscaled, longrope's short factors,
          // used while the length stays within the model's limits), whatever its own length.
          RopeCosSin(rope.ShortForm(), 0, length, dtype, device, cos, sin);
        }) {}

 protected:
  Status Embedding(const Call& c, at::Tensor* hidden) const override {
    BIGPLAN_ASSIGN_OR_RETURN(at::Tensor w, Get(c, c.prefix + names::kWeight));
    *hidden = at::embedding(w, c.ctx.token_ids);
    return Status::Ok();
  }

  Status DecoderLayer(const Call& c, KvCache* kv, at::Tensor* hidden) const override {
    const std::string& p = c.prefix;
    // Projection weight and bias. Biases are required when the spec says so, else used when the block has them
    // (Qwen2: q/k/v biases only; Llama attention_bias: all four).
    auto proj = [&](const char* module, bool bias_required, at::Tensor* w, at::Tensor* b) -> Status {
      BIGPLAN_ASSIGN_OR_RETURN(*w, Get(c, p + module + "weight"));
      if (bias_required) {
        BIGPLAN_ASSIGN_OR_RETURN(*b, Get(c, p + module + "bias"));
      } else {
        *b = c.weights.Find(p + module + "bias");
      }
      return Status::Ok();
    };
    // A fused projection (Phi-3): the parts are row views of its weight (and bias, if it has one).
    auto fused = [&](const char* module, const std::vector<int64_t>& rows, std::vector<at::Tensor*> w,
                     std::vector<at::Tensor*> b) -> Status {
      BIGPLAN_ASSIGN_OR_RETURN(std::vector<at::Tensor> ws, SplitRows(c.block, p + module + "weight",
                                                                     c.weights.Find(p + module + "weight"), rows));
      for (size_t i = 0; i < w.size(); ++i) *w[i] = ws[i];
      if (at::Tensor fb = c.weights.Find(p + module + "bias"); fb.defined()) {
        BIGPLAN_ASSIGN_OR_RETURN(std::vector<at::Tensor> bs, SplitRows(c.block, p + module + "bias", fb, rows));
        for (size_t i = 0; i < b.size(); ++i) *b[i] = bs[i];
      }
      return Status::Ok();
    };
    const int64_t q_rows = spec_.num_heads * spec_.head_dim, kv_rows = spec_.num_kv_heads * spec_.head_dim;
    at::Tensor wq, bq, wk, bk, wv, bv, wo, bo, wg, bg, wu, bu, wd, bd;
    if (c.weights.Find(p + names::kQkv + "weight").defined()) {
      BIGPLAN_RETURN_IF_ERROR(fused(names::kQkv, {q_rows, kv_rows, kv_rows}, {&wq, &wk, &wv}, {&bq, &bk, &bv}));
    } else {
      BIGPLAN_RETURN_IF_ERROR(proj(names::kQ, spec_.attention_bias, &wq, &bq));
      BIGPLAN_RETURN_IF_ERROR(proj(names::kK, spec_.attention_bias, &wk, &bk));
      BIGPLAN_RETURN_IF_ERROR(proj(names::kV, spec_.attention_bias, &wv, &bv));
    }
    BIGPLAN_RETURN_IF_ERROR(proj(names::kO, false, &wo, &bo));
    if (c.weights.Find(p + names::kGateUp + "weight").defined()) {
      const int64_t inter = spec_.intermediate_size;
      BIGPLAN_RETURN_IF_ERROR(fused(names::kGateUp, {inter, inter}, {&wg, &wu}, {&bg, &bu}));
    } else {
      BIGPLAN_RETURN_IF_ERROR(proj(names::kGate, spec_.mlp_bias, &wg, &bg));
      BIGPLAN_RETURN_IF_ERROR(proj(names::kUp, spec_.mlp_bias, &wu, &bu));
    }
    BIGPLAN_RETURN_IF_ERROR(proj(names::kDown, spec_.mlp_bias, &wd, &bd));
    BIGPLAN_ASSIGN_OR_RETURN(at::Tensor input_norm, Get(c, p + names::kInputNorm));
    BIGPLAN_ASSIGN_OR_RETURN(at::Tensor post_norm, Get(c, p + names::kPostNorm));

    const at::Tensor x = *hidden;
    const int64_t batch = x.size(0);
    const int64_t seq = x.size(1);
    const int64_t heads = spec_.num_heads;
    const int64_t kv_heads = spec_.num_kv_heads;
    const int64_t head_dim = spec_.head_dim;
    const int64_t start_pos = c.ctx.start_pos;
    BIGPLAN_RETURN_IF_ERROR(CheckKvCache(kv, batch, kv_heads, start_pos, seq, head_dim, x.device(), c.block));

    at::Tensor h = RmsNorm(x, input_norm, spec_.norm_eps);
    at::Tensor q = Linear(h, wq, bq).view({batch, seq, heads, head_dim}).transpose(1, 2);
    at::Tensor k = Linear(h, wk, bk).view({batch, seq, kv_heads, head_dim}).transpose(1, 2);
    at::Tensor v = Linear(h, wv, bv).view({batch, seq, kv_heads, head_dim}).transpose(1, 2);

    // cos/sin depend on the position alone, except for dynamic NTK past max_position_embeddings and longrope past
    // original_max_position_embeddings, where the frequencies depend on the current length.
    at::Tensor cos, sin;
    const at::Tensor& position = c.ctx.position;
    if (position.defined()) {
      if (seq != 1 || kv == nullptr) {
        return MakeError(ErrorCode::kInvalidArgument, c.block + ": a static decode step takes one token per row "
                                                                "and a KV cache");
      }
      // Rows of the whole cache, so the table never grows (and is never reallocated) between steps.
      rope_tables_.Get(0, kv->k.size(2), x.scalar_type(), x.device(), &cos, &sin);
      cos = cos.index_select(0, position);
      sin = sin.index_select(0, position);
    } else if (rope_.LengthDependent(start_pos + seq)) {
      RopeCosSin(rope_, start_pos, seq, x.scalar_type(), x.device(), &cos, &sin);
    } else {
      rope_tables_.Get(start_pos, seq, x.scalar_type(), x.device(), &cos, &sin);
    }
    q = ApplyRopeHalf(q, cos, sin);
    k = ApplyRopeHalf(k, cos, sin);

    const double scale = std::pow(static_cast<double>(head_dim), -0.5);
    at::Tensor attn = position.defined() ? StaticDecodeAttention(q, k, v, kv, position, scale)
                                         : CachedAttention(q, k, v, kv, start_pos, scale);
    attn = attn.transpose(1, 2).reshape({batch, seq, heads * head_dim});
    at::Tensor y = x + Linear(attn, wo, bo);

    h = RmsNorm(y, post_norm, spec_.norm_eps);
    at::Tensor mlp = Linear(Activate(act_, Linear(h, wg, bg)) * Linear(h, wu, bu), wd, bd);
    *hidden = y + mlp;
    return Status::Ok();
  }

  Status FinalNorm(const Call& c, at::Tensor* hidden) const override {
    BIGPLAN_ASSIGN_OR_RETURN(at::Tensor w, Get(c, c.prefix + names::kWeight));
    *hidden = RmsNorm(*hidden, w, spec_.norm_eps);
    return Status::Ok();
  }

  Result<at::Tensor> LmHead(const Call& c, const at::Tensor& h) const override {
    BIGPLAN_ASSIGN_OR_RETURN(at::Tensor w, GetAny(c, {c.prefix + names::kWeight, names::kTiedEmbedding}));
    at::Tensor b = c.weights.Find(c.prefix + "bias");
    return Linear(h, w, b);
  }

 public:
  // (The registry's arch::GraphDecodeEligible says the same for the planner.)
  bool StaticDecode(int64_t max_seq_len) const override { return !rope_.LengthDependent(max_seq_len); }

 private:
  const RopeConfig rope_;
  const Activation act_;
  const RopeTableCache rope_tables_;
};

}  // namespace

Result<std::unique_ptr<ModelKernels>> MakeLlamaKernels(const ModelSpec& spec) {
  if (spec.head_dim % 2 != 0) {
    return MakeError(ErrorCode::kInvalidArgument, "model spec: head_dim " + std::to_string(spec.head_dim) +
                                                      " must be even for rotary embeddings");
  }
  // Partial rotary is refused by MakeModelKernels for families the registry does not mark (the Llama family).
  if (spec.rotary_dim < 0 || spec.rotary_dim > spec.head_dim || spec.rotary_dim % 2 != 0) {
    return MakeError(ErrorCode::kInvalidArgument, "model spec: rotary_dim " + std::to_string(spec.rotary_dim) +
                                                      " must be even and at most head_dim " +
                                                      std::to_string(spec.head_dim));
  }
  BIGPLAN_ASSIGN_OR_RETURN(RopeConfig rope, ParseRope(spec));
  BIGPLAN_ASSIGN_OR_RETURN(Activation act, ParseActivation(spec.activation.empty() ? "silu" : spec.activation));
  return std::unique_ptr<ModelKernels>(new LlamaKernels(spec, rope, act));
}

}  // namespace bigplan::kernels_internal
