// Read-only memory-mapped files with bounds-checked views.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "support/result.h"

namespace bigplan {

// RAII read-only mapping of a whole file. The file is opened non-blocking and must be a regular file (a FIFO or
// a device is refused without blocking). The size is taken with fstat before mapping and every view is checked
// against it, so a file shorter than its header claims yields an error, never SIGBUS. A file that shrinks
// *after* it was mapped makes reads of the lost pages fault (SIGBUS): readers of data that may change under a
// running process copy through GuardedCopy (formats/guarded_copy.h).
// Move-only. An empty file maps to size 0 with data() == nullptr.
class MappedFile {
 public:
  // kNotFound if missing, kIo if it is not a regular file or cannot be opened or mapped; messages name the path.
  static Result<MappedFile> Open(const std::string& path);

  MappedFile() = default;
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  const std::string& path() const { return path_; }
  uint64_t size() const { return size_; }
  const uint8_t* data() const { return data_; }

  // Pointer to [offset, offset + length); kCorrupt naming the path if the range is outside the file.
  Result<const uint8_t*> View(uint64_t offset, uint64_t length) const;

  // Advises the kernel that [offset, offset+length) will be read soon / sequentially (best effort).
  void WillNeed(uint64_t offset, uint64_t length) const;

  // For a mapping read while the file may change (a running executor's shards): registers it with
  // formats/guarded_copy.h, so that a read of a page the file no longer backs reads zeros and marks the mapping
  // damaged instead of killing the process with SIGBUS. Idempotent; undone when the mapping is released.
  void ProtectFromTruncation();
  // Ok, or kIo naming the file when a protected mapping lost pages since ProtectFromTruncation.
  Status CheckIntact() const;

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
  int guard_id_ = -1;  // RegisterMappedRegion id while protected
  void Release();
};

}  // namespace bigplan
