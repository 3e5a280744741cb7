// Placement: which device computes each block and where its weights rest between forward passes.
//
// Strategies are pluggable by name (MakePlacementStrategy); built in:
//
//   "sequential"  The decisions of Accelerate 1.15's infer_auto_device_map(model, max_memory, no_split_module_classes
//                 = the model's _no_split_modules, dtype = exec dtype) for the same model and budgets: fill GPU 0, 1,
//                 ..., then cpu, then disk, in execution order, keeping room for the largest remaining layer on
//                 the first GPU and on cpu, placing tied modules with the module that owns the tied param, and
//                 splitting composite modules (e.g. "model", "model.layers") only when they do not fit whole.
//                 Sizes are Accelerate's: unaligned numel x min(exec, param) dtype bytes, runtime buffers included.
//                 Accelerate's "cpu"/"disk" modules become Cpu/Disk-tier blocks computed on the main GPU (the GPU of
//                 the first GPU-placed block; Accelerate's execution device for offloaded modules). With
//                 options.enforce_budget, the placement is then checked against bigplan's full accounting (KV cache,
//                 activations, staging, reserve are not in Accelerate's weights-only budget).
//
//   "auto"        (default) Minimizes predicted forward time. Every streamed byte costs the same per forward pass
//                 (one copy of each streamed block per pass; disk bytes cost more than CPU bytes), so the objective is
//                 (1) maximize resident bytes summed over GPUs, then (2) among the streamed, put as many bytes as
//                 possible in the CPU tier rather than disk, then (3) balance. Per GPU, what is left of the budget
//                 after the workspace reserve, activations, the KV cache of the layers it computes and, if it streams
//                 any block, the staging buffers (prefetch_depth + 1 buffers of its largest streamed block) is filled
//                 with resident blocks by an exact 0/1 knapsack over block sizes (dynamic programming over distinct
//                 sizes in 256-byte units, bounded; decoder layers are equal so this degenerates to greedy for them).
//                 Blocks are assigned to GPUs as contiguous ranges in execution order (so activations cross each GPU
//                 boundary once); ranges are chosen to balance resident bytes, and a GPU computes the streamed blocks
//                 of its range. Streamed blocks fill the cpu budget (pinned weights + disk staging), the rest go to
//                 disk. The embedding/lm_head are kept resident only when that maximizes resident bytes (the
//                 knapsack decides; ties prefer keeping earlier blocks, which need no prefetch at step 0).
//
//   "explicit"    From options.device_map, an HF-style device map ({"model.embed_tokens": 0, "model.layers": 1,
//                 "lm_head": "cpu", ...}; values: GPU ordinal int or "N"/"cuda:N", "cpu", "disk"). A key may name
//                 a block or any coarser module ("model", or "" for everything); the most specific key wins. An
//                 unknown key or a block no key covers is kInvalidArgument naming it.
//
// Infeasible (any strategy): kInfeasible naming the device that is short and by how much, with its breakdown:
//   "cuda:0 needs 5.12 GiB (resident 3.90 GiB + staging 810.00 MiB + KV 256.00 MiB + activations 120.00 MiB +
//    reserve 320.00 MiB) but its budget is 4.00 GiB: short by 1.12 GiB", or when cpu + disk cannot hold the rest.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "formats/dtype.h"
#include "planner/accounting.h"
#include "planner/budget.h"
#include "planner/model_desc.h"
#include "support/result.h"

