// GPT-2 and GPT-J kernels, as transformers' modeling_gpt2.py / modeling_gptj.py.
//   GPT-2: wte + wpe, pre-LayerNorm blocks with Conv1D ([in, out]) projections, fused c_attn, gelu_new MLP,
//          ln_f, lm_head tied to wte.
//   GPT-J: wte, ln_1 feeding attention (partial interleaved rotary, no biases) and the MLP in parallel,
//          hidden = attn + mlp + residual, ln_f, lm_head with weight and bias.
#include <ATen/ATen.h>

#include <cmath>
#include <memory>
#include <string>
#include <utility>

#include "executor/kernels.h"
#include "executor/kernels_internal.h"

namespace bigplan::kernels_internal {
namespace {

using arch::Slot;

class GptKernelsBase : public ModelKernelsBase {
 public:
  GptKernelsBase(ModelSpec spec, Activation act) : ModelKernelsBase(std::move(spec)), act_(act) {}

 protected:
  Status Embedding(const Call& c, at::Tensor* hidden) const override {
    if (c.ctx.shards != nullptr) return ShardEmbedding(c, hidden);  // (its rows of wte; GPT-2's wpe comes after)
    BIGPLAN_ASSIGN_OR_RETURN(WeightRef wte, Ref(c, Slot::kTokenEmbedding));
    BIGPLAN_ASSIGN_OR_RETURN(*hidden, EmbeddingW(wte, c.ctx.token_ids));
    return Status::Ok();
  }

  Status FinalNorm(const Call& c, at::Tensor* hidden) const override {
    BIGPLAN_ASSIGN_OR_RETURN(at::Tensor w, Get(c, Slot::kFinalNorm));
    BIGPLAN_ASSIGN_OR_RETURN(at::Tensor b, Get(c, Slot::kFinalNormBias));
    *hidden = LayerNorm(*hidden, w, b, spec_.norm_eps);
    return Status::Ok();
  }

  Result<at::Tensor> LmHead(const Call& c, const at::Tensor& h) const override {
    BIGPLAN_ASSIGN_OR_RETURN(WeightRef w, Ref(c, Slot::kLmHead));
    at::Tensor b;
    if (lm_head_bias_required()) {
      BIGPLAN_ASSIGN_OR_RETURN(b, Get(c, Slot::kLmHeadBias));
    } else {
      b = Optional(c, Slot::kLmHeadBias);
    }
    if (c.ctx.shards != nullptr) return ShardLmHead(c, h, b);  // (its rows of the bias with its rows of the weight)
    return LinearW(w, h, b);
  }

  virtual bool lm_head_bias_required() const = 0;

  const Activation act_;
};

// ---------------------------------------------------------------------------------------------------------------

class Gpt2Kernels final : public GptKernelsBase {
 public:
  using GptKernelsBase::GptKernelsBase;

 protected:
  bool lm_head_bias_required() const override { return false; }

  // hidden + wpe[start_pos, start_pos + seq).
  Status AddPositions(const Call& c, const at::Tensor& wpe, at::Tensor* hidden) const {
    const int64_t seq = hidden->size(1);
    if (c.ctx.start_pos + seq > wpe.size(0)) {
      return MakeError(ErrorCode::kInvalidArgument,
                       c.block + ": positions up to " + std::to_string(c.ctx.start_pos + seq) +
                           " exceed the " + std::to_string(wpe.size(0)) + " learned position embeddings");
    }
    *hidden = *hidden + wpe.narrow(0, c.ctx.start_pos, seq).unsqueeze(0);
    return Status::Ok();
  }

  Status PositionEmbedding(const Call& c, at::Tensor* hidden) const override {
    BIGPLAN_ASSIGN_OR_RETURN(at::Tensor wpe, Get(c, Slot::kPositionEmbedding));
    return AddPositions(c, wpe, hidden);
  }

