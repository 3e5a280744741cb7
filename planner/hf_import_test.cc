#include "planner/hf_import.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <gtest/gtest.h>

#include "formats/test_util.h"
#include "planner/validate.h"

namespace bigplan {
namespace {

using nlohmann::json;

std::string Root() { return std::string(std::getenv("TEST_SRCDIR")) + "/bigplan/"; }

json ReadJson(const std::string& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in) << path;
  return json::parse(in);
}

std::vector<TensorSpec> Sorted(std::vector<TensorSpec> v) {
  std::sort(v.begin(), v.end(), [](const TensorSpec& a, const TensorSpec& b) { return a.name < b.name; });
  return v;
}

std::string ShapeStr(const std::vector<int64_t>& s) {
  std::string out;
  for (int64_t d : s) out += std::to_string(d) + ",";
  return out;
}

// The tensors transformers' save_pretrained writes for small configs of every supported type
// (planner/testdata/make_tiny_models.py), against what the importer synthesizes from the config alone.
TEST(HfImportTest, SynthesizedTensorsMatchTransformers) {
  json tiny = ReadJson(Root() + "planner/testdata/tiny_models.json");
  ASSERT_GE(tiny.size(), 10u);
  for (auto it = tiny.begin(); it != tiny.end(); ++it) {
    SCOPED_TRACE(it.key());
    Result<std::vector<TensorSpec>> saved = ParseTensorList(it.value()["tensors"].dump(), it.key());
    ASSERT_TRUE(saved.ok()) << saved.error().ToString();
    Result<ModelDescription> m = ImportHfConfig(it.value()["config"], {}, it.key());
    ASSERT_TRUE(m.ok()) << m.error().ToString();
    std::vector<TensorSpec> expected = Sorted(ExpectedTensors(*m));
    std::vector<TensorSpec> actual = Sorted(*saved);
    ASSERT_EQ(expected.size(), actual.size());
    for (size_t i = 0; i < expected.size(); ++i) {
      EXPECT_EQ(expected[i].name, actual[i].name);
      EXPECT_EQ(ShapeStr(expected[i].shape), ShapeStr(actual[i].shape)) << actual[i].name;
      EXPECT_EQ(expected[i].dtype, actual[i].dtype) << actual[i].name;
    }
    EXPECT_TRUE(ValidateAgainstTensors(*m, *saved, it.key()).ok());
    // With the tensor list, the same description.
    HfImportOptions with;
    with.tensors = &*saved;
    Result<ModelDescription> m2 = ImportHfConfig(it.value()["config"], with, it.key());
    ASSERT_TRUE(m2.ok());
    EXPECT_EQ(m2->ToJson(), m->ToJson());
  }
}

TEST(HfImportTest, LlamaConfigFields) {
  json tiny = ReadJson(Root() + "planner/testdata/tiny_models.json");
  Result<ModelDescription> m = ImportHfConfig(tiny["llama_bias_headdim_llama3"]["config"]);
  ASSERT_TRUE(m.ok()) << m.error().ToString();
  const ModelConfig& c = m->config;
  EXPECT_EQ(m->architecture, "llama");
  EXPECT_EQ(c.hidden_size, 64u);
  EXPECT_EQ(c.num_heads, 4u);
  EXPECT_EQ(c.num_kv_heads, 2u);
  EXPECT_EQ(c.head_dim, 32u);
  EXPECT_EQ(c.rotary_dim, 32u);
  EXPECT_TRUE(c.attention_bias);
  EXPECT_TRUE(c.mlp_bias);
  EXPECT_DOUBLE_EQ(c.rope_theta, 500000.0);
  ASSERT_TRUE(c.rope_scaling.is_object());
  EXPECT_EQ(c.rope_scaling["rope_type"], "llama3");
  EXPECT_FALSE(c.rope_scaling.contains("rope_theta"));
  EXPECT_EQ(c.activation, "silu");
  EXPECT_EQ(m->blocks.front().name, "model.embed_tokens");
  EXPECT_EQ(m->blocks.back().name, "lm_head");
  EXPECT_EQ(m->blocks.size(), 5u);
  EXPECT_EQ(m->hf_config, tiny["llama_bias_headdim_llama3"]["config"]);

  Result<ModelDescription> tied = ImportHfConfig(tiny["llama_tied_linear"]["config"]);
  ASSERT_TRUE(tied.ok());
  EXPECT_TRUE(tied->config.tie_word_embeddings);
  EXPECT_TRUE(tied->blocks.back().params.empty());
  EXPECT_EQ(tied->blocks.back().tied, std::vector<std::string>{"model.embed_tokens.weight"});
  EXPECT_EQ(tied->config.rope_scaling["rope_type"], "linear");

  Result<ModelDescription> q = ImportHfConfig(tiny["qwen2_untied"]["config"]);
  ASSERT_TRUE(q.ok());
  EXPECT_TRUE(q->config.attention_bias);
  EXPECT_TRUE(q->config.rope_scaling.is_null());
  EXPECT_NE(q->FindParam("model.layers.1.self_attn.v_proj.bias"), nullptr);
  EXPECT_EQ(q->FindParam("model.layers.1.self_attn.o_proj.bias"), nullptr);
}

TEST(HfImportTest, Phi3ConfigFields) {
  json tiny = ReadJson(Root() + "planner/testdata/tiny_models.json");
  Result<ModelDescription> m = ImportHfConfig(tiny["phi3"]["config"]);
  ASSERT_TRUE(m.ok()) << m.error().ToString();
  EXPECT_EQ(m->architecture, "phi3");
  EXPECT_EQ(m->config.rotary_dim, m->config.head_dim);
  EXPECT_TRUE(m->config.rope_scaling.is_null());
  const TensorSpec* qkv = m->FindParam("model.layers.1.self_attn.qkv_proj.weight");
  ASSERT_NE(qkv, nullptr);
  EXPECT_EQ(qkv->shape, (std::vector<int64_t>{(4 + 2 * 2) * 16, 64}));
  EXPECT_EQ(qkv->dtype, DType::kBF16);
  EXPECT_NE(m->FindParam("model.layers.1.mlp.gate_up_proj.weight"), nullptr);
  EXPECT_EQ(m->FindParam("model.layers.1.self_attn.q_proj.weight"), nullptr);
  EXPECT_EQ(m->blocks.back().params.size(), 1u);  // untied lm_head

  Result<ModelDescription> lr = ImportHfConfig(tiny["phi3_longrope_partial_tied"]["config"]);
  ASSERT_TRUE(lr.ok()) << lr.error().ToString();
  EXPECT_EQ(lr->config.rotary_dim, 8u);
  EXPECT_EQ(lr->config.rope_scaling["rope_type"], "longrope");
  EXPECT_EQ(lr->config.rope_scaling["original_max_position_embeddings"], 64);
  EXPECT_EQ(lr->blocks.back().tied, std::vector<std::string>{"model.embed_tokens.weight"});
  // The description round-trips through its JSON form.
  Result<ModelDescription> again = ModelDescription::Parse(lr->ToJson(), "phi3.json");
  ASSERT_TRUE(again.ok()) << again.error().ToString();
  EXPECT_EQ(*again, *lr);
}

TEST(HfImportTest, ClassicRopeFieldsAndTokens) {
  json cfg = {{"model_type", "llama"},       {"hidden_size", 64},   {"num_hidden_layers", 1},
              {"num_attention_heads", 4},    {"intermediate_size", 96}, {"vocab_size", 100},
              {"rope_theta", 250000.0},      {"rope_scaling", {{"type", "dynamic"}, {"factor", 2.0}}},
              {"eos_token_id", {7, 8, 9}},   {"bos_token_id", 3}};
  Result<ModelDescription> m = ImportHfConfig(cfg);
  ASSERT_TRUE(m.ok()) << m.error().ToString();
  EXPECT_DOUBLE_EQ(m->config.rope_theta, 250000.0);
  EXPECT_EQ(m->config.rope_scaling["type"], "dynamic");
  EXPECT_EQ(m->config.num_kv_heads, 4u);
  EXPECT_EQ(m->config.head_dim, 16u);
  EXPECT_EQ(m->config.bos_token_id, 3);
  EXPECT_EQ(m->config.eos_token_ids, (std::vector<int64_t>{7, 8, 9}));
  EXPECT_EQ(m->blocks[1].params[0].dtype, DType::kF32);  // no dtype anywhere: F32

  // A negative bos_token_id names no token (the fuzzer found it breaking the description's round trip): refused.
  json negative = cfg;
  negative["bos_token_id"] = -128000;
  Result<ModelDescription> neg = ImportHfConfig(negative);
  ASSERT_FALSE(neg.ok());
  EXPECT_NE(neg.error().message.find("bos_token_id"), std::string::npos) << neg.error().message;

  cfg["rope_scaling"] = {{"rope_type", "su"}};
  Result<ModelDescription> bad = ImportHfConfig(cfg);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().code, ErrorCode::kUnsupported);
  EXPECT_NE(bad.error().message.find("rope_scaling"), std::string::npos);
}

