#include "arch/binding.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace bigplan::arch {
namespace {

ModelConfig TinyConfig() {
  ModelConfig c;
  c.hidden_size = 8;
  c.num_layers = 1;
  c.num_heads = 2;
  c.num_kv_heads = 1;
  c.head_dim = 4;
  c.intermediate_size = 12;
  c.vocab_size = 10;
  c.max_position_embeddings = 16;
  c.rotary_dim = 4;
  return c;
}

struct Named {
  std::string name;
  std::vector<int64_t> shape;
};

Result<SlotTable> Bind(const FamilyInfo& f, const ModelConfig& c, const std::vector<BlockRef>& blocks, size_t self,
                       const std::vector<Named>& named) {
  std::vector<BlockTensor> tensors;
  for (const Named& n : named) tensors.push_back(BlockTensor{n.name, n.shape});
  return BindBlock(f, c, blocks, self, tensors, "b");
}

const std::vector<BlockRef> kLlamaBlocks = {{BlockKind::kEmbedding, "model.embed_tokens."},
                                            {BlockKind::kDecoderLayer, "model.layers.0."},
                                            {BlockKind::kFinalNorm, "model.norm."},
                                            {BlockKind::kLmHead, "lm_head."}};

std::vector<Named> LlamaLayer(const std::string& p) {
  return {{p + "self_attn.q_proj.weight", {8, 8}},      {p + "self_attn.k_proj.weight", {4, 8}},
          {p + "self_attn.v_proj.weight", {4, 8}},      {p + "self_attn.o_proj.weight", {8, 8}},
          {p + "mlp.gate_proj.weight", {12, 8}},        {p + "mlp.up_proj.weight", {12, 8}},
          {p + "mlp.down_proj.weight", {8, 12}},        {p + "input_layernorm.weight", {8}},
          {p + "post_attention_layernorm.weight", {8}}};
}

TEST(BindBlock, LlamaLayerFillsEverySlotByName) {
  const FamilyInfo& f = GetFamily(Family::kLlama);
  auto t = Bind(f, TinyConfig(), kLlamaBlocks, 1, LlamaLayer("model.layers.0."));
  ASSERT_TRUE(t.ok()) << t.error().ToString();
  EXPECT_EQ((*t)[static_cast<size_t>(Slot::kQ)], 0);
  EXPECT_EQ((*t)[static_cast<size_t>(Slot::kK)], 1);
  EXPECT_EQ((*t)[static_cast<size_t>(Slot::kDown)], 6);
  EXPECT_EQ((*t)[static_cast<size_t>(Slot::kPostNorm)], 8);
  EXPECT_EQ((*t)[static_cast<size_t>(Slot::kQBias)], -1);  // optional, absent
  EXPECT_EQ((*t)[static_cast<size_t>(Slot::kQkv)], -1);
}

TEST(BindBlock, OptionalBiasesBindWhenPresentAndAreRequiredByAttentionBias) {
  const FamilyInfo& f = GetFamily(Family::kLlama);
  std::vector<Named> layer = LlamaLayer("model.layers.0.");
  layer.push_back({"model.layers.0.self_attn.q_proj.bias", {8}});
  auto t = Bind(f, TinyConfig(), kLlamaBlocks, 1, layer);
  ASSERT_TRUE(t.ok()) << t.error().ToString();
  EXPECT_EQ((*t)[static_cast<size_t>(Slot::kQBias)], 9);
  ModelConfig biased = TinyConfig();
  biased.attention_bias = true;
  auto missing = Bind(f, biased, kLlamaBlocks, 1, layer);
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.error().message.find("missing tensor 'model.layers.0.self_attn.k_proj.bias' (slot k_bias)"),
            std::string::npos)
      << missing.error().message;
}

TEST(BindBlock, TiedLmHeadReadsTheEmbedding) {
  const FamilyInfo& f = GetFamily(Family::kLlama);
  auto t = Bind(f, TinyConfig(), kLlamaBlocks, 3, {{"model.embed_tokens.weight", {10, 8}}});
  ASSERT_TRUE(t.ok()) << t.error().ToString();
  EXPECT_EQ((*t)[static_cast<size_t>(Slot::kLmHead)], 0);
  auto own = Bind(f, TinyConfig(), kLlamaBlocks, 3, {{"lm_head.weight", {10, 8}}});
  ASSERT_TRUE(own.ok());
  EXPECT_EQ((*own)[static_cast<size_t>(Slot::kLmHead)], 0);
  auto both = Bind(f, TinyConfig(), kLlamaBlocks, 3, {{"lm_head.weight", {10, 8}}, {"model.embed_tokens.weight", {10, 8}}});
  ASSERT_FALSE(both.ok());
  EXPECT_NE(both.error().message.find("both fill slot lm_head"), std::string::npos) << both.error().message;
  auto none = Bind(f, TinyConfig(), kLlamaBlocks, 3, {});
  ASSERT_FALSE(none.ok());
  EXPECT_NE(none.error().message.find("missing tensor 'lm_head.weight'"), std::string::npos) << none.error().message;
}

