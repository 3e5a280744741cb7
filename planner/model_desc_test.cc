#include "planner/model_desc.h"

#include <gtest/gtest.h>

namespace bigplan {
namespace {

constexpr char kTiny[] = R"({
  "format": "bigplan.model/1",
  "name": "tiny",
  "architecture": "llama",
  "config": {"hidden_size": 8, "num_layers": 2, "num_heads": 2, "num_kv_heads": 1, "head_dim": 4,
             "intermediate_size": 16, "vocab_size": 10, "max_position_embeddings": 32, "norm_eps": 1e-5,
             "rope_theta": 10000.0, "rotary_dim": 4, "attention_bias": false, "mlp_bias": false,
             "tie_word_embeddings": true, "activation": "silu", "rope_scaling": null, "bos_token_id": 1,
             "eos_token_ids": [2]},
  "hf_config": {"model_type": "llama", "hidden_size": 8, "rms_norm_eps": 1e-05},
  "blocks": [
    {"name": "model.embed_tokens", "kind": "embedding", "layer": -1, "prefix": "model.embed_tokens.",
     "no_split": true, "params": [{"name": "model.embed_tokens.weight", "shape": [10, 8], "dtype": "BF16"}], "tied": []},
    {"name": "model.layers.0", "kind": "decoder_layer", "layer": 0, "prefix": "model.layers.0.",
     "params": [{"name": "model.layers.0.input_layernorm.weight", "shape": [8], "dtype": "BF16"}]},
    {"name": "model.layers.1", "kind": "decoder_layer", "layer": 1, "prefix": "model.layers.1.",
     "params": [{"name": "model.layers.1.input_layernorm.weight", "shape": [8], "dtype": "BF16"}]},
    {"name": "model.norm", "kind": "final_norm", "layer": -1, "prefix": "model.norm.",
     "params": [{"name": "model.norm.weight", "shape": [8], "dtype": "BF16"}], "tied": []},
    {"name": "lm_head", "kind": "lm_head", "layer": -1, "prefix": "lm_head.", "params": [],
     "tied": ["model.embed_tokens.weight"]}
  ]
})";

std::string Replace(std::string s, const std::string& from, const std::string& to) {
  size_t pos = s.find(from);
  EXPECT_NE(pos, std::string::npos) << from;
  if (pos != std::string::npos) s.replace(pos, from.size(), to);
  return s;
}

TEST(ModelDescTest, ParsesAndRoundTrips) {
  Result<ModelDescription> m = ModelDescription::Parse(kTiny, "tiny.json");
  ASSERT_TRUE(m.ok()) << m.error().ToString();
  EXPECT_EQ(m->name, "tiny");
  EXPECT_EQ(m->blocks.size(), 5u);
  EXPECT_EQ(m->blocks[4].tied, std::vector<std::string>{"model.embed_tokens.weight"});
  EXPECT_EQ(m->config.eos_token_ids, std::vector<int64_t>{2});
  EXPECT_TRUE(m->config.rope_scaling.is_null());
  EXPECT_EQ(m->TotalParams(), 80 + 24);
  EXPECT_EQ(m->TotalParamBytes(), 2u * (80 + 24));
  int owner = -2;
  ASSERT_NE(m->FindParam("model.norm.weight", &owner), nullptr);
  EXPECT_EQ(owner, 3);
  EXPECT_EQ(m->FindBlockIndex("lm_head"), 4);
  EXPECT_EQ(m->FindBlock("nope"), nullptr);

  Result<ModelDescription> again = ModelDescription::Parse(m->ToJson(), "again");
  ASSERT_TRUE(again.ok()) << again.error().ToString();
  EXPECT_EQ(*again, *m);
  EXPECT_EQ(again->ToJson(-1), m->ToJson(-1));
  EXPECT_EQ(again->Digest(), m->Digest());
  EXPECT_EQ(m->Digest().size(), 64u);
  // The canonical text starts with the format.
  EXPECT_EQ(m->ToJson(-1).rfind("{\"format\":\"bigplan.model/1\",\"name\":\"tiny\"", 0), 0u);
}

TEST(ModelDescTest, DigestChangesWithContent) {
  Result<ModelDescription> a = ModelDescription::Parse(kTiny, "a");
  ASSERT_TRUE(a.ok());
  ModelDescription b = *a;
  b.blocks[1].params[0].dtype = DType::kF16;
  EXPECT_NE(a->Digest(), b.Digest());
  ModelDescription c = *a;
  c.hf_config["extra"] = 1;
  EXPECT_NE(a->Digest(), c.Digest());
}

