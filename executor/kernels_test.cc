// The model kernels against Hugging Face transformers: tiny random-weight models of each family are made by
// tests/reference/make_tiny_models.py (run with the venv's Python), then every block is run in order over views of
// the checkpoint with a KV cache owned by the test, and the logits of the prefill and of each KV-cached decode step
// are compared with transformers' (float32: max|a-b| / max|b| <= 1e-4), as are the greedy tokens.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "arch/binding.h"
#include "arch/registry.h"
#include "executor/kernels.h"
#include "formats/checkpoint.h"
#include "formats/mapped_file.h"
#include "formats/safetensors.h"
#include "support/result.h"

#ifdef BIGPLAN_TEST_CUDA
#include <c10/cuda/CUDAFunctions.h>
#endif

namespace bigplan {
namespace {

namespace fs = std::filesystem;

// The compute device: the CPU, or CUDA device 0 in the "gpu"-tagged build. There, blocks also run under
// LibTorch's sync debug mode "error": a kernel that synchronizes the host with the device fails its block.
#ifdef BIGPLAN_TEST_CUDA
at::Device TestDevice() { return at::Device(at::kCUDA, 0); }
struct NoSyncScope {
  NoSyncScope() { c10::cuda::warning_state().set_sync_debug_mode(c10::cuda::SyncDebugMode::L_ERROR); }
  ~NoSyncScope() { c10::cuda::warning_state().set_sync_debug_mode(c10::cuda::SyncDebugMode::L_DISABLED); }
};
#else
at::Device TestDevice() { return at::Device(at::kCPU); }
struct NoSyncScope {};
#endif

const std::vector<std::string>& Families() {
  static const std::vector<std::string> kFamilies = {
      "llama",      "llama_gqa",  "llama_linear",  "llama_dynamic",   "mistral", "mistral_sliding",
      "qwen2",      "qwen2_sliding", "qwen2_yarn", "phi3",            "phi3_longrope", "gpt2",
      "gpt2_scaled", "gptj",      "mixtral",       "qwen2_moe",  "qwen2_moe_sparse_step", "qwen3_moe"};
  return kFamilies;
}

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

// Runs the generator once per test binary (all families), unless BIGPLAN_TINY_MODELS names a directory made with
// `make_tiny_models.py --out-root DIR --families all`.
const std::string& ModelsRoot() {
  static std::once_flag once;
  static std::string root;
  std::call_once(once, [] {
    root = Env("BIGPLAN_TINY_MODELS");
    if (!root.empty()) return;
    const std::string srcdir = Env("TEST_SRCDIR");
    const std::string tmp = Env("TEST_TMPDIR").empty() ? "/tmp" : Env("TEST_TMPDIR");
    root = tmp + "/tiny_models";
    std::string python = srcdir + "/torch/python3.sh";
    std::string script = srcdir + "/bigplan/tests/reference/make_tiny_models.py";
    std::string cmd = "'" + python + "' '" + script + "' --out-root '" + root + "' --families all > '" + tmp +
                      "/make_tiny_models.log' 2>&1";
    int rc = std::system(cmd.c_str());
    if (rc != 0) {
      std::fprintf(stderr, "generator failed (%d): %s\n", rc, cmd.c_str());
      std::string log = "cat '" + tmp + "/make_tiny_models.log' >&2";
      (void)std::system(log.c_str());
      root.clear();
    }
  });
  return root;
}

at::ScalarType ToScalarType(DType d) {
  switch (d) {
    case DType::kF32: return at::kFloat;
    case DType::kF16: return at::kHalf;
    case DType::kBF16: return at::kBFloat16;
    case DType::kF64: return at::kDouble;
    case DType::kI64: return at::kLong;
    case DType::kI32: return at::kInt;
    case DType::kI16: return at::kShort;
    case DType::kI8: return at::kChar;
    case DType::kU8: return at::kByte;
    case DType::kBool: return at::kBool;
    default: return at::kFloat;
  }
}

// Tensors as from_blob views of memory-mapped files: a checkpoint (Checkpoint::Open), or one safetensors file.
class TensorFiles {
 public:
  Status AddCheckpoint(const std::string& dir) {
    BIGPLAN_ASSIGN_OR_RETURN(Checkpoint ckpt, Checkpoint::Open(dir));
    std::vector<MappedFile*> maps;
    for (const std::string& shard : ckpt.shard_paths()) {
      BIGPLAN_ASSIGN_OR_RETURN(MappedFile f, MappedFile::Open(shard));
      maps_.push_back(std::make_unique<MappedFile>(std::move(f)));
      maps.push_back(maps_.back().get());
    }
    for (const TensorLocation& loc : ckpt.tensors()) {
      BIGPLAN_ASSIGN_OR_RETURN(const uint8_t* data, maps[loc.shard]->View(loc.offset, loc.size_bytes));
      tensors_[loc.name] = at::from_blob(const_cast<uint8_t*>(data), loc.shape,
                                         at::TensorOptions().dtype(ToScalarType(loc.dtype)));
    }
    num_shards_ = ckpt.shard_paths().size();
    return Status::Ok();
  }
  Status Add(const std::string& path) {
    BIGPLAN_ASSIGN_OR_RETURN(SafetensorsFile f, SafetensorsFile::Open(path));
    files_.push_back(std::make_unique<SafetensorsFile>(std::move(f)));
    const SafetensorsFile& file = *files_.back();
    for (const TensorInfo& info : file.header().tensors) {
      BIGPLAN_ASSIGN_OR_RETURN(const uint8_t* data, file.TensorData(info.name));
      tensors_[info.name] = at::from_blob(const_cast<uint8_t*>(data), info.shape,
                                          at::TensorOptions().dtype(ToScalarType(info.dtype)));
    }
    return Status::Ok();
  }
  const std::map<std::string, at::Tensor>& tensors() const { return tensors_; }
  at::Tensor Get(const std::string& name) const {
    auto it = tensors_.find(name);
    return it == tensors_.end() ? at::Tensor() : it->second;
  }
  const SafetensorsFile& file(size_t i) const { return *files_[i]; }
  size_t num_shards() const { return num_shards_; }

