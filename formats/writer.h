// Writes safetensors checkpoints with deterministic random weights, for tests and benchmarks.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "formats/dtype.h"
#include "support/result.h"

namespace bigplan {

struct TensorSpec {
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
};

// Writes `tensors` (in the given order) into `directory` (created if needed) as sharded safetensors plus a
// Hugging Face model.safetensors.index.json (with metadata.total_size). Data is generated and written in
// chunks (bounded memory), with several threads. The same specs and seed give the same bytes.
// Returns the list of shard file names.
Result<std::vector<std::string>> WriteRandomCheckpoint(const std::string& directory,
                                                       const std::vector<TensorSpec>& tensors,
                                                       const WriterOptions& options);

}  // namespace bigplan
