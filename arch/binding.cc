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
    if (const TensorRule* r = FindTensorRule(family, b.kind, name.substr(b.prefix.size()))) {
      *out = Match{r->slot, r};
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

SlotTable EmptySlotTable() {
  SlotTable t;
  t.fill(-1);
  return t;
}

std::vector<Slot> RequiredSlots(const FamilyInfo& family, BlockKind kind, const ModelConfig& config) {
  std::vector<Slot> out;
  for (const TensorRule& r : family.tensors) {
    if (r.block != kind) continue;
    const bool required = r.presence == Presence::kAlways || r.presence == Presence::kUntied ||
                          (r.presence == Presence::kQkvBias && config.attention_bias) ||
                          (r.presence == Presence::kMlpBias && config.mlp_bias);
    if (required) out.push_back(r.slot);
  }
  return out;
}

Result<SlotTable> BindBlock(const FamilyInfo& family, const ModelConfig& config, std::span<const BlockRef> blocks,
                            size_t self, std::span<const BlockTensor> tensors, std::string_view block_name) {
  const std::string block = "block " + std::string(block_name) + " (" + family.name + " " +
                            BlockKindName(self < blocks.size() ? blocks[self].kind : BlockKind::kEmbedding) + ")";
  if (self >= blocks.size()) return MakeError(ErrorCode::kInternal, block + ": block index out of range");
  const BlockRef& b = blocks[self];
  SlotTable table = EmptySlotTable();
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
    const size_t s = static_cast<size_t>(m.slot);
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
  for (Slot s : RequiredSlots(family, b.kind, config)) {
    if (table[static_cast<size_t>(s)] >= 0) continue;
    const TensorRule* r = FindSlotRule(family, b.kind, s);
    return MakeError(ErrorCode::kMismatch, block + ": missing tensor '" + std::string(b.prefix) +
                                               (r != nullptr ? r->name : "?") + "' (slot " + SlotName(s) + ")");
  }
  return table;
}

}  // namespace bigplan::arch