TEST(ModelDescTest, RuntimeBuffersRoundTrip) {
  Result<ModelDescription> a = ModelDescription::Parse(kTiny, "a");
  ASSERT_TRUE(a.ok());
  a->blocks[1].runtime_buffers.push_back({"model.layers.0.attn.embed_positions", {32, 4}, DType::kF32});
  Result<ModelDescription> b = ModelDescription::Parse(a->ToJson(), "b");
  ASSERT_TRUE(b.ok()) << b.error().ToString();
  EXPECT_EQ(*a, *b);
}

struct BadCase {
  std::string from, to, expect_in_message;
  ErrorCode code = ErrorCode::kInvalidArgument;
};

TEST(ModelDescTest, ErrorsNameTheField) {
  const BadCase cases[] = {
      {"\"format\": \"bigplan.model/1\"", "\"format\": \"bigplan.model/2\"", "incompatible version", ErrorCode::kIncompatible},
      {"\"format\": \"bigplan.model/1\"", "\"format\": \"other\"", "field \"format\""},
      {"\"architecture\": \"llama\"", "\"architecture\": \"bert\"", "architecture", ErrorCode::kUnsupported},
      {"\"hidden_size\": 8,", "", "field \"config.hidden_size\": missing"},
      {"\"num_kv_heads\": 1", "\"num_kv_heads\": 3", "config.num_kv_heads"},
      {"\"num_heads\": 2", "\"num_heads\": \"2\"", "config.num_heads\": expected an integer"},
      {"\"rope_scaling\": null", "\"rope_scaling\": 3", "config.rope_scaling"},
      {"\"shape\": [10, 8]", "\"shape\": [10, -8]", "blocks[0].params[0].shape[1]"},
      {"\"dtype\": \"BF16\"}], \"tied\": []}", "\"dtype\": \"Q4\"}], \"tied\": []}", "blocks[0].params[0].dtype"},
      {"\"kind\": \"final_norm\"", "\"kind\": \"norm\"", "blocks[3].kind"},
      {"\"layer\": 1,", "\"layer\": 2,", "blocks[2].layer"},
      {"\"name\": \"model.layers.1\",", "\"name\": \"model.layers.0\",", "duplicate block name"},
      {"\"name\": \"model.norm.weight\"", "\"name\": \"norm.weight\"", "blocks[3].params[0].name"},
      {"\"tied\": [\"model.embed_tokens.weight\"]", "\"tied\": [\"wte.weight\"]", "blocks[4].tied[0]"},
      {"\"num_layers\": 2", "\"num_layers\": 3", "config.num_layers is 3"},
  };
  for (const BadCase& c : cases) {
    std::string text = Replace(kTiny, c.from, c.to);
    Result<ModelDescription> m = ModelDescription::Parse(text, "bad.json");
    ASSERT_FALSE(m.ok()) << c.to;
    EXPECT_EQ(m.error().code, c.code) << m.error().ToString();
    EXPECT_NE(m.error().message.find(c.expect_in_message), std::string::npos) << m.error().message;
    EXPECT_EQ(m.error().message.rfind("bad.json", 0), 0u) << m.error().message;
  }
}

TEST(ModelDescTest, MalformedJsonIsCorrupt) {
  Result<ModelDescription> m = ModelDescription::Parse("{", "x.json");
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.error().code, ErrorCode::kCorrupt);
  Result<ModelDescription> n = ModelDescription::Load("/nonexistent/model.json");
  ASSERT_FALSE(n.ok());
  EXPECT_EQ(n.error().code, ErrorCode::kNotFound);
}

TEST(ModelDescTest, BlockKinds) {
  for (BlockKind k : {BlockKind::kEmbedding, BlockKind::kPositionEmbedding, BlockKind::kDecoderLayer,
                      BlockKind::kFinalNorm, BlockKind::kLmHead}) {
    Result<BlockKind> back = ParseBlockKind(BlockKindName(k));
    ASSERT_TRUE(back.ok());
    EXPECT_EQ(*back, k);
  }
  EXPECT_FALSE(ParseBlockKind("attention").ok());
}

}  // namespace
}  // namespace bigplan