 private:
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::vector<std::unique_ptr<MappedFile>> maps_;
  size_t num_shards_ = 0;
  std::map<std::string, at::Tensor> tensors_;
};

using arch::BlockKind;
using arch::Slot;

// Weights by checkpoint name (`m`), bound to slots as the executor's loader binds them (arch::BindBlock), or set
// directly in `slots`.
class MapWeights : public BlockWeights {
 public:
  at::Tensor Find(Slot slot) const override {
    const size_t s = static_cast<size_t>(slot);
    return s < slots.size() ? slots[s] : at::Tensor();
  }
  std::string Name(Slot slot) const override {
    const size_t s = static_cast<size_t>(slot);
    return s >= names.size() || names[s].empty() ? BlockWeights::Name(slot) : names[s];
  }
  Status Bind(const ModelSpec& spec, const std::vector<arch::BlockRef>& blocks, size_t self) {
    BIGPLAN_ASSIGN_OR_RETURN(const arch::FamilyInfo* family, arch::LookupFamily(spec.architecture));
    std::vector<std::string> keys;
    std::vector<std::vector<int64_t>> shapes;
    for (const auto& [name, t] : m) {
      keys.push_back(name);
      shapes.emplace_back(t.sizes().begin(), t.sizes().end());
    }
    std::vector<arch::BlockTensor> tensors;
    for (size_t i = 0; i < keys.size(); ++i) tensors.push_back(arch::BlockTensor{keys[i], shapes[i]});
    BIGPLAN_ASSIGN_OR_RETURN(arch::SlotTable table,
                             arch::BindBlock(*family, ShapeConfigOf(spec), blocks, self, tensors, blocks[self].prefix));
    slots.assign(table.size(), at::Tensor());
    names.assign(table.size(), std::string());
    for (size_t s = 0; s < table.size(); ++s) {
      if (table[s] < 0) continue;
      slots[s] = m.at(keys[table[s]]);
      names[s] = keys[table[s]];
    }
    return Status::Ok();
  }
  std::map<std::string, at::Tensor> m;
  std::vector<at::Tensor> slots = std::vector<at::Tensor>(arch::kSlotCount);
  std::vector<std::string> names = std::vector<std::string>(arch::kSlotCount);
};

struct Block {
  BlockKind kind = BlockKind::kEmbedding;
  std::string prefix;
  int layer = -1;
  MapWeights weights;
};

struct TinyModel {
  std::string family;
  ModelSpec spec;
  TensorFiles checkpoint;
  TensorFiles reference;
  int steps = 0;
};

Result<ModelSpec> SpecFromJson(const std::string& text) {
  nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (!j.is_object()) return MakeError(ErrorCode::kCorrupt, "spec metadata is not a JSON object");
  ModelSpec s;
  s.architecture = j.at("architecture").get<std::string>();
  s.hidden_size = j.at("hidden_size").get<int64_t>();
  s.num_layers = j.at("num_layers").get<int64_t>();
  s.num_heads = j.at("num_heads").get<int64_t>();
  s.num_kv_heads = j.at("num_kv_heads").get<int64_t>();
  s.head_dim = j.at("head_dim").get<int64_t>();
  s.intermediate_size = j.at("intermediate_size").get<int64_t>();
  s.vocab_size = j.at("vocab_size").get<int64_t>();
  s.max_position_embeddings = j.at("max_position_embeddings").get<int64_t>();
  s.norm_eps = j.at("norm_eps").get<double>();
  s.rotary_dim = j.at("rotary_dim").get<int64_t>();
  s.attention_bias = j.at("attention_bias").get<bool>();
  s.mlp_bias = j.at("mlp_bias").get<bool>();
  s.tie_word_embeddings = j.at("tie_word_embeddings").get<bool>();
  s.activation = j.at("activation").get<std::string>();
  s.sliding_window = j.value("sliding_window", int64_t{0});
  if (j.contains("sliding_window_layers")) s.sliding_window_layers = j["sliding_window_layers"].get<std::vector<bool>>();
  s.scale_attn_weights = j.value("scale_attn_weights", true);
  s.scale_attn_by_inverse_layer_idx = j.value("scale_attn_by_inverse_layer_idx", false);
  s.reorder_and_upcast_attn = j.value("reorder_and_upcast_attn", false);
  s.num_experts = j.value("num_experts", int64_t{0});
  s.num_experts_per_tok = j.value("num_experts_per_tok", int64_t{0});
  s.moe_intermediate_size = j.value("moe_intermediate_size", int64_t{0});
  s.shared_expert_intermediate_size = j.value("shared_expert_intermediate_size", int64_t{0});
  s.norm_topk_prob = j.value("norm_topk_prob", false);
  if (j.contains("sparse_layers")) s.sparse_layers = j["sparse_layers"].get<std::vector<bool>>();
  s.qk_norm = j.value("qk_norm", false);
  return s;
}

// The typed RoPE of a tiny model as the planner resolves it: its config.json (written by transformers'
// save_pretrained) through the registry's ParseHfConfig and ResolveRope. The kernels compute from it alone, so the
// logits comparisons below check the registry's RoPE parsing and the kernels' typed path against transformers.
Result<arch::RopeParams> RopeOfCheckpoint(const fs::path& config_path) {
  std::ifstream in(config_path);
  if (!in) return MakeError(ErrorCode::kNotFound, config_path.string() + ": cannot open");
  nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
  BIGPLAN_ASSIGN_OR_RETURN(arch::ParsedConfig parsed, arch::ParseHfConfig(j, config_path.string()));
  return arch::ResolveRope(*parsed.family, parsed.config);
}

const TinyModel& LoadTiny(const std::string& family) {
  static std::mutex mu;
  static std::map<std::string, std::unique_ptr<TinyModel>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto& slot = cache[family];
  if (slot) return *slot;
  auto m = std::make_unique<TinyModel>();
  m->family = family;
  const std::string root = ModelsRoot();
  if (root.empty()) {
    ADD_FAILURE() << "tiny models could not be generated";
    slot = std::move(m);
    return *slot;
  }
  const fs::path dir = fs::path(root) / family;
  Status st = m->checkpoint.AddCheckpoint(dir.string());
  EXPECT_TRUE(st.ok()) << (st.ok() ? "" : st.error().ToString());
  EXPECT_GE(m->checkpoint.num_shards(), 2u) << family << ": expected a sharded checkpoint";
  st = m->reference.Add((dir / "reference.safetensors").string());
  EXPECT_TRUE(st.ok()) << (st.ok() ? "" : st.error().ToString());
  if (st.ok()) {
    const auto& meta = m->reference.file(0).header().metadata;
    auto spec = SpecFromJson(meta.at("spec"));
    EXPECT_TRUE(spec.ok());
    if (spec.ok()) m->spec = *spec;
    Result<arch::RopeParams> rope = RopeOfCheckpoint(dir / "config.json");
    EXPECT_TRUE(rope.ok()) << family << ": " << (rope.ok() ? "" : rope.error().ToString());
    if (rope.ok()) {
      m->spec.rope = *rope;
      // The registry agrees with the generator's own reading of the config on the rotary dims.
      if (rope->rotary_dim != 0) EXPECT_EQ(rope->rotary_dim, m->spec.rotary_dim > 0 ? m->spec.rotary_dim : m->spec.head_dim) << family;
    }
    m->steps = std::stoi(meta.at("steps"));
  }
  slot = std::move(m);
  return *slot;
}

// The blocks in execution order, each with the checkpoint tensors under its prefix plus its tied weights, bound to
// their slots.
struct Layout {
  bool gpt2_legacy_names = false;        // GPT-2 names without the "transformer." root ("wte.weight", "h.0.")
};

std::vector<std::unique_ptr<Block>> MakeBlocks(const TinyModel& m, at::ScalarType dtype, Layout layout = {}) {
  auto rename = [&](const std::string& name) {
    const std::string root = "transformer.";
    return layout.gpt2_legacy_names && name.rfind(root, 0) == 0 ? name.substr(root.size()) : name;
  };
  struct Desc {
    BlockKind kind;
    std::string prefix;
    int layer;
    std::vector<std::string> tied;
  };
  std::vector<Desc> descs;
  const ModelSpec& s = m.spec;
  const bool llama = s.architecture != "gpt2" && s.architecture != "gptj";  // model.* layout
  const std::string root = llama ? "model." : "transformer.";
  const std::string emb = llama ? "model.embed_tokens." : "transformer.wte.";
  const std::string emb_weight = emb + "weight";
  descs.push_back({BlockKind::kEmbedding, emb, -1, {}});
  if (s.architecture == "gpt2") descs.push_back({BlockKind::kPositionEmbedding, "transformer.wpe.", -1, {}});
  for (int i = 0; i < s.num_layers; ++i) {
    descs.push_back({BlockKind::kDecoderLayer, root + (llama ? "layers." : "h.") + std::to_string(i) + ".", i, {}});
  }
  descs.push_back({BlockKind::kFinalNorm, llama ? "model.norm." : "transformer.ln_f.", -1, {}});
  std::vector<std::string> tied;
  if (s.tie_word_embeddings) tied.push_back(emb_weight);
  descs.push_back({BlockKind::kLmHead, "lm_head.", -1, tied});

  std::vector<std::unique_ptr<Block>> blocks;
  std::map<std::string, int> used;
  for (const auto& d : descs) {
    auto b = std::make_unique<Block>();
    b->kind = d.kind;
    b->prefix = rename(d.prefix);
    b->layer = d.layer;
    for (const auto& [name, t] : m.checkpoint.tensors()) {
      if (name.rfind(d.prefix, 0) == 0) {
        b->weights.m[rename(name)] = t.to(TestDevice(), dtype);
        used[name]++;
      }
    }
    for (const auto& name : d.tied) {
      at::Tensor t = m.checkpoint.Get(name);
      EXPECT_TRUE(t.defined()) << name;
      if (t.defined()) b->weights.m[rename(name)] = t.to(TestDevice(), dtype);
      used[name]++;
    }
    blocks.push_back(std::move(b));
  }
  for (const auto& [name, t] : m.checkpoint.tensors()) {
    EXPECT_EQ(used[name], name == emb_weight && s.tie_word_embeddings ? 2 : 1) << "tensor " << name;
  }
  std::vector<arch::BlockRef> refs;
  for (const auto& b : blocks) refs.push_back(arch::BlockRef{b->kind, b->prefix, b->layer});
  for (size_t i = 0; i < blocks.size(); ++i) {
    Status st = blocks[i]->weights.Bind(s, refs, i);
    EXPECT_TRUE(st.ok()) << blocks[i]->prefix << ": " << (st.ok() ? "" : st.error().ToString());
  }
  return blocks;
}

double MaxRelError(const at::Tensor& a, const at::Tensor& b) {
  double denom = std::max(b.abs().max().item<double>(), 1e-6);
  return (a.to(at::kFloat) - b.to(at::kFloat)).abs().max().item<double>() / denom;
}

struct Runner {
  const TinyModel& m;
  std::unique_ptr<ModelKernels> kernels;
  std::vector<std::unique_ptr<Block>> blocks;
  std::vector<KvCache> caches;

