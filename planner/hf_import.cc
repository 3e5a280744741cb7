#include "planner/hf_import.h"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <map>
#include <optional>
#include <string_view>
#include <unordered_map>
#include <utility>

#include "arch/registry.h"
#include "support/file_read.h"
#include "support/json_parse.h"

namespace bigplan {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;


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

// Access to config.json fields the importer itself reads (dtype, name); the registry parses the rest.
class Config {
 public:
  Config(const json& j, const std::string& source) : j_(j), source_(source) {}

  bool Has(const std::string& key) const { return j_.contains(key) && !j_.at(key).is_null(); }
  const json* Get(const std::string& key) const { return Has(key) ? &j_.at(key) : nullptr; }

  Error Bad(const std::string& key, const std::string& why) const {
    return MakeError(ErrorCode::kInvalidArgument, source_ + ": field \"" + key + "\": " + why);
  }

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

// A description from the registry's tables: the family's blocks in execution order, each with the tensors its
// rules say this model has (shapes from the hyperparameters), tied reads and runtime buffers. Checkpoints saved by
// old versions of transformers may omit the family's optional root prefix (GPT-2's "h.0.attn.c_attn.weight",
// "wte.weight"); with a tensor list that uses those names, block prefixes follow it (block names stay the module
// names).
ModelDescription BuildFromRegistry(const arch::ParsedConfig& p, const DTypeSource& dtypes,
                                   const std::vector<TensorSpec>* tensors) {
  const arch::FamilyInfo& f = *p.family;
  ModelDescription m;
  m.architecture = f.name;
  m.config = p.config;
  const std::string root = f.optional_root_prefix;
  bool strip_root = false;
  if (!root.empty() && tensors != nullptr) {
    for (const arch::BlockLayout& layout : f.blocks) {
      if (layout.kind != BlockKind::kEmbedding) continue;
      const std::string weight = arch::BlockName(layout, -1) + ".weight";
      strip_root = weight.rfind(root, 0) == 0 && !dtypes.Has(weight) && dtypes.Has(weight.substr(root.size()));
    }
  }
  std::map<BlockKind, std::string> prefix_of;
  Builder b(dtypes);
  for (const arch::BlockLayout& layout : f.blocks) {
    const bool decoder = layout.kind == BlockKind::kDecoderLayer;
    const uint32_t count = decoder ? p.config.num_layers : 1;
    for (uint32_t i = 0; i < count; ++i) {
      const int32_t layer = decoder ? static_cast<int32_t>(i) : -1;
      const std::string name = arch::BlockName(layout, layer);
      std::string prefix = name + ".";
      if (strip_root && prefix.rfind(root, 0) == 0) prefix = prefix.substr(root.size());
      prefix_of[layout.kind] = prefix;
      BlockDesc& block = b.Block(name, layout.kind, layer, prefix);
      for (const arch::RuntimeBufferRule& r : f.runtime_buffers) {
        if (r.block != layout.kind) continue;
        std::vector<int64_t> shape;
        for (uint8_t d = 0; d < r.rank; ++d) shape.push_back(arch::EvalDim(r.dims[d], p.config, p.features));
        block.runtime_buffers.push_back(TensorSpec{name + "." + r.name, std::move(shape), r.dtype});
      }
      for (const arch::TiedRead& t : f.tied) {
        if (t.reader != layout.kind || !p.features.tied) continue;
        const arch::TensorRule* owner = arch::FindSlotRule(f, t.owner, t.owner_slot);
        if (owner != nullptr) block.tied.push_back(prefix_of[t.owner] + owner->name);
      }
      for (const arch::TensorRule& r : f.tensors) {
        if (r.block == layout.kind && arch::IsPresent(r.presence, p.features)) {
          b.Param(r.name, arch::ShapeOf(r, p.config, p.features));
        }
      }
    }
  }
  m.blocks = b.Take();
  return m;
}

}  // namespace

std::vector<MathKey> MathKeysOf(const std::string& model_type) {
  std::vector<MathKey> out;
  const arch::FamilyInfo* f = arch::FindModelType(model_type);
  if (f == nullptr) return out;
  for (const arch::MathKey& k : f->math_keys) {
    out.push_back(MathKey{k.key, k.handling != arch::KeyHandling::kRefused, k.note});
  }
  return out;
}

std::vector<std::string> SupportedModelTypes() { return arch::SupportedModelTypes(); }

Result<ModelDescription> ImportHfConfig(const nlohmann::json& config, const HfImportOptions& options,
                                        const std::string& source) {
  if (!config.is_object()) return MakeError(ErrorCode::kInvalidArgument, source + ": config must be a JSON object");
  Config c(config, source);
  // The family, hyperparameters and tensor features from the registry (arch/registry.h).
  BIGPLAN_ASSIGN_OR_RETURN(arch::ParsedConfig parsed, arch::ParseHfConfig(config, source));
  const std::string& model_type = parsed.model_type;
  BIGPLAN_ASSIGN_OR_RETURN(DTypeSource dtypes, DTypeSource::Make(c, options.tensors));
  Result<ModelDescription> m = BuildFromRegistry(parsed, dtypes, options.tensors);
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
