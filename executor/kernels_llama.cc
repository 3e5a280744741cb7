// Llama-family kernels (Llama 2/3/3.1, Mistral, Qwen2) and Phi-3, as transformers' modeling_llama.py /
// modeling_qwen2.py / modeling_phi3.py: RMSNorm -> q/k/v projections (optional biases) -> RoPE -> GQA attention over
// the KV cache -> o_proj -> residual -> RMSNorm -> SwiGLU MLP -> residual. Phi-3 stores q/k/v and gate/up fused
// along the rows (qkv_proj, gate_up_proj: the registry's kQkv / kGateUp slots); the kernel slices them into narrow
// views (no copies) and runs the same math. Partial rotary (Phi-3's partial_rotary_factor) rotates the first
// rotary_dim dims of each head.
#include <ATen/ATen.h>

#include <atomic>
#include <cmath>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "arch/temporaries.h"
#include "executor/fused_ops.h"
#include "executor/kernels.h"
#include "executor/kernels_internal.h"

namespace bigplan::kernels_internal {
namespace {

using arch::Slot;

class LlamaKernels final : public ModelKernelsBase {
 public:
  LlamaKernels(ModelSpec spec, RopeConfig rope, Activation act)
      : ModelKernelsBase(std::move(spec)),
        rope_(rope),
        act_(act),
        float32_routing_(spec_.architecture == "mixtral"),
        rope_tables_([rope](int64_t length, at::ScalarType dtype, const at::Device& device, at::Tensor* cos,
                            at::Tensor* sin) {
          // The table holds the length-independent frequencies (dynamic NTK unscaled, longrope's short factors,
          // used while the length stays within the model's limits), whatever its own length.
          RopeCosSin(rope.ShortForm(), 0, length, dtype, device, cos, sin);
        }) {}

 protected:
  // A projection: its weight (whole or streamed in row chunks) and bias (undefined when absent).
  struct Proj {
    WeightRef w;
    at::Tensor b;
  };

  Status Embedding(const Call& c, at::Tensor* hidden) const override {
    if (c.ctx.shards != nullptr) return ShardEmbedding(c, hidden);
    BIGPLAN_ASSIGN_OR_RETURN(WeightRef w, Ref(c, Slot::kTokenEmbedding));
    BIGPLAN_ASSIGN_OR_RETURN(*hidden, EmbeddingW(w, c.ctx.token_ids));
    return Status::Ok();
  }

