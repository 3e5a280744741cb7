// What the loader builds from a plan and a checkpoint, and the copy engine and executor run from
// (internal to executor/). Plain data: no LibTorch, no CUDA types.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "executor/arena.h"
#include "executor/executor.h"
#include "formats/mapped_file.h"
#include "schema/plan_io.h"
#include "support/result.h"

namespace bigplan::executor_internal {

// How a block's weights reach its compute.
enum class Feed : uint8_t {
  kResident,     // Gpu tier: in the block's home buffer in its device arena (host arena on the CPU)
  kHostInPlace,  // Cpu tier computed on the CPU: used where they rest, in the pinned pool
  kCopyH2D,      // Cpu tier computed on a GPU: pinned home -> device staging on a copy stream
  kDiskH2D,      // Disk tier computed on a GPU: shard -> pinned disk staging (worker) -> device staging
  kDiskOnCpu,    // Disk tier computed on the CPU: from the mapping in place, or cast into staging (worker)
};

const char* FeedName(Feed feed);

struct WeightRuntime {
  std::string name;               // checkpoint tensor name
  const uint8_t* source = nullptr;  // the tensor's bytes in the mapped shard
  uint64_t source_bytes = 0;
  schema::DType source_dtype = schema::DType::F32;
  schema::DType dtype = schema::DType::F32;  // execution dtype
  uint64_t bytes = 0;                        // at the execution dtype
  uint64_t offset_in_block = 0;
  std::vector<int64_t> shape;
  int64_t numel = 0;
  // kDiskOnCpu only: true when the weight is cast into the staging buffer (dtype differs, or the mapping is not
  // aligned for the dtype); false when it is used in place from the mapping.
  bool cast_on_cpu = false;
  const MappedFile* shard = nullptr;
  uint32_t shard_index = 0;    // the plan's shard index (ModelState::shards)
  uint64_t source_offset = 0;  // in the shard file
};

struct BlockRuntime {
  uint32_t index = 0;
  std::string name;
  std::string kind;
  std::string prefix;
  int32_t layer = -1;
  schema::Tier tier = schema::Tier::Gpu;
  int32_t device = -1;  // where it runs: CUDA ordinal, or -1 for the CPU (always -1 in CPU mode)
  Feed feed = Feed::kResident;
  uint64_t weight_bytes = 0;
  std::vector<WeightRuntime> weights;
  uint8_t* home = nullptr;          // kResident, kHostInPlace, kCopyH2D
  uint8_t* staging = nullptr;       // kCopyH2D, kDiskH2D, kDiskOnCpu (cast target)
  uint8_t* disk_staging = nullptr;  // kDiskH2D
  uint64_t disk_staging_bytes = 0;  // kDiskH2D: the disk staging buffer's size in the plan (>= weight_bytes)
  // Where the weight views point (offset_in_block added per weight): home, staging, or (kDiskOnCpu) staging for
  // cast weights, the mapping for the others.
  uint8_t* weights_base = nullptr;
  bool needs_cpu_cast = false;  // kDiskOnCpu with at least one cast weight
  // kDiskOnCpu cast into the pinned disk staging (the block has no staging buffer): done at the block's own step
  // on the calling thread, because the plan does not keep disk staging alive until the block's compute.
  bool cast_inline = false;
  uint8_t* kv = nullptr;        // KvCache buffer (decoder layers), null otherwise
  uint64_t kv_bytes = 0;
  uint32_t step = 0;            // the step that computes it
  uint64_t source_bytes = 0;    // sum of the weights' file bytes
  bool streamed() const { return feed == Feed::kCopyH2D || feed == Feed::kDiskH2D || needs_cpu_cast; }
};

struct CopyRuntime {
  uint32_t index = 0;  // global index over all steps' copies (for per-copy events)
  uint32_t step = 0;   // the issuing step
  uint32_t block = 0;
  schema::Tier source = schema::Tier::Cpu;
  std::vector<uint32_t> wait_compute_steps;
  std::vector<uint32_t> wait_copy_blocks;
  uint8_t stream = 0;
};

struct StepRuntime {
  uint32_t block = 0;
  std::vector<CopyRuntime> copies;
};

struct ArenaRuntime {
  schema::Pool pool = schema::Pool::DeviceArena;
  int32_t device = -1;  // plan device (DeviceArena); -1 for the pinned pool
  Allocation memory;
};

struct ModelState {
  std::unique_ptr<PlanFile> plan;
  std::string checkpoint_dir;
  std::vector<std::unique_ptr<MappedFile>> shards;  // by plan shard index
  std::vector<ArenaRuntime> arenas;
  std::vector<BlockRuntime> blocks;
  std::vector<StepRuntime> steps;
  std::vector<CopyRuntime*> copies;  // by CopyRuntime::index
  std::vector<int> cuda_devices;     // distinct CUDA devices blocks run on (empty in CPU mode)
  bool cpu_mode = false;
  uint32_t max_streams_per_device = 1;
  int num_disk_staging_buffers = 0;
  ModelInfo info;
  uint64_t loaded_bytes = 0;
  double load_seconds = 0;
};

// Casts `numel` elements between host buffers (a plain copy when the dtypes match). kUnsupported for a
// conversion LibTorch cannot do; LibTorch errors as kDevice. Thread-safe.
Status CastInto(void* dst, schema::DType dst_dtype, const void* src, schema::DType src_dtype, int64_t numel);

}  // namespace bigplan::executor_internal
