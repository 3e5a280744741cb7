#include "tools/tiny_prequant.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include <nlohmann/json.hpp>

#include "formats/quant.h"

namespace bigplan {
namespace {

namespace fs = std::filesystem;

constexpr int64_t kHidden = 64, kInter = 128, kLayers = 2, kHeads = 4, kKvHeads = 2, kHeadDim = 16, kVocab = 256;
constexpr int64_t kBlock = 32;  // fp8 weight_block_size [32, 32]
constexpr int64_t kGroup = 32;  // gptq group_size

template <typename T>
void Append(std::string* s, T v) {
  s->append(reinterpret_cast<const char*>(&v), sizeof(T));
}

std::string F32Bytes(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
}

Status WriteText(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  out.close();
  if (!out) return MakeError(ErrorCode::kIo, path + ": cannot write");
  return Status::Ok();
}

std::string ConfigJson(bool quantized, TinyQuant kind) {
  nlohmann::ordered_json c;
  c["architectures"] = {"LlamaForCausalLM"};
  c["model_type"] = "llama";
  c["hidden_size"] = kHidden;
  c["intermediate_size"] = kInter;
  c["num_hidden_layers"] = kLayers;
  c["num_attention_heads"] = kHeads;
  c["num_key_value_heads"] = kKvHeads;
  c["head_dim"] = kHeadDim;
  c["vocab_size"] = kVocab;
  c["max_position_embeddings"] = 128;
  c["rms_norm_eps"] = 1e-6;
  c["hidden_act"] = "silu";
  c["rope_theta"] = 10000.0;
  c["tie_word_embeddings"] = false;
  c["bos_token_id"] = 1;
  c["eos_token_id"] = 2;
  c["torch_dtype"] = "float32";
  if (quantized) {
    nlohmann::ordered_json q;
    switch (kind) {
      case TinyQuant::kFp8Block:
        q["quant_method"] = "fp8";
        q["activation_scheme"] = "dynamic";
        q["fmt"] = "e4m3";
        q["weight_block_size"] = {kBlock, kBlock};
        q["modules_to_not_convert"] = {"lm_head"};
        break;
      case TinyQuant::kFp8Channel:
        q["quant_method"] = "fbgemm_fp8";
        q["activation_scale_ub"] = 1200.0;
        q["modules_to_not_convert"] = {"lm_head"};
        break;
      case TinyQuant::kGptq:
      case TinyQuant::kGptqActOrder:
        q["quant_method"] = "gptq";
        q["bits"] = 4;
        q["group_size"] = kGroup;
        q["desc_act"] = kind == TinyQuant::kGptqActOrder;
        q["sym"] = false;
        q["checkpoint_format"] = "gptq";
        q["lm_head"] = false;
        break;
    }
    c["quantization_config"] = q;
  }
  return c.dump(2) + "\n";
}

struct Maker {
  TinyQuant kind;
  std::mt19937_64 rng;
  std::vector<RawTensor> quantized;  // the pre-quantized checkpoint
  std::vector<RawTensor> reference;  // the same model, F32

  float Uniform(float lo, float hi) { return std::uniform_real_distribution<float>(lo, hi)(rng); }
  int Int(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); }

  void Plain(const std::string& name, std::vector<int64_t> shape, bool norm) {
    int64_t numel = 1;
    for (int64_t d : shape) numel *= d;
    std::vector<float> v(numel);
    for (float& x : v) x = norm ? 1.0f + Uniform(-0.1f, 0.1f) : Uniform(-0.05f, 0.05f);
    RawTensor t{name, DType::kF32, shape, F32Bytes(v)};
    quantized.push_back(t);
    reference.push_back(std::move(t));
  }

  // A linear weight [n, k] named module + ".weight".
  void Linear(const std::string& module, int64_t n, int64_t k) {
    std::vector<float> w(n * k);
    if (kind == TinyQuant::kGptq || kind == TinyQuant::kGptqActOrder) {
      Gptq(module, n, k, &w);
    } else {
      Fp8(module, n, k, &w);
    }
    reference.push_back(RawTensor{module + ".weight", DType::kF32, {n, k}, F32Bytes(w)});
  }

