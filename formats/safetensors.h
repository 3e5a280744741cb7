// The safetensors format: an 8-byte little-endian header length N, N bytes of JSON header, then the data section.
// The header maps tensor names to {"dtype", "shape", "data_offsets": [begin, end]} (relative to the data section)
// and may hold "__metadata__" (string -> string).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "formats/dtype.h"
#include "formats/mapped_file.h"
#include "support/result.h"

namespace bigplan {

inline constexpr uint64_t kMaxSafetensorsHeaderBytes = 100'000'000;  // 100 MB, as the reference implementation

struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  uint64_t offset = 0;      // absolute offset of the first byte in the file (8 + N + data_offsets[0])
  uint64_t size_bytes = 0;  // data_offsets[1] - data_offsets[0] == numel * DTypeBytes(dtype)
  int64_t numel() const;
};

struct SafetensorsHeader {
  uint64_t header_length = 0;  // N
  uint64_t data_start = 0;     // 8 + N
  uint64_t file_size = 0;
  std::map<std::string, std::string> metadata;
  std::vector<TensorInfo> tensors;  // sorted by offset
  // Indices into `tensors` sorted by name (filled by the parser; Find falls back to a linear scan when this
  // does not match `tensors`, e.g. for a hand-built header).
  std::vector<uint32_t> name_order;
  const TensorInfo* Find(const std::string& name) const;  // nullptr if absent
};

// Parses and validates a header given the first bytes of a file and the file's total size. `prefix` must hold
// at least 8 bytes; it may hold the whole file. Validation: header length <= kMaxSafetensorsHeaderBytes and
// inside the file; JSON well-formed and an object; each entry has a known dtype, a non-negative shape and
// data_offsets with begin <= end inside the data section; size == numel * dtype size; no two tensors overlap;
// no duplicate names. Every error is kCorrupt (kUnsupported for an unknown dtype) and its message starts with
// `source` and names the tensor concerned.
Result<SafetensorsHeader> ParseSafetensorsHeader(const uint8_t* prefix, uint64_t prefix_size, uint64_t file_size,
                                                 const std::string& source);

// Reads and validates only the header of the file at `path` (pread of 8 + N bytes, no mapping); errors as
// MappedFile::Open and ParseSafetensorsHeader. If `header_bytes` is not null it receives the raw 8 + N bytes
// (for fingerprints).
Result<SafetensorsHeader> ReadSafetensorsHeader(const std::string& path, std::string* header_bytes = nullptr);

// An opened, validated safetensors file (memory-mapped).
class SafetensorsFile {
 public:
  static Result<SafetensorsFile> Open(const std::string& path);

  const std::string& path() const { return file_.path(); }
  const SafetensorsHeader& header() const { return header_; }
  const MappedFile& file() const { return file_; }
  // The tensor's bytes; kNotFound naming file and tensor if absent.
  Result<const uint8_t*> TensorData(const std::string& name) const;

 private:
  MappedFile file_;
  SafetensorsHeader header_;
};

}  // namespace bigplan