  Runner(const TinyModel& model, at::ScalarType dtype, int64_t max_batch, int64_t max_seq,
         Layout layout = {})
      : m(model) {
    auto k = MakeModelKernels(m.spec);
    EXPECT_TRUE(k.ok()) << (k.ok() ? "" : k.error().ToString());
    if (k.ok()) kernels = std::move(*k);
    blocks = MakeBlocks(m, dtype, layout);
    const int64_t kv_heads = m.spec.num_kv_heads;
    for (int64_t i = 0; i < m.spec.num_layers; ++i) {
      // NaN-filled: a kernel that reads a position it has not written shows up in the logits.
      auto opts = at::TensorOptions().dtype(dtype).device(TestDevice());
      caches.push_back({at::full({max_batch, kv_heads, max_seq, m.spec.head_dim}, NAN, opts),
                        at::full({max_batch, kv_heads, max_seq, m.spec.head_dim}, NAN, opts)});
    }
  }

  // Runs every block; returns the logits. With `static_step`, a single-token step takes its position from a device
  // tensor (ForwardContext::position, the CUDA-graph path).
  at::Tensor Forward(const at::Tensor& ids, int64_t start_pos, bool last_only = false, bool static_step = false) {
    ForwardContext ctx;
    ctx.token_ids = ids.to(TestDevice());
    ctx.start_pos = start_pos;
    ctx.logits_last_only = last_only;
    if (static_step) ctx.position = at::full({1}, start_pos, at::TensorOptions().dtype(at::kLong).device(TestDevice()));
    at::Tensor hidden, logits;
    {
      // Mixture-of-experts layers read the router's choices on the host (BlockWeights::BeginExperts, one
      // synchronization per sparse layer, by design); every other block must never synchronize.
      std::optional<NoSyncScope> no_sync;
      if (m.spec.num_experts == 0) no_sync.emplace();
      for (auto& b : blocks) {
        KvCache* kv = b->layer >= 0 ? &caches[b->layer] : nullptr;
        Status st = kernels->RunBlock(b->kind, b->prefix, b->layer, b->weights, ctx, kv, &hidden, &logits);
        EXPECT_TRUE(st.ok()) << b->prefix << ": " << (st.ok() ? "" : st.error().ToString());
        if (!st.ok()) return at::Tensor();
      }
    }
    return logits.cpu();
  }
};

class KernelsVsTransformers : public ::testing::TestWithParam<std::string> {};

TEST_P(KernelsVsTransformers, Float32PrefillAndDecodeMatch) {
  const TinyModel& m = LoadTiny(GetParam());
  ASSERT_GT(m.steps, 0);
  Runner r(m, at::kFloat, /*max_batch=*/3, /*max_seq=*/16);
  ASSERT_TRUE(r.kernels);
  const at::Tensor generated = m.reference.Get("generated");
  at::Tensor ids = m.reference.Get("input_ids");
  int64_t pos = 0;
  std::string report;
  for (int step = 0; step <= m.steps; ++step) {
    if (step > 0) ids = m.reference.Get("tokens_" + std::to_string(step));
    at::Tensor logits = r.Forward(ids, pos);
    ASSERT_TRUE(logits.defined());
    const at::Tensor want = m.reference.Get("logits_" + std::to_string(step));
    ASSERT_EQ(logits.sizes(), want.sizes()) << "step " << step;
    EXPECT_EQ(logits.scalar_type(), at::kFloat);
    const double err = MaxRelError(logits, want);
    EXPECT_LE(err, 1e-4) << GetParam() << " step " << step;
    char buf[64];
    std::snprintf(buf, sizeof(buf), "%s%.2e", step ? " " : "", err);
    report += buf;
    at::Tensor greedy = logits.select(1, logits.size(1) - 1).argmax(-1);
    EXPECT_TRUE(at::equal(greedy, generated.select(1, step))) << GetParam() << " step " << step;
    pos += ids.size(1);
  }
  std::printf("[ max rel err ] %-14s prefill, decode 1..%d: %s\n", GetParam().c_str(), m.steps, report.c_str());
  RecordProperty("max_rel_err", report);
}

// Decode steps through the static single-token path (ForwardContext::position, what CUDA graphs replay) match
// transformers where the kernels offer it: for a cache of prompt + steps positions, or of prompt + 1 where the RoPE
// frequencies change past a length (llama_dynamic, phi3_longrope: StaticDecode is false beyond it). Unused cache
// positions hold zeros (the static step attends over the whole cache with a mask).
TEST_P(KernelsVsTransformers, StaticDecodeStepsMatch) {
  const TinyModel& m = LoadTiny(GetParam());
  ASSERT_GT(m.steps, 0);
  const at::Tensor input = m.reference.Get("input_ids");
  const int64_t prompt = input.size(1);
  int steps = m.steps;
  auto probe = MakeModelKernels(m.spec);
  ASSERT_TRUE(probe.ok());
  if (!(*probe)->StaticDecode(prompt + steps)) steps = 1;
  if (!(*probe)->StaticDecode(prompt + steps)) {
    // (GPT-2 and GPT-J have none; mixture-of-experts layers read the router's choices on the host.)
    EXPECT_TRUE(m.spec.architecture == "gpt2" || m.spec.architecture == "gptj" || m.spec.num_experts > 0)
        << "no static decode step";
    GTEST_SKIP() << m.spec.architecture << " has no static decode step";
  }
  Runner r(m, at::kFloat, 2, prompt + steps);
  ASSERT_TRUE(r.kernels);
  for (KvCache& c : r.caches) {
    c.k.zero_();
    c.v.zero_();
  }
  ASSERT_TRUE(r.Forward(input, 0).defined());
  for (int step = 1; step <= steps; ++step) {
    at::Tensor logits = r.Forward(m.reference.Get("tokens_" + std::to_string(step)), prompt + step - 1,
                                  /*last_only=*/false, /*static_step=*/true);
    ASSERT_TRUE(logits.defined());
    EXPECT_LE(MaxRelError(logits, m.reference.Get("logits_" + std::to_string(step))), 1e-4)
        << GetParam() << " step " << step;
  }
}

// Prefill in two chunks (the second attends to the cached first chunk through an explicit causal mask), then
// decode; logits of the last-position-only lm_head.
TEST_P(KernelsVsTransformers, ChunkedPrefillAndLastOnlyLogits) {
  const TinyModel& m = LoadTiny(GetParam());
  ASSERT_GT(m.steps, 0);
  Runner r(m, at::kFloat, /*max_batch=*/2, /*max_seq=*/10);
  ASSERT_TRUE(r.kernels);
  const at::Tensor ids = m.reference.Get("input_ids");
  const at::Tensor want0 = m.reference.Get("logits_0");
  const int64_t n = ids.size(1);
  const int64_t split = n / 2 + 1;
  at::Tensor a = r.Forward(ids.narrow(1, 0, split), 0);
  ASSERT_TRUE(a.defined());
  EXPECT_LE(MaxRelError(a, want0.narrow(1, 0, split)), 1e-4);
  at::Tensor b = r.Forward(ids.narrow(1, split, n - split), split);
  ASSERT_TRUE(b.defined());
  EXPECT_LE(MaxRelError(b, want0.narrow(1, split, n - split)), 1e-4);
  at::Tensor d = r.Forward(m.reference.Get("tokens_1"), n, /*last_only=*/true);
  ASSERT_TRUE(d.defined());
  EXPECT_LE(MaxRelError(d, m.reference.Get("logits_1")), 1e-4);

  // last-only on a multi-token prefill: [batch, 1, vocab] = the last row.
  Runner r2(m, at::kFloat, 2, 10);
  at::Tensor last = r2.Forward(ids, 0, /*last_only=*/true);
  ASSERT_TRUE(last.defined());
  ASSERT_EQ(last.size(1), 1);
  EXPECT_LE(MaxRelError(last, want0.narrow(1, n - 1, 1)), 1e-4);
}

// Half precision on the CPU: the same code path the GPU runs (casts, RMSNorm upcast, SDPA), loosely compared.
TEST_P(KernelsVsTransformers, HalfPrecisionRuns) {
  const TinyModel& m = LoadTiny(GetParam());
  ASSERT_GT(m.steps, 0);
  for (at::ScalarType dtype : {at::kBFloat16, at::kHalf}) {
    Runner r(m, dtype, 2, 16);
    ASSERT_TRUE(r.kernels);
    at::Tensor ids = m.reference.Get("input_ids");
    int64_t pos = 0;
    double worst = 0;
    for (int step = 0; step <= m.steps; ++step) {
      if (step > 0) ids = m.reference.Get("tokens_" + std::to_string(step));
      at::Tensor logits = r.Forward(ids, pos);
      ASSERT_TRUE(logits.defined());
      EXPECT_EQ(logits.scalar_type(), at::kFloat);
      const double err = MaxRelError(logits, m.reference.Get("logits_" + std::to_string(step)));
      // About twice transformers' own error in these dtypes against its float32 run (bf16 ~1.2-1.8e-2,
      // fp16 ~1.3-3.1e-3 on these models).
      // (Mixture-of-experts models: their routers' k-th and (k+1)-th probabilities are >= 3e-3 apart for every
      // token, min_router_gap in the metadata, so bf16 rounding picks the same experts as float32.)
      EXPECT_LE(err, dtype == at::kBFloat16 ? 0.04 : 0.008) << GetParam() << " " << at::toString(dtype)
                                                            << " step " << step;
      worst = std::max(worst, err);
      pos += ids.size(1);
    }
    std::printf("[ max rel err ] %-14s %-8s all steps: %.2e\n", GetParam().c_str(), at::toString(dtype), worst);
  }
}

INSTANTIATE_TEST_SUITE_P(Tiny, KernelsVsTransformers, ::testing::ValuesIn(Families()),
                         [](const ::testing::TestParamInfo<std::string>& info) { return info.param; });

// The importer's other GPT-2 layout: old checkpoints' names without the "transformer." root.
TEST(Gpt2, OtherLayoutsMatch) {
  const TinyModel& m = LoadTiny("gpt2");
  ASSERT_GT(m.steps, 0);
  {
    for (bool legacy : {false, true}) {
      Layout layout;
      layout.gpt2_legacy_names = legacy;
      Runner r(m, at::kFloat, 2, 16, layout);
      ASSERT_TRUE(r.kernels);
      EXPECT_EQ(r.blocks[0]->prefix, legacy ? "wte." : "transformer.wte.");
      at::Tensor logits = r.Forward(m.reference.Get("input_ids"), 0);
      ASSERT_TRUE(logits.defined());
      EXPECT_LE(MaxRelError(logits, m.reference.Get("logits_0")), 1e-4) << legacy;
      logits = r.Forward(m.reference.Get("tokens_1"), m.reference.Get("input_ids").size(1));
      ASSERT_TRUE(logits.defined());
      EXPECT_LE(MaxRelError(logits, m.reference.Get("logits_1")), 1e-4) << legacy;
    }
  }
}

TEST(Gpt2, PositionsBeyondTableAreAnError) {
  const TinyModel& m = LoadTiny("gpt2");
  Runner r(m, at::kFloat, 2, 16);
  ASSERT_TRUE(r.kernels);
  ForwardContext ctx;
  ctx.token_ids = m.reference.Get("input_ids").to(TestDevice());
  ctx.start_pos = m.spec.max_position_embeddings - 1;
  at::Tensor hidden, logits;
  ASSERT_TRUE(r.kernels->RunBlock(BlockKind::kEmbedding, "transformer.wte", -1, r.blocks[0]->weights, ctx, nullptr, &hidden,
                                  &logits)
                  .ok());
  Status st = r.kernels->RunBlock(BlockKind::kPositionEmbedding, "transformer.wpe", -1, r.blocks[1]->weights, ctx, nullptr,
                                  &hidden, &logits);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(st.error().message.find("transformer.wpe"), std::string::npos) << st.error().message;
}

#ifdef BIGPLAN_TEST_CUDA
// The sync check above is live: a host<->device sync inside the scope throws.
TEST(Cuda, SyncDebugModeCatchesSyncs) {
  at::Tensor t = at::ones({1}, at::TensorOptions().device(TestDevice()));
  NoSyncScope no_sync;
  EXPECT_ANY_THROW((void)t.item<float>());
}

// One Llama-3-8B-shaped decoder layer in bf16 (hidden 4096, 32 heads, 8 kv heads, head_dim 128, MLP 14336,
// llama3 rope) over a 4096-token cache: prefill of 512 tokens, then single-token decode steps, all without syncs.
// Prints the decode time per layer (weights are 436 MiB, so ~0.14 ms at H100 bandwidth).
TEST(Cuda, Llama8BLayerShapes) {
  ModelSpec s;
  s.architecture = "llama";
  s.hidden_size = 4096;
  s.num_layers = 1;
  s.num_heads = 32;
  s.num_kv_heads = 8;
  s.head_dim = 128;
  s.intermediate_size = 14336;
  s.vocab_size = 128256;
  s.max_position_embeddings = 131072;
  s.activation = "silu";
  s.rope.type = arch::RopeType::kLlama3;  // Llama 3.1's rope_scaling, typed
  s.rope.theta = 500000.0;
  s.rope.factor = 8.0;
  s.rope.low_freq_factor = 1.0;
  s.rope.high_freq_factor = 4.0;
  s.rope.original_max_position_embeddings = 8192;
  auto k = MakeModelKernels(s);
  ASSERT_TRUE(k.ok()) << k.error().ToString();
  auto opts = at::TensorOptions().dtype(at::kBFloat16).device(TestDevice());
  MapWeights w;
  const std::string p = "model.layers.0.";
  const int64_t h = 4096, q = 4096, kv = 1024, inter = 14336;
  auto rnd = [&](std::vector<int64_t> shape, double scale) { return at::randn(shape, opts) * scale; };
  w.m[p + "self_attn.q_proj.weight"] = rnd({q, h}, 0.02);
  w.m[p + "self_attn.k_proj.weight"] = rnd({kv, h}, 0.02);
  w.m[p + "self_attn.v_proj.weight"] = rnd({kv, h}, 0.02);
  w.m[p + "self_attn.o_proj.weight"] = rnd({h, q}, 0.02);
  w.m[p + "mlp.gate_proj.weight"] = rnd({inter, h}, 0.02);
  w.m[p + "mlp.up_proj.weight"] = rnd({inter, h}, 0.02);
  w.m[p + "mlp.down_proj.weight"] = rnd({h, inter}, 0.02);
  w.m[p + "input_layernorm.weight"] = at::ones({h}, opts);
  w.m[p + "post_attention_layernorm.weight"] = at::ones({h}, opts);
  Status bound = w.Bind(s, {{BlockKind::kDecoderLayer, p}}, 0);
  ASSERT_TRUE(bound.ok()) << bound.error().ToString();
  const int64_t batch = 1, max_seq = 4096, prompt = 512;
  KvCache cache{at::zeros({batch, 8, max_seq, 128}, opts), at::zeros({batch, 8, max_seq, 128}, opts)};
  ForwardContext ctx;
  at::Tensor logits;
  at::Tensor hidden = rnd({batch, prompt, h}, 1.0);
  {
    NoSyncScope no_sync;
    Status st = (*k)->RunBlock(BlockKind::kDecoderLayer, p, 0, w, ctx, &cache, &hidden, &logits);
    ASSERT_TRUE(st.ok()) << st.error().ToString();
  }
  EXPECT_TRUE(hidden.isfinite().all().item<bool>());
  const int warmup = 5, steps = 50;
  for (int i = 0; i < warmup; ++i) {
    ctx.start_pos = prompt + i;
    at::Tensor x = rnd({batch, 1, h}, 1.0);
    ASSERT_TRUE((*k)->RunBlock(BlockKind::kDecoderLayer, p, 0, w, ctx, &cache, &x, &logits).ok());
  }
  c10::cuda::device_synchronize();
  const auto t0 = std::chrono::steady_clock::now();
  {
    NoSyncScope no_sync;
    for (int i = 0; i < steps; ++i) {
      ctx.start_pos = prompt + warmup + i;
      at::Tensor x = rnd({batch, 1, h}, 1.0);
      Status st = (*k)->RunBlock(BlockKind::kDecoderLayer, p, 0, w, ctx, &cache, &x, &logits);
      ASSERT_TRUE(st.ok()) << st.error().ToString();
      hidden = x;
    }
  }
  c10::cuda::device_synchronize();
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_TRUE(hidden.isfinite().all().item<bool>());
  std::printf("[ timing ] llama-8B-shaped layer, bf16, decode at ~%lld cached tokens: %.3f ms/step\n",
              static_cast<long long>(prompt), ms / steps);
}
#endif

// ---- errors are values, naming the block ----

ModelSpec TinyLlamaSpec() {
  ModelSpec s;
  s.architecture = "llama";
  s.hidden_size = 8;
  s.num_layers = 1;
  s.num_heads = 2;
  s.num_kv_heads = 1;
  s.head_dim = 4;
  s.intermediate_size = 16;
  s.vocab_size = 10;
  s.max_position_embeddings = 32;
  s.activation = "silu";
  return s;
}

TEST(MakeModelKernels, RejectsUnknownAndInconsistentSpecs) {
  ModelSpec s = TinyLlamaSpec();
  s.architecture = "mamba";
  auto r = MakeModelKernels(s);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kUnsupported);
  EXPECT_NE(r.error().message.find("mamba"), std::string::npos);

