// Disk-tier reads without the page cache (internal to executor/).
//
// PlanBlockReads decides, once per block at load, how a disk-tier block's tensors travel from their shards into the
// block's pinned disk staging buffer and on to its device staging buffer:
//   * The block's tensors are grouped by shard into runs of nearby bytes (tensors whose gap is smaller than
//     `merge_gap` are read as one range; gap bytes are read and ignored).
//   * O_DIRECT needs the file offset, the length and the memory address aligned (`alignment`, 4096). The first
//     layout tried reads each run's aligned superset [floor(begin), ceil(end)) straight into the staging buffer,
//     runs one after another from the buffer's first aligned address. When that does not fit (the buffer is the
//     plan's weight_bytes, often exactly the sum of the tensor sizes, and 256-aligned), the second layout reads
//     only each run's aligned interior straight into the buffer and places the unaligned head and tail bytes
//     (less than one page each, plus a page if the interiors need room) in the space left before and after the
//     interiors, read through a bounce buffer. That fits whenever the runs' bytes fit the buffer; runs are split
//     at every gap (merge_gap 0) before giving up.
//   * The H2D copies are per tensor (split where a tensor's bytes landed in two places), from where its bytes
//     landed in staging to offset_in_block, coalesced where both sides are contiguous.
// Direct reads are split into chunks of at most `chunk_bytes` so that several can be in flight at once.
//
// ShardReader reads shard bytes with pread on a file descriptor opened with O_DIRECT where the filesystem allows
// (probed at open), else on a plain one followed by posix_fadvise(POSIX_FADV_DONTNEED), so that disk-tier weights
// do not stay in the page cache either way.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "support/result.h"

namespace bigplan::executor_internal {

inline constexpr uint64_t kDirectAlignment = 4096;

// One tensor of a block: its bytes in a shard and where they go in the block's weight buffer.
struct TensorSpan {
  uint32_t shard = 0;
  uint64_t file_offset = 0;
  uint64_t bytes = 0;
  uint64_t block_offset = 0;  // offset_in_block
};

struct DiskReadOptions {
  uint64_t alignment = kDirectAlignment;  // a power of two
  uint64_t merge_gap = 1ull << 20;        // read tensors of one shard less than this apart as one range
  uint64_t chunk_bytes = 16ull << 20;     // split direct reads into pieces of at most this (a multiple of alignment)
};

// A read of shard bytes [file_offset, file_offset + bytes) to staging + staging_offset.
struct StagingRead {
  uint32_t shard = 0;
  uint64_t file_offset = 0;
  uint64_t bytes = 0;
  uint64_t staging_offset = 0;
  // direct: file_offset, bytes and the destination address are multiples of the alignment; read straight into
  // staging (the bytes past the end of the file, if any, are not needed). Else through an aligned bounce buffer.
  bool direct = false;
  // direct only: bytes that must be read (the rest of the last page may lie past the end of the file).
  uint64_t needed = 0;
};

// A copy of `bytes` from staging + staging_offset to the block's device buffer + block_offset.
struct StagingCopy {
  uint64_t staging_offset = 0;
  uint64_t block_offset = 0;
  uint64_t bytes = 0;
  bool operator==(const StagingCopy&) const = default;
};

struct BlockReadPlan {
  bool fits = false;       // false: the reads do not fit the staging buffer (see why); use another path
  std::string why;
  std::string layout;      // "superset" (every read direct) or "interior" (direct interiors, bounced heads/tails)
  std::vector<StagingRead> reads;   // direct reads first, then bounce reads
  std::vector<StagingCopy> copies;  // by block_offset
  uint64_t direct_bytes = 0;  // bytes read straight into staging (whole pages)
  uint64_t bounce_bytes = 0;  // bytes read through the bounce buffer (before rounding to pages)
};

// `staging_address` is the staging buffer's address (only its remainder modulo the alignment matters) and
// `staging_capacity` its size in bytes. Tensors with 0 bytes are ignored. Pure: no I/O.
BlockReadPlan PlanBlockReads(const std::vector<TensorSpan>& tensors, uint64_t staging_address,
                             uint64_t staging_capacity, const DiskReadOptions& options = {});

// A shard opened for reads that bypass (or, where the filesystem refuses O_DIRECT, drop behind them) the page
// cache. Thread-safe (pread).
class ShardReader {
 public:
  // Opens `path` with O_DIRECT, checking with one aligned read that the filesystem accepts it; else opens it
  // plainly (direct() false). kNotFound / kIo naming the path.
  static Result<ShardReader> Open(const std::string& path, bool try_direct = true);

  ShardReader() = default;
  ShardReader(ShardReader&& other) noexcept;
  ShardReader& operator=(ShardReader&& other) noexcept;
  ShardReader(const ShardReader&) = delete;
  ShardReader& operator=(const ShardReader&) = delete;
  ~ShardReader();

  const std::string& path() const { return path_; }
  bool direct() const { return direct_; }
  uint64_t size() const { return size_; }

  // Reads [offset, offset + length) into dst (offset, length and dst aligned to kDirectAlignment when direct());
  // at least `needed` bytes must be in the file. kIo naming the path and the range.
  Status ReadAligned(uint64_t offset, uint64_t length, uint64_t needed, uint8_t* dst) const;
  // Reads any byte range into the calling thread's bounce buffer and returns a pointer to its first byte, valid
  // until this thread's next bounce read.
  Result<const uint8_t*> ReadToBounce(uint64_t offset, uint64_t length) const;
  // Reads any byte range into dst (through the bounce buffer when direct()).
  Status Read(uint64_t offset, uint64_t length, uint8_t* dst) const;

 private:
  Status PreadAll(uint64_t offset, uint64_t length, uint64_t needed, uint8_t* dst) const;
  std::string path_;
  int fd_ = -1;
  bool direct_ = false;
  uint64_t size_ = 0;
};

}  // namespace bigplan::executor_internal
