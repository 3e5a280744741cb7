// A checkpoint: one or more safetensors shards and, optionally, an index naming which shard holds each tensor.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "formats/dtype.h"
#include "formats/safetensors.h"
#include "support/result.h"

namespace bigplan {

struct ShardFingerprint {
  std::string file_name;   // relative to the checkpoint directory
  uint64_t size_bytes = 0;
  std::string header_digest;  // sha256 hex of the first 8 + N bytes
};

// Identifies a checkpoint's exact bytes cheaply: shard names, sizes and header digests, plus a digest over them.
struct CheckpointFingerprint {
  std::vector<ShardFingerprint> shards;
  std::string digest;  // sha256 hex over "name\nsize\nheader_digest\n" of every shard, in order
};

struct TensorLocation {
  std::string name;
  uint32_t shard = 0;   // index into Checkpoint::shards()
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  uint64_t offset = 0;  // absolute byte offset in the shard file
  uint64_t size_bytes = 0;
};

// Checks that a shard file name taken from an index stays inside the index's directory, lexically: a relative
// path, no NUL byte, and no ".." component that climbs above the directory once the path is normalized
// ("sub/../a.safetensors" is fine, "../a.safetensors", "a/../../b" and "/etc/passwd" are not). Symbolic links are
// not resolved: a name inside the directory that is a link elsewhere (the Hugging Face cache's snapshot folders
// link into its blobs/ folder) stays allowed. kCorrupt naming `source`, the tensor and the name; the file named is
// never opened, so nothing of its content can reach the message.
Status CheckShardNameContained(const std::string& file_name, const std::string& tensor, const std::string& source);

// Parses an index file's JSON from memory: either Hugging Face's {"metadata": ..., "weight_map": {tensor: file}}
// (recognized by its "weight_map" key) or the flat {"tensor": "file"} form. Returns tensor -> shard file name
// (relative to the index's directory). kCorrupt, with the message starting with `source` and naming the tensor,
// for malformed JSON, a non-object top level, a weight_map that is not an object, a file name that is not a
// non-empty string, a file name that leaves the index's directory (CheckShardNameContained), or a repeated
// tensor name. File names come back lexically normalized ("./sub/../a.safetensors" -> "a.safetensors").
Result<std::map<std::string, std::string>> ParseIndexJson(std::string_view json, const std::string& source);

class Checkpoint {
 public:
  // `path` may be:
  //   - a directory holding model.safetensors.index.json (Hugging Face: {"metadata": ..., "weight_map": {tensor: file}}),
  //     or another *.safetensors.index.json, or the flat {"tensor": "file"} index of the Accelerate docs
  //     (index.json), or just one or more *.safetensors files (all are read, no index);
  //   - an index file itself;
  //   - a single .safetensors file.
  // Every shard header is parsed and validated. Errors (each names the file and the tensor):
  //   kNotFound: path or a listed shard missing; a tensor listed in the index but absent from its shard;
  //   kCorrupt: malformed index JSON or shard (see ParseSafetensorsHeader);
  //   kMismatch: a tensor present in two shards; a shard that holds tensors the index does not list for it.
  static Result<Checkpoint> Open(const std::string& path);

  const std::string& directory() const { return directory_; }
  const std::vector<std::string>& shard_paths() const { return shard_paths_; }  // absolute or as given
  const std::vector<TensorLocation>& tensors() const { return tensors_; }  // sorted by name
  const TensorLocation* Find(const std::string& name) const;  // nullptr if absent
  const CheckpointFingerprint& fingerprint() const { return fingerprint_; }
  uint64_t total_bytes() const;  // sum of tensor sizes
  // The index file used (Hugging Face or flat), or empty when the shards were read without one.
  const std::string& index_path() const { return index_path_; }

 private:
  std::string directory_;
  std::string index_path_;
  std::vector<std::string> shard_paths_;
  std::vector<TensorLocation> tensors_;
  std::map<std::string, size_t> by_name_;
  CheckpointFingerprint fingerprint_;
};

}  // namespace bigplan
