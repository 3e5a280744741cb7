// The one way the tools read a small input file they are handed (config.json, an index, a plan, a device profile,
// a device map, a model description, tokenizer files): bounded, non-blocking, regular files only.
//
// Promises of every function here:
//   - the file is opened with O_NONBLOCK, so a named pipe (FIFO) never blocks the open, and checked with fstat
//     before any byte is read: anything that is not a regular file (a FIFO, /dev/zero, a socket, a directory)
//     is refused with kIo, the message naming the file and what it is;
//   - a file larger than the cap for its kind is refused before it is read (kCorrupt, naming the file, its size,
//     the kind and the cap); a file that grows past the cap while it is read is refused the same way, so at most
//     cap + 1 bytes are ever held;
//   - a missing file is kNotFound, any other failure of open/read kIo; every message starts with the path.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "support/result.h"

namespace bigplan {

// Size caps by kind of file. Real files are far smaller: a Llama-3.1-405B config.json is ~1 KiB, its index
// ~100 KiB, its plan a few MiB; a tokenizer.json is up to ~20 MiB.
inline constexpr uint64_t kMiB = uint64_t{1} << 20;
inline constexpr uint64_t kMaxConfigFileBytes = 16 * kMiB;             // config.json, generation_config.json
inline constexpr uint64_t kMaxIndexFileBytes = 64 * kMiB;              // *.safetensors.index.json, index.json
inline constexpr uint64_t kMaxPlanFileBytes = 1024 * kMiB;             // *.bplan
inline constexpr uint64_t kMaxProfileFileBytes = 1 * kMiB;             // device profiles
inline constexpr uint64_t kMaxDeviceMapFileBytes = 16 * kMiB;          // --device-map JSON
inline constexpr uint64_t kMaxModelDescriptionFileBytes = 256 * kMiB;  // bigplan model descriptions
inline constexpr uint64_t kMaxTokenizerFileBytes = 256 * kMiB;         // tokenizer.json, vocab/merges files
inline constexpr uint64_t kMaxSpecFileBytes = 16 * kMiB;               // small tool inputs (gen_checkpoint spec)

// What a file is, for the error message and the cap.
struct FileKind {
  const char* name;   // "config.json", "plan", "device profile", ...
  uint64_t max_bytes;
};
inline constexpr FileKind kConfigFile{"config file", kMaxConfigFileBytes};
inline constexpr FileKind kIndexFile{"safetensors index", kMaxIndexFileBytes};
inline constexpr FileKind kPlanFile{"plan", kMaxPlanFileBytes};
inline constexpr FileKind kProfileFile{"device profile", kMaxProfileFileBytes};
inline constexpr FileKind kDeviceMapFile{"device map", kMaxDeviceMapFileBytes};
inline constexpr FileKind kModelDescriptionFile{"model description", kMaxModelDescriptionFileBytes};
inline constexpr FileKind kTokenizerFile{"tokenizer file", kMaxTokenizerFileBytes};
inline constexpr FileKind kSpecFile{"spec file", kMaxSpecFileBytes};

// Reads the whole file under the rules above.
Result<std::string> ReadBoundedFile(const std::string& path, const FileKind& kind);
Result<std::vector<uint8_t>> ReadBoundedFileBytes(const std::string& path, const FileKind& kind);

// An open regular file: the descriptor (O_RDONLY | O_CLOEXEC | O_NONBLOCK, which regular files ignore) and its
// size at open. Closes on destruction; move-only.
class RegularFile {
 public:
  // Opens `path` non-blocking and refuses anything that is not a regular file (no size cap: shards).
  static Result<RegularFile> Open(const std::string& path);

  RegularFile() = default;
  RegularFile(RegularFile&& other) noexcept;
  RegularFile& operator=(RegularFile&& other) noexcept;
  RegularFile(const RegularFile&) = delete;
  RegularFile& operator=(const RegularFile&) = delete;
  ~RegularFile();

  int fd() const { return fd_; }
  uint64_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  int fd_ = -1;
  uint64_t size_ = 0;
};

// "a FIFO (named pipe)", "a character device", "a directory", ... for a st_mode.
const char* FileTypeDescription(unsigned int st_mode);

}  // namespace bigplan
