// Loading: plan verification, checkpoint checks, arenas, mmap'd shards, weight fill, and the LibTorch views the
// kernels read (internal to executor/).
#pragma once

#include <ATen/ATen.h>

#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "executor/kernels.h"
#include "executor/model_state.h"
#include "formats/checkpoint.h"
#include "schema/plan_io.h"
#include "support/result.h"

namespace bigplan::executor_internal {

struct LoadOptions {
  bool cpu_mode = false;
  bool progress = true;
  // Ranks (one process per plan device): >= 0 loads only the blocks the plan places on this plan device, on CUDA
  // device `local_device` (the host in CPU mode); every other block is remote (BlockRuntime::remote: no weights,
  // no memory), and the other devices' arenas are not allocated. The plan must keep every block resident on a GPU.
  int rank_device = -1;
  int local_device = 0;
};

// Everything up to (and including) filling resident and CPU-tier weights, from a plan read (and verified) once by
// PlanFile::Load, whose ownership moves into the state; `plan_path` names it in messages. Error codes as
// Executor::Load.
Result<std::unique_ptr<ModelState>> LoadModelState(PlanFile plan, const std::string& plan_path,
                                                   const std::string& checkpoint_dir, const LoadOptions& options);

// The plan-vs-checkpoint checks LoadModelState runs: the plan's fingerprint is not synthetic, matches the
// checkpoint's shard by shard (names, sizes, header digests), and every plan tensor's (shard, offset, size,
// dtype, shape) matches, and, when the plan records Fingerprint.config_sha256, the checkpoint directory's
// config.json exists and has exactly those bytes. kMismatch naming the plan and the shard, tensor or config.json.
Status CheckPlanAgainstCheckpoint(const PlanFile& plan, const Checkpoint& checkpoint);

at::ScalarType ToScalarType(schema::DType dtype);

// A block's KV cache as tensors over its KvCache buffer (has_kv false for blocks without one).
struct BlockKv {
  bool has_kv = false;
  KvCache kv;
};
// One entry per block. Views never move: buffers are fixed for the executor's lifetime.
Result<std::vector<BlockKv>> MakeKvViews(const ModelState& state);

ModelSpec SpecFromPlan(const schema::Plan& plan);

}  // namespace bigplan::executor_internal
