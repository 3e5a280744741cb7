#include "arch/tensor_parallel.h"

#include <gtest/gtest.h>

#include <vector>

namespace bigplan::arch {
namespace {

ModelConfig Llama() {
  ModelConfig c;
  c.hidden_size = 64;
  c.num_layers = 2;
  c.num_heads = 8;
  c.num_kv_heads = 2;
  c.head_dim = 8;
  c.intermediate_size = 96;
  c.vocab_size = 101;
  c.activation = "silu";
  return c;
}

TEST(TensorParallel, LlamaSplitsTwoWays) {
  const FamilyInfo* llama = FindFamily("llama");
  ASSERT_NE(llama, nullptr);
  EXPECT_TRUE(CheckTensorParallel(*llama, Llama(), 2).ok());
  const ModelConfig s = ShardConfig(Llama(), 2);
  EXPECT_EQ(s.num_heads, 4u);
  EXPECT_EQ(s.num_kv_heads, 1u);
  EXPECT_EQ(s.intermediate_size, 48u);
  EXPECT_EQ(s.vocab_size, 101u);
  EXPECT_EQ(s.hidden_size, 64u);
}

TEST(TensorParallel, RefusesWhatDoesNotSplit) {
  const FamilyInfo* llama = FindFamily("llama");
  ModelConfig c = Llama();
  EXPECT_EQ(CheckTensorParallel(*llama, c, 4).error().code, ErrorCode::kUnsupported);  // 2 kv heads
  EXPECT_EQ(CheckTensorParallel(*llama, c, 1).error().code, ErrorCode::kUnsupported);
  EXPECT_EQ(CheckTensorParallel(*llama, c, 16).error().code, ErrorCode::kUnsupported);
  c.intermediate_size = 97;
  EXPECT_NE(CheckTensorParallel(*llama, c, 2).error().message.find("intermediate_size"), std::string::npos);
  c = Llama();
  c.attention_bias = true;  // o_proj's bias: whole, added by shard 0
  EXPECT_TRUE(CheckTensorParallel(*llama, c, 2).ok());
  c = Llama();
  c.num_experts = 8;
  EXPECT_EQ(CheckTensorParallel(*llama, c, 2).error().code, ErrorCode::kUnsupported);
}

// GPT-2's Conv1D weights [in, out] split along the other dimension than Linear ones: c_attn [hidden, q | k | v] by
// three column ranges (the shard's q, k and v heads) and its bias alike, attn.c_proj by the same rows, mlp.c_fc and
// its bias by columns, mlp.c_proj by the same rows; wpe, the norms and the c_proj biases whole.
TEST(TensorParallel, Gpt2Conv1DWeightsSplitAcross) {
  const FamilyInfo* gpt2 = FindFamily("gpt2");
  ASSERT_NE(gpt2, nullptr);
  ModelConfig c = Llama();  // 8 heads of 8: q, k and v 64 each
  c.num_kv_heads = c.num_heads;
  c.intermediate_size = 256;
  EXPECT_TRUE(CheckTensorParallel(*gpt2, c, 2).ok());
  EXPECT_EQ(LayerAllReduces(*gpt2), 2u);
  const auto layout = [&](Slot slot) { return FindSlotRule(*gpt2, BlockKind::kDecoderLayer, slot)->layout; };
  EXPECT_EQ(layout(Slot::kQkv), Layout::kConv1D);
  const std::vector<int64_t> c_attn{64, 192}, c_attn_bias{192}, c_proj{64, 64}, c_fc{64, 256}, fc_bias{256},
      mlp_proj{256, 64}, wpe{32, 64}, norm{64};
  EXPECT_EQ(*ShardSlice(Slot::kQkv, c_attn, c, 1, 2, layout(Slot::kQkv)),
            (TensorSlice{1, 32, 64, {{96, 128}, {160, 192}}}));
  EXPECT_EQ(*ShardSlice(Slot::kQkvBias, c_attn_bias, c, 0, 2), (TensorSlice{0, 0, 32, {{64, 96}, {128, 160}}}));
  EXPECT_EQ(*ShardSlice(Slot::kO, c_proj, c, 1, 2, layout(Slot::kO)), (TensorSlice{0, 32, 64}));
  EXPECT_EQ(*ShardSlice(Slot::kFcIn, c_fc, c, 1, 2, layout(Slot::kFcIn)), (TensorSlice{1, 128, 256}));
  EXPECT_EQ(*ShardSlice(Slot::kFcInBias, fc_bias, c, 1, 2), (TensorSlice{0, 128, 256}));
  EXPECT_EQ(*ShardSlice(Slot::kDown, mlp_proj, c, 0, 2, layout(Slot::kDown)), (TensorSlice{0, 0, 128}));
  for (Slot whole : {Slot::kPositionEmbedding, Slot::kInputNormBias, Slot::kPostNorm, Slot::kPostNormBias,
                     Slot::kOBias, Slot::kDownBias}) {
    EXPECT_TRUE(ShardSlice(whole, whole == Slot::kPositionEmbedding ? wpe : norm, c, 1, 2)->whole()) << SlotName(whole);
  }
  // The same c_attn read as a Linear weight would split its rows, which it does not hold.
  EXPECT_FALSE(ShardSlice(Slot::kQkv, c_attn, c, 0, 2).ok());
}

TEST(TensorParallel, SlicesBySlot) {
  const ModelConfig c = Llama();
  const std::vector<int64_t> q{64, 64}, kv{16, 64}, o{64, 64}, gate{96, 64}, down{64, 96}, emb{101, 64}, norm{64};
  EXPECT_EQ(*ShardSlice(Slot::kQ, q, c, 1, 2), (TensorSlice{0, 32, 64}));
  EXPECT_EQ(*ShardSlice(Slot::kK, kv, c, 0, 2), (TensorSlice{0, 0, 8}));
  EXPECT_EQ(*ShardSlice(Slot::kV, kv, c, 1, 2), (TensorSlice{0, 8, 16}));
  EXPECT_EQ(*ShardSlice(Slot::kO, o, c, 1, 2), (TensorSlice{1, 32, 64}));
  EXPECT_EQ(*ShardSlice(Slot::kGate, gate, c, 0, 2), (TensorSlice{0, 0, 48}));
  EXPECT_EQ(*ShardSlice(Slot::kDown, down, c, 1, 2), (TensorSlice{1, 48, 96}));
  // An odd vocabulary: shard 0 takes 50 rows, shard 1 takes 51.
  EXPECT_EQ(*ShardSlice(Slot::kTokenEmbedding, emb, c, 0, 2), (TensorSlice{0, 0, 50}));
  EXPECT_EQ(*ShardSlice(Slot::kLmHead, emb, c, 1, 2), (TensorSlice{0, 50, 101}));
  EXPECT_TRUE(ShardSlice(Slot::kInputNorm, norm, c, 1, 2)->whole());
  EXPECT_EQ(ShardSlice(Slot::kQkv, q, c, 0, 2).error().code, ErrorCode::kInvalidArgument);  // 64 rows, not 96
  EXPECT_EQ(ShardSlice(Slot::kRouter, norm, c, 0, 2)->whole(), true);
  EXPECT_TRUE(ShardSlice(Slot::kPositionEmbedding, norm, c, 0, 2)->whole());  // (GPT-2's wpe)
  EXPECT_TRUE(ShardSlice(Slot::kOBias, norm, c, 1, 2)->whole());
  EXPECT_TRUE(ShardSlice(Slot::kDownBias, norm, c, 1, 2)->whole());
  EXPECT_EQ(ShardSlice(Slot::kFcInBias, std::vector<int64_t>{}, c, 0, 2).error().code, ErrorCode::kInvalidArgument);
  // A head is never cut.
  const std::vector<int64_t> odd{24, 64};
  EXPECT_FALSE(ShardSlice(Slot::kQ, odd, c, 0, 2).ok());
}

ModelConfig Qwen2Moe() {
  ModelConfig c = Llama();
  c.num_experts = 8;
  c.num_experts_per_tok = 2;
  c.moe_intermediate_size = 32;
  c.shared_expert_intermediate_size = 48;
  c.sparse_layers = {true, true};
  return c;
}

// Mixture-of-experts layers split every expert by rows of its intermediate size: each shard computes part of every
// chosen expert, and the router (and the shared expert's gate) whole on every shard route every token alike.
TEST(TensorParallel, ExpertsSplitByTheirIntermediateSize) {
  for (const char* name : {"mixtral", "qwen2_moe", "qwen3_moe"}) {
    const FamilyInfo* family = FindFamily(name);
    ASSERT_NE(family, nullptr) << name;
    EXPECT_TRUE(CheckTensorParallel(*family, Qwen2Moe(), 2).ok()) << name;
  }
  const ModelConfig c = Qwen2Moe();
  const ModelConfig s = ShardConfig(c, 2);
  EXPECT_EQ(s.moe_intermediate_size, 16u);
  EXPECT_EQ(s.shared_expert_intermediate_size, 24u);
  EXPECT_EQ(s.intermediate_size, 48u);
  EXPECT_EQ(s.num_experts, 8u);
  EXPECT_EQ(s.num_experts_per_tok, 2u);
  const std::vector<int64_t> gate{32, 64}, down{64, 32}, shared_gate{48, 64}, shared_down{64, 48}, router{8, 64},
      one{1, 64};
  EXPECT_EQ(*ShardSlice(ExpertSlot(Slot::kExpertGate, 5), gate, c, 1, 2), (TensorSlice{0, 16, 32}));
  EXPECT_EQ(*ShardSlice(ExpertSlot(Slot::kExpertUp, 0), gate, c, 0, 2), (TensorSlice{0, 0, 16}));
  EXPECT_EQ(*ShardSlice(ExpertSlot(Slot::kExpertDown, 7), down, c, 1, 2), (TensorSlice{1, 16, 32}));
  EXPECT_EQ(*ShardSlice(Slot::kSharedGate, shared_gate, c, 1, 2), (TensorSlice{0, 24, 48}));
  EXPECT_EQ(*ShardSlice(Slot::kSharedUp, shared_gate, c, 0, 2), (TensorSlice{0, 0, 24}));
  EXPECT_EQ(*ShardSlice(Slot::kSharedDown, shared_down, c, 1, 2), (TensorSlice{1, 24, 48}));
  EXPECT_TRUE(ShardSlice(Slot::kRouter, router, c, 1, 2)->whole());
  EXPECT_TRUE(ShardSlice(Slot::kSharedExpertGate, one, c, 0, 2)->whole());
}

// GPT-J: fc_in and its bias by rows, fc_out by columns, the lm_head's bias with its vocabulary rows, LayerNorm
// biases whole; one all-reduce a layer (the attention and the MLP add into one output).
TEST(TensorParallel, GptjSplitsItsParallelBlock) {
  const FamilyInfo* gptj = FindFamily("gptj");
  ASSERT_NE(gptj, nullptr);
  ModelConfig c = Llama();
  c.num_kv_heads = c.num_heads;
  EXPECT_TRUE(CheckTensorParallel(*gptj, c, 2).ok());
  EXPECT_EQ(LayerAllReduces(*gptj), 1u);
  EXPECT_EQ(LayerAllReduces(*FindFamily("llama")), 2u);
  const std::vector<int64_t> fc_in{96, 64}, fc_in_bias{96}, fc_out{64, 96}, head_bias{101}, norm{64};
  EXPECT_EQ(*ShardSlice(Slot::kFcIn, fc_in, c, 1, 2), (TensorSlice{0, 48, 96}));
  EXPECT_EQ(*ShardSlice(Slot::kFcInBias, fc_in_bias, c, 0, 2), (TensorSlice{0, 0, 48}));
  EXPECT_EQ(*ShardSlice(Slot::kDown, fc_out, c, 1, 2), (TensorSlice{1, 48, 96}));
  EXPECT_EQ(*ShardSlice(Slot::kLmHeadBias, head_bias, c, 1, 2), (TensorSlice{0, 50, 101}));
  EXPECT_TRUE(ShardSlice(Slot::kInputNormBias, norm, c, 0, 2)->whole());
  EXPECT_TRUE(ShardSlice(Slot::kFinalNormBias, norm, c, 1, 2)->whole());
}

// Phi-3's fused [q; k; v] rows split into the shard's q, k and v heads (three row ranges), its [gate; up] rows into
// its gate and up rows (two).
TEST(TensorParallel, Phi3FusedRowsSplitIntoRanges) {
  const FamilyInfo* phi3 = FindFamily("phi3");
  ASSERT_NE(phi3, nullptr);
  const ModelConfig c = Llama();  // 8 heads, 2 kv heads of 8: q 64 rows, k and v 16 each
  EXPECT_TRUE(CheckTensorParallel(*phi3, c, 2).ok());
  const std::vector<int64_t> qkv{96, 64}, gate_up{192, 64};
  const TensorSlice s1 = *ShardSlice(Slot::kQkv, qkv, c, 1, 2);
  EXPECT_EQ(s1, (TensorSlice{0, 32, 64, {{72, 80}, {88, 96}}}));
  EXPECT_EQ(s1.extent(), 48);
  EXPECT_EQ(*ShardSlice(Slot::kQkv, qkv, c, 0, 2), (TensorSlice{0, 0, 32, {{64, 72}, {80, 88}}}));
  EXPECT_EQ(*ShardSlice(Slot::kGateUp, gate_up, c, 1, 2), (TensorSlice{0, 48, 96, {{144, 192}}}));
  EXPECT_FALSE(ShardSlice(Slot::kGateUp, std::vector<int64_t>{190, 64}, c, 0, 2).ok());
}

TEST(TensorParallel, RefusesExpertsThatDoNotSplit) {
  const FamilyInfo* qwen2_moe = FindFamily("qwen2_moe");
  ModelConfig c = Qwen2Moe();
  c.moe_intermediate_size = 33;
  EXPECT_NE(CheckTensorParallel(*qwen2_moe, c, 2).error().message.find("moe_intermediate_size 33"),
            std::string::npos);
  c = Qwen2Moe();
  c.shared_expert_intermediate_size = 51;
  EXPECT_NE(CheckTensorParallel(*qwen2_moe, c, 2).error().message.find("shared_expert_intermediate_size 51"),
            std::string::npos);
  EXPECT_FALSE(ShardSlice(ExpertSlot(Slot::kExpertGate, 0), std::vector<int64_t>{33, 64}, c, 0, 2).ok());
}

}  // namespace
}  // namespace bigplan::arch
