#include "planner/weight_format.h"

#include <gtest/gtest.h>

#include "planner/accounting.h"
#include "planner/hf_import.h"

namespace bigplan {
namespace {

constexpr const char* kLlama = R"({
  "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 256, "intermediate_size": 704,
  "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64,
  "vocab_size": 512, "max_position_embeddings": 512, "rms_norm_eps": 1e-06, "hidden_act": "silu",
  "rope_theta": 10000.0, "tie_word_embeddings": TIED, "torch_dtype": "bfloat16"})";

ModelDescription Llama(bool tied) {
  std::string text = kLlama;
  text.replace(text.find("TIED"), 4, tied ? "true" : "false");
  Result<ModelDescription> m = ImportHfConfigText(text);
  EXPECT_TRUE(m.ok()) << m.error().ToString();
  return *m;
}

TEST(WeightFormatTest, Int4MarksEveryLinearMatrixAndNothingElse) {
  ModelDescription m = Llama(/*tied=*/false);
  ASSERT_TRUE(ApplyWeightFormat(&m, quant::Format::kInt4).ok());
  int quantized = 0;
  for (const BlockDesc& b : m.blocks) {
    for (const TensorSpec& t : b.params) {
      const bool linear = t.name.find("_proj.weight") != std::string::npos || t.name == "lm_head.weight";
      EXPECT_EQ(t.format != quant::Format::kNone, linear) << t.name;
      if (!linear) continue;
      ++quantized;
      EXPECT_EQ(t.format, quant::Format::kInt4);
      // 704 columns (down_proj) take groups of 64; the others 128.
      EXPECT_EQ(t.group, t.shape[1] == 704 ? 64 : 128) << t.name;
    }
  }
  EXPECT_EQ(quantized, 2 * 7 + 1);
  // The run-time size of q_proj [256, 256] in groups of 128: 128 bytes of values + 2 groups x 4 bytes per row.
  const TensorSpec* q = m.FindParam("model.layers.0.self_attn.q_proj.weight");
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(q->bytes_as(DType::kBF16), 256u * (128 + 8));
  const QuantizedSummary s = SummarizeQuantized(m, DType::kBF16);
  EXPECT_EQ(s.tensors, 15);
  EXPECT_LT(s.bytes * 3, s.plain_bytes);  // under a third of bf16
}

// A mixture-of-experts model: every expert's, attention's and the head's matrices, not the routers (they stay at the
// execution dtype: their choices as the checkpoint's, and the next-layer prediction reads their rows).
TEST(WeightFormatTest, RoutersStayPlain) {
  Result<ModelDescription> m = ImportHfConfigText(R"({
    "architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "hidden_size": 256, "intermediate_size": 512,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "num_local_experts": 4,
    "num_experts_per_tok": 2, "vocab_size": 512, "max_position_embeddings": 512, "rms_norm_eps": 1e-05,
    "hidden_act": "silu", "tie_word_embeddings": false, "torch_dtype": "bfloat16"})");
  ASSERT_TRUE(m.ok()) << m.error().ToString();
  ASSERT_TRUE(ApplyWeightFormat(&*m, quant::Format::kInt8).ok());
  int routers = 0, experts = 0;
  for (const BlockDesc& b : m->blocks) {
    for (const TensorSpec& t : b.params) {
      if (t.name.find("block_sparse_moe.gate.weight") != std::string::npos) {
        ++routers;
        EXPECT_EQ(t.format, quant::Format::kNone) << t.name;
      }
      if (t.name.find(".experts.") != std::string::npos) {
        ++experts;
        EXPECT_EQ(t.format, quant::Format::kInt8) << t.name;
      }
    }
  }
  EXPECT_EQ(routers, 2);
  EXPECT_EQ(experts, 2 * 4 * 3);
}

