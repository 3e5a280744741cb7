// Writes the flatbuffer plan (schema/plan.fbs) from the planner's decisions, and verifies it.
//
// Every field of schema::Plan is filled:
//   version/generator/strategy/model_name/model_digest (ModelDescription::Digest), config (from the description's
//   normalized config; config_json = the original config.json, compact), checkpoint (the fingerprint, see below;
//   its config_sha256 only when PlanContent::config_sha256 is set: the field is left out, not "", otherwise),
//   exec_dtype, run_shape, budgets (MemoryBudget::Entries, unlimited disk omitted), profile, tensors, blocks,
//   buffers, arenas, steps (frees, per-step predictions; no copies in version 2), streams (every device's units),
//   usage, predictions.
//
// Tensors: every param a block owns, in block order (a tied param appears once; each block reading it carries its
// own Weight pointing at it). With a checkpoint: shard index, absolute offset, size and dtype from the shard headers.
//
// Without a checkpoint (planning a bundled example or a bare config.json): a SYNTHETIC fingerprint. Its shards are
// the file names of the directory's model.safetensors.index.json (in first-appearance order) or the single name
// "model.safetensors", each with size_bytes 0 and an empty header_digest; its digest is "synthetic:" followed by
// the sha256 of the shard names. Tensor offsets are 0 and sizes are numel x source dtype size. No real checkpoint
// matches such a fingerprint, so the executor refuses the plan ("plan was made without a checkpoint").
#pragma once

#include <cstdint>
#include <map>

#include "arch/tensor_parallel.h"
#include <string>
#include <vector>

#include "formats/checkpoint.h"
#include "planner/accounting.h"
#include "planner/budget.h"
#include "planner/cost_model.h"
#include "planner/device_profile.h"
#include "planner/model_desc.h"
#include "planner/experts.h"
#include "planner/placement.h"
#include "planner/schedule.h"
#include "schema/plan_generated.h"
#include "support/result.h"

namespace bigplan {

inline constexpr char kSyntheticDigestPrefix[] = "synthetic:";
inline constexpr char kGeneratorName[] = "bigplan 0.1.0";

// True for a fingerprint made by SyntheticFingerprint.
bool IsSyntheticFingerprint(const std::string& digest);
// The fingerprint of a plan made without a checkpoint (see above).
CheckpointFingerprint SyntheticFingerprint(const std::vector<std::string>& shard_names);

// What one device holds in the plan, from the memory plan itself (not from estimates):
//   GPU (or the CPU arena of CPU compute): resident_weights, kv_cache, activations = sums of those buffers;
//   staging = arena size - those sums (staging buffers incl. any fragmentation); workspace_reserve =
//   GpuWorkspaceReserveBytes() on GPUs; total = arena size + reserve.
//   "cpu": resident_weights = HostWeights (+ the CPU arena's resident weights), staging = pinned pool size -
//   HostWeights; kv_cache and activations of the CPU arena; total = pinned pool + CPU arena.
//   "disk": resident_weights = the checkpoint bytes of Disk-tier blocks' own params; total = that.
// budget = the budget of that device (0 and unlimited when none). Devices: budgeted GPUs by ordinal, then the GPUs
// used without a budget, then "cpu" (if budgeted or used), then "disk" (if budgeted or used).
std::vector<DeviceAccount> PlanUsage(const ModelDescription& model, const MemoryBudget& budget,
                                     const std::vector<BlockPlacement>& placement, const Schedule& schedule);

struct PlanContent {
  const ModelDescription* model = nullptr;
  const Checkpoint* checkpoint = nullptr;       // nullptr: synthetic fingerprint
  std::vector<std::string> synthetic_shards;    // shard names when checkpoint == nullptr (default: model.safetensors)
  std::map<std::string, uint32_t> synthetic_shard_of;  // tensor -> index into synthetic_shards (default 0)
  std::string config_sha256;  // Fingerprint.config_sha256 (ResolvedModel::config_sha256); "" leaves it out
  MemoryBudget budget;
  RunShape run;
  DType exec_dtype = DType::kBF16;
  quant::Format weights = quant::Format::kNone;  // recorded as Plan.weights (what `plan --weights` asked for)
  std::string strategy;
  DeviceProfile profile;
  std::vector<BlockPlacement> placement;        // parallel to model->blocks
  const Schedule* schedule = nullptr;
  std::vector<BlockCost> block_costs;           // parallel to the blocks
  // Plan.host_max_tokens: forwards of at most this many tokens compute the schedule's `host` units on the host (0
  // when there are none).
  uint32_t host_max_tokens = 0;
  // Plan.experts: the routed experts' rings (the schedule holds their buffers).
  std::map<int32_t, ExpertRingPlan> expert_rings;
  double predicted_decode_us = 0;
  double predicted_prefill_us = 0;
  std::vector<DeviceAccount> usage;
  // Tensor parallelism (planner/tensor_parallel.h): 0 for none; else `model` is the sharded description (its blocks
  // the shards), `source_model` the model as read (the plan's tensors, config, name and digest come from it), and
  // shard / slices are ShardedModel's, parallel to model->blocks.
  uint32_t tensor_parallel = 0;
  const ModelDescription* source_model = nullptr;
  const std::vector<uint32_t>* shard = nullptr;
  const std::vector<std::map<std::string, arch::TensorSlice>>* slices = nullptr;
};

// Builds the plan, then runs VerifyPlan and the overlap checker on the finished bytes. kMismatch when a param is
// absent from the checkpoint; kInternal when the finished plan fails verification or the overlap check.
Result<std::vector<uint8_t>> BuildPlan(const PlanContent& content);

}  // namespace bigplan
