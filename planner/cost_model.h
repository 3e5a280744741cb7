// The cost model: predicted compute time per block, copy time per streamed block, and the time of a whole forward
// pass obtained by simulating the schedule.
//
// Compute time of a block, for a forward pass of T tokens (decode: T = max_batch, one new token per sequence, the
// KV cache at max_seq_len; prefill: T = max_batch x max_seq_len):
//
//   time = max(FLOPs / matmul rate, bytes touched / memory bandwidth) + kernels x launch overhead
//
//   FLOPs          = 2 x matmul_params x T                                      (every weight matrix, once per token)
//                  + 4 x attn_dim x max_batch x C                               (QK^T and AV, 2 FLOPs per MAC)
//                    with C = max_seq_len (decode: one query against the full cache) or
//                    max_seq_len x (max_seq_len + 1) / 2 (prefill: causal, summed over query positions)
//   bytes touched  = weight_bytes                                               (weights read once)
//                  + kv_bytes_per_token x max_batch x max_seq_len               (decode: the cache is read;
//                                                                                prefill: it is written)
//                  + act_bytes_per_token x T                                    (activations read and written)
//   GPU: matmul rate = matmul_tflops, bandwidth = device_mem_gbps (read + write), launch overhead
//        kGpuLaunchMicros = 5 us per kernel (eager LibTorch: dispatch + launch, measured range 3-8 us);
//   CPU: matmul rate = cpu_gflops, bandwidth = cpu_mem_gbps, kCpuOpMicros = 2 us per op.
//   Kernels per block (eager LibTorch, no fusion beyond SDPA): decoder layer kDecoderKernels = 24 (2 norms x 5,
//   q/k/v/o projections, rotary 4, SDPA 1, MLP 4, residual adds 2, cache writes 2 ...), norm 5, embedding 1,
//   lm_head 2 (matmul + cast), position embedding 2.
//
// Copy time of a streamed block of B bytes: B / h2d_gbps (Cpu tier), B / disk_gbps + B / h2d_gbps (Disk tier: the
// disk read into pinned staging and the H2D copy are counted back to back on the copy stream, conservatively).
//
// Forward simulation (SimulateForward): one compute stream per device plus one copy stream per destination device,
// replaying the schedule exactly as the executor does:
//   * steps run in order; step i's compute starts when step i-1's compute ended (activations flow block to block,
//     across devices too) and, if block i is streamed, when its copy ended;
//   * a copy starts when its copy stream is free (copies run in issue order), every step in wait_compute_steps
//     ended, and every block in wait_copy_blocks has finished its copy; the host issues asynchronously, so the issue
//     step itself adds no delay (the waits carry the memory-reuse constraints).
//
// Prefetch depth (ChoosePrefetchDepths in planner/planner.h uses these): a copy is "held" when its copy stream was
// idle before it because of a dependency (not because nothing was issued) AND the compute of its block then waited
// for it. The planner picks, per tier, the smallest depth >= 1 at which the decode forward has no held copy of that
// tier; depth grows only while the schedule's memory still fits the budgets (staging memory caps it), and stops at
// the number of streamed blocks of that tier. Idle copy time that does not delay compute (compute-bound stretches)
// cannot be removed by deeper prefetching and is not counted.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "formats/dtype.h"
#include "planner/device_profile.h"
#include "planner/model_desc.h"
#include "planner/schedule.h"

namespace bigplan {

inline constexpr double kGpuLaunchMicros = 5.0;
inline constexpr double kCpuOpMicros = 2.0;
inline constexpr uint32_t kDecoderKernels = 24;
inline constexpr uint32_t kNormKernels = 5;
inline constexpr uint32_t kEmbeddingKernels = 1;
inline constexpr uint32_t kPositionEmbeddingKernels = 2;
inline constexpr uint32_t kLmHeadKernels = 2;

// What one block computes, independent of placement.
struct BlockWork {
  uint64_t weight_bytes = 0;         // weights read per forward at the execution dtype
  double matmul_params = 0;          // weight elements used in matmuls (embedding lookups are not matmuls)
  uint64_t attn_dim = 0;             // num_heads x head_dim for decoder layers, else 0
  uint64_t kv_bytes_per_token = 0;   // K + V bytes per token of context per sequence (decoder layers)
  uint64_t act_bytes_per_token = 0;  // activation bytes read + written per token
  uint32_t kernels = 1;
};

// The work of block `index` of `model` at `exec_dtype` (weight_bytes = the block's weight-buffer bytes, as
// planner/accounting.h's BlockWeightBytes). Activation traffic per token, e = DTypeBytes(exec):
//   decoder layer: (8 x hidden + 2 x (num_heads + 2 x num_kv_heads) x head_dim + 3 x intermediate) x e
//   norm: 2 x hidden x e;  embedding: hidden x e + 8;  lm_head: hidden x e + vocab x 4.
BlockWork DescribeBlockWork(const ModelDescription& model, size_t index, DType exec_dtype);

struct RunSize {
  uint32_t max_batch = 1;
  uint32_t max_seq_len = 1;
};

struct BlockCost {
  double decode_us = 0;
  double prefill_us = 0;
};

// Compute time of a block on `device` (-1 = CPU) for the run size.
BlockCost EstimateBlockCost(const BlockWork& work, const RunSize& run, int32_t device, const DeviceProfile& profile);

// Copy time of `bytes` of a streamed block from `source` (Cpu or Disk) to `device`.
double CopyMicros(uint64_t bytes, schema::Tier source, const DeviceProfile& profile);

struct ForwardPrediction {
  double total_us = 0;            // end of the last step's compute
  double compute_us = 0;          // sum of compute times
  double copy_us = 0;             // sum of copy times
  double compute_stall_us = 0;    // time compute streams waited for copies
  std::vector<double> step_start, step_end;  // per step
  std::vector<double> copy_start, copy_end;  // per copy (Schedule::copies order)
  uint32_t held_cpu_copies = 0;   // held copies (see the header comment) per tier
  uint32_t held_disk_copies = 0;
};

// Replays `schedule` with the given per-step compute times and per-copy copy times. `devices` = each block's compute
// device (parallel to the steps), to pick the copy stream of each copy.
ForwardPrediction SimulateForward(const Schedule& schedule, const std::vector<double>& compute_us,
                                  const std::vector<double>& copy_us, const std::vector<int32_t>& devices);

// The lower bound for the streamed part of a forward: the largest, over destination devices, of the summed copy
// times of the copies to that device.
double CopyFloorMicros(const Schedule& schedule, const std::vector<double>& copy_us,
                       const std::vector<int32_t>& devices);

}  // namespace bigplan
