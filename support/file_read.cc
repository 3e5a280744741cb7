#include "support/file_read.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

namespace bigplan {

const char* FileTypeDescription(unsigned int st_mode) {
  if (S_ISREG(st_mode)) return "a regular file";
  if (S_ISDIR(st_mode)) return "a directory";
  if (S_ISFIFO(st_mode)) return "a FIFO (named pipe)";
  if (S_ISCHR(st_mode)) return "a character device";
  if (S_ISBLK(st_mode)) return "a block device";
  if (S_ISSOCK(st_mode)) return "a socket";
  return "not a regular file";
}

Result<RegularFile> RegularFile::Open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT || err == ENOTDIR) return MakeError(ErrorCode::kNotFound, path + ": cannot open: " + std::strerror(err));
    if (err == ENXIO) return MakeError(ErrorCode::kIo, path + ": not a regular file (a socket or device without a reader)");
    return MakeError(ErrorCode::kIo, path + ": cannot open: " + std::strerror(err));
  }
  RegularFile f;
  f.fd_ = fd;
  f.path_ = path;
  struct stat st;
  if (::fstat(fd, &st) != 0) return MakeError(ErrorCode::kIo, path + ": cannot stat: " + std::strerror(errno));
  if (S_ISDIR(st.st_mode)) return MakeError(ErrorCode::kIo, path + ": is a directory, not a file");
  if (!S_ISREG(st.st_mode)) {
    return MakeError(ErrorCode::kIo, path + ": not a regular file (it is " + FileTypeDescription(st.st_mode) + ")");
  }
  f.size_ = static_cast<uint64_t>(st.st_size);
  return f;
}

RegularFile::RegularFile(RegularFile&& other) noexcept
    : path_(std::move(other.path_)), fd_(other.fd_), size_(other.size_) {
  other.fd_ = -1;
}

RegularFile& RegularFile::operator=(RegularFile&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    path_ = std::move(other.path_);
    fd_ = other.fd_;
    size_ = other.size_;
    other.fd_ = -1;
  }
  return *this;
}

RegularFile::~RegularFile() {
  if (fd_ >= 0) ::close(fd_);
}

namespace {

Error TooLarge(const std::string& path, const FileKind& kind, const std::string& size) {
  return MakeError(ErrorCode::kCorrupt, path + ": " + size + " bytes is more than the limit of " +
                                            std::to_string(kind.max_bytes) + " bytes for a " + kind.name);
}

template <typename Buffer>
Result<Buffer> ReadAll(const std::string& path, const FileKind& kind) {
  BIGPLAN_ASSIGN_OR_RETURN(RegularFile file, RegularFile::Open(path));
  if (file.size() > kind.max_bytes) return TooLarge(path, kind, std::to_string(file.size()));
  Buffer out;
  // The size may change after fstat: read until EOF, but never more than the cap + 1 bytes.
  out.resize(static_cast<size_t>(file.size()) + 1);
  size_t done = 0;
  for (;;) {
    if (done == out.size()) {
      if (out.size() > kind.max_bytes) return TooLarge(path, kind, "more than " + std::to_string(kind.max_bytes));
      size_t grow = out.size() < 4096 ? 4096 : out.size();
      size_t next = out.size() + grow;
      if (next > kind.max_bytes + 1) next = static_cast<size_t>(kind.max_bytes) + 1;
      out.resize(next);
    }
    const ssize_t r = ::read(file.fd(), reinterpret_cast<char*>(out.data()) + done, out.size() - done);
    if (r < 0) {
      if (errno == EINTR) continue;
      return MakeError(ErrorCode::kIo, path + ": read failed: " + std::strerror(errno));
    }
    if (r == 0) break;
    done += static_cast<size_t>(r);
  }
  if (done > kind.max_bytes) return TooLarge(path, kind, "more than " + std::to_string(kind.max_bytes));
  out.resize(done);
  return out;
}

}  // namespace

Result<std::string> ReadBoundedFile(const std::string& path, const FileKind& kind) {
  return ReadAll<std::string>(path, kind);
}

Result<std::vector<uint8_t>> ReadBoundedFileBytes(const std::string& path, const FileKind& kind) {
  return ReadAll<std::vector<uint8_t>>(path, kind);
}

}  // namespace bigplan
