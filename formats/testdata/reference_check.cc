// Helper for safetensors_reference_test.py: reads checkpoints with bigplan's readers, or writes one with
// bigplan's writer, and prints what it saw as JSON on stdout so the Python reference can compare.
//
//   reference_check read PATH          (a .safetensors file, an index file or a directory)
//   reference_check write DIR SEED     (writes a fixed tensor list with WriteRandomCheckpoint)

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "formats/checkpoint.h"
#include "formats/mapped_file.h"
#include "formats/safetensors.h"
#include "formats/writer.h"
#include "support/result.h"
#include "support/sha256.h"
#include "support/tool_main.h"

namespace bigplan {
namespace {

using nlohmann::json;

bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

Status Read(const std::string& path) {
  json out;
  if (EndsWith(path, ".safetensors")) {
    BIGPLAN_ASSIGN_OR_RETURN(SafetensorsFile file, SafetensorsFile::Open(path));
    out["metadata"] = file.header().metadata;
    out["data_start"] = file.header().data_start;
  }
  BIGPLAN_ASSIGN_OR_RETURN(Checkpoint ckpt, Checkpoint::Open(path));
  std::vector<MappedFile> shards;
  for (const std::string& p : ckpt.shard_paths()) {
    BIGPLAN_ASSIGN_OR_RETURN(MappedFile f, MappedFile::Open(p));
    shards.push_back(std::move(f));
  }
  json tensors = json::array();
  for (const TensorLocation& t : ckpt.tensors()) {
    BIGPLAN_ASSIGN_OR_RETURN(const uint8_t* data, shards[t.shard].View(t.offset, t.size_bytes));
    tensors.push_back({{"name", t.name},
                       {"dtype", DTypeString(t.dtype)},
                       {"shape", t.shape},
                       {"shard", ckpt.fingerprint().shards[t.shard].file_name},
                       {"size", t.size_bytes},
                       {"sha256", Sha256Hex(data, t.size_bytes)}});
  }
  out["tensors"] = tensors;
  out["index"] = ckpt.index_path();
  out["total_bytes"] = ckpt.total_bytes();
  json shard_list = json::array();
  for (const ShardFingerprint& s : ckpt.fingerprint().shards) {
    shard_list.push_back({{"file", s.file_name}, {"size", s.size_bytes}, {"header_sha256", s.header_digest}});
  }
  out["shards"] = shard_list;
  out["digest"] = ckpt.fingerprint().digest;
  std::printf("%s\n", out.dump(1).c_str());
  return Status::Ok();
}

Status Write(const std::string& dir, uint64_t seed) {
  const std::vector<WriteSpec> specs = {
      {"model.embed_tokens.weight", {300, 64}, DType::kBF16},
      {"model.layers.0.input_layernorm.weight", {64}, DType::kBF16},
      {"model.layers.0.self_attn.q_proj.weight", {64, 64}, DType::kF16},
      {"model.layers.0.mlp.down_proj.weight", {64, 257}, DType::kF32},
      {"transformer.ln_f.weight", {64}, DType::kF32},
      {"model.norm.weight", {64}, DType::kF16},
      {"position_ids", {3, 5}, DType::kI64},
      {"mask", {11}, DType::kBool},
      {"scale", {}, DType::kF64},
      {"codes", {17}, DType::kU8},
      {"q8", {9}, DType::kI8},
      {"empty", {0, 64}, DType::kBF16},
  };
  WriterOptions options;
  options.seed = seed;
  options.max_shard_bytes = 40000;
  BIGPLAN_ASSIGN_OR_RETURN(std::vector<std::string> files, WriteRandomCheckpoint(dir, specs, options));
  json tensors = json::array();
  for (uint32_t i = 0; i < specs.size(); ++i) {
    uint64_t n = DTypeBytes(specs[i].dtype);
    for (int64_t d : specs[i].shape) n *= static_cast<uint64_t>(d);
    std::vector<uint8_t> bytes(n);
    GenerateTensorBytes(specs[i], i, seed, options.scale, 0, n, bytes.data());
    tensors.push_back({{"name", specs[i].name},
                       {"dtype", DTypeString(specs[i].dtype)},
                       {"shape", specs[i].shape},
                       {"norm", IsNormWeightName(specs[i].name)},
                       {"sha256", Sha256Hex(bytes.data(), bytes.size())}});
  }
  json out = {{"files", files}, {"tensors", tensors}, {"scale", options.scale}};
  std::printf("%s\n", out.dump(1).c_str());
  return Status::Ok();
}

Status Main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.size() == 2 && args[0] == "read") return Read(args[1]);
  if (args.size() == 3 && args[0] == "write") return Write(args[1], std::strtoull(args[2].c_str(), nullptr, 10));
  return MakeError(ErrorCode::kInvalidArgument, "usage: reference_check read PATH | write DIR SEED");
}

}  // namespace
}  // namespace bigplan

int main(int argc, char** argv) {
  return bigplan::RunTool("reference_check", [&]() { return bigplan::Main(argc, argv); });
}
