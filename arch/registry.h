// The architecture registry: everything bigplan knows about a model family, in one table per family (in the spirit
// of llama.cpp's llama-arch tables). The planner, the executor and the tools consult it instead of keeping copies.
//
// A family ("llama", "gpt2", "gptj", "phi3") holds:
//   - the Hugging Face `model_type` aliases it imports (llama: llama, mistral, qwen2);
//   - config.json -> typed hyperparameters (ModelConfig) plus the per-model facts that decide which optional tensors
//     exist (TensorFeatures), accepting both `rope_scaling` and transformers 5's `rope_parameters`;
//   - the block layout (module names in execution order) and the tensor table per block kind: name relative to the
//     block prefix, shape rule in terms of the hyperparameters, presence rule, layout, typed Slot, fused parts;
//   - tied reads (lm_head reading the token embedding), runtime buffers the reference module allocates per block
//     (GPT-J's attn.embed_positions), model-level buffers Accelerate counts (rotary_emb.inv_freq), parameter-free
//     modules that device maps may name;
//   - kernel counts per block kind for the cost model, the supported RoPE types, partial-rotary support, CUDA-graph
//     decode eligibility, and the config keys that change the math (implemented or refused).
//
// No LibTorch and no planner/executor types: only //formats:dtype, //support and nlohmann::json.
// Everything returned by reference or pointer points into static tables and lives for the whole program.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "arch/block_kind.h"
#include "arch/rope.h"
#include "formats/dtype.h"
#include "support/result.h"

namespace bigplan::arch {

// The most decoder layers a model may have (the largest published models have a few hundred). Larger counts are
// refused up front: they are never real, and planning them would take unbounded time and memory.
inline constexpr uint32_t kMaxDecoderLayers = 4096;

// ---- block kinds ----

// BlockKind (kEmbedding, kPositionEmbedding, kDecoderLayer, kFinalNorm, kLmHead), BlockKindName and ParseBlockKind
// live in arch/block_kind.h.

// ---- hyperparameters ----

// Normalized hyperparameters (names and meaning as in schema/plan.fbs's ModelConfig). This is the planner's
// ModelConfig (planner/model_desc.h aliases it); model descriptions serialize it field by field.
struct ModelConfig {
  uint32_t hidden_size = 0;
  uint32_t num_layers = 0;
  uint32_t num_heads = 0;
  uint32_t num_kv_heads = 0;          // = num_heads without GQA
  uint32_t head_dim = 0;              // hidden_size / num_heads unless the config says otherwise
  uint32_t intermediate_size = 0;     // MLP inner size
  uint32_t vocab_size = 0;
  uint32_t max_position_embeddings = 0;
  double norm_eps = 1e-5;
  double rope_theta = 10000.0;        // unused by learned-position models (GPT-2)
  uint32_t rotary_dim = 0;            // rotary dims per head: head_dim for full rotary, partial (GPT-J, Phi-3's
                                      // partial_rotary_factor) below it, 0 for none
  bool attention_bias = false;        // q/k/v (and o for Llama's attention_bias) projections carry biases
  bool mlp_bias = false;
  bool tie_word_embeddings = false;
  std::string activation;             // "silu", "gelu_new", ...
  // The RoPE scaling object (rope_scaling, or rope_parameters without rope_theta), or null for default RoPE. Its
  // "rope_type" (or legacy "type") names the RoPE type; for longrope it holds short_factor, long_factor and
  // original_max_position_embeddings.
  nlohmann::json rope_scaling;
  int64_t bos_token_id = -1;          // -1 if none
  std::vector<int64_t> eos_token_ids;
  // Attention variants. In a description file each is optional and written only when it differs from its default
  // (so descriptions, and their digests, of models without them are unchanged).
  uint32_t sliding_window = 0;              // > 0: the flagged layers attend to the last sliding_window positions
                                            // (key k for query q when q - sliding_window < k <= q), as transformers'
                                            // sliding-window mask; 0: none
  std::vector<bool> sliding_window_layers;  // one flag per decoder layer when sliding_window > 0, else empty
  bool scale_attn_weights = true;           // GPT-2: scores scaled by 1/sqrt(head_dim) (false: unscaled)
  bool scale_attn_by_inverse_layer_idx = false;  // GPT-2: scores also divided by (layer index + 1)
  bool reorder_and_upcast_attn = false;     // GPT-2: scores and softmax in float32, probabilities cast back
  // Mixture of experts (mixtral, qwen2_moe, qwen3_moe; num_experts 0 for dense models). A sparse layer's MLP: the
  // router's softmax (float32) over num_experts, the top num_experts_per_tok experts (renormalized to sum 1 when
  // norm_topk_prob), each a SwiGLU MLP of moe_intermediate_size, their outputs summed with those weights; plus, when
  // shared_expert_intermediate_size > 0, a shared SwiGLU expert scaled by sigmoid(shared_expert_gate . x).
  uint32_t num_experts = 0;
  uint32_t num_experts_per_tok = 0;
  uint32_t moe_intermediate_size = 0;
  uint32_t shared_expert_intermediate_size = 0;
  bool norm_topk_prob = false;
  std::vector<bool> sparse_layers;          // one flag per decoder layer when num_experts > 0, else empty
  bool qk_norm = false;                     // Qwen3: RMSNorm over each head of q and k before RoPE