  s = TinyLlamaSpec();
  s.num_kv_heads = 3;
  r = MakeModelKernels(s);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);

  // RoPE comes typed (the plan's config.rope); the registry's ResolveRope refuses malformed configs at plan time
  // (arch/registry_test), and the kernels re-check what a hand-built spec gives them.
  s = TinyLlamaSpec();
  s.architecture = "gptj";
  s.rope.type = arch::RopeType::kLinear;  // GPT-J computes default RoPE only
  s.rope.factor = 2.0;
  r = MakeModelKernels(s);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kUnsupported);
  EXPECT_NE(r.error().message.find("rope type \"linear\" is not supported for gptj"), std::string::npos)
      << r.error().message;
  s.architecture = "gpt2";  // learned positions: no RoPE at all
  EXPECT_EQ(MakeModelKernels(s).error().code, ErrorCode::kUnsupported);

  // longrope needs short_factor and long_factor of rotary_dim / 2 numbers each.
  s = TinyLlamaSpec();
  s.rope.type = arch::RopeType::kLongrope;
  s.rope.original_max_position_embeddings = 8;
  s.rope.short_factor = {1, 1};
  s.rope.long_factor = {1, 1};
  EXPECT_TRUE(MakeModelKernels(s).ok());
  s.rope.long_factor = {1};
  r = MakeModelKernels(s);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(r.error().message.find("long_factor"), std::string::npos) << r.error().message;

  // Partial rotary: Phi-3 computes it, the Llama family refuses it; the typed rope's rotary dims must agree.
  s = TinyLlamaSpec();
  s.head_dim = 8;
  s.rotary_dim = 4;
  r = MakeModelKernels(s);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kUnsupported);
  EXPECT_NE(r.error().message.find("partial rotary"), std::string::npos);
  s.architecture = "phi3";
  EXPECT_TRUE(MakeModelKernels(s).ok());
  s.rope.rotary_dim = 4;
  EXPECT_TRUE(MakeModelKernels(s).ok());
  s.rope.rotary_dim = 6;
  r = MakeModelKernels(s);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(r.error().message.find("disagrees with rotary_dim 4"), std::string::npos) << r.error().message;

  s = TinyLlamaSpec();
  s.rope.type = arch::RopeType::kLlama3;
  s.rope.factor = 8;
  s.rope.original_max_position_embeddings = 32;
  s.rope.low_freq_factor = s.rope.high_freq_factor = 2;
  r = MakeModelKernels(s);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(r.error().message.find("high_freq_factor equals low_freq_factor"), std::string::npos) << r.error().message;

  s = TinyLlamaSpec();
  s.rope.theta = std::nan("");
  r = MakeModelKernels(s);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);

  s = TinyLlamaSpec();
  s.rope.type = static_cast<arch::RopeType>(9);
  EXPECT_FALSE(MakeModelKernels(s).ok());

  s = TinyLlamaSpec();
  s.activation = "mish";
  r = MakeModelKernels(s);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kUnsupported);

  s = TinyLlamaSpec();
  s.rope.type = arch::RopeType::kLinear;
  s.rope.factor = 2.0;
  EXPECT_TRUE(MakeModelKernels(s).ok());
  for (const char* arch : {"mistral", "qwen2"}) {
    s = TinyLlamaSpec();
    s.architecture = arch;
    EXPECT_TRUE(MakeModelKernels(s).ok()) << arch;
  }
}

