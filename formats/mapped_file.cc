#include "formats/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "formats/guarded_copy.h"
#include "support/file_read.h"

namespace bigplan {
namespace {

std::string ErrnoText(int err) { return std::strerror(err); }

}  // namespace

Result<MappedFile> MappedFile::Open(const std::string& path) {
  // Non-blocking open + fstat: a FIFO or a device is refused before anything could block on it.
  BIGPLAN_ASSIGN_OR_RETURN(RegularFile regular, RegularFile::Open(path));
  MappedFile file;
  file.path_ = path;
  file.size_ = regular.size();
  if (file.size_ > 0) {
    void* p = ::mmap(nullptr, file.size_, PROT_READ, MAP_PRIVATE, regular.fd(), 0);
    if (p == MAP_FAILED) {
      return MakeError(ErrorCode::kIo, path + ": cannot mmap " + std::to_string(file.size_) +
                                           " bytes: " + ErrnoText(errno));
    }
    file.data_ = static_cast<const uint8_t*>(p);
  }
  return file;  // the mapping keeps the file referenced after `regular` closes it
}

MappedFile::MappedFile(MappedFile&& other) noexcept
    : path_(std::move(other.path_)), data_(other.data_), size_(other.size_), guard_id_(other.guard_id_) {
  other.data_ = nullptr;
  other.size_ = 0;
  other.guard_id_ = -1;
}

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  if (this != &other) {
    Release();
    path_ = std::move(other.path_);
    data_ = other.data_;
    size_ = other.size_;
    guard_id_ = other.guard_id_;
    other.data_ = nullptr;
    other.size_ = 0;
    other.guard_id_ = -1;
  }
  return *this;
}

void MappedFile::Release() {
  if (guard_id_ >= 0) UnregisterMappedRegion(guard_id_);
  guard_id_ = -1;
  if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), size_);
  data_ = nullptr;
}

MappedFile::~MappedFile() { Release(); }

void MappedFile::ProtectFromTruncation() {
  if (guard_id_ >= 0 || data_ == nullptr) return;
  guard_id_ = RegisterMappedRegion(data_, size_, path_);
}

Status MappedFile::CheckIntact() const { return CheckMappedRegion(guard_id_); }

Result<const uint8_t*> MappedFile::View(uint64_t offset, uint64_t length) const {
  if (offset > size_ || length > size_ - offset) {
    return MakeError(ErrorCode::kCorrupt, path_ + ": byte range [" + std::to_string(offset) + ", " +
                                              std::to_string(offset) + " + " + std::to_string(length) +
                                              ") is outside the file (" + std::to_string(size_) + " bytes)");
  }
  if (data_ == nullptr) return static_cast<const uint8_t*>(nullptr);
  return data_ + offset;
}

void MappedFile::WillNeed(uint64_t offset, uint64_t length) const {
  if (data_ == nullptr || offset >= size_) return;
  if (length > size_ - offset) length = size_ - offset;
  const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  const uint64_t begin = offset / page * page;
  const uint64_t end = offset + length;
  (void)::madvise(const_cast<uint8_t*>(data_) + begin, end - begin, MADV_WILLNEED);
}

}  // namespace bigplan
