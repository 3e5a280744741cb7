#include "planner/host_compute.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "arch/registry.h"

namespace bigplan {

bool HostComputable(const ModelDescription& model, size_t block, const WeightSlot& ws, Tier tier, int32_t device) {
  if (tier != Tier::kCpu || device < 0 || ws.tied || ws.shape.size() != 2 || ws.shape[0] < 2 * kHostRowAlign)
    return false;
  // bf16 rows, or quantized rows for bf16 or fp16 activations (the executor moves activations to and from the host
  // through casting kernels).
  if (ws.dtype != DType::kBF16 && (ws.format == quant::Format::kNone || ws.dtype != DType::kF16)) return false;
  const arch::FamilyInfo* family = arch::FindFamily(model.architecture);
  if (family == nullptr || block >= model.blocks.size()) return false;
  const BlockDesc& b = model.blocks[block];
  if (ws.tensor.compare(0, b.prefix.size(), b.prefix) != 0) return false;
  const arch::TensorRule* rule = arch::FindTensorRule(*family, b.kind, ws.tensor.substr(b.prefix.size()));
  return rule != nullptr && rule->layout == arch::Layout::kLinear;
}

HostRows AssignHostRows(const ModelDescription& model, const std::vector<BlockPlacement>& blocks, DType exec_dtype,
                        double share) {
  HostRows out;
  if (!(share > 0) || share >= 1) return out;
  for (size_t i = 0; i < model.blocks.size() && i < blocks.size(); ++i) {
    const BlockWeightLayout layout = LayoutBlockWeights(model, i, exec_dtype);
    const std::vector<Tier> tiers = WeightTiersOf(blocks[i], layout.weights.size());
    for (size_t w = 0; w < layout.weights.size(); ++w) {
      const WeightSlot& ws = layout.weights[w];
      if (!HostComputable(model, i, ws, tiers[w], blocks[i].device)) continue;
      const int64_t rows = ws.shape[0];
      int64_t host = static_cast<int64_t>(std::floor(share * static_cast<double>(rows))) / kHostRowAlign * kHostRowAlign;
      host = std::min(host, (rows - kHostRowAlign) / kHostRowAlign * kHostRowAlign);
      if (host > 0) out[{static_cast<uint32_t>(i), static_cast<uint32_t>(w)}] = host;
    }
  }
  return out;
}

uint64_t HostRowBytes(const ModelDescription& model, const HostRows& rows, DType exec_dtype) {
  uint64_t bytes = 0;
  std::map<uint32_t, BlockWeightLayout> layouts;
  for (const auto& [key, n] : rows) {
    auto it = layouts.find(key.first);
    if (it == layouts.end()) it = layouts.emplace(key.first, LayoutBlockWeights(model, key.first, exec_dtype)).first;
    const WeightSlot& ws = it->second.weights[key.second];
    bytes += ws.size_bytes / static_cast<uint64_t>(ws.shape[0]) * static_cast<uint64_t>(n);
  }
  return bytes;
}

}  // namespace bigplan
