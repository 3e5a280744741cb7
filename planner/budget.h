// What the user asks for: memory budgets per device, the run shape and the execution dtype.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "formats/dtype.h"
#include "planner/model_desc.h"
#include "support/result.h"

namespace bigplan {

// Memory budgets, as Accelerate's `max_memory`.
//   gpus: CUDA ordinal -> bytes. Every byte bigplan allocates on the card counts against it (the device arena:
//         weights, staging, KV cache, activations, plus the documented workspace reserve, see planner/accounting.h).
//         The CUDA context itself is outside the budget, as with Accelerate's max_memory.
//   cpu:  pinned host memory for CPU-tier weights and disk staging (and, when no GPU is budgeted, everything the
//         CPU computes with). Absent: no host memory, so nothing can be streamed: not from the CPU tier, and not
//         from disk either, whose reads go through pinned staging. (Accelerate, whose disk offload needs no pinned
//         staging, sends what does not fit on the GPUs straight to disk; the `sequential` strategy makes that same
//         decision and the accounting then reports the cpu shortfall.)
//   disk: bytes of disk-tier weights (they are read from the checkpoint's shards in place, so this is a cap, not an
//         allocation). Absent: unlimited, as in Accelerate.
struct MemoryBudget {
  std::map<int, uint64_t> gpus;
  std::optional<uint64_t> cpu;
  std::optional<uint64_t> disk;

  // ("cuda:0", bytes), ..., ("cpu", bytes), ("disk", bytes) for the devices present, in that order.
  std::vector<std::pair<std::string, uint64_t>> Entries() const;
  // "cuda:0=10.00 GiB,cpu=30.00 GiB,disk=unlimited"
  std::string ToString() const;
  bool operator==(const MemoryBudget&) const = default;
};

// Parses "--max-memory" values: comma-separated DEVICE=SIZE, DEVICE one of "cuda:N", "N" (a bare ordinal, like
// Accelerate's integer keys), "cpu", "disk"; SIZE as support/units.h's ParseByteSize ("10GiB", "512MB", "123").
// Whitespace around pieces is ignored. kInvalidArgument naming the bad piece for an empty spec, a missing "=",
// an unknown device, a negative/overflowing ordinal, a bad size or a device given twice.
Result<MemoryBudget> ParseMaxMemory(std::string_view spec);
// The same from an Accelerate-style JSON object: {"0": "10GiB", "cuda:1": 1000, "cpu": "30GiB", "disk": ...}.
Result<MemoryBudget> MemoryBudgetFromJson(const nlohmann::json& max_memory);
// {"0": bytes, ..., "cpu": bytes, "disk": bytes} (integer byte counts; string keys).
nlohmann::json MemoryBudgetToJson(const MemoryBudget& budget);

// The shape every buffer is sized for: up to max_batch sequences of up to max_seq_len tokens (prompt + generated).
struct RunShape {
  uint32_t max_batch = 1;
  uint32_t max_seq_len = 2048;
  uint64_t tokens() const { return uint64_t{max_batch} * max_seq_len; }
  bool operator==(const RunShape&) const = default;
};
inline constexpr RunShape kDefaultRunShape{};

// kInvalidArgument naming the field for a zero batch or sequence length, or a max_seq_len above the model's
// max_position_embeddings.
Status ValidateRunShape(const RunShape& run, const ModelDescription& model);

// "--dtype": "bf16"|"fp16"|"fp32" (also "bfloat16", "float16", "half", "float32", "float", "BF16", "F16", "F32").
// kInvalidArgument naming the string otherwise.
Result<DType> ParseExecDType(std::string_view text);
// The default execution dtype: the checkpoint dtype, i.e. the floating dtype holding the most param bytes in the
// description (F32 if it has no floating params); an F64 checkpoint runs in F32, an F8 one in BF16.
DType DefaultExecDType(const ModelDescription& model);
// ParseExecDType(*flag) if given and non-empty, else DefaultExecDType(model).
Result<DType> ResolveExecDType(const std::optional<std::string>& flag, const ModelDescription& model);

}  // namespace bigplan
