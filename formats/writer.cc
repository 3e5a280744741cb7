#include "formats/writer.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <thread>

#include "arch/registry.h"
#include "formats/json_util.h"

namespace bigplan {
namespace {

using nlohmann::json;

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;
constexpr uint64_t kChunkBytes = 16ull << 20;  // generation and write unit; a multiple of 8

inline uint64_t Mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

inline uint64_t TensorKey(uint64_t seed, uint32_t tensor_index) {
  return Mix64(seed ^ Mix64((static_cast<uint64_t>(tensor_index) + 1) * kGolden));
}

// One 8-byte word of a tensor's data.
struct WordMaker {
  DType dtype;
  uint64_t key;
  float scale;
  float offset;  // 1 for norm weights

  inline float Value(float unit) const { return offset + (2.0f * unit - 1.0f) * scale; }

  inline void Make(uint64_t w, uint8_t out[8]) const {
    const uint64_t r = Mix64(key + (w + 1) * kGolden);
    switch (dtype) {
      case DType::kF32: {
        for (int i = 0; i < 2; ++i) {
          uint32_t bits = static_cast<uint32_t>(r >> (32 * i));
          float v = Value(static_cast<float>(bits >> 8) * (1.0f / 16777216.0f));
          std::memcpy(out + 4 * i, &v, 4);
        }
        return;
      }
      case DType::kBF16:
      case DType::kF16: {
        for (int i = 0; i < 4; ++i) {
          uint32_t bits = static_cast<uint32_t>((r >> (16 * i)) & 0xffffu);
          float v = Value(static_cast<float>(bits) * (1.0f / 65536.0f));
          uint16_t h = dtype == DType::kBF16 ? FloatToBf16(v) : FloatToF16(v);
          out[2 * i] = static_cast<uint8_t>(h);
          out[2 * i + 1] = static_cast<uint8_t>(h >> 8);
        }
        return;
      }
      case DType::kF64: {
        double unit = static_cast<double>(r >> 11) * (1.0 / 9007199254740992.0);
        double v = static_cast<double>(offset) + (2.0 * unit - 1.0) * static_cast<double>(scale);
        std::memcpy(out, &v, 8);
        return;
      }
      case DType::kBool:
        for (int i = 0; i < 8; ++i) out[i] = static_cast<uint8_t>((r >> (8 * i)) & 1u);
        return;
      default:
        for (int i = 0; i < 8; ++i) out[i] = static_cast<uint8_t>(r >> (8 * i));
        return;
    }
  }
};

uint64_t ByteSize(const WriteSpec& spec) {
  uint64_t n = 1;
  for (int64_t d : spec.shape) n *= static_cast<uint64_t>(d);
  return n * DTypeBytes(spec.dtype);
}

std::string ShardName(const std::string& prefix, size_t index, size_t count) {
  if (count == 1) return prefix + ".safetensors";
  char buf[64];
  std::snprintf(buf, sizeof(buf), "-%05zu-of-%05zu.safetensors", index + 1, count);
  return prefix + buf;
}

struct PlannedTensor {
  uint32_t index;         // in the caller's list
  uint64_t data_offset;   // within the shard's data section
  uint64_t size;
};

struct PlannedShard {
  std::string name;
  std::string header;     // 8-byte length + JSON, padded so the data section starts 8-aligned
  uint64_t data_bytes = 0;
  std::vector<PlannedTensor> tensors;  // in data order
  int fd = -1;
};

struct Chunk {
  uint32_t shard;
  uint64_t begin;  // within the data section
  uint64_t length;
};

std::string HeaderFor(const PlannedShard& shard, const std::vector<WriteSpec>& specs) {
  std::string json_text = R"({"__metadata__":{"format":"pt"})";
  for (const PlannedTensor& t : shard.tensors) {
    const WriteSpec& s = specs[t.index];
    json_text += "," + json(s.name).dump() + R"(:{"dtype":")" + DTypeString(s.dtype) + R"(","shape":[)";
    for (size_t i = 0; i < s.shape.size(); ++i) json_text += (i ? "," : "") + std::to_string(s.shape[i]);
    json_text += "],\"data_offsets\":[" + std::to_string(t.data_offset) + "," +
                 std::to_string(t.data_offset + t.size) + "]}";
  }
  json_text += "}";
  while ((8 + json_text.size()) % 8 != 0) json_text += ' ';
  std::string out(8, '\0');
  const uint64_t n = json_text.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + json_text;
}

Status PwriteAll(int fd, const uint8_t* data, uint64_t n, uint64_t offset, const std::string& path) {
  while (n > 0) {
    ssize_t w = ::pwrite(fd, data, n, static_cast<off_t>(offset));
    if (w < 0) {
      if (errno == EINTR) continue;
      return MakeError(ErrorCode::kIo, path + ": write failed at offset " + std::to_string(offset) + ": " +
                                           std::strerror(errno));
    }
    data += w;
    n -= static_cast<uint64_t>(w);
    offset += static_cast<uint64_t>(w);
  }
  return Status::Ok();
}

Status WriteWholeFile(const std::string& path, const std::string& bytes) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return MakeError(ErrorCode::kIo, path + ": cannot create: " + std::strerror(errno));
  Status s = PwriteAll(fd, reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), 0, path);
  if (::close(fd) != 0 && s.ok()) return MakeError(ErrorCode::kIo, path + ": close failed: " + std::strerror(errno));
  return s;
}

