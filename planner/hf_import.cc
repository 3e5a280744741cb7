#include "planner/hf_import.h"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <map>
#include <optional>
#include <regex>
#include <string_view>
#include <unordered_map>
#include <utility>

#include "arch/registry.h"
#include "formats/quant.h"
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
      // A routed expert's matrices are adjacent (gate, up, down), expert after expert, where the first expert
      // rule stands in the table: an expert's weights then rest together and move in one piece.
      bool experts_done = false;
      for (const arch::TensorRule& r : f.tensors) {
        if (r.block != layout.kind || !arch::IsPresent(r.presence, p.config, p.features, layer)) continue;
        if (!arch::IsExpertRule(r)) {
          b.Param(r.name, arch::ShapeOf(r, p.config, p.features));
          continue;
        }
        if (experts_done) continue;
        experts_done = true;
        for (uint32_t e = 0; e < p.config.num_experts; ++e) {
          for (arch::Slot role : {arch::Slot::kExpertGate, arch::Slot::kExpertUp, arch::Slot::kExpertDown}) {
            const arch::TensorRule* er = arch::FindSlotRule(f, layout.kind, role);
            if (er != nullptr) b.Param(arch::RuleName(*er, e), arch::ShapeOf(*er, p.config, p.features));
          }
        }
      }
    }
  }
  m.blocks = b.Take();
  return m;
}

