// Importers: a model description from a Hugging Face model's config.json, with the tensor names and shapes
// transformers 5.x uses, synthesized from the config (no weights needed).
//
// The families, their `model_type`s, config fields and tensor tables are the architecture registry's
// (arch/registry.h): "llama" (Llama 2/3/3.1, incl. rope_scaling), "mistral", "qwen2" (q/k/v biases), "gpt2", "gptj",
// "phi3" (fused qkv_proj / gate_up_proj, longrope, partial rotary). Param dtypes come from the tensor list
// (checkpoint or tensors.json) when one is given, else from the config's `torch_dtype`/`dtype`, else F32. With a tensor list, naming variants are resolved against it
// (GPT-2's "transformer.h.0..." vs the older "h.0..."); shapes always come from the config, so a checkpoint that
// disagrees is reported by ValidateAgainstCheckpoint (planner/validate.h), not hidden.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "formats/checkpoint.h"
#include "planner/model_desc.h"
#include "support/result.h"

namespace bigplan {

// The model_type values ImportHfConfig accepts, sorted.
std::vector<std::string> SupportedModelTypes();

// The registry of config.json keys that change the computation, for one model type: each is implemented (read into
// the description and honoured by the executor) or refused (ImportHfConfig returns kUnsupported naming the config
// file and the key when its value is not the neutral one). Everything the executor would refuse for a config
// (unknown activation, unimplemented rope type, bad rope parameters, partial rotary) is refused at import.
struct MathKey {
  std::string key;
  bool implemented = false;
  std::string note;
};
std::vector<MathKey> MathKeysOf(const std::string& model_type);

struct HfImportOptions {
  std::string name;  // description name; default: config's "_name_or_path" if set, else model_type
  // Tensors as the checkpoint holds them (names, shapes, dtypes); nullptr: synthesize from the config alone.
  const std::vector<TensorSpec>* tensors = nullptr;
  // The checkpoint those tensors come from (optional): errors about a pre-quantized checkpoint's tensors name the
  // shard file that holds them, and a GPTQ g_idx is read from it to refuse act-order.
  const Checkpoint* checkpoint = nullptr;
};

// A description from a parsed config.json. `source` prefixes error messages.
//
// Pre-quantized checkpoints: when the config has a quantization_config (quant::ParseQuantizationConfig; anything it
// refuses is refused here, kUnsupported / kCorrupt naming `source`), each linear-layer weight X.weight (the
// registry's Layout::kLinear tensors) that the checkpoint stores quantized becomes one param [n, k] with
// TensorSpec::prequant naming its source tensors and format/group fixed by the checkpoint:
//   fp8 (block): X.weight F8_E4M3 [n, k] + X.weight_scale_inv F32 [ceil(n / br), ceil(k / bc)] (compressed-tensors:
//     X.weight_scale) -> fp8, group bc;
//   fp8 (per channel / tensor): X.weight F8_E4M3 [n, k] + X.weight_scale F32 [n], [n, 1], [1] or [] -> fp8, group k;
//   gptq: X.qweight I32 [k / 8, n], X.qzeros I32 [k / g, n / 8], X.scales F16/BF16/F32 [k / g, n], optional
//     X.g_idx I32 [k] -> int4, group g (k for group_size -1); the param's dtype is the scales' dtype.
// Other tensors of a quantized module (X.input_scale, X.weight_scale_2 of activations, ...) are accepted and unused.
// A module the checkpoint stores plainly (listed as not quantized, e.g. lm_head, or an F16/BF16 X.weight) stays a
// plain param. With a tensor list, a quantized module whose tensors are missing or have the wrong dtype or shape
// for n, k and the config is refused (kMismatch naming the shard file, when `options.checkpoint` is set, and the
// tensor), and so is GPTQ act-order (desc_act, or with a checkpoint a g_idx that is not c / g): kUnsupported naming
// the g_idx tensor. Without a tensor list every linear weight outside not_quantized is taken as quantized, with the
// source names above. kUnsupported naming an unknown
// model_type (and listing the supported ones); kInvalidArgument naming a missing or bad config field.
Result<ModelDescription> ImportHfConfig(const nlohmann::json& config, const HfImportOptions& options = {},
                                        const std::string& source = "config.json");
// Same, from config.json text.
Result<ModelDescription> ImportHfConfigText(std::string_view config_json, const HfImportOptions& options = {},
                                            const std::string& source = "config.json");
// From a config.json file, with dtypes and naming taken from `checkpoint` when given (nullptr: none). With
// `config_text`, also returns the exact bytes that were parsed (so callers can fingerprint them without a re-read).
Result<ModelDescription> ImportHfConfigFile(const std::string& config_path, const Checkpoint* checkpoint = nullptr,
                                            std::string name = "", std::string* config_text = nullptr);
// From a Hugging Face model directory: DIR/config.json, and the checkpoint in DIR if it has *.safetensors
// (opened with Checkpoint::Open).
Result<ModelDescription> ImportHfDirectory(const std::string& dir);

// The tensors of a checkpoint as TensorSpecs (sorted by name).
std::vector<TensorSpec> TensorSpecsOf(const Checkpoint& checkpoint);

// A tensors.json file: [{"name": ..., "shape": [...], "dtype": "F16"}, ...] (or {"tensors": [...]}).
Result<std::vector<TensorSpec>> LoadTensorList(const std::string& path);
Result<std::vector<TensorSpec>> ParseTensorList(std::string_view json, const std::string& source);
std::string TensorListToJson(const std::vector<TensorSpec>& tensors);

// A bundled example (planner/examples/NAME): DIR/config.json plus DIR/tensors.json when present (else the tensor
// list is synthesized from the config). The name is the directory's base name. `config_text` as ImportHfConfigFile.
Result<ModelDescription> ImportExample(const std::string& dir, std::string* config_text = nullptr);

// The tensor list a checkpoint saved by transformers (save_pretrained) holds for this description: every owned
// param. (Tied params are owned once, so they are saved once, as transformers does.)
std::vector<TensorSpec> ExpectedTensors(const ModelDescription& model);

}  // namespace bigplan