Status ValidateSpecs(const std::vector<WriteSpec>& tensors) {
  std::set<std::string> names;
  for (const WriteSpec& t : tensors) {
    if (t.name.empty()) return MakeError(ErrorCode::kInvalidArgument, "tensor with an empty name");
    if (t.name == "__metadata__") {
      return MakeError(ErrorCode::kInvalidArgument, "tensor name \"__metadata__\" is reserved");
    }
    try {
      (void)json(t.name).dump();
    } catch (const json::exception&) {
      return MakeError(ErrorCode::kInvalidArgument, "tensor name is not valid UTF-8");
    }
    if (!names.insert(t.name).second) {
      return MakeError(ErrorCode::kInvalidArgument, "tensor \"" + t.name + "\" appears twice");
    }
    if (DTypeBytes(t.dtype) == 0) {
      return MakeError(ErrorCode::kInvalidArgument, "tensor \"" + t.name + "\": invalid dtype");
    }
    uint64_t n = DTypeBytes(t.dtype);
    for (int64_t d : t.shape) {
      if (d < 0) {
        return MakeError(ErrorCode::kInvalidArgument, "tensor \"" + t.name + "\": negative dimension " +
                                                          std::to_string(d));
      }
      if (n != 0 && __builtin_mul_overflow(n, static_cast<uint64_t>(d), &n)) {
        return MakeError(ErrorCode::kInvalidArgument, "tensor \"" + t.name + "\": byte size overflows 64 bits");
      }
      if (d == 0) n = 0;
    }
    if (n > (1ull << 62)) {
      return MakeError(ErrorCode::kInvalidArgument, "tensor \"" + t.name + "\": too large");
    }
  }
  return Status::Ok();
}

}  // namespace

bool IsNormWeightName(std::string_view name) { return arch::IsNormWeightName(name); }

void GenerateTensorBytes(const WriteSpec& spec, uint32_t tensor_index, uint64_t seed, float scale,
                         uint64_t byte_offset, uint64_t length, uint8_t* out) {
  if (length == 0) return;
  WordMaker maker{spec.dtype, TensorKey(seed, tensor_index), scale, IsNormWeightName(spec.name) ? 1.0f : 0.0f};
  const uint64_t end = byte_offset + length;
  uint64_t w = byte_offset / 8;
  uint8_t word[8];
  // Head: a partial word.
  if (byte_offset % 8 != 0) {
    maker.Make(w, word);
    uint64_t from = byte_offset % 8;
    uint64_t n = std::min<uint64_t>(8 - from, length);
    std::memcpy(out, word + from, n);
    ++w;
  }
  // Whole words.
  for (; (w + 1) * 8 <= end; ++w) {
    maker.Make(w, word);
    std::memcpy(out + (w * 8 - byte_offset), word, 8);
  }
  // Tail.
  if (w * 8 < end && w * 8 >= byte_offset) {
    maker.Make(w, word);
    std::memcpy(out + (w * 8 - byte_offset), word, end - w * 8);
  }
}

