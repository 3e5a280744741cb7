#include "executor/disk_reads.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>

namespace bigplan::executor_internal {
namespace {

uint64_t Floor(uint64_t x, uint64_t a) { return x / a * a; }
uint64_t Ceil(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

// File bytes [begin, end) of one shard, read as one range.
struct Run {
  uint32_t shard = 0;
  uint64_t begin = 0;
  uint64_t end = 0;
};

// Where file bytes landed in staging.
struct Extent {
  uint32_t shard = 0;
  uint64_t file_offset = 0;
  uint64_t bytes = 0;
  uint64_t staging_offset = 0;
};

struct Layout {
  std::vector<StagingRead> reads;
  std::vector<Extent> extents;
};

std::vector<Run> MakeRuns(const std::vector<TensorSpan>& sorted, uint64_t merge_gap) {
  std::vector<Run> runs;
  for (const TensorSpan& t : sorted) {
    const uint64_t end = t.file_offset + t.bytes;
    if (!runs.empty() && runs.back().shard == t.shard &&
        (t.file_offset <= runs.back().end || t.file_offset - runs.back().end < merge_gap)) {
      runs.back().end = std::max(runs.back().end, end);
    } else {
      runs.push_back({t.shard, t.file_offset, end});
    }
  }
  return runs;
}

// Direct reads of [file_offset, file_offset + bytes) (aligned) to staging_offset (aligned), in chunks; bytes at or
// past `needed_end` in the file are not needed.
void AddDirect(const DiskReadOptions& o, uint32_t shard, uint64_t file_offset, uint64_t bytes,
               uint64_t staging_offset, uint64_t needed_end, Layout* out) {
  const uint64_t chunk = std::max(o.alignment, Floor(o.chunk_bytes, o.alignment));
  for (uint64_t done = 0; done < bytes; done += chunk) {
    StagingRead r;
    r.shard = shard;
    r.file_offset = file_offset + done;
    r.bytes = std::min(chunk, bytes - done);
    r.staging_offset = staging_offset + done;
    r.direct = true;
    r.needed = needed_end > r.file_offset ? std::min(r.bytes, needed_end - r.file_offset) : 0;
    out->reads.push_back(r);
  }
}

// Every run's aligned superset read straight into staging, runs back to back from the first aligned address.
bool SupersetLayout(const std::vector<Run>& runs, uint64_t first_aligned, uint64_t capacity,
                    const DiskReadOptions& o, Layout* out) {
  uint64_t cursor = first_aligned;
  for (const Run& r : runs) {
    const uint64_t lo = Floor(r.begin, o.alignment), hi = Ceil(r.end, o.alignment);
    if (cursor > capacity || hi - lo > capacity - cursor) return false;
    AddDirect(o, r.shard, lo, hi - lo, cursor, r.end, out);
    out->extents.push_back({r.shard, r.begin, r.end - r.begin, cursor + (r.begin - lo)});
    cursor += hi - lo;
  }
  return true;
}

// Every run's aligned interior read straight into staging; the unaligned heads and tails (and interior pages
// given up to make room) placed in the bytes left before and after the interiors, read through a bounce buffer.
bool InteriorLayout(const std::vector<Run>& runs, uint64_t first_aligned, uint64_t capacity,
                    const DiskReadOptions& o, Layout* out) {
  const uint64_t a = o.alignment;
  std::vector<uint64_t> lo(runs.size()), hi(runs.size());  // interior [lo, hi), empty when lo >= hi
  uint64_t interior = 0;
  for (size_t i = 0; i < runs.size(); ++i) {
    lo[i] = Ceil(runs[i].begin, a);
    hi[i] = std::max(lo[i], Floor(runs[i].end, a));
    interior += hi[i] - lo[i];
  }
  // Give up interior pages from the end until the interiors fit after the first aligned address.
  for (size_t i = runs.size(); i-- > 0 && interior > 0 && first_aligned + interior > capacity;) {
    while (hi[i] > lo[i] && first_aligned + interior > capacity) {
      hi[i] -= a;
      interior -= a;
    }
  }
  struct Region {
    uint64_t begin, end;
  };
  std::vector<Region> free;
  if (interior == 0) {
    free.push_back({0, capacity});
  } else {
    free.push_back({0, first_aligned});
    free.push_back({first_aligned + interior, capacity});
  }
  uint64_t cursor = first_aligned;
  for (size_t i = 0; i < runs.size(); ++i) {
    if (hi[i] <= lo[i]) continue;
    AddDirect(o, runs[i].shard, lo[i], hi[i] - lo[i], cursor, hi[i], out);
    out->extents.push_back({runs[i].shard, lo[i], hi[i] - lo[i], cursor});
    cursor += hi[i] - lo[i];
  }
  size_t region = 0;
  uint64_t pos = free[0].begin;
  auto place = [&](uint32_t shard, uint64_t begin, uint64_t end) {
    while (begin < end) {
      while (region < free.size() && pos >= free[region].end) {
        if (++region < free.size()) pos = free[region].begin;
      }
      if (region >= free.size()) return false;
      const uint64_t take = std::min(end - begin, free[region].end - pos);
      StagingRead r;
      r.shard = shard;
      r.file_offset = begin;
      r.bytes = take;
      r.staging_offset = pos;
      out->reads.push_back(r);
      out->extents.push_back({shard, begin, take, pos});
      begin += take;
      pos += take;
    }
    return true;
  };
  for (size_t i = 0; i < runs.size(); ++i) {
    const Run& r = runs[i];
    if (hi[i] <= lo[i]) {
      if (!place(r.shard, r.begin, r.end)) return false;
      continue;
    }
    if (!place(r.shard, r.begin, lo[i]) || !place(r.shard, hi[i], r.end)) return false;
  }
  return true;
}

// The copies from staging to the block buffer for each tensor; false if some tensor byte landed nowhere.
bool MakeCopies(const std::vector<TensorSpan>& tensors, std::vector<Extent> extents,
                std::vector<StagingCopy>* copies) {
  std::sort(extents.begin(), extents.end(), [](const Extent& x, const Extent& y) {
    return x.shard != y.shard ? x.shard < y.shard : x.file_offset < y.file_offset;
  });
  for (const TensorSpan& t : tensors) {
    const uint64_t end = t.file_offset + t.bytes;
    uint64_t covered = 0;
    for (const Extent& e : extents) {
      if (e.shard != t.shard) continue;
      const uint64_t lo = std::max(t.file_offset, e.file_offset);
      const uint64_t hi = std::min(end, e.file_offset + e.bytes);
      if (lo >= hi) continue;
      copies->push_back({e.staging_offset + (lo - e.file_offset), t.block_offset + (lo - t.file_offset), hi - lo});
      covered += hi - lo;
    }
    if (covered != t.bytes) return false;
  }
  std::sort(copies->begin(), copies->end(),
            [](const StagingCopy& x, const StagingCopy& y) { return x.block_offset < y.block_offset; });
  std::vector<StagingCopy> merged;
  for (const StagingCopy& c : *copies) {
    if (!merged.empty()) {
      StagingCopy& m = merged.back();
      if (m.block_offset + m.bytes == c.block_offset && m.staging_offset + m.bytes == c.staging_offset) {
        m.bytes += c.bytes;
        continue;
      }
    }
    merged.push_back(c);
  }
  *copies = std::move(merged);
  return true;
}

}  // namespace

BlockReadPlan PlanBlockReads(const std::vector<TensorSpan>& tensors, uint64_t staging_address,
                             uint64_t staging_capacity, const DiskReadOptions& options) {
  BlockReadPlan plan;
  DiskReadOptions o = options;
  if (o.alignment == 0 || (o.alignment & (o.alignment - 1)) != 0) {
    plan.why = "alignment " + std::to_string(o.alignment) + " is not a power of two";
    return plan;
  }
  std::vector<TensorSpan> sorted;
  uint64_t tensor_bytes = 0;
  for (const TensorSpan& t : tensors) {
    if (t.bytes == 0) continue;
    sorted.push_back(t);
    tensor_bytes += t.bytes;
  }
  std::sort(sorted.begin(), sorted.end(), [](const TensorSpan& x, const TensorSpan& y) {
    return x.shard != y.shard ? x.shard < y.shard : x.file_offset < y.file_offset;
  });
  const uint64_t first_aligned = (o.alignment - staging_address % o.alignment) % o.alignment;
  std::vector<uint64_t> gaps{o.merge_gap};
  if (o.merge_gap != 0) gaps.push_back(0);
  using LayoutFn = bool (*)(const std::vector<Run>&, uint64_t, uint64_t, const DiskReadOptions&, Layout*);
  const std::pair<const char*, LayoutFn> layouts[] = {{"superset", SupersetLayout}, {"interior", InteriorLayout}};
  size_t runs_tried = 0;
  for (const auto& [name, fn] : layouts) {
    for (uint64_t gap : gaps) {
      const std::vector<Run> runs = MakeRuns(sorted, gap);
      runs_tried = std::max(runs_tried, runs.size());
      Layout layout;
      if (!fn(runs, first_aligned, staging_capacity, o, &layout)) continue;
      std::vector<StagingCopy> copies;
      if (!MakeCopies(sorted, layout.extents, &copies)) continue;
      plan.fits = true;
      plan.layout = name;
      std::stable_partition(layout.reads.begin(), layout.reads.end(), [](const StagingRead& r) { return r.direct; });
      plan.reads = std::move(layout.reads);
      plan.copies = std::move(copies);
      for (const StagingRead& r : plan.reads) (r.direct ? plan.direct_bytes : plan.bounce_bytes) += r.bytes;
      return plan;
    }
  }
  plan.why = std::to_string(tensor_bytes) + " tensor bytes in " + std::to_string(runs_tried) +
             " file ranges do not fit the " + std::to_string(staging_capacity) + "-byte staging buffer with " +
             std::to_string(o.alignment) + "-byte aligned reads";
  return plan;
}

// ---- ShardReader ----

namespace {

struct Bounce {
  uint8_t* data = nullptr;
  uint64_t size = 0;
  ~Bounce() { std::free(data); }
  bool Reserve(uint64_t bytes) {
    if (bytes <= size) return true;
    const uint64_t want = Ceil(std::max<uint64_t>(bytes, 1ull << 20), kDirectAlignment);
    void* p = nullptr;
    if (posix_memalign(&p, kDirectAlignment, want) != 0) return false;
    std::free(data);
    data = static_cast<uint8_t*>(p);
    size = want;
    return true;
  }
};

thread_local Bounce tls_bounce;

constexpr uint64_t kBounceChunk = 4ull << 20;

std::string Range(uint64_t offset, uint64_t length) {
  return "bytes [" + std::to_string(offset) + ", " + std::to_string(offset + length) + ")";
}

}  // namespace

Result<ShardReader> ShardReader::Open(const std::string& path, bool try_direct) {
  ShardReader r;
  r.path_ = path;
  if (try_direct) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_DIRECT);
    if (fd >= 0) {
      // Some filesystems accept the flag at open but refuse the reads: probe one page.
      void* probe = nullptr;
      bool ok = posix_memalign(&probe, kDirectAlignment, kDirectAlignment) == 0;
      if (ok) {
        ssize_t n;
        do {
          n = ::pread(fd, probe, kDirectAlignment, 0);
        } while (n < 0 && errno == EINTR);
        ok = n >= 0;
        std::free(probe);
      }
      if (ok) {
        r.fd_ = fd;
        r.direct_ = true;
      } else {
        ::close(fd);
      }
    } else if (errno == ENOENT) {
      return MakeError(ErrorCode::kNotFound, "shard " + path + " not found");
    }
  }
  if (r.fd_ < 0) {
    r.fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (r.fd_ < 0) {
      const int err = errno;
      return MakeError(err == ENOENT ? ErrorCode::kNotFound : ErrorCode::kIo,
                       "opening shard " + path + ": " + std::strerror(err));
    }
  }
  struct stat st;
  if (::fstat(r.fd_, &st) != 0) {
    return MakeError(ErrorCode::kIo, "stat of shard " + path + ": " + std::strerror(errno));
  }
  r.size_ = static_cast<uint64_t>(st.st_size);
  return r;
}

