// Llama-family kernels (Llama 2/3/3.1, Mistral, Qwen2), as transformers' modeling_llama.py / modeling_qwen2.py:
// RMSNorm -> q/k/v projections (optional biases) -> RoPE -> GQA attention over the KV cache -> o_proj -> residual
// -> RMSNorm -> SwiGLU MLP -> residual.
#include <ATen/ATen.h>

#include <cmath>
#include <memory>
#include <string>
#include <utility>

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
}  // namespace names

class LlamaKernels final : public ModelKernelsBase {
 public:
  LlamaKernels(ModelSpec spec, RopeConfig rope, Activation act)
      : ModelKernelsBase(std::move(spec)),
        rope_(rope),
        act_(act),
        rope_tables_([rope](int64_t length, at::ScalarType dtype, const at::Device& device, at::Tensor* cos,
                            at::Tensor* sin) {
          // The table holds the unscaled frequencies of dynamic NTK (used while the length is within
          // max_position_embeddings), whatever its own length.
          RopeConfig fixed = rope;
          if (fixed.type == RopeConfig::Type::kDynamic) fixed.type = RopeConfig::Type::kDefault;
          RopeCosSin(fixed, 0, length, dtype, device, cos, sin);
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
    at::Tensor wq, bq, wk, bk, wv, bv, wo, bo, wg, bg, wu, bu, wd, bd;
    BIGPLAN_RETURN_IF_ERROR(proj(names::kQ, spec_.attention_bias, &wq, &bq));
    BIGPLAN_RETURN_IF_ERROR(proj(names::kK, spec_.attention_bias, &wk, &bk));
    BIGPLAN_RETURN_IF_ERROR(proj(names::kV, spec_.attention_bias, &wv, &bv));
    BIGPLAN_RETURN_IF_ERROR(proj(names::kO, false, &wo, &bo));
    BIGPLAN_RETURN_IF_ERROR(proj(names::kGate, spec_.mlp_bias, &wg, &bg));
    BIGPLAN_RETURN_IF_ERROR(proj(names::kUp, spec_.mlp_bias, &wu, &bu));
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

    // cos/sin depend on the position alone, except for dynamic NTK past max_position_embeddings, where the
    // frequencies depend on the current length.
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
      if (c.ctx.rows.defined()) {  // one position per row: [n, 1, 1, head_dim] against q/k [n, heads, 1, head_dim]
        cos = cos.view({batch, 1, 1, head_dim});
        sin = sin.view({batch, 1, 1, head_dim});
      }
    } else if (rope_.type == RopeConfig::Type::kDynamic && start_pos + seq > rope_.max_position_embeddings) {
      RopeCosSin(rope_, start_pos, seq, x.scalar_type(), x.device(), &cos, &sin);
    } else {
      rope_tables_.Get(start_pos, seq, x.scalar_type(), x.device(), &cos, &sin);
    }
    q = ApplyRopeHalf(q, cos, sin);
    k = ApplyRopeHalf(k, cos, sin);

    const double scale = std::pow(static_cast<double>(head_dim), -0.5);
    at::Tensor attn = c.ctx.rows.defined()
                          ? RowsDecodeAttention(q, k, v, kv, c.ctx.rows, position, c.ctx.attend_len, scale)
                      : position.defined() ? StaticDecodeAttention(q, k, v, kv, position, scale)
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
  bool StaticDecode(int64_t max_seq_len) const override {
    return rope_.type != RopeConfig::Type::kDynamic || max_seq_len <= rope_.max_position_embeddings;
  }

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
  if (spec.rotary_dim != 0 && spec.rotary_dim != spec.head_dim) {
    return MakeError(ErrorCode::kUnsupported, "model spec: partial rotary (rotary_dim " +
                                                  std::to_string(spec.rotary_dim) + " of head_dim " +
                                                  std::to_string(spec.head_dim) + ") is not supported for " +
                                                  spec.architecture);
  }
  BIGPLAN_ASSIGN_OR_RETURN(RopeConfig rope, ParseRope(spec));
  BIGPLAN_ASSIGN_OR_RETURN(Activation act, ParseActivation(spec.activation.empty() ? "silu" : spec.activation));
  return std::unique_ptr<ModelKernels>(new LlamaKernels(spec, rope, act));
}

}  // namespace bigplan::kernels_internal