Result<std::vector<WriteSpec>> ParseWriteSpecsJson(std::string_view text, const std::string& source) {
  BIGPLAN_ASSIGN_OR_RETURN(json root, formats_internal::ParseJsonStrict(text, source));
  auto corrupt = [&](const std::string& what) { return MakeError(ErrorCode::kCorrupt, source + ": " + what); };
  if (!root.is_object()) return corrupt("not a JSON object");
  auto list = root.find("tensors");
  if (list == root.end() || !list->is_array()) return corrupt("\"tensors\" must be an array");
  std::vector<WriteSpec> specs;
  for (size_t i = 0; i < list->size(); ++i) {
    const json& e = (*list)[i];
    const std::string where = "tensors[" + std::to_string(i) + "]";
    if (!e.is_object()) return corrupt(where + " is not an object");
    auto name = e.find("name");
    if (name == e.end() || !name->is_string() || name->get_ref<const std::string&>().empty()) {
      return corrupt(where + ": \"name\" must be a non-empty string");
    }
    WriteSpec spec;
    spec.name = name->get<std::string>();
    const std::string what = where + " (\"" + spec.name + "\")";
    auto shape = e.find("shape");
    if (shape == e.end() || !shape->is_array()) return corrupt(what + ": \"shape\" must be an array");
    for (const json& d : *shape) {
      if (!d.is_number_integer() || (!d.is_number_unsigned() && d.get<int64_t>() < 0) ||
          (d.is_number_unsigned() && d.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX))) {
        return corrupt(what + ": \"shape\" must hold non-negative integers");
      }
      spec.shape.push_back(d.get<int64_t>());
    }
    auto dtype = e.find("dtype");
    if (dtype != e.end()) {
      if (!dtype->is_string()) return corrupt(what + ": \"dtype\" must be a string");
      auto parsed = ParseDType(dtype->get_ref<const std::string&>());
      if (!parsed.ok()) return MakeError(parsed.error().code, source + ": " + what + ": " + parsed.error().message);
      spec.dtype = *parsed;
    }
    specs.push_back(std::move(spec));
  }
  return specs;
}

