#include "arch/registry.h"

#include <cmath>
#include <cstdlib>
#include <limits>
#include <fstream>
#include <map>
#include <set>
#include <string>

#include <gtest/gtest.h>

#include <functional>
#include <vector>
#include <nlohmann/json.hpp>

namespace bigplan::arch {
namespace {

using nlohmann::json;

std::string Root() { return std::string(std::getenv("TEST_SRCDIR")) + "/bigplan/"; }

json ReadJson(const std::string& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in) << path;
  return json::parse(in);
}

TEST(RegistryTest, EveryAliasResolves) {
  std::set<std::string> names;
  for (const FamilyInfo& f : Families()) {
    EXPECT_TRUE(names.insert(f.name).second) << f.name;
    EXPECT_EQ(FindFamily(f.name), &f);
    EXPECT_EQ(&GetFamily(f.family), &f);
    ASSERT_FALSE(f.model_types.empty()) << f.name;
    for (const char* t : f.model_types) {
      EXPECT_EQ(FindModelType(t), &f) << t;
      Result<const FamilyInfo*> looked = LookupFamily(std::string(t));
      ASSERT_TRUE(looked.ok()) << t;
      EXPECT_EQ(*looked, &f);
    }
    Result<const FamilyInfo*> upper = LookupFamily(f.name == std::string("llama") ? "LLAMA" : f.name);
    ASSERT_TRUE(upper.ok());
    EXPECT_EQ(*upper, &f);
  }
  EXPECT_EQ(SupportedModelTypes(), (std::vector<std::string>{"gpt2", "gptj", "llama", "mistral", "mixtral", "phi3", "qwen2", "qwen2_moe", "qwen3_moe"}));
  EXPECT_EQ(SupportedArchitectures(), (std::vector<std::string>{"gpt2", "gptj", "llama", "mixtral", "phi3", "qwen2_moe", "qwen3_moe"}));
  EXPECT_EQ(FindFamily("mistral"), nullptr);  // an alias, not a family name
  Result<const FamilyInfo*> bert = LookupFamily("bert");
  ASSERT_FALSE(bert.ok());
  EXPECT_EQ(bert.error().code, ErrorCode::kUnsupported);
  EXPECT_NE(bert.error().message.find("\"bert\""), std::string::npos);
  EXPECT_NE(bert.error().message.find("gpt2, gptj, llama, mistral, mixtral, phi3, qwen2, qwen2_moe, qwen3_moe"), std::string::npos)
      << bert.error().message;
}

TEST(RegistryTest, TablesAreConsistent) {
  for (int s = 0; s < static_cast<int>(Slot::kCount); ++s) EXPECT_NE(SlotName(static_cast<Slot>(s)), "invalid");
  for (const FamilyInfo& f : Families()) {
    SCOPED_TRACE(f.name);
    std::set<BlockKind> kinds;
    for (const BlockLayout& b : f.blocks) {
      EXPECT_TRUE(kinds.insert(b.kind).second) << "one layout entry per kind";
      EXPECT_EQ(std::string(b.name).find("{i}") != std::string::npos, b.kind == BlockKind::kDecoderLayer) << b.name;
    }
    for (BlockKind k : {BlockKind::kEmbedding, BlockKind::kDecoderLayer, BlockKind::kFinalNorm, BlockKind::kLmHead}) {
      EXPECT_TRUE(kinds.count(k)) << BlockKindName(k);
    }
    std::set<std::pair<BlockKind, std::string>> names;
    std::set<std::pair<BlockKind, Slot>> slots;
    for (const TensorRule& r : f.tensors) {
      EXPECT_TRUE(kinds.count(r.block)) << r.name << ": a tensor of a block kind the family lacks";
      ASSERT_NE(r.name, nullptr);
      EXPECT_FALSE(std::string(r.name).empty());
      EXPECT_TRUE(names.insert({r.block, r.name}).second) << "duplicate pattern " << r.name;
      EXPECT_TRUE(slots.insert({r.block, r.slot}).second) << "duplicate slot " << SlotName(r.slot);
      EXPECT_TRUE(r.rank == 1 || r.rank == 2) << r.name;
      EXPECT_EQ(r.rank == 1, r.layout == Layout::kVector) << r.name;
      EXPECT_EQ(FindTensorRule(f, r.block, IsExpertRule(r) ? RuleName(r, 17) : std::string(r.name)), &r) << r.name;
      EXPECT_EQ(FindSlotRule(f, r.block, r.slot), &r);
      for (Slot p : r.parts) {
        if (p == Slot::kCount) break;
        EXPECT_TRUE(slots.insert({r.block, p}).second) << "part slot " << SlotName(p) << " also stored separately";
        EXPECT_EQ(FindSlotRule(f, r.block, p), &r);
      }
      // Norm weights are what the writer fills near 1.
      const bool norm = r.slot == Slot::kInputNorm || r.slot == Slot::kPostNorm || r.slot == Slot::kFinalNorm ||
                        r.slot == Slot::kQNorm || r.slot == Slot::kKNorm;
      for (const BlockLayout& b : f.blocks) {
        if (b.kind != r.block) continue;
        const std::string full = BlockName(b, 0) + "." + r.name;
        EXPECT_EQ(IsNormWeightName(full), norm) << full;
      }
    }
    for (const TiedRead& t : f.tied) {
      EXPECT_NE(FindSlotRule(f, t.owner, t.owner_slot), nullptr);
      const TensorRule* reader = FindSlotRule(f, t.reader, t.slot);
      ASSERT_NE(reader, nullptr);
      EXPECT_EQ(reader->presence, Presence::kUntied) << "a tied slot is owned only when untied";
    }
    for (const char* m : f.parameterless_modules) EXPECT_TRUE(IsParameterlessModule(f, m));
    EXPECT_FALSE(IsParameterlessModule(f, "model.layers.0"));
    EXPECT_GT(f.kernels.decoder_layer, 0u);
    EXPECT_GT(f.kernels.final_norm, 0u);
    EXPECT_EQ(f.rope_types.empty(), f.family == Family::kGpt2);
    EXPECT_FALSE(f.math_keys.empty());
  }
}

// Which layout block and rule a full tensor name belongs to; false if none.
bool Locate(const FamilyInfo& f, const std::string& name, const BlockLayout** block, const TensorRule** rule) {
  for (const BlockLayout& b : f.blocks) {
    std::string pattern = std::string(b.name) + ".";
    const size_t at = pattern.find("{i}");
    std::string local;
    if (at == std::string::npos) {
      if (name.rfind(pattern, 0) != 0) continue;
      local = name.substr(pattern.size());
    } else {
      const std::string head = pattern.substr(0, at);
      if (name.rfind(head, 0) != 0) continue;
      size_t p = head.size();
      while (p < name.size() && std::isdigit(static_cast<unsigned char>(name[p]))) ++p;
      if (p == head.size() || p >= name.size() || name[p] != '.') continue;
      local = name.substr(p + 1);
    }
    if (const TensorRule* r = FindTensorRule(f, b.kind, local)) {
      *block = &b;
      *rule = r;
      return true;
    }
  }
  return false;
}

// Every tensor transformers saves for the tiny configs (planner/testdata/tiny_models.json) matches a rule of its
// family with the rule's shape, and every present rule has its tensors.
TEST(RegistryTest, ShapeRulesMatchTransformersTinyModels) {
  json tiny = ReadJson(Root() + "planner/testdata/tiny_models.json");
  ASSERT_GE(tiny.size(), 10u);
  std::set<std::string> families_seen;
  for (auto it = tiny.begin(); it != tiny.end(); ++it) {
    SCOPED_TRACE(it.key());
    Result<ParsedConfig> p = ParseHfConfig(it.value()["config"], it.key());
    ASSERT_TRUE(p.ok()) << p.error().ToString();
    const FamilyInfo& f = *p->family;
    families_seen.insert(f.name);
    std::map<std::string, int> rule_hits;
    for (const json& t : it.value()["tensors"]) {
      const std::string name = t["name"];
      const BlockLayout* block = nullptr;
      const TensorRule* rule = nullptr;
      ASSERT_TRUE(Locate(f, name, &block, &rule)) << name << " matches no rule of " << f.name;
      EXPECT_TRUE(IsPresent(rule->presence, p->features)) << name;
      EXPECT_EQ(ShapeOf(*rule, p->config, p->features), t["shape"].get<std::vector<int64_t>>()) << name;
      ++rule_hits[rule->name + std::string("@") + BlockKindName(rule->block)];
    }
    for (const TensorRule& r : f.tensors) {
      const int expected = !IsPresent(r.presence, p->features)      ? 0
                           : r.block == BlockKind::kDecoderLayer ? static_cast<int>(p->config.num_layers)
                                                                 : 1;
      EXPECT_EQ(rule_hits[r.name + std::string("@") + BlockKindName(r.block)], expected) << r.name;
    }
    for (const ModelBufferRule& b : f.accelerate_buffers) EXPECT_GT(EvalDim(b.dim, p->config, p->features), 0);
    for (const RuntimeBufferRule& b : f.runtime_buffers) {
      for (int d = 0; d < b.rank; ++d) EXPECT_GT(EvalDim(b.dims[d], p->config, p->features), 0) << b.name;
    }
  }
  EXPECT_EQ(families_seen, (std::set<std::string>{"gpt2", "gptj", "llama", "phi3"}));
}

// The bundled example configs parse, and their tensors.json (where present) match the shape rules.
TEST(RegistryTest, ShapeRulesEvaluateForExamples) {
  for (const char* dir : {"planner/examples/gpt-j-6b", "planner/examples/llama-2-7b", "planner/examples/llama-3.1-405b",
                          "planner/testdata/configs/gpt2", "planner/testdata/configs/mistral-7b",
                          "planner/testdata/configs/qwen2-0.5b"}) {
    SCOPED_TRACE(dir);
    Result<ParsedConfig> p = ParseHfConfig(ReadJson(Root() + dir + "/config.json"), dir);
    ASSERT_TRUE(p.ok()) << p.error().ToString();
    for (const TensorRule& r : p->family->tensors) {
      for (int64_t d : ShapeOf(r, p->config, p->features)) EXPECT_GT(d, 0) << r.name;
    }
    std::ifstream tensors(Root() + dir + "/tensors.json");
    if (!tensors) continue;
    json list = json::parse(tensors);
    if (list.is_object()) list = list["tensors"];
    ASSERT_GT(list.size(), 0u);
    for (const json& t : list) {
      const BlockLayout* block = nullptr;
      const TensorRule* rule = nullptr;
      ASSERT_TRUE(Locate(*p->family, t["name"], &block, &rule)) << t["name"];
      EXPECT_EQ(ShapeOf(*rule, p->config, p->features), t["shape"].get<std::vector<int64_t>>()) << t["name"];
    }
  }
}

json Phi3Config() {
  return json{{"model_type", "phi3"},          {"hidden_size", 64},  {"num_hidden_layers", 2},
              {"num_attention_heads", 4},      {"num_key_value_heads", 2}, {"intermediate_size", 96},
              {"vocab_size", 100},             {"max_position_embeddings", 64}};
}

TEST(RegistryTest, Phi3FusedRowsAndRope) {
  json cfg = Phi3Config();
  Result<ParsedConfig> p = ParseHfConfig(cfg, "phi3.json");
  ASSERT_TRUE(p.ok()) << p.error().ToString();
  EXPECT_STREQ(p->family->name, "phi3");
  EXPECT_EQ(p->config.head_dim, 16u);
  EXPECT_EQ(p->config.rotary_dim, 16u);
  EXPECT_DOUBLE_EQ(p->config.norm_eps, 1e-5);
  EXPECT_TRUE(p->config.rope_scaling.is_null());
  const TensorRule* qkv = FindSlotRule(*p->family, BlockKind::kDecoderLayer, Slot::kK);
  ASSERT_NE(qkv, nullptr);
  EXPECT_EQ(qkv->slot, Slot::kQkv);
  EXPECT_EQ(ShapeOf(*qkv, p->config, p->features), (std::vector<int64_t>{64 + 2 * 32, 64}));
  std::vector<FusedPart> parts = FusedRows(*qkv, p->config);
  ASSERT_EQ(parts.size(), 3u);
  EXPECT_EQ(parts[0].slot, Slot::kQ);
  EXPECT_EQ(parts[1].slot, Slot::kK);
  EXPECT_EQ(parts[1].row_begin, 64);
  EXPECT_EQ(parts[1].rows, 32);
  EXPECT_EQ(parts[2].row_begin, 96);
  const TensorRule* gate_up = FindSlotRule(*p->family, BlockKind::kDecoderLayer, Slot::kUp);
  ASSERT_NE(gate_up, nullptr);
  std::vector<FusedPart> mlp = FusedRows(*gate_up, p->config);
  ASSERT_EQ(mlp.size(), 2u);
  EXPECT_EQ(mlp[0].slot, Slot::kGate);
  EXPECT_EQ(mlp[1].row_begin, 96);
  EXPECT_EQ(FusedRows(*FindSlotRule(*p->family, BlockKind::kDecoderLayer, Slot::kO), p->config).size(), 0u);
  EXPECT_TRUE(GraphDecodeEligible(*p->family, p->config, 64));
  EXPECT_EQ(BlockKernels(*p->family, BlockKind::kDecoderLayer, p->config), 33u);

  // Phi-3-128k style: legacy "su" type means longrope; the top-level original length wins; partial rotary.
  std::vector<double> factors(6, 1.5);
  cfg["rope_scaling"] = {{"type", "su"}, {"short_factor", factors}, {"long_factor", factors}};
  cfg["original_max_position_embeddings"] = 16;
  cfg["partial_rotary_factor"] = 0.75;
  Result<ParsedConfig> lr = ParseHfConfig(cfg, "phi3.json");
  ASSERT_TRUE(lr.ok()) << lr.error().ToString();
  EXPECT_EQ(lr->config.rotary_dim, 12u);
  EXPECT_EQ(lr->config.rope_scaling["rope_type"], "longrope");
  EXPECT_EQ(lr->config.rope_scaling["original_max_position_embeddings"], 16);
  EXPECT_EQ(*RopeTypeOf(lr->config), RopeType::kLongrope);
  EXPECT_EQ(LengthIndependentRopePositions(lr->config), 16u);
  EXPECT_TRUE(GraphDecodeEligible(*lr->family, lr->config, 16));
  EXPECT_FALSE(GraphDecodeEligible(*lr->family, lr->config, 17));
  EXPECT_EQ(BlockKernels(*lr->family, BlockKind::kDecoderLayer, lr->config), 35u);
  EXPECT_EQ(EvalDim(Dim::kRotaryHalf, lr->config, lr->features), 6);

  // transformers 5's rope_parameters form.
  json rp = Phi3Config();
  rp["rope_parameters"] = {{"rope_type", "longrope"}, {"rope_theta", 250000.0}, {"short_factor", std::vector<double>(8, 1.0)},
                           {"long_factor", std::vector<double>(8, 2.0)}, {"original_max_position_embeddings", 8}};
  Result<ParsedConfig> v5 = ParseHfConfig(rp, "phi3.json");
  ASSERT_TRUE(v5.ok()) << v5.error().ToString();
  EXPECT_DOUBLE_EQ(v5->config.rope_theta, 250000.0);
  EXPECT_FALSE(v5->config.rope_scaling.contains("rope_theta"));
  // Phi3Config's top-level default (4096) wins over rope_parameters' value, as transformers does.
  EXPECT_EQ(v5->config.rope_scaling["original_max_position_embeddings"], 4096);

  // Wrong factor counts are refused at import, naming the field.
  cfg["rope_scaling"]["long_factor"] = std::vector<double>(5, 1.0);
  Result<ParsedConfig> short_list = ParseHfConfig(cfg, "phi3.json");
  ASSERT_FALSE(short_list.ok());
  EXPECT_EQ(short_list.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(short_list.error().message.find("field \"rope_scaling\": longrope needs 'long_factor'"), std::string::npos)
      << short_list.error().message;

  // Phi-3 supports default and longrope only.
  json linear = Phi3Config();
  linear["rope_scaling"] = {{"rope_type", "linear"}, {"factor", 2.0}};
  Result<ParsedConfig> lin = ParseHfConfig(linear, "phi3.json");
  ASSERT_FALSE(lin.ok());
  EXPECT_EQ(lin.error().code, ErrorCode::kUnsupported);
  EXPECT_NE(lin.error().message.find("unsupported rope type \"linear\" for phi3"), std::string::npos)
      << lin.error().message;
}

TEST(RegistryTest, CheckModelConfigMirrorsTheKernels) {
  const FamilyInfo& llama = *FindFamily("llama");
  ModelConfig c;
  c.head_dim = 16;
  c.rotary_dim = 16;
  c.max_position_embeddings = 32;
  EXPECT_TRUE(CheckModelConfig(llama, c).ok());
  c.rope_scaling = {{"rope_type", "dynamic"}, {"factor", 2.0}};
  EXPECT_TRUE(CheckModelConfig(llama, c).ok());
  EXPECT_TRUE(GraphDecodeEligible(llama, c, 32));
  EXPECT_FALSE(GraphDecodeEligible(llama, c, 33));
  c.rope_scaling = {{"rope_type", "dynamic"}};
  EXPECT_EQ(CheckModelConfig(llama, c).error().code, ErrorCode::kInvalidArgument);
  c.rope_scaling = {{"rope_type", "ntk-by-parts"}};
  EXPECT_EQ(CheckModelConfig(llama, c).error().code, ErrorCode::kUnsupported);
  c.rope_scaling = nullptr;
  c.rotary_dim = 8;  // partial rotary: only where the family computes it
  EXPECT_EQ(CheckModelConfig(llama, c).error().code, ErrorCode::kUnsupported);
  EXPECT_TRUE(CheckModelConfig(*FindFamily("phi3"), c).ok());
  EXPECT_TRUE(CheckModelConfig(*FindFamily("gptj"), c).ok());
  c.rope_scaling = {{"rope_type", "linear"}, {"factor", 2.0}};
  EXPECT_EQ(CheckModelConfig(*FindFamily("gpt2"), c).error().code, ErrorCode::kUnsupported);
  EXPECT_FALSE(GraphDecodeEligible(*FindFamily("gpt2"), ModelConfig{}, 8));
  ModelConfig act;
  act.activation = "GELU_new";
  EXPECT_TRUE(CheckModelConfig(*FindFamily("gpt2"), act).ok());
  act.activation = "mish";
  EXPECT_EQ(CheckModelConfig(*FindFamily("gpt2"), act).error().code, ErrorCode::kUnsupported);
  EXPECT_FALSE(GraphDecodeEligible(*FindFamily("gptj"), ModelConfig{}, 8));

  // Refused math keys: llama's partial_rotary_factor (1.0 is the default and fine).
  json cfg = {{"model_type", "llama"}, {"hidden_size", 64}, {"num_hidden_layers", 1}, {"num_attention_heads", 4},
              {"intermediate_size", 96}, {"vocab_size", 100}, {"partial_rotary_factor", 1.0}};
  EXPECT_TRUE(ParseHfConfig(cfg, "c.json").ok());
  cfg["partial_rotary_factor"] = 0.5;
  Result<ParsedConfig> refused = ParseHfConfig(cfg, "c.json");
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code, ErrorCode::kUnsupported);
  EXPECT_NE(refused.error().message.find("c.json: field \"partial_rotary_factor\""), std::string::npos);
  json gpt2 = {{"model_type", "gpt2"}, {"n_embd", 64}, {"n_layer", 1}, {"n_head", 4}, {"vocab_size", 100},
               {"scale_attn_by_inverse_layer_idx", true}};
  Result<ParsedConfig> g = ParseHfConfig(gpt2, "g.json");
  ASSERT_TRUE(g.ok()) << g.error().ToString();  // implemented: scores also divided by (layer + 1)
  EXPECT_TRUE(g->config.scale_attn_by_inverse_layer_idx);
  gpt2["add_cross_attention"] = true;
  EXPECT_FALSE(ParseHfConfig(gpt2, "g.json").ok());
  gpt2["add_cross_attention"] = false;
  gpt2["scale_attn_weights"] = true;
  EXPECT_TRUE(ParseHfConfig(gpt2, "g.json").ok());
  for (const FamilyInfo& f : Families()) {
    for (const MathKey& k : f.math_keys) {
      if (k.default_value != nullptr) EXPECT_NO_THROW((void)json::parse(k.default_value)) << k.key;
    }
  }
}

TEST(RegistryTest, KernelCountsAndBuffers) {
  ModelConfig c;
  c.head_dim = 16;
  c.rotary_dim = 16;
  EXPECT_EQ(BlockKernels(*FindFamily("llama"), BlockKind::kDecoderLayer, c), 33u);
  EXPECT_EQ(BlockKernels(*FindFamily("llama"), BlockKind::kFinalNorm, c), 4u);
  // A mixture-of-experts layer: its attention half plus the grouped experts (router 7, choices 3, 2 groups of 8,
  // host result 2), and Qwen2-MoE's shared expert (8).
  ModelConfig moe = c;
  moe.num_experts = 60;
  moe.num_experts_per_tok = 4;
  moe.shared_expert_intermediate_size = 64;
  EXPECT_EQ(BlockKernels(*FindFamily("qwen2_moe"), BlockKind::kDecoderLayer, moe), 22u + 28u + 8u);
  moe.shared_expert_intermediate_size = 0;
  EXPECT_EQ(BlockKernels(*FindFamily("qwen3_moe"), BlockKind::kDecoderLayer, moe), 30u + 28u);
  EXPECT_EQ(BlockKernels(*FindFamily("gpt2"), BlockKind::kDecoderLayer, c), 13u);
  EXPECT_EQ(BlockKernels(*FindFamily("gptj"), BlockKind::kDecoderLayer, c), 24u);
  // With the executor's fused kernels, where the shapes allow them (head_dim a multiple of 32 up to 256, full
  // rotary, <= 8 query heads per kv head, hidden a multiple of 8); families without them keep LibTorch's counts.
  ModelConfig f;
  f.hidden_size = 4096;
  f.num_heads = 32;
  f.num_kv_heads = 8;
  f.head_dim = 128;
  f.rotary_dim = 128;
  EXPECT_TRUE(FusedKernelsApply(*FindFamily("llama"), f));
  EXPECT_EQ(BlockKernels(*FindFamily("llama"), BlockKind::kDecoderLayer, f, /*fused=*/true), 10u);
  EXPECT_EQ(BlockKernels(*FindFamily("llama"), BlockKind::kFinalNorm, f, /*fused=*/true), 1u);
  EXPECT_EQ(BlockKernels(*FindFamily("llama"), BlockKind::kDecoderLayer, f, /*fused=*/false), 33u);
  EXPECT_EQ(BlockKernels(*FindFamily("gpt2"), BlockKind::kDecoderLayer, f, /*fused=*/true), 13u);
  ModelConfig fm = f;
  fm.num_experts = 60;
  fm.num_experts_per_tok = 4;
  EXPECT_EQ(BlockKernels(*FindFamily("qwen3_moe"), BlockKind::kDecoderLayer, fm, /*fused=*/true), 8u + 28u);
  // A decode step's fused layer: the products take the norms, RoPE + the KV write and SiLU x up into their kernels
  // (Qwen3-MoE's q/k norms keep RoPE a kernel of its own); other blocks and families as BlockKernels(fused).
  EXPECT_EQ(DecodeBlockKernels(*FindFamily("llama"), BlockKind::kDecoderLayer, f), 6u);
  EXPECT_EQ(DecodeBlockKernels(*FindFamily("phi3"), BlockKind::kDecoderLayer, f), 6u);
  // Sparse layers: the attention half (4; 5 with Qwen3-MoE's RoPE apart), then the router's product with the norm,
  // its top k and the experts read on the device, the second product adding the residual (4), or dispatched from
  // the host (29).
  EXPECT_EQ(DecodeBlockKernels(*FindFamily("mixtral"), BlockKind::kDecoderLayer, fm), 4u + 29u);
  EXPECT_EQ(DecodeBlockKernels(*FindFamily("qwen3_moe"), BlockKind::kDecoderLayer, fm), 5u + 29u);
  EXPECT_EQ(DecodeBlockKernels(*FindFamily("mixtral"), BlockKind::kDecoderLayer, fm, /*experts_on_device=*/true),
            4u + 4u);
  EXPECT_EQ(DecodeBlockKernels(*FindFamily("qwen3_moe"), BlockKind::kDecoderLayer, fm, /*experts_on_device=*/true),
            5u + 4u);
  EXPECT_EQ(DecodeBlockKernels(*FindFamily("llama"), BlockKind::kFinalNorm, f), 1u);
  EXPECT_EQ(DecodeBlockKernels(*FindFamily("gpt2"), BlockKind::kDecoderLayer, f), 13u);
  EXPECT_EQ(DecodeBlockKernels(*FindFamily("llama"), BlockKind::kDecoderLayer, c), 33u) << "the fused kernels do not apply";
  for (auto change : std::vector<std::function<void(ModelConfig&)>>{
           [](ModelConfig& x) { x.head_dim = 80; },      // not a multiple of 32
           [](ModelConfig& x) { x.rotary_dim = 64; },    // partial rotary
           [](ModelConfig& x) { x.num_kv_heads = 2; },   // 16 query heads per kv head
           [](ModelConfig& x) { x.hidden_size = 4092; }}) {
    ModelConfig g = f;
    change(g);
    EXPECT_FALSE(FusedKernelsApply(*FindFamily("llama"), g));
    EXPECT_EQ(BlockKernels(*FindFamily("llama"), BlockKind::kDecoderLayer, g, /*fused=*/true),
              BlockKernels(*FindFamily("llama"), BlockKind::kDecoderLayer, g, /*fused=*/false));
  }
  EXPECT_EQ(BlockKernels(*FindFamily("gptj"), BlockKind::kFinalNorm, c), 1u);
  c.rotary_dim = 8;
  EXPECT_EQ(BlockKernels(*FindFamily("gptj"), BlockKind::kDecoderLayer, c), 26u);
  EXPECT_EQ(BlockKernels(*FindFamily("gpt2"), BlockKind::kEmbedding, c), 2u);
  EXPECT_EQ(BlockKernels(*FindFamily("gpt2"), BlockKind::kPositionEmbedding, c), 1u);
  EXPECT_EQ(BlockKernels(*FindFamily("gpt2"), BlockKind::kLmHead, c), 2u);
  EXPECT_EQ(FindFamily("llama")->accelerate_buffers.size(), 2u);
  EXPECT_EQ(FindFamily("gptj")->runtime_buffers.size(), 1u);
  EXPECT_TRUE(IsParameterlessModule(*FindFamily("gpt2"), "transformer.drop"));
  EXPECT_FALSE(IsParameterlessModule(*FindFamily("llama"), "transformer.drop"));
  for (const char* n : {"model.norm.weight", "model.layers.3.input_layernorm.weight", "transformer.h.0.ln_1.weight",
                        "ln_f.weight"}) {
    EXPECT_TRUE(IsNormWeightName(n)) << n;
  }
  for (const char* n : {"model.norm.bias", "lm_head.weight", "weight", "model.normal_proj.weight", "kln_1.weight"}) {
    EXPECT_FALSE(IsNormWeightName(n)) << n;
  }
}

}  // namespace
}  // namespace bigplan::arch

