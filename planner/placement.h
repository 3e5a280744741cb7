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
//   "auto"        (default) Maximizes resident bytes summed over GPUs (every streamed byte costs a copy per forward
//                 pass), then puts as many streamed bytes as possible in the CPU tier rather than disk, then balances.
//                 Blocks are assigned to GPUs as contiguous ranges in execution order (so activations cross each GPU
//                 boundary once), chosen by the block-granular knapsack below; a GPU computes the streamed weights of
//                 its range. Per GPU, A = budget - workspace reserve - activations - KV cache of its range holds the
//                 resident weights and the ring. Three candidates (placement_auto.cc), the feasible one with the most
//                 resident bytes wins (ties: B, P, C), each checked by the full accounting and by building its streams:
//                   B  whole blocks: an exact 0/1 knapsack over block sizes fills A minus the default ring
//                      (min(#streamed, prefetch_depth + 1) slots of the largest streamed block);
//                   P  partially resident blocks: the smallest per-block cap X such that, with every block streaming
//                      its subset of weights of largest sum <= X, the rest plus a ring of (prefetch_depth + 1) slots
//                      of the largest such subset fits A (slots layout); what that leaves is filled by making
//                      streamed weights resident, largest first, while they and the (shrinking) ring fit;
//                   C  chunked streaming: a ring R = clamp(A / 4, 256 MiB, 2 GiB) with chunks of R / 8 (chunks layout,
//                      for layers larger than the GPU), whole weights resident in execution order while they fit A - R.
//                 Streamed weights rest in the CPU tier while the cpu budget holds them and the pinned disk rings of
//                 the rest, in execution order, weight by weight; the others on disk. Placement::candidates reports
//                 each candidate's resident bytes.
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
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "formats/dtype.h"
#include "planner/accounting.h"
#include "planner/budget.h"
#include "planner/model_desc.h"
#include "planner/streaming.h"
#include "planner/tier.h"
#include "support/result.h"

