#include "planner/hf_import.h"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <map>
#include <optional>
#include <string_view>
#include <unordered_map>
#include <utility>

#include "support/file_read.h"
#include "support/json_parse.h"

namespace bigplan {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

const char* const kSupported[] = {"gpt2", "gptj", "llama", "mistral", "qwen2"};

std::string JoinSupported() {
  std::string s;
  for (const char* t : kSupported) {
    if (!s.empty()) s += ", ";
    s += t;
  }
  return s;
}


// Content of a file that fails validation makes the file corrupt (exit status 1), not the command line bad.
template <typename T>
Result<T> AsFileContent(Result<T> r) {
  if (!r.ok() && r.error().code == ErrorCode::kInvalidArgument) {
    Error e = r.take_error();
    e.code = ErrorCode::kCorrupt;
    return e;
  }
  return r;
}

Result<json> ParseJson(std::string_view text, const std::string& source) { return ParseJsonStrict(text, source); }

// Typed access to config.json fields; errors name the field.
class Config {
 public:
  Config(const json& j, const std::string& source) : j_(j), source_(source) {}

  bool Has(const std::string& key) const { return j_.contains(key) && !j_.at(key).is_null(); }
  const json* Get(const std::string& key) const { return Has(key) ? &j_.at(key) : nullptr; }