ShardReader::ShardReader(ShardReader&& other) noexcept { *this = std::move(other); }

ShardReader& ShardReader::operator=(ShardReader&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    path_ = std::move(other.path_);
    fd_ = other.fd_;
    direct_ = other.direct_;
    size_ = other.size_;
    other.fd_ = -1;
  }
  return *this;
}

ShardReader::~ShardReader() {
  if (fd_ >= 0) ::close(fd_);
}

Status ShardReader::PreadAll(uint64_t offset, uint64_t length, uint64_t needed, uint8_t* dst) const {
  uint64_t got = 0;
  while (got < length) {
    const ssize_t n = ::pread(fd_, dst + got, length - got, static_cast<off_t>(offset + got));
    if (n < 0) {
      if (errno == EINTR) continue;
      return MakeError(ErrorCode::kIo, "reading " + Range(offset, length) + " of shard " + path_ + ": " +
                                           std::strerror(errno));
    }
    if (n == 0) break;
    got += static_cast<uint64_t>(n);
    if (direct_ && got % kDirectAlignment != 0) break;  // the end of the file, inside a page
  }
  if (!direct_) (void)::posix_fadvise(fd_, static_cast<off_t>(offset), static_cast<off_t>(length), POSIX_FADV_DONTNEED);
  if (got < needed) {
    return MakeError(ErrorCode::kIo, "shard " + path_ + " ends at byte " + std::to_string(offset + got) +
                                         ", inside " + Range(offset, needed) + " (truncated?)");
  }
  return Status::Ok();
}

