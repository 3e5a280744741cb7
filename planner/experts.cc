#include "planner/experts.h"

#include <algorithm>
#include <cmath>

#include "arch/registry.h"
#include "planner/accounting.h"
#include "planner/cost_model.h"
#include "planner/streaming.h"

namespace bigplan {

int32_t ExpertOfWeight(const ModelDescription& model, size_t block, size_t weight) {
  if (block >= model.blocks.size()) return -1;
  const BlockDesc& b = model.blocks[block];
  if (weight >= b.params.size() || b.kind != BlockKind::kDecoderLayer || model.config.num_experts == 0) return -1;
  const arch::FamilyInfo* family = arch::FindFamily(model.architecture);
  const std::string& name = b.params[weight].name;
  if (family == nullptr || name.compare(0, b.prefix.size(), b.prefix) != 0) return -1;
  uint32_t expert = 0;
  const arch::TensorRule* rule =
      arch::FindTensorRule(*family, b.kind, std::string_view(name).substr(b.prefix.size()), &expert);
  if (rule == nullptr || !arch::IsExpertRule(*rule)) return -1;
  return static_cast<int32_t>(expert);
}

quant::Format ExpertFormat(const ModelDescription& model, size_t block) {
  if (block >= model.blocks.size()) return quant::Format::kNone;
  for (size_t w = 0; w < model.blocks[block].params.size(); ++w) {
    if (ExpertOfWeight(model, block, w) >= 0) return model.blocks[block].params[w].format;
  }
  return quant::Format::kNone;
}

bool ExpertsGrouped(const ModelDescription& model, size_t block, DType exec_dtype) {
  if (block >= model.blocks.size()) return true;
  for (size_t w = 0; w < model.blocks[block].params.size(); ++w) {
    if (ExpertOfWeight(model, block, w) < 0) continue;
    const TensorSpec& t = model.blocks[block].params[w];
    if (t.format == quant::Format::kNone) continue;
    if (exec_dtype != DType::kBF16 && exec_dtype != DType::kF16) return false;
    if (t.prequant.act_order) return false;  // (permuted columns: the products gather x)
    const int64_t k = t.shape.size() == 2 ? t.shape[1] : 0;
    const bool per_row = (t.format == quant::Format::kInt8 || t.format == quant::Format::kFp8E4M3) && t.group == k &&
                         k % 4 == 0;
    const bool int4 = t.format == quant::Format::kInt4 && k % 8 == 0 && t.group > 0 && t.group % 8 == 0;
    if (!per_row && !int4) return false;
  }
  return true;
}

uint32_t ExpertRingSlots(const ModelConfig& config) {
  return std::clamp<uint32_t>(2 * config.num_experts_per_tok, 4, 32);
}

namespace {

// Per block: expert -> its aligned bytes (gate + up + down) and whether any of its matrices rests off the GPU.
struct ExpertSizes {
  std::map<int32_t, uint64_t> bytes;
  std::map<int32_t, bool> off_gpu, on_disk;
};

ExpertSizes SizesOf(const ModelDescription& model, size_t block, const BlockPlacement& p, DType exec_dtype) {
  ExpertSizes s;
  const BlockWeightLayout layout = LayoutBlockWeights(model, block, exec_dtype);
  const std::vector<Tier> tiers = WeightTiersOf(p, layout.weights.size());
  for (size_t w = 0; w < layout.weights.size(); ++w) {
    const int32_t e = ExpertOfWeight(model, block, w);
    if (e < 0) continue;
    s.bytes[e] += AlignUp(layout.weights[w].size_bytes);
    s.off_gpu[e] = s.off_gpu[e] || tiers[w] != Tier::kGpu;
    s.on_disk[e] = s.on_disk[e] || tiers[w] == Tier::kDisk;
  }
  return s;
}

}  // namespace

std::map<int32_t, ExpertRingPlan> ExpertRingsFor(const ModelDescription& model,
                                                 const std::vector<BlockPlacement>& blocks, DType exec_dtype) {
  std::map<int32_t, ExpertRingPlan> rings;
  for (size_t i = 0; i < blocks.size() && i < model.blocks.size(); ++i) {
    const BlockPlacement& p = blocks[i];
    if (!p.routed_experts || p.device < 0) continue;
    const ExpertSizes s = SizesOf(model, i, p, exec_dtype);
    for (const auto& [e, bytes] : s.bytes) {
      if (!s.off_gpu.at(e)) continue;
      ExpertRingPlan& r = rings[p.device];
      r.device = p.device;
      r.slots = ExpertRingSlots(model.config);
      r.slot_bytes = std::max(r.slot_bytes, bytes);
      if (s.on_disk.at(e)) r.disk_slots = kExpertDiskSlots;
    }
  }
  for (auto& [d, r] : rings) {
    const uint64_t a = kDiskSlotAlignment;
    r.disk_slot_bytes = r.disk_slots == 0 ? 0 : (r.slot_bytes + a - 1) / a * a + a;
  }
  return rings;
}

void PlanExpertPaths(const ModelDescription& model, const std::vector<BlockPlacement>& blocks, DType exec_dtype,
                     const DeviceProfile& profile, double cpu_share, uint32_t decode_tokens,
                     std::map<int32_t, ExpertRingPlan>* rings, int prefetch) {
  const ModelConfig& c = model.config;
  for (auto& [device, r] : *rings) {
    if (exec_dtype != DType::kBF16) {
      r.cpu_share = 0;  // the host multiplies bf16 matrices (executor/cpu_matvec.h)
    } else if (cpu_share < 0) {
      r.cpu_share = profile.cpu_gemv_gbps > 0 && profile.h2d_gbps > 0
                        ? profile.cpu_gemv_gbps / (profile.cpu_gemv_gbps + profile.h2d_gbps)
                        : 0.0;
    } else {
      r.cpu_share = std::clamp(cpu_share, 0.0, 1.0);
    }
    r.decode_max_tokens = r.cpu_share > 0 ? std::max<uint32_t>(1, decode_tokens) : 0;
    // Tokens whose k choices each cover every expert twice on average.
    r.copy_all_tokens = std::max<uint32_t>(1, (2 * c.num_experts + c.num_experts_per_tok - 1) / c.num_experts_per_tok);
    r.expected_resident_bytes = r.expected_copied_bytes = r.expected_host_bytes = r.expected_disk_bytes = 0;
    bool pinned = false;  // some routed expert rests in pinned memory (what a prefetch copies; not disk-resting ones)
    for (size_t i = 0; i < blocks.size() && i < model.blocks.size() && !pinned; ++i) {
      if (blocks[i].device != device || !blocks[i].routed_experts) continue;
      const ExpertSizes sizes = SizesOf(model, i, blocks[i], exec_dtype);
      for (const auto& [e, off] : sizes.off_gpu) pinned = pinned || (off && !sizes.on_disk.at(e));
    }
    const int64_t room = static_cast<int64_t>(r.slots) - c.num_experts_per_tok;
    r.prefetch = pinned ? static_cast<uint32_t>(std::clamp<int64_t>(prefetch < 0 ? kDefaultExpertPrefetch : prefetch, 0,
                                                                   std::min<int64_t>(c.num_experts_per_tok, room)))
                        : 0;
    for (size_t i = 0; i < blocks.size() && i < model.blocks.size(); ++i) {
      if (blocks[i].device != device) continue;
      const ExpertBytes b =
          PrefetchedExpertBytes(model, blocks, i, exec_dtype, r.cpu_share, r.prefetch, r.slot_bytes);
      r.expected_resident_bytes += b.resident;
      r.expected_copied_bytes += b.copied;
      r.expected_host_bytes += b.host;
      r.expected_disk_bytes += b.disk;
    }
  }
}

ExpertBytes ExpectedExpertBytes(const ModelDescription& model, size_t block, const BlockPlacement& placement,
                                DType exec_dtype, double cpu_share) {
  ExpertBytes out;
  const ModelConfig& c = model.config;
  if (block >= model.blocks.size() || !c.SparseLayer(model.blocks[block].layer)) return out;
  const ExpertSizes s = SizesOf(model, block, placement, exec_dtype);
  double resident = 0, pinned = 0, disk = 0;
  uint32_t resident_experts = 0;
  for (const auto& [e, bytes] : s.bytes) {
    if (!(s.off_gpu.at(e) && placement.routed_experts)) ++resident_experts;
    if (s.off_gpu.at(e) && placement.routed_experts) {
      (s.on_disk.at(e) ? disk : pinned) += static_cast<double>(bytes);
      out.off_gpu += bytes;
      if (s.on_disk.at(e)) out.off_disk += bytes;
    } else {
      resident += static_cast<double>(bytes);
    }
  }
  const double pick = static_cast<double>(c.num_experts_per_tok) / std::max<uint32_t>(1, c.num_experts);
  out.resident = pick * resident;
  out.disk = pick * disk;
  out.host = pick * pinned * cpu_share;
  out.copied = pick * (pinned + disk) - out.host;
  out.experts = static_cast<uint32_t>(s.bytes.size());
  out.resident_experts = resident_experts;
  for (const auto& [e, bytes] : s.bytes) {
    if (s.off_gpu.at(e) && placement.routed_experts && !s.on_disk.at(e)) ++out.pinned_experts;
  }
  // Quantized experts the executor does not split (smaller than kExpertSplitMinBytes, or in a layout the grouped
  // products do not take) go whole to the host or the GPU: of a token's n chosen pinned-resting experts the host takes
  // HostWholeExperts(share, n), not share x n. (Larger ones are split where the share ends, as plain ones are.)
  const double each = out.pinned_experts > 0 ? pinned / out.pinned_experts : 0.0;
  if (out.pinned_experts > 0 && cpu_share > 0 && QuantizedExpertsWhole(model, block, exec_dtype, each)) {
    double host_experts = 0;
    for (uint32_t chosen = 1; chosen <= c.num_experts_per_tok; ++chosen) {
      host_experts += ChoiceCountChance(out.experts, out.pinned_experts, c.num_experts_per_tok, chosen) *
                      HostWholeExperts(cpu_share, chosen);
    }
    out.host = host_experts * each;
    out.copied = pick * (pinned + disk) - out.host;
  }
  const uint32_t n = std::max<uint32_t>(1, c.num_experts);
  out.all_resident = 1;
  for (uint32_t j = 0; j < c.num_experts_per_tok && j < n; ++j) {
    out.all_resident *= resident_experts > j ? static_cast<double>(resident_experts - j) / (n - j) : 0.0;
  }
  return out;
}

bool QuantizedExpertsWhole(const ModelDescription& model, size_t block, DType exec_dtype, double expert_bytes) {
  return ExpertFormat(model, block) != quant::Format::kNone &&
         (expert_bytes < static_cast<double>(kExpertSplitMinBytes) || !ExpertsGrouped(model, block, exec_dtype));
}

uint32_t HostWholeExperts(double cpu_share, uint32_t n) {
  return static_cast<uint32_t>(std::clamp(std::floor(cpu_share * n + 0.5), 0.0, static_cast<double>(n)));
}

double ChoiceCountChance(uint32_t experts, uint32_t subset, uint32_t k, uint32_t n) {
  if (subset > experts || k > experts || n > k || n > subset || k - n > experts - subset) return 0.0;
  // (log-gamma: exact enough, and safe for 128 experts)
  auto log_choose = [](double a, double b) { return std::lgamma(a + 1) - std::lgamma(b + 1) - std::lgamma(a - b + 1); };
  return std::exp(log_choose(subset, n) + log_choose(experts - subset, k - n) - log_choose(experts, k));
}

ExpertBytes WithPrefetch(const ExpertBytes& b, double cpu_share, double prefetch, uint64_t expert_bytes) {
  if (prefetch <= 0) return b;
  ExpertBytes out = b;
  const double pinned = b.copied + b.host - b.disk;  // the chosen pinned-resting experts' bytes
  out.prefetched = std::min(pinned, kExpertPrefetchHitRate * prefetch * static_cast<double>(expert_bytes));
  out.host = cpu_share * (pinned - out.prefetched);
  out.copied = b.copied + b.host - out.host;
  return out;
}

double ExpectedPrefetches(const ExpertBytes& b, uint32_t k, uint32_t prefetch, bool previous_routed) {
  if (!previous_routed || prefetch == 0 || b.experts == 0 || b.pinned_experts == 0) return 0.0;
  const uint32_t candidates = std::min(std::max(prefetch, k), std::min<uint32_t>(b.experts, 64));
  double expected = 0;
  for (uint32_t j = 1; j <= candidates && j <= b.pinned_experts; ++j) {
    expected += ChoiceCountChance(b.experts, b.pinned_experts, candidates, j) * std::min(prefetch, j);
  }
  return expected;
}

ExpertBytes PrefetchedExpertBytes(const ModelDescription& model, const std::vector<BlockPlacement>& blocks,
                                  size_t block, DType exec_dtype, double cpu_share, uint32_t prefetch,
                                  uint64_t expert_bytes, double* prefetches) {
  bool previous_routed = false;
  for (size_t j = 0; j < block && !previous_routed; ++j) {
    previous_routed = blocks[j].routed_experts && blocks[j].device == blocks[block].device;
  }
  const ExpertBytes plain = ExpectedExpertBytes(model, block, blocks[block], exec_dtype, cpu_share);
  const double n = ExpectedPrefetches(plain, model.config.num_experts_per_tok, prefetch, previous_routed);
  if (prefetches != nullptr) *prefetches = n;
  return WithPrefetch(plain, cpu_share, n, expert_bytes);
}

void SpreadResidentExperts(const ModelDescription& model, DType exec_dtype, uint64_t resident_expert_bytes,
                           std::vector<BlockPlacement>* blocks, int device) {
  struct Layer {
    size_t block;
    std::vector<Tier> tiers;
    std::map<int32_t, std::vector<size_t>> weights;  // expert -> its weight indices
    std::map<int32_t, uint64_t> bytes;
  };
  std::vector<Layer> layers;
  uint32_t max_experts = 0;
  for (size_t i = 0; i < blocks->size() && i < model.blocks.size(); ++i) {
    if (!model.config.SparseLayer(model.blocks[i].layer)) continue;
    if (device >= 0 && (*blocks)[i].device != device) continue;
    const BlockWeightLayout layout = LayoutBlockWeights(model, i, exec_dtype);
    Layer l;
    l.block = i;
    l.tiers.assign(layout.weights.size(), Tier::kGpu);
    for (size_t w = 0; w < layout.weights.size(); ++w) {
      const int32_t e = ExpertOfWeight(model, i, w);
      if (e < 0) continue;
      l.weights[e].push_back(w);
      l.bytes[e] += AlignUp(layout.weights[w].size_bytes);
      l.tiers[w] = Tier::kCpu;
      max_experts = std::max<uint32_t>(max_experts, static_cast<uint32_t>(e) + 1);
    }
    layers.push_back(std::move(l));
  }
  uint64_t left = resident_expert_bytes;
  for (uint32_t e = 0; e < max_experts; ++e) {
    for (Layer& l : layers) {
      auto it = l.bytes.find(static_cast<int32_t>(e));
      if (it == l.bytes.end() || it->second > left) continue;
      left -= it->second;
      for (size_t w : l.weights[static_cast<int32_t>(e)]) l.tiers[w] = Tier::kGpu;
    }
  }
  for (Layer& l : layers) {
    BlockPlacement& p = (*blocks)[l.block];
    p.weight_tiers = l.tiers;
    p.tier = SlowestTier(l.tiers);
    p.routed_experts = true;
  }
}

}  // namespace bigplan