namespace bigplan {

struct BlockPlacement {
  int32_t device = -1;  // compute device: CUDA ordinal, or -1 for the CPU (only when no GPU is budgeted)
  // The block's tier: with weight_tiers, the slowest of its weights' (Disk > Cpu > Gpu), which is what an HF
  // device map says of the block.
  Tier tier = Tier::kGpu;
  // Empty: every weight of the block rests in `tier`. Else one tier per weight of LayoutBlockWeights (a partially
  // resident block: some weights resident, the rest streamed).
  std::vector<Tier> weight_tiers;
  // A sparse layer whose non-resident experts' matrices move only when the router picks them (planner/experts.h):
  // they are in no weight stream.
  bool routed_experts = false;
  bool operator==(const BlockPlacement&) const = default;
};

// Each weight's tier (weight_tiers, or `tier` for all of the block's n_weights weights).
std::vector<Tier> WeightTiersOf(const BlockPlacement& placement, size_t n_weights);

// A block's weights split by where they rest (plan version 2): the Gpu-tier weights packed in layout order into
// the block's resident buffer, the Cpu-tier weights likewise into its host buffer, each 256-aligned; Disk-tier
// weights have no buffer (offset 0).
struct TieredLayout {
  std::vector<uint64_t> offset;  // per weight, inside the buffer of its tier
  uint64_t resident_bytes = 0;
  uint64_t host_bytes = 0;
};
TieredLayout LayoutByTier(const BlockWeightLayout& layout, const std::vector<Tier>& tiers);

// The slowest tier of a block's weights (Disk > Cpu > Gpu).
Tier SlowestTier(const std::vector<Tier>& tiers);

struct PlacementOptions {
  uint32_t prefetch_depth = 1;        // streamed blocks copied ahead of the computing one (staging reservation)
  nlohmann::json device_map;          // for "explicit": the HF-style device map (an object)
  bool enforce_budget = true;         // fail with kInfeasible when the accounting exceeds a budget
  // > 0: devices stream in the chunks layout with chunks of at most this many bytes (PlanRequest::chunk_bytes);
  // their rings default to ChunkedRingBytes instead of DefaultRingBytes.
  uint64_t chunk_bytes = 0;
  // "auto": the candidates it may choose from, by letter ("B", "P", "C", "E", "S"; see Placement::candidates).
  // Others are reported as not considered.
  std::string auto_candidates = "BPCEIST";
};

struct PlacementRequest {
  const ModelDescription* model = nullptr;
  MemoryBudget budget;
  RunShape run;
  DType exec_dtype = DType::kBF16;
  PlacementOptions options;
};

// One placement the "auto" strategy weighed (see placement_auto.cc): "B" block-granular knapsack, "P" partially
// resident blocks (slots ring), "C" chunked streaming through a ring of budget/4.
struct PlacementCandidate {
  std::string name;
  bool feasible = false;
  uint64_t resident_bytes = 0;  // Gpu-tier weight bytes over all GPUs (aligned), when feasible
  std::string why;              // when infeasible: the reason
};

struct Placement {
  std::string strategy;
  // "auto" only: every candidate it weighed, in order B, P, C, and the name of the one it chose.
  std::vector<PlacementCandidate> candidates;
  std::string chosen;
  std::vector<BlockPlacement> blocks;       // parallel to model.blocks
  std::vector<uint64_t> block_weight_bytes; // BlockWeightBytes at the exec dtype, parallel to model.blocks
  std::vector<DeviceAccount> usage;         // budgeted GPUs by ordinal, then "cpu" (if budgeted or used), "disk"
  // The ring of each compute device that streams weights (planner/streaming.h), as the accounting counted it.
  std::map<int32_t, uint64_t> ring_bytes;
  // Chunk size for devices whose ring uses the chunks layout (0: the stream builder's default).
  std::map<int32_t, uint64_t> chunk_bytes;
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

// The streamed weights of the blocks computed on `device`, in step order, as the stream builder takes them
// (each block's Cpu- and Disk-tier weights in layout order; on the CPU (device -1) only Disk-tier weights, since
// Cpu-tier weights are used where they rest).
std::vector<StreamWeight> StreamWeightsFor(const ModelDescription& model, const std::vector<BlockPlacement>& blocks,
                                           DType exec_dtype, int32_t device);
// The ring of block-granular placements: min(#streaming blocks, prefetch_depth + 1) x the largest block's
// streamed bytes (the slots layout; version 1's staging buffers).
uint64_t DefaultRingBytes(const std::vector<StreamWeight>& weights, uint32_t prefetch_depth);
// The ring of the chunks layout with chunks of at most `chunk_bytes`: room for two blocks' whole units and four
// chunks (planner/streaming.h).
uint64_t ChunkedRingBytes(const std::vector<StreamWeight>& weights, uint64_t chunk_bytes);
// The pinned disk ring that the stream builder gives these weights' disk units (StreamOptions::disk_slots of the
// largest whole-weight slot; 0 without disk units or on the CPU).
uint64_t DiskRingBytes(const std::vector<StreamWeight>& weights, int32_t device);

// bigplan's accounting (planner/accounting.h) of a given placement: one DeviceAccount per budgeted GPU (by
// ordinal), then "cpu" (if budgeted, or used), then "disk". Rings: `ring_bytes` per device where given, else
// DefaultRingBytes at the request's prefetch depth. kInvalidArgument for a block on a GPU with no budget.
Result<std::vector<DeviceAccount>> AccountPlacement(const PlacementRequest& request,
                                                    const std::vector<BlockPlacement>& blocks,
                                                    const std::map<int32_t, uint64_t>& ring_bytes = {});
// Ok when every account fits; else kInfeasible with the ShortfallMessage of each device that is short ("; "-joined).
Status CheckFits(const std::vector<DeviceAccount>& usage);
// Checks the request (model present and valid for placement, run shape, budgets) and fills a Placement's
// block_weight_bytes and usage from `blocks`; with options.enforce_budget, CheckFits.
Result<Placement> FinishPlacement(const PlacementRequest& request, std::string strategy,
                                  std::vector<BlockPlacement> blocks, std::map<int32_t, uint64_t> ring_bytes = {},
                                  std::map<int32_t, uint64_t> chunk_bytes = {});

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
