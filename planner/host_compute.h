// Host compute in decode (hybrid CPU + GPU): which rows of the streamed matrices the host CPU multiplies while the
// rest of each matrix streams to the GPU.
//
// In a decode forward (at most Plan.host_max_tokens tokens) the executor multiplies the last rows of such a matrix on
// the host, from the pinned memory where they rest, with a multi-threaded matrix-vector product
// (executor/cpu_matvec.h), while the copy engine streams the first rows; the two partial outputs meet on the GPU.
// Prefill forwards copy the whole matrix as before. The rows are cut per matrix at the same share of its rows
// (rounded down to kHostRowAlign rows), which the planner picks from the cost model (`plan --cpu-share auto`) or the
// user gives.
#pragma once

#include <cstdint>
#include <map>
#include <utility>
#include <vector>

#include "formats/dtype.h"
#include "planner/accounting.h"
#include "planner/model_desc.h"
#include "planner/placement.h"

namespace bigplan {

// Host rows are a multiple of this many rows, and so are the GPU's rows of such a matrix.
inline constexpr int64_t kHostRowAlign = 64;

// (block index, index of the weight in LayoutBlockWeights) -> rows the host computes: the last ones.
using HostRows = std::map<std::pair<uint32_t, uint32_t>, int64_t>;

// Whether weight `ws` of block `block` may have host rows when it rests in `tier` and the block runs on `device`:
// a registry linear-layer matrix (Layout::kLinear, [out, in], not a tied read) of a block computed on a GPU, resting
// in pinned CPU memory, in bf16 at the execution dtype or row-quantized at a bf16 or fp16 one, with at least
// 2 x kHostRowAlign rows.
bool HostComputable(const ModelDescription& model, size_t block, const WeightSlot& ws, Tier tier, int32_t device);

// The host rows of every HostComputable weight of the placement at `share` of its rows (0 <= share < 1): floor(share
// x rows / kHostRowAlign) x kHostRowAlign, leaving the GPU at least kHostRowAlign rows; weights that get 0 rows are
// left out.
HostRows AssignHostRows(const ModelDescription& model, const std::vector<BlockPlacement>& blocks, DType exec_dtype,
                        double share);

// Bytes of weight rows the host computes per decode forward under `rows`.
uint64_t HostRowBytes(const ModelDescription& model, const HostRows& rows, DType exec_dtype);

}  // namespace bigplan