TEST(RunBlock, ErrorsNameTheBlockAndNothingThrows) {
  ModelSpec s = TinyLlamaSpec();
  auto k = MakeModelKernels(s);
  ASSERT_TRUE(k.ok());
  const ModelKernels& kernels = **k;
  MapWeights w;
  ForwardContext ctx;
  ctx.token_ids = at::zeros({1, 3}, at::kLong);
  at::Tensor hidden, logits;

  // Missing weight: kNotFound naming the slot and the block.
  Status st = kernels.RunBlock(BlockKind::kEmbedding, "model.embed_tokens", -1, w, ctx, nullptr, &hidden, &logits);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, ErrorCode::kNotFound);
  EXPECT_NE(st.error().message.find("block 'model.embed_tokens' (embedding)"), std::string::npos)
      << st.error().message;
  EXPECT_NE(st.error().message.find("token_embedding"), std::string::npos) << st.error().message;

  // A LibTorch failure (a wrongly shaped weight, which load-time binding would refuse): kDevice naming the block.
  w.slots[static_cast<size_t>(Slot::kFinalNorm)] = at::ones({5});
  hidden = at::ones({1, 3, 8});
  st = kernels.RunBlock(BlockKind::kFinalNorm, "model.norm", -1, w, ctx, nullptr, &hidden, &logits);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, ErrorCode::kDevice);
  EXPECT_NE(st.error().message.find("model.norm"), std::string::npos) << st.error().message;

  // Bad hidden shape, unknown kind, missing logits output, decode without a cache.
  hidden = at::ones({1, 3, 7});
  st = kernels.RunBlock(BlockKind::kFinalNorm, "model.norm", -1, w, ctx, nullptr, &hidden, &logits);
  EXPECT_EQ(st.error().code, ErrorCode::kInvalidArgument);
  hidden = at::ones({1, 3, 8});
  st = kernels.RunBlock(static_cast<BlockKind>(99), "model.mixer", -1, w, ctx, nullptr, &hidden, &logits);
  EXPECT_EQ(st.error().code, ErrorCode::kUnsupported);
  st = kernels.RunBlock(BlockKind::kLmHead, "lm_head", -1, w, ctx, nullptr, &hidden, nullptr);
  EXPECT_EQ(st.error().code, ErrorCode::kInvalidArgument);

  MapWeights layer;
  const std::string p = "model.layers.0.";
  for (const char* n : {"q_proj", "o_proj"}) layer.m[p + "self_attn." + n + ".weight"] = at::ones({8, 8});
  for (const char* n : {"k_proj", "v_proj"}) layer.m[p + "self_attn." + n + ".weight"] = at::ones({4, 8});
  for (const char* n : {"gate_proj", "up_proj"}) layer.m[p + "mlp." + n + ".weight"] = at::ones({16, 8});
  layer.m[p + "mlp.down_proj.weight"] = at::ones({8, 16});
  layer.m[p + "input_layernorm.weight"] = at::ones({8});
  layer.m[p + "post_attention_layernorm.weight"] = at::ones({8});
  Status bound = layer.Bind(s, {{BlockKind::kDecoderLayer, p}}, 0);
  ASSERT_TRUE(bound.ok()) << bound.error().ToString();
  ctx.start_pos = 4;
  st = kernels.RunBlock(BlockKind::kDecoderLayer, p, 0, layer, ctx, nullptr, &hidden, &logits);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(st.error().message.find(p), std::string::npos);

  // A cache too short for start_pos + seq.
  KvCache kv{at::zeros({1, 1, 6, 4}), at::zeros({1, 1, 6, 4})};
  st = kernels.RunBlock(BlockKind::kDecoderLayer, p, 0, layer, ctx, &kv, &hidden, &logits);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(st.error().message.find("KV cache"), std::string::npos) << st.error().message;

  // The same layer with a big enough cache works.
  KvCache kv2{at::zeros({1, 1, 8, 4}), at::zeros({1, 1, 8, 4})};
  st = kernels.RunBlock(BlockKind::kDecoderLayer, p, 0, layer, ctx, &kv2, &hidden, &logits);
  EXPECT_TRUE(st.ok()) << st.error().ToString();
  EXPECT_EQ(hidden.sizes(), (std::vector<int64_t>{1, 3, 8}));
}

