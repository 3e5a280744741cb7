#include "planner/synthetic_model_testutil.h"

#include <gtest/gtest.h>

#include <string>

namespace bigplan {

ModelDescription SyntheticModel(uint64_t embed, const std::vector<uint64_t>& layers, uint64_t norm, uint64_t head,
                                bool tied) {
  ModelDescription m;
  m.name = "synthetic";
  m.architecture = "llama";
  ModelConfig& c = m.config;
  c.hidden_size = 64;
  c.num_layers = static_cast<uint32_t>(layers.size());
  c.num_heads = 4;
  c.num_kv_heads = 4;
  c.head_dim = 16;
  c.intermediate_size = 128;
  c.vocab_size = 100;
  c.max_position_embeddings = 64;
  c.rotary_dim = 16;
  c.activation = "silu";
  c.tie_word_embeddings = tied;
  m.hf_config = nlohmann::json::object();
  auto add = [&](std::string name, BlockKind kind, int layer, uint64_t bytes) {
    BlockDesc b;
    b.name = name;
    b.kind = kind;
    b.layer = layer;
    b.prefix = name + ".";
    if (bytes > 0) b.params.push_back(TensorSpec{name + ".weight", {static_cast<int64_t>(bytes / 4)}, DType::kF32});
    m.blocks.push_back(b);
  };
  add("model.embed_tokens", BlockKind::kEmbedding, -1, embed);
  for (size_t i = 0; i < layers.size(); ++i) add("model.layers." + std::to_string(i), BlockKind::kDecoderLayer, i, layers[i]);
  add("model.norm", BlockKind::kFinalNorm, -1, norm);
  add("lm_head", BlockKind::kLmHead, -1, tied ? 0 : head);
  if (tied) m.blocks.back().tied.push_back("model.embed_tokens.weight");
  Status st = m.Validate();
  EXPECT_TRUE(st.ok()) << st.error().ToString();
  return m;
}

}  // namespace bigplan