  Status DecoderLayer(const Call& c, KvCache* kv, at::Tensor* hidden) const override {
    // Projection weights (whole or streamed in row chunks) and biases. Biases are required when the spec says so,
    // else used when the block has them (Qwen2: q/k/v biases only; Llama attention_bias: all four).
    auto proj = [&](Slot weight, Slot bias, bool bias_required, Proj* out) -> Status {
      BIGPLAN_ASSIGN_OR_RETURN(out->w, Ref(c, weight));
      if (bias_required) {
        BIGPLAN_ASSIGN_OR_RETURN(out->b, Get(c, bias));
      } else if (bias != Slot::kCount) {
        out->b = Optional(c, bias);
      }
      return Status::Ok();
    };
    // A fused projection (Phi-3's qkv_proj [q; k; v] and gate_up_proj [gate; up]) is one product whose output
    // columns are split afterwards, so a fused weight streams in row chunks like any other.
    const bool fused_qkv = c.weights.Has(Slot::kQkv);
    const bool fused_gate_up = c.weights.Has(Slot::kGateUp);
    Proj q_proj, k_proj, v_proj, qkv_proj, o_proj, gate_proj, up_proj, gate_up_proj, down_proj;
    if (fused_qkv) {
      BIGPLAN_RETURN_IF_ERROR(proj(Slot::kQkv, Slot::kQkvBias, false, &qkv_proj));
    } else {
      BIGPLAN_RETURN_IF_ERROR(proj(Slot::kQ, Slot::kQBias, spec_.attention_bias, &q_proj));
      BIGPLAN_RETURN_IF_ERROR(proj(Slot::kK, Slot::kKBias, spec_.attention_bias, &k_proj));
      BIGPLAN_RETURN_IF_ERROR(proj(Slot::kV, Slot::kVBias, spec_.attention_bias, &v_proj));
    }
    BIGPLAN_RETURN_IF_ERROR(proj(Slot::kO, Slot::kOBias, false, &o_proj));
    const bool sparse = SparseLayer(c.layer);
    if (sparse) {
      // The routed experts' weights are read per expert in Moe().
    } else if (fused_gate_up) {
      BIGPLAN_RETURN_IF_ERROR(proj(Slot::kGateUp, Slot::kCount, false, &gate_up_proj));
    } else {
      BIGPLAN_RETURN_IF_ERROR(proj(Slot::kGate, Slot::kGateBias, spec_.mlp_bias, &gate_proj));
      BIGPLAN_RETURN_IF_ERROR(proj(Slot::kUp, Slot::kUpBias, spec_.mlp_bias, &up_proj));
    }
    if (!sparse) BIGPLAN_RETURN_IF_ERROR(proj(Slot::kDown, Slot::kDownBias, spec_.mlp_bias, &down_proj));
    BIGPLAN_ASSIGN_OR_RETURN(at::Tensor input_norm, Get(c, Slot::kInputNorm));
    BIGPLAN_ASSIGN_OR_RETURN(at::Tensor post_norm, Get(c, Slot::kPostNorm));
    const at::Tensor x = *hidden;
    // The fused CUDA kernels (executor/fused_ops.h) where they apply; each op falls back to LibTorch otherwise.
    const bool fused = spec_.fused_kernels && fused_ops::Eligible(x);
    // residual + x w^T (+ b); `residual` may be undefined. The residuals (the layer's input, then its attention
    // output) are read nowhere after their product, so cuBLAS accumulates into them, except in a static decode step,
    // whose input buffer a graph capture's warm-up runs read again.
    const bool residual_dead = !c.ctx.position.defined();
    auto linear = [&](const Proj& pr, const at::Tensor& in, const at::Tensor& residual) -> Result<at::Tensor> {
      if (fused && pr.w.whole.defined() && !pr.w.quant.quantized()) {
        at::Tensor y = fused_ops::Linear(in, pr.w.whole, pr.b, residual, residual_dead);
        if (y.defined()) return y;
      }
      BIGPLAN_ASSIGN_OR_RETURN(at::Tensor y, LinearW(pr.w, in, pr.b));
      return residual.defined() ? residual + y : y;
    };
    auto apply = [&](const Proj& pr, const at::Tensor& in) { return linear(pr, in, at::Tensor()); };
    auto norm = [&](const at::Tensor& t, const at::Tensor& w) { return Norm(t, w, fused); };
    // q, k, v (gate, up) lying back to back in memory (the planner lays a block's weights out in this order) run as
    // one product.
    if (fused && !fused_qkv) qkv_proj = Concat({&q_proj, &k_proj, &v_proj});
    if (fused && !sparse && !fused_gate_up) gate_up_proj = Concat({&gate_proj, &up_proj});
    const bool qkv_one = fused_qkv || qkv_proj.w.whole.defined();
    const bool gate_up_one = fused_gate_up || gate_up_proj.w.whole.defined();

    const int64_t batch = x.size(0);
    const int64_t seq = x.size(1);
    const int64_t heads = spec_.num_heads;
    const int64_t kv_heads = spec_.num_kv_heads;
    const int64_t head_dim = spec_.head_dim;
    const int64_t start_pos = c.ctx.start_pos;
    BIGPLAN_RETURN_IF_ERROR(CheckKvCache(kv, batch, kv_heads, start_pos, seq, head_dim, x.device(), c.block));

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
    const at::Tensor& position = c.ctx.position;
    if (position.defined() && (seq != 1 || kv == nullptr)) {
      return MakeError(ErrorCode::kInvalidArgument, c.block + ": a static decode step takes one token per row "
                                                              "and a KV cache");
    }
    const auto whole = [](const Proj& pr) { return pr.w.whole.defined() && !pr.w.quant.quantized(); };
    // Decode-sized batches with whole q/k/v weights: the input norm, the q/k/v product, RoPE and the cache write in
    // one kernel (fused_ops::QkvRopeKvWrite), then the attention.
    at::Tensor attn;
    if (fused && qkv_one && whole(qkv_proj)) {
      RopeStep rs;
      if (FusedRopeSetup(c, kv, seq, x.scalar_type(), x.device(), &rs) && !rs.q_norm.defined()) {
        const at::Tensor q_rot = fused_ops::QkvRopeKvWrite(x, input_norm, spec_.norm_eps, qkv_proj.w.whole, qkv_proj.b,
                                                           heads, kv_heads, head_dim, rs.cos, rs.sin, rs.at, kv->k, kv->v);
        if (q_rot.defined()) attn = FusedAttend(c, q_rot, kv, rs, scale, window);
      }
    }
    if (!attn.defined()) {
      // Projections run in the order the planner streams chunked weights: q, k, v, o, gate, up, down.
      at::Tensor q, k, v;
      if (qkv_one) {
        // The norm in the product's kernel where it fits (Qwen3's q/k norms, partial rotary), else one by one.
        at::Tensor qkv = fused && whole(qkv_proj) ? fused_ops::NormLinear(x, input_norm, spec_.norm_eps,
                                                                          qkv_proj.w.whole, qkv_proj.b)
                                                  : at::Tensor();
        if (!qkv.defined()) {
          BIGPLAN_ASSIGN_OR_RETURN(qkv, apply(qkv_proj, norm(x, input_norm)));
        }
        const int64_t q_cols = heads * head_dim, kv_cols = kv_heads * head_dim;
        if (qkv.size(-1) != q_cols + 2 * kv_cols) {
          return MakeError(ErrorCode::kInvalidArgument, c.block + ": qkv_proj gives " + std::to_string(qkv.size(-1)) +
                                                            " columns, expected " +
                                                            std::to_string(q_cols + 2 * kv_cols));
        }
        q = qkv.narrow(-1, 0, q_cols);
        k = qkv.narrow(-1, q_cols, kv_cols);
        v = qkv.narrow(-1, q_cols + kv_cols, kv_cols);
      } else {
        const at::Tensor h = norm(x, input_norm);
        BIGPLAN_ASSIGN_OR_RETURN(q, apply(q_proj, h));
        BIGPLAN_ASSIGN_OR_RETURN(k, apply(k_proj, h));
        BIGPLAN_ASSIGN_OR_RETURN(v, apply(v_proj, h));
      }
      if (fused) attn = FusedAttention(c, q, k, v, kv, scale, window);
      if (!attn.defined()) {
        BIGPLAN_ASSIGN_OR_RETURN(attn, Attention(c, q, k, v, kv, scale, window));
      }
    }
    // A shard's products are partial sums over its heads (and below, its MLP rows): the first shard adds the
    // residual, then every shard adds the others' parts.
    const ForwardContext::Shards* tp = c.ctx.shards;
    const bool adds_residual = tp == nullptr || tp->shard == 0;
    if (!adds_residual) {
      o_proj.b = at::Tensor();  // o_proj's and down_proj's biases: shard 0 adds them (arch/tensor_parallel.h)
      down_proj.b = at::Tensor();
    }
    BIGPLAN_ASSIGN_OR_RETURN(at::Tensor y, linear(o_proj, attn, adds_residual ? x : at::Tensor()));
    if (tp != nullptr) {
      y = y.contiguous();
      BIGPLAN_RETURN_IF_ERROR(tp->all_reduce(y));
    }

    if (sparse) {
      // A shard's experts are its rows of every expert: its sum is a part of the layer's. As the dense products,
      // the first shard adds the residual (in the down products' kernel where the experts run there), then every
      // shard adds the others' parts.
      BIGPLAN_ASSIGN_OR_RETURN(*hidden, Moe(c, y, post_norm, fused, adds_residual ? y : at::Tensor()));
      if (tp != nullptr) {
        *hidden = hidden->contiguous();
        BIGPLAN_RETURN_IF_ERROR(tp->all_reduce(*hidden));
      }
      return Status::Ok();
    }
    // Decode-sized batches with a whole [gate; up] weight: the norm, the product and SiLU(gate) * up in one kernel.
    at::Tensor act;
    if (fused && gate_up_one && act_ == Activation::kSilu && whole(gate_up_proj)) {
      act = fused_ops::GateUpSiluMul(y, post_norm, spec_.norm_eps, gate_up_proj.w.whole, gate_up_proj.b);
    }
    if (act.defined()) {
      // (the fused kernel computed it)
    } else if (gate_up_one) {
      BIGPLAN_ASSIGN_OR_RETURN(at::Tensor gate_up, apply(gate_up_proj, norm(y, post_norm)));
      if (fused && act_ == Activation::kSilu) act = fused_ops::SiluMul(gate_up);
      if (!act.defined()) {
        const int64_t inter = gate_up.size(-1) / 2;
        act = Activate(act_, gate_up.narrow(-1, 0, inter)) * gate_up.narrow(-1, inter, inter);
      }
    } else {
      const at::Tensor h = norm(y, post_norm);
      BIGPLAN_ASSIGN_OR_RETURN(at::Tensor gate, apply(gate_proj, h));
      BIGPLAN_ASSIGN_OR_RETURN(at::Tensor up, apply(up_proj, h));
      act = Activate(act_, gate) * up;
    }
    BIGPLAN_ASSIGN_OR_RETURN(*hidden, linear(down_proj, act, adds_residual ? y : at::Tensor()));
    if (tp != nullptr) {
      *hidden = hidden->contiguous();
      BIGPLAN_RETURN_IF_ERROR(tp->all_reduce(*hidden));
    }
    return Status::Ok();
  }

