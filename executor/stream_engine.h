// The stream engine (plan version 2): moves every streamed weight unit into its device's ring, overlapped with
// compute, exactly in the order and with the dependencies the plan's streams give (internal to executor/).
//
// GPU streams. Each device that streams has a copy stream and a copy thread. Per forward pass the copy thread walks
// the device's units in order; for each it waits (on the host) until the unit's wait_unit has been released in this
// pass (a later index names the previous pass, which finished), makes the copy stream wait on that release event,
// and issues the H2D copy into the unit's ring bytes (from the pinned host pool for Cpu units, from the pinned disk
// ring slot for Disk units once read), then records the unit's ready event and marks it issued.
// Disk units are read by worker threads, in step order across devices: a read waits until the H2D copy of its slot's
// previous occupant (disk_wait_unit) is done (cudaEventSynchronize), then preads the 4096-aligned superset of the
// unit's file range into the slot with O_DIRECT (where the filesystem allows; else a plain pread and DONTNEED), or
// reads and casts it when the execution dtype differs.
// The calling (compute) thread: BeginStep makes the compute stream wait for the block's whole units; a kernel's
// AcquireChunk waits likewise for one chunk; ReleaseChunk and EndStep record release events on the compute stream
// and wake the copy thread. A unit is only waited for after its copy was issued (the host blocks until then), so
// every event waited on was recorded first. The planner proved (CheckDeviceStream) that this order never needs a
// release that comes after the acquire waiting for it; should a plan break that, the wait is bounded only by the
// forward's end: EndForward releases every unit not released and the copy thread finishes.
// CPU streams (CPU mode, or blocks computed on the CPU): no threads. A Cpu-tier unit is used where it rests; a
// Disk-tier unit in place from the mapped shard when its dtype and alignment allow, else cast into its ring bytes
// when acquired.
// Errors (a failed read or copy) are kept and returned by the next Begin/Acquire/End call; EndForward always waits
// for every thread and stream of the pass, so the next pass starts clean.
#pragma once

#include <cuda_runtime.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "executor/cuda_handles.h"
#include "executor/disk_reads.h"
#include "executor/executor.h"
#include "executor/model_state.h"
#include "executor/trace.h"
#include "executor/worker_pool.h"
#include "support/result.h"

namespace bigplan::executor_internal {

struct StreamEngineOptions {
  int disk_workers = 0;        // 0: automatic (4 when there are disk units)
  bool timing = true;          // per-step and per-unit timing events
  bool disk_direct_io = true;  // ExecutorOptions::disk_direct_io
};

class StreamEngine {
 public:
  static Result<std::unique_ptr<StreamEngine>> Create(ModelState* state, const StreamEngineOptions& options);
  ~StreamEngine();
  StreamEngine(const StreamEngine&) = delete;
  StreamEngine& operator=(const StreamEngine&) = delete;

  // The stream a device's blocks compute on (nullptr for the CPU or an unknown device).
  cudaStream_t compute_stream(int device) const;
  // ModelInfo::disk_read_mode: "o_direct", "pread+dontneed", "mmap" or "".
  std::string disk_read_mode() const;

  // One forward pass, on the calling thread: BeginForward; per step: BeginStep, (kernels: AcquireChunk /
  // ReleaseChunk), EndStep; then EndForward (also after a failure).
  // `host_compute`: this pass computes the plan's host units on the host (a decode forward of at most
  // Plan.host_max_tokens tokens): the copy thread skips them without waiting, and acquiring one waits for nothing.
  // `hold_chunks` (continuous batching, where several row groups run each block's kernels one after another): a row
  // chunk acquired again in its step is not waited for again, and chunks are released when their block's step ends
  // instead of after each use. Only for streams whose chunks_holdable holds (else kInternal).
  Status BeginForward(bool host_compute = false, bool hold_chunks = false);
  // Whether the current pass computes the host units on the host.
  bool host_pass() const;
  // The engine's clock for this pass (microseconds since BeginForward), and a host product's timing for the trace
  // (source "host"), returned by EndForward among the copies. Called by the compute thread.
  double NowUs() const;
  void RecordHostProduct(uint32_t block, const std::string& what, uint64_t bytes, double start_us, double end_us);
  Status BeginStep(uint32_t step);
  // Where a unit's bytes are for the current step (GPU: its ring bytes; CPU: in place, or its ring bytes after a
  // cast). For a whole unit of the current block, valid after BeginStep; for a chunk, AcquireChunk returns it.
  Result<const uint8_t*> UnitData(int32_t stream, uint32_t unit);
  Result<const uint8_t*> AcquireChunk(int32_t stream, uint32_t unit);
  Status ReleaseChunk(int32_t stream, uint32_t unit);
  Status EndStep(uint32_t step);
  Status EndForward(ForwardTimings* timings);

