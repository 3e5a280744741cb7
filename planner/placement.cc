#include "planner/placement.h"

#include <algorithm>
#include <map>
#include <mutex>
#include <set>

#include "arch/registry.h"
#include "planner/experts.h"
#include "planner/placement_strategies.h"
#include "support/units.h"

namespace bigplan {
namespace {

struct Registry {
  std::mutex mu;
  std::map<std::string, PlacementStrategyFactory> factories;
};

Registry& GetRegistry() {
  static Registry* r = [] {
    auto* reg = new Registry;
    reg->factories["sequential"] = placement_internal::MakeSequentialStrategy;
    reg->factories["auto"] = placement_internal::MakeAutoStrategy;
    reg->factories["explicit"] = placement_internal::MakeExplicitStrategy;
    return reg;
  }();
  return *r;
}

std::string GpuName(int ordinal) { return "cuda:" + std::to_string(ordinal); }

}  // namespace

std::vector<Tier> WeightTiersOf(const BlockPlacement& p, size_t n_weights) {
  if (p.weight_tiers.size() == n_weights) return p.weight_tiers;
  return std::vector<Tier>(n_weights, p.tier);
}

TieredLayout LayoutByTier(const BlockWeightLayout& layout, const std::vector<Tier>& tiers) {
  TieredLayout t;
  t.offset.assign(layout.weights.size(), 0);
  for (size_t w = 0; w < layout.weights.size(); ++w) {
    const Tier tier = w < tiers.size() ? tiers[w] : Tier::kGpu;
    if (tier == Tier::kDisk) continue;
    uint64_t& end = tier == Tier::kGpu ? t.resident_bytes : t.host_bytes;
    t.offset[w] = end;
    end = AlignUp(end + layout.weights[w].size_bytes);
  }
  return t;
}

Tier SlowestTier(const std::vector<Tier>& tiers) {
  Tier slowest = Tier::kGpu;
  for (Tier t : tiers) slowest = static_cast<uint8_t>(t) > static_cast<uint8_t>(slowest) ? t : slowest;
  return slowest;
}

namespace {

// The order in which the kernels consume a block's matrices (executor/kernels_*.cc), for row-chunked streaming:
// attention input projections, attention output, MLP input projections, MLP output; embeddings and heads alone.
uint32_t ConsumptionRank(const std::string& name) {
  auto has = [&](const char* part) { return name.find(part) != std::string::npos; };
  // Mixture-of-experts layers (executor/kernels_llama.cc Moe): the router, then each expert's gate, up and down in
  // expert order, then the shared expert and its gate.
  constexpr uint32_t kExperts = 8, kShared = kExperts + 3 * arch::kMaxExperts;
  if (has("shared_expert_gate.")) return kShared + 3;
  if (has("shared_expert.")) return kShared + (has("gate_proj") ? 0 : has("up_proj") ? 1 : 2);
  if (has("block_sparse_moe.gate.") || has("mlp.gate.")) return 4;
  const size_t at = name.find(".experts.");
  if (at != std::string::npos) {
    uint32_t e = 0;
    size_t i = at + 9;
    while (i < name.size() && name[i] >= '0' && name[i] <= '9' && e < arch::kMaxExperts) e = e * 10 + (name[i++] - '0');
    const uint32_t role = has("gate_proj") || has(".w1.") ? 0 : has("up_proj") || has(".w3.") ? 1 : 2;
    return kExperts + 3 * std::min(e, arch::kMaxExperts - 1) + role;
  }
  if (has("q_proj") || has("qkv_proj") || has("c_attn")) return 0;
  if (has("k_proj")) return 1;
  if (has("v_proj")) return 2;
  if (has("o_proj") || has("out_proj") || has("attn.c_proj")) return 3;
  if (has("gate_proj") || has("gate_up_proj") || has("fc_in") || has("c_fc") || has(".w1.")) return 4;
  if (has("up_proj") || has(".w3.")) return 5;
  if (has("down_proj") || has("fc_out") || has("mlp.c_proj") || has(".w2.")) return 6;
  return 7;
}

}  // namespace

std::vector<StreamWeight> StreamWeightsFor(const ModelDescription& model, const std::vector<BlockPlacement>& blocks,
                                           DType exec_dtype, int32_t device) {
  std::vector<StreamWeight> out;
  for (size_t i = 0; i < model.blocks.size() && i < blocks.size(); ++i) {
    if (blocks[i].device != device) continue;
    const BlockWeightLayout layout = LayoutBlockWeights(model, i, exec_dtype);
    const std::vector<Tier> tiers = WeightTiersOf(blocks[i], layout.weights.size());
    for (size_t w = 0; w < layout.weights.size(); ++w) {
      const WeightSlot& ws = layout.weights[w];
      if (tiers[w] == Tier::kGpu || (device < 0 && tiers[w] == Tier::kCpu) || ws.size_bytes == 0) continue;
      if (blocks[i].routed_experts && ExpertOfWeight(model, i, w) >= 0) continue;  // moves when routed
      StreamWeight sw;
      sw.block = static_cast<uint32_t>(i);
      sw.weight = static_cast<uint32_t>(w);
      sw.source = tiers[w];
      sw.bytes = ws.size_bytes;
      sw.rows = ws.shape.empty() ? 1 : std::max<int64_t>(1, ws.shape[0]);
      sw.row_bytes = ws.size_bytes / static_cast<uint64_t>(sw.rows);
      // Learned position tables are read by position ranges, not through a chunk-aware kernel.
      sw.chunkable = ws.shape.size() >= 2 && sw.rows > 1 && ws.tensor.find("wpe.") == std::string::npos;
      sw.order = ConsumptionRank(ws.tensor);
      int64_t numel = 1;
      for (int64_t d : ws.shape) numel *= d;
      sw.file_bytes = static_cast<uint64_t>(numel) * DTypeBytes(ws.src_dtype);
      sw.file_row_bytes = sw.file_bytes / static_cast<uint64_t>(sw.rows);
      sw.cast = ws.src_dtype != ws.dtype;
      sw.format = ws.format;
      out.push_back(sw);
    }
  }
  return out;
}

uint64_t DefaultRingBytes(const std::vector<StreamWeight>& weights, uint32_t prefetch_depth) {
  std::map<uint32_t, uint64_t> per_block;
  for (const StreamWeight& w : weights) per_block[w.block] += AlignUp(w.bytes);
  uint64_t largest = 0;
  for (const auto& [b, bytes] : per_block) largest = std::max(largest, bytes);
  return StagingBufferCount(per_block.size(), std::max<uint32_t>(1, prefetch_depth)) * largest;
}

uint64_t ChunkedRingBytes(const std::vector<StreamWeight>& weights, uint64_t chunk_bytes) {
  std::map<uint32_t, uint64_t> whole;
  uint64_t chunk = 0;
  for (const StreamWeight& w : weights) {
    if (w.chunkable && w.bytes > chunk_bytes) {
      const uint64_t rows = std::max<uint64_t>(1, chunk_bytes / std::max<uint64_t>(1, w.row_bytes));
      chunk = std::max(chunk, AlignUp(rows * w.row_bytes));
    } else {
      whole[w.block] += AlignUp(w.bytes);
    }
  }
  uint64_t max_whole = 0;
  for (const auto& [b, bytes] : whole) max_whole = std::max(max_whole, bytes);
  return 2 * max_whole + 4 * chunk;
}

uint64_t DiskRingBytes(const std::vector<StreamWeight>& weights, int32_t device) {
  if (device < 0) return 0;
  uint64_t slot = 0;
  for (const StreamWeight& w : weights) {
    if (w.source != Tier::kDisk) continue;
    const uint64_t s = w.cast ? (std::max(w.bytes, w.file_bytes) + kDiskSlotAlignment - 1) / kDiskSlotAlignment * kDiskSlotAlignment
                              : (w.file_bytes + kDiskSlotAlignment - 1) / kDiskSlotAlignment * kDiskSlotAlignment +
                                    kDiskSlotAlignment;
    slot = std::max(slot, s);
  }
  return slot * StreamOptions{}.disk_slots;
}

Status RegisterPlacementStrategy(const std::string& name, PlacementStrategyFactory factory) {
  if (name.empty()) return MakeError(ErrorCode::kInvalidArgument, "placement strategy name is empty");
  if (!factory) return MakeError(ErrorCode::kInvalidArgument, "placement strategy \"" + name + "\": no factory");
  Registry& r = GetRegistry();
  std::lock_guard<std::mutex> lock(r.mu);
  if (!r.factories.emplace(name, std::move(factory)).second) {
    return MakeError(ErrorCode::kInvalidArgument, "placement strategy \"" + name + "\" is already registered");
  }
  return Status::Ok();
}

std::vector<std::string> ListPlacementStrategies() {
  Registry& r = GetRegistry();
  std::lock_guard<std::mutex> lock(r.mu);
  std::vector<std::string> names;
  for (const auto& [name, f] : r.factories) names.push_back(name);
  return names;
}

Result<std::unique_ptr<PlacementStrategy>> MakePlacementStrategy(std::string_view name) {
  PlacementStrategyFactory factory;
  {
    Registry& r = GetRegistry();
    std::lock_guard<std::mutex> lock(r.mu);
    auto it = r.factories.find(std::string(name));
    if (it != r.factories.end()) factory = it->second;
  }
  if (!factory) {
    std::string known;
    for (const std::string& n : ListPlacementStrategies()) known += (known.empty() ? "" : ", ") + n;
    return MakeError(ErrorCode::kInvalidArgument,
                     "unknown placement strategy \"" + std::string(name) + "\" (available: " + known + ")");
  }
  return factory();
}

Result<Placement> PlaceModel(std::string_view strategy, const PlacementRequest& request) {
  BIGPLAN_ASSIGN_OR_RETURN(std::unique_ptr<PlacementStrategy> s, MakePlacementStrategy(strategy));
  return s->Place(request);
}

Result<std::vector<DeviceAccount>> AccountPlacement(const PlacementRequest& request,
                                                    const std::vector<BlockPlacement>& blocks,
                                                    const std::map<int32_t, uint64_t>& ring_bytes) {
  const ModelDescription& model = *request.model;
  if (blocks.size() != model.blocks.size()) {
    return MakeError(ErrorCode::kInternal, "placement has " + std::to_string(blocks.size()) + " blocks, model " +
                                               std::to_string(model.blocks.size()));
  }
  const uint64_t kv = KvCacheBytesPerLayer(model.config, request.run, request.exec_dtype);
  struct Compute {
    std::vector<size_t> blocks;
    uint64_t resident = 0, kv = 0;
  };
  std::map<int32_t, Compute> per_device;
  uint64_t cpu_tier = 0, disk_tier = 0;
  for (size_t i = 0; i < blocks.size(); ++i) {
    const BlockPlacement& p = blocks[i];
    if (p.device >= 0 && !request.budget.gpus.count(p.device)) {
      return MakeError(ErrorCode::kInvalidArgument,
                       "block " + model.blocks[i].name + " is placed on " + GpuName(p.device) + ", which has no budget");
    }
    if (p.device < -1) {
      return MakeError(ErrorCode::kInvalidArgument, "block " + model.blocks[i].name + ": bad device " + std::to_string(p.device));
    }
    Compute& c = per_device[p.device];
    c.blocks.push_back(i);
    if (model.blocks[i].kind == BlockKind::kDecoderLayer) c.kv += kv;
    const BlockWeightLayout layout = LayoutBlockWeights(model, i, request.exec_dtype);
    const std::vector<Tier> tiers = WeightTiersOf(p, layout.weights.size());
    for (size_t w = 0; w < layout.weights.size(); ++w) {
      const uint64_t bytes = AlignUp(layout.weights[w].size_bytes);
      if (tiers[w] == Tier::kGpu) c.resident += bytes;
      if (tiers[w] == Tier::kCpu) cpu_tier += bytes;
      if (tiers[w] == Tier::kDisk) disk_tier += bytes;
    }
  }
  auto ring_of = [&](int32_t device, const std::vector<StreamWeight>& weights) {
    auto it = ring_bytes.find(device);
    if (it != ring_bytes.end()) return it->second;
    return request.options.chunk_bytes ? ChunkedRingBytes(weights, request.options.chunk_bytes)
                                       : DefaultRingBytes(weights, request.options.prefetch_depth);
  };
  uint64_t disk_rings = 0;
  const std::map<int32_t, ExpertRingPlan> expert_rings = ExpertRingsFor(model, blocks, request.exec_dtype);
  for (const auto& [d, r] : expert_rings) disk_rings += r.disk_ring_bytes();
  std::vector<DeviceAccount> out;
  for (const auto& [ordinal, budget] : request.budget.gpus) {
    DeviceAccount a;
    a.device = GpuName(ordinal);
    a.budget = budget;
    auto it = per_device.find(ordinal);
    if (it != per_device.end()) {
      const Compute& c = it->second;
      const std::vector<StreamWeight> streamed = StreamWeightsFor(model, blocks, request.exec_dtype, ordinal);
      a.resident_weights = c.resident;
      a.staging = streamed.empty() ? 0 : ring_of(ordinal, streamed);
      if (auto e = expert_rings.find(ordinal); e != expert_rings.end()) a.staging += e->second.ring_bytes();
      a.kv_cache = c.kv;
      a.activations = EstimateActivations(model, request.run, request.exec_dtype, c.blocks).total;
      a.workspace_reserve = GpuWorkspaceReserveBytes();
      disk_rings += DiskRingBytes(streamed, ordinal);
    }
    a.total = a.resident_weights + a.staging + a.kv_cache + a.activations + a.workspace_reserve;
    out.push_back(a);
  }
  DeviceAccount cpu;
  cpu.device = "cpu";
  cpu.budget = request.budget.cpu.value_or(0);
  cpu.resident_weights = cpu_tier;
  cpu.staging = disk_rings;
  if (auto it = per_device.find(-1); it != per_device.end()) {
    const Compute& c = it->second;
    const std::vector<StreamWeight> streamed = StreamWeightsFor(model, blocks, request.exec_dtype, -1);
    cpu.resident_weights += c.resident;
    cpu.staging += streamed.empty() ? 0 : ring_of(-1, streamed);
    cpu.kv_cache = c.kv;
    cpu.activations = EstimateActivations(model, request.run, request.exec_dtype, c.blocks).total;
  }
  cpu.total = cpu.resident_weights + cpu.staging + cpu.kv_cache + cpu.activations;
  if (request.budget.cpu || cpu.total > 0) out.push_back(cpu);
  DeviceAccount disk;
  disk.device = "disk";
  disk.unlimited = !request.budget.disk.has_value();
  disk.budget = request.budget.disk.value_or(0);
  disk.resident_weights = disk_tier;
  disk.total = disk_tier;
  if (request.budget.disk || disk.total > 0) out.push_back(disk);
  return out;
}

Status CheckFits(const std::vector<DeviceAccount>& usage) {
  std::string msg;
  for (const DeviceAccount& a : usage) {
    if (a.fits()) continue;
    msg += (msg.empty() ? "" : "; ") + a.ShortfallMessage();
  }
  if (msg.empty()) return Status::Ok();
  return MakeError(ErrorCode::kInfeasible, msg);
}

Result<Placement> FinishPlacement(const PlacementRequest& request, std::string strategy,
                                  std::vector<BlockPlacement> blocks, std::map<int32_t, uint64_t> ring_bytes,
                                  std::map<int32_t, uint64_t> chunk_bytes) {
  BIGPLAN_RETURN_IF_ERROR(placement_internal::CheckRequest(request));
  Placement p;
  p.strategy = std::move(strategy);
  p.block_weight_bytes = AllBlockWeightBytes(*request.model, request.exec_dtype);
  // Rings of the devices that stream (given, or the block-granular default) and their chunk sizes.
  std::set<int32_t> devices;
  for (const BlockPlacement& b : blocks) devices.insert(b.device);
  for (int32_t d : devices) {
    const std::vector<StreamWeight> streamed = StreamWeightsFor(*request.model, blocks, request.exec_dtype, d);
    if (streamed.empty()) continue;
    if (!ring_bytes.count(d)) {
      ring_bytes[d] = request.options.chunk_bytes ? ChunkedRingBytes(streamed, request.options.chunk_bytes)
                                                  : DefaultRingBytes(streamed, request.options.prefetch_depth);
    }
  }
  p.ring_bytes = ring_bytes;
  p.chunk_bytes = std::move(chunk_bytes);
  BIGPLAN_ASSIGN_OR_RETURN(p.usage, AccountPlacement(request, blocks, ring_bytes));
  p.blocks = std::move(blocks);
  if (request.options.enforce_budget) {
    Status fits = CheckFits(p.usage);
    if (!fits.ok()) return WithContext(fits.take_error(), "placement \"" + p.strategy + "\" of " + request.model->name);
  }
  return p;
}

nlohmann::ordered_json PlacementToDeviceMap(const ModelDescription& model, const std::vector<BlockPlacement>& blocks) {
  nlohmann::ordered_json j = nlohmann::ordered_json::object();
  for (size_t i = 0; i < model.blocks.size() && i < blocks.size(); ++i) {
    const BlockPlacement& p = blocks[i];
    if (p.tier == Tier::kDisk) {
      j[model.blocks[i].name] = "disk";
    } else if (p.tier == Tier::kCpu || p.device < 0) {
      j[model.blocks[i].name] = "cpu";
    } else {
      j[model.blocks[i].name] = p.device;
    }
  }
  return j;
}

namespace placement_internal {

Status CheckRequest(const PlacementRequest& request) {
  if (request.model == nullptr) return MakeError(ErrorCode::kInvalidArgument, "placement: no model");
  BIGPLAN_RETURN_IF_ERROR(request.model->Validate());
  BIGPLAN_RETURN_IF_ERROR(ValidateRunShape(request.run, *request.model));
  const DType d = request.exec_dtype;
  if (d != DType::kBF16 && d != DType::kF16 && d != DType::kF32) {
    return MakeError(ErrorCode::kInvalidArgument,
                     std::string("execution dtype ") + DTypeString(d) + " is not supported (expected BF16, F16 or F32)");
  }
  if (request.budget.gpus.empty() && !request.budget.cpu) {
    return MakeError(ErrorCode::kInvalidArgument, "placement: the budget names no GPU and no cpu: nothing can compute");
  }
  return Status::Ok();
}

int32_t MainDevice(const std::vector<BlockPlacement>& blocks) {
  for (const BlockPlacement& p : blocks) {
    if (p.device >= 0 && p.tier == Tier::kGpu) return p.device;
  }
  return -1;
}

bool IsParameterlessModule(const ModelDescription& model, const std::string& name) {
  const arch::FamilyInfo* family = arch::FindFamily(model.architecture);
  return family != nullptr && arch::IsParameterlessModule(*family, name);
}

}  // namespace placement_internal
}  // namespace bigplan
