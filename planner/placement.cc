#include "planner/placement.h"

#include <algorithm>
#include <map>
#include <mutex>

#include "arch/registry.h"
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

const char* TierName(Tier tier) {
  switch (tier) {
    case Tier::kGpu: return "gpu";
    case Tier::kCpu: return "cpu";
    case Tier::kDisk: return "disk";
  }
  return "invalid";
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
                                                    const std::vector<BlockPlacement>& blocks) {
  const ModelDescription& model = *request.model;
  if (blocks.size() != model.blocks.size()) {
    return MakeError(ErrorCode::kInternal, "placement has " + std::to_string(blocks.size()) + " blocks, model " +
                                               std::to_string(model.blocks.size()));
  }
  const std::vector<uint64_t> bytes = AllBlockWeightBytes(model, request.exec_dtype);
  const uint64_t kv = KvCacheBytesPerLayer(model.config, request.run, request.exec_dtype);
  const uint32_t depth = request.options.prefetch_depth;

  struct Compute {
    std::vector<size_t> blocks;
    uint64_t resident = 0, kv = 0, streamed = 0, largest_streamed = 0;
  };
  std::map<int32_t, Compute> per_device;
  uint64_t cpu_tier = 0, disk_tier = 0, disk_count = 0, largest_disk = 0;
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
    if (p.tier == Tier::kGpu) {
      c.resident += bytes[i];
    } else {
      ++c.streamed;
      c.largest_streamed = std::max(c.largest_streamed, bytes[i]);
      if (p.tier == Tier::kCpu) {
        cpu_tier += bytes[i];
      } else {
        disk_tier += bytes[i];
        ++disk_count;
        largest_disk = std::max(largest_disk, bytes[i]);
      }
    }
  }

  std::vector<DeviceAccount> out;
  for (const auto& [ordinal, budget] : request.budget.gpus) {
    DeviceAccount a;
    a.device = GpuName(ordinal);
    a.budget = budget;
    auto it = per_device.find(ordinal);
    if (it != per_device.end()) {
      const Compute& c = it->second;
      a.resident_weights = c.resident;
      a.staging = StagingBufferCount(c.streamed, depth) * c.largest_streamed;
      a.kv_cache = c.kv;
      a.activations = EstimateActivations(model, request.run, request.exec_dtype, c.blocks).total;
      a.workspace_reserve = GpuWorkspaceReserveBytes();
    }
    a.total = a.resident_weights + a.staging + a.kv_cache + a.activations + a.workspace_reserve;
    out.push_back(a);
  }
  DeviceAccount cpu;
  cpu.device = "cpu";
  cpu.budget = request.budget.cpu.value_or(0);
  cpu.resident_weights = cpu_tier;
  cpu.staging = StagingBufferCount(disk_count, depth) * largest_disk;
  if (auto it = per_device.find(-1); it != per_device.end()) {
    const Compute& c = it->second;
    cpu.resident_weights += c.resident;
    cpu.staging += StagingBufferCount(c.streamed, depth) * c.largest_streamed;
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
                                  std::vector<BlockPlacement> blocks) {
  BIGPLAN_RETURN_IF_ERROR(placement_internal::CheckRequest(request));
  Placement p;
  p.strategy = std::move(strategy);
  p.block_weight_bytes = AllBlockWeightBytes(*request.model, request.exec_dtype);
  BIGPLAN_ASSIGN_OR_RETURN(p.usage, AccountPlacement(request, blocks));
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