namespace bigplan::arch {
namespace {

// A Llama-family config for ResolveRope: head_dim 16, 128 positions, the given rope_scaling.
ModelConfig RopeConfigWith(json rope_scaling, uint32_t head_dim = 16, uint32_t rotary_dim = 16) {
  ModelConfig c;
  c.hidden_size = 4 * head_dim;
  c.num_heads = 4;
  c.num_kv_heads = 4;
  c.head_dim = head_dim;
  c.rotary_dim = rotary_dim;
  c.max_position_embeddings = 128;
  c.rope_theta = 10000.0;
  c.rope_scaling = std::move(rope_scaling);
  return c;
}

// The typed RoPE is what transformers' ROPE_INIT_FUNCTIONS compute (modeling_rope_utils.py, transformers 5.17):
// the expected numbers below were printed by it for the same configs.
TEST(ResolveRopeTest, TypedParametersAsTransformersComputesThem) {
  const FamilyInfo& llama = *FindFamily("llama");
  Result<RopeParams> d = ResolveRope(llama, RopeConfigWith(nullptr));
  ASSERT_TRUE(d.ok()) << d.error().ToString();
  EXPECT_EQ(d->type, RopeType::kDefault);
  EXPECT_EQ(d->rotary_dim, 16u);
  EXPECT_DOUBLE_EQ(d->theta, 10000.0);
  EXPECT_DOUBLE_EQ(d->attention_factor, 1.0);
  EXPECT_EQ(d->original_max_position_embeddings, 128u);

  // Older "type" key; a rope_theta inside the scaling object wins over the top-level one.
  Result<RopeParams> lin = ResolveRope(llama, RopeConfigWith({{"type", "linear"}, {"factor", 2.0}, {"rope_theta", 500000.0}}));
  ASSERT_TRUE(lin.ok()) << lin.error().ToString();
  EXPECT_EQ(lin->type, RopeType::kLinear);
  EXPECT_DOUBLE_EQ(lin->factor, 2.0);
  EXPECT_DOUBLE_EQ(lin->theta, 500000.0);

  Result<RopeParams> l3 = ResolveRope(llama, RopeConfigWith({{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                                                             {"high_freq_factor", 4.0},
                                                             {"original_max_position_embeddings", 32}}));
  ASSERT_TRUE(l3.ok()) << l3.error().ToString();
  EXPECT_EQ(l3->type, RopeType::kLlama3);
  EXPECT_DOUBLE_EQ(l3->low_freq_factor, 1.0);
  EXPECT_DOUBLE_EQ(l3->high_freq_factor, 4.0);
  EXPECT_EQ(l3->original_max_position_embeddings, 32u);

  // yarn (head_dim 16, theta 1e4, factor 4, original 64): transformers' find_correction_range gives [0, 3] (the
  // interpolation blend of its inv_freq is 1/3, 2/3 at dims 1, 2), attention factor 0.1 ln 4 + 1 = 1.138629436111989.
  Result<RopeParams> y = ResolveRope(llama, RopeConfigWith({{"rope_type", "yarn"}, {"factor", 4.0},
                                                            {"original_max_position_embeddings", 64}}));
  ASSERT_TRUE(y.ok()) << y.error().ToString();
  EXPECT_EQ(y->type, RopeType::kYarn);
  EXPECT_DOUBLE_EQ(y->ramp_low, 0.0);
  EXPECT_DOUBLE_EQ(y->ramp_high, 3.0);
  EXPECT_DOUBLE_EQ(y->beta_fast, 32.0);
  EXPECT_DOUBLE_EQ(y->beta_slow, 1.0);
  EXPECT_NEAR(y->attention_factor, 1.138629436111989, 1e-15);
  // An explicit attention_factor wins; without factor, yarn's factor is max_position_embeddings / original.
  Result<RopeParams> y2 = ResolveRope(llama, RopeConfigWith({{"rope_type", "yarn"}, {"attention_factor", 0.5},
                                                             {"original_max_position_embeddings", 64}}));
  ASSERT_TRUE(y2.ok()) << y2.error().ToString();
  EXPECT_DOUBLE_EQ(y2->factor, 2.0);
  EXPECT_DOUBLE_EQ(y2->attention_factor, 0.5);

  // Phi-3 longrope with partial rotary (12 of 16 dims; the rope_scaling object need not repeat the factor):
  // attention factor sqrt(1 + ln(128 / 16) / ln 16) = 1.3228756555322954.
  const FamilyInfo& phi3 = *FindFamily("phi3");
  std::vector<double> s{1.0, 1.25, 1.5, 2.0, 2.5, 3.0};
  Result<RopeParams> lr = ResolveRope(
      phi3, RopeConfigWith({{"rope_type", "longrope"}, {"short_factor", s}, {"long_factor", std::vector<double>(6, 4.0)},
                            {"original_max_position_embeddings", 16}},
                           16, 12));
  ASSERT_TRUE(lr.ok()) << lr.error().ToString();
  EXPECT_EQ(lr->type, RopeType::kLongrope);
  EXPECT_EQ(lr->rotary_dim, 12u);
  EXPECT_EQ(lr->original_max_position_embeddings, 16u);
  EXPECT_EQ(lr->short_factor, (std::vector<float>{1.0f, 1.25f, 1.5f, 2.0f, 2.5f, 3.0f}));
  EXPECT_EQ(lr->long_factor, std::vector<float>(6, 4.0f));
  EXPECT_DOUBLE_EQ(lr->factor, 8.0);
  EXPECT_NEAR(lr->attention_factor, 1.3228756555322954, 1e-15);

  // GPT-2: no RoPE. GPT-J: default over its rotary dims.
  Result<RopeParams> g2 = ResolveRope(*FindFamily("gpt2"), RopeConfigWith(nullptr, 16, 0));
  ASSERT_TRUE(g2.ok());
  EXPECT_EQ(g2->rotary_dim, 0u);
  Result<RopeParams> gj = ResolveRope(*FindFamily("gptj"), RopeConfigWith(nullptr, 16, 8));
  ASSERT_TRUE(gj.ok());
  EXPECT_EQ(gj->rotary_dim, 8u);
  for (const Result<RopeParams>* r : {&d, &lin, &l3, &y, &y2, &lr, &g2, &gj}) {
    EXPECT_TRUE(CheckRopeParams(**r, 16).ok()) << DescribeRope(**r);
  }
}

// What the executor used to refuse when it parsed rope_scaling itself is refused here, at plan time.
TEST(ResolveRopeTest, RefusesWhatTheKernelsCannotCompute) {
  const FamilyInfo& llama = *FindFamily("llama");
  const FamilyInfo& phi3 = *FindFamily("phi3");
  struct Case {
    const FamilyInfo* family;
    json rope_scaling;
    uint32_t rotary_dim;
    ErrorCode code;
    const char* message;
  } cases[] = {
      {&llama, {{"rope_type", "su"}}, 16, ErrorCode::kUnsupported, "unsupported rope type \"su\""},
      {&llama, {{"rope_type", "longrope"}, {"long_factor", {1}}, {"short_factor", std::vector<int>(8, 1)}}, 16,
       ErrorCode::kInvalidArgument, "longrope needs 'long_factor'"},
      {&llama, {{"rope_type", "llama3"}, {"factor", 8}}, 16, ErrorCode::kInvalidArgument,
       "llama3 needs a numeric 'low_freq_factor'"},
      {&llama, {{"rope_type", "llama3"}, {"factor", 8}, {"low_freq_factor", 2}, {"high_freq_factor", 2}}, 16,
       ErrorCode::kInvalidArgument, "high_freq_factor equals low_freq_factor"},
      {&llama, {{"rope_type", "linear"}, {"factor", "2"}}, 16, ErrorCode::kInvalidArgument, "'factor' must be"},
      {&llama, {{"rope_type", "yarn"}, {"beta_fast", "x"}}, 16, ErrorCode::kInvalidArgument, "'beta_fast' must be a number"},
      {&llama, {{"rope_type", "yarn"}, {"original_max_position_embeddings", 64.5}}, 16, ErrorCode::kInvalidArgument,
       "is not an integer"},
      {&llama, {{"rope_type", "dynamic"}, {"factor", 2}, {"rope_theta", 0}}, 16, ErrorCode::kInvalidArgument,
       "rope_theta 0"},
      {&phi3, {{"rope_type", "default"}, {"partial_rotary_factor", 0.75}}, 4, ErrorCode::kInvalidArgument,
       "partial_rotary_factor 0.75 gives 6 rotary dims, but rotary_dim is 4"},
      {&llama, nullptr, 4, ErrorCode::kUnsupported, "partial rotary"},
  };
  for (const Case& c : cases) {
    Result<RopeParams> r = ResolveRope(*c.family, RopeConfigWith(c.rope_scaling, 8, c.rotary_dim));
    ASSERT_FALSE(r.ok()) << c.rope_scaling.dump();
    EXPECT_EQ(r.error().code, c.code) << r.error().ToString();
    EXPECT_NE(r.error().message.find(c.message), std::string::npos) << r.error().message;
    // CheckModelConfig refuses the same configs (it is what the planner runs on every model).
    EXPECT_FALSE(CheckModelConfig(*c.family, RopeConfigWith(c.rope_scaling, 8, c.rotary_dim)).ok());
  }
  // Partial rotary with a longrope object that does not repeat partial_rotary_factor is accepted (the executor's
  // own JSON parsing refused it, although transformers computes it).
  Result<RopeParams> ok = ResolveRope(phi3, RopeConfigWith({{"rope_type", "longrope"}, {"short_factor", {1, 1}},
                                                            {"long_factor", {2, 2}}, {"original_max_position_embeddings", 8}},
                                                           8, 4));
  EXPECT_TRUE(ok.ok()) << ok.error().ToString();
}

TEST(RopeParamsTest, CheckRopeParamsRefusesMalformedValues) {
  RopeParams r;
  r.rotary_dim = 8;
  EXPECT_TRUE(CheckRopeParams(r, 8).ok());
  auto refused = [](RopeParams p, const char* what) {
    Status st = CheckRopeParams(p, 8);
    ASSERT_FALSE(st.ok()) << what;
    EXPECT_EQ(st.error().code, ErrorCode::kInvalidArgument);
    EXPECT_NE(st.error().message.find(what), std::string::npos) << st.error().message;
  };
  RopeParams bad = r;
  bad.type = static_cast<RopeType>(6);
  refused(bad, "rope.type 6 is unknown");
  bad = r;
  bad.theta = std::numeric_limits<double>::infinity();
  refused(bad, "rope.theta");
  bad = r;
  bad.rotary_dim = 10;
  refused(bad, "exceeds head_dim 8");
  bad = r;
  bad.rotary_dim = 3;
  refused(bad, "is odd");
  bad = r;
  bad.factor = -1;
  refused(bad, "rope.factor -1");
  bad = r;
  bad.attention_factor = std::nan("");
  refused(bad, "rope.attention_factor");
  bad = r;
  bad.type = RopeType::kLlama3;
  bad.original_max_position_embeddings = 8;
  bad.low_freq_factor = bad.high_freq_factor = 2;
  refused(bad, "high_freq_factor equals low_freq_factor");
  bad = r;
  bad.type = RopeType::kLongrope;
  bad.original_max_position_embeddings = 8;
  bad.short_factor = {1, 1, 1, 1};
  bad.long_factor = {1, 1, 1};
  refused(bad, "long_factor has 3 entries, expected rotary_dim / 2 = 4");
  bad.long_factor = {1, 1, 1, 0};
  refused(bad, "long_factor holds 0");
  bad.long_factor = {1, 1, 1, 1};
  EXPECT_TRUE(CheckRopeParams(bad, 8).ok());
  bad.original_max_position_embeddings = 0;
  refused(bad, "original_max_position_embeddings is 0");
  bad = r;
  bad.short_factor = {1};
  refused(bad, "longrope only");
  bad = r;
  bad.type = RopeType::kYarn;
  bad.original_max_position_embeddings = 8;
  bad.ramp_low = bad.ramp_high = 2;
  refused(bad, "ramp_low equals ramp_high");
}

TEST(BlockKindTest, NamesRoundTrip) {
  for (int i = 0; i < kNumBlockKinds; ++i) {
    const BlockKind k = static_cast<BlockKind>(i);
    Result<BlockKind> back = ParseBlockKind(BlockKindName(k));
    ASSERT_TRUE(back.ok()) << i;
    EXPECT_EQ(*back, k);
  }
  EXPECT_STREQ(BlockKindName(static_cast<BlockKind>(kNumBlockKinds)), "invalid");
  EXPECT_EQ(ParseBlockKind("mlp").error().code, ErrorCode::kInvalidArgument);
  for (int i = 0; i < kNumRopeTypes; ++i) {
    Result<RopeType> back = ParseRopeType(RopeTypeName(static_cast<RopeType>(i)));
    ASSERT_TRUE(back.ok()) << i;
    EXPECT_EQ(static_cast<int>(*back), i);
  }
}

}  // namespace
}  // namespace bigplan::arch
