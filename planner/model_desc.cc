#include "planner/model_desc.h"

#include <set>
#include <sstream>
#include <unordered_map>
#include <utility>

#include "arch/binding.h"
#include "support/file_read.h"
#include "support/json_parse.h"
#include "support/sha256.h"

namespace bigplan {
namespace {

using nlohmann::json;
using ordered_json = nlohmann::ordered_json;

const char* TypeName(const json& j) {
  switch (j.type()) {
    case json::value_t::null: return "null";
    case json::value_t::object: return "object";
    case json::value_t::array: return "array";
    case json::value_t::string: return "string";
    case json::value_t::boolean: return "boolean";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned: return "integer";
    case json::value_t::number_float: return "number";
    default: return "value";
  }
}

// Reads typed fields of a JSON object, naming the field path in errors.
class Fields {
 public:
  Fields(const json& obj, std::string path, const std::string& source) : obj_(obj), path_(std::move(path)), source_(source) {}

  std::string Path(const std::string& key) const { return path_.empty() ? key : path_ + "." + key; }

  Error Bad(const std::string& key, const std::string& why) const {
    return MakeError(ErrorCode::kInvalidArgument, source_ + ": field \"" + Path(key) + "\": " + why);
  }

  Result<const json*> Get(const std::string& key, bool required = true) const {
    auto it = obj_.find(key);
    if (it == obj_.end()) {
      if (required) return Bad(key, "missing");
      return static_cast<const json*>(nullptr);
    }
    return &*it;
  }

  Result<std::string> String(const std::string& key) const {
    BIGPLAN_ASSIGN_OR_RETURN(const json* v, Get(key));
    if (!v->is_string()) return Bad(key, std::string("expected a string, got ") + TypeName(*v));
    return v->get<std::string>();
  }

  Result<int64_t> Int(const std::string& key, std::optional<int64_t> dflt = std::nullopt) const {
    BIGPLAN_ASSIGN_OR_RETURN(const json* v, Get(key, !dflt.has_value()));
    if (v == nullptr) return *dflt;
    if (v->is_number_unsigned()) {
      if (v->get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) return Bad(key, "out of range");
      return static_cast<int64_t>(v->get<uint64_t>());
    }
    if (!v->is_number_integer()) return Bad(key, std::string("expected an integer, got ") + TypeName(*v));
    return v->get<int64_t>();
  }

  Result<uint32_t> U32(const std::string& key, std::optional<uint32_t> dflt = std::nullopt) const {
    BIGPLAN_ASSIGN_OR_RETURN(int64_t v, Int(key, dflt ? std::optional<int64_t>(*dflt) : std::nullopt));
    if (v < 0 || v > UINT32_MAX) return Bad(key, "expected a non-negative 32-bit integer, got " + std::to_string(v));
    return static_cast<uint32_t>(v);
  }

  Result<double> Number(const std::string& key, std::optional<double> dflt = std::nullopt) const {
    BIGPLAN_ASSIGN_OR_RETURN(const json* v, Get(key, !dflt.has_value()));
    if (v == nullptr) return *dflt;
    if (!v->is_number()) return Bad(key, std::string("expected a number, got ") + TypeName(*v));
    return v->get<double>();
  }

  Result<bool> Bool(const std::string& key, std::optional<bool> dflt = std::nullopt) const {
    BIGPLAN_ASSIGN_OR_RETURN(const json* v, Get(key, !dflt.has_value()));
    if (v == nullptr) return *dflt;
    if (!v->is_boolean()) return Bad(key, std::string("expected true or false, got ") + TypeName(*v));
    return v->get<bool>();
  }

  Result<const json*> Array(const std::string& key, bool required = true) const {
    BIGPLAN_ASSIGN_OR_RETURN(const json* v, Get(key, required));
    if (v == nullptr) return v;
    if (!v->is_array()) return Bad(key, std::string("expected an array, got ") + TypeName(*v));
    return v;
  }

  Result<const json*> Object(const std::string& key, bool required = true) const {
    BIGPLAN_ASSIGN_OR_RETURN(const json* v, Get(key, required));
    if (v == nullptr) return v;
    if (!v->is_object()) return Bad(key, std::string("expected an object, got ") + TypeName(*v));
    return v;
  }