  // What the fused RoPE + KV-write kernels take for a step: positions, the cos/sin tables and (Qwen3) the q/k norms.
  struct RopeStep {
    fused_ops::StepPositions at;
    at::Tensor cos, sin, q_norm, k_norm;
  };

  // Fills *out for the fused path of the attention (executor/fused_ops.h); false where it does not apply: no cache,
  // partial rotary, length-dependent RoPE, shapes the kernels do not take.
  bool FusedRopeSetup(const Call& c, KvCache* kv, int64_t seq, at::ScalarType dtype, const at::Device& device,
                      RopeStep* out) const {
    const int64_t heads = spec_.num_heads, kv_heads = spec_.num_kv_heads, head_dim = spec_.head_dim;
    const int64_t start_pos = c.ctx.start_pos;
    if (kv == nullptr || (spec_.rotary_dim != 0 && spec_.rotary_dim != head_dim) ||
        rope_.LengthDependent(std::max<int64_t>(start_pos + seq, kv->k.size(2)))) {
      return false;
    }
    const bool one_token = seq == 1;
    if (one_token && !fused_ops::DecodeAttentionTakes(heads, kv_heads, head_dim)) return false;
    if (!one_token && (c.ctx.position.defined() || c.ctx.rows.defined())) return false;
    if (spec_.qk_norm) {
      out->q_norm = Optional(c, Slot::kQNorm);
      out->k_norm = Optional(c, Slot::kKNorm);
      if (!out->q_norm.defined() || !out->k_norm.defined()) return false;
    }
    if (c.ctx.rows.defined()) {
      out->at = {c.ctx.position, true, 0, c.ctx.rows};
    } else if (c.ctx.position.defined()) {
      out->at = {c.ctx.position, false, 0, at::Tensor()};
    } else {
      out->at.pos_host = start_pos;
    }
    rope_tables_.Get(0, kv->k.size(2), dtype, device, &out->cos, &out->sin);
    return true;
  }

  // The attention over the cache after the fused RoPE + KV write: the split-K decode kernel for one new token per
  // row, or SDPA over the cache for a prompt; [batch, seq, heads x head_dim].
  at::Tensor FusedAttend(const Call& c, const at::Tensor& q_rot, KvCache* kv, const RopeStep& rs, double scale,
                         int64_t window) const {
    const int64_t batch = q_rot.size(0), seq = q_rot.size(2), heads = spec_.num_heads, head_dim = spec_.head_dim;
    const int64_t start_pos = c.ctx.start_pos;
    at::Tensor attn;
    if (seq == 1) {
      const int64_t max_len = c.ctx.rows.defined() ? std::max<int64_t>(1, c.ctx.attend_len)
                              : c.ctx.position.defined() ? kv->k.size(2)
                                                         : start_pos + 1;
      attn = fused_ops::DecodeAttention(q_rot, kv->k, kv->v, rs.at, max_len, window, scale);
      TORCH_CHECK(attn.defined(), c.block, ": the fused decode attention declined arguments it was checked to take");
    } else {
      const int64_t total = start_pos + seq;
      attn = AttendCache(q_rot, kv->k.narrow(0, 0, batch).narrow(2, 0, total),
                         kv->v.narrow(0, 0, batch).narrow(2, 0, total), start_pos, scale, window);
    }
    return attn.transpose(1, 2).reshape({batch, seq, heads * head_dim});
  }

  // The fused path of the attention from the projections q, k, v [batch, seq, heads or kv_heads x head_dim]: RoPE
  // (after Qwen3's q/k norms) fused with the KV-cache write, then FusedAttend. Undefined (nothing written) where it
  // does not apply (FusedRopeSetup).
  at::Tensor FusedAttention(const Call& c, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, KvCache* kv,
                            double scale, int64_t window) const {
    RopeStep rs;
    if (!FusedRopeSetup(c, kv, q.size(1), q.scalar_type(), q.device(), &rs)) return at::Tensor();
    const at::Tensor q_rot = fused_ops::RopeKvWrite(q, k, v, spec_.num_heads, spec_.num_kv_heads, spec_.head_dim,
                                                    rs.cos, rs.sin, rs.at, kv->k, kv->v, rs.q_norm, rs.k_norm,
                                                    spec_.norm_eps);
    if (!q_rot.defined()) return at::Tensor();
    return FusedAttend(c, q_rot, kv, rs, scale, window);
  }

