// The schedule (plan version 2): the steps of one forward pass, every buffer, and each device's stream of weight
// units (planner/streaming.h).
//
// Steps. One step per block, in execution order: step i runs block i. Streamed weights travel as stream units
// (DeviceStreamPlan), not as per-step copies.
//
// Buffers (kind, pool; every buffer lives for the whole forward pass, [0, n-1]):
//   ResidentWeights  a block's Gpu-tier weights, in its compute device's arena (the CPU arena for CPU compute).
//   HostWeights      a block's Cpu-tier weights, in the pinned pool.
//   KvCache          a decoder layer's K and V (kv_bytes > 0), in its device's arena.
//   Activations      one per compute device that runs a block.
//   Staging          one ring per device that streams (ring_bytes), in its arena.
//   DiskStaging      one disk ring per device that streams disk units, in the pinned pool.
// Buffer order: per block in execution order (home, host, kv), then activations by device, then each device's
// ring and disk ring. The memory plan (algorithm by name) gives every buffer its offset; the overlap checker
// proves it.
//
// Frees: the last step lists every buffer (they all live to the end of the pass).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "planner/memory_plan.h"
#include "planner/streaming.h"
#include "schema/plan_generated.h"
#include "support/result.h"

namespace bigplan {

struct ScheduleBlock {
  std::string name;
  int32_t device = 0;          // compute device, -1 = CPU
  uint64_t resident_bytes = 0; // its Gpu-tier weights' buffer (aligned), 0 if none
  uint64_t host_bytes = 0;     // its Cpu-tier weights' buffer (aligned), 0 if none
  uint64_t kv_bytes = 0;       // KV cache for the run shape; 0 for blocks without one
};

struct ScheduleOptions {
  std::map<int32_t, uint64_t> activation_bytes;  // per compute device; devices absent here get 0 bytes
  std::string memory_algorithm = "greedy_by_size";
  // Routed experts' rings per GPU: {device ring bytes, pinned disk ring bytes (0: none)}.
  std::map<int32_t, std::pair<uint64_t, uint64_t>> expert_rings;
};

struct ScheduledBuffer {
  BufferRequest request;  // name, size, alignment, lifetime, pool
  schema::BufferKind kind = schema::BufferKind::ResidentWeights;
  int32_t block = -1;     // owning block, -1 for activations and rings
  uint64_t offset = 0;    // from the memory plan
};

struct BlockBuffers {
  int32_t home = -1;  // ResidentWeights
  int32_t host = -1;  // HostWeights
  int32_t kv = -1;
};

struct ScheduledStep {
  uint32_t block = 0;
  std::vector<uint32_t> frees;  // buffer indices, ascending
};

struct Schedule {
  std::vector<ScheduledBuffer> buffers;
  std::vector<BlockBuffers> block_buffers;  // parallel to the input blocks
  std::vector<ScheduledStep> steps;
  std::vector<DeviceStreamPlan> streams;    // by device, ascending; each with units
  std::map<int32_t, int32_t> ring_buffer;       // device -> Staging buffer
  std::map<int32_t, int32_t> disk_ring_buffer;  // device -> DiskStaging buffer
  std::map<int32_t, int32_t> expert_ring_buffer;       // device -> ExpertStaging buffer
  std::map<int32_t, int32_t> expert_disk_ring_buffer;  // device -> ExpertDiskStaging buffer
  MemoryPlan memory;
};

// Builds steps and buffers (rings sized by `streams`), runs the memory planner and fills the frees.
// kInvalidArgument for no blocks; errors of PlanMemory otherwise.
Result<Schedule> BuildSchedule(const std::vector<ScheduleBlock>& blocks, std::vector<DeviceStreamPlan> streams,
                               const ScheduleOptions& options);

}  // namespace bigplan