  void Fp8(const std::string& module, int64_t n, int64_t k, std::vector<float>* w) {
    const bool block = kind == TinyQuant::kFp8Block;
    const int64_t srows = block ? n / kBlock : n, scols = block ? k / kBlock : 1;
    std::vector<float> scale(srows * scols);
    for (float& s : scale) s = Uniform(0.5f, 1.5f) * (0.08f / 448.0f);
    std::string codes(n * k, '\0');
    for (int64_t r = 0; r < n; ++r) {
      for (int64_t c = 0; c < k; ++c) {
        uint8_t code = quant::FloatToFp8E4M3(Uniform(-448.0f, 448.0f) * (Int(0, 3) == 0 ? 0.01f : 1.0f));
        codes[r * k + c] = static_cast<char>(code);
        const float s = block ? scale[(r / kBlock) * scols + c / kBlock] : scale[r];
        (*w)[r * k + c] = quant::Fp8E4M3ToFloat(code) * s;
      }
    }
    quantized.push_back(RawTensor{module + ".weight", DType::kF8E4M3, {n, k}, codes});
    if (block) {
      quantized.push_back(RawTensor{module + ".weight_scale_inv", DType::kF32, {srows, scols}, F32Bytes(scale)});
    } else {
      quantized.push_back(RawTensor{module + ".weight_scale", DType::kF32, {n, 1}, F32Bytes(scale)});
      quantized.push_back(RawTensor{module + ".input_scale_ub", DType::kF32, {1}, F32Bytes({1200.0f})});
    }
  }

  void Gptq(const std::string& module, int64_t n, int64_t k, std::vector<float>* w) {
    const int64_t groups = k / kGroup;
    std::vector<int> q(n * k), z(groups * n);
    std::vector<float> s(groups * n);
    for (int& v : q) v = Int(0, 15);
    for (int& v : z) v = Int(1, 15);  // stored as z - 1 (checkpoint_format "gptq")
    for (float& v : s) v = static_cast<float>(Int(4, 15)) / 1024.0f;
    // Column c's group: in order, or scattered (act-order: c mod groups, so each group keeps kGroup columns).
    auto group_of = [&](int64_t c) { return kind == TinyQuant::kGptqActOrder ? c % groups : c / kGroup; };
    for (int64_t r = 0; r < n; ++r)
      for (int64_t c = 0; c < k; ++c)
        (*w)[r * k + c] = static_cast<float>(q[r * k + c] - z[group_of(c) * n + r]) * s[group_of(c) * n + r];
    std::string qweight, qzeros, scales, g_idx;
    for (int64_t j = 0; j < k / 8; ++j) {
      for (int64_t col = 0; col < n; ++col) {
        uint32_t word = 0;
        for (int i = 0; i < 8; ++i) word |= static_cast<uint32_t>(q[col * k + 8 * j + i]) << (4 * i);
        Append(&qweight, word);
      }
    }
    for (int64_t g = 0; g < groups; ++g) {
      for (int64_t j = 0; j < n / 8; ++j) {
        uint32_t word = 0;
        for (int i = 0; i < 8; ++i) word |= static_cast<uint32_t>(z[g * n + 8 * j + i] - 1) << (4 * i);
        Append(&qzeros, word);
      }
      for (int64_t col = 0; col < n; ++col) Append(&scales, FloatToF16(s[g * n + col]));
    }
    for (int64_t c = 0; c < k; ++c) Append(&g_idx, static_cast<int32_t>(group_of(c)));
    quantized.push_back(RawTensor{module + ".qweight", DType::kI32, {k / 8, n}, qweight});
    quantized.push_back(RawTensor{module + ".qzeros", DType::kI32, {groups, n / 8}, qzeros});
    quantized.push_back(RawTensor{module + ".scales", DType::kF16, {groups, n}, scales});
    quantized.push_back(RawTensor{module + ".g_idx", DType::kI32, {k}, g_idx});
  }
};

}  // namespace