TEST(HfImportTest, ErrorsNameTheProblem) {
  Result<ModelDescription> u = ImportHfConfigText(R"({"model_type": "bert", "hidden_size": 8})");
  ASSERT_FALSE(u.ok());
  EXPECT_EQ(u.error().code, ErrorCode::kUnsupported);
  EXPECT_NE(u.error().message.find("\"bert\""), std::string::npos);
  EXPECT_NE(u.error().message.find("gpt2, gptj, llama, mistral, mixtral, phi3, qwen2, qwen2_moe, qwen3_moe"), std::string::npos) << u.error().message;

  Result<ModelDescription> missing = ImportHfConfigText(R"({"model_type": "llama", "hidden_size": 8})", {}, "c.json");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(missing.error().message.find("c.json: field \"num_hidden_layers\": missing"), std::string::npos)
      << missing.error().message;

  Result<ModelDescription> gqa = ImportHfConfigText(
      R"({"model_type": "mistral", "hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
          "num_key_value_heads": 3, "intermediate_size": 8, "vocab_size": 10})");
  ASSERT_FALSE(gqa.ok());
  EXPECT_NE(gqa.error().message.find("num_key_value_heads"), std::string::npos);

  // What the executor's kernels would refuse is refused at import (plan time), naming the field.
  Result<ModelDescription> mish = ImportHfConfigText(
      R"({"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
          "intermediate_size": 8, "vocab_size": 10, "hidden_act": "mish"})", {}, "c.json");
  ASSERT_FALSE(mish.ok());
  EXPECT_EQ(mish.error().code, ErrorCode::kUnsupported);
  EXPECT_NE(mish.error().message.find("activation \"mish\""), std::string::npos) << mish.error().message;
  Result<ModelDescription> phi3_linear = ImportHfConfigText(
      R"({"model_type": "phi3", "hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
          "intermediate_size": 8, "vocab_size": 10, "rope_scaling": {"rope_type": "linear", "factor": 2.0}})",
      {}, "c.json");
  ASSERT_FALSE(phi3_linear.ok());
  EXPECT_EQ(phi3_linear.error().code, ErrorCode::kUnsupported);
  EXPECT_NE(phi3_linear.error().message.find("c.json: field \"rope_scaling\""), std::string::npos)
      << phi3_linear.error().message;

  Result<ModelDescription> no_type = ImportHfConfigText(R"({"hidden_size": 8})");
  ASSERT_FALSE(no_type.ok());
  EXPECT_NE(no_type.error().message.find("model_type"), std::string::npos);

  Result<ModelDescription> bad_json = ImportHfConfigText("{nope");
  ASSERT_FALSE(bad_json.ok());
  EXPECT_EQ(bad_json.error().code, ErrorCode::kCorrupt);

  Result<ModelDescription> bad_dtype = ImportHfConfigText(
      R"({"model_type": "gpt2", "n_embd": 8, "n_layer": 1, "n_head": 2, "vocab_size": 10, "torch_dtype": "int4"})");
  ASSERT_FALSE(bad_dtype.ok());
  EXPECT_NE(bad_dtype.error().message.find("torch_dtype"), std::string::npos);
}

