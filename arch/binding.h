// Binding a block's tensors to its kernel's typed slots (arch/registry.h's Slot), once, from the family's tensor
// table. The planner runs it on every model it plans (what `run` would refuse, `plan` refuses first); the executor
// runs it at load and hands the kernels a slot table, so a missing, unknown or mis-shaped weight fails at load,
// never mid-generation, and no kernel looks a weight up by name.
//
// No LibTorch: only the registry.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "arch/registry.h"
#include "support/result.h"

namespace bigplan::arch {

inline constexpr size_t kSlotCount = static_cast<size_t>(Slot::kCount);

// slot -> index into the block's tensors (as passed to BindBlock), or -1 when the block has nothing for it. Its size
// is SlotCount(config): the fixed slots, then three per routed expert (ExpertSlot).
using SlotTable = std::vector<int32_t>;
SlotTable EmptySlotTable(size_t slots = kSlotCount);

// One block of a model, as far as binding needs it.
struct BlockRef {
  BlockKind kind;
  std::string_view prefix;  // its tensor-name prefix, e.g. "model.layers.3."
  int32_t layer = -1;       // decoder layer index (which tensors a layer has may depend on it), -1 for others
};

// One tensor a block reads: its full name and shape.
struct BlockTensor {
  std::string_view name;
  std::span<const int64_t> shape;
};

// The slots a block of `kind` cannot run without: the rules of the family present for every model
// (Presence::kAlways), lm_head's matrix (its own or the tied embedding), q/k/v biases when config.attention_bias
// and gate/up/down biases when config.mlp_bias; in decoder layer `layer` of a mixture-of-experts model, the dense
// MLP or the router, every expert's three matrices and the shared expert, as the layer is sparse, and the q/k norms
// with config.qk_norm. Other optional tensors (Qwen2's q/k/v biases, o_proj's bias) are used when present.
std::vector<Slot> RequiredSlots(const FamilyInfo& family, BlockKind kind, const ModelConfig& config,
                                int32_t layer = -1);

// Binds the tensors block `self` of `blocks` reads (its own and its tied reads, in any order) to its kernel's slots:
//   - its own tensor: name == prefix + rule.name for a rule of the family for the block's kind;
//   - a tied read: for a TiedRead of the family whose reader is the block's kind, name == owner.prefix +
//     owner_rule.name for a block of the owner's kind in `blocks` (lm_head reading model.embed_tokens.weight).
// Then checks: no slot bound twice; every tensor's shape is the rule's (ShapeOf for `config`); every RequiredSlots
// slot bound. kMismatch naming `block_name`, the tensor and the problem otherwise (an unknown name lists the names
// the family expects in such a block).
Result<SlotTable> BindBlock(const FamilyInfo& family, const ModelConfig& config, std::span<const BlockRef> blocks,
                            size_t self, std::span<const BlockTensor> tensors, std::string_view block_name);

}  // namespace bigplan::arch
