#include "arch/binding.h"

#include <algorithm>

namespace bigplan::arch {
namespace {

std::string ShapeString(std::span<const int64_t> shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

bool StartsWith(std::string_view s, std::string_view prefix) { return s.substr(0, prefix.size()) == prefix; }

struct Match {
  Slot slot;
  const TensorRule* rule;  // the rule giving the tensor's shape (the owner's for a tied read)
};

// The slot `name` fills in block `self`, if any.
bool MatchTensor(const FamilyInfo& family, std::span<const BlockRef> blocks, size_t self, std::string_view name,
                 Match* out) {
  const BlockRef& b = blocks[self];
  if (StartsWith(name, b.prefix)) {
    uint32_t expert = 0;
    if (const TensorRule* r = FindTensorRule(family, b.kind, name.substr(b.prefix.size()), &expert)) {
      *out = Match{IsExpertRule(*r) ? ExpertSlot(r->slot, expert) : r->slot, r};
      return true;
    }
  }
  for (const TiedRead& t : family.tied) {
    if (t.reader != b.kind) continue;
    const TensorRule* owner_rule = FindSlotRule(family, t.owner, t.owner_slot);
    if (owner_rule == nullptr) continue;
    for (size_t i = 0; i < blocks.size(); ++i) {
      if (i == self || blocks[i].kind != t.owner) continue;
      if (StartsWith(name, blocks[i].prefix) && name.substr(blocks[i].prefix.size()) == owner_rule->name) {
        *out = Match{t.slot, owner_rule};
        return true;
      }
    }
  }
  return false;
}

}  // namespace

SlotTable EmptySlotTable(size_t slots) { return SlotTable(slots, -1); }

std::vector<Slot> RequiredSlots(const FamilyInfo& family, BlockKind kind, const ModelConfig& config,
                                int32_t layer) {
  std::vector<Slot> out;
  for (const TensorRule& r : family.tensors) {
    if (r.block != kind) continue;
    bool required = false;
    switch (r.presence) {
      case Presence::kAlways:
      case Presence::kUntied: required = true; break;
      case Presence::kQkvBias: required = config.attention_bias; break;
      case Presence::kMlpBias: required = config.mlp_bias; break;
      case Presence::kOBias: required = false; break;
      case Presence::kDenseMlp:
      case Presence::kSparseMlp:
      case Presence::kSharedExpert:
      case Presence::kQkNorm: required = IsPresent(r.presence, config, TensorFeatures{}, layer); break;
    }
    if (!required) continue;
    if (IsExpertRule(r)) {
      for (uint32_t e = 0; e < config.num_experts; ++e) out.push_back(ExpertSlot(r.slot, e));
    } else {
      out.push_back(r.slot);
    }
  }
  return out;
}

Result<SlotTable> BindBlock(const FamilyInfo& family, const ModelConfig& config, std::span<const BlockRef> blocks,
                            size_t self, std::span<const BlockTensor> tensors, std::string_view block_name) {
  const std::string block = "block " + std::string(block_name) + " (" + family.name + " " +
                            BlockKindName(self < blocks.size() ? blocks[self].kind : BlockKind::kEmbedding) + ")";
  if (self >= blocks.size()) return MakeError(ErrorCode::kInternal, block + ": block index out of range");
  const BlockRef& b = blocks[self];
  SlotTable table = EmptySlotTable(SlotCount(config));
  const TensorFeatures no_features;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const BlockTensor& t = tensors[i];
    Match m;
    if (!MatchTensor(family, blocks, self, t.name, &m)) {
      std::string expected;
      for (const TensorRule& r : family.tensors) {
        if (r.block == b.kind) expected += (expected.empty() ? "" : ", ") + std::string(b.prefix) + r.name;
      }
      return MakeError(ErrorCode::kMismatch, block + ": tensor '" + std::string(t.name) +
                                                 "' is not one the kernel reads (expected: " +
                                                 (expected.empty() ? std::string("none") : expected) + ")");
    }
    const Presence pr = m.rule->presence;
    const bool per_layer = pr == Presence::kDenseMlp || pr == Presence::kSparseMlp ||
                           pr == Presence::kSharedExpert || pr == Presence::kQkNorm;
    if (per_layer && !IsPresent(pr, config, no_features, b.layer)) {
      return MakeError(ErrorCode::kMismatch,
                       block + ": tensor '" + std::string(t.name) + "' does not belong in this layer (" +
                           (pr == Presence::kDenseMlp ? "the layer is a mixture of experts"
                            : pr == Presence::kQkNorm ? "the model has no q/k norms"
                                                      : "the layer has a dense MLP") +
                           ")");
    }
    const size_t s = static_cast<size_t>(m.slot);
    if (s >= table.size()) {
      return MakeError(ErrorCode::kMismatch, block + ": tensor '" + std::string(t.name) + "' names expert " +
                                                 std::to_string(ExpertOf(m.slot)) + " but the model has " +
                                                 std::to_string(config.num_experts) + " experts");
    }
    if (table[s] >= 0) {
      return MakeError(ErrorCode::kMismatch, block + ": tensors '" + std::string(tensors[table[s]].name) + "' and '" +
                                                 std::string(t.name) + "' both fill slot " + SlotName(m.slot));
    }
    const std::vector<int64_t> want = ShapeOf(*m.rule, config, no_features);
    if (!std::equal(want.begin(), want.end(), t.shape.begin(), t.shape.end())) {
      return MakeError(ErrorCode::kMismatch, block + ": tensor '" + std::string(t.name) + "' has shape " +
                                                 ShapeString(t.shape) + ", the " + SlotName(m.slot) +
                                                 " slot takes " + ShapeString(want));
    }
    table[s] = static_cast<int32_t>(i);
  }
  for (Slot s : RequiredSlots(family, b.kind, config, b.layer)) {
    if (table[static_cast<size_t>(s)] >= 0) continue;
    const TensorRule* r = FindSlotRule(family, b.kind, IsExpertSlot(s) ? ExpertRole(s) : s);
    const std::string name = r == nullptr ? "?" : IsExpertSlot(s) ? RuleName(*r, ExpertOf(s)) : r->name;
    return MakeError(ErrorCode::kMismatch, block + ": missing tensor '" + std::string(b.prefix) + name + "' (slot " +
                                               SlotName(s) + ")");
  }
  return table;
}

}  // namespace bigplan::arch