Result<std::vector<std::string>> WriteRandomCheckpoint(const std::string& directory,
                                                       const std::vector<WriteSpec>& tensors,
                                                       const WriterOptions& options) {
  BIGPLAN_RETURN_IF_ERROR(ValidateSpecs(tensors));
  if (options.file_prefix.empty() || options.file_prefix.find('/') != std::string::npos) {
    return MakeError(ErrorCode::kInvalidArgument, "file prefix \"" + options.file_prefix +
                                                      "\" must be a non-empty file name");
  }
  if (tensors.size() > std::numeric_limits<uint32_t>::max()) {
    return MakeError(ErrorCode::kInvalidArgument, "too many tensors");
  }

  // Assign tensors to shards in order.
  std::vector<PlannedShard> shards(1);
  uint64_t total = 0;
  for (uint32_t i = 0; i < tensors.size(); ++i) {
    const uint64_t size = ByteSize(tensors[i]);
    if (!shards.back().tensors.empty() && shards.back().data_bytes + size > options.max_shard_bytes) {
      shards.emplace_back();
    }
    PlannedShard& s = shards.back();
    s.tensors.push_back(PlannedTensor{i, s.data_bytes, size});
    s.data_bytes += size;
    total += size;
  }
  for (size_t i = 0; i < shards.size(); ++i) {
    shards[i].name = ShardName(options.file_prefix, i, shards.size());
    shards[i].header = HeaderFor(shards[i], tensors);
  }

  std::error_code ec;
  std::filesystem::create_directories(directory, ec);
  if (ec) return MakeError(ErrorCode::kIo, directory + ": cannot create directory: " + ec.message());
  auto path_of = [&](const PlannedShard& s) { return directory + "/" + s.name; };

  auto close_all = [&]() {
    for (PlannedShard& s : shards) {
      if (s.fd >= 0) ::close(s.fd);
      s.fd = -1;
    }
  };
  for (PlannedShard& s : shards) {
    const std::string path = path_of(s);
    s.fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (s.fd < 0) {
      Error e = MakeError(ErrorCode::kIo, path + ": cannot create: " + std::strerror(errno));
      close_all();
      return e;
    }
    const uint64_t file_size = s.header.size() + s.data_bytes;
    if (::ftruncate(s.fd, static_cast<off_t>(file_size)) != 0) {
      Error e = MakeError(ErrorCode::kIo, path + ": cannot size to " + std::to_string(file_size) + " bytes: " +
                                              std::strerror(errno));
      close_all();
      return e;
    }
    Status st = PwriteAll(s.fd, reinterpret_cast<const uint8_t*>(s.header.data()), s.header.size(), 0, path);
    if (!st.ok()) {
      close_all();
      return st.take_error();
    }
  }

  // Chunks of each shard's data section, generated and written by the workers.
  std::vector<Chunk> chunks;
  for (uint32_t s = 0; s < shards.size(); ++s) {
    for (uint64_t b = 0; b < shards[s].data_bytes; b += kChunkBytes) {
      chunks.push_back(Chunk{s, b, std::min(kChunkBytes, shards[s].data_bytes - b)});
    }
  }

  unsigned threads = options.threads > 0 ? static_cast<unsigned>(options.threads)
                                         : std::min(16u, std::max(1u, std::thread::hardware_concurrency()));
  threads = static_cast<unsigned>(std::max<size_t>(1, std::min<size_t>(threads, chunks.size())));

  std::atomic<size_t> next{0};
  std::atomic<uint64_t> written{0};
  std::atomic<bool> failed{false};
  std::mutex mu;
  std::condition_variable cv;
  size_t finished_workers = 0;
  std::optional<Error> first_error;

  auto worker = [&]() {
    std::vector<uint8_t> buffer(std::min<uint64_t>(kChunkBytes, total == 0 ? 1 : total));
    for (;;) {
      if (failed.load(std::memory_order_relaxed)) break;
      const size_t c = next.fetch_add(1);
      if (c >= chunks.size()) break;
      const Chunk& chunk = chunks[c];
      const PlannedShard& shard = shards[chunk.shard];
      // Tensors overlapping [begin, begin + length): start from the last one beginning at or before `begin`.
      auto it = std::upper_bound(shard.tensors.begin(), shard.tensors.end(), chunk.begin,
                                 [](uint64_t off, const PlannedTensor& t) { return off < t.data_offset; });
      if (it != shard.tensors.begin()) --it;
      const uint64_t chunk_end = chunk.begin + chunk.length;
      for (; it != shard.tensors.end() && it->data_offset < chunk_end; ++it) {
        const uint64_t t_begin = std::max(chunk.begin, it->data_offset);
        const uint64_t t_end = std::min(chunk_end, it->data_offset + it->size);
        if (t_begin >= t_end) continue;
        GenerateTensorBytes(tensors[it->index], it->index, options.seed, options.scale, t_begin - it->data_offset,
                            t_end - t_begin, buffer.data() + (t_begin - chunk.begin));
      }
      Status st = PwriteAll(shard.fd, buffer.data(), chunk.length, shard.header.size() + chunk.begin,
                            path_of(shard));
      if (!st.ok()) {
        std::lock_guard<std::mutex> lock(mu);
        if (!first_error) first_error = st.take_error();
        failed = true;
        break;
      }
      written.fetch_add(chunk.length);
    }
    std::lock_guard<std::mutex> lock(mu);
    ++finished_workers;
    cv.notify_all();
  };

  std::vector<std::thread> pool;
  pool.reserve(threads);
  for (unsigned i = 0; i < threads; ++i) pool.emplace_back(worker);
  {
    std::unique_lock<std::mutex> lock(mu);
    while (finished_workers < pool.size()) {
      cv.wait_for(lock, std::chrono::milliseconds(250));
      if (options.progress && finished_workers < pool.size()) {
        lock.unlock();
        options.progress(written.load(), total);
        lock.lock();
      }
    }
  }
  for (std::thread& t : pool) t.join();

  for (PlannedShard& s : shards) {
    if (::close(s.fd) != 0 && !first_error) {
      first_error = MakeError(ErrorCode::kIo, path_of(s) + ": close failed: " + std::strerror(errno));
    }
    s.fd = -1;
  }
  if (first_error) return *first_error;
  if (options.progress) options.progress(written.load(), total);

  json index;
  index["metadata"] = {{"total_size", total}};
  json weight_map = json::object();
  std::vector<std::string> names;
  for (const PlannedShard& s : shards) {
    names.push_back(s.name);
    for (const PlannedTensor& t : s.tensors) weight_map[tensors[t.index].name] = s.name;
  }
  index["weight_map"] = std::move(weight_map);
  BIGPLAN_RETURN_IF_ERROR(
      WriteWholeFile(directory + "/" + options.file_prefix + ".safetensors.index.json", index.dump(2) + "\n"));
  return names;
}

}  // namespace bigplan
