// The copy engine: replays each step's copies, overlapped with compute (internal to executor/).
//
// GPU blocks:
//   * Cpu tier: the calling (main) thread issues cudaMemcpyAsync pinned home -> device staging on the plan's copy
//     stream, after cudaStreamWaitEvent on the compute-done events of the copy's wait_compute_steps, then records
//     the block's ready event.
//   * Disk tier: a worker thread waits (cudaEventSynchronize) for the H2D copies of wait_copy_blocks, reads the
//     block's tensors into its pinned disk staging, then issues the H2D copies on its own stream after the
//     compute-done waits, records the ready event and marks the block issued. Each worker has its own stream per
//     device, so a worker's copy is never queued behind another worker's copy that the plan issued later.
//     How a block is read (DiskPath, fixed at load): kDirect, pread of the aligned ranges PlanBlockReads chose
//     (disk_reads.h) through the shard's O_DIRECT descriptor straight into disk staging, split across the chunk
//     pool, then one H2D copy per tensor (coalesced) from where it landed; kBounce (a weight needs a dtype cast),
//     pread through a per-thread aligned bounce buffer and cast into disk staging at offset_in_block, then one H2D
//     copy; kMapped (disk_direct_io off) / kMappedFallback (the direct reads do not fit), memcpy or cast from the
//     mapped shard, then one H2D copy.
//   * Before a streamed block's compute, the main thread waits until its copy has been issued this forward pass
//     (a per-block generation counter), then makes the compute stream wait on the ready event.
// Event semantics: compute-done and ready events are double-buffered by forward-pass parity. A copy issued at step
// i that waits on step j uses step j's event of this pass when j < i and of the previous pass when j >= i (the
// earlier user of the buffer ran in the previous pass). Waiting on an event never recorded is a no-op, so the
// first pass needs no special case. All streams and events are created here, at load.
// CPU blocks: Cpu tier and disk weights whose dtype matches are used in place (from the mapping); other disk
// weights are read through the bounce buffer (kBounce; from the mapping with disk_direct_io off) and cast into
// the staging buffer by a worker (started at the plan's copy step), and the main thread waits for it before the
// block's compute. Compute is synchronous, so compute-done waits are always met.
#pragma once

#include <cuda_runtime.h>

#include <array>
#include <atomic>
#include <functional>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "executor/disk_reads.h"
#include "executor/executor.h"
#include "executor/model_state.h"
#include "support/result.h"

namespace bigplan::executor_internal {

struct ForwardTimings {
  std::chrono::steady_clock::time_point wall_start;  // what the times below are relative to
  std::vector<StepTiming> steps;
  std::vector<CopyTiming> copies;
  uint64_t cpu_tier_bytes = 0;
  uint64_t disk_tier_bytes = 0;
  uint64_t disk_h2d_bytes = 0;
  uint64_t disk_direct_blocks = 0;
  uint64_t disk_bounce_blocks = 0;
  uint64_t disk_mmap_blocks = 0;
  uint64_t disk_direct_fallbacks = 0;
  uint64_t disk_read_bytes = 0;
};

// Helper threads that a disk job's copies are split across (chunks of a few MiB): one block's read from the
// mapped shard (a page-faulting memcpy or a dtype cast) runs on several cores. The submitting thread works too.
class ChunkPool {
 public:
  explicit ChunkPool(int threads);
  ~ChunkPool();
  ChunkPool(const ChunkPool&) = delete;
  ChunkPool& operator=(const ChunkPool&) = delete;
  // Runs every task (in any order, on any thread) and returns the first error.
  Status Run(const std::vector<std::function<Status()>>& tasks);

 private:
  struct Batch {
    const std::vector<std::function<Status()>>* tasks = nullptr;
    size_t n = 0;
    std::atomic<size_t> next{0};
    std::mutex mu;
    std::condition_variable cv;
    size_t done = 0;
    Status error;
  };
  static void Work(Batch& batch);
  void Loop();

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Batch>> queue_;
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

struct CopyEngineOptions {
  int disk_workers = 0;        // 0: automatic
  bool timing = true;          // record per-step and per-copy timing events
  bool disk_direct_io = true;  // ExecutorOptions::disk_direct_io
};

// How a disk-tier block's weights are read (see above).
enum class DiskPath : uint8_t { kMapped, kMappedFallback, kDirect, kBounce };
const char* DiskPathName(DiskPath path);  // "mmap", "mmap_fallback", "direct", "bounce"

class CopyEngine {
 public:
  static Result<std::unique_ptr<CopyEngine>> Create(ModelState* state, const CopyEngineOptions& options);
  ~CopyEngine();
  CopyEngine(const CopyEngine&) = delete;
  CopyEngine& operator=(const CopyEngine&) = delete;