Result<TinyQuant> ParseTinyQuant(const std::string& name) {
  if (name == "fp8-block") return TinyQuant::kFp8Block;
  if (name == "fp8-channel") return TinyQuant::kFp8Channel;
  if (name == "gptq") return TinyQuant::kGptq;
  if (name == "gptq-act") return TinyQuant::kGptqActOrder;
  return MakeError(ErrorCode::kInvalidArgument,
                   "\"" + name + "\" is not a tiny pre-quantized layout (fp8-block, fp8-channel, gptq, gptq-act)");
}

Status WriteSafetensorsFile(const std::string& path, const std::vector<RawTensor>& tensors) {
  nlohmann::ordered_json header;
  header["__metadata__"] = {{"format", "pt"}};
  uint64_t offset = 0;
  for (const RawTensor& t : tensors) {
    header[t.name] = {{"dtype", DTypeString(t.dtype)}, {"shape", t.shape}, {"data_offsets", {offset, offset + t.bytes.size()}}};
    offset += t.bytes.size();
  }
  std::string h = header.dump();
  while (h.size() % 8 != 0) h += ' ';
  std::string file;
  Append(&file, static_cast<uint64_t>(h.size()));
  file += h;
  for (const RawTensor& t : tensors) file += t.bytes;
  return WriteText(path, file);
}

Status WriteTinyPreQuantLlama(const std::string& dir, const std::string& reference_dir, TinyQuant kind,
                              const TinyPreQuantOptions& options) {
  Maker m{kind, std::mt19937_64(options.seed), {}, {}};
  m.Plain("model.embed_tokens.weight", {kVocab, kHidden}, false);
  for (int64_t l = 0; l < kLayers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    m.Plain(p + "input_layernorm.weight", {kHidden}, true);
    m.Linear(p + "self_attn.q_proj", kHeads * kHeadDim, kHidden);
    m.Linear(p + "self_attn.k_proj", kKvHeads * kHeadDim, kHidden);
    m.Linear(p + "self_attn.v_proj", kKvHeads * kHeadDim, kHidden);
    m.Linear(p + "self_attn.o_proj", kHidden, kHeads * kHeadDim);
    m.Plain(p + "post_attention_layernorm.weight", {kHidden}, true);
    m.Linear(p + "mlp.gate_proj", kInter, kHidden);
    m.Linear(p + "mlp.up_proj", kInter, kHidden);
    m.Linear(p + "mlp.down_proj", kHidden, kInter);
  }
  m.Plain("model.norm.weight", {kHidden}, true);
  m.Plain("lm_head.weight", {kVocab, kHidden}, false);

  std::string config = ConfigJson(true, kind);
  if (options.mutate) options.mutate(&m.quantized, &config);
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return MakeError(ErrorCode::kIo, dir + ": cannot create: " + ec.message());
  BIGPLAN_RETURN_IF_ERROR(WriteText((fs::path(dir) / "config.json").string(), config));
  BIGPLAN_RETURN_IF_ERROR(WriteSafetensorsFile((fs::path(dir) / "model.safetensors").string(), m.quantized));
  if (!reference_dir.empty()) {
    fs::create_directories(reference_dir, ec);
    if (ec) return MakeError(ErrorCode::kIo, reference_dir + ": cannot create: " + ec.message());
    BIGPLAN_RETURN_IF_ERROR(WriteText((fs::path(reference_dir) / "config.json").string(), ConfigJson(false, kind)));
    BIGPLAN_RETURN_IF_ERROR(
        WriteSafetensorsFile((fs::path(reference_dir) / "model.safetensors").string(), m.reference));
  }
  return Status::Ok();
}

}  // namespace bigplan