TEST(HfImportTest, AbsurdLayerCountsAreRefusedBeforeBuilding) {
  // A billion layers would build a billion blocks (hours, then out of memory); refused at once instead.
  for (const char* type : {"llama", "gpt2", "gptj"}) {
    json config = {{"model_type", type}, {"hidden_size", 64}, {"n_embd", 64},           {"num_attention_heads", 4},
                   {"n_head", 4},        {"intermediate_size", 128}, {"vocab_size", 256}, {"n_positions", 64}};
    config[std::string(type) == "llama" ? "num_hidden_layers" : "n_layer"] = 1000000000;
    Result<ModelDescription> m = ImportHfConfig(config, {}, "c.json");
    ASSERT_FALSE(m.ok()) << type;
    EXPECT_EQ(m.error().code, ErrorCode::kUnsupported) << m.error().ToString();
    EXPECT_NE(m.error().message.find("1000000000 decoder layers exceed the limit of"), std::string::npos)
        << m.error().message;
    EXPECT_NE(m.error().message.find("c.json: field \""), std::string::npos) << m.error().message;
  }
}

TEST(HfImportTest, BadConfigFileIsCorruptNotABadCommandLine) {
  // Errors in a config.json's content are the file's problem (exit status 1), naming the file and field.
  const std::string dir = testing::NewTempDir("bad_config");
  const std::string path = dir + "/config.json";
  struct Case {
    std::string text, needle;
  } cases[] = {
      {"[1, 2]", "config must be a JSON object"},
      {R"({"hidden_size": 8})", "field \"model_type\": missing"},
      {R"({"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 8,
           "vocab_size": 16})", "field \"num_attention_heads\": missing"},
      {R"({"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
           "intermediate_size": 8, "vocab_size": 16, "rms_norm_eps": -1})", "norm_eps"},
  };
  for (const Case& c : cases) {
    testing::WriteFileOrDie(path, c.text);
    Result<ModelDescription> m = ImportHfConfigFile(path, nullptr);
    ASSERT_FALSE(m.ok()) << c.text;
    EXPECT_EQ(m.error().code, ErrorCode::kCorrupt) << m.error().ToString();
    EXPECT_NE(m.error().message.find(path), std::string::npos) << m.error().message;
    EXPECT_NE(m.error().message.find(c.needle), std::string::npos) << m.error().message;
  }
}