  // The LibTorch path of the attention: [batch, seq, heads x head_dim] from the projections.
  Result<at::Tensor> Attention(const Call& c, at::Tensor q, at::Tensor k, at::Tensor v, KvCache* kv, double scale,
                               int64_t window) const {
    const int64_t batch = q.size(0), seq = q.size(1), heads = spec_.num_heads, kv_heads = spec_.num_kv_heads,
                  head_dim = spec_.head_dim;
    const int64_t start_pos = c.ctx.start_pos;
    q = q.reshape({batch, seq, heads, head_dim}).transpose(1, 2);
    k = k.reshape({batch, seq, kv_heads, head_dim}).transpose(1, 2);
    if (spec_.qk_norm) {  // Qwen3: RMSNorm over each head's dims, before RoPE
      BIGPLAN_ASSIGN_OR_RETURN(at::Tensor q_norm, Get(c, Slot::kQNorm));
      BIGPLAN_ASSIGN_OR_RETURN(at::Tensor k_norm, Get(c, Slot::kKNorm));
      q = RmsNorm(q, q_norm, spec_.norm_eps);
      k = RmsNorm(k, k_norm, spec_.norm_eps);
    }
    v = v.reshape({batch, seq, kv_heads, head_dim}).transpose(1, 2);

    // cos/sin depend on the position alone, except for dynamic NTK past max_position_embeddings and longrope past
    // original_max_position_embeddings, where the frequencies depend on the current length.
    at::Tensor cos, sin;
    const at::Tensor& position = c.ctx.position;
    if (position.defined()) {
      // Rows of the whole cache, so the table never grows (and is never reallocated) between steps.
      rope_tables_.Get(0, kv->k.size(2), q.scalar_type(), q.device(), &cos, &sin);
      cos = cos.index_select(0, position);
      sin = sin.index_select(0, position);
      if (c.ctx.rows.defined()) {  // one position per row: [n, 1, 1, head_dim] against q/k [n, heads, 1, head_dim]
        cos = cos.view({batch, 1, 1, head_dim});
        sin = sin.view({batch, 1, 1, head_dim});
      }
    } else if (rope_.LengthDependent(start_pos + seq)) {
      RopeCosSin(rope_, start_pos, seq, q.scalar_type(), q.device(), &cos, &sin);
    } else {
      rope_tables_.Get(start_pos, seq, q.scalar_type(), q.device(), &cos, &sin);
    }
    q = ApplyRopeHalf(q, cos, sin);
    k = ApplyRopeHalf(k, cos, sin);
    at::Tensor attn = c.ctx.rows.defined()
                          ? RowsDecodeAttention(q, k, v, kv, c.ctx.rows, position, c.ctx.attend_len, scale)
                      : position.defined() ? StaticDecodeAttention(q, k, v, kv, position, scale, window)
                                           : CachedAttention(q, k, v, kv, start_pos, scale, window);
    return attn.transpose(1, 2).reshape({batch, seq, heads * head_dim});
  }

  // One projection over several whole weights lying back to back in memory (q, k, v; gate, up) with their biases
  // (all absent, or all present: one view when back to back too, else concatenated); an empty Proj otherwise.
  static Proj Concat(std::initializer_list<const Proj*> parts) {
    std::vector<at::Tensor> ws, bs;
    for (const Proj* p : parts) {
      if (p->w.quant.quantized()) return Proj{};
      ws.push_back(p->w.whole);
      if (p->b.defined()) bs.push_back(p->b);
    }
    Proj out;
    if (!bs.empty() && bs.size() != ws.size()) return Proj{};
    if (!bs.empty()) {
      out.b = Adjacent(bs);
      if (!out.b.defined()) {
        for (const at::Tensor& b : bs) {
          if (b.dim() != 1 || b.scalar_type() != bs[0].scalar_type() || b.device() != bs[0].device()) return Proj{};
        }
        out.b = at::cat(bs);
      }
    }
    out.w.whole = Adjacent(ws);
    if (!out.w.whole.defined()) return Proj{};
    out.w.weights = parts.begin()[0]->w.weights;
    out.w.slot = parts.begin()[0]->w.slot;
    return out;
  }

  // Tensors of one dtype, device and trailing shape, each contiguous, each starting where the previous one ends, as
  // one view concatenated along dim 0; undefined otherwise.
  static at::Tensor Adjacent(const std::vector<at::Tensor>& parts) {
    if (parts.empty()) return at::Tensor();
    const at::Tensor& a = parts[0];
    int64_t rows = 0;
    for (size_t i = 0; i < parts.size(); ++i) {
      const at::Tensor& t = parts[i];
      if (!t.defined() || t.dim() != a.dim() || t.dim() < 1 || !t.is_contiguous() ||
          t.scalar_type() != a.scalar_type() || t.device() != a.device() ||
          !t.sizes().slice(1).equals(a.sizes().slice(1))) {
        return at::Tensor();
      }
      if (i > 0) {
        const at::Tensor& p = parts[i - 1];
        if (static_cast<const uint8_t*>(p.data_ptr()) + p.numel() * p.element_size() !=
            static_cast<const uint8_t*>(t.data_ptr())) {
          return at::Tensor();
        }
      }
      rows += t.size(0);
    }
    std::vector<int64_t> shape(a.sizes().begin(), a.sizes().end());
    shape[0] = rows;
    return at::from_blob(a.data_ptr(), shape, a.options());
  }

  // [gate; up] as one [2 rows, cols] view when both are whole plain matrices of one shape lying back to back in
  // memory; undefined otherwise.
  static at::Tensor AdjacentRows(const WeightRef& gate, const WeightRef& up) {
    if (gate.quant.quantized() || up.quant.quantized() || !gate.whole.defined() || gate.whole.dim() != 2 ||
        !up.whole.defined() || !gate.whole.sizes().equals(up.whole.sizes())) {
      return at::Tensor();
    }
    return Adjacent({gate.whole, up.whole});
  }

  bool SparseLayer(int layer) const {
    return layer >= 0 && static_cast<size_t>(layer) < spec_.sparse_layers.size() && spec_.sparse_layers[layer];
  }

  // RMSNorm(t) with weight w: the fused kernel where `fused` and it applies, else LibTorch's ops.
  at::Tensor Norm(const at::Tensor& t, const at::Tensor& w, bool fused) const {
    at::Tensor out = fused ? fused_ops::RmsNorm(t, w, spec_.norm_eps) : at::Tensor();
    return out.defined() ? out : RmsNorm(t, w, spec_.norm_eps);
  }

