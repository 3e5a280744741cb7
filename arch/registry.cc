#include "arch/registry.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <initializer_list>
#include <optional>
#include <utility>

namespace bigplan::arch {
namespace {

using nlohmann::json;


// Shorthands for the tables.
constexpr TensorRule V(BlockKind b, Slot s, const char* name, Dim d, Presence p = Presence::kAlways) {
  return TensorRule{b, s, name, 1, {d, Dim::kHidden}, p, Layout::kVector, {Slot::kCount, Slot::kCount, Slot::kCount}};
}
constexpr TensorRule M(BlockKind b, Slot s, const char* name, Dim d0, Dim d1, Layout layout = Layout::kLinear,
                       Presence p = Presence::kAlways) {
  return TensorRule{b, s, name, 2, {d0, d1}, p, layout, {Slot::kCount, Slot::kCount, Slot::kCount}};
}
constexpr TensorRule Fused(BlockKind b, Slot s, const char* name, Dim d0, Dim d1, Slot p0, Slot p1,
                           Slot p2 = Slot::kCount) {
  return TensorRule{b, s, name, 2, {d0, d1}, Presence::kAlways, Layout::kLinear, {p0, p1, p2}};
}

constexpr BlockKind kEmb = BlockKind::kEmbedding;
constexpr BlockKind kPos = BlockKind::kPositionEmbedding;
constexpr BlockKind kLayer = BlockKind::kDecoderLayer;
constexpr BlockKind kFinal = BlockKind::kFinalNorm;
constexpr BlockKind kHead = BlockKind::kLmHead;

// ---- llama (Llama 2/3/3.1, Mistral, Qwen2): transformers' LlamaForCausalLM state dict ----

constexpr const char* kLlamaTypes[] = {"llama", "mistral", "qwen2"};
constexpr BlockLayout kLlamaBlocks[] = {
    {kEmb, "model.embed_tokens"}, {kLayer, "model.layers.{i}"}, {kFinal, "model.norm"}, {kHead, "lm_head"}};
constexpr TensorRule kLlamaTensors[] = {
    M(kEmb, Slot::kTokenEmbedding, "weight", Dim::kVocab, Dim::kHidden, Layout::kEmbedding),
    M(kLayer, Slot::kQ, "self_attn.q_proj.weight", Dim::kQDim, Dim::kHidden),
    M(kLayer, Slot::kK, "self_attn.k_proj.weight", Dim::kKvDim, Dim::kHidden),
    M(kLayer, Slot::kV, "self_attn.v_proj.weight", Dim::kKvDim, Dim::kHidden),
    V(kLayer, Slot::kQBias, "self_attn.q_proj.bias", Dim::kQDim, Presence::kQkvBias),
    V(kLayer, Slot::kKBias, "self_attn.k_proj.bias", Dim::kKvDim, Presence::kQkvBias),
    V(kLayer, Slot::kVBias, "self_attn.v_proj.bias", Dim::kKvDim, Presence::kQkvBias),
    M(kLayer, Slot::kO, "self_attn.o_proj.weight", Dim::kHidden, Dim::kQDim),
    V(kLayer, Slot::kOBias, "self_attn.o_proj.bias", Dim::kHidden, Presence::kOBias),
    M(kLayer, Slot::kGate, "mlp.gate_proj.weight", Dim::kIntermediate, Dim::kHidden),
    M(kLayer, Slot::kUp, "mlp.up_proj.weight", Dim::kIntermediate, Dim::kHidden),
    V(kLayer, Slot::kGateBias, "mlp.gate_proj.bias", Dim::kIntermediate, Presence::kMlpBias),
    V(kLayer, Slot::kUpBias, "mlp.up_proj.bias", Dim::kIntermediate, Presence::kMlpBias),
    M(kLayer, Slot::kDown, "mlp.down_proj.weight", Dim::kHidden, Dim::kIntermediate),
    V(kLayer, Slot::kDownBias, "mlp.down_proj.bias", Dim::kHidden, Presence::kMlpBias),
    V(kLayer, Slot::kInputNorm, "input_layernorm.weight", Dim::kHidden),
    V(kLayer, Slot::kPostNorm, "post_attention_layernorm.weight", Dim::kHidden),
    V(kFinal, Slot::kFinalNorm, "weight", Dim::kHidden),
    M(kHead, Slot::kLmHead, "weight", Dim::kVocab, Dim::kHidden, Layout::kLinear, Presence::kUntied),
};
constexpr TiedRead kTiedHead[] = {{kHead, Slot::kLmHead, kEmb, Slot::kTokenEmbedding}};
constexpr ModelBufferRule kRotaryBuffers[] = {
    {"model.rotary_emb.inv_freq", Dim::kRotaryHalf, DType::kF32, true},
    {"model.rotary_emb.original_inv_freq", Dim::kRotaryHalf, DType::kF32, true},
};
constexpr const char* kLlamaParameterless[] = {"model.rotary_emb"};
constexpr RopeType kLlamaRope[] = {RopeType::kDefault, RopeType::kLinear, RopeType::kDynamic,
                                   RopeType::kLlama3,  RopeType::kYarn,   RopeType::kLongrope};
// Keys no supported family implements (refused unless absent or neutral: null, false, 0, {}), and
// quantization_config, which the importer reads (planner/hf_import.h).
#define GENERIC_REFUSED_KEYS                                                                                      \
  {"quantization_config", KeyHandling::kImplemented,                                                            \
   "pre-quantized linear weights: fp8 (block, per channel or tensor) and gptq 4-bit, converted at load "         \
   "(planner/hf_import.h); other methods refused"},                                                               \
      {"attn_logit_softcapping", KeyHandling::kRefused, "attention logit soft-capping", nullptr},                \
      {"final_logit_softcapping", KeyHandling::kRefused, "final logit soft-capping", nullptr},                   \
      {"logit_scale", KeyHandling::kRefused, "scaled logits", nullptr},                                         \
      {"embedding_multiplier", KeyHandling::kRefused, "scaled embeddings", nullptr},                            \
      {"residual_multiplier", KeyHandling::kRefused, "scaled residuals", nullptr},                              \
      {"attention_multiplier", KeyHandling::kRefused, "scaled attention", nullptr},                             \
      {"logits_scaling", KeyHandling::kRefused, "scaled logits", nullptr},                                      \
      {"num_experts", KeyHandling::kRefused, "mixture of experts", nullptr},                                     \
      {"num_local_experts", KeyHandling::kRefused, "mixture of experts", nullptr},

constexpr MathKey kLlamaKeys[] = {
    {"rope_scaling", KeyHandling::kImplemented, "the family's RoPE types (also transformers 5's rope_parameters)"},
    {"head_dim", KeyHandling::kImplemented, "explicit head_dim (Mistral)"},
    {"attention_bias", KeyHandling::kImplemented, "llama: q/k/v/o biases (Qwen2 always has q/k/v biases)"},
    {"mlp_bias", KeyHandling::kImplemented, "llama: gate/up/down biases"},
    {"tie_word_embeddings", KeyHandling::kImplemented, "lm_head reads model.embed_tokens.weight"},
    {"hidden_act", KeyHandling::kImplemented, "silu, gelu, gelu_new, gelu_pytorch_tanh, gelu_fast, relu"},
    {"partial_rotary_factor", KeyHandling::kRefused, "the Llama family rotates whole heads", "1.0"},
    {"sliding_window", KeyHandling::kImplemented,
     "Mistral: every layer attends to the last sliding_window positions (4096 if absent); Qwen2: with "
     "use_sliding_window"},
    {"use_sliding_window", KeyHandling::kImplemented, "Qwen2: turns sliding_window on"},
    {"max_window_layers", KeyHandling::kImplemented, "Qwen2: layers from this index on slide (without layer_types)"},
    {"layer_types", KeyHandling::kImplemented, "Qwen2: full_attention / sliding_attention per layer"},
    GENERIC_REFUSED_KEYS
};

// ---- gpt2: GPT2LMHeadModel ----

constexpr const char* kGpt2Types[] = {"gpt2"};
constexpr BlockLayout kGpt2Blocks[] = {{kEmb, "transformer.wte"},
                                       {kPos, "transformer.wpe"},
                                       {kLayer, "transformer.h.{i}"},
                                       {kFinal, "transformer.ln_f"},
                                       {kHead, "lm_head"}};
constexpr TensorRule kGpt2Tensors[] = {
    M(kEmb, Slot::kTokenEmbedding, "weight", Dim::kVocab, Dim::kHidden, Layout::kEmbedding),
    M(kPos, Slot::kPositionEmbedding, "weight", Dim::kPositions, Dim::kHidden, Layout::kEmbedding),
    V(kLayer, Slot::kInputNorm, "ln_1.weight", Dim::kHidden),
    V(kLayer, Slot::kInputNormBias, "ln_1.bias", Dim::kHidden),
    M(kLayer, Slot::kQkv, "attn.c_attn.weight", Dim::kHidden, Dim::kThreeHidden, Layout::kConv1D),
    V(kLayer, Slot::kQkvBias, "attn.c_attn.bias", Dim::kThreeHidden),
    M(kLayer, Slot::kO, "attn.c_proj.weight", Dim::kHidden, Dim::kHidden, Layout::kConv1D),
    V(kLayer, Slot::kOBias, "attn.c_proj.bias", Dim::kHidden),
    V(kLayer, Slot::kPostNorm, "ln_2.weight", Dim::kHidden),
    V(kLayer, Slot::kPostNormBias, "ln_2.bias", Dim::kHidden),
    M(kLayer, Slot::kFcIn, "mlp.c_fc.weight", Dim::kHidden, Dim::kIntermediate, Layout::kConv1D),
    V(kLayer, Slot::kFcInBias, "mlp.c_fc.bias", Dim::kIntermediate),
    M(kLayer, Slot::kDown, "mlp.c_proj.weight", Dim::kIntermediate, Dim::kHidden, Layout::kConv1D),
    V(kLayer, Slot::kDownBias, "mlp.c_proj.bias", Dim::kHidden),
    V(kFinal, Slot::kFinalNorm, "weight", Dim::kHidden),
    V(kFinal, Slot::kFinalNormBias, "bias", Dim::kHidden),
    M(kHead, Slot::kLmHead, "weight", Dim::kVocab, Dim::kHidden, Layout::kLinear, Presence::kUntied),
};
constexpr const char* kGptParameterless[] = {"transformer.drop"};
constexpr MathKey kGpt2Keys[] = {
    {"n_inner", KeyHandling::kImplemented, "MLP inner size (default 4 n_embd)"},
    {"activation_function", KeyHandling::kImplemented, "gelu_new by default"},
    {"tie_word_embeddings", KeyHandling::kImplemented, "lm_head reads transformer.wte.weight (the default)"},
    {"scale_attn_by_inverse_layer_idx", KeyHandling::kImplemented, "attention scores also divided by (layer + 1)"},
    {"scale_attn_weights", KeyHandling::kImplemented, "false: unscaled attention scores"},
    {"reorder_and_upcast_attn", KeyHandling::kImplemented, "scores and softmax in float32, cast back"},
    {"add_cross_attention", KeyHandling::kRefused, "cross-attention layers", nullptr},
    GENERIC_REFUSED_KEYS
};

// ---- gptj: GPTJForCausalLM ----

constexpr const char* kGptjTypes[] = {"gptj"};
constexpr BlockLayout kGptjBlocks[] = {
    {kEmb, "transformer.wte"}, {kLayer, "transformer.h.{i}"}, {kFinal, "transformer.ln_f"}, {kHead, "lm_head"}};
constexpr TensorRule kGptjTensors[] = {
    M(kEmb, Slot::kTokenEmbedding, "weight", Dim::kVocab, Dim::kHidden, Layout::kEmbedding),
    V(kLayer, Slot::kInputNorm, "ln_1.weight", Dim::kHidden),
    V(kLayer, Slot::kInputNormBias, "ln_1.bias", Dim::kHidden),
    M(kLayer, Slot::kK, "attn.k_proj.weight", Dim::kHidden, Dim::kHidden),
    M(kLayer, Slot::kV, "attn.v_proj.weight", Dim::kHidden, Dim::kHidden),
    M(kLayer, Slot::kQ, "attn.q_proj.weight", Dim::kHidden, Dim::kHidden),
    M(kLayer, Slot::kO, "attn.out_proj.weight", Dim::kHidden, Dim::kHidden),
    M(kLayer, Slot::kFcIn, "mlp.fc_in.weight", Dim::kIntermediate, Dim::kHidden),
    V(kLayer, Slot::kFcInBias, "mlp.fc_in.bias", Dim::kIntermediate),
    M(kLayer, Slot::kDown, "mlp.fc_out.weight", Dim::kHidden, Dim::kIntermediate),
    V(kLayer, Slot::kDownBias, "mlp.fc_out.bias", Dim::kHidden),
    V(kFinal, Slot::kFinalNorm, "weight", Dim::kHidden),
    V(kFinal, Slot::kFinalNormBias, "bias", Dim::kHidden),
    M(kHead, Slot::kLmHead, "weight", Dim::kVocab, Dim::kHidden, Layout::kLinear, Presence::kUntied),
    V(kHead, Slot::kLmHeadBias, "bias", Dim::kVocab),
};
constexpr RuntimeBufferRule kGptjBuffers[] = {
    {kLayer, "attn.embed_positions", 2, {Dim::kPositions, Dim::kPositionTableDim}, DType::kF32}};
constexpr RopeType kGptjRope[] = {RopeType::kDefault};
constexpr MathKey kGptjKeys[] = {
    {"rotary_dim", KeyHandling::kImplemented, "interleaved rotary over the first rotary_dim dims (null: whole heads)"},
    {"n_inner", KeyHandling::kImplemented, "MLP inner size (default 4 n_embd)"},
    {"activation_function", KeyHandling::kImplemented, "gelu_new by default"},
    {"tie_word_embeddings", KeyHandling::kImplemented, "lm_head reads transformer.wte.weight; its bias stays"},
    GENERIC_REFUSED_KEYS
};

// ---- phi3: Phi3ForCausalLM (fused qkv_proj and gate_up_proj) ----

constexpr const char* kPhi3Types[] = {"phi3"};
constexpr TensorRule kPhi3Tensors[] = {
    M(kEmb, Slot::kTokenEmbedding, "weight", Dim::kVocab, Dim::kHidden, Layout::kEmbedding),
    Fused(kLayer, Slot::kQkv, "self_attn.qkv_proj.weight", Dim::kQkvDim, Dim::kHidden, Slot::kQ, Slot::kK, Slot::kV),
    M(kLayer, Slot::kO, "self_attn.o_proj.weight", Dim::kHidden, Dim::kQDim),
    Fused(kLayer, Slot::kGateUp, "mlp.gate_up_proj.weight", Dim::kTwoIntermediate, Dim::kHidden, Slot::kGate,
          Slot::kUp),
    M(kLayer, Slot::kDown, "mlp.down_proj.weight", Dim::kHidden, Dim::kIntermediate),
    V(kLayer, Slot::kInputNorm, "input_layernorm.weight", Dim::kHidden),
    V(kLayer, Slot::kPostNorm, "post_attention_layernorm.weight", Dim::kHidden),
    V(kFinal, Slot::kFinalNorm, "weight", Dim::kHidden),
    M(kHead, Slot::kLmHead, "weight", Dim::kVocab, Dim::kHidden, Layout::kLinear, Presence::kUntied),
};
// Older transformers' Phi3Model also had an embedding dropout module.
constexpr const char* kPhi3Parameterless[] = {"model.rotary_emb", "model.embed_dropout"};
constexpr RopeType kPhi3Rope[] = {RopeType::kDefault, RopeType::kLongrope};
constexpr MathKey kPhi3Keys[] = {
    {"rope_scaling", KeyHandling::kImplemented,
     "default and longrope (legacy types su and yarn mean longrope, as Phi3Config says); also rope_parameters"},
    {"original_max_position_embeddings", KeyHandling::kImplemented, "longrope's switch to long_factor (default 4096)"},
    {"partial_rotary_factor", KeyHandling::kImplemented, "rotate-half RoPE over int(head_dim x factor) dims"},
    {"tie_word_embeddings", KeyHandling::kImplemented, "lm_head reads model.embed_tokens.weight"},
    {"hidden_act", KeyHandling::kImplemented, "silu by default"},
    {"sliding_window", KeyHandling::kImplemented, "every layer attends to the last sliding_window positions"},
    GENERIC_REFUSED_KEYS
};

// ---- mixture of experts: mixtral (MixtralForCausalLM), qwen2_moe (Qwen2MoeForCausalLM), qwen3_moe ----
// The Hub's per-expert checkpoint layout (what transformers 5 reads and writes): one tensor per expert and matrix;
// "{e}" stands for the expert index.

constexpr TensorRule MP(BlockKind b, Slot s, const char* name, Dim d0, Dim d1, Presence p) {
  return M(b, s, name, d0, d1, Layout::kLinear, p);
}

constexpr const char* kMixtralTypes[] = {"mixtral"};
constexpr TensorRule kMixtralTensors[] = {
    M(kEmb, Slot::kTokenEmbedding, "weight", Dim::kVocab, Dim::kHidden, Layout::kEmbedding),
    M(kLayer, Slot::kQ, "self_attn.q_proj.weight", Dim::kQDim, Dim::kHidden),
    M(kLayer, Slot::kK, "self_attn.k_proj.weight", Dim::kKvDim, Dim::kHidden),
    M(kLayer, Slot::kV, "self_attn.v_proj.weight", Dim::kKvDim, Dim::kHidden),
    M(kLayer, Slot::kO, "self_attn.o_proj.weight", Dim::kHidden, Dim::kQDim),
    MP(kLayer, Slot::kRouter, "block_sparse_moe.gate.weight", Dim::kNumExperts, Dim::kHidden, Presence::kSparseMlp),
    MP(kLayer, Slot::kExpertGate, "block_sparse_moe.experts.{e}.w1.weight", Dim::kExpertIntermediate, Dim::kHidden,
       Presence::kSparseMlp),
    MP(kLayer, Slot::kExpertDown, "block_sparse_moe.experts.{e}.w2.weight", Dim::kHidden, Dim::kExpertIntermediate,
       Presence::kSparseMlp),
    MP(kLayer, Slot::kExpertUp, "block_sparse_moe.experts.{e}.w3.weight", Dim::kExpertIntermediate, Dim::kHidden,
       Presence::kSparseMlp),
    V(kLayer, Slot::kInputNorm, "input_layernorm.weight", Dim::kHidden),
    V(kLayer, Slot::kPostNorm, "post_attention_layernorm.weight", Dim::kHidden),
    V(kFinal, Slot::kFinalNorm, "weight", Dim::kHidden),
    M(kHead, Slot::kLmHead, "weight", Dim::kVocab, Dim::kHidden, Layout::kLinear, Presence::kUntied),
};

// Qwen2-MoE and Qwen3-MoE share the layout of their MLPs: a dense MLP in the layers that are not sparse
// (mlp_only_layers, decoder_sparse_step), else the router, the experts and (Qwen2-MoE) the shared expert.
#define QWEN_MOE_MLP_TENSORS                                                                                        \
  MP(kLayer, Slot::kGate, "mlp.gate_proj.weight", Dim::kIntermediate, Dim::kHidden, Presence::kDenseMlp),           \
      MP(kLayer, Slot::kUp, "mlp.up_proj.weight", Dim::kIntermediate, Dim::kHidden, Presence::kDenseMlp),           \
      MP(kLayer, Slot::kDown, "mlp.down_proj.weight", Dim::kHidden, Dim::kIntermediate, Presence::kDenseMlp),       \
      MP(kLayer, Slot::kRouter, "mlp.gate.weight", Dim::kNumExperts, Dim::kHidden, Presence::kSparseMlp),           \
      MP(kLayer, Slot::kExpertGate, "mlp.experts.{e}.gate_proj.weight", Dim::kExpertIntermediate, Dim::kHidden,     \
         Presence::kSparseMlp),                                                                                     \
      MP(kLayer, Slot::kExpertUp, "mlp.experts.{e}.up_proj.weight", Dim::kExpertIntermediate, Dim::kHidden,         \
         Presence::kSparseMlp),                                                                                     \
      MP(kLayer, Slot::kExpertDown, "mlp.experts.{e}.down_proj.weight", Dim::kHidden, Dim::kExpertIntermediate,     \
         Presence::kSparseMlp)

constexpr const char* kQwen2MoeTypes[] = {"qwen2_moe"};
constexpr TensorRule kQwen2MoeTensors[] = {
    M(kEmb, Slot::kTokenEmbedding, "weight", Dim::kVocab, Dim::kHidden, Layout::kEmbedding),
    M(kLayer, Slot::kQ, "self_attn.q_proj.weight", Dim::kQDim, Dim::kHidden),
    M(kLayer, Slot::kK, "self_attn.k_proj.weight", Dim::kKvDim, Dim::kHidden),
    M(kLayer, Slot::kV, "self_attn.v_proj.weight", Dim::kKvDim, Dim::kHidden),
    V(kLayer, Slot::kQBias, "self_attn.q_proj.bias", Dim::kQDim, Presence::kQkvBias),
    V(kLayer, Slot::kKBias, "self_attn.k_proj.bias", Dim::kKvDim, Presence::kQkvBias),
    V(kLayer, Slot::kVBias, "self_attn.v_proj.bias", Dim::kKvDim, Presence::kQkvBias),
    M(kLayer, Slot::kO, "self_attn.o_proj.weight", Dim::kHidden, Dim::kQDim),
    QWEN_MOE_MLP_TENSORS,
    MP(kLayer, Slot::kSharedGate, "mlp.shared_expert.gate_proj.weight", Dim::kSharedIntermediate, Dim::kHidden,
       Presence::kSharedExpert),
    MP(kLayer, Slot::kSharedUp, "mlp.shared_expert.up_proj.weight", Dim::kSharedIntermediate, Dim::kHidden,
       Presence::kSharedExpert),
    MP(kLayer, Slot::kSharedDown, "mlp.shared_expert.down_proj.weight", Dim::kHidden, Dim::kSharedIntermediate,
       Presence::kSharedExpert),
    MP(kLayer, Slot::kSharedExpertGate, "mlp.shared_expert_gate.weight", Dim::kOne, Dim::kHidden,
       Presence::kSharedExpert),
    V(kLayer, Slot::kInputNorm, "input_layernorm.weight", Dim::kHidden),
    V(kLayer, Slot::kPostNorm, "post_attention_layernorm.weight", Dim::kHidden),
    V(kFinal, Slot::kFinalNorm, "weight", Dim::kHidden),
    M(kHead, Slot::kLmHead, "weight", Dim::kVocab, Dim::kHidden, Layout::kLinear, Presence::kUntied),
};

constexpr const char* kQwen3MoeTypes[] = {"qwen3_moe"};
constexpr TensorRule kQwen3MoeTensors[] = {
    M(kEmb, Slot::kTokenEmbedding, "weight", Dim::kVocab, Dim::kHidden, Layout::kEmbedding),
    M(kLayer, Slot::kQ, "self_attn.q_proj.weight", Dim::kQDim, Dim::kHidden),
    M(kLayer, Slot::kK, "self_attn.k_proj.weight", Dim::kKvDim, Dim::kHidden),
    M(kLayer, Slot::kV, "self_attn.v_proj.weight", Dim::kKvDim, Dim::kHidden),
    V(kLayer, Slot::kQBias, "self_attn.q_proj.bias", Dim::kQDim, Presence::kQkvBias),
    V(kLayer, Slot::kKBias, "self_attn.k_proj.bias", Dim::kKvDim, Presence::kQkvBias),
    V(kLayer, Slot::kVBias, "self_attn.v_proj.bias", Dim::kKvDim, Presence::kQkvBias),
    M(kLayer, Slot::kO, "self_attn.o_proj.weight", Dim::kHidden, Dim::kQDim),
    V(kLayer, Slot::kOBias, "self_attn.o_proj.bias", Dim::kHidden, Presence::kOBias),
    V(kLayer, Slot::kQNorm, "self_attn.q_norm.weight", Dim::kHeadDim, Presence::kQkNorm),
    V(kLayer, Slot::kKNorm, "self_attn.k_norm.weight", Dim::kHeadDim, Presence::kQkNorm),
    QWEN_MOE_MLP_TENSORS,
    V(kLayer, Slot::kInputNorm, "input_layernorm.weight", Dim::kHidden),
    V(kLayer, Slot::kPostNorm, "post_attention_layernorm.weight", Dim::kHidden),
    V(kFinal, Slot::kFinalNorm, "weight", Dim::kHidden),
    M(kHead, Slot::kLmHead, "weight", Dim::kVocab, Dim::kHidden, Layout::kLinear, Presence::kUntied),
};
#undef QWEN_MOE_MLP_TENSORS

#define MOE_KEYS                                                                                                   \
  {"num_experts_per_tok", KeyHandling::kImplemented, "experts routed per token (softmax in float32, top-k)"},     \
      {"norm_topk_prob", KeyHandling::kImplemented, "top-k routing weights renormalized to sum 1"},               \
      {"router_aux_loss_coef", KeyHandling::kImplemented, "training only (no effect on a forward pass)"},         \
      {"output_router_logits", KeyHandling::kImplemented, "training only (no effect on a forward pass)"},         \
      {"router_jitter_noise", KeyHandling::kImplemented, "training only (no effect in eval mode)"},               \
      {"rope_scaling", KeyHandling::kImplemented, "the Llama family's RoPE types (also rope_parameters)"},        \
      {"head_dim", KeyHandling::kImplemented, "explicit head_dim"},                                               \
      {"tie_word_embeddings", KeyHandling::kImplemented, "lm_head reads model.embed_tokens.weight"},              \
      {"hidden_act", KeyHandling::kImplemented, "silu, gelu, gelu_new, gelu_pytorch_tanh, gelu_fast, relu"},      \
      {"partial_rotary_factor", KeyHandling::kRefused, "whole heads rotate", "1.0"},                              \
      {"quantization_config", KeyHandling::kRefused, "pre-quantized mixture-of-experts checkpoints", nullptr},    \
      {"attn_logit_softcapping", KeyHandling::kRefused, "attention logit soft-capping", nullptr},                 \
      {"final_logit_softcapping", KeyHandling::kRefused, "final logit soft-capping", nullptr},                    \
      {"logit_scale", KeyHandling::kRefused, "scaled logits", nullptr},                                          \
      {"embedding_multiplier", KeyHandling::kRefused, "scaled embeddings", nullptr},                             \
      {"residual_multiplier", KeyHandling::kRefused, "scaled residuals", nullptr},                               \
      {"attention_multiplier", KeyHandling::kRefused, "scaled attention", nullptr},                              \
      {"logits_scaling", KeyHandling::kRefused, "scaled logits", nullptr},                                       \
      {"n_shared_experts", KeyHandling::kRefused, "shared experts other than Qwen2-MoE's", nullptr},             \
      {"routed_scaling_factor", KeyHandling::kRefused, "scaled routing weights", "1.0"},

constexpr MathKey kMixtralKeys[] = {
    {"num_local_experts", KeyHandling::kImplemented, "routed experts per layer (also num_experts)"},
    {"sliding_window", KeyHandling::kImplemented, "every layer attends to the last sliding_window positions"},
    MOE_KEYS
};
constexpr MathKey kQwen2MoeKeys[] = {
    {"num_experts", KeyHandling::kImplemented, "routed experts per sparse layer (also num_local_experts)"},
    {"moe_intermediate_size", KeyHandling::kImplemented, "the routed experts' inner size"},
    {"shared_expert_intermediate_size", KeyHandling::kImplemented, "the shared expert (sigmoid-gated)"},
    {"decoder_sparse_step", KeyHandling::kImplemented, "layers with (i + 1) % step == 0 are sparse"},
    {"mlp_only_layers", KeyHandling::kImplemented, "layers with a dense MLP of intermediate_size"},
    {"qkv_bias", KeyHandling::kImplemented, "q/k/v biases (default true)"},
    {"use_sliding_window", KeyHandling::kRefused, "sliding-window attention in Qwen2-MoE", "false"},
    MOE_KEYS
};
constexpr MathKey kQwen3MoeKeys[] = {
    {"num_experts", KeyHandling::kImplemented, "routed experts per sparse layer (also num_local_experts)"},
    {"moe_intermediate_size", KeyHandling::kImplemented, "the routed experts' inner size"},
    {"decoder_sparse_step", KeyHandling::kImplemented, "layers with (i + 1) % step == 0 are sparse"},
    {"mlp_only_layers", KeyHandling::kImplemented, "layers with a dense MLP of intermediate_size"},
    {"attention_bias", KeyHandling::kImplemented, "q/k/v/o biases"},
    {"use_sliding_window", KeyHandling::kRefused, "sliding-window attention in Qwen3-MoE", "false"},
    MOE_KEYS
};
#undef MOE_KEYS

constexpr RopeType kNoRope[1] = {RopeType::kDefault};

const FamilyInfo kFamilies[] = {
    {Family::kLlama, "llama", kLlamaTypes, "LlamaForCausalLM", kLlamaBlocks, kLlamaTensors, kTiedHead, {},
     kRotaryBuffers, kLlamaParameterless, "",
     KernelCounts{.decoder_layer = 33, .partial_rotary_extra = 0, .final_norm = 4, .fused_decoder_layer = 10,
                  .fused_final_norm = 1, .fused_decode_layer = 6}, kLlamaRope,
     /*partial_rotary=*/false, GraphDecode::kWhileRopeLengthIndependent, kLlamaKeys},
    {Family::kGpt2, "gpt2", kGpt2Types, "GPT2LMHeadModel", kGpt2Blocks, kGpt2Tensors, kTiedHead, {}, {},
     kGptParameterless, "transformer.", KernelCounts{.decoder_layer = 13, .partial_rotary_extra = 0, .final_norm = 1},
     std::span<const RopeType>(kNoRope, 0), /*partial_rotary=*/false, GraphDecode::kNever, kGpt2Keys},
    {Family::kGptj, "gptj", kGptjTypes, "GPTJForCausalLM", kGptjBlocks, kGptjTensors, kTiedHead, kGptjBuffers, {},
     kGptParameterless, "", KernelCounts{.decoder_layer = 24, .partial_rotary_extra = 2, .final_norm = 1}, kGptjRope,
     /*partial_rotary=*/true, GraphDecode::kNever, kGptjKeys},
    {Family::kPhi3, "phi3", kPhi3Types, "Phi3ForCausalLM", kLlamaBlocks, kPhi3Tensors, kTiedHead, {}, kRotaryBuffers,
     kPhi3Parameterless, "", KernelCounts{.decoder_layer = 33, .partial_rotary_extra = 2, .final_norm = 4,
                                     .fused_decoder_layer = 10, .fused_final_norm = 1, .fused_decode_layer = 6},
     kPhi3Rope, /*partial_rotary=*/true, GraphDecode::kWhileRopeLengthIndependent, kPhi3Keys},
    // Mixture-of-experts layers: decoder_layer counts a layer's attention half (fused_decode_layer: the q/k/v
    // product with the norm and RoPE, Qwen3-MoE's RoPE apart, the attention's two kernels, the o product with the
    // residual); BlockKernels and DecodeBlockKernels add the MLP's. Their
    // decode steps are captured in a CUDA graph where the executor reads the chosen experts on the device (every
    // expert resident: GraphDecodeEligible's conditions, and the planner's on the placement).
    {Family::kMixtral, "mixtral", kMixtralTypes, "MixtralForCausalLM", kLlamaBlocks, kMixtralTensors, kTiedHead, {},
     kRotaryBuffers, kLlamaParameterless, "", KernelCounts{.decoder_layer = 22, .partial_rotary_extra = 0,
     .final_norm = 4, .fused_decoder_layer = 8, .fused_final_norm = 1, .fused_decode_layer = 4}, kLlamaRope, /*partial_rotary=*/false,
     GraphDecode::kWhileRopeLengthIndependent, kMixtralKeys},
    {Family::kQwen2Moe, "qwen2_moe", kQwen2MoeTypes, "Qwen2MoeForCausalLM", kLlamaBlocks, kQwen2MoeTensors, kTiedHead,
     {}, kRotaryBuffers, kLlamaParameterless, "", KernelCounts{.decoder_layer = 22, .partial_rotary_extra = 0,
     .final_norm = 4, .fused_decoder_layer = 8, .fused_final_norm = 1, .fused_decode_layer = 4}, kLlamaRope, /*partial_rotary=*/false,
     GraphDecode::kWhileRopeLengthIndependent, kQwen2MoeKeys},
    {Family::kQwen3Moe, "qwen3_moe", kQwen3MoeTypes, "Qwen3MoeForCausalLM", kLlamaBlocks, kQwen3MoeTensors, kTiedHead,
     {}, kRotaryBuffers, kLlamaParameterless, "", KernelCounts{.decoder_layer = 30, .partial_rotary_extra = 0,
     .final_norm = 4, .fused_decoder_layer = 8, .fused_final_norm = 1, .fused_decode_layer = 5}, kLlamaRope, /*partial_rotary=*/false,
     GraphDecode::kWhileRopeLengthIndependent, kQwen3MoeKeys},
};


constexpr const char* kSlotNames[] = {
    "token_embedding", "position_embedding", "input_norm", "input_norm_bias", "post_norm", "post_norm_bias",
    "q",               "q_bias",             "k",          "k_bias",          "v",         "v_bias",
    "qkv",             "qkv_bias",           "o",          "o_bias",          "gate",      "gate_bias",
    "up",              "up_bias",            "gate_up",    "fc_in",           "fc_in_bias", "down",
    "down_bias",       "final_norm",         "final_norm_bias", "lm_head",    "lm_head_bias",
    "q_norm",          "k_norm",             "router",     "shared_gate",     "shared_up", "shared_down",
    "shared_expert_gate", "expert_gate",     "expert_up",  "expert_down",
};
static_assert(std::size(kSlotNames) == static_cast<size_t>(Slot::kCount), "one name per slot");


std::string Lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

// ---- config.json access ----

// Typed access to config.json fields; errors name the field.
class Config {
 public:
  Config(const json& j, const std::string& source) : j_(j), source_(source) {}

