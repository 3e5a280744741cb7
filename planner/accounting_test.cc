#include "planner/accounting.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "arch/temporaries.h"
#include "planner/hf_import.h"

namespace bigplan {
namespace {

constexpr uint64_t kMiB = uint64_t{1} << 20;

ModelDescription TinyTied() {
  Result<ModelDescription> m = ImportHfConfigText(
      R"({"model_type": "llama", "hidden_size": 8, "num_hidden_layers": 2, "num_attention_heads": 4,
          "num_key_value_heads": 2, "intermediate_size": 24, "vocab_size": 10, "tie_word_embeddings": true,
          "torch_dtype": "float32"})");
  EXPECT_TRUE(m.ok()) << m.error().ToString();
  return *m;
}

TEST(AccountingTest, BlockLayoutIsAlignedAndIncludesTiedReads) {
  ModelDescription m = TinyTied();
  // Embedding [10, 8] at bf16: 160 bytes -> one 256-byte slot.
  BlockWeightLayout embed = LayoutBlockWeights(m, 0, DType::kBF16);
  ASSERT_EQ(embed.weights.size(), 1u);
  EXPECT_EQ(embed.weights[0].size_bytes, 160u);
  EXPECT_EQ(embed.weights[0].src_dtype, DType::kF32);
  EXPECT_EQ(embed.weights[0].dtype, DType::kBF16);
  EXPECT_EQ(embed.total_bytes, 256u);

  // A decoder layer: q [8,8], k [4,8], v [4,8], o [8,8], gate/up [24,8], down [8,24], two norms [8] at fp32.
  BlockWeightLayout layer = LayoutBlockWeights(m, 1, DType::kF32);
  ASSERT_EQ(layer.weights.size(), 9u);
  uint64_t expect_offset = 0;
  for (const WeightSlot& w : layer.weights) {
    EXPECT_EQ(w.offset_in_block, expect_offset) << w.tensor;
    EXPECT_EQ(w.offset_in_block % kWeightAlignment, 0u);
    expect_offset = AlignUp(w.offset_in_block + w.size_bytes);
  }
  EXPECT_EQ(layer.total_bytes, expect_offset);
  // 256 + 256 + 256 + 256 + 768 + 768 + 768 + 256 + 256
  EXPECT_EQ(layer.total_bytes, 3840u);

  // The tied lm_head reads the embedding: a copy in its own buffer.
  const size_t head = m.blocks.size() - 1;
  BlockWeightLayout lm = LayoutBlockWeights(m, head, DType::kF16);
  ASSERT_EQ(lm.weights.size(), 1u);
  EXPECT_TRUE(lm.weights[0].tied);
  EXPECT_EQ(lm.weights[0].tensor, "model.embed_tokens.weight");
  EXPECT_EQ(lm.total_bytes, 256u);
  EXPECT_EQ(AllBlockWeightBytes(m, DType::kF16).back(), 256u);

  // Integer params keep their dtype.
  EXPECT_EQ(RuntimeDType(DType::kI64, DType::kBF16), DType::kI64);
  EXPECT_EQ(RuntimeDType(DType::kF32, DType::kBF16), DType::kBF16);
}

// The executor's fused kernels multiply q, k, v (and gate, up) as one matrix when they lie back to back: a block's
// layout puts them so, with their biases after them (Qwen2's q/k/v biases; back to back too when their sizes are
// multiples of the 256-byte alignment, as in real models).
TEST(AccountingTest, ProjectionsThatRunAsOneProductLieBackToBack) {
  for (const char* bias : {"false", "true"}) {
    Result<ModelDescription> m = ImportHfConfigText(
        std::string(R"({"model_type": "qwen2", "hidden_size": 512, "num_hidden_layers": 1, "num_attention_heads": 4,
                        "num_key_value_heads": 2, "intermediate_size": 96, "vocab_size": 10, "torch_dtype": "bfloat16",
                        "attention_bias": )") + bias + "}");
    ASSERT_TRUE(m.ok()) << m.error().ToString();
    size_t layer = 0;
    while (m->blocks[layer].kind != BlockKind::kDecoderLayer) ++layer;
    const BlockWeightLayout l = LayoutBlockWeights(*m, layer, DType::kBF16);
    auto find = [&](const std::string& suffix) -> const WeightSlot* {
      for (const WeightSlot& w : l.weights) {
        if (w.tensor.size() >= suffix.size() && w.tensor.compare(w.tensor.size() - suffix.size(), suffix.size(), suffix) == 0) {
          return &w;
        }
      }
      return nullptr;
    };
    auto back_to_back = [&](std::vector<std::string> names) {
      for (size_t i = 0; i + 1 < names.size(); ++i) {
        const WeightSlot* a = find(names[i]);
        const WeightSlot* b = find(names[i + 1]);
        ASSERT_NE(a, nullptr) << names[i];
        ASSERT_NE(b, nullptr) << names[i + 1];
        EXPECT_EQ(a->offset_in_block + a->size_bytes, b->offset_in_block) << names[i] << " then " << names[i + 1];
      }
    };
    back_to_back({"q_proj.weight", "k_proj.weight", "v_proj.weight"});
    back_to_back({"gate_proj.weight", "up_proj.weight"});
    if (std::string(bias) == "true") back_to_back({"q_proj.bias", "k_proj.bias", "v_proj.bias"});
  }
}

TEST(AccountingTest, KvCache) {
  ModelDescription m = TinyTied();  // 2 kv heads x head_dim 2
  // 2 x batch 3 x seq 100 x 2 x 2 x 2 bytes = 4800 -> 4864 aligned.
  EXPECT_EQ(KvCacheBytesPerLayer(m.config, RunShape{3, 100}, DType::kBF16), 4864u);
  // Llama-2-7B at 4096 tokens, fp16: 2 x 4096 x 32 x 128 x 2 = 64 MiB per layer.
  ModelConfig c;
  c.num_kv_heads = 32;
  c.head_dim = 128;
  EXPECT_EQ(KvCacheBytesPerLayer(c, RunShape{1, 4096}, DType::kF16), 64 * kMiB);
}

TEST(AccountingTest, Activations) {
  ModelDescription m = TinyTied();  // hidden 8, heads 4, kv 2, head_dim 2, inter 24, vocab 10
  const RunShape run{2, 16};          // T = 32 tokens
  ActivationEstimate all = EstimateActivations(m, run, DType::kF32);
  EXPECT_EQ(all.hidden_states, AlignUp(4 * 32 * 8 * 4));
  // Scores: every query's (2 x 4 x 16 x 16 floats, 2 copies) and the 2 kv heads' keys and values repeated for 4 heads.
  EXPECT_EQ(AttentionScoresBytes(m.config, run), AlignUp(2 * 4 * 16 * 16 * 4 * 2 + 2 * 2 * 4 * 16 * 2 * 4));
  EXPECT_EQ(all.attention,
            AlignUp(32 * (4 + 4) * 2 * 4) + AlignUp(32 * 4 * 2 * 4) + AttentionScoresBytes(m.config, run));
  EXPECT_EQ(all.mlp, AlignUp(3 * 32 * 24 * 4));
  EXPECT_EQ(all.logits, AlignUp(32 * 10 * 4));
  EXPECT_EQ(all.embedding, AlignUp(32 * 8));
  EXPECT_EQ(all.total, all.hidden_states + std::max(all.attention, all.mlp) + all.logits + all.embedding);
  // A device with only decoder layers has no logits or token ids.
  ActivationEstimate layers = EstimateActivations(m, run, DType::kF32, {1, 2});
  EXPECT_EQ(layers.logits, 0u);
  EXPECT_EQ(layers.embedding, 0u);
  EXPECT_EQ(layers.total, layers.hidden_states + std::max(layers.attention, layers.mlp));
  // Only the lm_head: hidden states and logits.
  ActivationEstimate head = EstimateActivations(m, run, DType::kF32, {m.blocks.size() - 1});
  EXPECT_EQ(head.total, head.hidden_states + head.logits);
  EXPECT_EQ(EstimateActivations(m, run, DType::kF32, {}).total, 0u);
}

// Long sequences: the scores are one chunk's (the executor takes the queries in chunks) and the logits one pass's
// (Executor::Forward splits longer inputs), so neither grows with seq^2 or with seq x vocab past the bounds.
TEST(AccountingTest, LongSequencesAccountOneChunksScoresAndOnePasssLogits) {
  ModelConfig c;  // Llama-3-8B's attention and vocabulary
  c.num_heads = 32;
  c.num_kv_heads = 8;
  c.head_dim = 128;
  c.vocab_size = 128256;
  const RunShape run{1, 8192};
  const uint64_t repeated = 2ull * 32 * 8192 * 128 * 4;
  EXPECT_EQ(AttentionScoresBytes(c, run), AlignUp(uint64_t(arch::kAttentionScoreElements) * 4 * 2 + repeated));
  EXPECT_LT(AttentionScoresBytes(c, run), 700 * kMiB);  // against 8 GiB of whole scores (32 x 8192^2 x 4)
  EXPECT_EQ(LogitsTokens(run), uint64_t(arch::kLogitsTokens));
  EXPECT_EQ(LogitsTokens(RunShape{1, 100}), 100u);
  EXPECT_EQ(LogitsTokens(RunShape{1024, 4}), 1024u);  // one position of every row at least
  // One query row over a million keys is more than the bound: a row's scores.
  const RunShape longest{8, 1u << 20};
  EXPECT_EQ(AttentionScoresBytes(c, longest), AlignUp(8ull * 32 * (1u << 20) * 4 * 2 + 2ull * 8 * 32 * (1u << 20) * 128 * 4));
}

// Mixture-of-experts layers: a prompt's grouped expert products hold one chunk's (token, expert) pairs, the
// host-dispatched path one expert's rows (up to every token): the MLP term is the larger of those and the dense one.
TEST(AccountingTest, MixtureOfExpertsReservesTheExpertProductsOfAPrompt) {
  Result<ModelDescription> m = ImportHfConfigText(
      R"({"model_type": "mixtral", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
          "num_attention_heads": 4, "num_key_value_heads": 2, "num_local_experts": 4, "num_experts_per_tok": 2,
          "vocab_size": 10, "torch_dtype": "bfloat16", "max_position_embeddings": 8192})");
  ASSERT_TRUE(m.ok()) << m.error().ToString();
  const uint64_t per_pair = uint64_t(arch::MoeGroupedBytesPerPair(64, 96, 2));
  EXPECT_EQ(per_pair, (3u * 64 + 3 * 96) * 2 + 4 * 64);
  // 100 tokens: 200 pairs.
  EXPECT_EQ(EstimateActivations(*m, RunShape{1, 100}, DType::kBF16).mlp, AlignUp(200 * per_pair));
  // 4096 tokens: the pairs of one chunk of kMoeGroupedTokens tokens.
  EXPECT_EQ(EstimateActivations(*m, RunShape{1, 4096}, DType::kBF16).mlp,
            AlignUp(uint64_t(arch::kMoeGroupedTokens) * 2 * per_pair));
  // 8192 tokens: one host-dispatched expert's rows, every token.
  EXPECT_EQ(EstimateActivations(*m, RunShape{1, 8192}, DType::kBF16).mlp, AlignUp(8192 * per_pair));
}

