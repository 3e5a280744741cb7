// The arena planner: assigns every buffer of a plan a byte offset in its pool, ahead of time.
//
// Input: buffers with a size, an alignment (256 unless stated), a lifetime [first_step, last_step] (inclusive,
// in steps of one forward pass) and a pool (device arena of one device, or the pinned host pool). Two buffers of
// the same pool whose lifetimes intersect must not share bytes; buffers whose lifetimes are disjoint may.
// Output: one offset per buffer and the size of every pool's arena (the highest end offset, rounded up to 256).
//
// Algorithms are pluggable by name through a registry (see RegisterMemoryAlgorithm). Built in:
//   "greedy_by_size"  TensorFlow Lite's arena planner. Buffers are taken in order of size, largest first (ties:
//                     earlier first_step first, then lower input index). Each is placed in the best-fitting gap:
//                     scanning the already-placed buffers whose lifetimes intersect its own, in offset order, the
//                     smallest gap between them that holds it (lowest offset among equal gaps); when no gap holds
//                     it, just above the highest of them. Offsets are rounded up to the buffer's alignment.
//   "linear"          No reuse: a bump allocator in input order (each buffer starts where the previous one of
//                     its pool ended, aligned). The upper bound every other algorithm should beat.
// Every plan the planner writes is checked afterwards by the independent checker in planner/overlap_check.h.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "schema/plan_generated.h"
#include "support/result.h"

namespace bigplan {

inline constexpr uint64_t kBufferAlignment = 256;

// A pool an arena is carved from: the device arena of `device` (-1 = CPU), or the pinned host pool (device -1).
struct PoolKey {
  schema::Pool pool = schema::Pool::DeviceArena;
  int32_t device = 0;
  friend bool operator<(const PoolKey& a, const PoolKey& b) {
    return a.pool != b.pool ? a.pool < b.pool : a.device < b.device;
  }
  friend bool operator==(const PoolKey& a, const PoolKey& b) { return a.pool == b.pool && a.device == b.device; }
};

// "cuda:0", "cpu" (a CPU device arena) or "pinned".
std::string PoolName(const PoolKey& key);

struct BufferRequest {
  std::string name;  // for messages only
  uint64_t size = 0;
  uint64_t alignment = kBufferAlignment;  // a power of two
  uint32_t first_step = 0;
  uint32_t last_step = 0;  // inclusive
  PoolKey pool;
};

struct ArenaSize {
  PoolKey pool;
  uint64_t size = 0;
};

struct MemoryPlan {
  std::string algorithm;
  std::vector<uint64_t> offsets;  // parallel to the input buffers
  std::vector<ArenaSize> arenas;  // one per pool that holds a buffer, sorted by PoolKey
  uint64_t ArenaSizeOf(const PoolKey& key) const;  // 0 when the pool has no arena
};

// An algorithm places the buffers of ONE pool: it returns one offset per buffer, in input order. It need not
// compute the arena size (PlanMemory does) and must not fail for valid input.
using MemoryAlgorithm = std::function<std::vector<uint64_t>(const std::vector<BufferRequest>& buffers)>;

// Adds (or replaces) an algorithm under `name`.
void RegisterMemoryAlgorithm(const std::string& name, MemoryAlgorithm algorithm);
// The registered names, sorted.
std::vector<std::string> MemoryAlgorithmNames();

// Splits the buffers by pool, runs the algorithm on each pool, and computes the arena sizes.
// kInvalidArgument for an unknown algorithm (naming the known ones), a buffer with last_step < first_step or an
// alignment that is not a power of two (naming the buffer); kInternal if an algorithm misbehaves (wrong count,
// misaligned offset).
Result<MemoryPlan> PlanMemory(const std::vector<BufferRequest>& buffers, const std::string& algorithm);

// The two built-in algorithms, callable directly (tests, benchmarks).
std::vector<uint64_t> GreedyBySize(const std::vector<BufferRequest>& buffers);
std::vector<uint64_t> LinearAllocate(const std::vector<BufferRequest>& buffers);

inline uint64_t RoundUpTo(uint64_t value, uint64_t alignment) { return (value + alignment - 1) / alignment * alignment; }

}  // namespace bigplan