Status ShardReader::ReadAligned(uint64_t offset, uint64_t length, uint64_t needed, uint8_t* dst) const {
  if (direct_ && (offset % kDirectAlignment || length % kDirectAlignment ||
                  reinterpret_cast<uintptr_t>(dst) % kDirectAlignment)) {
    return MakeError(ErrorCode::kInternal, "unaligned direct read of " + Range(offset, length) + " of shard " + path_);
  }
  return PreadAll(offset, length, needed, dst);
}

Result<const uint8_t*> ShardReader::ReadToBounce(uint64_t offset, uint64_t length) const {
  const uint64_t lo = direct_ ? Floor(offset, kDirectAlignment) : offset;
  const uint64_t hi = direct_ ? Ceil(offset + length, kDirectAlignment) : offset + length;
  if (!tls_bounce.Reserve(hi - lo)) {
    return MakeError(ErrorCode::kIo, "no memory for a " + std::to_string(hi - lo) + "-byte bounce buffer reading " +
                                         path_);
  }
  BIGPLAN_RETURN_IF_ERROR(PreadAll(lo, hi - lo, offset + length - lo, tls_bounce.data));
  return static_cast<const uint8_t*>(tls_bounce.data + (offset - lo));
}

Status ShardReader::Read(uint64_t offset, uint64_t length, uint8_t* dst) const {
  if (!direct_) return PreadAll(offset, length, length, dst);
  for (uint64_t done = 0; done < length; done += kBounceChunk) {
    const uint64_t n = std::min(kBounceChunk, length - done);
    BIGPLAN_ASSIGN_OR_RETURN(const uint8_t* src, ReadToBounce(offset + done, n));
    std::memcpy(dst + done, src, n);
  }
  return Status::Ok();
}

}  // namespace bigplan::executor_internal