TEST(HfImportTest, DTypePrecedence) {
  const std::string cfg = R"({"model_type": "gpt2", "n_embd": 8, "n_layer": 1, "n_head": 2, "vocab_size": 10,
                              "n_positions": 4, "torch_dtype": "bfloat16"})";
  Result<ModelDescription> from_config = ImportHfConfigText(cfg);
  ASSERT_TRUE(from_config.ok());
  for (const TensorSpec& t : from_config->AllParams()) EXPECT_EQ(t.dtype, DType::kBF16) << t.name;
  // A tensor list overrides: its own dtype per tensor, else its dominant dtype.
  std::vector<TensorSpec> list = {{"transformer.wte.weight", {10, 8}, DType::kF16},
                                  {"transformer.h.0.ln_1.weight", {8}, DType::kF32}};
  HfImportOptions o;
  o.tensors = &list;
  Result<ModelDescription> with_list = ImportHfConfigText(cfg, o);
  ASSERT_TRUE(with_list.ok());
  EXPECT_EQ(with_list->FindParam("transformer.wte.weight")->dtype, DType::kF16);
  EXPECT_EQ(with_list->FindParam("transformer.h.0.ln_1.weight")->dtype, DType::kF32);
  EXPECT_EQ(with_list->FindParam("transformer.h.0.attn.c_attn.weight")->dtype, DType::kF16);
}