// Quantized experts' prompts also hold a dequantized scratch of as many experts as arch::kMoeDequantScratchBytes
// takes (or one matrix where fewer than two fit); a decode-only run shape holds none.
TEST(AccountingTest, QuantizedExpertsReserveTheirDequantizedScratch) {
  for (int64_t inter : {96, 16384}) {
    Result<ModelDescription> m = ImportHfConfigText(
        R"({"model_type": "mixtral", "hidden_size": 4096, "intermediate_size": )" + std::to_string(inter) +
        R"(, "num_hidden_layers": 2, "num_attention_heads": 32, "num_key_value_heads": 8, "num_local_experts": 4,
            "num_experts_per_tok": 2, "vocab_size": 10, "torch_dtype": "bfloat16", "max_position_embeddings": 8192})");
    ASSERT_TRUE(m.ok()) << m.error().ToString();
    const uint64_t plain = EstimateActivations(*m, RunShape{1, 512}, DType::kBF16).mlp;
    const uint64_t plain_decode = EstimateActivations(*m, RunShape{1, 1}, DType::kBF16).mlp;
    for (BlockDesc& b : m->blocks) {
      for (TensorSpec& p : b.params) {
        if (p.name.find(".experts.") != std::string::npos) {
          p.format = quant::Format::kInt8;
          p.group = p.shape[1];
        }
      }
    }
    const uint64_t per_pair = uint64_t(arch::MoeGroupedBytesPerPair(4096, inter, 2));
    const int64_t fit = arch::MoeDequantScratchExperts(4096, inter, 2, 4);
    const uint64_t scratch = fit >= 2 ? uint64_t(fit) * 3 * 4096 * inter * 2 : uint64_t(4096) * inter * 2;
    EXPECT_EQ(fit >= 2, inter == 96);
    EXPECT_EQ(EstimateActivations(*m, RunShape{1, 512}, DType::kBF16).mlp,
              std::max(plain, AlignUp(1024 * per_pair) + AlignUp(scratch)))
        << "inter " << inter;
    EXPECT_GT(EstimateActivations(*m, RunShape{1, 512}, DType::kBF16).mlp, plain);
    EXPECT_EQ(EstimateActivations(*m, RunShape{1, 1}, DType::kBF16).mlp, plain_decode);
  }
}

