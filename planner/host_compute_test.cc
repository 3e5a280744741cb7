#include "planner/host_compute.h"

#include <gtest/gtest.h>

#include "planner/hf_import.h"
#include "planner/weight_format.h"

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

// Every block on cuda:0, resting in pinned CPU memory.
std::vector<BlockPlacement> AllStreamed(const ModelDescription& m) {
  std::vector<BlockPlacement> p(m.blocks.size());
  for (BlockPlacement& b : p) {
    b.device = 0;
    b.tier = Tier::kCpu;
  }
  return p;
}

TEST(HostComputeTest, LinearMatricesOfStreamedGpuBlocksOnly) {
  const ModelDescription m = Llama(/*tied=*/false);
  const HostRows rows = AssignHostRows(m, AllStreamed(m), DType::kBF16, 0.5);
  // 7 projections per layer (q [256], k [128], v [128], o [256], gate [704], up [704], down [256] rows) and lm_head
  // [512]: every one has at least 128 rows.
  EXPECT_EQ(rows.size(), 2u * 7 + 1);
  uint64_t expected_bytes = 0;
  for (size_t i = 0; i < m.blocks.size(); ++i) {
    const BlockWeightLayout layout = LayoutBlockWeights(m, i, DType::kBF16);
    for (size_t w = 0; w < layout.weights.size(); ++w) {
      const WeightSlot& ws = layout.weights[w];
      auto it = rows.find({static_cast<uint32_t>(i), static_cast<uint32_t>(w)});
      const bool linear = ws.tensor.find("_proj.weight") != std::string::npos || ws.tensor == "lm_head.weight";
      ASSERT_EQ(it != rows.end(), linear) << ws.tensor;
      if (!linear) continue;
      // Half of the rows, rounded down to 64: 704 -> 320; 128 -> 64.
      EXPECT_EQ(it->second, ws.shape[0] / 2 / kHostRowAlign * kHostRowAlign) << ws.tensor;
      expected_bytes += static_cast<uint64_t>(it->second) * static_cast<uint64_t>(ws.shape[1]) * 2;
    }
  }
  EXPECT_EQ(HostRowBytes(m, rows, DType::kBF16), expected_bytes);
}

TEST(HostComputeTest, NothingForResidentCpuBlocksOrOtherDtypes) {
  const ModelDescription m = Llama(false);
  std::vector<BlockPlacement> p = AllStreamed(m);
  EXPECT_TRUE(AssignHostRows(m, p, DType::kF16, 0.5).empty());  // the host multiplies bf16 or quantized rows
  EXPECT_TRUE(AssignHostRows(m, p, DType::kBF16, 0).empty());
  EXPECT_TRUE(AssignHostRows(m, p, DType::kBF16, 1).empty());
  for (BlockPlacement& b : p) b.tier = Tier::kGpu;
  EXPECT_TRUE(AssignHostRows(m, p, DType::kBF16, 0.5).empty());
  for (BlockPlacement& b : p) b.tier = Tier::kDisk;
  EXPECT_TRUE(AssignHostRows(m, p, DType::kBF16, 0.5).empty());
  for (BlockPlacement& b : p) {
    b.tier = Tier::kCpu;
    b.device = -1;  // computed on the CPU: nothing streams
  }
  EXPECT_TRUE(AssignHostRows(m, p, DType::kBF16, 0.5).empty());
}

TEST(HostComputeTest, QuantizedRowsForHalfActivationsAndTheGpuKeepsSomeRows) {
  ModelDescription m = Llama(false);
  ASSERT_TRUE(ApplyWeightFormat(&m, quant::Format::kInt8).ok());
  const HostRows rows = AssignHostRows(m, AllStreamed(m), DType::kF16, 0.95);
  EXPECT_EQ(rows.size(), 2u * 7 + 1);
  EXPECT_TRUE(AssignHostRows(m, AllStreamed(m), DType::kF32, 0.5).empty());  // bf16 or fp16 activations only
  for (const auto& [key, n] : rows) {
    const BlockWeightLayout layout = LayoutBlockWeights(m, key.first, DType::kF16);
    EXPECT_LE(n, layout.weights[key.second].shape[0] - kHostRowAlign);
    EXPECT_GT(n, 0);
  }
}

TEST(HostComputeTest, TiedHeadIsNotSplit) {
  const ModelDescription m = Llama(/*tied=*/true);
  const HostRows rows = AssignHostRows(m, AllStreamed(m), DType::kBF16, 0.5);
  EXPECT_EQ(rows.size(), 2u * 7);
}

}  // namespace
}  // namespace bigplan