TEST(HfImportTest, Examples) {
  Result<ModelDescription> llama = ImportExample(Root() + "planner/examples/llama-2-7b");
  ASSERT_TRUE(llama.ok()) << llama.error().ToString();
  EXPECT_EQ(llama->name, "llama-2-7b");
  EXPECT_EQ(llama->blocks.size(), 35u);
  EXPECT_EQ(llama->AllParams().size(), 291u);
  EXPECT_EQ(llama->TotalParams(), 6738415616);
  EXPECT_EQ(llama->blocks[1].params[0].dtype, DType::kF16);
  Result<std::vector<TensorSpec>> llama_tensors = LoadTensorList(Root() + "planner/examples/llama-2-7b/tensors.json");
  ASSERT_TRUE(llama_tensors.ok());
  EXPECT_TRUE(ValidateAgainstTensors(*llama, *llama_tensors, "tensors.json").ok());

  Result<ModelDescription> gptj = ImportExample(Root() + "planner/examples/gpt-j-6b");
  ASSERT_TRUE(gptj.ok()) << gptj.error().ToString();
  EXPECT_EQ(gptj->architecture, "gptj");
  EXPECT_EQ(gptj->AllParams().size(), 285u);
  EXPECT_EQ(gptj->TotalParams(), 6050882784);
  EXPECT_EQ(gptj->config.rotary_dim, 64u);
  EXPECT_EQ(gptj->config.head_dim, 256u);
  EXPECT_EQ(gptj->config.intermediate_size, 16384u);
  EXPECT_EQ(gptj->blocks[1].runtime_buffers.size(), 1u);
  EXPECT_EQ(gptj->blocks.back().params.size(), 2u);  // lm_head weight and bias
  Result<std::vector<TensorSpec>> gptj_tensors = LoadTensorList(Root() + "planner/examples/gpt-j-6b/tensors.json");
  ASSERT_TRUE(gptj_tensors.ok());
  EXPECT_TRUE(ValidateAgainstTensors(*gptj, *gptj_tensors, "tensors.json").ok());

  // No tensors.json: synthesized from the config.
  Result<ModelDescription> big = ImportExample(Root() + "planner/examples/llama-3.1-405b");
  ASSERT_TRUE(big.ok()) << big.error().ToString();
  EXPECT_EQ(big->config.num_layers, 126u);
  EXPECT_EQ(big->config.num_kv_heads, 8u);
  EXPECT_EQ(big->TotalParams(), 405853388800);
  EXPECT_EQ(big->blocks[1].params[0].dtype, DType::kBF16);
  EXPECT_EQ(big->config.rope_scaling["rope_type"], "llama3");
  EXPECT_DOUBLE_EQ(big->config.rope_theta, 500000.0);
}

TEST(HfImportTest, TensorListRoundTrip) {
  std::vector<TensorSpec> list = {{"a", {2, 3}, DType::kF16}, {"b", {}, DType::kI64}};
  Result<std::vector<TensorSpec>> back = ParseTensorList(TensorListToJson(list), "x");
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back, list);
  EXPECT_FALSE(ParseTensorList(R"([{"name": "a", "shape": [1], "dtype": "Q4"}])", "x").ok());
  EXPECT_FALSE(ParseTensorList(R"({"x": 1})", "x").ok());
}