TEST(AccountingTest, StagingAndReserve) {
  EXPECT_EQ(StagingBufferCount(0, 1), 0u);
  EXPECT_EQ(StagingBufferCount(1, 1), 1u);
  EXPECT_EQ(StagingBufferCount(10, 1), 2u);
  EXPECT_EQ(StagingBufferCount(10, 3), 4u);
  EXPECT_EQ(GpuWorkspaceReserveBytes(), 320 * kMiB);
}

TEST(AccountingTest, Messages) {
  DeviceAccount a;
  a.device = "cuda:0";
  a.resident_weights = uint64_t(3.9 * (1 << 30));
  a.staging = 810 * kMiB;
  a.kv_cache = 256 * kMiB;
  a.activations = 120 * kMiB;
  a.workspace_reserve = 320 * kMiB;
  a.total = a.resident_weights + a.staging + a.kv_cache + a.activations + a.workspace_reserve;
  a.budget = uint64_t{4} << 30;
  EXPECT_FALSE(a.fits());
  EXPECT_EQ(a.ShortfallMessage(),
            "cuda:0 needs 5.37 GiB (resident 3.90 GiB + staging 810.00 MiB + KV 256.00 MiB + activations 120.00 MiB + "
            "reserve 320.00 MiB) but its budget is 4.00 GiB: short by 1.37 GiB");
  EXPECT_EQ(a.Summary().rfind("cuda:0: 5.37 GiB of 4.00 GiB (resident", 0), 0u);
  DeviceAccount disk;
  disk.device = "disk";
  disk.unlimited = true;
  disk.total = disk.resident_weights = 100;
  EXPECT_TRUE(disk.fits());
  EXPECT_EQ(disk.Summary(), "disk: 100 B of unlimited (weights 100 B)");
}

}  // namespace
}  // namespace bigplan