  // A sparse layer's MLP, as transformers' MixtralSparseMoeBlock / Qwen2MoeSparseMoeBlock / Qwen3MoeSparseMoeBlock:
  // router logits in the activation dtype, softmax in float32 over every expert, the top k (ties: the lower
  // index), renormalized when norm_topk_prob; the weights cast to the activation dtype (Qwen) or kept in float32
  // (Mixtral). Each chosen expert runs its SwiGLU MLP on its rows, scaled by its weight and added (index_add_, in
  // expert order) into the output in the activation dtype. Qwen2-MoE adds its shared expert, scaled by
  // sigmoid(shared_expert_gate . h).
  //
  // Takes the attention's output y (the MLP's input is RMSNorm(y, post_norm)) and returns residual + the MLP's output
  // (the MLP's output alone when `residual` is undefined). `fused`: the fused RMSNorm applies to y.
  Result<at::Tensor> Moe(const Call& c, const at::Tensor& y, const at::Tensor& post_norm, bool fused,
                         const at::Tensor& residual) const {
    const int64_t hidden = y.size(-1);
    BIGPLAN_ASSIGN_OR_RETURN(WeightRef router, Ref(c, Slot::kRouter));
    const bool router_whole = router.whole.defined() && !router.quant.quantized();
    // Decode rows: the norm and the router's product in one kernel, which also writes the normed rows.
    at::Tensor x, logits;
    if (fused && router_whole) {
      at::Tensor normed;
      logits = fused_ops::NormLinear(y, post_norm, spec_.norm_eps, router.whole, at::Tensor(), &normed);
      if (logits.defined()) {
        x = normed.reshape({-1, hidden});
        logits = logits.reshape({x.size(0), -1});
      }
    }
    if (!logits.defined()) {
      x = Norm(y, post_norm, fused).reshape({-1, hidden});
      logits = spec_.fused_kernels && router_whole ? fused_ops::Linear(x, router.whole, at::Tensor(), at::Tensor())
                                                   : at::Tensor();
      if (!logits.defined()) {
        BIGPLAN_ASSIGN_OR_RETURN(logits, LinearW(router, x, at::Tensor()));
      }
    }
    // One token with fused kernels: softmax, top k, renormalization and the cast in one kernel, which also writes
    // the choices (and x) where the host reads them.
    const BlockWeights::HostChoices host_choices =
        spec_.fused_kernels && logits.size(0) == 1 ? c.weights.ChoicesForHost() : BlockWeights::HostChoices{};
    const at::ScalarType weight_dtype = float32_routing_ ? at::kFloat : x.scalar_type();
    auto [topw, topi] = spec_.fused_kernels && logits.size(0) == 1
                            ? fused_ops::RouterTopK(logits, static_cast<int>(spec_.num_experts_per_tok),
                                                    spec_.norm_topk_prob, weight_dtype, host_choices.ids,
                                                    host_choices.weights, x, host_choices.x)
                            : std::pair<at::Tensor, at::Tensor>();
    const bool written = topw.defined() && host_choices.ids != nullptr;
    if (!topw.defined()) {
      const at::Tensor probs = at::softmax(logits.to(at::kFloat), -1);
      std::tie(topw, topi) = at::topk(probs, spec_.num_experts_per_tok, -1);
      if (spec_.norm_topk_prob) topw = topw / topw.sum(-1, /*keepdim=*/true);
      if (!float32_routing_) topw = topw.to(x.scalar_type());
    }
    // Routed experts all resident on the GPU, a few tokens: the chosen experts' products read their matrices on the
    // device (fused_ops::MoeExperts), so nothing waits for the host and a decode step can be captured in a graph.
    // There the residual is added in the down products' kernel (but for a shared expert, added before it).
    const bool shared_expert = spec_.shared_expert_intermediate_size > 0;
    const at::Tensor fold = !shared_expert && residual.defined() && residual.is_contiguous() &&
                                    residual.scalar_type() == x.scalar_type() && residual.numel() == x.numel()
                                ? residual.reshape({-1, hidden})
                                : at::Tensor();
    bool residual_added = false;
    at::Tensor out = DeviceExperts(c, x, topi, topw, fold, &residual_added);
    if (!out.defined()) {
      BIGPLAN_ASSIGN_OR_RETURN(out, HostDispatchedExperts(c, x, topi, topw, written));
    }
    if (spec_.shared_expert_intermediate_size > 0) {
      BIGPLAN_ASSIGN_OR_RETURN(WeightRef sg, Ref(c, Slot::kSharedGate));
      BIGPLAN_ASSIGN_OR_RETURN(WeightRef su, Ref(c, Slot::kSharedUp));
      BIGPLAN_ASSIGN_OR_RETURN(WeightRef sd, Ref(c, Slot::kSharedDown));
      BIGPLAN_ASSIGN_OR_RETURN(WeightRef sgate, Ref(c, Slot::kSharedExpertGate));
      BIGPLAN_ASSIGN_OR_RETURN(at::Tensor g, LinearW(sg, x, at::Tensor()));
      BIGPLAN_ASSIGN_OR_RETURN(at::Tensor u, LinearW(su, x, at::Tensor()));
      BIGPLAN_ASSIGN_OR_RETURN(at::Tensor shared, LinearW(sd, Activate(act_, g) * u, at::Tensor()));
      BIGPLAN_ASSIGN_OR_RETURN(at::Tensor gate_logit, LinearW(sgate, x, at::Tensor()));
      out = out + at::sigmoid(gate_logit) * shared;
    }
    if (residual.defined() && !residual_added) out = residual.reshape({-1, hidden}) + out;
    return out.view(y.sizes());
  }

  // The device path of Moe (see there): undefined when the layer's experts are not all resident on the GPU or the
  // activation is not SiLU. A few tokens: fused_ops::MoeExperts; more (a prompt): GroupedResidentExperts, where it
  // applies (bf16, experts at equal distances, a GPU with grouped products).
  // `residual` ([tokens, hidden] contiguous, x's dtype, or undefined) is added to the sum where the kernel takes it;
  // *added says whether it was.
  at::Tensor DeviceExperts(const Call& c, const at::Tensor& x, const at::Tensor& topi, const at::Tensor& topw,
                           const at::Tensor& residual, bool* added) const {
    *added = false;
    if (!spec_.fused_kernels || act_ != Activation::kSilu || !x.is_cuda()) return at::Tensor();
    const BlockWeights::ResidentExpertTable* table = c.weights.ResidentExperts();
    if (table == nullptr || table->gate_up.size() != spec_.num_experts || table->hidden != x.size(1)) {
      return at::Tensor();
    }
    if (x.size(0) > fused_ops::kMoeMaxTokens) {
      return GroupedResidentExperts(x.contiguous(), topi.contiguous(), topw.contiguous(), *table);
    }
    at::Tensor out = fused_ops::MoeExperts(x.contiguous(), topi.contiguous(), topw.contiguous(), table->gate_up,
                                           table->down, table->inter, residual);
    *added = out.defined() && residual.defined();
    return out;
  }