  bool Has(const std::string& key) const { return j_.contains(key) && !j_.at(key).is_null(); }
  const json* Get(const std::string& key) const { return Has(key) ? &j_.at(key) : nullptr; }

  Error Bad(const std::string& key, const std::string& why) const {
    return MakeError(ErrorCode::kInvalidArgument, source_ + ": field \"" + key + "\": " + why);
  }
  Error Unsupported(const std::string& key, const std::string& why) const {
    return MakeError(ErrorCode::kUnsupported, source_ + ": field \"" + key + "\": " + why);
  }

  Result<uint32_t> U32(const std::string& key, std::optional<uint32_t> dflt = std::nullopt) const {
    const json* v = Get(key);
    if (v == nullptr) {
      if (dflt) return *dflt;
      return Bad(key, "missing");
    }
    if (!v->is_number_integer() || v->get<int64_t>() <= 0 || v->get<int64_t>() > UINT32_MAX) {
      return Bad(key, "expected a positive integer, got " + v->dump());
    }
    return static_cast<uint32_t>(v->get<int64_t>());
  }
  // A decoder layer count: positive and at most kMaxDecoderLayers (checked before any layer is built).
  Result<uint32_t> Layers(std::initializer_list<const char*> keys) const {
    const char* key = *keys.begin();
    for (const char* k : keys) {
      if (Has(k)) {
        key = k;
        break;
      }
    }
    BIGPLAN_ASSIGN_OR_RETURN(uint32_t n, U32Any(keys));
    if (n > kMaxDecoderLayers) {
      return Unsupported(key, std::to_string(n) + " decoder layers exceed the limit of " +
                                  std::to_string(kMaxDecoderLayers));
    }
    return n;
  }
  // The first of several spellings that is present.
  Result<uint32_t> U32Any(std::initializer_list<const char*> keys, std::optional<uint32_t> dflt = std::nullopt) const {
    for (const char* k : keys) {
      if (Has(k)) return U32(k);
    }
    if (dflt) return *dflt;
    return Bad(*keys.begin(), "missing");
  }
  Result<double> Number(const std::string& key, double dflt) const {
    const json* v = Get(key);
    if (v == nullptr) return dflt;
    if (!v->is_number()) return Bad(key, "expected a number, got " + v->dump());
    return v->get<double>();
  }
  Result<bool> Bool(const std::string& key, bool dflt) const {
    const json* v = Get(key);
    if (v == nullptr) return dflt;
    if (!v->is_boolean()) return Bad(key, "expected true or false, got " + v->dump());
    return v->get<bool>();
  }
  Result<std::string> String(const std::string& key, const std::string& dflt) const {
    const json* v = Get(key);
    if (v == nullptr) return dflt;
    if (!v->is_string()) return Bad(key, "expected a string, got " + v->dump());
    return v->get<std::string>();
  }
  const json& raw() const { return j_; }
  const std::string& source() const { return source_; }