 private:
  const json& obj_;
  std::string path_;
  const std::string& source_;
};

Error InvalidAt(const std::string& source, const std::string& path, const std::string& why) {
  return MakeError(ErrorCode::kInvalidArgument, source + ": field \"" + path + "\": " + why);
}

Result<TensorSpec> ParseTensorSpec(const json& j, const std::string& path, const std::string& source) {
  if (!j.is_object()) return InvalidAt(source, path, std::string("expected an object, got ") + TypeName(j));
  Fields f(j, path, source);
  TensorSpec t;
  BIGPLAN_ASSIGN_OR_RETURN(t.name, f.String("name"));
  BIGPLAN_ASSIGN_OR_RETURN(const json* shape, f.Array("shape"));
  for (size_t i = 0; i < shape->size(); ++i) {
    const json& d = (*shape)[i];
    if (!d.is_number_integer() || d.get<int64_t>() < 0) {
      return InvalidAt(source, f.Path("shape") + "[" + std::to_string(i) + "]",
                       "expected a non-negative integer, got " + d.dump());
    }
    t.shape.push_back(d.get<int64_t>());
  }
  BIGPLAN_ASSIGN_OR_RETURN(std::string dtype, f.String("dtype"));
  Result<DType> parsed = ParseDType(dtype);
  if (!parsed.ok()) return InvalidAt(source, f.Path("dtype"), parsed.error().message);
  t.dtype = *parsed;
  if (j.contains("format")) {
    BIGPLAN_ASSIGN_OR_RETURN(std::string format, f.String("format"));
    Result<quant::Format> q = quant::ParseFormat(format);
    if (!q.ok()) return InvalidAt(source, f.Path("format"), q.error().message);
    t.format = *q;
    BIGPLAN_ASSIGN_OR_RETURN(t.group, f.Int("group"));
    if (t.group <= 0) return f.Bad("group", "expected a positive group size, got " + std::to_string(t.group));
    if (t.format != quant::Format::kNone) {
      if (t.shape.size() != 2) return InvalidAt(source, f.Path("format"), "only 2-D weights are quantized");
      Result<uint64_t> rb = quant::RowBytes(t.format, t.shape[1], t.group);
      if (!rb.ok()) return InvalidAt(source, f.Path("group"), rb.error().message);
    } else {
      t.group = 0;
    }
  } else if (j.contains("group")) {
    return InvalidAt(source, f.Path("group"), "given without \"format\"");
  }
  if (j.contains("prequant")) {
    BIGPLAN_ASSIGN_OR_RETURN(const json* pq, f.Object("prequant"));
    Fields q(*pq, f.Path("prequant"), source);
    BIGPLAN_ASSIGN_OR_RETURN(std::string method, q.String("method"));
    size_t min_sources = 0, max_sources = 0;
    quant::Format expected = quant::Format::kNone;
    if (method == "fp8") {
      t.prequant.kind = PreQuant::Kind::kFp8;
      min_sources = max_sources = 2;
      expected = quant::Format::kFp8E4M3;
    } else if (method == "gptq") {
      t.prequant.kind = PreQuant::Kind::kGptq;
      min_sources = 3;
      max_sources = 4;
      expected = quant::Format::kInt4;
    } else {
      return q.Bad("method", "expected \"fp8\" or \"gptq\", got \"" + method + "\"");
    }
    if (t.format != expected) {
      return InvalidAt(source, f.Path("format"), std::string("a ") + method + " pre-quantized weight must be \"" +
                                                     quant::FormatName(expected) + "\"");
    }
    if (pq->contains("block")) {
      BIGPLAN_ASSIGN_OR_RETURN(const json* block, q.Array("block"));
      if (block->size() != 2 || !(*block)[0].is_number_integer() || !(*block)[1].is_number_integer() ||
          (*block)[0].get<int64_t>() <= 0 || (*block)[1].get<int64_t>() <= 0) {
        return q.Bad("block", "expected two positive integers, got " + block->dump());
      }
      t.prequant.block_rows = (*block)[0].get<int64_t>();
      t.prequant.block_cols = (*block)[1].get<int64_t>();
    }
    if (pq->contains("v1_zero_offset")) {
      const json& v = pq->at("v1_zero_offset");
      if (!v.is_boolean()) return q.Bad("v1_zero_offset", "expected a boolean");
      t.prequant.v1_zero_offset = v.get<bool>();
    }
    if (pq->contains("act_order")) {
      const json& v = pq->at("act_order");
      if (!v.is_boolean()) return q.Bad("act_order", "expected a boolean");
      t.prequant.act_order = v.get<bool>();
    }
    BIGPLAN_ASSIGN_OR_RETURN(const json* sources, q.Array("sources"));
    for (const json& s : *sources) {
      if (!s.is_string() || s.get<std::string>().empty()) return q.Bad("sources", "expected tensor names");
      t.prequant.sources.push_back(s.get<std::string>());
    }
    if (t.prequant.sources.size() < min_sources || t.prequant.sources.size() > max_sources) {
      return q.Bad("sources", "a " + method + " weight has " + std::to_string(min_sources) +
                                  (min_sources == max_sources ? "" : " or " + std::to_string(max_sources)) +
                                  " source tensors, got " + std::to_string(t.prequant.sources.size()));
    }
  }
  return t;
}

ordered_json TensorSpecToJson(const TensorSpec& t) {
  ordered_json j;
  j["name"] = t.name;
  j["shape"] = t.shape;
  j["dtype"] = DTypeString(t.dtype);
  if (t.format != quant::Format::kNone) {
    j["format"] = quant::FormatName(t.format);
    j["group"] = t.group;
  }
  if (t.prequant.kind != PreQuant::Kind::kNone) {
    ordered_json q;
    q["method"] = PreQuantKindName(t.prequant.kind);
    if (t.prequant.block_rows > 0) q["block"] = {t.prequant.block_rows, t.prequant.block_cols};
    if (t.prequant.kind == PreQuant::Kind::kGptq) q["v1_zero_offset"] = t.prequant.v1_zero_offset;
    if (t.prequant.act_order) q["act_order"] = true;
    q["sources"] = t.prequant.sources;
    j["prequant"] = std::move(q);
  }
  return j;
}

Result<ModelConfig> ParseConfig(const json& j, const std::string& source) {
  Fields f(j, "config", source);
  ModelConfig c;
  BIGPLAN_ASSIGN_OR_RETURN(c.hidden_size, f.U32("hidden_size"));
  BIGPLAN_ASSIGN_OR_RETURN(c.num_layers, f.U32("num_layers"));
  BIGPLAN_ASSIGN_OR_RETURN(c.num_heads, f.U32("num_heads"));
  BIGPLAN_ASSIGN_OR_RETURN(c.num_kv_heads, f.U32("num_kv_heads"));
  BIGPLAN_ASSIGN_OR_RETURN(c.head_dim, f.U32("head_dim"));
  BIGPLAN_ASSIGN_OR_RETURN(c.intermediate_size, f.U32("intermediate_size"));
  BIGPLAN_ASSIGN_OR_RETURN(c.vocab_size, f.U32("vocab_size"));
  BIGPLAN_ASSIGN_OR_RETURN(c.max_position_embeddings, f.U32("max_position_embeddings"));
  BIGPLAN_ASSIGN_OR_RETURN(c.norm_eps, f.Number("norm_eps"));
  BIGPLAN_ASSIGN_OR_RETURN(c.rope_theta, f.Number("rope_theta"));
  BIGPLAN_ASSIGN_OR_RETURN(c.rotary_dim, f.U32("rotary_dim"));
  BIGPLAN_ASSIGN_OR_RETURN(c.attention_bias, f.Bool("attention_bias"));
  BIGPLAN_ASSIGN_OR_RETURN(c.mlp_bias, f.Bool("mlp_bias"));
  BIGPLAN_ASSIGN_OR_RETURN(c.tie_word_embeddings, f.Bool("tie_word_embeddings"));
  BIGPLAN_ASSIGN_OR_RETURN(c.activation, f.String("activation"));
  BIGPLAN_ASSIGN_OR_RETURN(const json* rs, f.Get("rope_scaling"));
  if (!rs->is_null() && !rs->is_object()) {
    return f.Bad("rope_scaling", std::string("expected an object or null, got ") + TypeName(*rs));
  }
  c.rope_scaling = *rs;
  BIGPLAN_ASSIGN_OR_RETURN(const json* bos, f.Get("bos_token_id"));
  if (bos->is_null()) {
    c.bos_token_id = -1;
  } else {
    BIGPLAN_ASSIGN_OR_RETURN(c.bos_token_id, f.Int("bos_token_id"));
  }
  BIGPLAN_ASSIGN_OR_RETURN(const json* eos, f.Array("eos_token_ids"));
  for (size_t i = 0; i < eos->size(); ++i) {
    const json& e = (*eos)[i];
    if (!e.is_number_integer()) {
      return InvalidAt(source, "config.eos_token_ids[" + std::to_string(i) + "]", "expected an integer, got " + e.dump());
    }
    c.eos_token_ids.push_back(e.get<int64_t>());
  }
  BIGPLAN_ASSIGN_OR_RETURN(c.sliding_window, f.U32("sliding_window", 0));
  BIGPLAN_ASSIGN_OR_RETURN(const json* layers, f.Array("sliding_window_layers", false));
  if (layers != nullptr) {
    for (size_t i = 0; i < layers->size(); ++i) {
      if (!(*layers)[i].is_boolean()) {
        return InvalidAt(source, "config.sliding_window_layers[" + std::to_string(i) + "]",
                         "expected true or false, got " + (*layers)[i].dump());
      }
      c.sliding_window_layers.push_back((*layers)[i].get<bool>());
    }
  }
  BIGPLAN_ASSIGN_OR_RETURN(c.scale_attn_weights, f.Bool("scale_attn_weights", true));
  BIGPLAN_ASSIGN_OR_RETURN(c.scale_attn_by_inverse_layer_idx, f.Bool("scale_attn_by_inverse_layer_idx", false));
  BIGPLAN_ASSIGN_OR_RETURN(c.reorder_and_upcast_attn, f.Bool("reorder_and_upcast_attn", false));
  BIGPLAN_ASSIGN_OR_RETURN(c.num_experts, f.U32("num_experts", 0));
  BIGPLAN_ASSIGN_OR_RETURN(c.num_experts_per_tok, f.U32("num_experts_per_tok", 0));
  BIGPLAN_ASSIGN_OR_RETURN(c.moe_intermediate_size, f.U32("moe_intermediate_size", 0));
  BIGPLAN_ASSIGN_OR_RETURN(c.shared_expert_intermediate_size, f.U32("shared_expert_intermediate_size", 0));
  BIGPLAN_ASSIGN_OR_RETURN(c.norm_topk_prob, f.Bool("norm_topk_prob", false));
  BIGPLAN_ASSIGN_OR_RETURN(const json* sparse, f.Array("sparse_layers", false));
  if (sparse != nullptr) {
    for (size_t i = 0; i < sparse->size(); ++i) {
      if (!(*sparse)[i].is_boolean()) {
        return InvalidAt(source, "config.sparse_layers[" + std::to_string(i) + "]",
                         "expected true or false, got " + (*sparse)[i].dump());
      }
      c.sparse_layers.push_back((*sparse)[i].get<bool>());
    }
  }
  BIGPLAN_ASSIGN_OR_RETURN(c.qk_norm, f.Bool("qk_norm", false));
  return c;
}

ordered_json ConfigToJson(const ModelConfig& c) {
  ordered_json j;
  j["hidden_size"] = c.hidden_size;
  j["num_layers"] = c.num_layers;
  j["num_heads"] = c.num_heads;
  j["num_kv_heads"] = c.num_kv_heads;
  j["head_dim"] = c.head_dim;
  j["intermediate_size"] = c.intermediate_size;
  j["vocab_size"] = c.vocab_size;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["norm_eps"] = c.norm_eps;
  j["rope_theta"] = c.rope_theta;
  j["rotary_dim"] = c.rotary_dim;
  j["attention_bias"] = c.attention_bias;
  j["mlp_bias"] = c.mlp_bias;
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["activation"] = c.activation;
  j["rope_scaling"] = ordered_json::parse(c.rope_scaling.dump());
  if (c.bos_token_id < 0) {
    j["bos_token_id"] = nullptr;
  } else {
    j["bos_token_id"] = c.bos_token_id;
  }
  j["eos_token_ids"] = c.eos_token_ids;
  // Optional fields, only when not their default (the canonical JSON of older models is unchanged).
  if (c.sliding_window != 0) j["sliding_window"] = c.sliding_window;
  if (!c.sliding_window_layers.empty()) j["sliding_window_layers"] = c.sliding_window_layers;
  if (!c.scale_attn_weights) j["scale_attn_weights"] = false;
  if (c.scale_attn_by_inverse_layer_idx) j["scale_attn_by_inverse_layer_idx"] = true;
  if (c.reorder_and_upcast_attn) j["reorder_and_upcast_attn"] = true;
  if (c.num_experts != 0) {
    j["num_experts"] = c.num_experts;
    j["num_experts_per_tok"] = c.num_experts_per_tok;
    j["moe_intermediate_size"] = c.moe_intermediate_size;
    if (c.shared_expert_intermediate_size != 0) {
      j["shared_expert_intermediate_size"] = c.shared_expert_intermediate_size;
    }
    j["norm_topk_prob"] = c.norm_topk_prob;
    j["sparse_layers"] = c.sparse_layers;
  }
  if (c.qk_norm) j["qk_norm"] = true;
  return j;
}

Result<BlockDesc> ParseBlock(const json& j, const std::string& path, const std::string& source) {
  if (!j.is_object()) return InvalidAt(source, path, std::string("expected an object, got ") + TypeName(j));
  Fields f(j, path, source);
  BlockDesc b;
  BIGPLAN_ASSIGN_OR_RETURN(b.name, f.String("name"));
  BIGPLAN_ASSIGN_OR_RETURN(std::string kind, f.String("kind"));
  Result<BlockKind> k = ParseBlockKind(kind);
  if (!k.ok()) return InvalidAt(source, f.Path("kind"), k.error().message);
  b.kind = *k;
  BIGPLAN_ASSIGN_OR_RETURN(int64_t layer, f.Int("layer"));
  if (layer < -1 || layer > INT32_MAX) return f.Bad("layer", "expected -1 or a layer index, got " + std::to_string(layer));
  b.layer = static_cast<int32_t>(layer);
  BIGPLAN_ASSIGN_OR_RETURN(b.prefix, f.String("prefix"));
  BIGPLAN_ASSIGN_OR_RETURN(b.no_split, f.Bool("no_split", true));
  BIGPLAN_ASSIGN_OR_RETURN(const json* params, f.Array("params"));
  for (size_t i = 0; i < params->size(); ++i) {
    BIGPLAN_ASSIGN_OR_RETURN(TensorSpec t, ParseTensorSpec((*params)[i], f.Path("params") + "[" + std::to_string(i) + "]", source));
    b.params.push_back(std::move(t));
  }
  BIGPLAN_ASSIGN_OR_RETURN(const json* tied, f.Array("tied", false));
  if (tied != nullptr) {
    for (size_t i = 0; i < tied->size(); ++i) {
      if (!(*tied)[i].is_string()) {
        return InvalidAt(source, f.Path("tied") + "[" + std::to_string(i) + "]",
                         std::string("expected a param name, got ") + TypeName((*tied)[i]));
      }
      b.tied.push_back((*tied)[i].get<std::string>());
    }
  }
  BIGPLAN_ASSIGN_OR_RETURN(const json* bufs, f.Array("runtime_buffers", false));
  if (bufs != nullptr) {
    for (size_t i = 0; i < bufs->size(); ++i) {
      BIGPLAN_ASSIGN_OR_RETURN(
          TensorSpec t, ParseTensorSpec((*bufs)[i], f.Path("runtime_buffers") + "[" + std::to_string(i) + "]", source));
      b.runtime_buffers.push_back(std::move(t));
    }
  }
  return b;
}

ordered_json BlockToJson(const BlockDesc& b) {
  ordered_json j;
  j["name"] = b.name;
  j["kind"] = BlockKindName(b.kind);
  j["layer"] = b.layer;
  j["prefix"] = b.prefix;
  j["no_split"] = b.no_split;
  j["params"] = ordered_json::array();
  for (const TensorSpec& t : b.params) j["params"].push_back(TensorSpecToJson(t));
  j["tied"] = b.tied;
  if (!b.runtime_buffers.empty()) {
    j["runtime_buffers"] = ordered_json::array();
    for (const TensorSpec& t : b.runtime_buffers) j["runtime_buffers"].push_back(TensorSpecToJson(t));
  }
  return j;
}

std::string Idx(const std::string& base, size_t i) { return base + "[" + std::to_string(i) + "]"; }

}  // namespace

int64_t TensorSpec::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

const char* PreQuantKindName(PreQuant::Kind kind) {
  switch (kind) {
    case PreQuant::Kind::kNone: return "none";
    case PreQuant::Kind::kFp8: return "fp8";
    case PreQuant::Kind::kGptq: return "gptq";
  }
  return "none";
}

uint64_t TensorSpec::bytes() const {
  if (prequant.kind != PreQuant::Kind::kNone && format != quant::Format::kNone && shape.size() == 2) {
    Result<uint64_t> b = quant::TensorBytes(format, shape[0], shape[1], group);
    if (b.ok()) return *b;
  }
  return static_cast<uint64_t>(numel()) * DTypeBytes(dtype);
}

uint64_t TensorSpec::bytes_as(DType exec_dtype) const {
  if (format != quant::Format::kNone && shape.size() == 2) {
    Result<uint64_t> b = quant::TensorBytes(format, shape[0], shape[1], group);
    if (b.ok()) return *b;
  }
  if (!IsFloatingPoint(dtype)) return bytes();
  return static_cast<uint64_t>(numel()) * DTypeBytes(exec_dtype);
}

Result<ModelDescription> ModelDescription::Load(const std::string& path) {
  BIGPLAN_ASSIGN_OR_RETURN(std::string text, ReadBoundedFile(path, kModelDescriptionFile));
  Result<ModelDescription> m = Parse(text, path);
  // A description file whose content fails validation is corrupt (exit status 1), not a bad command line.
  if (!m.ok() && m.error().code == ErrorCode::kInvalidArgument) {
    Error e = m.take_error();
    e.code = ErrorCode::kCorrupt;
    return e;
  }
  return m;
}

Result<ModelDescription> ModelDescription::Parse(std::string_view text, const std::string& source) {
  BIGPLAN_ASSIGN_OR_RETURN(json j, ParseJsonStrict(text, source));
  if (!j.is_object()) {
    return MakeError(ErrorCode::kInvalidArgument,
                     source + ": a model description must be a JSON object, got " + TypeName(j));
  }
  Fields f(j, "", source);
  BIGPLAN_ASSIGN_OR_RETURN(std::string format, f.String("format"));
  if (format != kModelFormat) {
    if (format.rfind("bigplan.model/", 0) == 0) {
      return MakeError(ErrorCode::kIncompatible, source + ": field \"format\": incompatible version \"" + format +
                                                     "\" (this build reads \"" + kModelFormat + "\")");
    }
    return f.Bad("format", "expected \"" + std::string(kModelFormat) + "\", got \"" + format + "\"");
  }
  ModelDescription m;
  BIGPLAN_ASSIGN_OR_RETURN(m.name, f.String("name"));
  BIGPLAN_ASSIGN_OR_RETURN(m.architecture, f.String("architecture"));
  BIGPLAN_ASSIGN_OR_RETURN(const json* config, f.Object("config"));
  BIGPLAN_ASSIGN_OR_RETURN(m.config, ParseConfig(*config, source));
  BIGPLAN_ASSIGN_OR_RETURN(const json* hf, f.Object("hf_config", false));
  m.hf_config = hf ? *hf : json::object();
  BIGPLAN_ASSIGN_OR_RETURN(const json* blocks, f.Array("blocks"));
  for (size_t i = 0; i < blocks->size(); ++i) {
    BIGPLAN_ASSIGN_OR_RETURN(BlockDesc b, ParseBlock((*blocks)[i], Idx("blocks", i), source));
    m.blocks.push_back(std::move(b));
  }
  Status st = m.Validate();
  if (!st.ok()) return WithContext(st.take_error(), source);
  return m;
}

Status ModelDescription::Validate() const {
  auto bad = [](const std::string& path, const std::string& why) {
    return MakeError(ErrorCode::kInvalidArgument, "field \"" + path + "\": " + why);
  };
  if (name.empty()) return bad("name", "empty");
  const arch::FamilyInfo* family = arch::FindFamily(architecture);
  if (family == nullptr) {
    return MakeError(ErrorCode::kUnsupported, "field \"architecture\": unsupported architecture \"" + architecture +
                                                  "\" (supported: " + arch::JoinNames(arch::SupportedArchitectures()) +
                                                  ")");
  }
  const ModelConfig& c = config;
  struct {
    const char* name;
    uint32_t value;
  } positive[] = {{"hidden_size", c.hidden_size},
                  {"num_layers", c.num_layers},
                  {"num_heads", c.num_heads},
                  {"num_kv_heads", c.num_kv_heads},
                  {"head_dim", c.head_dim},
                  {"intermediate_size", c.intermediate_size},
                  {"vocab_size", c.vocab_size},
                  {"max_position_embeddings", c.max_position_embeddings}};
  for (const auto& p : positive) {
    if (p.value == 0) return bad(std::string("config.") + p.name, "must be positive");
  }
  if (c.num_layers > kMaxDecoderLayers) {
    return MakeError(ErrorCode::kUnsupported, "field \"config.num_layers\": " + std::to_string(c.num_layers) +
                                                  " decoder layers exceed the limit of " +
                                                  std::to_string(kMaxDecoderLayers));
  }
  if (c.num_heads % c.num_kv_heads != 0) {
    return bad("config.num_kv_heads", "num_heads (" + std::to_string(c.num_heads) + ") is not a multiple of num_kv_heads (" +
                                          std::to_string(c.num_kv_heads) + ")");
  }
  if (c.rotary_dim > c.head_dim) {
    return bad("config.rotary_dim", std::to_string(c.rotary_dim) + " exceeds head_dim " + std::to_string(c.head_dim));
  }
  if (!(c.norm_eps > 0)) return bad("config.norm_eps", "must be positive");
  if (!(c.rope_theta > 0)) return bad("config.rope_theta", "must be positive");
  if (c.activation.empty()) return bad("config.activation", "empty");
  if (!c.rope_scaling.is_null() && !c.rope_scaling.is_object()) return bad("config.rope_scaling", "expected an object or null");
  if (c.sliding_window == 0 && !c.sliding_window_layers.empty()) {
    return bad("config.sliding_window_layers", "given without a sliding_window");
  }
  if (c.sliding_window != 0 && c.sliding_window_layers.size() != c.num_layers) {
    return bad("config.sliding_window_layers", "has " + std::to_string(c.sliding_window_layers.size()) +
                                                   " flags for " + std::to_string(c.num_layers) + " layers");
  }
  if (c.num_experts > arch::kMaxExperts) {
    return bad("config.num_experts", std::to_string(c.num_experts) + " experts exceed the limit of " +
                                         std::to_string(arch::kMaxExperts));
  }
  if (c.num_experts != 0) {
    if (c.num_experts_per_tok == 0 || c.num_experts_per_tok > c.num_experts) {
      return bad("config.num_experts_per_tok", "must be 1.." + std::to_string(c.num_experts));
    }
    if (c.moe_intermediate_size == 0) return bad("config.moe_intermediate_size", "must be positive");
    if (c.sparse_layers.size() != c.num_layers) {
      return bad("config.sparse_layers", "has " + std::to_string(c.sparse_layers.size()) + " flags for " +
                                             std::to_string(c.num_layers) + " layers");
    }
  } else if (!c.sparse_layers.empty() || c.num_experts_per_tok != 0 || c.moe_intermediate_size != 0 ||
             c.shared_expert_intermediate_size != 0) {
    return bad("config.num_experts", "expert fields given without experts");
  }
  if (Status k = arch::CheckModelConfig(*family, c); !k.ok()) {
    Error e = k.take_error();
    e.message = "field \"config\": " + e.message;
    return e;
  }
  if (!hf_config.is_object()) return bad("hf_config", "expected an object");
  if (blocks.empty()) return bad("blocks", "empty");

  std::set<std::string> block_names;
  std::unordered_map<std::string, size_t> param_owner;
  int32_t next_layer = 0;
  for (size_t i = 0; i < blocks.size(); ++i) {
    const BlockDesc& b = blocks[i];
    const std::string path = Idx("blocks", i);
    if (b.name.empty()) return bad(path + ".name", "empty");
    if (!block_names.insert(b.name).second) return bad(path + ".name", "duplicate block name \"" + b.name + "\"");
    if (b.kind == BlockKind::kDecoderLayer) {
      if (b.layer != next_layer) {
        return bad(path + ".layer", "decoder layer \"" + b.name + "\" has layer " + std::to_string(b.layer) + ", expected " +
                                        std::to_string(next_layer) + " (layers numbered 0.. in execution order)");
      }
      ++next_layer;
    } else if (b.layer != -1) {
      return bad(path + ".layer", "must be -1 for a " + std::string(BlockKindName(b.kind)) + " block");
    }
    std::set<std::string> local;
    for (size_t p = 0; p < b.params.size(); ++p) {
      const TensorSpec& t = b.params[p];
      const std::string ppath = Idx(path + ".params", p);
      if (t.name.empty()) return bad(ppath + ".name", "empty");
      if (t.name.rfind(b.prefix, 0) != 0) {
        return bad(ppath + ".name", "\"" + t.name + "\" does not start with the block's prefix \"" + b.prefix + "\"");
      }
      auto [it, inserted] = param_owner.emplace(t.name, i);
      if (!inserted) {
        return bad(ppath + ".name", "param \"" + t.name + "\" is also owned by block \"" + blocks[it->second].name + "\"");
      }
    }
    for (size_t r = 0; r < b.runtime_buffers.size(); ++r) {
      if (b.runtime_buffers[r].name.empty()) return bad(Idx(path + ".runtime_buffers", r) + ".name", "empty");
    }
  }
  if (static_cast<uint32_t>(next_layer) != c.num_layers) {
    return bad("blocks", "has " + std::to_string(next_layer) + " decoder layers but config.num_layers is " +
                             std::to_string(c.num_layers));
  }
  for (size_t i = 0; i < blocks.size(); ++i) {
    const BlockDesc& b = blocks[i];
    std::set<std::string> seen;
    for (size_t t = 0; t < b.tied.size(); ++t) {
      const std::string tpath = Idx(Idx("blocks", i) + ".tied", t);
      auto it = param_owner.find(b.tied[t]);
      if (it == param_owner.end()) return bad(tpath, "\"" + b.tied[t] + "\" is not a param of any block");
      if (it->second == i) return bad(tpath, "\"" + b.tied[t] + "\" is owned by this block itself");
      if (!seen.insert(b.tied[t]).second) return bad(tpath, "\"" + b.tied[t] + "\" listed twice");
    }
  }
  return Status::Ok();
}

Status ModelDescription::CheckKernelBinding() const {
  const arch::FamilyInfo* family = arch::FindFamily(architecture);
  if (family == nullptr) {
    return MakeError(ErrorCode::kUnsupported, "unsupported architecture \"" + architecture + "\"");
  }
  std::vector<arch::BlockRef> refs;
  std::unordered_map<std::string, const TensorSpec*> params;
  for (const BlockDesc& b : blocks) {
    refs.push_back(arch::BlockRef{b.kind, b.prefix, b.layer});
    for (const TensorSpec& t : b.params) params.emplace(t.name, &t);
  }
  for (size_t i = 0; i < blocks.size(); ++i) {
    const BlockDesc& b = blocks[i];
    std::vector<arch::BlockTensor> tensors;
    for (const TensorSpec& t : b.params) tensors.push_back(arch::BlockTensor{t.name, t.shape});
    for (const std::string& name : b.tied) {
      auto it = params.find(name);
      if (it == params.end()) {
        return MakeError(ErrorCode::kMismatch, "block " + b.name + ": tied tensor '" + name + "' is no block's param");
      }
      tensors.push_back(arch::BlockTensor{name, it->second->shape});
    }
    Result<arch::SlotTable> table = arch::BindBlock(*family, config, refs, i, tensors, b.name);
    if (!table.ok()) return table.take_error();
  }
  return Status::Ok();
}

nlohmann::json ModelDescription::ToJsonValue() const { return json::parse(ToJson(-1)); }

std::string ModelDescription::ToJson(int indent) const {
  ordered_json j;
  j["format"] = kModelFormat;
  j["name"] = name;
  j["architecture"] = architecture;
  j["config"] = ConfigToJson(config);
  // hf_config keeps its content verbatim; keys come out sorted, which makes the text canonical.
  j["hf_config"] = ordered_json::parse(hf_config.dump());
  j["blocks"] = ordered_json::array();
  for (const BlockDesc& b : blocks) j["blocks"].push_back(BlockToJson(b));
  std::string out = j.dump(indent);
  if (indent >= 0) out += "\n";
  return out;
}

std::string ModelDescription::Digest() const { return Sha256Hex(ToJson(-1)); }

const BlockDesc* ModelDescription::FindBlock(std::string_view block_name) const {
  int i = FindBlockIndex(block_name);
  return i < 0 ? nullptr : &blocks[i];
}

int ModelDescription::FindBlockIndex(std::string_view block_name) const {
  for (size_t i = 0; i < blocks.size(); ++i) {
    if (blocks[i].name == block_name) return static_cast<int>(i);
  }
  return -1;
}

const TensorSpec* ModelDescription::FindParam(std::string_view param_name, int* owner_block) const {
  for (size_t i = 0; i < blocks.size(); ++i) {
    for (const TensorSpec& t : blocks[i].params) {
      if (t.name == param_name) {
        if (owner_block) *owner_block = static_cast<int>(i);
        return &t;
      }
    }
  }
  if (owner_block) *owner_block = -1;
  return nullptr;
}

std::vector<TensorSpec> ModelDescription::AllParams() const {
  std::vector<TensorSpec> out;
  for (const BlockDesc& b : blocks) out.insert(out.end(), b.params.begin(), b.params.end());
  return out;
}

uint64_t ModelDescription::TotalParamBytes() const {
  uint64_t n = 0;
  for (const BlockDesc& b : blocks) {
    for (const TensorSpec& t : b.params) n += t.bytes();
  }
  return n;
}

int64_t ModelDescription::TotalParams() const {
  int64_t n = 0;
  for (const BlockDesc& b : blocks) {
    for (const TensorSpec& t : b.params) n += t.numel();
  }
  return n;
}

}  // namespace bigplan