namespace bigplan {
namespace {

// A model whose max_position_embeddings allows a huge sequence: batch x heads x seq^2 x 4 wraps around 64 bits.
ModelDescription LongContext() {
  Result<ModelDescription> m = ImportHfConfigText(
      R"({"model_type": "llama", "hidden_size": 8, "num_hidden_layers": 2, "num_attention_heads": 4,
          "num_key_value_heads": 2, "intermediate_size": 24, "vocab_size": 10, "torch_dtype": "float32",
          "max_position_embeddings": 4294967295})");
  EXPECT_TRUE(m.ok()) << m.error().ToString();
  return *m;
}

TEST(AccountingTest, OverflowingRunShapeIsAnErrorNotAWrappedSize) {
  ModelDescription m = LongContext();
  const RunShape huge{4294967295u, 4294967295u};
  // Plain arithmetic wraps the KV cache's product; the estimate saturates instead.
  ActivationEstimate a = EstimateActivations(m, huge, DType::kF32);
  EXPECT_GT(a.total, kMaxAccountedBytes);
  Status s = CheckAccountingSizes(m, huge, DType::kF32);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(s.error().message.find("run shape batch 4294967295 x seq 4294967295: the KV cache per layer (2 x batch x "
                                    "seq x kv_heads x head_dim x dtype bytes) overflow 64 bits"),
            std::string::npos)
      << s.error().message;
  // A shape within 64 bits whose KV cache comes to more than 1 EiB.
  Status s2 = CheckAccountingSizes(m, RunShape{1u << 24, 2147483648u}, DType::kF32);
  ASSERT_FALSE(s2.ok());
  EXPECT_NE(s2.error().message.find("the KV cache of all layers come to"), std::string::npos) << s2.error().message;
  EXPECT_TRUE(CheckAccountingSizes(m, RunShape{1, 4096}, DType::kF32).ok());
  EXPECT_GT(KvCacheBytesPerLayer(m.config, RunShape{4294967295u, 4294967295u}, DType::kF32), kMaxAccountedBytes);
  EXPECT_EQ(AlignUp(~uint64_t{0} - 3), ~uint64_t{0} / 256 * 256);
}

}  // namespace
}  // namespace bigplan
