// Block kinds: the unit of a model's layout that the planner places and the executor runs (a decoder layer, the
// embedding, ...). The plan stores them as schema::BlockKind, whose values mirror these (schema/plan_io.h checks it at
// compile time). No dependencies beyond //support:result.
#pragma once

#include <cstdint>
#include <string_view>

#include "support/result.h"

namespace bigplan::arch {

enum class BlockKind : uint8_t {
  kEmbedding = 0,          // token embedding (model.embed_tokens, transformer.wte)
  kPositionEmbedding = 1,  // learned absolute positions (GPT-2's transformer.wpe)
  kDecoderLayer = 2,       // one transformer layer
  kFinalNorm = 3,          // the norm after the last layer (model.norm, transformer.ln_f)
  kLmHead = 4,             // output projection to the vocabulary
};
inline constexpr int kNumBlockKinds = 5;

// "embedding", "position_embedding", "decoder_layer", "final_norm", "lm_head" ("invalid" for other values).
const char* BlockKindName(BlockKind kind);
// Inverse of BlockKindName; kInvalidArgument naming the string otherwise.
Result<BlockKind> ParseBlockKind(std::string_view name);

}  // namespace bigplan::arch