namespace bigplan {

// Where a block's weights rest between forward passes. Values match schema::Tier.
enum class Tier : uint8_t {
  kGpu = 0,   // resident in the compute device's arena (host arena when device == -1)
  kCpu = 1,   // pinned host pool, streamed to a staging buffer on the compute device before use
  kDisk = 2,  // the checkpoint shard (mmap) -> pinned disk staging -> staging buffer on the compute device
};
const char* TierName(Tier tier);  // "gpu", "cpu", "disk"

struct BlockPlacement {
  int32_t device = -1;  // compute device: CUDA ordinal, or -1 for the CPU (only when no GPU is budgeted)
  Tier tier = Tier::kGpu;
  bool operator==(const BlockPlacement&) const = default;
};

struct PlacementOptions {
  uint32_t prefetch_depth = 1;        // streamed blocks copied ahead of the computing one (staging reservation)
  nlohmann::json device_map;          // for "explicit": the HF-style device map (an object)
  bool enforce_budget = true;         // fail with kInfeasible when the accounting exceeds a budget
};

struct PlacementRequest {
  const ModelDescription* model = nullptr;
  MemoryBudget budget;
  RunShape run;
  DType exec_dtype = DType::kBF16;
  PlacementOptions options;
};

struct Placement {
  std::string strategy;
  std::vector<BlockPlacement> blocks;       // parallel to model.blocks
  std::vector<uint64_t> block_weight_bytes; // BlockWeightBytes at the exec dtype, parallel to model.blocks
  std::vector<DeviceAccount> usage;         // budgeted GPUs by ordinal, then "cpu" (if budgeted or used), "disk"
};

class PlacementStrategy {
 public:
  virtual ~PlacementStrategy() = default;
  virtual std::string name() const = 0;
  virtual std::string description() const = 0;  // one line
  virtual Result<Placement> Place(const PlacementRequest& request) const = 0;
};

using PlacementStrategyFactory = std::function<std::unique_ptr<PlacementStrategy>()>;

inline constexpr char kDefaultPlacementStrategy[] = "auto";

// kInvalidArgument if the name is empty or taken. Built-ins are always registered.
Status RegisterPlacementStrategy(const std::string& name, PlacementStrategyFactory factory);
// kInvalidArgument naming `name` and listing the registered ones when unknown.
Result<std::unique_ptr<PlacementStrategy>> MakePlacementStrategy(std::string_view name);
std::vector<std::string> ListPlacementStrategies();  // sorted

// Convenience: MakePlacementStrategy(name) then Place(request).
Result<Placement> PlaceModel(std::string_view strategy, const PlacementRequest& request);

// bigplan's accounting (planner/accounting.h) of a given placement: one DeviceAccount per budgeted GPU (by
// ordinal), then "cpu" (if budgeted, or used), then "disk". kInvalidArgument for a block on a GPU with no budget.
Result<std::vector<DeviceAccount>> AccountPlacement(const PlacementRequest& request,
                                                    const std::vector<BlockPlacement>& blocks);
// Ok when every account fits; else kInfeasible with the ShortfallMessage of each device that is short ("; "-joined).
Status CheckFits(const std::vector<DeviceAccount>& usage);
// Checks the request (model present and valid for placement, run shape, budgets) and fills a Placement's
// block_weight_bytes and usage from `blocks`; with options.enforce_budget, CheckFits.
Result<Placement> FinishPlacement(const PlacementRequest& request, std::string strategy,
                                  std::vector<BlockPlacement> blocks);

// HF-style device map of a placement, one key per block in execution order: Gpu tier -> the ordinal (int), Cpu
// tier -> "cpu", Disk tier -> "disk"; blocks computed on the CPU (device -1) -> "cpu". (Which GPU computes a
// streamed block is not part of the HF format; DeviceMapToPlacement assumes the main GPU, as Accelerate does.)
nlohmann::ordered_json PlacementToDeviceMap(const ModelDescription& model, const std::vector<BlockPlacement>& blocks);
// The inverse (as "explicit" does): expands module keys to blocks (the most specific key wins; "" covers all).
// GPU values must be budgeted GPUs. As in Accelerate's dispatch, "cpu"/"disk" blocks are computed on the main GPU
// (the GPU of the first GPU-placed block in execution order); when no block is on a GPU, everything is computed on
// the CPU (device -1): "cpu" blocks are then resident in host memory (tier Gpu) and "disk" blocks stay Disk tier.
// kInvalidArgument naming an unknown key (parameter-free modules such as "model.rotary_emb" are ignored), a key
// inside a block ("model.layers.0.mlp": bigplan places whole blocks), a block no key covers, or a bad value.
Result<std::vector<BlockPlacement>> DeviceMapToPlacement(const ModelDescription& model, const nlohmann::json& device_map,
                                                         const MemoryBudget& budget);

}  // namespace bigplan
