// What the loader builds from a plan (version 2) and a checkpoint, and the stream engine and executor run from
// (internal to executor/). Plain data: no LibTorch, no CUDA types.
#pragma once

#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "arch/binding.h"
#include "executor/arena.h"
#include "executor/executor.h"
#include "formats/mapped_file.h"
#include "formats/quant.h"
#include "schema/plan_io.h"
#include "support/result.h"

namespace bigplan::executor_internal {

struct WeightRuntime {
  std::string name;                 // checkpoint tensor name
  std::vector<int64_t> shape;
  int64_t numel = 0;
  int64_t rows = 1;                 // shape[0] (1 for a 0-d tensor)
  schema::DType source_dtype = schema::DType::F32;
  schema::DType dtype = schema::DType::F32;  // execution dtype
  uint64_t bytes = 0;                        // at the execution dtype, or quantized (below)
  // Row-quantized storage (formats/quant.h; schema::Weight.format): a [rows, cols] matrix of `rows` rows of
  // row_bytes() each, quantized from the checkpoint at load. kNone: numel values of `dtype`.
  quant::Format format = quant::Format::kNone;
  int64_t group = 0;
  // An int4 weight resident on a GPU is stored split (WeightQuant::split): values, then transposed records.
  bool split = false;
  schema::Tier tier = schema::Tier::Gpu;     // where it rests
  // Gpu tier: its bytes in the device arena (the host arena on the CPU); Cpu tier: in the pinned host pool.
  uint8_t* home = nullptr;
  // The tensor's bytes in the mapped shard.
  const uint8_t* source = nullptr;
  uint64_t source_bytes = 0;
  uint64_t source_offset = 0;  // in the shard file
  const MappedFile* shard = nullptr;
  uint32_t shard_index = 0;
  // A weight of a pre-quantized checkpoint (schema::Tensor.prequant, plan version 5): converted at load from these
  // checkpoint tensors (formats/quant.h: FromFp8, FromGptq) into `format`; `source` above is sources[0]'s bytes.
  struct Source {
    std::string name;
    const uint8_t* data = nullptr;  // in the mapped shard (any alignment)
    uint64_t bytes = 0;
    schema::DType dtype = schema::DType::F32;
    std::vector<int64_t> shape;
  };
  schema::PreQuantKind prequant = schema::PreQuantKind::None;
  int64_t block_rows = 0;
  int64_t block_cols = 0;
  bool gptq_v1_zero_offset = true;
  std::vector<Source> sources;
  // Streamed (a Cpu- or Disk-tier weight of a block computed on a GPU, or a Disk-tier weight on the CPU): its
  // units in its device's stream, in row order. Empty for a weight used where it rests.
  std::vector<uint32_t> units;
  bool chunked = false;  // streamed in row chunks (the units are not whole)
  // >= 0: rows [host_row_begin, rows) are the plan's `host` units, which the host computes in decode forwards
  // (StreamEngine::BeginForward(true)) from `home` in pinned memory; -1: none.
  int64_t host_row_begin = -1;
  // Act-order GPTQ (formats/quant.h FromGptq): the stored columns are the checkpoint's columns perm[0..cols), so a
  // product takes the activations' columns in that order. Empty otherwise.
  std::vector<int32_t> perm;
  // A tensor-parallel shard's columns (schema::Weight.slice_dim 1): columns [col_begin, col_begin + shape[1]) of
  // each of the checkpoint tensor's rows of src_cols columns, gathered at load (`source` is then the whole tensor's
  // bytes). -1: none (a row slice is a plain range of `source`).
  int64_t col_begin = -1;
  int64_t src_cols = 0;
  // A column slice of several ranges (GPT-2's Conv1D c_attn: the shard's q, k and v columns): every range, in
  // order, the first at col_begin; their widths sum to shape[1]. Empty for one range.
  std::vector<std::pair<int64_t, int64_t>> col_ranges;
  // Row r's columns of this slice (its ranges' segments, each `elem` bytes a value) written to dst, from `source`.
  void GatherColumns(int64_t r, size_t elem, uint8_t* dst) const {
    const uint8_t* row = source + static_cast<size_t>(r) * static_cast<size_t>(src_cols) * elem;
    if (col_ranges.empty()) {
      std::memcpy(dst, row + static_cast<size_t>(col_begin) * elem, static_cast<size_t>(shape[1]) * elem);
      return;
    }
    for (const auto& [b, e] : col_ranges) {
      std::memcpy(dst, row + static_cast<size_t>(b) * elem, static_cast<size_t>(e - b) * elem);
      dst += static_cast<size_t>(e - b) * elem;
    }
  }
  // A tensor-parallel shard's rows of a pre-quantized weight (schema::Weight.slice_dim 0): the whole tensor's rows
  // (src_rows) and the shard's ranges of them, in order; the loader converts the whole tensor and keeps these rows
  // (of a column slice: each row's columns [col_begin, col_begin + shape[1])). Empty for other weights.
  int64_t src_rows = 0;
  std::vector<std::pair<int64_t, int64_t>> row_ranges;
  // A routed expert's matrix (schema::Weight.routed): in no stream; moved or computed by the host when its expert is
  // chosen (executor/expert_engine.h). In CPU mode it is used where it rests (a disk-resting one is loaded into
  // `owned` host memory).
  bool routed = false;
  uint64_t row_bytes() const { return rows > 0 ? bytes / static_cast<uint64_t>(rows) : bytes; }
  uint64_t source_row_bytes() const { return rows > 0 ? source_bytes / static_cast<uint64_t>(rows) : source_bytes; }
  bool quantized() const { return format != quant::Format::kNone; }
  // The shape and element type of its bytes as stored: `shape` and `dtype`, or [rows, row_bytes()] U8 when quantized.
  std::vector<int64_t> stored_shape() const {
    return quantized() ? std::vector<int64_t>{rows, static_cast<int64_t>(row_bytes())} : shape;
  }
  schema::DType stored_dtype() const { return quantized() ? schema::DType::U8 : dtype; }
};

struct BlockRuntime {
  uint32_t index = 0;
  uint32_t shard = 0;  // a tensor-parallel plan's shard (schema::Block.shard); 0 otherwise
  std::string name;
  arch::BlockKind kind = arch::BlockKind::kEmbedding;
  std::string prefix;
  // Its kernel's slots -> index into `weights` (-1: none), bound at load (arch::BindBlock).
  arch::SlotTable slots = arch::EmptySlotTable();
  int32_t layer = -1;
  schema::Tier tier = schema::Tier::Gpu;  // the slowest tier of its weights
  int32_t device = -1;  // where it runs: CUDA ordinal, or -1 for the CPU (always -1 in CPU mode)
  int32_t plan_device = -1;
  // Ranks (LoadOptions::rank_device): a block another process computes. It has no weights, KV cache or memory
  // here; `device` is -1 and `plan_device` names the rank that computes it.
  bool remote = false;
  std::vector<WeightRuntime> weights;
  uint8_t* kv = nullptr;  // KvCache buffer (decoder layers), null otherwise
  uint64_t kv_bytes = 0;
  uint32_t step = 0;      // the step that computes it
  int32_t stream = -1;    // index into ModelState::streams of its device's stream (-1: streams nothing)
  std::vector<uint32_t> whole_units;  // its whole units in that stream, acquired when its step begins
  std::vector<uint32_t> chunk_units;  // its row chunks in that stream, in order
  uint64_t weight_bytes = 0;          // all its weights at the execution dtype
};

// One stream unit (schema::Unit) with its pointers resolved.
struct UnitRuntime {
  uint32_t block = 0;
  uint32_t weight = 0;
  int64_t row_begin = 0;
  int64_t row_end = 1;
  schema::Tier source = schema::Tier::Cpu;
  uint64_t bytes = 0;
  bool whole = true;
  uint8_t* ring = nullptr;             // destination in the device ring
  int32_t wait_unit = -1;              // see schema::Unit
  // Cpu source: the unit's bytes in the pinned host pool.
  const uint8_t* host = nullptr;
  // Disk source: the unit's bytes in the shard file, and the pinned disk ring slot.
  uint32_t shard_index = 0;
  uint64_t file_offset = 0;
  uint64_t file_bytes = 0;
  bool cast = false;                   // the file dtype differs from the execution dtype
  bool host_compute = false;           // a `host` unit (schema::Unit::host) of a GPU stream: not copied in decode
  uint8_t* disk_slot = nullptr;
  uint64_t disk_slot_bytes = 0;
  int32_t disk_wait_unit = -1;
};

struct StreamRuntime {
  int32_t device = -1;  // compute device of its blocks (-1: the CPU, also every stream in CPU mode)
  int32_t plan_device = -1;
  uint8_t* ring = nullptr;
  uint64_t ring_bytes = 0;
  uint8_t* disk_ring = nullptr;
  uint64_t disk_ring_bytes = 0;
  std::vector<UnitRuntime> units;
  // No unit waits for the release of a unit of its own block in the same pass (every "slots" ring): a block's
  // chunks may then all stay held until its step ends (StreamEngine::BeginForward's hold_chunks).
  bool chunks_holdable = true;
};

// A GPU's routed-expert ring (schema::ExpertRing) with its buffers resolved.
struct ExpertRingRuntime {
  int32_t device = -1;
  uint8_t* ring = nullptr;
  uint32_t slots = 0;
  uint64_t slot_bytes = 0;
  uint8_t* disk_ring = nullptr;  // null: no disk-resting experts
  uint32_t disk_slots = 0;
  uint64_t disk_slot_bytes = 0;
  double cpu_share = 0;
  uint32_t decode_max_tokens = 0;
  uint32_t copy_all_tokens = 0;
  uint32_t prefetch = 0;  // next-layer experts prefetched per sparse layer in decode
};

struct StepRuntime {
  uint32_t block = 0;
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
  std::vector<StreamRuntime> streams;
  std::vector<ExpertRingRuntime> expert_rings;  // GPU mode only
  std::vector<Allocation> owned;                // CPU mode: routed disk-resting experts loaded into memory
  std::vector<int> cuda_devices;     // distinct CUDA devices blocks run on (empty in CPU mode)
  bool cpu_mode = false;
  // Plan.host_max_tokens: forwards of at most this many tokens compute the host units on the host (0: none; also in
  // CPU mode, where every weight is used where it rests).
  uint32_t host_max_tokens = 0;
  ModelInfo info;
  uint64_t loaded_bytes = 0;
  double load_seconds = 0;
};

// Casts `numel` elements between host buffers (a plain copy when the dtypes match). kUnsupported for a
// conversion LibTorch cannot do; LibTorch errors as kDevice. Thread-safe.
Status CastInto(void* dst, schema::DType dst_dtype, const void* src, schema::DType src_dtype, int64_t numel);

}  // namespace bigplan::executor_internal