  // The experts dispatched from the host: the choices reach the host (BlockWeights::BeginExperts), and the chosen
  // experts run as groups or one by one, wherever the expert engine put them; the host's sum is added last.
  Result<at::Tensor> HostDispatchedExperts(const Call& c, const at::Tensor& x, const at::Tensor& topi,
                                           const at::Tensor& topw, bool written) const {
    BIGPLAN_ASSIGN_OR_RETURN(BlockWeights::ExpertWork work,
                             c.weights.BeginExperts(x, topi, topw, spec_.num_experts, written));
    at::Tensor out = at::zeros_like(x);
    for (const BlockWeights::ExpertGroup& g : work.groups) {
      BIGPLAN_RETURN_IF_ERROR(c.weights.AcquireGroup(g.index));
      BIGPLAN_RETURN_IF_ERROR(GroupedSwiGlu(g, act_, spec_.fused_kernels, &out));
      BIGPLAN_RETURN_IF_ERROR(c.weights.ReleaseGroup(g.index));
    }
    if (GroupedPromptEligible(x, topi, work.tasks)) {
      BIGPLAN_RETURN_IF_ERROR(GroupedQuantizedPrompt(c, x, topi, topw, work.tasks, &out));
      BIGPLAN_RETURN_IF_ERROR(c.weights.FinishExperts(&out));
      return out;
    }
    for (const BlockWeights::ExpertTask& t : work.tasks) {
      BIGPLAN_RETURN_IF_ERROR(c.weights.AcquireExpert(t.expert));
      BIGPLAN_RETURN_IF_ERROR(ExpertByItself(c, x, topw, t, &out));
    }
    BIGPLAN_RETURN_IF_ERROR(c.weights.FinishExperts(&out));
    return out;
  }

  // Whether a prompt's experts dispatched from the host may run as GroupedQuantizedPrompt: SiLU experts whose
  // [gate; up] and down matrices' bf16 copies fit arch::kMoeDequantScratchBytes at least twice, bf16 on a GPU with
  // grouped products, more tokens than a decode step's kernels take and at most one grouped chunk's, and the tasks
  // covering every (token, choice) pair (none on the host). Whether the experts are quantized is seen per expert.
  bool GroupedPromptEligible(const at::Tensor& x, const at::Tensor& topi,
                             const std::vector<BlockWeights::ExpertTask>& tasks) const {
    const int64_t hidden = x.size(1), inter = spec_.moe_intermediate_size;
    if (!spec_.fused_kernels || !spec_.grouped_prompt_experts || act_ != Activation::kSilu || !x.is_cuda() ||
        x.scalar_type() != at::kBFloat16 || x.size(0) <= fused_ops::kMoeMaxTokens ||
        x.size(0) > arch::kMoeGroupedTokens || tasks.empty() ||
        spec_.num_experts > fused_ops::kMoeRouteMaxExperts || inter <= 0 || hidden % 8 != 0 || inter % 8 != 0 ||
        arch::MoeDequantScratchExperts(hidden, inter, 2, spec_.num_experts) < 2 || topi.dim() != 2 ||
        topi.size(0) != x.size(0)) {
      return false;
    }
    if (!GroupedProductsRun(x)) return false;
    int64_t pairs = 0;
    for (const BlockWeights::ExpertTask& t : tasks) pairs += t.rows.numel();
    return pairs == topi.numel();
  }

