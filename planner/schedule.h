// The schedule: the steps of one forward pass, every buffer with its lifetime, and the copies that stream
// non-resident weights, with the dependencies the executor must honour.
//
// Input: the blocks in execution order, each with its compute device and tier (from placement), its weight
// bytes at the execution dtype and its KV-cache bytes; activation bytes per device; a prefetch depth per tier.
//
// Steps. One step per block, in execution order: step i runs block i.
//
// Buffers (kind, pool, lifetime in steps, inclusive; n = number of steps):
//   ResidentWeights  Gpu-tier block: its weights in its device's arena, [0, n-1].
//   HostWeights      Cpu-tier block: its weights in the pinned pool, [0, n-1].
//   Staging          Cpu- and Disk-tier block ("streamed"): its device's arena, [issue step of its copy, its step].
//   DiskStaging      Disk-tier block: the pinned pool, [issue step of its copy, its step].
//   KvCache          decoder layer (kv_bytes > 0): its device's arena, [0, n-1].
//   Activations      one per compute device that runs a block: that device's arena, [0, n-1].
// Buffer order: per block in execution order (home, staging, disk staging, kv), then activations by device.
// A Gpu-tier block on device -1 (CPU compute) lives in the CPU "device arena" (host memory, not pinned).
// Streamed blocks on device -1 are staged into the CPU arena the same way (a host memcpy instead of H2D).
//
// Copies. Let S = the streamed blocks in execution order and d(t) the prefetch depth of tier t (>= 1). The copy
// of S[k] is issued at step(S[k - d]) for k >= d, and at step 0 for k < d; issue steps are then made
// non-decreasing along S (max with the previous copy's), so one copy stream serves copies in consumption order.
// Within a step, copies are listed in execution order of their blocks. Every copy is on copy stream 0 (the
// executor has one copy stream per device; the index is relative to the destination device).
//
// Dependencies, computed after the memory plan assigned offsets:
//   wait_compute_steps of the copy of block j issued at step i = the distinct steps s = B.last_step of every other
//     buffer B in the same pool (same device) as j's Staging buffer whose bytes overlap it and whose
//     last_step < i, ascending. The executor makes the copy stream wait on the compute-done events of these steps
//     before writing the staging buffer. (Buffers that overlap it and start after j's step are not hazards within
//     the forward: their own copies wait on j's step.)
//   wait_copy_blocks (Disk only) = the blocks k != j whose DiskStaging overlaps j's in the pinned pool with
//     last_step < i, ascending: the disk read into j's pinned staging starts after those blocks' H2D copies
//     finished.
// Forwards repeat, and the executor synchronizes at the end of each forward, so lifetimes never wrap around.
//
// Frees: step i lists the buffers whose last_step == i (all-run buffers are freed at the last step).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "planner/memory_plan.h"
#include "schema/plan_generated.h"
#include "support/result.h"

namespace bigplan {

struct ScheduleBlock {
  std::string name;
  int32_t device = 0;  // compute device, -1 = CPU
  schema::Tier tier = schema::Tier::Gpu;
  uint64_t weight_bytes = 0;  // the block's weight buffer at the execution dtype (incl. per-weight alignment)
  uint64_t kv_bytes = 0;      // KV cache for the run shape; 0 for blocks without one
};

struct ScheduleOptions {
  uint32_t cpu_prefetch_depth = 1;   // for Cpu-tier blocks
  uint32_t disk_prefetch_depth = 1;  // for Disk-tier blocks
  std::map<int32_t, uint64_t> activation_bytes;  // per compute device; devices absent here get 0 bytes
  std::string memory_algorithm = "greedy_by_size";
};

struct ScheduledBuffer {
  BufferRequest request;  // name, size, alignment, lifetime, pool
  schema::BufferKind kind = schema::BufferKind::ResidentWeights;
  int32_t block = -1;     // owning block, -1 for activations
  uint64_t offset = 0;    // from the memory plan
};

struct ScheduledCopy {
  uint32_t block = 0;
  schema::Tier source = schema::Tier::Cpu;
  uint32_t issue_step = 0;
  uint64_t bytes = 0;
  std::vector<uint32_t> wait_compute_steps;
  std::vector<uint32_t> wait_copy_blocks;
  uint8_t stream = 0;
};

struct BlockBuffers {
  int32_t home = -1;          // ResidentWeights or HostWeights
  int32_t staging = -1;
  int32_t disk_staging = -1;
  int32_t kv = -1;
};

struct ScheduledStep {
  uint32_t block = 0;
  std::vector<uint32_t> copies;  // indices into Schedule::copies, in execution order of their blocks
  std::vector<uint32_t> frees;   // buffer indices, ascending
};

struct Schedule {
  std::vector<ScheduledBuffer> buffers;
  std::vector<BlockBuffers> block_buffers;  // parallel to the input blocks
  std::vector<ScheduledCopy> copies;        // in issue order (= execution order of their blocks)
  std::vector<int32_t> copy_of_block;       // index into copies, -1 for resident blocks
  std::vector<ScheduledStep> steps;
  MemoryPlan memory;
  uint32_t cpu_prefetch_depth = 1;
  uint32_t disk_prefetch_depth = 1;
};

inline bool IsStreamed(schema::Tier tier) { return tier != schema::Tier::Gpu; }

// Builds steps, buffers and copies, runs the memory planner, and fills the copies' dependencies and the frees.
// kInvalidArgument for a zero prefetch depth or no blocks; errors of PlanMemory otherwise.
Result<Schedule> BuildSchedule(const std::vector<ScheduleBlock>& blocks, const ScheduleOptions& options);

// (Re)computes wait_compute_steps and wait_copy_blocks from the buffers' offsets. BuildSchedule calls it; exposed
// for tests and for callers that re-place buffers.
void ComputeCopyDependencies(Schedule* schedule);

}  // namespace bigplan
