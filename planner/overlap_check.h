// An independent proof that a memory plan is safe, run on every plan before it is written.
//
// It shares no code with the arena planner (planner/memory_plan.h): it takes placed buffers and arena sizes and
// checks, pair by pair, that
//   * every buffer of a pool has an arena for that pool and lies inside it ([offset, offset + size) within
//     [0, arena size), no 64-bit overflow);
//   * every offset is a multiple of the required alignment (256);
//   * every lifetime is well formed (first_step <= last_step);
//   * no two buffers of the same pool (same pool kind and, for device arenas, same device) whose lifetimes
//     [first_step, last_step] intersect share a byte. Zero-size buffers occupy no bytes.
// The pair check is a sweep: buffers of a pool are sorted by offset, and each is compared with the following
// ones while they start below its end; worst case O(n^2), typical O(n log n).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "schema/plan_generated.h"
#include "support/result.h"

namespace bigplan {

struct CheckedBuffer {
  std::string name;
  schema::Pool pool = schema::Pool::DeviceArena;
  int32_t device = 0;  // ignored for PinnedHost
  uint64_t offset = 0;
  uint64_t size = 0;
  uint32_t first_step = 0;
  uint32_t last_step = 0;
};

struct CheckedArena {
  schema::Pool pool = schema::Pool::DeviceArena;
  int32_t device = 0;  // ignored for PinnedHost
  uint64_t size = 0;
};

// kInternal naming the offending buffer(s) on the first violation found (a plan that fails this is a planner
// bug, never a user error).
Status CheckNoOverlaps(const std::vector<CheckedBuffer>& buffers, const std::vector<CheckedArena>& arenas,
                       uint64_t alignment = 256);

// Runs CheckNoOverlaps on a plan's buffers and arenas. Also checks that each arena pool appears once.
Status CheckPlanMemory(const schema::Plan& plan);

}  // namespace bigplan