  bool operator==(const ModelConfig&) const = default;
  // Whether decoder layer `layer` is a mixture of experts.
  bool SparseLayer(int32_t layer) const {
    return layer >= 0 && static_cast<size_t>(layer) < sparse_layers.size() && sparse_layers[layer];
  }
};

// Per-model facts beyond ModelConfig that decide which optional tensors exist and some buffer shapes. Derived from
// config.json by ParseHfConfig (a description keeps the effect, i.e. which params exist, not these flags).
struct TensorFeatures {
  bool qkv_bias = false;   // q/k/v projections carry biases (Qwen2; Llama with attention_bias)
  bool o_bias = false;     // the output projection carries a bias (Llama with attention_bias)
  bool mlp_bias = false;   // gate/up/down carry biases (Llama's mlp_bias)
  bool tied = false;       // lm_head reads the token embedding (tie_word_embeddings)
  uint32_t position_table_dim = 0;  // GPT-J: columns of attn.embed_positions (rotary_dim, or n_embd when null)

  bool operator==(const TensorFeatures&) const = default;
};

// ---- RoPE ----

// RopeType, RopeTypeName, ParseRopeType, RopeParams and CheckRopeParams live in arch/rope.h.
// The RoPE type of a config: rope_scaling's "rope_type" (else "type"), default when rope_scaling is null.
// kUnsupported for an unknown name, kInvalidArgument for a non-string type or a non-object rope_scaling.
Result<RopeType> RopeTypeOf(const ModelConfig& config);
// The positions up to which the RoPE frequencies do not depend on the sequence length: dynamic NTK recomputes them
// past max_position_embeddings, longrope switches to its long factors past original_max_position_embeddings.
// UINT32_MAX for the other types.
uint32_t LengthIndependentRopePositions(const ModelConfig& config);

// ---- tensor table ----

// The role of a tensor inside its block: what a kernel binds it to. Biases follow their weight.
enum class Slot : uint16_t {
  kTokenEmbedding,      // [vocab, hidden]
  kPositionEmbedding,   // [positions, hidden] (GPT-2's wpe)
  kInputNorm, kInputNormBias,   // the norm before attention (Llama input_layernorm, GPT ln_1)
  kPostNorm, kPostNormBias,     // the norm before the MLP (Llama post_attention_layernorm, GPT-2 ln_2)
  kQ, kQBias, kK, kKBias, kV, kVBias,
  kQkv, kQkvBias,       // fused q, k, v rows (Phi-3 qkv_proj [q; k; v]) or GPT-2's Conv1D c_attn ([hidden, 3 hidden])
  kO, kOBias,           // attention output projection
  kGate, kGateBias, kUp, kUpBias,
  kGateUp,              // fused gate and up rows (Phi-3 gate_up_proj [gate; up])
  kFcIn, kFcInBias,     // non-gated MLP input projection (GPT-2 c_fc, GPT-J fc_in)
  kDown, kDownBias,     // MLP output projection (Llama down_proj, GPT-2 mlp.c_proj, GPT-J fc_out)
  kFinalNorm, kFinalNormBias,
  kLmHead, kLmHeadBias,
  // Mixture of experts (mixtral, qwen2_moe, qwen3_moe) and Qwen3's per-head q/k RMSNorm:
  kQNorm, kKNorm,       // [head_dim] (Qwen3-MoE q_norm / k_norm)
  kRouter,              // [num_experts, hidden] (mlp.gate, block_sparse_moe.gate)
  kSharedGate, kSharedUp, kSharedDown,  // Qwen2-MoE's shared expert (a SwiGLU MLP of shared_expert_intermediate_size)
  kSharedExpertGate,    // [1, hidden]: sigmoid gate of the shared expert's output
  // The roles of one routed expert's matrices in the tensor table (names with "{e}"). A bound block has one slot per
  // expert and role: ExpertSlot(role, e), numbered from kCount on.
  kExpertGate, kExpertUp, kExpertDown,
  kCount,
};
// "q", "q_bias", "qkv", "gate_up", ...; an expert's slot: "expert_gate[5]" (stable; used in messages and tests).
std::string SlotName(Slot slot);

// The most routed experts a layer may have (the largest published models have a few hundred).
inline constexpr uint32_t kMaxExperts = 4096;
// Expert e's slot for `role` (kExpertGate, kExpertUp or kExpertDown): kCount + 3 e + (0, 1, 2).
Slot ExpertSlot(Slot role, uint32_t expert);
// Whether `slot` is an expert's slot (>= kCount), its expert and its role.
inline bool IsExpertSlot(Slot slot) { return static_cast<uint16_t>(slot) >= static_cast<uint16_t>(Slot::kCount); }
uint32_t ExpertOf(Slot slot);
Slot ExpertRole(Slot slot);

// A dimension of a shape rule, evaluated against ModelConfig (and TensorFeatures).
enum class Dim : uint8_t {
  kHidden,             // hidden_size
  kQDim,               // num_heads * head_dim
  kKvDim,              // num_kv_heads * head_dim
  kQkvDim,             // (num_heads + 2 num_kv_heads) * head_dim
  kThreeHidden,        // 3 hidden_size (GPT-2 c_attn)
  kIntermediate,       // intermediate_size
  kTwoIntermediate,    // 2 intermediate_size (fused gate_up)
  kVocab,              // vocab_size
  kPositions,          // max_position_embeddings
  kPositionTableDim,   // TensorFeatures::position_table_dim
  kRotaryHalf,         // (rotary_dim + 1) / 2: rotary inverse frequencies
  kHeadDim,            // head_dim (Qwen3's q/k norms)
  kNumExperts,         // num_experts (the router's rows)
  kExpertIntermediate, // moe_intermediate_size
  kSharedIntermediate, // shared_expert_intermediate_size
  kOne,                // 1 (the shared expert's gate rows)
};
int64_t EvalDim(Dim dim, const ModelConfig& config, const TensorFeatures& features);

// When an optional tensor exists.
enum class Presence : uint8_t {
  kAlways,
  kQkvBias,   // features.qkv_bias
  kOBias,     // features.o_bias
  kMlpBias,   // features.mlp_bias
  kUntied,    // !features.tied (lm_head.weight; tied models read the embedding instead, see TiedRead)
  // Per decoder layer (mixture-of-experts families):
  kDenseMlp,      // a layer whose MLP is dense (!config.sparse_layers[layer])
  kSparseMlp,     // a layer whose MLP is the routed experts (config.sparse_layers[layer])
  kSharedExpert,  // a sparse layer of a model with a shared expert (shared_expert_intermediate_size > 0)
  kQkNorm,        // config.qk_norm (Qwen3-MoE)
};
// Whether tensors of `presence` exist in decoder layer `layer` (-1: a block that is not a decoder layer).
bool IsPresent(Presence presence, const ModelConfig& config, const TensorFeatures& features, int32_t layer);
// The layer-independent presences only (kAlways .. kUntied); the per-layer ones give true.
bool IsPresent(Presence presence, const TensorFeatures& features);

// How a matrix is stored.
enum class Layout : uint8_t {
  kVector,     // 1-D (norm weights, biases)
  kLinear,     // nn.Linear [out, in]
  kConv1D,     // transformers' Conv1D [in, out] (GPT-2)
  kEmbedding,  // [rows, hidden], rows looked up
};

// One part of a fused tensor: `slot` is rows [row_begin, row_begin + rows) of dim 0.
struct FusedPart {
  Slot slot;
  int64_t row_begin = 0;
  int64_t rows = 0;
};

struct TensorRule {
  BlockKind block;
  Slot slot;
  const char* name;            // relative to the block prefix, e.g. "self_attn.q_proj.weight"
  uint8_t rank;                // 1 or 2
  Dim dims[2];                 // dims[0..rank)
  Presence presence;
  Layout layout;
  // For a tensor that stores several slots' rows (kQkv of Phi-3, kGateUp): the slots in row order, kCount-terminated
  // (unused entries kCount). kCount in parts[0] for an ordinary tensor.
  Slot parts[3];
};

// The shape of a tensor of this rule for a model.
std::vector<int64_t> ShapeOf(const TensorRule& rule, const ModelConfig& config, const TensorFeatures& features);
// The row ranges of a fused tensor's parts (empty for an ordinary tensor). For kQkv of Phi-3: q [0, q_dim),
// k [q_dim, q_dim + kv_dim), v after it; for kGateUp: gate [0, inter), up [inter, 2 inter).
std::vector<FusedPart> FusedRows(const TensorRule& rule, const ModelConfig& config);

// A block of the family's layout, in execution order. `name` is the module name (the description's block name and
// HF device-map key); decoder layers use "{i}" for the layer index. The block's tensor prefix is name + ".".
struct BlockLayout {
  BlockKind kind;
  const char* name;
};

// A block that reads a tensor another block owns, when the model is tied: lm_head reads the embedding's weight.
struct TiedRead {
  BlockKind reader;
  Slot slot;             // the reader's slot the tied tensor fills (kLmHead)
  BlockKind owner;
  Slot owner_slot;       // the owner's tensor (kTokenEmbedding)
};

// A non-persistent buffer the reference (transformers) module allocates per block, not in the checkpoint. Only the
// Accelerate-compatible strategies count it. dtype is the buffer's own (F32).
struct RuntimeBufferRule {
  BlockKind block;
  const char* name;      // relative to the block prefix
  uint8_t rank;
  Dim dims[2];
  DType dtype;
};

// A model-level buffer of a parameter-free module that Accelerate's size accounting sees (no block owns it).
struct ModelBufferRule {
  const char* name;      // full name, e.g. "model.rotary_emb.inv_freq"
  Dim dim;               // 1-D
  DType dtype;
  bool needs_rotary;     // present only when rotary_dim > 0
};

// Kernels (CUDA kernels the executor's eager ops launch) per block kind, for the cost model; see
// planner/cost_model.h for the breakdown of each count.
struct KernelCounts {
  uint32_t embedding = 2;
  uint32_t position_embedding = 1;
  uint32_t decoder_layer = 0;
  uint32_t partial_rotary_extra = 0;  // added to decoder_layer when 0 < rotary_dim < head_dim
  uint32_t final_norm = 0;
  uint32_t lm_head = 2;
  // With the executor's fused CUDA kernels (executor/fused_ops.h; 0: the family has none): a decoder layer's
  // kernels (for mixture-of-experts families its attention half) and the final norm's, on a GPU in bf16/fp16.
  uint32_t fused_decoder_layer = 0;
  uint32_t fused_final_norm = 0;
  // The same decoder layer in a decode step of up to kFusedDecodeMaxRows rows, where the products take their
  // neighbours into their kernels (executor/fused_ops.h NormLinear, GateUpSiluMul, QkvRopeKvWrite).
  uint32_t fused_decode_layer = 0;
};

// The most rows (batch x new tokens) a step's fused products take (executor/fused_cuda.h kGemvMaxRows); larger
// batches run the fused decoder layer's kernels one by one.
inline constexpr uint32_t kFusedDecodeMaxRows = 2;

// CUDA-graph decode eligibility (the executor's ModelKernels::StaticDecode).
enum class GraphDecode : uint8_t {
  kNever,                      // no static decode step (GPT-2, GPT-J)
  kWhileRopeLengthIndependent, // static decode while max_seq_len <= LengthIndependentRopePositions(config)
};

// What bigplan does with a config key that changes the math.
enum class KeyHandling : uint8_t {
  kImplemented,   // read and computed as transformers does
  kRefused,       // a non-default value is refused (kUnsupported) at import
  kExactWithin,   // exact while the run stays within the value (e.g. sliding_window vs max_seq_len); see `note`
};
struct MathKey {
  const char* key;         // config.json key
  KeyHandling handling;
  const char* note;        // what is implemented / why refused
  // kRefused: the value (JSON text) that leaves the math unchanged and is accepted; nullptr: any non-null value
  // is refused.
  const char* default_value = nullptr;
};

enum class Family : uint8_t { kLlama, kGpt2, kGptj, kPhi3, kMixtral, kQwen2Moe, kQwen3Moe };

struct FamilyInfo {
  Family family;
  const char* name;                              // the description's "architecture": "llama", "gpt2", "gptj", "phi3"
  std::span<const char* const> model_types;      // config.json model_type values imported as this family
  const char* reference_class;                   // transformers class of the reference, e.g. "LlamaForCausalLM"
  std::span<const BlockLayout> blocks;           // in execution order
  // In description order within each block kind, which is the order a block's weights are laid out in its buffers:
  // q, k, v (and gate, up) come back to back, their biases after them, so the executor's fused kernels multiply
  // each group as one matrix.
  std::span<const TensorRule> tensors;
  std::span<const TiedRead> tied;
  std::span<const RuntimeBufferRule> runtime_buffers;
  std::span<const ModelBufferRule> accelerate_buffers;
  std::span<const char* const> parameterless_modules;  // module names a device map may carry (no params)
  // A leading component old checkpoints may omit from tensor names (GPT-2's "transformer."); "" if none.
  const char* optional_root_prefix;
  KernelCounts kernels;
  std::span<const RopeType> rope_types;          // supported RoPE types; empty: no RoPE (learned positions)
  bool partial_rotary;                           // 0 < rotary_dim < head_dim is computed
  GraphDecode graph_decode;
  std::span<const MathKey> math_keys;
};

// ---- lookups ----

// All families, in a fixed order (llama, gpt2, gptj, phi3).
std::span<const FamilyInfo> Families();
// The family whose `name` is `architecture` exactly; nullptr if none.
const FamilyInfo* FindFamily(std::string_view architecture);
// The family importing this config.json model_type; nullptr if none.
const FamilyInfo* FindModelType(std::string_view model_type);
// A family by name or by model_type alias, case-insensitively (the executor accepts "mistral" as "llama").
// kUnsupported naming the string and listing the supported names otherwise.
Result<const FamilyInfo*> LookupFamily(std::string_view name_or_model_type);
const FamilyInfo& GetFamily(Family family);
// Sorted model_type values / family names.
std::vector<std::string> SupportedModelTypes();
std::vector<std::string> SupportedArchitectures();
// "a, b, c".
std::string JoinNames(const std::vector<std::string>& names);

// The family's rule for tensor `local_name` (relative to the block prefix) of a block of `kind`; nullptr if none.
// An expert's tensor ("mlp.experts.5.up_proj.weight") matches its rule's "{e}" with a decimal expert index below
// kMaxExperts, written to *expert when given (0 for other tensors).
const TensorRule* FindTensorRule(const FamilyInfo& family, BlockKind kind, std::string_view local_name,
                                 uint32_t* expert = nullptr);
// Whether a rule is a routed expert's (its name has "{e}"), and its name for expert e.
bool IsExpertRule(const TensorRule& rule);
std::string RuleName(const TensorRule& rule, uint32_t expert);
// The slots a bound block of this model has room for: kCount + 3 num_experts.
size_t SlotCount(const ModelConfig& config);
// The family's rule filling `slot` in a block of `kind` (the stored tensor, possibly fused); nullptr if none.
const TensorRule* FindSlotRule(const FamilyInfo& family, BlockKind kind, Slot slot);
// The module name of a block: layout.name with "{i}" replaced by `layer`.
std::string BlockName(const BlockLayout& layout, int32_t layer);

// Kernels of one block for the cost model: LibTorch's ops (`fused` false), or on a GPU in bf16/fp16 with
// unquantized weights (`fused` true) the executor's fused kernels where FusedKernelsApply.
uint32_t BlockKernels(const FamilyInfo& family, BlockKind kind, const ModelConfig& config, bool fused = false);
// BlockKernels(fused = true) for a decode step of up to kFusedDecodeMaxRows rows (the fused decode layer's count
// where the family has one and the fused kernels apply, else BlockKernels' count).
// `experts_on_device`: a sparse layer whose experts are all resident, read on the device when chosen (the executor's
// graph-captured decode); else dispatched from the host.
uint32_t DecodeBlockKernels(const FamilyInfo& family, BlockKind kind, const ModelConfig& config,
                            bool experts_on_device = false);
// Whether the executor's fused kernels run this model's decoder layers (on a GPU in bf16/fp16): the family has
// them, full rotary, head_dim a multiple of 32 up to 256, at most 8 query heads per kv head, hidden a multiple of 8.
bool FusedKernelsApply(const FamilyInfo& family, const ModelConfig& config);
// Whether decode steps of this model can be replayed from a CUDA graph for runs of max_seq_len positions (the
// executor's ModelKernels::GraphDecode): length-independent RoPE; for mixture-of-experts models also at most
// kGraphDecodeMaxExperts SiLU experts, top k <= 32. Placement conditions (every block, and for mixture-of-experts
// models every expert, resident on GPUs, unquantized; decode batches of at most kGraphDecodeMaxExpertTokens rows) are
// the caller's.
inline constexpr uint32_t kGraphDecodeMaxExperts = 128;      // = executor fused_ops::kMoeMaxExperts
inline constexpr uint32_t kGraphDecodeMaxExpertTokens = 16;  // = executor fused_ops::kMoeMaxTokens
bool GraphDecodeEligible(const FamilyInfo& family, const ModelConfig& config, uint32_t max_seq_len);
// Whether `module` is a parameter-free module of this family that a device map may name.
bool IsParameterlessModule(const FamilyInfo& family, std::string_view module);
// Whether some family's table has `name` as a norm weight. The rule (a last module component ending in "norm" or
// starting with "ln_", then ".weight") covers every norm weight of every family (registry_test checks it); the
// random-checkpoint writer fills such tensors near 1.
bool IsNormWeightName(std::string_view name);

// ---- config.json ----

struct ParsedConfig {
  const FamilyInfo* family = nullptr;
  std::string model_type;
  ModelConfig config;
  TensorFeatures features;
};

// config.json -> the family, typed hyperparameters and tensor features, as the reference transformers class reads
// them (defaults included). `source` prefixes messages. kUnsupported for an unknown model_type (listing the
// supported ones), a refused math key, an unsupported RoPE type or partial rotary; kInvalidArgument naming a
// missing or malformed field.
Result<ParsedConfig> ParseHfConfig(const nlohmann::json& config, const std::string& source);

// The activations the kernels compute (case-insensitive, as config.json spells them): silu, swish, gelu_new,
// gelu_pytorch_tanh, gelu_fast, gelu, relu.
bool IsSupportedActivation(std::string_view activation);

// Checks hyperparameters against what the family's kernels compute: a supported RoPE type with well-formed
// parameters (longrope: short_factor/long_factor of rotary_dim / 2 numbers), partial rotary only where supported,
// a supported activation (an empty one means the family's default).
// This is what the executor would refuse at load time; the planner refuses it at plan time. kUnsupported or
// kInvalidArgument with a message naming the field. The RoPE checks are ResolveRope's.
Status CheckModelConfig(const FamilyInfo& family, const ModelConfig& config);

// The model's RoPE, typed, as transformers' ROPE_INIT_FUNCTIONS compute it from the config (the defaults of each
// type applied, yarn's correction range and the yarn/longrope attention factors computed): what the planner writes
// into the plan (schema::RopeParams) and the executor's kernels compute from, so no JSON is read after planning.
// From config.rope_theta (a numeric "rope_theta" inside rope_scaling wins), rotary_dim (head_dim when 0),
// max_position_embeddings and rope_scaling ("rope_type" or "type"; linear/dynamic: "factor"; llama3: "factor",
// "low_freq_factor", "high_freq_factor", optional "original_max_position_embeddings"; yarn: optional "factor",
// "original_max_position_embeddings", "attention_factor", "mscale", "mscale_all_dim", "beta_fast", "beta_slow",
// "truncate"; longrope: "short_factor", "long_factor", optional "factor", "attention_factor",
// "original_max_position_embeddings"; any type: an optional "partial_rotary_factor" that must give rotary_dim).
// A family without RoPE (GPT-2) gets type default with rotary_dim 0, and refuses a rope_scaling object.
// Errors (kUnsupported: a type the family does not compute, partial rotary where unsupported; kInvalidArgument: a
// missing, non-numeric or out-of-range parameter) start with "rope_scaling: " or name the field; the result passes
// CheckRopeParams.
Result<RopeParams> ResolveRope(const FamilyInfo& family, const ModelConfig& config);

}  // namespace bigplan::arch