  // A prompt's routed experts, dispatched from the host, as grouped products (GroupedPromptEligible): the (token,
  // choice) pairs grouped by expert on the device (fused_ops::MoeRoute); the experts, in index order, taken in
  // windows of arch::MoeDequantScratchExperts consecutive indices: each quantized expert's matrices dequantized into
  // the window's bf16 scratch (fused_ops::DequantBatch: the experts resting on the GPU in launches of up to
  // fused::kDequantMaxJobs matrices; one copied into a ring slot in a launch of its own between AcquireExpert and
  // ReleaseExpert, so its slot frees at once), then one grouped product per matrix over the window (at::_grouped_mm,
  // as GroupedResidentExperts). Per-row fp8/int8 experts go in as their values alone and their products are scaled
  // after rounding (fused_ops::ScaleGroupedRows), QuantLinear's per-row path's roundings; other formats go in
  // dequantized, as QuantLinear multiplies them for a prompt. An expert the kernel does not take (plain or chunked
  // weights, another layout) runs by itself into *out, its scratch zeroed so its pairs' grouped outputs are 0. The
  // pairs' outputs are combined once (fused_ops::MoeCombine) and added to *out.
  Status GroupedQuantizedPrompt(const Call& c, const at::Tensor& x, const at::Tensor& topi, const at::Tensor& topw,
                                const std::vector<BlockWeights::ExpertTask>& tasks, at::Tensor* out) const {
    const int64_t hidden = x.size(1), inter = spec_.moe_intermediate_size;
    const int64_t window = arch::MoeDequantScratchExperts(hidden, inter, 2, spec_.num_experts);
    const at::Tensor xc = x.contiguous(), ids = topi.contiguous();
    at::Tensor offs, token, place;
    if (!fused_ops::MoeRoute(ids, spec_.num_experts, &offs, &token, &place)) {
      return MakeError(ErrorCode::kInternal, "grouped prompt experts: the routing kernel declined");
    }
    const at::Tensor xs = xc.index_select(0, token);  // the pairs' inputs, sorted by expert
    at::Tensor y = at::zeros({ids.numel(), hidden}, x.options());
    const at::Tensor gu_scratch = at::empty({window, 2 * inter, hidden}, x.options());
    const at::Tensor down_scratch = at::empty({window, hidden, inter}, x.options());
    // Per-row fp8/int8 experts: their values alone in the scratch, their rows' scales here, applied to the rounded
    // products (QuantLinear's per-row path); 1 for the window's other experts where some are scaled.
    const at::TensorOptions f32 = x.options().dtype(at::kFloat);
    at::Tensor gu_scales, down_scales;
    bool scaled = false;             // some expert of the window is scaled
    std::vector<int64_t> unscaled;  // the window's other slots
    // Rows before expert e in the sorted order (the tasks list every expert with pairs, ascending).
    std::vector<int64_t> first(static_cast<size_t>(spec_.num_experts) + 1, 0);
    for (const BlockWeights::ExpertTask& t : tasks) first[static_cast<size_t>(t.expert) + 1] = t.rows.numel();
    for (size_t e = 1; e < first.size(); ++e) first[e] += first[e - 1];
    int64_t w0 = -1, w_end = -1;  // the window's first expert, and one past its last filled one
    auto flush = [&]() -> Status {
      if (w0 < 0) return Status::Ok();
      const int64_t start = first[w0], len = first[w_end] - start, n = w_end - w0;
      if (len > 0) {
        const at::Tensor offs_w = offs.narrow(0, w0, n) - static_cast<int32_t>(start);
        const at::Tensor w1 = gu_scratch.narrow(0, 0, n).transpose(1, 2);    // [n, hidden, 2 inter], column-major
        const at::Tensor w2 = down_scratch.narrow(0, 0, n).transpose(1, 2);  // [n, inter, hidden]
        if (scaled) {
          for (int64_t s : unscaled) {
            gu_scales[s].fill_(1.0);
            down_scales[s].fill_(1.0);
          }
        }
        auto scale = [&](const at::Tensor& p, const at::Tensor& scales) -> Status {
          if (!scaled || fused_ops::ScaleGroupedRows(p, offs_w, scales.narrow(0, 0, n))) return Status::Ok();
          return MakeError(ErrorCode::kInternal, "grouped prompt experts: the scaling kernel declined");
        };
        const at::Tensor gu = at::_grouped_mm(xs.narrow(0, start, len), w1, offs_w);
        BIGPLAN_RETURN_IF_ERROR(scale(gu, gu_scales));
        at::Tensor h = at::empty({len, inter}, x.options());
        if (!fused_ops::SiluMulInto(gu, h)) {
          at::mul_out(h, at::silu(gu.narrow(-1, 0, inter)), gu.narrow(-1, inter, inter));
        }
        const at::Tensor yw = at::_grouped_mm(h, w2, offs_w);
        BIGPLAN_RETURN_IF_ERROR(scale(yw, down_scales));
        y.narrow(0, start, len).copy_(yw);
      }
      w0 = -1;
      scaled = false;
      unscaled.clear();
      return Status::Ok();
    };
    // Experts that rest on the GPU are unpacked in batches (one launch for up to fused::kDequantMaxJobs matrices,
    // issued before the window's products); an expert copied into a ring slot is unpacked at once, before its
    // ReleaseExpert lets the slot be reused.
    std::optional<fused_ops::DequantBatch> batch;
    quant::Format batch_format = quant::Format::kNone;
    auto launch_batch = [&]() -> Status {
      if (!batch.has_value() || batch->size() == 0 || batch->Launch()) return Status::Ok();
      return MakeError(ErrorCode::kInternal, "grouped prompt experts: the unpacking kernel declined its batch");
    };
    const int64_t esize = x.element_size();
    char* const gu_base = static_cast<char*>(gu_scratch.data_ptr());
    char* const down_base = static_cast<char*>(down_scratch.data_ptr());
    for (const BlockWeights::ExpertTask& t : tasks) {
      const int64_t e = t.expert;
      if (w0 >= 0 && e >= w0 + window) {
        BIGPLAN_RETURN_IF_ERROR(launch_batch());
        BIGPLAN_RETURN_IF_ERROR(flush());
      }
      if (w0 < 0) w0 = e;
      w_end = e + 1;
      const uint32_t ue = static_cast<uint32_t>(e);
      BIGPLAN_RETURN_IF_ERROR(c.weights.AcquireExpert(t.expert));
      BIGPLAN_ASSIGN_OR_RETURN(WeightRef gate, Ref(c, arch::ExpertSlot(Slot::kExpertGate, ue)));
      BIGPLAN_ASSIGN_OR_RETURN(WeightRef up, Ref(c, arch::ExpertSlot(Slot::kExpertUp, ue)));
      BIGPLAN_ASSIGN_OR_RETURN(WeightRef down, Ref(c, arch::ExpertSlot(Slot::kExpertDown, ue)));
      const int64_t slot = e - w0;
      bool done = false, per_row = false;
      const quant::Format f = gate.quant.format;
      if (f != quant::Format::kNone && gate.whole.defined() && up.whole.defined() && down.whole.defined() &&
          up.quant.format == f && down.quant.format == f && gate.whole.size(0) == inter &&
          up.whole.size(0) == inter && down.whole.size(0) == hidden && gate.quant.cols == hidden &&
          up.quant.cols == hidden && down.quant.cols == inter) {
        BIGPLAN_RETURN_IF_ERROR(c.weights.AcquireExpertDown(t.expert));
        per_row = f != quant::Format::kInt4 && gate.quant.group == hidden && up.quant.group == hidden &&
                  down.quant.group == inter;
        if (per_row && !gu_scales.defined()) {
          gu_scales = at::empty({window, 2 * inter}, f32);
          down_scales = at::empty({window, hidden}, f32);
        }
        const bool moves = c.weights.ExpertMoves(t.expert);
        if (batch.has_value() && (batch_format != f || batch->full(3) || moves)) {
          BIGPLAN_RETURN_IF_ERROR(launch_batch());
        }
        if (!batch.has_value() || batch_format != f) {
          batch.emplace(f, x.scalar_type());
          batch_format = f;
        }
        // The slot's [gate; up] rows [2 inter, hidden] and down rows [hidden, inter], row-major.
        char* const gu_out = gu_base + slot * 2 * inter * hidden * esize;
        char* const down_out = down_base + slot * hidden * inter * esize;
        float* const gs = per_row ? gu_scales.data_ptr<float>() + slot * 2 * inter : nullptr;
        float* const ds = per_row ? down_scales.data_ptr<float>() + slot * hidden : nullptr;
        const int queued = batch->size();
        done = batch->Add(gate.whole, gate.quant.cols, gate.quant.group, gate.quant.split, gu_out, hidden, gs) &&
               batch->Add(up.whole, up.quant.cols, up.quant.group, up.quant.split, gu_out + inter * hidden * esize,
                          hidden, gs != nullptr ? gs + inter : nullptr) &&
               batch->Add(down.whole, down.quant.cols, down.quant.group, down.quant.split, down_out, inter, ds);
        if (!done) batch->Truncate(queued);  // (not eligible: none of its matrices stays queued)
        if (done && moves) BIGPLAN_RETURN_IF_ERROR(launch_batch());
      }
      if (done && per_row) {
        scaled = true;
      } else {
        unscaled.push_back(slot);
      }
      if (done) {
        grouped_prompt_experts_.fetch_add(1, std::memory_order_relaxed);
        BIGPLAN_RETURN_IF_ERROR(c.weights.ReleaseExpert(t.expert));
      } else {
        gu_scratch[slot].zero_();
        down_scratch[slot].zero_();
        BIGPLAN_RETURN_IF_ERROR(ExpertByItself(c, xc, topw, t, out));
      }
    }
    BIGPLAN_RETURN_IF_ERROR(launch_batch());
    BIGPLAN_RETURN_IF_ERROR(flush());
    const at::Tensor routed = fused_ops::MoeCombine(y, ids, topw.contiguous(), place);
    if (!routed.defined()) {
      return MakeError(ErrorCode::kInternal, "grouped prompt experts: the combining kernel declined");
    }
    out->add_(routed);
    return Status::Ok();
  }