std::string ShapeStr(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// Whether module `module` (e.g. "model.layers.0.mlp.down_proj", "lm_head") is one the checkpoint lists as not
// quantized: equal to an entry, ending in "." + entry, or matching an entry "re:REGEX" (compressed-tensors).
bool IsNotQuantized(const std::string& module, const std::vector<std::string>& not_quantized) {
  for (const std::string& e : not_quantized) {
    if (e.rfind("re:", 0) == 0) {
      try {
        if (std::regex_match(module, std::regex(e.substr(3)))) return true;
      } catch (const std::regex_error&) {
      }
      continue;
    }
    if (module == e) return true;
    if (module.size() > e.size() && module.compare(module.size() - e.size(), e.size(), e) == 0 &&
        module[module.size() - e.size() - 1] == '.')
      return true;
  }
  return false;
}

// Marks the linear weights a pre-quantized checkpoint stores quantized (see ImportHfConfig in the header).
class PreQuantMarker {
 public:
  PreQuantMarker(const quant::CheckpointQuant& q, const HfImportOptions& options, const std::string& source)
      : q_(q), options_(options), source_(source) {
    if (options.tensors != nullptr)
      for (const TensorSpec& t : *options.tensors) by_name_[t.name] = &t;
  }

  Status Apply(ModelDescription* model) {
    const arch::FamilyInfo* family = arch::FindFamily(model->architecture);
    if (family == nullptr) return Status::Ok();
    int marked = 0;
    for (BlockDesc& b : model->blocks) {
      for (TensorSpec& t : b.params) {
        const std::string local = t.name.substr(b.prefix.size());
        const arch::TensorRule* rule = arch::FindTensorRule(*family, b.kind, local);
        if (rule == nullptr || rule->layout != arch::Layout::kLinear || t.shape.size() != 2) continue;
        const std::string suffix = ".weight";
        if (t.name.size() <= suffix.size() || t.name.compare(t.name.size() - suffix.size(), suffix.size(), suffix) != 0)
          continue;
        const std::string module = t.name.substr(0, t.name.size() - suffix.size());
        if (IsNotQuantized(module, q_.not_quantized)) {
          // Read as a plain weight: refuse one the checkpoint stores quantized after all (its scales would be lost).
          const TensorSpec* w = Find(t.name);
          const std::string stored = Find(module + ".qweight") != nullptr ? module + ".qweight"
                                     : w != nullptr && w->dtype == DType::kF8E4M3 ? t.name
                                                                                 : std::string();
          if (!synthesized() && !stored.empty()) {
            return Mismatch(stored, "is stored quantized, but " + source_ + " lists " + module + " as not quantized");
          }
          continue;
        }
        if (q_.kind == quant::CheckpointQuant::Kind::kGptq) {
          BIGPLAN_RETURN_IF_ERROR(MarkGptq(module, &t));
        } else {
          BIGPLAN_RETURN_IF_ERROR(MarkFp8(module, &t));
        }
        marked += t.prequant.kind != PreQuant::Kind::kNone;
      }
    }
    // A config that says the weights are quantized, over a checkpoint whose weights are not (or a family without
    // linear layers bigplan reads quantized, e.g. GPT-2's Conv1D): the config and the weights disagree.
    if (marked == 0) {
      const bool gptq = q_.kind == quant::CheckpointQuant::Kind::kGptq;
      return MakeError(ErrorCode::kUnsupported,
                       source_ + ": quantization_config says quant_method \"" + q_.method + "\", but no linear-layer "
                       "weight of this " + model->architecture + " model is stored that way in the checkpoint" +
                       " (for a linear layer X: " +
                       (gptq ? std::string("X.qweight, X.qzeros and X.scales")
                             : std::string("an F8_E4M3 X.weight with X.weight_scale_inv or X.weight_scale")) + ")");
    }
    return Status::Ok();
  }

 private:
  const TensorSpec* Find(const std::string& name) const {
    auto it = by_name_.find(name);
    return it == by_name_.end() ? nullptr : it->second;
  }
  bool synthesized() const { return options_.tensors == nullptr; }

  // "<shard file>: tensor NAME" (or the checkpoint directory / "the checkpoint" when unknown).
  std::string Where(const std::string& tensor) const {
    std::string file = "the checkpoint";
    if (options_.checkpoint != nullptr) {
      file = options_.checkpoint->directory();
      const TensorLocation* loc = options_.checkpoint->Find(tensor);
      if (loc == nullptr) {
        // A missing tensor: the shard holding its module's other tensors.
        const std::string module = tensor.substr(0, tensor.rfind('.') + 1);
        for (const TensorLocation& t : options_.checkpoint->tensors()) {
          if (t.name.rfind(module, 0) == 0) {
            loc = &t;
            break;
          }
        }
      }
      if (loc != nullptr && loc->shard < options_.checkpoint->shard_paths().size())
        file = options_.checkpoint->shard_paths()[loc->shard];
    }
    return file + ": tensor " + tensor;
  }
  Error Mismatch(const std::string& tensor, const std::string& why) const {
    return MakeError(ErrorCode::kMismatch, Where(tensor) + ": " + why + " (" + source_ + " says quant_method \"" +
                                               q_.method + "\")");
  }
  Status Expect(const std::string& name, const TensorSpec* t, std::initializer_list<DType> dtypes,
                const std::vector<std::vector<int64_t>>& shapes, const std::string& what) const {
    if (t == nullptr) return Mismatch(name, "missing (the " + what + " of a quantized weight)");
    bool dtype_ok = false;
    std::string dtype_names;
    for (DType d : dtypes) {
      dtype_ok |= t->dtype == d;
      dtype_names += std::string(dtype_names.empty() ? "" : " or ") + DTypeString(d);
    }
    if (!dtype_ok)
      return Mismatch(name, std::string("is ") + DTypeString(t->dtype) + ", expected " + dtype_names + " (" + what + ")");
    for (const std::vector<int64_t>& s : shapes)
      if (t->shape == s) return Status::Ok();
    std::string expected;
    for (const std::vector<int64_t>& s : shapes) expected += (expected.empty() ? "" : " or ") + ShapeStr(s);
    return Mismatch(name, "has shape " + ShapeStr(t->shape) + ", expected " + expected + " (" + what + ")");
  }

  Status MarkFp8(const std::string& module, TensorSpec* t) {
    const int64_t n = t->shape[0], k = t->shape[1];
    const std::string weight = module + ".weight";
    const bool block = q_.kind == quant::CheckpointQuant::Kind::kFp8Block;
    // Block scales are X.weight_scale_inv (transformers' "fp8") or X.weight_scale (compressed-tensors' "block").
    std::string scale = module + (block ? ".weight_scale_inv" : ".weight_scale");
    if (block && !synthesized() && Find(scale) == nullptr && Find(module + ".weight_scale") != nullptr)
      scale = module + ".weight_scale";
    if (!synthesized()) {
      const TensorSpec* w = Find(weight);
      // A plain (floating, not fp8) weight: a module the checkpoint left unquantized.
      if (w != nullptr && w->dtype != DType::kF8E4M3 && IsFloatingPoint(w->dtype) && Find(scale) == nullptr)
        return Status::Ok();
      BIGPLAN_RETURN_IF_ERROR(Expect(weight, w, {DType::kF8E4M3}, {{n, k}}, "fp8 weight"));
      if (block) {
        const int64_t br = q_.block_rows, bc = q_.block_cols;
        BIGPLAN_RETURN_IF_ERROR(Expect(scale, Find(scale), {DType::kF32}, {{(n + br - 1) / br, (k + bc - 1) / bc}},
                                       "block scales"));
      } else {
        BIGPLAN_RETURN_IF_ERROR(Expect(scale, Find(scale), {DType::kF32}, {{n}, {n, 1}, {1}, {}, {1, 1}},
                                       "per-channel or per-tensor scale"));
      }
    }
    if (block && k % q_.block_cols != 0) {
      return MakeError(ErrorCode::kUnsupported, Where(weight) + ": " + std::to_string(k) +
                                                    " columns are not a whole number of fp8 blocks of " +
                                                    std::to_string(q_.block_cols));
    }
    t->dtype = DType::kF8E4M3;
    t->format = quant::Format::kFp8E4M3;
    t->group = block ? q_.block_cols : k;
    t->prequant.kind = PreQuant::Kind::kFp8;
    t->prequant.block_rows = block ? q_.block_rows : 0;
    t->prequant.block_cols = block ? q_.block_cols : 0;
    t->prequant.sources = {weight, scale};
    return Status::Ok();
  }

  Status MarkGptq(const std::string& module, TensorSpec* t) {
    const int64_t n = t->shape[0], k = t->shape[1];
    const std::string qweight = module + ".qweight", qzeros = module + ".qzeros", scales = module + ".scales",
                      g_idx = module + ".g_idx";
    const int64_t g = q_.gptq.group_size < 0 ? k : q_.gptq.group_size;
    DType scale_dtype = DType::kF16;
    bool has_g_idx = synthesized();
    if (!synthesized()) {
      if (Find(qweight) == nullptr) {
        const TensorSpec* w = Find(t->name);
        if (w != nullptr && IsFloatingPoint(w->dtype)) return Status::Ok();  // left unquantized (e.g. lm_head)
      }
      if (n % 8 != 0 || k % 8 != 0 || k % g != 0) {
        return MakeError(ErrorCode::kUnsupported, Where(qweight) + ": a GPTQ weight of " + std::to_string(n) + " x " +
                                                      std::to_string(k) + " (rows and columns must be multiples of 8 "
                                                      "and the group size " + std::to_string(g) + " must divide the columns)");
      }
      BIGPLAN_RETURN_IF_ERROR(Expect(qweight, Find(qweight), {DType::kI32}, {{k / 8, n}}, "packed 4-bit values"));
      BIGPLAN_RETURN_IF_ERROR(Expect(qzeros, Find(qzeros), {DType::kI32}, {{k / g, n / 8}}, "packed zeros"));
      BIGPLAN_RETURN_IF_ERROR(
          Expect(scales, Find(scales), {DType::kF16, DType::kBF16, DType::kF32}, {{k / g, n}}, "scales"));
      scale_dtype = Find(scales)->dtype;
      if (const TensorSpec* gi = Find(g_idx); gi != nullptr) {
        BIGPLAN_RETURN_IF_ERROR(Expect(g_idx, gi, {DType::kI32}, {{k}}, "group index"));
        has_g_idx = true;
      }
    }
    // Act-order (desc_act, or any g_idx that is not c / g) is run: the loader orders the columns by group and the
    // kernels multiply with the activations in the same order (formats/quant.h FromGptq).
    bool permuted = q_.gptq.desc_act;
    if (has_g_idx && !synthesized()) BIGPLAN_RETURN_IF_ERROR(CheckGIdx(g_idx, k, g, &permuted));
    t->dtype = scale_dtype;
    t->format = quant::Format::kInt4;
    t->group = g;
    t->prequant.kind = PreQuant::Kind::kGptq;
    t->prequant.v1_zero_offset = q_.gptq.v1_zero_offset;
    t->prequant.act_order = permuted;
    t->prequant.sources = {qweight, qzeros, scales};
    if (has_g_idx) t->prequant.sources.push_back(g_idx);
    return Status::Ok();
  }

  // With the checkpoint at hand: every g_idx entry names a group, and every group holds exactly g columns (in order,
  // c / g, or permuted: act-order, which sets *permuted).
  Status CheckGIdx(const std::string& name, int64_t k, int64_t g, bool* permuted) const {
    if (options_.checkpoint == nullptr) return Status::Ok();
    const TensorLocation* loc = options_.checkpoint->Find(name);
    if (loc == nullptr || loc->shard >= options_.checkpoint->shard_paths().size()) return Status::Ok();
    const std::string& path = options_.checkpoint->shard_paths()[loc->shard];
    std::vector<int32_t> values(static_cast<size_t>(k));
    std::ifstream in(path, std::ios::binary);
    in.seekg(static_cast<std::streamoff>(loc->offset));
    in.read(reinterpret_cast<char*>(values.data()), static_cast<std::streamsize>(k * 4));
    if (!in) return MakeError(ErrorCode::kCorrupt, Where(name) + ": cannot read its " + std::to_string(k * 4) + " bytes");
    const int64_t groups = k / g;
    std::vector<int64_t> count(static_cast<size_t>(groups), 0);
    for (int64_t c = 0; c < k; ++c) {
      if (values[c] < 0 || values[c] >= groups) {
        return MakeError(ErrorCode::kCorrupt, Where(name) + ": column " + std::to_string(c) + " is in group " +
                                                  std::to_string(values[c]) + ", outside 0.." +
                                                  std::to_string(groups - 1));
      }
      ++count[static_cast<size_t>(values[c])];
      if (values[c] != c / g) *permuted = true;
    }
    for (int64_t i = 0; i < groups; ++i) {
      if (count[static_cast<size_t>(i)] != g) {
        return MakeError(ErrorCode::kCorrupt, Where(name) + ": group " + std::to_string(i) + " holds " +
                                                  std::to_string(count[static_cast<size_t>(i)]) + " columns, not " +
                                                  std::to_string(g));
      }
    }
    return Status::Ok();
  }

  const quant::CheckpointQuant& q_;
  const HfImportOptions& options_;
  const std::string& source_;
  std::unordered_map<std::string, const TensorSpec*> by_name_;
};

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
  Result<quant::CheckpointQuant> q = quant::ParseQuantizationConfig(config);
  if (!q.ok()) return WithContext(q.take_error(), source + ": quantization_config");
  if (q->kind != quant::CheckpointQuant::Kind::kNone) {
    PreQuantMarker marker(*q, options, source);
    BIGPLAN_RETURN_IF_ERROR(marker.Apply(&*m));
  }
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
    options.checkpoint = checkpoint;
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