  Status DecoderLayer(const Call& c, KvCache* kv, at::Tensor* hidden) const override {
    BIGPLAN_ASSIGN_OR_RETURN(at::Tensor ln1_w, Get(c, Slot::kInputNorm));
    BIGPLAN_ASSIGN_OR_RETURN(at::Tensor ln1_b, Get(c, Slot::kInputNormBias));
    BIGPLAN_ASSIGN_OR_RETURN(WeightRef attn_w, Ref(c, Slot::kQkv));
    BIGPLAN_ASSIGN_OR_RETURN(at::Tensor attn_b, Get(c, Slot::kQkvBias));
    BIGPLAN_ASSIGN_OR_RETURN(WeightRef proj_w, Ref(c, Slot::kO));
    BIGPLAN_ASSIGN_OR_RETURN(at::Tensor proj_b, Get(c, Slot::kOBias));
    BIGPLAN_ASSIGN_OR_RETURN(at::Tensor ln2_w, Get(c, Slot::kPostNorm));
    BIGPLAN_ASSIGN_OR_RETURN(at::Tensor ln2_b, Get(c, Slot::kPostNormBias));
    BIGPLAN_ASSIGN_OR_RETURN(WeightRef fc_w, Ref(c, Slot::kFcIn));
    BIGPLAN_ASSIGN_OR_RETURN(at::Tensor fc_b, Get(c, Slot::kFcInBias));
    BIGPLAN_ASSIGN_OR_RETURN(WeightRef out_w, Ref(c, Slot::kDown));
    BIGPLAN_ASSIGN_OR_RETURN(at::Tensor out_b, Get(c, Slot::kDownBias));

    const at::Tensor x = *hidden;
    const int64_t batch = x.size(0);
    const int64_t seq = x.size(1);
    const int64_t heads = spec_.num_heads;
    const int64_t head_dim = spec_.head_dim;
    const int64_t width = heads * head_dim;
    const int64_t start_pos = c.ctx.start_pos;
    BIGPLAN_RETURN_IF_ERROR(CheckKvCache(kv, batch, heads, start_pos, seq, head_dim, x.device(), c.block));

    at::Tensor h = LayerNorm(x, ln1_w, ln1_b, spec_.norm_eps);
    BIGPLAN_ASSIGN_OR_RETURN(at::Tensor qkv, Conv1DW(attn_w, h, attn_b));  // [batch, seq, 3 * width]
    at::Tensor q = qkv.narrow(-1, 0, width).view({batch, seq, heads, head_dim}).transpose(1, 2);
    at::Tensor k = qkv.narrow(-1, width, width).view({batch, seq, heads, head_dim}).transpose(1, 2);
    at::Tensor v = qkv.narrow(-1, 2 * width, width).view({batch, seq, heads, head_dim}).transpose(1, 2);
    // transformers' GPT2Attention.scaling: 1/sqrt(head_dim) unless scale_attn_weights is false, divided by
    // (layer + 1) with scale_attn_by_inverse_layer_idx.
    double scale = spec_.scale_attn_weights ? std::pow(static_cast<double>(head_dim), -0.5) : 1.0;
    if (spec_.scale_attn_by_inverse_layer_idx) scale /= static_cast<double>(c.layer + 1);
    at::Tensor attn = CachedAttention(q, k, v, kv, start_pos, scale, /*window=*/0, spec_.reorder_and_upcast_attn);
    // Tensor parallel (arch/tensor_parallel.h): the shard's heads (its c_attn columns, its c_proj rows) and its
    // c_fc columns (its mlp.c_proj rows) give partial sums; shard 0 adds the biases of the two c_proj and the
    // residuals, and an all-reduce after each half gives every shard the whole hidden state.
    const ForwardContext::Shards* tp = c.ctx.shards;
    const bool first = tp == nullptr || tp->shard == 0;
    BIGPLAN_ASSIGN_OR_RETURN(attn, Conv1DW(proj_w, attn.transpose(1, 2).reshape({batch, seq, width}),
                                           first ? proj_b : at::Tensor()));
    at::Tensor y = first ? attn + x : attn;
    if (tp != nullptr) {
      y = y.contiguous();
      BIGPLAN_RETURN_IF_ERROR(tp->all_reduce(y));
    }

    h = LayerNorm(y, ln2_w, ln2_b, spec_.norm_eps);
    BIGPLAN_ASSIGN_OR_RETURN(at::Tensor fc, Conv1DW(fc_w, h, fc_b));
    BIGPLAN_ASSIGN_OR_RETURN(at::Tensor mlp, Conv1DW(out_w, Activate(act_, fc), first ? out_b : at::Tensor()));
    *hidden = first ? y + mlp : mlp;
    if (tp != nullptr) {
      *hidden = hidden->contiguous();
      return tp->all_reduce(*hidden);
    }
    return Status::Ok();
  }
};

// ---------------------------------------------------------------------------------------------------------------

class GptjKernels final : public GptKernelsBase {
 public:
  GptjKernels(ModelSpec spec, Activation act)
      : GptKernelsBase(std::move(spec), act),
        rope_tables_([rot = spec_.rotary_dim](int64_t length, at::ScalarType dtype, const at::Device& device,
                                              at::Tensor* cos, at::Tensor* sin) {
          SinusoidTables(rot, length, dtype, device, cos, sin);
        }) {}

