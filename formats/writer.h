// Writes safetensors checkpoints with deterministic random weights, for tests and benchmarks.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "formats/dtype.h"
#include "support/result.h"

namespace bigplan {

struct WriteSpec {
  std::string name;
  std::vector<int64_t> shape;
  DType dtype = DType::kBF16;
};

struct WriterOptions {
  uint64_t max_shard_bytes = 2ull << 30;  // a new shard starts when the next tensor would exceed this
  uint64_t seed = 0;
  float scale = 0.02f;                    // weights are uniform in [-scale, scale]; norms' weights near 1
  std::string file_prefix = "model";      // model-00001-of-00003.safetensors, or model.safetensors if one shard
  // Called with (bytes written, total bytes) now and then, for progress reporting; may be empty.
  std::function<void(uint64_t, uint64_t)> progress;
  int threads = 0;  // worker threads generating and writing data; 0: the machine's cores (at most 16)
};

// Writes `tensors` (in the given order) into `directory` (created if needed) as sharded safetensors plus a
// Hugging Face model.safetensors.index.json (with metadata.total_size). Data is generated and written in
// chunks (bounded memory), with several threads. The same specs and seed give the same bytes.
// Returns the list of shard file names.
Result<std::vector<std::string>> WriteRandomCheckpoint(const std::string& directory,
                                                       const std::vector<WriteSpec>& tensors,
                                                       const WriterOptions& options);

// Tensors whose weights are written near 1 instead of near 0: the registry's norm-weight rule
// (arch::IsNormWeightName, which covers every family's norm weights): names ending in "norm.weight" (e.g.
// "model.norm.weight", "input_layernorm.weight") or whose last component before ".weight" starts with "ln_"
// ("h.0.ln_1.weight", "ln_f.weight").
bool IsNormWeightName(std::string_view name);

// The bytes WriteRandomCheckpoint writes for tensor number `tensor_index` of its list, restricted to
// [byte_offset, byte_offset + length) of the tensor's data. Values are a pure function of (seed, tensor_index,
// position): every 8-byte word w of a tensor comes from splitmix64 keyed by (seed, tensor_index) at counter w.
// F32/F16/BF16/F64 hold uniform values in [-scale, scale] (1 + that for norm weights), BOOL holds 0/1, other
// dtypes hold the raw random bytes.
void GenerateTensorBytes(const WriteSpec& spec, uint32_t tensor_index, uint64_t seed, float scale,
                         uint64_t byte_offset, uint64_t length, uint8_t* out);

// Parses a tensor list {"tensors": [{"name": "w", "shape": [4096, 4096], "dtype": "BF16"}, ...]} ("dtype"
// defaults to BF16). kCorrupt naming `source` and the entry for malformed input, kUnsupported for an unknown
// dtype.
Result<std::vector<WriteSpec>> ParseWriteSpecsJson(std::string_view json, const std::string& source);

}  // namespace bigplan
