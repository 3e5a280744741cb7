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
    BIGPLAN_ASSIGN_OR_RETURN(WeightRef w, Ref(c, c.prefix + names::kWeight));
    BIGPLAN_ASSIGN_OR_RETURN(*hidden, EmbeddingW(w, c.ctx.token_ids));
    return Status::Ok();
  }

  Status DecoderLayer(const Call& c, KvCache* kv, at::Tensor* hidden) const override {
    const std::string& p = c.prefix;
    // Projection weight (whole or streamed in row chunks) and bias. Biases are required when the spec says so,
    // else used when the block has them (Qwen2: q/k/v biases only; Llama attention_bias: all four).
    struct Proj {
      WeightRef w;
      at::Tensor b;
    };
    auto proj = [&](const char* module, bool bias_required, Proj* out) -> Status {
      BIGPLAN_ASSIGN_OR_RETURN(out->w, Ref(c, p + module + "weight"));
      if (bias_required) {
        BIGPLAN_ASSIGN_OR_RETURN(out->b, Get(c, p + module + "bias"));
      } else {
        out->b = c.weights.Find(p + module + "bias");
      }
      return Status::Ok();
    };
    // A fused projection (Phi-3's qkv_proj [q; k; v] and gate_up_proj [gate; up]) is one product whose output
    // columns are split afterwards, so a fused weight streams in row chunks like any other.
    const bool fused_qkv = FindRef(c.weights, p + names::kQkv + "weight").present();
    const bool fused_gate_up = FindRef(c.weights, p + names::kGateUp + "weight").present();
    Proj q_proj, k_proj, v_proj, qkv_proj, o_proj, gate_proj, up_proj, gate_up_proj, down_proj;
    if (fused_qkv) {
      BIGPLAN_RETURN_IF_ERROR(proj(names::kQkv, false, &qkv_proj));
    } else {
      BIGPLAN_RETURN_IF_ERROR(proj(names::kQ, spec_.attention_bias, &q_proj));
      BIGPLAN_RETURN_IF_ERROR(proj(names::kK, spec_.attention_bias, &k_proj));
      BIGPLAN_RETURN_IF_ERROR(proj(names::kV, spec_.attention_bias, &v_proj));
    }
    BIGPLAN_RETURN_IF_ERROR(proj(names::kO, false, &o_proj));
    if (fused_gate_up) {
      BIGPLAN_RETURN_IF_ERROR(proj(names::kGateUp, false, &gate_up_proj));
    } else {
      BIGPLAN_RETURN_IF_ERROR(proj(names::kGate, spec_.mlp_bias, &gate_proj));
      BIGPLAN_RETURN_IF_ERROR(proj(names::kUp, spec_.mlp_bias, &up_proj));
    }
    BIGPLAN_RETURN_IF_ERROR(proj(names::kDown, spec_.mlp_bias, &down_proj));
    BIGPLAN_ASSIGN_OR_RETURN(at::Tensor input_norm, Get(c, p + names::kInputNorm));
    BIGPLAN_ASSIGN_OR_RETURN(at::Tensor post_norm, Get(c, p + names::kPostNorm));
    auto apply = [](const Proj& pr, const at::Tensor& x) { return LinearW(pr.w, x, pr.b); };

    const at::Tensor x = *hidden;
    const int64_t batch = x.size(0);
    const int64_t seq = x.size(1);
    const int64_t heads = spec_.num_heads;
    const int64_t kv_heads = spec_.num_kv_heads;
    const int64_t head_dim = spec_.head_dim;
    const int64_t start_pos = c.ctx.start_pos;
    BIGPLAN_RETURN_IF_ERROR(CheckKvCache(kv, batch, kv_heads, start_pos, seq, head_dim, x.device(), c.block));

    // Projections run in the order the planner streams chunked weights: q, k, v, o, gate, up, down.
    at::Tensor h = RmsNorm(x, input_norm, spec_.norm_eps);
    at::Tensor q, k, v;
    if (fused_qkv) {
      BIGPLAN_ASSIGN_OR_RETURN(at::Tensor qkv, apply(qkv_proj, h));
      const int64_t q_cols = heads * head_dim, kv_cols = kv_heads * head_dim;
      if (qkv.size(-1) != q_cols + 2 * kv_cols) {
        return MakeError(ErrorCode::kInvalidArgument, c.block + ": qkv_proj gives " + std::to_string(qkv.size(-1)) +
                                                          " columns, expected " + std::to_string(q_cols + 2 * kv_cols));
      }
      q = qkv.narrow(-1, 0, q_cols);
      k = qkv.narrow(-1, q_cols, kv_cols);
      v = qkv.narrow(-1, q_cols + kv_cols, kv_cols);
    } else {
      BIGPLAN_ASSIGN_OR_RETURN(q, apply(q_proj, h));
      BIGPLAN_ASSIGN_OR_RETURN(k, apply(k_proj, h));
      BIGPLAN_ASSIGN_OR_RETURN(v, apply(v_proj, h));
    }
    q = q.reshape({batch, seq, heads, head_dim}).transpose(1, 2);
    k = k.reshape({batch, seq, kv_heads, head_dim}).transpose(1, 2);
    v = v.reshape({batch, seq, kv_heads, head_dim}).transpose(1, 2);

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
      if (c.ctx.rows.defined()) {  // one position per row: [n, 1, 1, head_dim] against q/k [n, heads, 1, head_dim]
        cos = cos.view({batch, 1, 1, head_dim});
        sin = sin.view({batch, 1, 1, head_dim});
      }
    } else if (rope_.LengthDependent(start_pos + seq)) {
      RopeCosSin(rope_, start_pos, seq, x.scalar_type(), x.device(), &cos, &sin);
    } else {
      rope_tables_.Get(start_pos, seq, x.scalar_type(), x.device(), &cos, &sin);
    }
    q = ApplyRopeHalf(q, cos, sin);
    k = ApplyRopeHalf(k, cos, sin);

    const double scale = std::pow(static_cast<double>(head_dim), -0.5);
    // Sliding-window layers (Mistral; Qwen2's layers past max_window_layers or marked in layer_types).
    const bool sliding = spec_.sliding_window > 0 && c.layer >= 0 &&
                         static_cast<size_t>(c.layer) < spec_.sliding_window_layers.size() &&
                         spec_.sliding_window_layers[c.layer];
    const int64_t window = sliding ? spec_.sliding_window : 0;
    if (c.ctx.rows.defined() && window > 0) {
      return MakeError(ErrorCode::kUnsupported, c.block + ": rows at their own positions (StepRows) with a sliding "
                                                          "window are not supported");
    }
    at::Tensor attn = c.ctx.rows.defined()
                          ? RowsDecodeAttention(q, k, v, kv, c.ctx.rows, position, c.ctx.attend_len, scale)
                      : position.defined() ? StaticDecodeAttention(q, k, v, kv, position, scale, window)
                                           : CachedAttention(q, k, v, kv, start_pos, scale, window);
    attn = attn.transpose(1, 2).reshape({batch, seq, heads * head_dim});
    BIGPLAN_ASSIGN_OR_RETURN(at::Tensor o, apply(o_proj, attn));
    at::Tensor y = x + o;

    h = RmsNorm(y, post_norm, spec_.norm_eps);
    at::Tensor gate, up;
    if (fused_gate_up) {
      BIGPLAN_ASSIGN_OR_RETURN(at::Tensor gate_up, apply(gate_up_proj, h));
      const int64_t inter = gate_up.size(-1) / 2;
      gate = gate_up.narrow(-1, 0, inter);
      up = gate_up.narrow(-1, inter, inter);
    } else {
      BIGPLAN_ASSIGN_OR_RETURN(gate, apply(gate_proj, h));
      BIGPLAN_ASSIGN_OR_RETURN(up, apply(up_proj, h));
    }
    BIGPLAN_ASSIGN_OR_RETURN(at::Tensor mlp, apply(down_proj, Activate(act_, gate) * up));
    *hidden = y + mlp;
    return Status::Ok();
  }

  Status FinalNorm(const Call& c, at::Tensor* hidden) const override {
    BIGPLAN_ASSIGN_OR_RETURN(at::Tensor w, Get(c, c.prefix + names::kWeight));
    *hidden = RmsNorm(*hidden, w, spec_.norm_eps);
    return Status::Ok();
  }

  Result<at::Tensor> LmHead(const Call& c, const at::Tensor& h) const override {
    BIGPLAN_ASSIGN_OR_RETURN(WeightRef w, RefAny(c, {c.prefix + names::kWeight, names::kTiedEmbedding}));
    at::Tensor b = c.weights.Find(c.prefix + "bias");
    return LinearW(w, h, b);
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
  BIGPLAN_ASSIGN_OR_RETURN(RopeConfig rope, RopeFromSpec(spec));
  BIGPLAN_ASSIGN_OR_RETURN(Activation act, ParseActivation(spec.activation.empty() ? "silu" : spec.activation));
  return std::unique_ptr<ModelKernels>(new LlamaKernels(spec, rope, act));
}

}  // namespace bigplan::kernels_internal