 protected:
  bool lm_head_bias_required() const override { return true; }

  // GPT-J's rotary on the first rotary_dim dims of x [batch, seq, heads, head_dim]: interleaved pairs
  // (rotate_every_two), sin/cos repeated per pair. The table is transformers' create_sinusoidal_positions, whose
  // base is fixed at 10000.
  at::Tensor ApplyRotary(const at::Tensor& x, const at::Tensor& sin, const at::Tensor& cos) const {
    const int64_t rot = spec_.rotary_dim;
    at::Tensor x_rot = x.narrow(-1, 0, rot);
    at::Tensor x1 = x_rot.slice(-1, 0, rot, 2);
    at::Tensor x2 = x_rot.slice(-1, 1, rot, 2);
    at::Tensor rotated = at::stack({-x2, x1}, -1).flatten(-2);
    at::Tensor out = x_rot * cos + rotated * sin;
    if (rot == x.size(-1)) return out;
    return at::cat({out, x.narrow(-1, rot, x.size(-1) - rot)}, -1);
  }

  Status DecoderLayer(const Call& c, KvCache* kv, at::Tensor* hidden) const override {
    BIGPLAN_ASSIGN_OR_RETURN(at::Tensor ln_w, Get(c, Slot::kInputNorm));
    BIGPLAN_ASSIGN_OR_RETURN(at::Tensor ln_b, Get(c, Slot::kInputNormBias));
    BIGPLAN_ASSIGN_OR_RETURN(WeightRef wq, Ref(c, Slot::kQ));
    BIGPLAN_ASSIGN_OR_RETURN(WeightRef wk, Ref(c, Slot::kK));
    BIGPLAN_ASSIGN_OR_RETURN(WeightRef wv, Ref(c, Slot::kV));
    BIGPLAN_ASSIGN_OR_RETURN(WeightRef wo, Ref(c, Slot::kO));
    BIGPLAN_ASSIGN_OR_RETURN(WeightRef fc_in_w, Ref(c, Slot::kFcIn));
    BIGPLAN_ASSIGN_OR_RETURN(at::Tensor fc_in_b, Get(c, Slot::kFcInBias));
    BIGPLAN_ASSIGN_OR_RETURN(WeightRef fc_out_w, Ref(c, Slot::kDown));
    BIGPLAN_ASSIGN_OR_RETURN(at::Tensor fc_out_b, Get(c, Slot::kDownBias));

    const at::Tensor x = *hidden;
    const int64_t batch = x.size(0);
    const int64_t seq = x.size(1);
    const int64_t heads = spec_.num_heads;
    const int64_t head_dim = spec_.head_dim;
    const int64_t width = heads * head_dim;
    const int64_t start_pos = c.ctx.start_pos;
    BIGPLAN_RETURN_IF_ERROR(CheckKvCache(kv, batch, heads, start_pos, seq, head_dim, x.device(), c.block));

    at::Tensor h = LayerNorm(x, ln_w, ln_b, spec_.norm_eps);
    BIGPLAN_ASSIGN_OR_RETURN(at::Tensor q, LinearW(wq, h, {}));
    BIGPLAN_ASSIGN_OR_RETURN(at::Tensor k, LinearW(wk, h, {}));
    BIGPLAN_ASSIGN_OR_RETURN(at::Tensor v, LinearW(wv, h, {}));
    q = q.view({batch, seq, heads, head_dim});
    k = k.view({batch, seq, heads, head_dim});
    v = v.view({batch, seq, heads, head_dim}).transpose(1, 2);

    // sin/cos [1, seq, 1, rotary_dim].
    const int64_t rot = spec_.rotary_dim;
    at::Tensor sin, cos;
    rope_tables_.Get(start_pos, seq, x.scalar_type(), x.device(), &cos, &sin);
    sin = sin.view({1, seq, 1, rot});
    cos = cos.view({1, seq, 1, rot});
    q = ApplyRotary(q, sin, cos).permute({0, 2, 1, 3});
    k = ApplyRotary(k, sin, cos).permute({0, 2, 1, 3});

    at::Tensor attn = CachedAttention(q, k, v, kv, start_pos, 1.0 / std::sqrt(static_cast<double>(head_dim)));
    BIGPLAN_ASSIGN_OR_RETURN(attn, LinearW(wo, attn.transpose(1, 2).reshape({batch, seq, width}), {}));
    BIGPLAN_ASSIGN_OR_RETURN(at::Tensor fc, LinearW(fc_in_w, h, fc_in_b));
    if (const ForwardContext::Shards* tp = c.ctx.shards) {
      // A shard's attention (its heads) and MLP (its rows of fc_in) are partial sums of the parallel block: one
      // all-reduce a layer; shard 0 adds fc_out's bias and the residual.
      const bool first = tp->shard == 0;
      BIGPLAN_ASSIGN_OR_RETURN(at::Tensor mlp, LinearW(fc_out_w, Activate(act_, fc), first ? fc_out_b : at::Tensor()));
      *hidden = (first ? attn + mlp + x : attn + mlp).contiguous();
      return tp->all_reduce(*hidden);
    }
    BIGPLAN_ASSIGN_OR_RETURN(at::Tensor mlp, LinearW(fc_out_w, Activate(act_, fc), fc_out_b));
    *hidden = attn + mlp + x;
    return Status::Ok();
  }

