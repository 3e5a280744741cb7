#include "formats/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <string_view>
#include <utility>

#include "formats/json_util.h"
#include "support/file_read.h"

namespace bigplan {
namespace {

using nlohmann::json;

std::string Quote(const std::string& s) { return "\"" + s + "\""; }

Error Corrupt(const std::string& source, const std::string& what) {
  return MakeError(ErrorCode::kCorrupt, source + ": " + what);
}

Error TensorCorrupt(const std::string& source, const std::string& tensor, const std::string& what) {
  return MakeError(ErrorCode::kCorrupt, source + ": tensor " + Quote(tensor) + ": " + what);
}

uint64_t ReadLe64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// Reads a JSON number that must be a non-negative integer.
bool AsUnsigned(const json& j, uint64_t* out) {
  if (j.is_number_unsigned()) {
    *out = j.get<uint64_t>();
    return true;
  }
  if (j.is_number_integer()) {
    int64_t v = j.get<int64_t>();
    if (v < 0) return false;
    *out = static_cast<uint64_t>(v);
    return true;
  }
  return false;
}

Result<TensorInfo> ParseEntry(const std::string& name, const json& entry, uint64_t data_start,
                              uint64_t data_size, const std::string& source) {
  if (!entry.is_object()) {
    return TensorCorrupt(source, name, std::string("entry is a JSON ") + entry.type_name() + ", not an object");
  }
  TensorInfo info;
  info.name = name;

  auto dtype_it = entry.find("dtype");
  if (dtype_it == entry.end()) return TensorCorrupt(source, name, "missing \"dtype\"");
  if (!dtype_it->is_string()) return TensorCorrupt(source, name, "\"dtype\" is not a string");
  auto dtype = ParseDType(dtype_it->get_ref<const std::string&>());
  if (!dtype.ok()) {
    return MakeError(dtype.error().code, source + ": tensor " + Quote(name) + ": " + dtype.error().message);
  }
  info.dtype = *dtype;

  auto shape_it = entry.find("shape");
  if (shape_it == entry.end()) return TensorCorrupt(source, name, "missing \"shape\"");
  if (!shape_it->is_array()) return TensorCorrupt(source, name, "\"shape\" is not an array");
  bool has_zero = false;
  uint64_t numel = 1;
  bool overflow = false;
  info.shape.reserve(shape_it->size());
  for (size_t i = 0; i < shape_it->size(); ++i) {
    const json& d = (*shape_it)[i];
    if (d.is_number_integer() && !d.is_number_unsigned() && d.get<int64_t>() < 0) {
      return TensorCorrupt(source, name, "negative dimension " + std::to_string(d.get<int64_t>()) +
                                             " at shape[" + std::to_string(i) + "]");
    }
    uint64_t dim = 0;
    if (!AsUnsigned(d, &dim)) {
      return TensorCorrupt(source, name, "shape[" + std::to_string(i) + "] is not a non-negative integer");
    }
    if (dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return TensorCorrupt(source, name, "dimension " + std::to_string(dim) + " at shape[" + std::to_string(i) +
                                             "] is too large");
    }
    info.shape.push_back(static_cast<int64_t>(dim));
    if (dim == 0) has_zero = true;
    if (!overflow && __builtin_mul_overflow(numel, dim, &numel)) overflow = true;
  }
  uint64_t expected_bytes = 0;
  if (!has_zero) {
    if (overflow || numel > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
        __builtin_mul_overflow(numel, static_cast<uint64_t>(DTypeBytes(info.dtype)), &expected_bytes)) {
      return TensorCorrupt(source, name, "shape's byte size overflows 64 bits");
    }
  }

  auto offsets_it = entry.find("data_offsets");
  if (offsets_it == entry.end()) return TensorCorrupt(source, name, "missing \"data_offsets\"");
  uint64_t begin = 0, end = 0;
  if (!offsets_it->is_array() || offsets_it->size() != 2 || !AsUnsigned((*offsets_it)[0], &begin) ||
      !AsUnsigned((*offsets_it)[1], &end)) {
    return TensorCorrupt(source, name, "\"data_offsets\" is not [begin, end] of two non-negative integers");
  }
  if (begin > end) {
    return TensorCorrupt(source, name, "data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
                                           "] has begin > end");
  }
  if (end > data_size) {
    return TensorCorrupt(source, name, "data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
                                           "] extend past the data section (" + std::to_string(data_size) +
                                           " bytes; file truncated?)");
  }
  info.size_bytes = end - begin;
  if (info.size_bytes != expected_bytes) {
    return TensorCorrupt(source, name, "holds " + std::to_string(info.size_bytes) + " bytes but its shape and " +
                                           DTypeString(info.dtype) + " need " + std::to_string(expected_bytes));
  }
  info.offset = data_start + begin;
  return info;
}

}  // namespace

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

const TensorInfo* SafetensorsHeader::Find(const std::string& name) const {
  if (name_order.size() == tensors.size()) {
    auto it = std::lower_bound(name_order.begin(), name_order.end(), name,
                               [&](uint32_t i, const std::string& n) { return tensors[i].name < n; });
    if (it != name_order.end() && tensors[*it].name == name) return &tensors[*it];
    return nullptr;
  }
  for (const TensorInfo& t : tensors) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

Result<SafetensorsHeader> ParseSafetensorsHeader(const uint8_t* prefix, uint64_t prefix_size, uint64_t file_size,
                                                 const std::string& source) {
  if (file_size < 8) {
    return Corrupt(source, "file is " + std::to_string(file_size) +
                               " bytes, too short for the 8-byte safetensors header length");
  }
  if (prefix == nullptr || prefix_size < 8) {
    return MakeError(ErrorCode::kInvalidArgument, source + ": need at least 8 bytes of the file to parse the header");
  }
  if (prefix_size > file_size) prefix_size = file_size;
  SafetensorsHeader header;
  header.file_size = file_size;
  header.header_length = ReadLe64(prefix);
  const uint64_t n = header.header_length;
  if (n > kMaxSafetensorsHeaderBytes) {
    return Corrupt(source, "header length " + std::to_string(n) + " exceeds the limit of " +
                               std::to_string(kMaxSafetensorsHeaderBytes) + " bytes");
  }
  if (n > file_size - 8) {
    return Corrupt(source, "header length " + std::to_string(n) + " extends past the end of the file (" +
                               std::to_string(file_size) + " bytes; file truncated?)");
  }
  header.data_start = 8 + n;
  if (prefix_size < header.data_start) {
    return MakeError(ErrorCode::kInvalidArgument, source + ": the header needs " +
                                                      std::to_string(header.data_start) + " bytes but only " +
                                                      std::to_string(prefix_size) + " were given");
  }
  const uint64_t data_size = file_size - header.data_start;

  std::string_view text(reinterpret_cast<const char*>(prefix + 8), n);
  BIGPLAN_ASSIGN_OR_RETURN(json root, formats_internal::ParseJsonStrict(text, source + ": header"));
  if (!root.is_object()) {
    return Corrupt(source, std::string("header is a JSON ") + root.type_name() + ", not an object");
  }

  header.tensors.reserve(root.size());
  for (auto it = root.begin(); it != root.end(); ++it) {
    const std::string& key = it.key();
    if (key == "__metadata__") {
      if (it->is_null()) continue;
      if (!it->is_object()) return Corrupt(source, "\"__metadata__\" is not an object");
      for (auto m = it->begin(); m != it->end(); ++m) {
        if (!m->is_string()) {
          return Corrupt(source, "\"__metadata__\" value for " + Quote(m.key()) + " is not a string");
        }
        header.metadata[m.key()] = m->get<std::string>();
      }
      continue;
    }
    BIGPLAN_ASSIGN_OR_RETURN(TensorInfo info, ParseEntry(key, *it, header.data_start, data_size, source));
    header.tensors.push_back(std::move(info));
  }

  std::sort(header.tensors.begin(), header.tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
    if (a.offset != b.offset) return a.offset < b.offset;
    if (a.size_bytes != b.size_bytes) return a.size_bytes < b.size_bytes;
    return a.name < b.name;
  });
  // Overlap: with ranges sorted by begin, each non-empty range must start at or after the furthest end so far.
  uint64_t furthest_end = 0;
  const TensorInfo* furthest = nullptr;
  for (const TensorInfo& t : header.tensors) {
    if (t.size_bytes == 0) continue;
    if (furthest != nullptr && t.offset < furthest_end) {
      return TensorCorrupt(source, t.name, "bytes [" + std::to_string(t.offset - header.data_start) + ", " +
                                               std::to_string(t.offset - header.data_start + t.size_bytes) +
                                               ") overlap tensor " + Quote(furthest->name));
    }
    if (t.offset + t.size_bytes > furthest_end) {
      furthest_end = t.offset + t.size_bytes;
      furthest = &t;
    }
  }
  header.name_order.resize(header.tensors.size());
  for (uint32_t i = 0; i < header.name_order.size(); ++i) header.name_order[i] = i;
  std::sort(header.name_order.begin(), header.name_order.end(),
            [&](uint32_t a, uint32_t b) { return header.tensors[a].name < header.tensors[b].name; });
  return header;
}

Result<SafetensorsHeader> ReadSafetensorsHeader(const std::string& path, std::string* header_bytes) {
  // Non-blocking open + fstat: a FIFO or a device is refused before anything could block on it.
  BIGPLAN_ASSIGN_OR_RETURN(RegularFile file, RegularFile::Open(path));
  const int fd = file.fd();
  const uint64_t file_size = file.size();

  auto read_exact = [&](std::string* buf, uint64_t offset, uint64_t n) -> Status {
    size_t old = buf->size();
    buf->resize(old + n);
    uint64_t done = 0;
    while (done < n) {
      ssize_t r = ::pread(fd, buf->data() + old + done, n - done, static_cast<off_t>(offset + done));
      if (r < 0) {
        if (errno == EINTR) continue;
        return MakeError(ErrorCode::kIo, path + ": read failed: " + std::strerror(errno));
      }
      if (r == 0) return MakeError(ErrorCode::kCorrupt, path + ": file shrank while reading its header");
      done += static_cast<uint64_t>(r);
    }
    return Status::Ok();
  };

  std::string bytes;
  if (file_size >= 8) {
    BIGPLAN_RETURN_IF_ERROR(read_exact(&bytes, 0, 8));
    uint64_t n = ReadLe64(reinterpret_cast<const uint8_t*>(bytes.data()));
    if (n <= kMaxSafetensorsHeaderBytes && n <= file_size - 8) {
      BIGPLAN_RETURN_IF_ERROR(read_exact(&bytes, 8, n));
    }
  }
  BIGPLAN_ASSIGN_OR_RETURN(
      SafetensorsHeader header,
      ParseSafetensorsHeader(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), file_size, path));
  if (header_bytes != nullptr) *header_bytes = std::move(bytes);
  return header;
}

Result<SafetensorsFile> SafetensorsFile::Open(const std::string& path) {
  BIGPLAN_ASSIGN_OR_RETURN(MappedFile file, MappedFile::Open(path));
  BIGPLAN_ASSIGN_OR_RETURN(SafetensorsHeader header,
                           ParseSafetensorsHeader(file.data(), file.size(), file.size(), path));
  SafetensorsFile result;
  result.file_ = std::move(file);
  result.header_ = std::move(header);
  return result;
}

Result<const uint8_t*> SafetensorsFile::TensorData(const std::string& name) const {
  const TensorInfo* t = header_.Find(name);
  if (t == nullptr) {
    return MakeError(ErrorCode::kNotFound, path() + ": no tensor \"" + name + "\"");
  }
  return file_.View(t->offset, t->size_bytes);
}

}  // namespace bigplan