// A tiny GPT-2 checkpoint with the old tensor names ("h.0...." without "transformer.") and the causal-mask
// buffers old checkpoints carry.
TEST(HfImportTest, Gpt2OldNamingFromCheckpointDirectory) {
  const std::string dir = testing::NewTempDir("gpt2_old");
  const json config = {{"model_type", "gpt2"}, {"n_embd", 8}, {"n_layer", 2}, {"n_head", 2},
                       {"vocab_size", 10},     {"n_positions", 4}};
  testing::WriteFileOrDie(dir + "/config.json", config.dump());
  Result<ModelDescription> synth = ImportHfConfig(config);
  ASSERT_TRUE(synth.ok());
  std::vector<TensorSpec> tensors;
  for (TensorSpec t : synth->AllParams()) {
    t.name = t.name.substr(std::string("transformer.").size());
    tensors.push_back(t);
  }
  tensors.push_back({"h.0.attn.bias", {1, 1, 4, 4}, DType::kF32});
  tensors.push_back({"h.1.attn.bias", {1, 1, 4, 4}, DType::kF32});
  json header = json::object();
  uint64_t offset = 0;
  for (const TensorSpec& t : tensors) {
    header[t.name] = {{"dtype", DTypeString(t.dtype)}, {"shape", t.shape}, {"data_offsets", {offset, offset + t.bytes()}}};
    offset += t.bytes();
  }
  testing::WriteFileOrDie(dir + "/model.safetensors", testing::SafetensorsBytes(header.dump(), std::string(offset, '\0')));

  Result<ModelDescription> m = ImportHfDirectory(dir);
  ASSERT_TRUE(m.ok()) << m.error().ToString();
  EXPECT_EQ(m->blocks[0].name, "transformer.wte");
  EXPECT_EQ(m->blocks[0].prefix, "wte.");
  EXPECT_EQ(m->blocks[2].prefix, "h.0.");
  EXPECT_EQ(m->blocks.back().tied, std::vector<std::string>{"wte.weight"});
  Result<Checkpoint> ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.error().ToString();
  Status st = ValidateAgainstCheckpoint(*m, *ckpt);
  EXPECT_TRUE(st.ok()) << st.error().ToString();
}

}  // namespace
}  // namespace bigplan

namespace bigplan {
namespace {

const char* kLlamaShape = R"("hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4,
    "num_key_value_heads": 2, "intermediate_size": 8, "vocab_size": 10)";

Result<ModelDescription> Llamaish(const std::string& model_type, const std::string& extra) {
  return ImportHfConfigText("{\"model_type\": \"" + model_type + "\", " + kLlamaShape + (extra.empty() ? "" : ", ") +
                                extra + "}",
                            {}, "/m/config.json");
}

std::vector<bool> Flags(std::initializer_list<int> v) {
  std::vector<bool> out;
  for (int b : v) out.push_back(b != 0);
  return out;
}

TEST(HfImportSlidingWindowTest, MistralAsTransformersDecides) {
  auto absent = Llamaish("mistral", "");  // MistralConfig's default: 4096
  ASSERT_TRUE(absent.ok()) << absent.error().ToString();
  EXPECT_EQ(absent->config.sliding_window, 4096u);
  EXPECT_EQ(absent->config.sliding_window_layers, Flags({1, 1, 1, 1}));
  auto none = Llamaish("mistral", R"("sliding_window": null)");
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(none->config.sliding_window, 0u);
  EXPECT_TRUE(none->config.sliding_window_layers.empty());
  // layer_types has no effect on MistralModel.
  auto w = Llamaish("mistral", R"("sliding_window": 16, "layer_types": ["full_attention", "full_attention",
                                  "full_attention", "full_attention"])");
  ASSERT_TRUE(w.ok());
  EXPECT_EQ(w->config.sliding_window, 16u);
  EXPECT_EQ(w->config.sliding_window_layers, Flags({1, 1, 1, 1}));
  auto bad = Llamaish("mistral", R"("sliding_window": 0)");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message.find("/m/config.json: field \"sliding_window\""), std::string::npos);
  // Llama has no sliding window.
  auto llama = Llamaish("llama", R"("sliding_window": 16)");
  ASSERT_TRUE(llama.ok());
  EXPECT_EQ(llama->config.sliding_window, 0u);
}

