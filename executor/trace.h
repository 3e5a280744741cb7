// A timeline of forward passes, written as a Chrome/Perfetto trace, and the accounting that turns one pass's
// timings into Stats and trace events (internal to executor/). Plain C++: no LibTorch, no CUDA.
#pragma once

#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "executor/executor.h"
#include "support/result.h"

namespace bigplan::executor_internal {

struct TraceEvent {
  std::string name;
  std::string track;  // "compute", "copy", "disk worker 0", ...
  double start_us = 0;
  double dur_us = 0;
  std::vector<std::pair<std::string, std::string>> args;
};

class TraceRecorder {
 public:
  void Add(TraceEvent event);
  size_t size() const;
  // {"traceEvents": [...]}: one "X" event per entry, thread-name metadata per track ("compute" first, then "copy",
  // then the others sorted), all in process "bigplan".
  std::string ToJson() const;
  Status Write(const std::string& path) const;

 private:
  mutable std::mutex mu_;
  std::vector<TraceEvent> events_;
};

// What one forward pass measured (the stream engine fills it; a CUDA-graph replay leaves all but wall_start empty).
struct ForwardTimings {
  std::chrono::steady_clock::time_point wall_start;  // what the times below are relative to
  std::vector<StepTiming> steps;
  std::vector<CopyTiming> copies;
  uint64_t cpu_tier_bytes = 0;
  uint64_t disk_tier_bytes = 0;
  uint64_t disk_h2d_bytes = 0;
  uint64_t disk_direct_blocks = 0;  // disk units read with direct I/O
  uint64_t disk_bounce_blocks = 0;  // disk units read and cast
  uint64_t disk_mmap_blocks = 0;    // disk units used from the mapping (CPU)
  uint64_t disk_direct_fallbacks = 0;
  uint64_t disk_read_bytes = 0;
  uint64_t units = 0;
  uint64_t host_compute_bytes = 0;  // weight rows the host multiplied instead of copying (host units)
};

// How a block is named in trace events (StepTiming::block and CopyTiming::block index a vector of these).
struct BlockLabel {
  std::string name;  // "model.layers.0"
  std::string kind;  // arch::BlockKindName
  std::string tier;  // TierName of its slowest tier
};

// Adds one forward pass of `batch` x `seq` tokens that took `ms` to `stats`: the totals grow, the last_* fields
// are replaced (last_steps/last_copies become t.steps/t.copies). With `trace`, adds one "compute" event per step
// and one event per copy ("copy" track; disk reads on "disk worker N", or "disk (inline)" for worker -1), at
// `base_us` (where t.wall_start lies on the trace's timeline) plus their start, each with its arguments (step,
// forward number, kind/tier/device/tokens for steps, source/bytes/read for copies). A block index outside
// `blocks` is named "block N".
void AccountForward(const ForwardTimings& t, int64_t batch, int64_t seq, double ms, double base_us,
                    const std::vector<BlockLabel>& blocks, Stats* stats, TraceRecorder* trace);

}  // namespace bigplan::executor_internal