 private:
  const json& j_;
  const std::string& source_;
};

Status ReadTokens(const Config& c, ModelConfig& mc) {
  mc.bos_token_id = -1;
  if (const json* bos = c.Get("bos_token_id")) {
    // A token id, or null for none (a negative id names no token: the description would write it as null).
    if (!bos->is_number_integer() || bos->get<int64_t>() < 0)
      return c.Bad("bos_token_id", "expected a token id (an integer >= 0) or null, got " + bos->dump());
    mc.bos_token_id = bos->get<int64_t>();
  }
  mc.eos_token_ids.clear();
  if (const json* eos = c.Get("eos_token_id")) {
    if (eos->is_number_integer()) {
      mc.eos_token_ids.push_back(eos->get<int64_t>());
    } else if (eos->is_array()) {
      for (const json& e : *eos) {
        if (!e.is_number_integer()) return c.Bad("eos_token_id", "expected integers, got " + eos->dump());
        mc.eos_token_ids.push_back(e.get<int64_t>());
      }
    } else {
      return c.Bad("eos_token_id", "expected an integer or a list of integers, got " + eos->dump());
    }
  }
  return Status::Ok();
}

std::string RopeTypeString(const json& rs) {
  for (const char* key : {"rope_type", "type"}) {
    auto it = rs.find(key);
    if (it != rs.end() && it->is_string()) return it->get<std::string>();
  }
  return "default";
}

// rope_theta and rope_scaling from either the classic top-level fields or transformers 5's "rope_parameters"
// ({"rope_type": ..., "rope_theta": ..., scaling fields}). rope_scaling becomes the scaling object without
// rope_theta, or null for the default rope type. The type name is checked by CheckModelConfig.
Status ReadRope(const Config& c, ModelConfig& mc, double default_theta) {
  BIGPLAN_ASSIGN_OR_RETURN(mc.rope_theta, c.Number("rope_theta", default_theta));
  mc.rope_scaling = nullptr;
  if (const json* rs = c.Get("rope_scaling")) {
    if (!rs->is_object()) return c.Bad("rope_scaling", "expected an object or null, got " + rs->dump());
    mc.rope_scaling = *rs;
  }
  if (const json* rp = c.Get("rope_parameters")) {
    if (!rp->is_object()) return c.Bad("rope_parameters", "expected an object, got " + rp->dump());
    if (rp->contains("rope_theta")) {
      if (!(*rp)["rope_theta"].is_number()) return c.Bad("rope_parameters.rope_theta", "expected a number");
      mc.rope_theta = (*rp)["rope_theta"].get<double>();
    }
    if (mc.rope_scaling.is_null() && RopeTypeString(*rp) != "default") {
      json scaling = *rp;
      scaling.erase("rope_theta");
      mc.rope_scaling = scaling;
    }
  }
  return Status::Ok();
}

// partial_rotary_factor from the top level, else from rope_parameters / rope_scaling; nullopt if absent.
Result<std::optional<double>> PartialRotaryFactor(const Config& c) {
  const char* where = "partial_rotary_factor";
  const json* v = c.Get("partial_rotary_factor");
  for (const char* obj : {"rope_parameters", "rope_scaling"}) {
    if (v != nullptr) break;
    const json* o = c.Get(obj);
    if (o != nullptr && o->is_object() && o->contains("partial_rotary_factor") &&
        !(*o)["partial_rotary_factor"].is_null()) {
      v = &(*o)["partial_rotary_factor"];
      where = obj;
    }
  }
  if (v == nullptr) return std::optional<double>();
  if (!v->is_number() || !(v->get<double>() > 0) || v->get<double>() > 1) {
    return c.Bad(where, "partial_rotary_factor must be a number in (0, 1], got " + v->dump());
  }
  return std::optional<double>(v->get<double>());
}

// Refused math keys present with a value that changes the math.
Status CheckRefusedKeys(const FamilyInfo& f, const Config& c, const std::string& model_type) {
  for (const MathKey& k : f.math_keys) {
    if (k.handling != KeyHandling::kRefused) continue;
    const json* v = c.Get(k.key);
    if (v == nullptr) continue;
    // Without a default, null (Get skips it), false, 0 and {} are neutral.
    const bool neutral = k.default_value != nullptr
                             ? *v == json::parse(k.default_value)
                             : (v->is_boolean() && !v->get<bool>()) || (v->is_number() && v->get<double>() == 0) ||
                                   (v->is_object() && v->empty());
    if (!neutral) {
      return c.Unsupported(k.key, v->dump() + " is not supported for " + model_type + " (" + k.note + ")");
    }
  }
  return Status::Ok();
}

Status ReadAttentionShape(const Config& c, ModelConfig& mc) {
  BIGPLAN_ASSIGN_OR_RETURN(mc.hidden_size, c.U32("hidden_size"));
  BIGPLAN_ASSIGN_OR_RETURN(mc.num_layers, c.Layers({"num_hidden_layers"}));
  BIGPLAN_ASSIGN_OR_RETURN(mc.num_heads, c.U32("num_attention_heads"));
  BIGPLAN_ASSIGN_OR_RETURN(mc.num_kv_heads, c.U32("num_key_value_heads", mc.num_heads));
  if (mc.hidden_size % mc.num_heads != 0 && !c.Has("head_dim")) {
    return c.Bad("num_attention_heads", "hidden_size " + std::to_string(mc.hidden_size) + " is not a multiple of " +
                                            std::to_string(mc.num_heads) + " heads and the config gives no head_dim");
  }
  BIGPLAN_ASSIGN_OR_RETURN(mc.head_dim, c.U32("head_dim", mc.hidden_size / mc.num_heads));
  if (mc.num_heads % mc.num_kv_heads != 0) {
    return c.Bad("num_key_value_heads", std::to_string(mc.num_heads) + " attention heads are not a multiple of " +
                                            std::to_string(mc.num_kv_heads) + " key/value heads");
  }
  BIGPLAN_ASSIGN_OR_RETURN(mc.intermediate_size, c.U32("intermediate_size"));
  BIGPLAN_ASSIGN_OR_RETURN(mc.vocab_size, c.U32("vocab_size"));
  return Status::Ok();
}

// A window size: a positive integer, or null (none); absent -> `dflt` (the transformers config class's default).
Result<uint32_t> WindowSize(const Config& c, const char* key, uint32_t dflt) {
  if (!c.raw().contains(key)) return dflt;
  if (c.raw()[key].is_null()) return uint32_t{0};
  return c.U32(key);
}

// Sliding-window attention exactly as transformers 5.17 decides it:
//   mistral  every layer slides when "sliding_window" is set (MistralConfig's default 4096 when the key is absent;
//            null: none). layer_types is ignored by MistralModel, so it is here too.
//   qwen2    "sliding_window" counts only with "use_sliding_window" true (Qwen2Config sets it to None otherwise);
//            per layer: "layer_types" when given (each "full_attention" or "sliding_attention"), else layers
//            i >= "max_window_layers" (default 28) slide. A layer marked sliding while the window is off is
//            refused (transformers fails to build the mask for it).
//   phi3     every layer slides when "sliding_window" is set (Phi3Config's default: none).
//   llama    no sliding window (LlamaModel has none; a "sliding_window" key has no effect there).
Status ReadSlidingWindow(const Config& c, const std::string& model_type, ModelConfig& mc) {
  mc.sliding_window = 0;
  mc.sliding_window_layers.clear();
  std::vector<bool> layers(mc.num_layers, false);
  uint32_t window = 0;
  if (model_type == "mistral" || model_type == "phi3" || model_type == "mixtral") {
    BIGPLAN_ASSIGN_OR_RETURN(window, WindowSize(c, "sliding_window", model_type == "mistral" ? 4096 : 0));
    if (window > 0) layers.assign(mc.num_layers, true);
  } else if (model_type == "qwen2") {
    BIGPLAN_ASSIGN_OR_RETURN(const bool use, c.Bool("use_sliding_window", false));
    BIGPLAN_ASSIGN_OR_RETURN(const uint32_t size, WindowSize(c, "sliding_window", 4096));
    window = use ? size : 0;
    int64_t max_window_layers = 28;
    if (const json* m = c.Get("max_window_layers")) {
      if (!m->is_number_integer() || m->get<int64_t>() < 0) {
        return c.Bad("max_window_layers", "expected a non-negative integer, got " + m->dump());
      }
      max_window_layers = m->get<int64_t>();
    }
    if (const json* types = c.Get("layer_types")) {
      if (!types->is_array() || types->size() != mc.num_layers) {
        return c.Bad("layer_types", "expected a list of " + std::to_string(mc.num_layers) + " layer types, got " +
                                        (types->is_array() ? std::to_string(types->size()) + " entries" : types->dump()));
      }
      for (uint32_t i = 0; i < mc.num_layers; ++i) {
        const json& t = (*types)[i];
        const std::string s = t.is_string() ? t.get<std::string>() : t.dump();
        if (s == "full_attention") continue;
        if (s != "sliding_attention") {
          return c.Unsupported("layer_types", "layer " + std::to_string(i) + " is \"" + s +
                                                  "\" (supported: full_attention, sliding_attention)");
        }
        if (window == 0) {
          return c.Bad("layer_types", "layer " + std::to_string(i) + " is sliding_attention but the sliding window is "
                                      "off (use_sliding_window false or sliding_window null)");
        }
        layers[i] = true;
      }
    } else if (window > 0) {
      for (uint32_t i = 0; i < mc.num_layers; ++i) layers[i] = i >= max_window_layers;
    }
  }
  bool any = false;
  for (bool b : layers) any = any || b;
  if (window > 0 && any) {
    mc.sliding_window = window;
    mc.sliding_window_layers = std::move(layers);
  }
  return Status::Ok();
}

// Llama, Mistral, Qwen2.
Status ParseLlama(const Config& c, const std::string& model_type, ParsedConfig& p) {
  ModelConfig& mc = p.config;
  BIGPLAN_RETURN_IF_ERROR(ReadAttentionShape(c, mc));
  BIGPLAN_ASSIGN_OR_RETURN(mc.max_position_embeddings, c.U32("max_position_embeddings", 2048));
  BIGPLAN_ASSIGN_OR_RETURN(mc.norm_eps, c.Number("rms_norm_eps", 1e-6));
  BIGPLAN_RETURN_IF_ERROR(ReadRope(c, mc, 10000.0));
  BIGPLAN_ASSIGN_OR_RETURN(std::optional<double> partial, PartialRotaryFactor(c));
  if (partial && *partial != 1.0) {
    return c.Unsupported("partial_rotary_factor", "partial rotary is not supported for " + model_type);
  }
  mc.rotary_dim = mc.head_dim;
  const bool qkv_bias = model_type == "qwen2";
  bool o_bias = false;
  if (model_type == "llama") {
    BIGPLAN_ASSIGN_OR_RETURN(o_bias, c.Bool("attention_bias", false));
    BIGPLAN_ASSIGN_OR_RETURN(mc.mlp_bias, c.Bool("mlp_bias", false));
  }
  mc.attention_bias = qkv_bias || o_bias;
  BIGPLAN_ASSIGN_OR_RETURN(mc.tie_word_embeddings, c.Bool("tie_word_embeddings", false));
  BIGPLAN_ASSIGN_OR_RETURN(mc.activation, c.String("hidden_act", "silu"));
  BIGPLAN_RETURN_IF_ERROR(ReadTokens(c, mc));
  BIGPLAN_RETURN_IF_ERROR(ReadSlidingWindow(c, model_type, mc));
  p.features.qkv_bias = qkv_bias || o_bias;
  p.features.o_bias = o_bias;
  p.features.mlp_bias = mc.mlp_bias;
  p.features.tied = mc.tie_word_embeddings;
  return Status::Ok();
}

// Phi-3 (Phi3Config's defaults; rope as Phi3Config.convert_rope_params_to_dict and standardize_rope_params).
Status ParsePhi3(const Config& c, ParsedConfig& p) {
  ModelConfig& mc = p.config;
  BIGPLAN_RETURN_IF_ERROR(ReadAttentionShape(c, mc));
  BIGPLAN_ASSIGN_OR_RETURN(mc.max_position_embeddings, c.U32("max_position_embeddings", 4096));
  BIGPLAN_ASSIGN_OR_RETURN(uint32_t original, c.U32("original_max_position_embeddings", 4096));
  BIGPLAN_ASSIGN_OR_RETURN(mc.norm_eps, c.Number("rms_norm_eps", 1e-5));
  BIGPLAN_RETURN_IF_ERROR(ReadRope(c, mc, 10000.0));
  if (mc.rope_scaling.is_object()) {
    const std::string type = RopeTypeString(mc.rope_scaling);
    if (type == "su" || type == "yarn" || type == "longrope") {
      mc.rope_scaling["rope_type"] = "longrope";
      mc.rope_scaling.erase("type");
      // Phi-3 keeps the pretraining length at the top level, and transformers gives it priority.
      mc.rope_scaling["original_max_position_embeddings"] = original;
    } else if (type == "default") {
      mc.rope_scaling = nullptr;
    }
  }
  BIGPLAN_ASSIGN_OR_RETURN(std::optional<double> partial, PartialRotaryFactor(c));
  // transformers: dim = int(head_dim * partial_rotary_factor).
  mc.rotary_dim = static_cast<uint32_t>(static_cast<double>(mc.head_dim) * partial.value_or(1.0));
  if (mc.rotary_dim == 0 || mc.rotary_dim % 2 != 0) {
    return c.Bad("partial_rotary_factor", "gives " + std::to_string(mc.rotary_dim) + " rotary dims of head_dim " +
                                              std::to_string(mc.head_dim) + " (must be positive and even)");
  }
  mc.attention_bias = false;
  mc.mlp_bias = false;
  BIGPLAN_ASSIGN_OR_RETURN(mc.tie_word_embeddings, c.Bool("tie_word_embeddings", false));
  BIGPLAN_ASSIGN_OR_RETURN(mc.activation, c.String("hidden_act", "silu"));
  BIGPLAN_RETURN_IF_ERROR(ReadTokens(c, mc));
  BIGPLAN_RETURN_IF_ERROR(ReadSlidingWindow(c, "phi3", mc));
  p.features.tied = mc.tie_word_embeddings;
  return Status::Ok();
}

// The shape fields GPT-2 and GPT-J configs share (n_embd, n_layer, n_head, n_inner, vocab_size, n_positions with
// the model's default, layer_norm_epsilon); every head is a KV head.
Status ReadGptShape(const Config& c, uint32_t default_positions, ModelConfig& mc) {
  BIGPLAN_ASSIGN_OR_RETURN(mc.hidden_size, c.U32Any({"n_embd", "hidden_size"}));
  BIGPLAN_ASSIGN_OR_RETURN(mc.num_layers, c.Layers({"n_layer", "num_hidden_layers"}));
  BIGPLAN_ASSIGN_OR_RETURN(mc.num_heads, c.U32Any({"n_head", "num_attention_heads"}));
  if (mc.hidden_size % mc.num_heads != 0) return c.Bad("n_head", "n_embd is not a multiple of n_head");
  mc.num_kv_heads = mc.num_heads;
  mc.head_dim = mc.hidden_size / mc.num_heads;
  BIGPLAN_ASSIGN_OR_RETURN(mc.intermediate_size, c.U32("n_inner", 4 * mc.hidden_size));
  BIGPLAN_ASSIGN_OR_RETURN(mc.vocab_size, c.U32("vocab_size"));
  BIGPLAN_ASSIGN_OR_RETURN(mc.max_position_embeddings,
                           c.U32Any({"n_positions", "max_position_embeddings"}, default_positions));
  BIGPLAN_ASSIGN_OR_RETURN(mc.norm_eps, c.Number("layer_norm_epsilon", 1e-5));
  return Status::Ok();
}

Status ParseGpt2(const Config& c, ParsedConfig& p) {
  ModelConfig& mc = p.config;
  BIGPLAN_RETURN_IF_ERROR(ReadGptShape(c, 1024, mc));
  mc.rope_theta = 10000.0;  // unused: learned positions
  mc.rotary_dim = 0;
  mc.rope_scaling = nullptr;
  mc.attention_bias = true;
  mc.mlp_bias = true;
  BIGPLAN_ASSIGN_OR_RETURN(mc.tie_word_embeddings, c.Bool("tie_word_embeddings", true));
  BIGPLAN_ASSIGN_OR_RETURN(mc.activation, c.String("activation_function", "gelu_new"));
  BIGPLAN_RETURN_IF_ERROR(ReadTokens(c, mc));
  // GPT2Attention: scores scaled by 1/sqrt(head_dim) unless scale_attn_weights is false, also by 1/(layer + 1) with
  // scale_attn_by_inverse_layer_idx; reorder_and_upcast_attn computes them and the softmax in float32.
  BIGPLAN_ASSIGN_OR_RETURN(mc.scale_attn_weights, c.Bool("scale_attn_weights", true));
  BIGPLAN_ASSIGN_OR_RETURN(mc.scale_attn_by_inverse_layer_idx, c.Bool("scale_attn_by_inverse_layer_idx", false));
  BIGPLAN_ASSIGN_OR_RETURN(mc.reorder_and_upcast_attn, c.Bool("reorder_and_upcast_attn", false));
  p.features.qkv_bias = p.features.o_bias = p.features.mlp_bias = true;
  p.features.tied = mc.tie_word_embeddings;
  return Status::Ok();
}

// rotary_dim: absent -> GPTJConfig's default 64; null (older configs) -> rotary over whole heads, with the sinusoid
// table sized by n_embd as transformers does. Rotation covers min(rotary_dim, head_dim) dims of a head.
Status ParseGptj(const Config& c, ParsedConfig& p) {
  ModelConfig& mc = p.config;
  BIGPLAN_RETURN_IF_ERROR(ReadGptShape(c, 2048, mc));
  uint32_t pos_embd_dim = 64;
  if (c.raw().contains("rotary_dim") && c.raw()["rotary_dim"].is_null()) {
    pos_embd_dim = mc.hidden_size;
    mc.rotary_dim = mc.head_dim;
  } else {
    BIGPLAN_ASSIGN_OR_RETURN(pos_embd_dim, c.U32("rotary_dim", 64));
    mc.rotary_dim = std::min(pos_embd_dim, mc.head_dim);
  }
  mc.rope_theta = 10000.0;
  mc.rope_scaling = nullptr;
  mc.attention_bias = false;
  mc.mlp_bias = true;
  BIGPLAN_ASSIGN_OR_RETURN(mc.tie_word_embeddings, c.Bool("tie_word_embeddings", false));
  BIGPLAN_ASSIGN_OR_RETURN(mc.activation, c.String("activation_function", "gelu_new"));
  BIGPLAN_RETURN_IF_ERROR(ReadTokens(c, mc));
  p.features.mlp_bias = true;
  p.features.tied = mc.tie_word_embeddings;
  p.features.position_table_dim = pos_embd_dim;
  return Status::Ok();
}

// Mixtral, Qwen2-MoE, Qwen3-MoE (their transformers 5.17 config classes' defaults).
//   mixtral    num_local_experts (8), num_experts_per_tok (2), experts of intermediate_size, renormalized top-k, every
//              layer sparse; sliding_window as Mistral's but null by default.
//   qwen2_moe  num_experts (60), num_experts_per_tok (4), moe_intermediate_size (1408), shared expert of
//              shared_expert_intermediate_size (5632; 0: none), norm_topk_prob (false), q/k/v biases (qkv_bias, true).
//   qwen3_moe  num_experts (128), num_experts_per_tok (8), moe_intermediate_size (768), norm_topk_prob (false), q/k
//              RMSNorm per head, attention_bias (false) on q/k/v/o.
// Both Qwen families: layer i is sparse when i is not in mlp_only_layers and (i + 1) % decoder_sparse_step == 0
// (decoder_sparse_step 1); the other layers have a dense MLP of intermediate_size.
Status ParseMoe(const Config& c, const std::string& model_type, ParsedConfig& p) {
  ModelConfig& mc = p.config;
  const bool mixtral = model_type == "mixtral";
  BIGPLAN_RETURN_IF_ERROR(ReadAttentionShape(c, mc));
  BIGPLAN_ASSIGN_OR_RETURN(mc.max_position_embeddings, c.U32("max_position_embeddings", mixtral ? 131072 : 32768));
  BIGPLAN_ASSIGN_OR_RETURN(mc.norm_eps, c.Number("rms_norm_eps", mixtral ? 1e-5 : 1e-6));
  BIGPLAN_RETURN_IF_ERROR(ReadRope(c, mc, mixtral ? 1e6 : 10000.0));
  BIGPLAN_ASSIGN_OR_RETURN(std::optional<double> partial, PartialRotaryFactor(c));
  if (partial && *partial != 1.0) {
    return c.Unsupported("partial_rotary_factor", "partial rotary is not supported for " + model_type);
  }
  mc.rotary_dim = mc.head_dim;
  bool qkv_bias = false, o_bias = false;
  if (model_type == "qwen2_moe") {
    BIGPLAN_ASSIGN_OR_RETURN(qkv_bias, c.Bool("qkv_bias", true));
  } else if (model_type == "qwen3_moe") {
    BIGPLAN_ASSIGN_OR_RETURN(qkv_bias, c.Bool("attention_bias", false));
    o_bias = qkv_bias;
    mc.qk_norm = true;
  }
  mc.attention_bias = qkv_bias || o_bias;
  mc.mlp_bias = false;
  BIGPLAN_ASSIGN_OR_RETURN(mc.tie_word_embeddings, c.Bool("tie_word_embeddings", false));
  BIGPLAN_ASSIGN_OR_RETURN(mc.activation, c.String("hidden_act", "silu"));
  BIGPLAN_RETURN_IF_ERROR(ReadTokens(c, mc));
  BIGPLAN_RETURN_IF_ERROR(ReadSlidingWindow(c, model_type, mc));

  // transformers writes either spelling (its attribute_map aliases them; Qwen3MoeConfig saves num_local_experts).
  const char* experts_key = mixtral ? "num_local_experts" : "num_experts";
  const char* other_key = mixtral ? "num_experts" : "num_local_experts";
  if (c.Has(experts_key) && c.Has(other_key) && c.raw()[experts_key] != c.raw()[other_key]) {
    return c.Bad(experts_key, "disagrees with \"" + std::string(other_key) + "\"");
  }
  if (!c.Has(experts_key) && c.Has(other_key)) experts_key = other_key;
  BIGPLAN_ASSIGN_OR_RETURN(mc.num_experts, c.U32(experts_key, mixtral ? 8 : model_type == "qwen2_moe" ? 60 : 128));
  if (mc.num_experts > kMaxExperts) {
    return c.Unsupported(experts_key, std::to_string(mc.num_experts) + " experts exceed the limit of " +
                                          std::to_string(kMaxExperts));
  }
  BIGPLAN_ASSIGN_OR_RETURN(mc.num_experts_per_tok,
                           c.U32("num_experts_per_tok", mixtral ? 2 : model_type == "qwen2_moe" ? 4 : 8));
  if (mc.num_experts_per_tok > mc.num_experts) {
    return c.Bad("num_experts_per_tok", std::to_string(mc.num_experts_per_tok) + " exceeds the " +
                                            std::to_string(mc.num_experts) + " experts");
  }
  if (mixtral) {
    mc.moe_intermediate_size = mc.intermediate_size;
    mc.norm_topk_prob = true;
    mc.sparse_layers.assign(mc.num_layers, true);
  } else {
    const bool qwen2 = model_type == "qwen2_moe";
    BIGPLAN_ASSIGN_OR_RETURN(mc.moe_intermediate_size, c.U32("moe_intermediate_size", qwen2 ? 1408 : 768));
    if (qwen2) {
      const json* shared = c.Get("shared_expert_intermediate_size");
      if (shared != nullptr && shared->is_number_integer() && shared->get<int64_t>() == 0) {
        mc.shared_expert_intermediate_size = 0;
      } else {
        BIGPLAN_ASSIGN_OR_RETURN(mc.shared_expert_intermediate_size, c.U32("shared_expert_intermediate_size", 5632));
      }
    }
    BIGPLAN_ASSIGN_OR_RETURN(mc.norm_topk_prob, c.Bool("norm_topk_prob", false));
    BIGPLAN_ASSIGN_OR_RETURN(const uint32_t step, c.U32("decoder_sparse_step", 1));
    std::vector<bool> dense(mc.num_layers, false);
    if (const json* only = c.Get("mlp_only_layers")) {
      if (!only->is_array()) return c.Bad("mlp_only_layers", "expected a list of layer indices, got " + only->dump());
      for (const json& i : *only) {
        if (!i.is_number_integer() || i.get<int64_t>() < 0) {
          return c.Bad("mlp_only_layers", "expected layer indices (integers >= 0), got " + only->dump());
        }
        if (i.get<int64_t>() < static_cast<int64_t>(mc.num_layers)) dense[i.get<int64_t>()] = true;
      }
    }
    mc.sparse_layers.assign(mc.num_layers, false);
    for (uint32_t i = 0; i < mc.num_layers; ++i) mc.sparse_layers[i] = !dense[i] && (i + 1) % step == 0;
  }
  p.features.qkv_bias = qkv_bias;
  p.features.o_bias = o_bias;
  p.features.tied = mc.tie_word_embeddings;
  return Status::Ok();
}

Error ConfigError(ErrorCode code, const std::string& message) { return MakeError(code, message); }

}  // namespace

// ---- names ----

std::string SlotName(Slot slot) {
  const size_t i = static_cast<size_t>(slot);
  if (i < std::size(kSlotNames)) return kSlotNames[i];
  if (ExpertOf(slot) < kMaxExperts) {
    return std::string(kSlotNames[static_cast<size_t>(ExpertRole(slot))]) + "[" + std::to_string(ExpertOf(slot)) + "]";
  }
  return "invalid";
}

Slot ExpertSlot(Slot role, uint32_t expert) {
  const uint32_t part = static_cast<uint32_t>(role) - static_cast<uint32_t>(Slot::kExpertGate);
  return static_cast<Slot>(static_cast<uint32_t>(Slot::kCount) + 3 * expert + part);
}
uint32_t ExpertOf(Slot slot) {
  return (static_cast<uint32_t>(slot) - static_cast<uint32_t>(Slot::kCount)) / 3;
}
Slot ExpertRole(Slot slot) {
  const uint32_t part = (static_cast<uint32_t>(slot) - static_cast<uint32_t>(Slot::kCount)) % 3;
  return static_cast<Slot>(static_cast<uint32_t>(Slot::kExpertGate) + part);
}
size_t SlotCount(const ModelConfig& config) {
  return static_cast<size_t>(Slot::kCount) + 3 * static_cast<size_t>(config.num_experts);
}
bool IsExpertRule(const TensorRule& rule) {
  return rule.slot == Slot::kExpertGate || rule.slot == Slot::kExpertUp || rule.slot == Slot::kExpertDown;
}
std::string RuleName(const TensorRule& rule, uint32_t expert) {
  std::string name = rule.name;
  const size_t at = name.find("{e}");
  if (at != std::string::npos) name.replace(at, 3, std::to_string(expert));
  return name;
}

Result<RopeType> RopeTypeOf(const ModelConfig& config) {
  const json& rs = config.rope_scaling;
  if (rs.is_null()) return RopeType::kDefault;
  if (!rs.is_object()) return MakeError(ErrorCode::kInvalidArgument, "rope_scaling: expected an object or null");
  for (const char* key : {"rope_type", "type"}) {
    auto it = rs.find(key);
    if (it == rs.end()) continue;
    if (!it->is_string()) {
      return MakeError(ErrorCode::kInvalidArgument, std::string("rope_scaling.") + key + ": expected a string");
    }
    return ParseRopeType(it->get<std::string>());
  }
  return RopeType::kDefault;
}

uint32_t LengthIndependentRopePositions(const ModelConfig& config) {
  Result<RopeType> type = RopeTypeOf(config);
  if (!type.ok()) return UINT32_MAX;
  if (*type == RopeType::kDynamic) return config.max_position_embeddings;
  if (*type == RopeType::kLongrope) {
    auto it = config.rope_scaling.find("original_max_position_embeddings");
    if (it != config.rope_scaling.end() && it->is_number() && it->get<double>() >= 0 && it->get<double>() < 4e9) {
      return static_cast<uint32_t>(it->get<double>());
    }
    return config.max_position_embeddings;
  }
  return UINT32_MAX;
}

// ---- shapes ----

int64_t EvalDim(Dim dim, const ModelConfig& c, const TensorFeatures& f) {
  const int64_t hd = c.head_dim;
  switch (dim) {
    case Dim::kHidden: return c.hidden_size;
    case Dim::kQDim: return int64_t{c.num_heads} * hd;
    case Dim::kKvDim: return int64_t{c.num_kv_heads} * hd;
    case Dim::kQkvDim: return (int64_t{c.num_heads} + 2 * int64_t{c.num_kv_heads}) * hd;
    case Dim::kThreeHidden: return 3 * int64_t{c.hidden_size};
    case Dim::kIntermediate: return c.intermediate_size;
    case Dim::kTwoIntermediate: return 2 * int64_t{c.intermediate_size};
    case Dim::kVocab: return c.vocab_size;
    case Dim::kPositions: return c.max_position_embeddings;
    case Dim::kPositionTableDim: return f.position_table_dim;
    case Dim::kRotaryHalf: return (int64_t{c.rotary_dim} + 1) / 2;
    case Dim::kHeadDim: return hd;
    case Dim::kNumExperts: return c.num_experts;
    case Dim::kExpertIntermediate: return c.moe_intermediate_size;
    case Dim::kSharedIntermediate: return c.shared_expert_intermediate_size;
    case Dim::kOne: return 1;
  }
  return 0;
}

bool IsPresent(Presence presence, const TensorFeatures& f) {
  switch (presence) {
    case Presence::kAlways: return true;
    case Presence::kQkvBias: return f.qkv_bias;
    case Presence::kOBias: return f.o_bias;
    case Presence::kMlpBias: return f.mlp_bias;
    case Presence::kUntied: return !f.tied;
    case Presence::kDenseMlp:
    case Presence::kSparseMlp:
    case Presence::kSharedExpert:
    case Presence::kQkNorm: return true;
  }
  return false;
}

bool IsPresent(Presence presence, const ModelConfig& c, const TensorFeatures& f, int32_t layer) {
  switch (presence) {
    case Presence::kDenseMlp: return layer >= 0 && !c.SparseLayer(layer);
    case Presence::kSparseMlp: return c.SparseLayer(layer);
    case Presence::kSharedExpert: return c.SparseLayer(layer) && c.shared_expert_intermediate_size > 0;
    case Presence::kQkNorm: return c.qk_norm;
    default: return IsPresent(presence, f);
  }
}

std::vector<int64_t> ShapeOf(const TensorRule& rule, const ModelConfig& config, const TensorFeatures& features) {
  std::vector<int64_t> shape;
  for (uint8_t i = 0; i < rule.rank && i < 2; ++i) shape.push_back(EvalDim(rule.dims[i], config, features));
  return shape;
}

std::vector<FusedPart> FusedRows(const TensorRule& rule, const ModelConfig& config) {
  std::vector<FusedPart> parts;
  const TensorFeatures none;
  int64_t row = 0;
  for (Slot s : rule.parts) {
    if (s == Slot::kCount) break;
    Dim d = Dim::kHidden;
    switch (s) {
      case Slot::kQ: d = Dim::kQDim; break;
      case Slot::kK:
      case Slot::kV: d = Dim::kKvDim; break;
      case Slot::kGate:
      case Slot::kUp: d = Dim::kIntermediate; break;
      default: break;
    }
    const int64_t rows = EvalDim(d, config, none);
    parts.push_back(FusedPart{s, row, rows});
    row += rows;
  }
  return parts;
}

std::string BlockName(const BlockLayout& layout, int32_t layer) {
  std::string name = layout.name;
  const size_t at = name.find("{i}");
  if (at != std::string::npos) name.replace(at, 3, std::to_string(layer));
  return name;
}

// ---- lookups ----

std::span<const FamilyInfo> Families() { return kFamilies; }

const FamilyInfo* FindFamily(std::string_view architecture) {
  for (const FamilyInfo& f : kFamilies) {
    if (architecture == f.name) return &f;
  }
  return nullptr;
}

const FamilyInfo* FindModelType(std::string_view model_type) {
  for (const FamilyInfo& f : kFamilies) {
    for (const char* t : f.model_types) {
      if (model_type == t) return &f;
    }
  }
  return nullptr;
}

Result<const FamilyInfo*> LookupFamily(std::string_view name) {
  const std::string lower = Lower(name);
  if (const FamilyInfo* f = FindFamily(lower)) return f;
  if (const FamilyInfo* f = FindModelType(lower)) return f;
  std::vector<std::string> all = SupportedArchitectures();
  for (const std::string& t : SupportedModelTypes()) {
    if (std::find(all.begin(), all.end(), t) == all.end()) all.push_back(t);
  }
  std::sort(all.begin(), all.end());
  return MakeError(ErrorCode::kUnsupported,
                   "unsupported architecture \"" + std::string(name) + "\" (supported: " + JoinNames(all) + ")");
}

const FamilyInfo& GetFamily(Family family) {
  for (const FamilyInfo& f : kFamilies) {
    if (f.family == family) return f;
  }
  return kFamilies[0];
}

std::vector<std::string> SupportedModelTypes() {
  std::vector<std::string> out;
  for (const FamilyInfo& f : kFamilies) out.insert(out.end(), f.model_types.begin(), f.model_types.end());
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<std::string> SupportedArchitectures() {
  std::vector<std::string> out;
  for (const FamilyInfo& f : kFamilies) out.push_back(f.name);
  std::sort(out.begin(), out.end());
  return out;
}

std::string JoinNames(const std::vector<std::string>& names) {
  std::string s;
  for (const std::string& n : names) s += (s.empty() ? "" : ", ") + n;
  return s;
}

namespace {
// Whether `name` is `pattern` with its "{e}" replaced by a decimal index below kMaxExperts (no leading zeros).
bool MatchExpertName(std::string_view pattern, std::string_view name, uint32_t* expert) {
  const size_t at = pattern.find("{e}");
  if (at == std::string_view::npos) return false;
  const std::string_view head = pattern.substr(0, at), tail = pattern.substr(at + 3);
  if (name.size() <= head.size() + tail.size() || name.substr(0, head.size()) != head ||
      name.substr(name.size() - tail.size()) != tail) {
    return false;
  }
  const std::string_view digits = name.substr(head.size(), name.size() - head.size() - tail.size());
  if (digits.empty() || digits.size() > 5 || (digits.size() > 1 && digits[0] == '0')) return false;
  uint32_t v = 0;
  for (char ch : digits) {
    if (ch < '0' || ch > '9') return false;
    v = v * 10 + static_cast<uint32_t>(ch - '0');
  }
  if (v >= kMaxExperts) return false;
  *expert = v;
  return true;
}
}  // namespace

const TensorRule* FindTensorRule(const FamilyInfo& family, BlockKind kind, std::string_view local_name,
                                 uint32_t* expert) {
  for (const TensorRule& r : family.tensors) {
    if (r.block != kind) continue;
    uint32_t e = 0;
    if (IsExpertRule(r) ? MatchExpertName(r.name, local_name, &e) : local_name == r.name) {
      if (expert != nullptr) *expert = e;
      return &r;
    }
  }
  return nullptr;
}

const TensorRule* FindSlotRule(const FamilyInfo& family, BlockKind kind, Slot slot) {
  for (const TensorRule& r : family.tensors) {
    if (r.block != kind) continue;
    if (r.slot == slot) return &r;
    for (Slot p : r.parts) {
      if (p == slot) return &r;
    }
  }
  return nullptr;
}

namespace {
// The MLP half of a mixture-of-experts family's decoder layer (the other families count it in decoder_layer): a
// sparse layer's router (linear, float32 softmax, top-k, renormalization, cast and zeroed output: 7), then the
// grouped experts below; the shared expert's MLP and gate (8). A dense layer's MLP is 11.
uint32_t MlpKernels(const FamilyInfo& family, const ModelConfig& c, bool experts_on_device = false, bool decode = false) {
  const bool moe_family =
      family.family == Family::kMixtral || family.family == Family::kQwen2Moe || family.family == Family::kQwen3Moe;
  if (!moe_family) return 0;
  if (c.num_experts == 0) return 11;
  // A decode step's MLP after its attention half (DecodeBlockKernels). Read on the device (executor/fused_ops.h
  // MoeExperts): the router's product with the norm (fused_ops::NormLinear), its softmax and top k, the experts' two
  // products with the residual in the second; with a shared expert, its ops (8) and the residual's add.
  if (experts_on_device) return 4 + (c.shared_expert_intermediate_size > 0 ? 8 + 1 : 0);
  // Decode computes the chosen experts as two groups (executor/kernels_grouped.cc: the pointer arrays' copy, two
  // batched products, the activation and product, the weighting and sum, the add: 8 each), plus the choices' copy
  // to the host (3) and the host's result (2); in a decode step also the residual's add (a prompt's counts it in
  // the layer's).
  return 7 + (decode ? 1 : 0) + 3 + 2 * 8 + 2 + (c.shared_expert_intermediate_size > 0 ? 8 : 0);
}
}  // namespace

bool FusedKernelsApply(const FamilyInfo& family, const ModelConfig& c) {
  return family.kernels.fused_decoder_layer > 0 && (c.rotary_dim == 0 || c.rotary_dim == c.head_dim) &&
         c.head_dim % 32 == 0 && c.head_dim > 0 && c.head_dim <= 256 && c.num_kv_heads > 0 &&
         c.num_heads % c.num_kv_heads == 0 && c.num_heads / c.num_kv_heads <= 8 && c.hidden_size % 8 == 0;
}

uint32_t BlockKernels(const FamilyInfo& family, BlockKind kind, const ModelConfig& config, bool fused) {
  const KernelCounts& k = family.kernels;
  // The fused decoder layer (executor/kernels_llama.cc with executor/fused_ops.h): RMSNorm, the q/k/v product, RoPE
  // with the KV-cache write, the split-K attention (2; a prompt: SDPA and the transpose-reshape copy), the o product
  // with the residual, RMSNorm, then the gate/up product, SiLU x up and the down product with the residual (dense
  // layers) or the mixture-of-experts MLP and its residual add.
  fused = fused && FusedKernelsApply(family, config);
  switch (kind) {
    case BlockKind::kEmbedding: return k.embedding;
    case BlockKind::kPositionEmbedding: return k.position_embedding;
    case BlockKind::kDecoderLayer:
      if (fused) return k.fused_decoder_layer + MlpKernels(family, config);
      return k.decoder_layer +
             (config.rotary_dim != 0 && config.rotary_dim < config.head_dim ? k.partial_rotary_extra : 0) +
             MlpKernels(family, config);
    case BlockKind::kFinalNorm: return fused ? k.fused_final_norm : k.final_norm;
    case BlockKind::kLmHead: return k.lm_head;
  }
  return 0;
}

uint32_t DecodeBlockKernels(const FamilyInfo& family, BlockKind kind, const ModelConfig& config,
                            bool experts_on_device) {
  // A decode step's fused decoder layer: the q/k/v product with the input norm, RoPE and the KV-cache write in its
  // kernel (Qwen3-MoE's q/k norms keep RoPE a kernel of its own), the split-K attention (2), the o product with the
  // residual, then the gate/up product with the norm and SiLU x up in its kernel and the down product with the
  // residual (dense layers), or the norm, the mixture-of-experts MLP and its residual add.
  if (kind == BlockKind::kDecoderLayer && family.kernels.fused_decode_layer > 0 && FusedKernelsApply(family, config)) {
    return family.kernels.fused_decode_layer + MlpKernels(family, config, experts_on_device, /*decode=*/true);
  }
  return BlockKernels(family, kind, config, /*fused=*/true);
}

bool GraphDecodeEligible(const FamilyInfo& family, const ModelConfig& config, uint32_t max_seq_len) {
  // Mixture-of-experts layers: the device path's limits (executor/fused_ops.h MoeExperts: SiLU experts).
  if (config.num_experts > 0 &&
      (config.num_experts > kGraphDecodeMaxExperts || config.num_experts_per_tok > 32 ||
       !(config.activation.empty() || config.activation == "silu" || config.activation == "swish"))) {
    return false;
  }
  switch (family.graph_decode) {
    case GraphDecode::kNever: return false;
    case GraphDecode::kWhileRopeLengthIndependent: return max_seq_len <= LengthIndependentRopePositions(config);
  }
  return false;
}

bool IsParameterlessModule(const FamilyInfo& family, std::string_view module) {
  for (const char* m : family.parameterless_modules) {
    if (module == m) return true;
  }
  return false;
}

bool IsNormWeightName(std::string_view name) {
  constexpr std::string_view kSuffix = "weight";
  if (name.size() < kSuffix.size() || name.substr(name.size() - kSuffix.size()) != kSuffix) return false;
  std::string_view stem = name.substr(0, name.size() - kSuffix.size());
  if (stem.empty()) return false;
  if (stem.back() != '.') return false;
  stem.remove_suffix(1);
  size_t dot = stem.rfind('.');
  std::string_view last = dot == std::string_view::npos ? stem : stem.substr(dot + 1);
  if (last.size() >= 4 && last.substr(last.size() - 4) == "norm") return true;
  if (last.size() >= 3 && last.substr(0, 3) == "ln_") return true;
  return false;
}

// ---- config.json ----

Result<ParsedConfig> ParseHfConfig(const nlohmann::json& config, const std::string& source) {
  if (!config.is_object()) return ConfigError(ErrorCode::kInvalidArgument, source + ": config must be a JSON object");
  Config c(config, source);
  const json* mt = c.Get("model_type");
  if (mt == nullptr || !mt->is_string()) {
    return ConfigError(ErrorCode::kInvalidArgument, source + ": field \"model_type\": missing (supported model types: " +
                                                        JoinNames(SupportedModelTypes()) + ")");
  }
  ParsedConfig p;
  p.model_type = mt->get<std::string>();
  p.family = FindModelType(p.model_type);
  if (p.family == nullptr) {
    return ConfigError(ErrorCode::kUnsupported, source + ": unsupported model_type \"" + p.model_type +
                                                    "\" (supported model types: " + JoinNames(SupportedModelTypes()) +
                                                    ")");
  }
  switch (p.family->family) {
    case Family::kLlama: BIGPLAN_RETURN_IF_ERROR(ParseLlama(c, p.model_type, p)); break;
    case Family::kGpt2: BIGPLAN_RETURN_IF_ERROR(ParseGpt2(c, p)); break;
    case Family::kGptj: BIGPLAN_RETURN_IF_ERROR(ParseGptj(c, p)); break;
    case Family::kPhi3: BIGPLAN_RETURN_IF_ERROR(ParsePhi3(c, p)); break;
    case Family::kMixtral:
    case Family::kQwen2Moe:
    case Family::kQwen3Moe: BIGPLAN_RETURN_IF_ERROR(ParseMoe(c, p.model_type, p)); break;
  }
  BIGPLAN_RETURN_IF_ERROR(CheckRefusedKeys(*p.family, c, p.model_type));
  Status st = CheckModelConfig(*p.family, p.config);
  if (!st.ok()) {
    Error e = st.take_error();
    constexpr std::string_view kRope = "rope_scaling: ";
    if (e.message.rfind(kRope, 0) == 0) {
      return ConfigError(e.code, source + ": field \"rope_scaling\": " + e.message.substr(kRope.size()));
    }
    if (e.message.rfind("activation ", 0) == 0) {
      const bool gpt = p.family->family == Family::kGpt2 || p.family->family == Family::kGptj;
      return ConfigError(e.code, source + ": field \"" + (gpt ? "activation_function" : "hidden_act") + "\": " +
                                     e.message);
    }
    return ConfigError(e.code, source + ": " + e.message);
  }
  return p;
}

bool IsSupportedActivation(std::string_view activation) {
  const std::string a = Lower(activation);
  for (const char* k : {"silu", "swish", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu", "relu"}) {
    if (a == k) return true;
  }
  return false;
}

Status CheckModelConfig(const FamilyInfo& family, const ModelConfig& c) {
  if (!c.activation.empty() && !IsSupportedActivation(c.activation)) {
    return MakeError(ErrorCode::kUnsupported, "activation \"" + c.activation +
                                                  "\" is not supported (supported: silu, swish, gelu_new, "
                                                  "gelu_pytorch_tanh, gelu_fast, gelu, relu)");
  }
  return ResolveRope(family, c).status();
}

Result<RopeParams> ResolveRope(const FamilyInfo& family, const ModelConfig& c) {
  const json& rs = c.rope_scaling;
  auto bad = [](const std::string& what) { return MakeError(ErrorCode::kInvalidArgument, "rope_scaling: " + what); };
  Result<RopeType> type_or = RopeTypeOf(c);
  if (!type_or.ok()) {
    Error e = type_or.take_error();
    e.message = "rope_scaling: " + e.message;
    return e;
  }
  const RopeType type = *type_or;
  const std::string type_name = RopeTypeName(type);
  RopeParams r;
  r.type = type;
  r.theta = c.rope_theta;
  r.original_max_position_embeddings = c.max_position_embeddings;
  if (family.rope_types.empty()) {
    if (!rs.is_null()) {
      return MakeError(ErrorCode::kUnsupported,
                       std::string("rope_scaling: ") + family.name + " has learned positions, no RoPE to scale");
    }
    return r;  // no rotary dims
  }
  if (std::find(family.rope_types.begin(), family.rope_types.end(), type) == family.rope_types.end()) {
    std::string supported;
    for (RopeType t : family.rope_types) supported += (supported.empty() ? "" : ", ") + std::string(RopeTypeName(t));
    return MakeError(ErrorCode::kUnsupported, "rope_scaling: unsupported rope type \"" + type_name + "\" for " +
                                                  family.name + " (supported: " + supported + ")");
  }
  // A number of the scaling object: nullopt when absent or null; an error when present and not a number.
  auto opt = [&](const char* key) -> Result<std::optional<double>> {
    if (!rs.is_object()) return std::optional<double>();
    auto it = rs.find(key);
    if (it == rs.end() || it->is_null()) return std::optional<double>();
    if (!it->is_number()) return bad(std::string("'") + key + "' must be a number, got " + it->dump());
    return std::optional<double>(it->get<double>());
  };
  auto required = [&](const char* key) -> Result<double> {
    BIGPLAN_ASSIGN_OR_RETURN(std::optional<double> v, opt(key));
    if (!v) return bad(type_name + " needs a numeric '" + key + "'");
    return *v;
  };
  // original_max_position_embeddings: the scaling object's (a positive integer), else max_position_embeddings.
  auto original = [&]() -> Result<uint32_t> {
    BIGPLAN_ASSIGN_OR_RETURN(std::optional<double> o, opt("original_max_position_embeddings"));
    if (!o) {
      if (c.max_position_embeddings == 0) return bad(type_name + " needs original_max_position_embeddings > 0");
      return c.max_position_embeddings;
    }
    if (!(*o > 0)) return bad(type_name + " needs original_max_position_embeddings > 0");
    if (*o != std::floor(*o) || *o > 4294967295.0) {
      return bad("original_max_position_embeddings " + rs["original_max_position_embeddings"].dump() +
                 " is not an integer below 2^32");
    }
    return static_cast<uint32_t>(*o);
  };

  BIGPLAN_ASSIGN_OR_RETURN(std::optional<double> theta, opt("rope_theta"));
  if (theta) r.theta = *theta;
  if (!(r.theta > 0) || !std::isfinite(r.theta)) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "rope_theta " + json(r.theta).dump() + " must be finite and positive");
  }
  if (type != RopeType::kDefault && type != RopeType::kLongrope) {
    BIGPLAN_ASSIGN_OR_RETURN(std::optional<double> f, opt("factor"));
    if (f && !(*f > 0)) return bad("'factor' must be positive, got " + rs["factor"].dump());
  }

  r.rotary_dim = c.rotary_dim > 0 ? c.rotary_dim : c.head_dim;
  if (r.rotary_dim % 2 != 0) {
    return MakeError(ErrorCode::kInvalidArgument, "rotary_dim " + std::to_string(r.rotary_dim) + " is odd");
  }
  if (r.rotary_dim < c.head_dim && !family.partial_rotary) {
    return MakeError(ErrorCode::kUnsupported, "partial rotary (rotary_dim " + std::to_string(r.rotary_dim) +
                                                  " of head_dim " + std::to_string(c.head_dim) +
                                                  ") is not supported for " + family.name);
  }
  // transformers: dim = int(head_dim * partial_rotary_factor); rotary_dim must say the same.
  BIGPLAN_ASSIGN_OR_RETURN(std::optional<double> prf, opt("partial_rotary_factor"));
  if (prf) {
    const uint32_t dim = static_cast<uint32_t>(static_cast<double>(c.head_dim) * *prf);
    if (!(*prf > 0) || dim != r.rotary_dim) {
      return bad("partial_rotary_factor " + rs["partial_rotary_factor"].dump() + " gives " + std::to_string(dim) +
                 " rotary dims, but rotary_dim is " + std::to_string(r.rotary_dim));
    }
  }

  switch (type) {
    case RopeType::kDefault: break;
    case RopeType::kLinear: {
      BIGPLAN_ASSIGN_OR_RETURN(r.factor, required("factor"));
      break;
    }
    case RopeType::kDynamic: {
      BIGPLAN_ASSIGN_OR_RETURN(r.factor, required("factor"));
      if (c.max_position_embeddings == 0) return bad("dynamic needs max_position_embeddings > 0");
      break;
    }
    case RopeType::kLlama3: {
      BIGPLAN_ASSIGN_OR_RETURN(r.factor, required("factor"));
      BIGPLAN_ASSIGN_OR_RETURN(r.low_freq_factor, required("low_freq_factor"));
      BIGPLAN_ASSIGN_OR_RETURN(r.high_freq_factor, required("high_freq_factor"));
      if (r.low_freq_factor == r.high_freq_factor) return bad("llama3 high_freq_factor equals low_freq_factor");
      BIGPLAN_ASSIGN_OR_RETURN(r.original_max_position_embeddings, original());
      break;
    }
    case RopeType::kYarn: {
      // transformers' _compute_yarn_parameters, with its Python-float arithmetic done here in double.
      BIGPLAN_ASSIGN_OR_RETURN(r.original_max_position_embeddings, original());
      const double orig = static_cast<double>(r.original_max_position_embeddings);
      BIGPLAN_ASSIGN_OR_RETURN(std::optional<double> factor, opt("factor"));
      r.factor = factor ? *factor : static_cast<double>(c.max_position_embeddings) / orig;
      BIGPLAN_ASSIGN_OR_RETURN(std::optional<double> attention_factor, opt("attention_factor"));
      BIGPLAN_ASSIGN_OR_RETURN(std::optional<double> mscale, opt("mscale"));
      BIGPLAN_ASSIGN_OR_RETURN(std::optional<double> mscale_all_dim, opt("mscale_all_dim"));
      BIGPLAN_ASSIGN_OR_RETURN(std::optional<double> beta_fast, opt("beta_fast"));
      BIGPLAN_ASSIGN_OR_RETURN(std::optional<double> beta_slow, opt("beta_slow"));
      auto get_mscale = [](double scale, double m) { return scale <= 1 ? 1.0 : 0.1 * m * std::log(scale) + 1.0; };
      if (attention_factor) {
        r.attention_factor = *attention_factor;
      } else if (mscale.value_or(0) != 0 && mscale_all_dim.value_or(0) != 0) {
        r.attention_factor = get_mscale(r.factor, *mscale) / get_mscale(r.factor, *mscale_all_dim);
      } else {
        r.attention_factor = get_mscale(r.factor, 1.0);
      }
      r.beta_fast = beta_fast.value_or(0) != 0 ? *beta_fast : 32.0;
      r.beta_slow = beta_slow.value_or(0) != 0 ? *beta_slow : 1.0;
      bool truncate = true;
      if (rs.is_object() && rs.contains("truncate") && !rs["truncate"].is_null()) {
        if (!rs["truncate"].is_boolean()) return bad("'truncate' must be a boolean, got " + rs["truncate"].dump());
        truncate = rs["truncate"].get<bool>();
      }
      const double dim = static_cast<double>(r.rotary_dim);
      auto correction_dim = [&](double rotations) {
        return (dim * std::log(orig / (rotations * 2 * M_PI))) / (2 * std::log(r.theta));
      };
      double low = correction_dim(r.beta_fast), high = correction_dim(r.beta_slow);
      if (truncate) {
        low = std::floor(low);
        high = std::ceil(high);
      }
      r.ramp_low = std::max(low, 0.0);
      r.ramp_high = std::min(high, dim - 1);
      if (r.ramp_low == r.ramp_high) r.ramp_high += 0.001;  // as linear_ramp_factor
      break;
    }
    case RopeType::kLongrope: {
      // transformers' _compute_longrope_parameters (Phi-3): divisors per frequency, short or long by the forward's
      // length; factor defaults to max_position_embeddings / original_max_position_embeddings.
      BIGPLAN_ASSIGN_OR_RETURN(r.original_max_position_embeddings, original());
      const double orig = static_cast<double>(r.original_max_position_embeddings);
      const size_t half = r.rotary_dim / 2;
      for (auto [key, out] : {std::pair<const char*, std::vector<float>*>{"short_factor", &r.short_factor},
                              std::pair<const char*, std::vector<float>*>{"long_factor", &r.long_factor}}) {
        auto it = rs.is_object() ? rs.find(key) : rs.end();
        if (!rs.is_object() || it == rs.end() || !it->is_array() || it->size() != half) {
          return bad(std::string("longrope needs '") + key + "': a list of rotary_dim / 2 = " + std::to_string(half) +
                     " numbers");
        }
        for (const json& v : *it) {
          if (!v.is_number() || !(v.get<double>() > 0)) return bad(std::string("'") + key + "' holds " + v.dump());
          out->push_back(static_cast<float>(v.get<double>()));
        }
      }
      BIGPLAN_ASSIGN_OR_RETURN(std::optional<double> factor, opt("factor"));
      r.factor = factor ? *factor : static_cast<double>(c.max_position_embeddings) / orig;
      if (!(r.factor > 0)) return bad("'factor' must be positive, got " + json(r.factor).dump());
      BIGPLAN_ASSIGN_OR_RETURN(std::optional<double> attention_factor, opt("attention_factor"));
      r.attention_factor = attention_factor ? *attention_factor
                           : r.factor <= 1.0 ? 1.0
                                             : std::sqrt(1 + std::log(r.factor) / std::log(orig));
      break;
    }
  }
  if (Status st = CheckRopeParams(r, c.head_dim); !st.ok()) {
    Error e = st.take_error();
    e.message = "rope_scaling: " + e.message;
    return e;
  }
  return r;
}

}  // namespace bigplan::arch