TEST(BindBlock, UnknownMisshapedAndMissingTensorsAreNamed) {
  const FamilyInfo& f = GetFamily(Family::kLlama);
  std::vector<Named> layer = LlamaLayer("model.layers.0.");
  layer.push_back({"model.layers.0.self_attn.rotary.weight", {8}});
  auto unknown = Bind(f, TinyConfig(), kLlamaBlocks, 1, layer);
  ASSERT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.error().code, ErrorCode::kMismatch);
  EXPECT_NE(unknown.error().message.find("block b (llama decoder_layer): tensor 'model.layers.0.self_attn.rotary.weight' "
                                         "is not one the kernel reads"),
            std::string::npos)
      << unknown.error().message;

  layer = LlamaLayer("model.layers.0.");
  layer[1].shape = {8, 8};  // k_proj as if without GQA
  auto shaped = Bind(f, TinyConfig(), kLlamaBlocks, 1, layer);
  ASSERT_FALSE(shaped.ok());
  EXPECT_NE(shaped.error().message.find("'model.layers.0.self_attn.k_proj.weight' has shape [8, 8], the k slot takes [4, 8]"),
            std::string::npos)
      << shaped.error().message;

  layer = LlamaLayer("model.layers.0.");
  layer.erase(layer.begin() + 5);  // up_proj
  auto missing = Bind(f, TinyConfig(), kLlamaBlocks, 1, layer);
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.error().message.find("missing tensor 'model.layers.0.mlp.up_proj.weight' (slot up)"),
            std::string::npos)
      << missing.error().message;

  // A tensor of another layer is not this block's.
  auto other = Bind(f, TinyConfig(), kLlamaBlocks, 1, LlamaLayer("model.layers.1."));
  EXPECT_FALSE(other.ok());
}

TEST(BindBlock, Phi3FusedTensorsFillTheirOwnSlots) {
  const FamilyInfo& f = GetFamily(Family::kPhi3);
  const std::string p = "model.layers.0.";
  auto t = Bind(f, TinyConfig(), kLlamaBlocks, 1,
                {{p + "self_attn.qkv_proj.weight", {16, 8}}, {p + "self_attn.o_proj.weight", {8, 8}},
                 {p + "mlp.gate_up_proj.weight", {24, 8}}, {p + "mlp.down_proj.weight", {8, 12}},
                 {p + "input_layernorm.weight", {8}}, {p + "post_attention_layernorm.weight", {8}}});
  ASSERT_TRUE(t.ok()) << t.error().ToString();
  EXPECT_EQ((*t)[static_cast<size_t>(Slot::kQkv)], 0);
  EXPECT_EQ((*t)[static_cast<size_t>(Slot::kGateUp)], 2);
  EXPECT_EQ((*t)[static_cast<size_t>(Slot::kQ)], -1);
}

TEST(BindBlock, Gpt2LegacyNamesAndTiedHead) {
  const FamilyInfo& f = GetFamily(Family::kGpt2);
  ModelConfig c = TinyConfig();
  c.num_kv_heads = 2;
  const std::vector<BlockRef> blocks = {{BlockKind::kEmbedding, "wte."},
                                        {BlockKind::kPositionEmbedding, "wpe."},
                                        {BlockKind::kFinalNorm, "ln_f."},
                                        {BlockKind::kLmHead, "lm_head."}};
  auto wte = Bind(f, c, blocks, 0, {{"wte.weight", {10, 8}}});
  ASSERT_TRUE(wte.ok()) << wte.error().ToString();
  EXPECT_EQ((*wte)[static_cast<size_t>(Slot::kTokenEmbedding)], 0);
  auto wpe = Bind(f, c, blocks, 1, {{"wpe.weight", {16, 8}}});
  ASSERT_TRUE(wpe.ok()) << wpe.error().ToString();
  EXPECT_EQ((*wpe)[static_cast<size_t>(Slot::kPositionEmbedding)], 0);
  auto head = Bind(f, c, blocks, 3, {{"wte.weight", {10, 8}}});
  ASSERT_TRUE(head.ok()) << head.error().ToString();
  EXPECT_EQ((*head)[static_cast<size_t>(Slot::kLmHead)], 0);
  // The position table is not the head's.
  EXPECT_FALSE(Bind(f, c, blocks, 3, {{"wpe.weight", {16, 8}}}).ok());
}

}  // namespace
}  // namespace bigplan::arch
