// Which of a sparse layer's chosen experts the host computes in a decode forward, and how much of each (internal to
// executor/; plain C++, no CUDA): executor/expert_engine.h calls it after every router.
#pragma once

#include <cstdint>
#include <span>

namespace bigplan::executor_internal {

// A chosen expert the host may compute (resting in pinned memory, not already copied): its bytes (gate, up and down
// together) and its intermediate size (gate's rows).
struct HostableExpert {
  uint64_t bytes = 0;
  int64_t inter = 0;
};

// Gives the host `share` (0..1) of the experts' bytes, walking them from the last: an expert the share still covers
// (to within half of `split_rows` rows) goes to the host whole; where the share ends inside an expert of at least
// `split_min_bytes` bytes (and split_rows > 0), the host takes the first rows of its intermediate, a multiple of
// split_rows, leaving the GPU at least split_rows (none when that rounds to fewer than split_rows); where it ends
// inside a smaller expert, that expert goes to the host whole if the share covers at least half of it (so n equal
// experts give round(share x n) to the host). rows[i] receives expert i's host rows: 0 (none), its inter (all), or
// a split's count. Returns the index of the split expert, or -1. rows.size() must equal experts.size().
int ShareHostRows(std::span<const HostableExpert> experts, double share, int64_t split_rows, uint64_t split_min_bytes,
                  std::span<int64_t> rows);

// The adaptive share (ExecutorOptions::adapt_expert_share): the share after a decode forward in whose host-computing
// layers the host's jobs took `host_us` and the copies `copy_us` in all. The host's and the copies' rates follow
// from them (share / host_us, (1 - share) / copy_us), and the share at which both would take equally long is
// share* = (share / host_us) / (share / host_us + (1 - share) / copy_us); the result moves half-way there
// (kShareGain), clamped to [kShareMin, kShareMax]. Unchanged without a share or times.
inline constexpr double kShareGain = 0.5, kShareMin = 0.02, kShareMax = 0.95;
double AdaptShare(double share, double host_us, double copy_us);

}  // namespace bigplan::executor_internal
