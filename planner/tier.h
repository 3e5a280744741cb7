// Where a weight rests between forward passes (the planner's mirror of schema::Tier; the values are the same,
// checked at compile time).
#pragma once

#include <cstdint>

#include "schema/plan_generated.h"

namespace bigplan {

enum class Tier : uint8_t {
  kGpu = 0,   // resident in the compute device's arena (host arena when device == -1)
  kCpu = 1,   // pinned host pool, streamed to the compute device's ring before use
  kDisk = 2,  // the checkpoint shard -> pinned disk ring -> the compute device's ring
};
static_assert(static_cast<uint8_t>(Tier::kGpu) == static_cast<uint8_t>(schema::Tier::Gpu));
static_assert(static_cast<uint8_t>(Tier::kCpu) == static_cast<uint8_t>(schema::Tier::Cpu));
static_assert(static_cast<uint8_t>(Tier::kDisk) == static_cast<uint8_t>(schema::Tier::Disk));
static_assert(static_cast<uint8_t>(schema::Tier::MAX) == static_cast<uint8_t>(Tier::kDisk));

inline schema::Tier ToSchemaTier(Tier t) { return static_cast<schema::Tier>(static_cast<uint8_t>(t)); }
inline Tier FromSchemaTier(schema::Tier t) { return static_cast<Tier>(static_cast<uint8_t>(t)); }

// "gpu", "cpu", "disk".
inline const char* TierName(Tier tier) {
  switch (tier) {
    case Tier::kGpu: return "gpu";
    case Tier::kCpu: return "cpu";
    case Tier::kDisk: return "disk";
  }
  return "invalid";
}

}  // namespace bigplan
