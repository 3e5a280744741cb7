#include "planner/validate.h"

#include <gtest/gtest.h>

#include "planner/hf_import.h"

namespace bigplan {
namespace {

ModelDescription Tiny() {
  Result<ModelDescription> m = ImportHfConfigText(
      R"({"model_type": "llama", "hidden_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2,
          "intermediate_size": 16, "vocab_size": 10, "torch_dtype": "float16"})");
  EXPECT_TRUE(m.ok()) << m.error().ToString();
  return *m;
}

TEST(ValidateTest, MatchingTensorsPass) {
  ModelDescription m = Tiny();
  std::vector<TensorSpec> tensors = ExpectedTensors(m);
  EXPECT_TRUE(ValidateAgainstTensors(m, tensors, "ckpt").ok());
  // Known non-parameter buffers of old checkpoints are ignored.
  tensors.push_back({"model.layers.0.self_attn.rotary_emb.inv_freq", {4}, DType::kF32});
  tensors.push_back({"transformer.h.0.attn.masked_bias", {}, DType::kF32});
  EXPECT_TRUE(ValidateAgainstTensors(m, tensors, "ckpt").ok());
}

TEST(ValidateTest, ReportsEveryProblemAtOnce) {
  ModelDescription m = Tiny();
  std::vector<TensorSpec> tensors;
  for (TensorSpec t : ExpectedTensors(m)) {
    if (t.name == "lm_head.weight") continue;                                        // missing
    if (t.name == "model.norm.weight") t.shape = {9};                                 // shape
    if (t.name == "model.layers.1.mlp.up_proj.weight") t.dtype = DType::kBF16;        // dtype
    tensors.push_back(t);
  }
  tensors.push_back({"model.layers.1.extra.weight", {3}, DType::kF16});  // unexpected
  Status st = ValidateAgainstTensors(m, tensors, "/ckpt");
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, ErrorCode::kMismatch);
  const std::string& msg = st.error().message;
  EXPECT_NE(msg.find("/ckpt: 4 problems"), std::string::npos) << msg;
  EXPECT_NE(msg.find("missing: lm_head.weight [10, 8] F16 (block lm_head)"), std::string::npos) << msg;
  EXPECT_NE(msg.find("shape mismatch: model.norm.weight: checkpoint [9], description [8]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("dtype mismatch: model.layers.1.mlp.up_proj.weight: checkpoint BF16, description F16"),
            std::string::npos)
      << msg;
  EXPECT_NE(msg.find("unexpected: model.layers.1.extra.weight [3] F16"), std::string::npos) << msg;

  ValidateOptions lenient;
  lenient.report_unexpected = false;
  Status st2 = ValidateAgainstTensors(m, tensors, "/ckpt", lenient);
  ASSERT_FALSE(st2.ok());
  EXPECT_NE(st2.error().message.find("3 problems"), std::string::npos);
}

TEST(ValidateTest, CapsTheList) {
  ModelDescription m = Tiny();
  Status st = ValidateAgainstTensors(m, {}, "empty");
  ASSERT_FALSE(st.ok());
  const size_t n = ExpectedTensors(m).size();
  ASSERT_GT(n, 20u);
  EXPECT_NE(st.error().message.find(std::to_string(n) + " problems"), std::string::npos);
  EXPECT_NE(st.error().message.find("... and " + std::to_string(n - 20) + " more"), std::string::npos);
  size_t lines = 0;
  for (char c : st.error().message) lines += c == '\n';
  EXPECT_EQ(lines, 21u);
}

TEST(ValidateTest, KnownBuffers) {
  EXPECT_TRUE(IsKnownNonParameterBuffer("h.3.attn.bias"));
  EXPECT_TRUE(IsKnownNonParameterBuffer("transformer.h.0.attn.masked_bias"));
  EXPECT_FALSE(IsKnownNonParameterBuffer("h.3.attn.c_attn.bias"));
  EXPECT_FALSE(IsKnownNonParameterBuffer("lm_head.bias"));
}

}  // namespace
}  // namespace bigplan
