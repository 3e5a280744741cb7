// Test models for placement tests: Llama-shaped descriptions whose blocks have chosen byte sizes.
#pragma once

#include <cstdint>
#include <vector>

#include "planner/model_desc.h"

namespace bigplan {

// A Llama-shaped model (hidden 64, 4 heads, rotary_dim 16) whose embedding, decoder layers, final norm and lm_head
// weigh the given bytes: one fp32 1-D param each, so an fp32 execution dtype keeps the sizes. With `tied`, the
// lm_head owns no param and reads model.embed_tokens.weight. As a "llama" model, Accelerate also sees
// model.rotary_emb's two F32 buffers of 8 elements (64 bytes), which belong to no block.
// The description is checked with Validate() (a gtest expectation).
ModelDescription SyntheticModel(uint64_t embed, const std::vector<uint64_t>& layers, uint64_t norm, uint64_t head,
                                bool tied = false);

}  // namespace bigplan
