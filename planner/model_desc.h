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

#include "arch/registry.h"
#include "formats/dtype.h"
#include "formats/quant.h"
#include "support/result.h"

namespace bigplan {

inline constexpr char kModelFormat[] = "bigplan.model/1";

// The most decoder layers a model may have (see arch/registry.h).
inline constexpr uint32_t kMaxDecoderLayers = arch::kMaxDecoderLayers;

// Block kinds are the registry's (arch/registry.h): kEmbedding, kPositionEmbedding, kDecoderLayer, kFinalNorm,
// kLmHead; BlockKindName gives "embedding", "position_embedding", "decoder_layer", "final_norm", "lm_head" and
// ParseBlockKind is its inverse (kInvalidArgument naming the string otherwise).
using arch::BlockKind;
using arch::BlockKindName;
using arch::ParseBlockKind;

// Where a parameter of a pre-quantized checkpoint (config.json's quantization_config) comes from: the checkpoint
// stores it as several tensors, which the loader converts into bigplan's layout (formats/quant.h: FromFp8, FromGptq)
// without requantizing. Set by ImportHfConfig; the param's `format` and `group` are then fixed by the checkpoint.
struct PreQuant {
  enum class Kind : uint8_t {
    kNone = 0,
    kFp8 = 1,   // sources {X.weight (F8_E4M3 [n, k]), its float32 scale (X.weight_scale_inv or X.weight_scale)}
    kGptq = 2,  // sources {X.qweight, X.qzeros, X.scales} and X.g_idx when the checkpoint has it
  };
  Kind kind = Kind::kNone;
  int64_t block_rows = 0;  // kFp8 with block scales: weight_block_size; 0 and 0: per-channel or per-tensor scale
  int64_t block_cols = 0;
  bool v1_zero_offset = true;        // kGptq: checkpoint_format "gptq" (stored zero = z - 1); false: "gptq_v2"
  // kGptq: act-order (desc_act, or a g_idx that is not c / g): the loader permutes the columns, so a shard cannot
  // take a range of them (a tensor-parallel column slice).
  bool act_order = false;
  std::vector<std::string> sources;  // checkpoint tensor names, in the order above
  bool operator==(const PreQuant&) const = default;
};
// "fp8", "gptq" ("none" for kNone).
const char* PreQuantKindName(PreQuant::Kind kind);

// A tensor by name, shape and dtype (no location). Used for description params, runtime buffers and for tensor
// lists (the examples' tensors.json, or a checkpoint's tensors).
struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  DType dtype = DType::kF32;
  // How the executor stores the tensor: kNone (at the execution dtype), or bigplan's row-quantized layout
  // (formats/quant.h) of a 2-D [rows, cols] matrix with groups of `group` columns, which the loader quantizes from
  // the checkpoint's `dtype` (plan --weights, ApplyWeightFormat in planner/weight_format.h). JSON: optional
  // "format" ("fp8", "int8", "int4") and "group" keys, written only when quantized.
  quant::Format format = quant::Format::kNone;
  int64_t group = 0;
  // Pre-quantized checkpoints: the checkpoint tensors the param is converted from (no tensor named `name` need
  // exist). `dtype` is then the dtype the weight dequantizes to (F8_E4M3 for fp8; the scales' dtype for GPTQ), and
  // `format`/`group` are the checkpoint's (fp8 per row or in blocks of block_cols columns; int4 in GPTQ's groups).
  // JSON: an optional "prequant" object {"method", "block": [rows, cols], "v1_zero_offset", "sources": [...]}.
  PreQuant prequant;

  int64_t numel() const;                        // product of shape (1 for a scalar)
  uint64_t bytes() const;                       // numel x DTypeBytes(dtype); the quantized size when pre-quantized
  // Its bytes at run time: the quantized size (quant::TensorBytes) when quantized; numel x DTypeBytes(exec) for
  // floating tensors; else bytes().
  uint64_t bytes_as(DType exec_dtype) const;
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

// Normalized hyperparameters: the registry's arch::ModelConfig (names and meaning as in schema/plan.fbs's
// ModelConfig), serialized field by field in the description's "config" object.
using ModelConfig = arch::ModelConfig;

struct ModelDescription {
  std::string name;
  std::string architecture;  // a registry family name: "llama", "gpt2", "gptj", "phi3"
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
  // hyperparameters, num_heads % num_kv_heads == 0, ... kInvalidArgument naming the field. The architecture must
  // be a registry family and the hyperparameters what its kernels compute (arch::CheckModelConfig: RoPE type and
  // parameters, partial rotary): kUnsupported / kInvalidArgument otherwise, so a description the executor would
  // refuse is refused at plan time.
  Status Validate() const;
  // Whether the executor's kernels can read every block: each block's params and tied reads bind to its kernel's
  // slots (arch::BindBlock: names, shapes and required tensors from the family's tables). The planner refuses a
  // model that fails here (what `run` would refuse at load, `plan` refuses first); Validate alone accepts abstract
  // blocks (planning studies and tests). kMismatch naming the block and the tensor.
  Status CheckKernelBinding() const;

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