 private:
  // transformers' create_sinusoidal_positions(length, rot) (base fixed at 10000), split into sin and cos and each
  // repeated per pair (repeat_interleave(2), done as an expand): [length, rot].
  static void SinusoidTables(int64_t rot, int64_t length, at::ScalarType dtype, const at::Device& device,
                             at::Tensor* cos, at::Tensor* sin) {
    const auto i64 = at::TensorOptions().dtype(at::kLong).device(device);
    at::Tensor exponents = at::arange(0, rot, 2, i64).to(at::kFloat) / static_cast<double>(rot);
    at::Tensor inv_freq = at::reciprocal(at::pow(at::Scalar(10000), exponents));
    at::Tensor sinusoid = at::outer(at::arange(length, i64).to(at::kFloat), inv_freq);  // [length, rot / 2]
    auto pairs = [&](const at::Tensor& t) {
      return t.to(dtype).unsqueeze(-1).expand({length, rot / 2, 2}).reshape({length, rot});
    };
    *sin = pairs(sinusoid.sin());
    *cos = pairs(sinusoid.cos());
  }

  const RopeTableCache rope_tables_;
};

}  // namespace

Result<std::unique_ptr<ModelKernels>> MakeGpt2Kernels(const ModelSpec& spec) {
  if (spec.num_kv_heads != spec.num_heads) {
    return MakeError(ErrorCode::kInvalidArgument, "model spec: gpt2 has no grouped-query attention (num_kv_heads " +
                                                      std::to_string(spec.num_kv_heads) + " != num_heads " +
                                                      std::to_string(spec.num_heads) + ")");
  }
  BIGPLAN_ASSIGN_OR_RETURN(Activation act, ParseActivation(spec.activation.empty() ? "gelu_new" : spec.activation));
  return std::unique_ptr<ModelKernels>(new Gpt2Kernels(spec, act));
}

Result<std::unique_ptr<ModelKernels>> MakeGptjKernels(const ModelSpec& spec_in) {
  ModelSpec spec = spec_in;
  if (spec.num_kv_heads != spec.num_heads) {
    return MakeError(ErrorCode::kInvalidArgument, "model spec: gptj has no grouped-query attention (num_kv_heads " +
                                                      std::to_string(spec.num_kv_heads) + " != num_heads " +
                                                      std::to_string(spec.num_heads) + ")");
  }
  if (spec.rotary_dim == 0) spec.rotary_dim = spec.head_dim;
  if (spec.rotary_dim < 0 || spec.rotary_dim > spec.head_dim || spec.rotary_dim % 2 != 0) {
    return MakeError(ErrorCode::kInvalidArgument, "model spec: gptj rotary_dim " + std::to_string(spec.rotary_dim) +
                                                      " must be even and at most head_dim " +
                                                      std::to_string(spec.head_dim));
  }
  BIGPLAN_ASSIGN_OR_RETURN(Activation act, ParseActivation(spec.activation.empty() ? "gelu_new" : spec.activation));
  return std::unique_ptr<ModelKernels>(new GptjKernels(spec, act));
}

}  // namespace bigplan::kernels_internal
