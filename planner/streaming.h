// Streaming (plan version 2): how the weights that do not rest on their compute device reach it.
//
// The unit of streaming is a tensor, or a range of its rows. Each compute device that streams has one ring in its
// arena; every streamed weight of the blocks it computes is copied into the ring as one or more units, in the
// order the kernels consume them, and the ring's bytes are reused as soon as the units that held them are
// released. A forward pass repeats the same units, so the ring's placement is fixed ahead of time and every
// reuse is ordered by an explicit dependency (a unit's copy waits for the release of the unit whose bytes it
// overwrites) that an independent checker proves safe and deadlock-free before a plan is written.
//
// Host-side order of one forward pass on a device (what the executor does and what the checker replays), per
// block in step order:
//   begin(B)      acquire every whole unit of B (the compute stream waits for their copies)
//   for each chunk c of B, in unit order: acquire(c), release(c) (the kernel's one operation reading c)
//   end(B)        release every whole unit of B
// The copy of a unit is issued by the device's copy thread in unit order, each once the release it waits for
// has been issued (releases are events on the device's single compute stream, so a later release implies the
// earlier ones).
//
// Two ring layouts:
//   slots  (every block's streamed bytes fit in half the ring) The ring is split into `slots` equal slots of the
//          largest block's streamed bytes; the k-th streaming block uses slot k mod slots and its units lie
//          contiguously in it. Every unit is whole. With 2 slots this is double buffering by block (the
//          version-1 staging with prefetch depth 1); more slots prefetch deeper.
//   chunks (some block streams more than half the ring, e.g. a layer larger than the GPU budget) A byte FIFO:
//          units are placed one after another, wrapping to offset 0 when one does not fit before the end.
//          Weights of more than `chunk_bytes` with at least 2 dimensions are split into row chunks of at most
//          `chunk_bytes` (at least one row); the rest are whole units. Within a block, whole units come first,
//          then the chunked weights in consumption order.
// A weight with host rows (StreamWeight::host_rows) is streamed as row chunks in either layout (in "slots", two: the
// GPU's rows and the host's), so the kernel can multiply the first part on the GPU and leave the rest to the host.
//
// Disk units are read from their shard into a pinned disk ring (a byte FIFO of 4096-aligned slots that hold the
// 4096-aligned superset of the unit's file bytes, or the unit cast to the execution dtype), then copied to the
// device ring; a read waits for the H2D copy of the unit whose slot bytes it overwrites.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "formats/quant.h"
#include "planner/tier.h"
#include "support/result.h"

namespace bigplan {

inline constexpr uint64_t kDiskSlotAlignment = 4096;

// One streamed weight of a block, as the stream builder needs it.
struct StreamWeight {
  uint32_t block = 0;        // block index (the model's, = its step)
  uint32_t weight = 0;       // index into LayoutBlockWeights(model, block).weights
  Tier source = Tier::kCpu;  // kCpu or kDisk
  uint64_t bytes = 0;        // at the execution dtype
  int64_t rows = 1;          // shape[0] (1 for a 0-d tensor)
  uint64_t row_bytes = 0;    // bytes / rows at the execution dtype
  bool chunkable = false;    // at least 2 dimensions and rows > 1
  uint32_t order = 0;        // consumption order among the block's chunkable weights (lower first)
  // Disk only: the bytes a read moves for the whole weight (its size in the file) and whether the read must be
  // cast into the execution dtype (then the slot holds the cast bytes; else the aligned file superset).
  uint64_t file_bytes = 0;
  uint64_t file_row_bytes = 0;
  bool cast = false;
  // > 0: the weight's last host_rows rows are computed by the host CPU in decode forwards (planner/host_compute.h):
  // the weight is streamed in row chunks whatever its size, split at rows - host_rows, and the chunks past that row
  // are marked `host` (a Cpu-source matrix only).
  int64_t host_rows = 0;
  quant::Format format = quant::Format::kNone;  // its storage (the host's product rate depends on it)
};

struct StreamUnitPlan {
  uint32_t block = 0;
  uint32_t weight = 0;
  int64_t row_begin = 0;
  int64_t row_end = 1;
  Tier source = Tier::kCpu;
  uint64_t bytes = 0;
  bool whole = true;
  uint64_t ring_offset = 0;
  int32_t wait_unit = -1;
  uint64_t disk_slot_offset = 0;
  uint64_t disk_slot_bytes = 0;
  int32_t disk_wait_unit = -1;
  uint64_t file_bytes = 0;  // bytes the disk read moves (disk units)
  bool host = false;        // rows the host computes in decode forwards (StreamWeight::host_rows)
  quant::Format format = quant::Format::kNone;  // the weight's storage
};

struct DeviceStreamPlan {
  int32_t device = 0;
  std::string layout;        // "slots" or "chunks"
  uint64_t ring_bytes = 0;
  uint32_t slots = 0;        // slots layout
  uint64_t chunk_bytes = 0;  // chunks layout (0: nothing chunked)
  uint64_t disk_ring_bytes = 0;
  std::vector<StreamUnitPlan> units;
  uint64_t streamed_bytes() const;  // per forward pass
};

struct StreamOptions {
  uint64_t ring_bytes = 0;   // the ring's size (> 0)
  // > 0: the chunks layout with chunks of at most this many bytes, whatever the blocks' sizes; 0: the slots layout
  // when every block's streamed bytes fit half the ring, else chunks of ring_bytes / 4 (halved until they fit).
  uint64_t chunk_bytes = 0;
  // Disk ring: this many of the largest disk slots (at least 2). Each read is split into parallel pieces, so two
  // slots keep the disk busy while the previous unit is copied to the device.
  uint32_t disk_slots = 2;
};

// The units of one device's streamed weights (`weights` in step order, each block's weights in layout order), laid
// out in a ring of options.ring_bytes: "slots" when every block's streamed bytes fit half the ring (and no chunk size
// is given), else "chunks".
// Fills the waits and the disk ring, then runs CheckDeviceStream. kInfeasible when the ring cannot hold what must
// be held at once (a block's whole units plus one chunk, or one row of a weight), naming the device and sizes.
Result<DeviceStreamPlan> BuildDeviceStream(int32_t device, const std::vector<StreamWeight>& weights,
                                           const StreamOptions& options);

// The independent check of a stream, used on every plan: replays two forward passes of host events (see above)
// with the copy thread issuing each unit as soon as its wait is released, and fails (kInternal, naming the units)
// when a unit is issued while a unit whose ring bytes it overlaps is issued and not yet released, when a unit must
// be acquired before its copy can be issued (a deadlock), when a disk read could overwrite a slot whose H2D copy is
// not yet issued, or when a unit lies outside its ring.
Status CheckDeviceStream(const DeviceStreamPlan& stream);

// Bytes of the largest block's streamed weights (aligned as placed) in `weights`.
uint64_t LargestBlockStream(const std::vector<StreamWeight>& weights);

}  // namespace bigplan
