// Read-only memory-mapped files with bounds-checked views.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "support/result.h"

namespace bigplan {

// RAII read-only mapping of a whole file. The size is taken with fstat before mapping and every view is
// checked against it, so a file shorter than its header claims yields an error, never SIGBUS.
// Move-only. An empty file maps to size 0 with data() == nullptr.
class MappedFile {
 public:
  // kNotFound if missing, kIo if it cannot be opened or mapped; messages name the path.
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

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
};

}  // namespace bigplan