TEST(BlockWeights, GetNamesTheMissingSlot) {
  MapWeights w;
  w.slots[static_cast<size_t>(Slot::kQ)] = at::ones({1});
  EXPECT_TRUE(w.Get(Slot::kQ).ok());
  auto r = w.Get(Slot::kGateUp);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kNotFound);
  EXPECT_NE(r.error().message.find("gate_up"), std::string::npos) << r.error().message;
}

// What the loader refuses at load time: a tensor the kernel does not read, a mis-shaped one, a missing one.
TEST(BlockWeights, BindingRefusesWhatTheKernelCannotRead) {
  ModelSpec s = TinyLlamaSpec();
  const std::string p = "model.layers.0.";
  MapWeights layer;
  for (const char* n : {"q_proj", "o_proj"}) layer.m[p + "self_attn." + n + ".weight"] = at::ones({8, 8});
  for (const char* n : {"k_proj", "v_proj"}) layer.m[p + "self_attn." + n + ".weight"] = at::ones({4, 8});
  for (const char* n : {"gate_proj", "up_proj"}) layer.m[p + "mlp." + n + ".weight"] = at::ones({16, 8});
  layer.m[p + "mlp.down_proj.weight"] = at::ones({8, 16});
  layer.m[p + "input_layernorm.weight"] = at::ones({8});
  EXPECT_FALSE(layer.Bind(s, {{BlockKind::kDecoderLayer, p}}, 0).ok());  // no post_attention_layernorm
  layer.m[p + "post_attention_layernorm.weight"] = at::ones({7});
  EXPECT_FALSE(layer.Bind(s, {{BlockKind::kDecoderLayer, p}}, 0).ok());  // mis-shaped
  layer.m[p + "post_attention_layernorm.weight"] = at::ones({8});
  EXPECT_TRUE(layer.Bind(s, {{BlockKind::kDecoderLayer, p}}, 0).ok());
  layer.m[p + "mlp.extra.weight"] = at::ones({8});
  EXPECT_FALSE(layer.Bind(s, {{BlockKind::kDecoderLayer, p}}, 0).ok());  // unknown
}

}  // namespace
}  // namespace bigplan