TEST(HfImportSlidingWindowTest, Qwen2AsTransformersDecides) {
  auto off = Llamaish("qwen2", R"("sliding_window": 16, "max_window_layers": 1)");  // use_sliding_window false
  ASSERT_TRUE(off.ok()) << off.error().ToString();
  EXPECT_EQ(off->config.sliding_window, 0u);
  auto by_max = Llamaish("qwen2", R"("use_sliding_window": true, "sliding_window": 16, "max_window_layers": 2)");
  ASSERT_TRUE(by_max.ok());
  EXPECT_EQ(by_max->config.sliding_window, 16u);
  EXPECT_EQ(by_max->config.sliding_window_layers, Flags({0, 0, 1, 1}));
  auto default_max = Llamaish("qwen2", R"("use_sliding_window": true, "sliding_window": 16)");  // 28 > 4 layers
  ASSERT_TRUE(default_max.ok());
  EXPECT_EQ(default_max->config.sliding_window, 0u);
  auto by_types = Llamaish("qwen2", R"("use_sliding_window": true, "sliding_window": 8, "layer_types":
      ["sliding_attention", "full_attention", "sliding_attention", "full_attention"])");
  ASSERT_TRUE(by_types.ok());
  EXPECT_EQ(by_types->config.sliding_window_layers, Flags({1, 0, 1, 0}));
  auto sliding_without_window = Llamaish("qwen2", R"("layer_types":
      ["sliding_attention", "full_attention", "full_attention", "full_attention"])");
  ASSERT_FALSE(sliding_without_window.ok());
  EXPECT_NE(sliding_without_window.error().message.find("field \"layer_types\": layer 0 is sliding_attention but"),
            std::string::npos)
      << sliding_without_window.error().message;
  auto unknown_type = Llamaish("qwen2", R"("use_sliding_window": true, "layer_types":
      ["chunked_attention", "full_attention", "full_attention", "full_attention"])");
  ASSERT_FALSE(unknown_type.ok());
  EXPECT_EQ(unknown_type.error().code, ErrorCode::kUnsupported);
  EXPECT_NE(unknown_type.error().message.find("\"chunked_attention\""), std::string::npos);
  auto wrong_count = Llamaish("qwen2", R"("layer_types": ["full_attention"])");
  ASSERT_FALSE(wrong_count.ok());
  EXPECT_NE(wrong_count.error().message.find("layer_types"), std::string::npos);
}

TEST(HfImportSlidingWindowTest, DescriptionRoundTripKeepsTheWindowAndOldDigests) {
  auto m = Llamaish("qwen2", R"("use_sliding_window": true, "sliding_window": 16, "max_window_layers": 2)");
  ASSERT_TRUE(m.ok());
  auto back = ModelDescription::Parse(m->ToJson(), "d.json");
  ASSERT_TRUE(back.ok()) << back.error().ToString();
  EXPECT_EQ(back->config, m->config);
  // A model without the features writes none of the new keys.
  auto plain = Llamaish("llama", "");
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(plain->ToJson().find("sliding_window"), std::string::npos);
  EXPECT_EQ(plain->ToJson().find("scale_attn"), std::string::npos);
}

TEST(HfImportTest, Gpt2AttentionScalingKeys) {
  auto m = ImportHfConfigText(R"({"model_type": "gpt2", "n_embd": 8, "n_layer": 2, "n_head": 2, "vocab_size": 10,
      "scale_attn_by_inverse_layer_idx": true, "reorder_and_upcast_attn": true, "scale_attn_weights": false})");
  ASSERT_TRUE(m.ok()) << m.error().ToString();
  EXPECT_TRUE(m->config.scale_attn_by_inverse_layer_idx);
  EXPECT_TRUE(m->config.reorder_and_upcast_attn);
  EXPECT_FALSE(m->config.scale_attn_weights);
  auto back = ModelDescription::Parse(m->ToJson(), "d.json");
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->config, m->config);
}

