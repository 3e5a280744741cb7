// The model description: the planner's input for any model (format documented in planner/MODEL_FORMAT.md).
//
// A description names the model's blocks (the units of placement) in execution order, the parameters each block
// owns (name, shape, dtype as in the checkpoint) and the parameters it reads but another block owns (tied weights),
// plus normalized hyperparameters for the executor's kernels and the original Hugging Face config verbatim.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "formats/dtype.h"
#include "support/result.h"

namespace bigplan {

inline constexpr char kModelFormat[] = "bigplan.model/1";

// The most decoder layers a model may have (the largest published models have a few hundred). Larger counts are
// refused up front: they are never real, and planning them would take unbounded time and memory.
inline constexpr uint32_t kMaxDecoderLayers = 4096;

enum class BlockKind : uint8_t {
  kEmbedding,          // token embedding (model.embed_tokens, transformer.wte)
  kPositionEmbedding,  // learned absolute positions (GPT-2's transformer.wpe)
  kDecoderLayer,       // one transformer layer
  kFinalNorm,          // the norm after the last layer (model.norm, transformer.ln_f)
  kLmHead,             // output projection to the vocabulary
};

// "embedding", "position_embedding", "decoder_layer", "final_norm", "lm_head".
const char* BlockKindName(BlockKind kind);
// Inverse of BlockKindName; kInvalidArgument naming the string otherwise.
Result<BlockKind> ParseBlockKind(std::string_view name);

// A tensor by name, shape and dtype (no location). Used for description params, runtime buffers and for tensor
// lists (the examples' tensors.json, or a checkpoint's tensors).
struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  DType dtype = DType::kF32;

  int64_t numel() const;                        // product of shape (1 for a scalar)
  uint64_t bytes() const;                       // numel x DTypeBytes(dtype)
  uint64_t bytes_as(DType exec_dtype) const;    // numel x DTypeBytes(exec) for floating tensors, else bytes()
  bool operator==(const TensorSpec&) const = default;
};

struct BlockDesc {
  std::string name;    // module name, e.g. "model.layers.3"; unique; also the HF device_map key for the block
  BlockKind kind = BlockKind::kDecoderLayer;
  int32_t layer = -1;  // decoder layer index (0..num_layers-1), -1 for other blocks
  std::string prefix;  // tensor-name prefix of the params it owns, e.g. "model.layers.3."
  // True when the reference implementation never splits this module across devices (a module in the model's
  // `_no_split_modules`, or a leaf module). bigplan always places a block as a whole; this is informational.
  bool no_split = true;
  std::vector<TensorSpec> params;   // owned parameters, each named `prefix` + local name, in checkpoint order
  std::vector<std::string> tied;    // names of params owned by an earlier/other block that this block also reads
  // Non-persistent buffers the reference (transformers) module allocates for this block, which are not in the
  // checkpoint (e.g. GPT-J's attn.embed_positions). Only the Accelerate-compatible `sequential` strategy counts them,
  // because Accelerate's size accounting does. Optional; empty for most models.
  std::vector<TensorSpec> runtime_buffers;

  bool operator==(const BlockDesc&) const = default;
};

// Normalized hyperparameters (names and meaning as in schema/plan.fbs's ModelConfig).
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
  uint32_t rotary_dim = 0;            // rotary dims per head: head_dim for full rotary, GPT-J's rotary_dim, 0 for none
  bool attention_bias = false;        // q/k/v (and o for Llama's attention_bias) projections carry biases
  bool mlp_bias = false;
  bool tie_word_embeddings = false;
  std::string activation;             // "silu", "gelu_new", ...
  nlohmann::json rope_scaling;        // the config's rope_scaling object, or null
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

  bool operator==(const ModelConfig&) const = default;
};

struct ModelDescription {
  std::string name;
  std::string architecture;  // "llama", "gpt2", "gptj"
  ModelConfig config;
  nlohmann::json hf_config;  // the original config.json, verbatim (an object; {} if none)
  std::vector<BlockDesc> blocks;  // in execution order

  // Reads and parses a description file; errors name the file.
  static Result<ModelDescription> Load(const std::string& path);
  // Parses and validates (see Validate) a description; `source` (a file name) prefixes error messages.
  // kCorrupt for malformed JSON, kInvalidArgument for a wrong/missing field (naming it, e.g.
  // "blocks[3].params[1].shape"), kIncompatible for another "format".
  static Result<ModelDescription> Parse(std::string_view json, const std::string& source);
  // Structural validation: format fields present, unique block and param names, params start with their block's
  // prefix, layers numbered 0..num_layers-1 in order, tied names refer to params of another block, positive
  // hyperparameters, num_heads % num_kv_heads == 0, ... kInvalidArgument naming the field.
  Status Validate() const;

  // Canonical JSON: fixed key order, no insignificant whitespace when indent < 0. Parse(ToJson()) == *this.
  std::string ToJson(int indent = 2) const;
  nlohmann::json ToJsonValue() const;
  // sha256 (lowercase hex) of ToJson(-1).
  std::string Digest() const;

  // Lookups (nullptr if absent).
  const BlockDesc* FindBlock(std::string_view block_name) const;
  int FindBlockIndex(std::string_view block_name) const;  // -1 if absent
  // The owned param with this name, and the index of its owning block.
  const TensorSpec* FindParam(std::string_view param_name, int* owner_block = nullptr) const;
  // Every owned param, in block order (tied reads are not repeated).
  std::vector<TensorSpec> AllParams() const;
  uint64_t TotalParamBytes() const;  // sum of owned param bytes at their own dtypes
  int64_t TotalParams() const;       // sum of owned param numels

  bool operator==(const ModelDescription&) const = default;
};

}  // namespace bigplan