  // Inline passes: decode steps of streamed plans captured in CUDA graphs (the executor's GraphDecoder warms up and
  // captures a step as inline passes, then replays the graph). Only where CanInline(): every stream is a GPU's,
  // every unit comes from the pinned pool (Cpu tier) and none is a host unit. Between BeginInline(stream) and
  // EndInline() the calling thread issues the copies itself, in unit order, exactly as the copy thread would: an
  // Acquire issues every unit up to the acquired one (each after its wait_unit's release in this pass, an event
  // recorded on `stream`; a wait_unit of the previous pass needs no wait: the previous pass ended before `stream`'s
  // work began), and then makes `stream` wait for its copy; releases are recorded on `stream`. The copy streams join
  // `stream`'s work at BeginInline and `stream` waits for them at EndInline, so a capture on `stream` takes the
  // copies, their waits and the kernels' waits as the graph's edges. No copy thread runs, no timing is recorded,
  // and no BeginForward / EndForward is needed (an inline pass is not a forward of its own).
  bool CanInline() const;
  Status BeginInline(cudaStream_t stream);
  Status EndInline();
  // Before a replayed graph that copies units on `stream`'s device: ends the copy threads' run-ahead copies (and
  // forgets them: the graph's copies reuse their ring bytes) and makes `stream` wait for every copy stream.
  Status Quiesce(cudaStream_t stream);

 private:
  struct Stream;
  StreamEngine(ModelState* state, const StreamEngineOptions& options);
  Status Init();
  void CopyLoop(Stream* s);
  // Copy thread: after issuing pass `gen`, copies the next pass's leading units early (see the .cc).
  void RunAhead(Stream* s, uint64_t gen, bool host_pass);
  // Enqueues one unit's H2D copy on its stream's copy stream (after its wait_unit's release) with its events.
  Status IssueCopy(Stream* s, uint32_t u);
  // Inline passes: issues s's units from the next unissued one through `upto`.
  Status IssueInline(Stream* s, uint32_t upto);
  // Ends the copy threads' run-ahead (bumping the pass) and waits until none runs.
  void StopRunAhead();
  // Makes `stream` wait for what every GPU stream's copy stream holds (its join event); every stream is joined even
  // after a failure, and the first failure is returned.
  Status JoinCopies(cudaStream_t stream);
  void ReadLoop(int worker);
  Status ReadUnit(int worker, Stream* s, uint32_t u);
  Status Acquire(Stream* s, uint32_t u);
  Status Release(Stream* s, uint32_t u);     // deferred to the step's end for chunks when holding them
  Status ReleaseNow(Stream* s, uint32_t u);
  Status PrepareOnCpu(Stream* s, uint32_t u);
  double WallUs() const;
  void Fail(const Status& status);  // keeps the first error, aborts the pass

  ModelState* state_;
  StreamEngineOptions options_;
  std::vector<std::unique_ptr<Stream>> streams_;
  struct Device {
    int device = -1;
    CudaStream compute;
    CudaEvent forward_start;
    double start_offset_us = 0;
  };
  std::vector<Device> devices_;
  std::vector<CudaEvent> step_start_, step_end_;  // empty owners for CPU steps or without timing
  std::vector<double> step_wall_start_, step_wall_end_;
  std::vector<std::unique_ptr<ShardReader>> readers_;  // by shard index, for disk units
  // Disk reads of a pass, in step order: (stream, unit).
  std::vector<std::pair<Stream*, uint32_t>> read_jobs_;
  // Helpers for the parallel pieces of large direct reads (the read workers run one piece each themselves).
  std::unique_ptr<WorkerPool> read_pieces_;

  // Shared with the copy and read threads.
  mutable std::mutex mu_;
  std::condition_variable cv_;
  uint64_t gen_ = 0;        // the current pass
  uint64_t forward_gen_ = 0;  // the latest pass BeginForward began (the copy threads' cue; inline passes are not)
  int ahead_running_ = 0;     // copy threads in RunAhead
  cudaStream_t inline_ = nullptr;  // the stream of the current inline pass (compute thread only)
  // An inline pass was captured: its units' ready and release events were recorded inside a graph capture, where
  // they cannot be waited for outside it; the next forward records them again first (compute thread only).
  bool events_captured_ = false;
  uint64_t host_pass_ = 0;  // the latest pass that computes the host units on the host
  bool hold_chunks_ = false;  // this pass (compute thread only)
  bool abort_ = false;      // the current pass failed: threads stop waiting
  bool stop_ = false;
  size_t next_read_ = 0;    // next job of read_jobs_
  int readers_busy_ = 0;
  Status error_;
  std::vector<std::thread> threads_;
  std::chrono::steady_clock::time_point wall_start_;
  uint64_t cpu_bytes_ = 0, disk_bytes_ = 0, disk_h2d_bytes_ = 0, disk_read_bytes_ = 0, host_bytes_ = 0;
  std::vector<CopyTiming> host_products_;  // this pass's (compute thread only)
  uint64_t direct_units_ = 0, bounce_units_ = 0, mmap_units_ = 0, units_ = 0;
};

}  // namespace bigplan::executor_internal