TEST(WeightFormatTest, BlockLayoutsUseTheQuantizedSizes) {
  ModelDescription plain = Llama(false), fp8 = Llama(false);
  ASSERT_TRUE(ApplyWeightFormat(&fp8, quant::Format::kFp8E4M3).ok());
  const BlockWeightLayout a = LayoutBlockWeights(plain, 1, DType::kBF16);
  const BlockWeightLayout b = LayoutBlockWeights(fp8, 1, DType::kBF16);
  ASSERT_EQ(a.weights.size(), b.weights.size());
  for (size_t i = 0; i < a.weights.size(); ++i) {
    if (b.weights[i].format == quant::Format::kNone) {
      EXPECT_EQ(a.weights[i].size_bytes, b.weights[i].size_bytes);
    } else {
      // fp8 per row: cols bytes + one float32 scale per row.
      const int64_t rows = b.weights[i].shape[0], cols = b.weights[i].shape[1];
      EXPECT_EQ(b.weights[i].size_bytes, uint64_t(rows * (cols + 4))) << b.weights[i].tensor;
      EXPECT_EQ(b.weights[i].group, cols);
    }
  }
  EXPECT_LT(b.total_bytes, a.total_bytes);
}

TEST(WeightFormatTest, TiedHeadStaysPlainAndDescriptionRoundTrips) {
  ModelDescription m = Llama(/*tied=*/true);
  ASSERT_TRUE(ApplyWeightFormat(&m, quant::Format::kInt8).ok());
  const TensorSpec* embed = m.FindParam("model.embed_tokens.weight");
  ASSERT_NE(embed, nullptr);
  EXPECT_EQ(embed->format, quant::Format::kNone);
  Result<ModelDescription> back = ModelDescription::Parse(m.ToJson(), "roundtrip");
  ASSERT_TRUE(back.ok()) << back.error().ToString();
  EXPECT_EQ(*back, m);
  EXPECT_NE(m.Digest(), Llama(true).Digest());  // the format is part of the plan's model digest
}

TEST(WeightFormatTest, AGivenGroupReplacesTheDefaultOrIsRefusedNamingTheTensor) {
  ModelDescription m = Llama(false);
  ASSERT_TRUE(ApplyWeightFormat(&m, quant::Format::kInt4, 32).ok());
  for (const BlockDesc& b : m.blocks)
    for (const TensorSpec& t : b.params)
      if (t.format != quant::Format::kNone) EXPECT_EQ(t.group, 32) << t.name;
  ModelDescription bad = Llama(false);
  Status s = ApplyWeightFormat(&bad, quant::Format::kInt8, 256);  // down_proj has 704 columns
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(s.error().message.find("down_proj.weight has 704 columns"), std::string::npos) << s.error().message;
  EXPECT_FALSE(ApplyWeightFormat(&bad, quant::Format::kInt4, 11).ok());
}

TEST(WeightFormatTest, NoneIsANoOpAndBadDescriptionsAreRefused) {
  ModelDescription m = Llama(false);
  const ModelDescription before = m;
  ASSERT_TRUE(ApplyWeightFormat(&m, quant::Format::kNone).ok());
  EXPECT_EQ(m, before);

  std::string json = m.ToJson();
  const std::string key = "\"dtype\": \"BF16\"";
  const size_t at = json.find("self_attn.q_proj.weight");
  ASSERT_NE(at, std::string::npos);
  const size_t dtype = json.find(key, at);
  ASSERT_NE(dtype, std::string::npos);
  std::string bad = json;
  bad.insert(dtype + key.size(), ", \"format\": \"int4\", \"group\": 100");
  Result<ModelDescription> r = ModelDescription::Parse(bad, "desc.json");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("desc.json"), std::string::npos) << r.error().message;
  EXPECT_NE(r.error().message.find("group"), std::string::npos) << r.error().message;
  bad = json;
  bad.insert(dtype + key.size(), ", \"format\": \"int3\", \"group\": 64");
  EXPECT_FALSE(ModelDescription::Parse(bad, "desc.json").ok());
}

}  // namespace
}  // namespace bigplan