  // The stream the block computes on for a CUDA device (nullptr for the CPU or an unknown device).
  cudaStream_t compute_stream(int device) const;
  int disk_workers() const { return static_cast<int>(workers_.size()); }
  // ModelInfo::disk_read_mode and ModelInfo::disk_direct_fallback_blocks.
  std::string disk_read_mode() const;
  int direct_fallback_blocks() const;

  // One forward pass, on the main thread: BeginForward; per step: IssueCopies, WaitReady, StepBegin, (compute),
  // StepEnd; then EndForward once the results are on the host, or after a failure (it waits for every job and
  // stream of the pass either way).
  Status BeginForward();
  Status IssueCopies(uint32_t step);
  Status WaitReady(uint32_t step);
  Status StepBegin(uint32_t step);
  Status StepEnd(uint32_t step);
  Status EndForward(ForwardTimings* timings);

 private:
  struct DeviceStreams {
    int device = -1;
    cudaStream_t compute = nullptr;
    std::vector<cudaStream_t> copy;
    cudaEvent_t forward_start = nullptr;
    double start_offset_us = 0;  // wall time of forward_start's record, relative to the pass's wall start
  };
  struct Job {
    const CopyRuntime* copy = nullptr;
    uint64_t gen = 0;
    std::vector<cudaEvent_t> compute_waits;
    std::vector<std::pair<uint32_t, uint64_t>> copy_waits;  // (block, generation)
    bool cpu_cast = false;
  };
  struct DiskRead {
    uint32_t step = 0;
    uint32_t block = 0;
    int worker = 0;
    uint64_t bytes = 0;
    double start_us = 0;
    double end_us = 0;
    DiskPath path = DiskPath::kMapped;
  };

  CopyEngine(ModelState* state, const CopyEngineOptions& options) : state_(state), options_(options) {}
  Status Init();
  DeviceStreams* Streams(int device);
  const DeviceStreams* Streams(int device) const;
  double WallUs() const;
  void WorkerLoop(int worker);
  Status RunJob(int worker, const Job& job);
  Status InitDiskReads();
  Status CastBlockOnCpu(const BlockRuntime& block);
  // Copies (casting as needed) the selected weights of `block` to `base` + offset_in_block, from the mapping or
  // (kBounce) through the shard readers' bounce buffers, split into chunks across the chunk pool.
  Status ReadWeights(const BlockRuntime& block, uint8_t* base, bool only_cast_weights);
  // kDirect: the block's planned reads into its disk staging, across the chunk pool.
  Status ReadDirect(const BlockRuntime& block);
  Status RunTasks(const std::vector<std::function<Status()>>& tasks);
  // Bytes a read of the block moves from its shards.
  uint64_t ReadBytes(const BlockRuntime& block) const;
  Status WaitIssued(uint32_t block, uint64_t gen);
  void MarkIssued(uint32_t block, uint64_t gen);
  Status Record(cudaEvent_t event, cudaStream_t stream, const char* what);

  ModelState* state_;
  CopyEngineOptions options_;
  bool gpu_ = false;
  std::vector<DeviceStreams> devices_;
  // By step / block / copy index; null where not needed.
  std::vector<std::array<cudaEvent_t, 2>> compute_done_;
  std::vector<std::array<cudaEvent_t, 2>> ready_;
  std::vector<cudaEvent_t> step_start_, step_end_;
  std::vector<cudaEvent_t> copy_start_, copy_end_;
  std::vector<std::vector<cudaStream_t>> worker_streams_;  // [worker][device slot]
  // Disk reads: one reader per shard a read uses (by plan shard index; null for others), the path and (kDirect)
  // the read plan of each block.
  std::vector<std::unique_ptr<ShardReader>> readers_;
  std::vector<DiskPath> disk_path_;
  std::vector<BlockReadPlan> read_plans_;

  // Forward state (main thread).
  uint64_t gen_ = 0;
  std::chrono::steady_clock::time_point wall_start_;
  std::vector<uint64_t> enqueued_gen_;
  std::vector<double> step_wall_start_, step_wall_end_;
  std::vector<uint32_t> copies_issued_;  // copy indices issued this pass
  uint64_t cpu_bytes_ = 0, disk_bytes_ = 0, disk_h2d_bytes_ = 0;

  // Shared with workers.
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job> queue_;
  int pending_ = 0;  // jobs queued or running
  bool stop_ = false;
  std::vector<uint64_t> issued_gen_;
  std::vector<DiskRead> disk_reads_;
  Status worker_error_;
  std::vector<std::thread> workers_;
  std::unique_ptr<ChunkPool> chunks_;
};

}  // namespace bigplan::executor_internal