  Error Bad(const std::string& key, const std::string& why) const {
    return MakeError(ErrorCode::kInvalidArgument, source_ + ": field \"" + key + "\": " + why);
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
      return MakeError(ErrorCode::kUnsupported, source_ + ": field \"" + key + "\": " + std::to_string(n) +
                                                    " decoder layers exceed the limit of " +
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

Result<DType> TorchDTypeToDType(const std::string& s, const Config& c, const std::string& key) {
  std::string t = s.rfind("torch.", 0) == 0 ? s.substr(6) : s;
  if (t == "float16" || t == "half") return DType::kF16;
  if (t == "bfloat16") return DType::kBF16;
  if (t == "float32" || t == "float") return DType::kF32;
  if (t == "float64" || t == "double") return DType::kF64;
  return MakeError(ErrorCode::kUnsupported,
                   c.source() + ": field \"" + key + "\": unsupported dtype \"" + s + "\" (expected float16, bfloat16, float32)");
}

// Param dtypes: a tensor's own dtype from the tensor list when it has the tensor; otherwise the tensor list's
// dominant floating dtype; otherwise the config's torch_dtype/dtype; otherwise F32.
class DTypeSource {
 public:
  static Result<DTypeSource> Make(const Config& c, const std::vector<TensorSpec>* tensors) {
    DTypeSource d;
    d.fallback_ = DType::kF32;
    for (const char* key : {"dtype", "torch_dtype"}) {
      const json* v = c.Get(key);
      if (v == nullptr || !v->is_string() || v->get<std::string>() == "auto") continue;
      BIGPLAN_ASSIGN_OR_RETURN(d.fallback_, TorchDTypeToDType(v->get<std::string>(), c, key));
      break;
    }
    if (tensors != nullptr) {
      std::map<DType, uint64_t> bytes;
      for (const TensorSpec& t : *tensors) {
        d.by_name_[t.name] = &t;
        if (IsFloatingPoint(t.dtype)) bytes[t.dtype] += t.bytes() + 1;
      }
      uint64_t best = 0;
      for (const auto& [dt, n] : bytes) {
        if (n > best) {
          best = n;
          d.fallback_ = dt;
        }
      }
    }
    return d;
  }
  DType For(const std::string& name) const {
    auto it = by_name_.find(name);
    return it == by_name_.end() ? fallback_ : it->second->dtype;
  }
  bool Has(const std::string& name) const { return by_name_.count(name) > 0; }
  bool empty() const { return by_name_.empty(); }

 private:
  DType fallback_ = DType::kF32;
  std::unordered_map<std::string, const TensorSpec*> by_name_;
};

// Builds blocks.
class Builder {
 public:
  explicit Builder(const DTypeSource& dtypes) : dtypes_(dtypes) {}

  BlockDesc& Block(std::string name, BlockKind kind, int32_t layer, std::string prefix) {
    BlockDesc b;
    b.name = std::move(name);
    b.kind = kind;
    b.layer = layer;
    b.prefix = std::move(prefix);
    b.no_split = true;
    blocks_.push_back(std::move(b));
    return blocks_.back();
  }
  void Param(const std::string& local, std::vector<int64_t> shape) {
    BlockDesc& b = blocks_.back();
    std::string name = b.prefix + local;
    b.params.push_back(TensorSpec{name, std::move(shape), dtypes_.For(name)});
  }
  std::vector<BlockDesc> Take() { return std::move(blocks_); }

 private:
  const DTypeSource& dtypes_;
  std::vector<BlockDesc> blocks_;
};

Status ReadTokens(const Config& c, ModelConfig& mc) {
  mc.bos_token_id = -1;
  if (const json* bos = c.Get("bos_token_id")) {
    if (!bos->is_number_integer()) return c.Bad("bos_token_id", "expected an integer, got " + bos->dump());
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

// What the executor's RoPE setup (executor/kernels.cc ParseRope) would refuse, refused here first, naming the config
// file and the field: an unknown or unimplemented rope type (longrope), a partial_rotary_factor other than 1, a
// missing or non-numeric parameter, factor <= 0, llama3 with equal low and high frequency factors or a
// non-positive original_max_position_embeddings, yarn with a non-positive original_max_position_embeddings.
Status CheckRopeScaling(const Config& c, const ModelConfig& mc) {
  const json& rs = mc.rope_scaling;
  const std::string field = c.Has("rope_scaling") ? "rope_scaling" : "rope_parameters";
  auto bad = [&](ErrorCode code, const std::string& why) {
    return MakeError(code, c.source() + ": field \"" + field + "\": " + why);
  };
  std::string type = "default";
  for (const char* key : {"rope_type", "type"}) {
    if (rs.contains(key) && rs[key].is_string()) {
      type = rs[key].get<std::string>();
      break;
    }
  }
  static const char* kImplemented[] = {"default", "linear", "dynamic", "llama3", "yarn"};
  bool implemented = false;
  for (const char* k : kImplemented) implemented = implemented || type == k;
  if (!implemented) {
    return bad(ErrorCode::kUnsupported, "rope type \"" + type + "\" is not supported (supported: default, linear, "
                                        "dynamic, llama3, yarn)");
  }
  auto number = [&](const char* key, bool required, double* out) -> Status {
    if (!rs.contains(key) || rs[key].is_null()) {
      if (required) return bad(ErrorCode::kInvalidArgument, std::string("rope type ") + type + " needs \"" + key + "\"");
      return Status::Ok();
    }
    if (!rs[key].is_number()) return bad(ErrorCode::kInvalidArgument, std::string("\"") + key + "\" is not a number");
    *out = rs[key].get<double>();
    return Status::Ok();
  };
  double ignored = 0;
  BIGPLAN_RETURN_IF_ERROR(number("rope_theta", false, &ignored));
  double partial = 1.0;
  BIGPLAN_RETURN_IF_ERROR(number("partial_rotary_factor", false, &partial));
  if (partial != 1.0) {
    return bad(ErrorCode::kUnsupported, "partial_rotary_factor " + rs["partial_rotary_factor"].dump() +
                                            " is not supported (only 1: rotary over whole heads)");
  }
  double factor = 1.0;
  const bool needs_factor = type == "linear" || type == "dynamic" || type == "llama3";
  BIGPLAN_RETURN_IF_ERROR(number("factor", needs_factor, &factor));
  if (type != "default" && !(factor > 0)) {
    return bad(ErrorCode::kInvalidArgument, "\"factor\" must be positive, got " + rs["factor"].dump());
  }
  double original = mc.max_position_embeddings;
  BIGPLAN_RETURN_IF_ERROR(number("original_max_position_embeddings", false, &original));
  if (type == "llama3") {
    double low = 0, high = 0;
    BIGPLAN_RETURN_IF_ERROR(number("low_freq_factor", true, &low));
    BIGPLAN_RETURN_IF_ERROR(number("high_freq_factor", true, &high));
    if (low == high) {
      return bad(ErrorCode::kInvalidArgument, "llama3 high_freq_factor equals low_freq_factor (" + rs["low_freq_factor"].dump() +
                                                  "): the frequency bands would divide by zero");
    }
  }
  if ((type == "llama3" || type == "yarn") && !(static_cast<int64_t>(original) > 0)) {
    return bad(ErrorCode::kInvalidArgument, type + " needs original_max_position_embeddings > 0");
  }
  if (type == "yarn") {
    for (const char* key : {"attention_factor", "mscale", "mscale_all_dim", "beta_fast", "beta_slow"}) {
      BIGPLAN_RETURN_IF_ERROR(number(key, false, &ignored));
    }
  }
  return Status::Ok();
}

// rope_theta and rope_scaling from either the classic top-level fields or transformers 5's "rope_parameters"
// ({"rope_type": ..., "rope_theta": ..., scaling fields}). rope_scaling becomes the scaling object without
// rope_theta, or null for the default rope type.
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
    std::string type = rp->value("rope_type", rp->value("type", std::string("default")));
    if (rp->contains("partial_rotary_factor") &&
        !((*rp)["partial_rotary_factor"].is_number() && (*rp)["partial_rotary_factor"].get<double>() == 1.0)) {
      return MakeError(ErrorCode::kUnsupported, c.source() + ": field \"rope_parameters\": partial_rotary_factor " +
                                                    (*rp)["partial_rotary_factor"].dump() +
                                                    " is not supported (only 1: rotary over whole heads)");
    }
    if (mc.rope_scaling.is_null() && type != "default") {
      json scaling = *rp;
      scaling.erase("rope_theta");
      mc.rope_scaling = scaling;
    }
  }
  if (mc.rope_scaling.is_object()) BIGPLAN_RETURN_IF_ERROR(CheckRopeScaling(c, mc));
  return Status::Ok();
}

// The activations the executor implements (executor/kernels.cc ParseActivation); others are refused here first.
Status CheckActivation(const Config& c, const std::string& key, const std::string& name) {
  std::string n = name;
  for (char& ch : n) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  for (const char* known : {"silu", "swish", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu", "relu"}) {
    if (n == known) return Status::Ok();
  }
  return MakeError(ErrorCode::kUnsupported, c.source() + ": field \"" + key + "\": activation \"" + name +
                                                "\" is not supported (supported: silu, swish, gelu_new, "
                                                "gelu_pytorch_tanh, gelu_fast, gelu, relu)");
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
//   llama    no sliding window (LlamaModel has none; a "sliding_window" key has no effect there).
Status ReadSlidingWindow(const Config& c, const std::string& model_type, ModelConfig& mc) {
  mc.sliding_window = 0;
  mc.sliding_window_layers.clear();
  std::vector<bool> layers(mc.num_layers, false);
  uint32_t window = 0;
  if (model_type == "mistral") {
    BIGPLAN_ASSIGN_OR_RETURN(window, WindowSize(c, "sliding_window", 4096));
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
          return MakeError(ErrorCode::kUnsupported, c.source() + ": field \"layer_types\": layer " + std::to_string(i) +
                                                        " is \"" + s + "\" (supported: full_attention, "
                                                        "sliding_attention)");
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

// Config keys that change the computation, by family: each is either implemented (read into the description and
// honoured by the executor) or refused at plan time with the key named. See MathKeysOf in hf_import.h.
struct MathKeyRow {
  const char* families;  // space-separated model types, or "*" for every family
  const char* key;
  bool implemented;
  const char* note;
};
constexpr MathKeyRow kMathKeys[] = {
    // Shapes and normalization (every family).
    {"llama mistral qwen2", "hidden_size num_hidden_layers num_attention_heads num_key_value_heads head_dim "
                            "intermediate_size vocab_size max_position_embeddings rms_norm_eps tie_word_embeddings",
     true, "shapes and RMSNorm epsilon"},
    {"gpt2 gptj", "n_embd n_layer n_head n_inner vocab_size n_positions layer_norm_epsilon tie_word_embeddings", true,
     "shapes and LayerNorm epsilon"},
    {"llama mistral qwen2", "hidden_act", true, "silu, swish, gelu_new, gelu_pytorch_tanh, gelu_fast, gelu, relu; others refused"},
    {"gpt2 gptj", "activation_function", true, "silu, swish, gelu_new, gelu_pytorch_tanh, gelu_fast, gelu, relu; others refused"},
    {"llama mistral qwen2", "rope_theta rope_scaling rope_parameters", true,
     "rope types default, linear, dynamic, llama3, yarn; longrope, factor <= 0, llama3 with low == high frequency "
     "factor, partial_rotary_factor != 1 refused"},
    {"llama mistral qwen2", "partial_rotary_factor", false, "refused unless 1"},
    {"llama", "attention_bias mlp_bias", true, "q/k/v/o and MLP biases"},
    {"mistral", "sliding_window", true, "every layer attends to the last sliding_window positions (4096 if absent)"},
    {"qwen2", "use_sliding_window sliding_window max_window_layers layer_types", true,
     "sliding-window layers as Qwen2Config decides them"},
    {"gpt2", "scale_attn_weights scale_attn_by_inverse_layer_idx reorder_and_upcast_attn", true,
     "attention scaling by 1/sqrt(head_dim) and 1/(layer + 1); float32 scores and softmax"},
    {"gptj", "rotary_dim", true, "partial interleaved rotary"},
    {"gpt2", "add_cross_attention", false, "refused when true (cross-attention layers)"},
    {"*", "quantization_config", false, "refused: quantized weights"},
    {"*", "attn_logit_softcapping final_logit_softcapping logit_scale embedding_multiplier residual_multiplier "
          "attention_multiplier logits_scaling", false, "refused unless null"},
    {"*", "num_experts num_local_experts", false, "refused unless null or 0 (mixture of experts)"},
};

bool FamilyMatches(const char* families, const std::string& model_type) {
  if (std::string_view(families) == "*") return true;
  std::string_view f(families);
  size_t start = 0;
  while (start <= f.size()) {
    size_t end = f.find(' ', start);
    if (end == std::string_view::npos) end = f.size();
    if (f.substr(start, end - start) == model_type) return true;
    start = end + 1;
  }
  return false;
}

std::vector<std::string> SplitKeys(const char* keys) {
  std::vector<std::string> out;
  std::string cur;
  for (const char* p = keys;; ++p) {
    if (*p == ' ' || *p == '\0') {
      if (!cur.empty()) out.push_back(cur);
      cur.clear();
      if (*p == '\0') break;
    } else {
      cur += *p;
    }
  }
  return out;
}

// Refuses, naming the key, every refused math key whose value is not neutral (absent, null, false, 0, or for
// partial_rotary_factor 1). (Implemented keys are validated by the importers themselves.)
Status CheckRefusedKeys(const Config& c, const std::string& model_type) {
  for (const MathKeyRow& row : kMathKeys) {
    if (row.implemented || !FamilyMatches(row.families, model_type)) continue;
    for (const std::string& key : SplitKeys(row.key)) {
      const json* v = c.Get(key);
      if (v == nullptr) continue;
      bool neutral = v->is_boolean() ? !v->get<bool>() : (v->is_number() && v->get<double>() == 0);
      if (key == "partial_rotary_factor") neutral = v->is_number() && v->get<double>() == 1.0;
      if (v->is_object() && v->empty()) neutral = true;
      if (neutral) continue;
      return MakeError(ErrorCode::kUnsupported, c.source() + ": field \"" + key + "\": " + v->dump() +
                                                    " changes the computation and is not supported for " +
                                                    model_type + " (" + row.note + ")");
    }
  }
  return Status::Ok();
}

// Llama, Mistral, Qwen2: model.embed_tokens, model.layers.N, model.norm, lm_head.
Result<ModelDescription> ImportLlamaFamily(const Config& c, const std::string& model_type, const DTypeSource& dtypes) {
  ModelDescription m;
  m.architecture = "llama";
  ModelConfig& mc = m.config;
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
  BIGPLAN_ASSIGN_OR_RETURN(mc.max_position_embeddings, c.U32("max_position_embeddings", 2048));
  BIGPLAN_ASSIGN_OR_RETURN(mc.norm_eps, c.Number("rms_norm_eps", 1e-6));
  BIGPLAN_RETURN_IF_ERROR(ReadRope(c, mc, 10000.0));
  if (const json* prf = c.Get("partial_rotary_factor"); prf != nullptr && !(prf->is_number() && prf->get<double>() == 1.0)) {
    return MakeError(ErrorCode::kUnsupported, c.source() + ": field \"partial_rotary_factor\": " + prf->dump() +
                                                  " (partial rotary) is not supported for " + model_type);
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
  BIGPLAN_RETURN_IF_ERROR(CheckActivation(c, "hidden_act", mc.activation));
  BIGPLAN_RETURN_IF_ERROR(ReadTokens(c, mc));
  BIGPLAN_RETURN_IF_ERROR(ReadSlidingWindow(c, model_type, mc));

  const int64_t h = mc.hidden_size, q = int64_t{mc.num_heads} * mc.head_dim, kv = int64_t{mc.num_kv_heads} * mc.head_dim;
  const int64_t inter = mc.intermediate_size, vocab = mc.vocab_size;
  Builder b(dtypes);
  b.Block("model.embed_tokens", BlockKind::kEmbedding, -1, "model.embed_tokens.");
  b.Param("weight", {vocab, h});
  for (uint32_t i = 0; i < mc.num_layers; ++i) {
    const std::string name = "model.layers." + std::to_string(i);
    b.Block(name, BlockKind::kDecoderLayer, static_cast<int32_t>(i), name + ".");
    b.Param("self_attn.q_proj.weight", {q, h});
    if (qkv_bias || o_bias) b.Param("self_attn.q_proj.bias", {q});
    b.Param("self_attn.k_proj.weight", {kv, h});
    if (qkv_bias || o_bias) b.Param("self_attn.k_proj.bias", {kv});
    b.Param("self_attn.v_proj.weight", {kv, h});
    if (qkv_bias || o_bias) b.Param("self_attn.v_proj.bias", {kv});
    b.Param("self_attn.o_proj.weight", {h, q});
    if (o_bias) b.Param("self_attn.o_proj.bias", {h});
    b.Param("mlp.gate_proj.weight", {inter, h});
    if (mc.mlp_bias) b.Param("mlp.gate_proj.bias", {inter});
    b.Param("mlp.up_proj.weight", {inter, h});
    if (mc.mlp_bias) b.Param("mlp.up_proj.bias", {inter});
    b.Param("mlp.down_proj.weight", {h, inter});
    if (mc.mlp_bias) b.Param("mlp.down_proj.bias", {h});
    b.Param("input_layernorm.weight", {h});
    b.Param("post_attention_layernorm.weight", {h});
  }
  b.Block("model.norm", BlockKind::kFinalNorm, -1, "model.norm.");
  b.Param("weight", {h});
  BlockDesc& head = b.Block("lm_head", BlockKind::kLmHead, -1, "lm_head.");
  if (mc.tie_word_embeddings) {
    head.tied.push_back("model.embed_tokens.weight");
  } else {
    b.Param("weight", {vocab, h});
  }
  m.blocks = b.Take();
  return m;
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

// GPT-2: transformer.wte, transformer.wpe (a block of its own, kind position_embedding), transformer.h.N,
// transformer.ln_f, lm_head (tied to wte by default). Conv1D weights are [in, out]. Checkpoints saved by old
// versions of transformers name tensors without the "transformer." prefix ("h.0.attn.c_attn.weight", "wte.weight");
// with a tensor list that uses those names, block prefixes follow it (block names stay the module names).
Result<ModelDescription> ImportGpt2(const Config& c, const DTypeSource& dtypes, const std::vector<TensorSpec>* tensors) {
  ModelDescription m;
  m.architecture = "gpt2";
  ModelConfig& mc = m.config;
  BIGPLAN_RETURN_IF_ERROR(ReadGptShape(c, 1024, mc));
  mc.rope_theta = 10000.0;  // unused: learned positions
  mc.rotary_dim = 0;
  mc.rope_scaling = nullptr;
  mc.attention_bias = true;
  mc.mlp_bias = true;
  BIGPLAN_ASSIGN_OR_RETURN(mc.tie_word_embeddings, c.Bool("tie_word_embeddings", true));
  BIGPLAN_ASSIGN_OR_RETURN(mc.activation, c.String("activation_function", "gelu_new"));
  BIGPLAN_RETURN_IF_ERROR(CheckActivation(c, "activation_function", mc.activation));
  BIGPLAN_RETURN_IF_ERROR(ReadTokens(c, mc));
  BIGPLAN_ASSIGN_OR_RETURN(mc.scale_attn_weights, c.Bool("scale_attn_weights", true));
  BIGPLAN_ASSIGN_OR_RETURN(mc.scale_attn_by_inverse_layer_idx, c.Bool("scale_attn_by_inverse_layer_idx", false));
  BIGPLAN_ASSIGN_OR_RETURN(mc.reorder_and_upcast_attn, c.Bool("reorder_and_upcast_attn", false));

  std::string tp = "transformer.";
  if (tensors != nullptr && !dtypes.Has("transformer.wte.weight") && dtypes.Has("wte.weight")) tp = "";

  const int64_t h = mc.hidden_size, inner = mc.intermediate_size;
  Builder b(dtypes);
  b.Block("transformer.wte", BlockKind::kEmbedding, -1, tp + "wte.");
  b.Param("weight", {int64_t{mc.vocab_size}, h});
  b.Block("transformer.wpe", BlockKind::kPositionEmbedding, -1, tp + "wpe.");
  b.Param("weight", {int64_t{mc.max_position_embeddings}, h});
  for (uint32_t i = 0; i < mc.num_layers; ++i) {
    const std::string local = "h." + std::to_string(i);
    b.Block("transformer." + local, BlockKind::kDecoderLayer, static_cast<int32_t>(i), tp + local + ".");
    b.Param("ln_1.weight", {h});
    b.Param("ln_1.bias", {h});
    b.Param("attn.c_attn.weight", {h, 3 * h});
    b.Param("attn.c_attn.bias", {3 * h});
    b.Param("attn.c_proj.weight", {h, h});
    b.Param("attn.c_proj.bias", {h});
    b.Param("ln_2.weight", {h});
    b.Param("ln_2.bias", {h});
    b.Param("mlp.c_fc.weight", {h, inner});
    b.Param("mlp.c_fc.bias", {inner});
    b.Param("mlp.c_proj.weight", {inner, h});
    b.Param("mlp.c_proj.bias", {h});
  }
  b.Block("transformer.ln_f", BlockKind::kFinalNorm, -1, tp + "ln_f.");
  b.Param("weight", {h});
  b.Param("bias", {h});
  BlockDesc& head = b.Block("lm_head", BlockKind::kLmHead, -1, "lm_head.");
  if (mc.tie_word_embeddings) {
    head.tied.push_back(tp + "wte.weight");
  } else {
    b.Param("weight", {int64_t{mc.vocab_size}, h});
  }
  m.blocks = b.Take();
  return m;
}

// GPT-J: transformer.wte, transformer.h.N (ln_1 only: attention and MLP run in parallel on the same normed input;
// q/k/v/out projections without bias, fc_in/fc_out with bias), transformer.ln_f, lm_head with weight and bias.
// Each layer's attention module also holds a sinusoidal table `attn.embed_positions` [n_positions, rotary_dim] (F32,
// a non-persistent buffer), recorded as a runtime buffer.
Result<ModelDescription> ImportGptj(const Config& c, const DTypeSource& dtypes) {
  ModelDescription m;
  m.architecture = "gptj";
  ModelConfig& mc = m.config;
  BIGPLAN_RETURN_IF_ERROR(ReadGptShape(c, 2048, mc));
  // rotary_dim: absent -> GPTJConfig's default 64; null (older configs) -> rotary over whole heads, with the
  // sinusoid table sized by n_embd as transformers does. Rotation covers min(rotary_dim, head_dim) dims of a head.
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
  BIGPLAN_RETURN_IF_ERROR(CheckActivation(c, "activation_function", mc.activation));
  BIGPLAN_RETURN_IF_ERROR(ReadTokens(c, mc));

  const int64_t h = mc.hidden_size, inner = mc.intermediate_size, vocab = mc.vocab_size;
  Builder b(dtypes);
  b.Block("transformer.wte", BlockKind::kEmbedding, -1, "transformer.wte.");
  b.Param("weight", {vocab, h});
  for (uint32_t i = 0; i < mc.num_layers; ++i) {
    const std::string name = "transformer.h." + std::to_string(i);
    BlockDesc& layer = b.Block(name, BlockKind::kDecoderLayer, static_cast<int32_t>(i), name + ".");
    layer.runtime_buffers.push_back(
        TensorSpec{name + ".attn.embed_positions", {int64_t{mc.max_position_embeddings}, int64_t{pos_embd_dim}}, DType::kF32});
    b.Param("ln_1.weight", {h});
    b.Param("ln_1.bias", {h});
    b.Param("attn.k_proj.weight", {h, h});
    b.Param("attn.v_proj.weight", {h, h});
    b.Param("attn.q_proj.weight", {h, h});
    b.Param("attn.out_proj.weight", {h, h});
    b.Param("mlp.fc_in.weight", {inner, h});
    b.Param("mlp.fc_in.bias", {inner});
    b.Param("mlp.fc_out.weight", {h, inner});
    b.Param("mlp.fc_out.bias", {h});
  }
  b.Block("transformer.ln_f", BlockKind::kFinalNorm, -1, "transformer.ln_f.");
  b.Param("weight", {h});
  b.Param("bias", {h});
  BlockDesc& head = b.Block("lm_head", BlockKind::kLmHead, -1, "lm_head.");
  if (mc.tie_word_embeddings) head.tied.push_back("transformer.wte.weight");
  else b.Param("weight", {vocab, h});
  b.Param("bias", {vocab});
  m.blocks = b.Take();
  return m;
}

}  // namespace

std::vector<MathKey> MathKeysOf(const std::string& model_type) {
  std::vector<MathKey> out;
  for (const MathKeyRow& row : kMathKeys) {
    if (!FamilyMatches(row.families, model_type)) continue;
    for (const std::string& key : SplitKeys(row.key)) out.push_back(MathKey{key, row.implemented, row.note});
  }
  return out;
}

std::vector<std::string> SupportedModelTypes() { return std::vector<std::string>(std::begin(kSupported), std::end(kSupported)); }

Result<ModelDescription> ImportHfConfig(const nlohmann::json& config, const HfImportOptions& options,
                                        const std::string& source) {
  if (!config.is_object()) return MakeError(ErrorCode::kInvalidArgument, source + ": config must be a JSON object");
  Config c(config, source);
  const json* mt = c.Get("model_type");
  if (mt == nullptr || !mt->is_string()) {
    return MakeError(ErrorCode::kInvalidArgument,
                     source + ": field \"model_type\": missing (supported model types: " + JoinSupported() + ")");
  }
  const std::string model_type = mt->get<std::string>();
  BIGPLAN_ASSIGN_OR_RETURN(DTypeSource dtypes, DTypeSource::Make(c, options.tensors));
  if (std::find(std::begin(kSupported), std::end(kSupported), model_type) != std::end(kSupported)) {
    BIGPLAN_RETURN_IF_ERROR(CheckRefusedKeys(c, model_type));
  }

  Result<ModelDescription> m = MakeError(ErrorCode::kInternal, "unset");
  if (model_type == "llama" || model_type == "mistral" || model_type == "qwen2") {
    m = ImportLlamaFamily(c, model_type, dtypes);
  } else if (model_type == "gpt2") {
    m = ImportGpt2(c, dtypes, options.tensors);
  } else if (model_type == "gptj") {
    m = ImportGptj(c, dtypes);
  } else {
    return MakeError(ErrorCode::kUnsupported, source + ": unsupported model_type \"" + model_type +
                                                  "\" (supported model types: " + JoinSupported() + ")");
  }
  if (!m.ok()) return m;
  m->hf_config = config;
  if (!options.name.empty()) {
    m->name = options.name;
  } else if (const json* n = c.Get("_name_or_path"); n != nullptr && n->is_string() && !n->get<std::string>().empty()) {
    m->name = n->get<std::string>();
  } else {
    m->name = model_type;
  }
  Status st = m->Validate();
  if (!st.ok()) {
    const ErrorCode code = st.error().code == ErrorCode::kInvalidArgument ? ErrorCode::kCorrupt : st.error().code;
    return MakeError(code, source + ": imported description is invalid: " + st.error().message);
  }
  return m;
}

Result<ModelDescription> ImportHfConfigText(std::string_view config_json, const HfImportOptions& options,
                                            const std::string& source) {
  BIGPLAN_ASSIGN_OR_RETURN(json j, ParseJson(config_json, source));
  return ImportHfConfig(j, options, source);
}

Result<ModelDescription> ImportHfConfigFile(const std::string& config_path, const Checkpoint* checkpoint, std::string name,
                                            std::string* config_text) {
  BIGPLAN_ASSIGN_OR_RETURN(std::string text, ReadBoundedFile(config_path, kConfigFile));
  if (config_text != nullptr) *config_text = text;
  std::vector<TensorSpec> tensors;
  HfImportOptions options;
  options.name = std::move(name);
  if (checkpoint != nullptr) {
    tensors = TensorSpecsOf(*checkpoint);
    options.tensors = &tensors;
  }
  return AsFileContent(ImportHfConfigText(text, options, config_path));
}

Result<ModelDescription> ImportHfDirectory(const std::string& dir) {
  const std::string config = (fs::path(dir) / "config.json").string();
  bool has_safetensors = false;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string n = entry.path().filename().string();
    if (n.size() > 12 && n.substr(n.size() - 12) == ".safetensors") has_safetensors = true;
  }
  if (ec) return MakeError(ErrorCode::kNotFound, dir + ": cannot list directory: " + ec.message());
  std::string name = fs::path(dir).lexically_normal().filename().string();
  if (name.empty()) name = fs::path(dir).lexically_normal().parent_path().filename().string();
  if (!has_safetensors) return ImportHfConfigFile(config, nullptr, name);
  BIGPLAN_ASSIGN_OR_RETURN(Checkpoint ckpt, Checkpoint::Open(dir));
  return ImportHfConfigFile(config, &ckpt, name);
}

std::vector<TensorSpec> TensorSpecsOf(const Checkpoint& checkpoint) {
  std::vector<TensorSpec> out;
  out.reserve(checkpoint.tensors().size());
  for (const TensorLocation& t : checkpoint.tensors()) out.push_back(TensorSpec{t.name, t.shape, t.dtype});
  std::sort(out.begin(), out.end(), [](const TensorSpec& a, const TensorSpec& b) { return a.name < b.name; });
  return out;
}

Result<std::vector<TensorSpec>> ParseTensorList(std::string_view text, const std::string& source) {
  BIGPLAN_ASSIGN_OR_RETURN(json j, ParseJson(text, source));
  const json* list = &j;
  if (j.is_object() && j.contains("tensors")) list = &j["tensors"];
  if (!list->is_array()) {
    return MakeError(ErrorCode::kInvalidArgument, source + ": expected a JSON array of {name, shape, dtype} objects");
  }
  std::vector<TensorSpec> out;
  for (size_t i = 0; i < list->size(); ++i) {
    const json& e = (*list)[i];
    const std::string where = source + ": tensors[" + std::to_string(i) + "]";
    if (!e.is_object() || !e.contains("name") || !e["name"].is_string() || !e.contains("shape") || !e["shape"].is_array() ||
        !e.contains("dtype") || !e["dtype"].is_string()) {
      return MakeError(ErrorCode::kInvalidArgument, where + ": expected {\"name\": string, \"shape\": [int], \"dtype\": string}");
    }
    TensorSpec t;
    t.name = e["name"].get<std::string>();
    for (const json& d : e["shape"]) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0) {
        return MakeError(ErrorCode::kInvalidArgument, where + " (" + t.name + "): bad shape " + e["shape"].dump());
      }
      t.shape.push_back(d.get<int64_t>());
    }
    Result<DType> dt = ParseDType(e["dtype"].get<std::string>());
    if (!dt.ok()) return WithContext(dt.take_error(), where + " (" + t.name + ")");
    t.dtype = *dt;
    out.push_back(std::move(t));
  }
  return out;
}

Result<std::vector<TensorSpec>> LoadTensorList(const std::string& path) {
  BIGPLAN_ASSIGN_OR_RETURN(std::string text, ReadBoundedFile(path, kModelDescriptionFile));
  return AsFileContent(ParseTensorList(text, path));
}

std::string TensorListToJson(const std::vector<TensorSpec>& tensors) {
  std::string out = "[\n";
  for (size_t i = 0; i < tensors.size(); ++i) {
    nlohmann::ordered_json e;
    e["name"] = tensors[i].name;
    e["shape"] = tensors[i].shape;
    e["dtype"] = DTypeString(tensors[i].dtype);
    out += "  " + e.dump() + (i + 1 < tensors.size() ? ",\n" : "\n");
  }
  return out + "]\n";
}

Result<ModelDescription> ImportExample(const std::string& dir, std::string* config_text) {
  const fs::path d(dir);
  std::string name = d.lexically_normal().filename().string();
  if (name.empty()) name = d.lexically_normal().parent_path().filename().string();
  BIGPLAN_ASSIGN_OR_RETURN(std::string text, ReadBoundedFile((d / "config.json").string(), kConfigFile));
  if (config_text != nullptr) *config_text = text;
  HfImportOptions options;
  options.name = name;
  std::vector<TensorSpec> tensors;
  const fs::path tensors_path = d / "tensors.json";
  std::error_code ec;
  if (fs::exists(tensors_path, ec)) {
    BIGPLAN_ASSIGN_OR_RETURN(tensors, LoadTensorList(tensors_path.string()));
    options.tensors = &tensors;
  }
  return AsFileContent(ImportHfConfigText(text, options, (d / "config.json").string()));
}

std::vector<TensorSpec> ExpectedTensors(const ModelDescription& model) { return model.AllParams(); }

}  // namespace bigplan