// What the executor would refuse, the importer refuses first, naming the config file and the key.
TEST(HfImportTest, MathKeysTheExecutorWouldRefuseAreRefusedAtImport) {
  struct Case {
    std::string model_type, extra, expect;
  } cases[] = {
      {"llama", R"("rope_scaling": {"rope_type": "longrope", "short_factor": [1], "long_factor": [1]})",
       "field \"rope_scaling\": longrope needs 'short_factor': a list of rotary_dim / 2 = 8 numbers"},
      {"llama", R"("rope_scaling": {"rope_type": "linear", "factor": 0})", "'factor' must be positive"},
      {"llama", R"("rope_scaling": {"rope_type": "linear", "factor": -2.0})", "'factor' must be positive"},
      {"llama", R"("rope_scaling": {"rope_type": "linear"})", "linear needs a numeric 'factor'"},
      {"llama", R"("rope_scaling": {"rope_type": "llama3", "factor": 8, "low_freq_factor": 2, "high_freq_factor": 2,
                   "original_max_position_embeddings": 64})",
       "llama3 high_freq_factor equals low_freq_factor"},
      {"llama", R"("rope_parameters": {"rope_type": "llama3", "rope_theta": 10000, "factor": 8, "low_freq_factor": 1,
                   "high_freq_factor": 4, "original_max_position_embeddings": 0})",
       "llama3 needs original_max_position_embeddings > 0"},
      {"llama", R"("rope_scaling": {"rope_type": "magic", "factor": 2})", "unsupported rope type \"magic\""},
      {"llama", R"("partial_rotary_factor": 0.5)", "field \"partial_rotary_factor\": partial rotary is not supported for llama"},
      {"llama", R"("rope_parameters": {"rope_type": "default", "rope_theta": 10000, "partial_rotary_factor": 0.5})",
       "partial rotary is not supported for llama"},
      {"llama", R"("hidden_act": "quick_gelu")", "activation \"quick_gelu\" is not supported"},
      {"mistral", R"("quantization_config": {"quant_method": "awq", "bits": 4})", "quantization_config"},
      {"mistral", R"("quantization_config": {"quant_method": "gptq", "bits": 8})", "quantization_config"},
      {"qwen2", R"("final_logit_softcapping": 30.0)", "field \"final_logit_softcapping\": 30.0 is not supported for qwen2"},
      {"llama", R"("num_local_experts": 8)", "field \"num_local_experts\""},
  };
  for (const Case& c : cases) {
    auto r = Llamaish(c.model_type, c.extra);
    ASSERT_FALSE(r.ok()) << c.extra;
    EXPECT_EQ(r.error().message.rfind("/m/config.json: ", 0), 0u) << r.error().message;
    EXPECT_NE(r.error().message.find(c.expect), std::string::npos) << r.error().message;
  }
  auto gelu = ImportHfConfigText(R"({"model_type": "gpt2", "n_embd": 8, "n_layer": 1, "n_head": 2, "vocab_size": 10,
      "activation_function": "gelu_10"})", {}, "/g/config.json");
  ASSERT_FALSE(gelu.ok());
  EXPECT_NE(gelu.error().message.find("/g/config.json: field \"activation_function\""), std::string::npos);
  auto cross = ImportHfConfigText(R"({"model_type": "gpt2", "n_embd": 8, "n_layer": 1, "n_head": 2, "vocab_size": 10,
      "add_cross_attention": true})", {}, "/g/config.json");
  ASSERT_FALSE(cross.ok());
  EXPECT_NE(cross.error().message.find("field \"add_cross_attention\""), std::string::npos);
  // Neutral values pass.
  EXPECT_TRUE(Llamaish("llama", R"("partial_rotary_factor": 1.0, "quantization_config": null,
                                   "num_local_experts": 0, "rope_scaling": {"rope_type": "linear", "factor": 2})").ok());
}

TEST(HfImportTest, MathKeyRegistryListsEveryFamily) {
  for (const std::string& type : SupportedModelTypes()) {
    auto keys = MathKeysOf(type);
    EXPECT_GT(keys.size(), 10u) << type;
    bool has_refused = false, has_quant = false;
    for (const MathKey& k : keys) {
      has_refused = has_refused || !k.implemented;
      has_quant = has_quant || (k.key == "quantization_config" && k.implemented);  // read by the importer
    }
    // (Mixture-of-experts families refuse pre-quantized checkpoints.)
    const bool moe = type == "mixtral" || type == "qwen2_moe" || type == "qwen3_moe";
    EXPECT_TRUE(has_refused && has_quant != moe) << type;
  }
  auto qwen = MathKeysOf("qwen2");
  EXPECT_TRUE(std::any_of(qwen.begin(), qwen.end(),
                          [](const MathKey& k) { return k.key == "max_window_layers" && k.implemented; }));
  auto gpt2 = MathKeysOf("gpt2");
  EXPECT_TRUE(std::any_of(gpt2.begin(), gpt2.end(),
                          [](const MathKey& k) { return k.key == "scale_attn_by_inverse_layer_idx" && k.implemented; }));
}

}  // namespace
}  // namespace bigplan