  // One expert's products for its rows (between AcquireExpert, done by the caller, and ReleaseExpert, done here),
  // its output weighted by its rows' routing weights (of the router's topw) added into *out at its rows.
  Status ExpertByItself(const Call& c, const at::Tensor& x, const at::Tensor& topw, const BlockWeights::ExpertTask& t,
                        at::Tensor* out) const {
    const uint32_t e = static_cast<uint32_t>(t.expert);
    BIGPLAN_ASSIGN_OR_RETURN(WeightRef gate, Ref(c, arch::ExpertSlot(Slot::kExpertGate, e)));
    BIGPLAN_ASSIGN_OR_RETURN(WeightRef up, Ref(c, arch::ExpertSlot(Slot::kExpertUp, e)));
    BIGPLAN_ASSIGN_OR_RETURN(WeightRef down, Ref(c, arch::ExpertSlot(Slot::kExpertDown, e)));
    // One token (decode at batch 1): no gather or scatter.
    const bool single = x.size(0) == 1 && t.rows.numel() == 1;
    const at::Tensor xe = single ? x : x.index_select(0, t.rows);
    at::Tensor g, u;
    if (at::Tensor gu = AdjacentRows(gate, up); gu.defined()) {
      // gate and up lie back to back (the planner's layout, and an expert ring slot): one product.
      const at::Tensor both = Linear(xe, gu, at::Tensor());
      g = both.narrow(-1, 0, gate.whole.size(0));
      u = both.narrow(-1, gate.whole.size(0), up.whole.size(0));
    } else {
      BIGPLAN_ASSIGN_OR_RETURN(g, LinearW(gate, xe, at::Tensor()));
      BIGPLAN_ASSIGN_OR_RETURN(u, LinearW(up, xe, at::Tensor()));
    }
    const at::Tensor h = Activate(act_, g) * u;
    BIGPLAN_RETURN_IF_ERROR(c.weights.AcquireExpertDown(t.expert));
    BIGPLAN_ASSIGN_OR_RETURN(at::Tensor ye, LinearW(down, h, at::Tensor()));
    if (single) {
      out->add_((ye * BlockWeights::TaskWeights(t, topw)).to(out->scalar_type()));
    } else {
      out->index_add_(0, t.rows, (ye * BlockWeights::TaskWeights(t, topw)).to(out->scalar_type()));
    }
    BIGPLAN_RETURN_IF_ERROR(c.weights.ReleaseExpert(t.expert));
    return Status::Ok();
  }

  Status FinalNorm(const Call& c, at::Tensor* hidden) const override {
    BIGPLAN_ASSIGN_OR_RETURN(at::Tensor w, Get(c, Slot::kFinalNorm));
    at::Tensor out = spec_.fused_kernels ? fused_ops::RmsNorm(*hidden, w, spec_.norm_eps) : at::Tensor();
    *hidden = out.defined() ? out : RmsNorm(*hidden, w, spec_.norm_eps);
    return Status::Ok();
  }

  Result<at::Tensor> LmHead(const Call& c, const at::Tensor& h) const override {
    if (c.ctx.shards != nullptr) return ShardLmHead(c, h, at::Tensor());
    BIGPLAN_ASSIGN_OR_RETURN(WeightRef w, Ref(c, Slot::kLmHead));
    const at::Tensor bias = Optional(c, Slot::kLmHeadBias);
    if (spec_.fused_kernels && w.whole.defined() && !w.quant.quantized()) {
      at::Tensor y = fused_ops::Linear(h, w.whole, bias, at::Tensor());
      if (y.defined()) return y;
    }
    return LinearW(w, h, bias);
  }

 public:
  // (The registry's arch::GraphDecodeEligible says the same for the planner.)
  // Mixture-of-experts layers may read the router's choices on the host (prefill graphs leave them out), but their
  // decode steps may be captured where the chosen experts are read on the device (GraphDecode), and continuous
  // batching's per-row steps take them (RowSteps).
  bool StaticDecode(int64_t max_seq_len) const override {
    return spec_.num_experts == 0 && !rope_.LengthDependent(max_seq_len);
  }
  static_assert(fused::kDequantMaxJobs == arch::kMoeDequantBatchMatrices);
  static_assert(fused_ops::kMoeMaxExperts == arch::kGraphDecodeMaxExperts &&
                fused_ops::kMoeMaxTokens == arch::kGraphDecodeMaxExpertTokens);
  bool RowSteps(int64_t max_seq_len) const override { return !rope_.LengthDependent(max_seq_len); }
  uint64_t GroupedPromptExperts() const override { return grouped_prompt_experts_.load(std::memory_order_relaxed); }
  bool GraphDecode(int64_t max_seq_len) const override {
    if (spec_.num_experts == 0) return StaticDecode(max_seq_len);
    return spec_.fused_kernels && act_ == Activation::kSilu && spec_.num_experts <= fused_ops::kMoeMaxExperts &&
           spec_.num_experts_per_tok <= 32 && !rope_.LengthDependent(max_seq_len);
  }

 private:
  const RopeConfig rope_;
  const Activation act_;
  const bool float32_routing_;  // Mixtral keeps the routing weights in float32
  const RopeTableCache rope_tables_;
  mutable std::atomic<uint64_t> grouped_prompt_experts_{0};  // GroupedPromptExperts
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
