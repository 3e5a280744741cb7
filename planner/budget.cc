#include "planner/budget.h"

#include <cctype>
#include <map>
#include <string>

#include "support/units.h"

namespace bigplan {
namespace {

std::string Trim(std::string_view s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return std::string(s.substr(b, e - b));
}

std::string Lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

Error BadPiece(const std::string& piece, const std::string& why) {
  return MakeError(ErrorCode::kInvalidArgument, "--max-memory: \"" + piece + "\": " + why +
                                                    " (expected DEVICE=SIZE,... with DEVICE cuda:N, N, cpu or disk, e.g. "
                                                    "cuda:0=10GiB,cpu=30GiB,disk=200GiB)");
}

// Parses a device name: "cuda:N", "N", "cpu", "disk". Returns the ordinal for a GPU, -1 for cpu, -2 for disk.
Result<int> ParseDevice(const std::string& device, const std::string& piece) {
  std::string d = Lower(device);
  if (d == "cpu") return -1;
  if (d == "disk") return -2;
  std::string digits = d;
  if (d.rfind("cuda:", 0) == 0) digits = d.substr(5);
  if (digits.empty() || digits.size() > 6) return BadPiece(piece, "unknown device \"" + device + "\"");
  for (char c : digits) {
    if (!std::isdigit(static_cast<unsigned char>(c))) return BadPiece(piece, "unknown device \"" + device + "\"");
  }
  return std::stoi(digits);
}

Status Set(MemoryBudget& budget, int device, uint64_t bytes, const std::string& piece) {
  bool dup = false;
  if (device >= 0) {
    dup = !budget.gpus.emplace(device, bytes).second;
  } else if (device == -1) {
    dup = budget.cpu.has_value();
    budget.cpu = bytes;
  } else {
    dup = budget.disk.has_value();
    budget.disk = bytes;
  }
  if (dup) return BadPiece(piece, "device given twice");
  return Status::Ok();
}

}  // namespace

std::vector<std::pair<std::string, uint64_t>> MemoryBudget::Entries() const {
  std::vector<std::pair<std::string, uint64_t>> out;
  for (const auto& [ordinal, bytes] : gpus) out.emplace_back("cuda:" + std::to_string(ordinal), bytes);
  if (cpu) out.emplace_back("cpu", *cpu);
  if (disk) out.emplace_back("disk", *disk);
  return out;
}

std::string MemoryBudget::ToString() const {
  std::string s;
  for (const auto& [name, bytes] : Entries()) s += (s.empty() ? "" : ",") + name + "=" + FormatBytes(bytes);
  if (!disk) s += std::string(s.empty() ? "" : ",") + "disk=unlimited";
  return s;
}

Result<MemoryBudget> ParseMaxMemory(std::string_view spec) {
  MemoryBudget budget;
  if (Trim(spec).empty()) return BadPiece(std::string(spec), "empty");
  size_t start = 0;
  while (start <= spec.size()) {
    size_t comma = spec.find(',', start);
    if (comma == std::string_view::npos) comma = spec.size();
    const std::string piece = Trim(spec.substr(start, comma - start));
    start = comma + 1;
    if (piece.empty()) return BadPiece(std::string(spec), "empty entry");
    const size_t eq = piece.find('=');
    if (eq == std::string::npos) return BadPiece(piece, "missing \"=\"");
    const std::string device = Trim(std::string_view(piece).substr(0, eq));
    const std::string size = Trim(std::string_view(piece).substr(eq + 1));
    BIGPLAN_ASSIGN_OR_RETURN(int d, ParseDevice(device, piece));
    Result<uint64_t> bytes = ParseByteSize(size);
    if (!bytes.ok()) return BadPiece(piece, bytes.error().message);
    BIGPLAN_RETURN_IF_ERROR(Set(budget, d, *bytes, piece));
  }
  return budget;
}

Result<MemoryBudget> MemoryBudgetFromJson(const nlohmann::json& max_memory) {
  if (!max_memory.is_object()) {
    return MakeError(ErrorCode::kInvalidArgument, "max_memory: expected a JSON object of device -> size");
  }
  MemoryBudget budget;
  for (auto it = max_memory.begin(); it != max_memory.end(); ++it) {
    const std::string piece = it.key() + "=" + it.value().dump();
    BIGPLAN_ASSIGN_OR_RETURN(int d, ParseDevice(it.key(), piece));
    uint64_t bytes = 0;
    if (it.value().is_number_unsigned() || (it.value().is_number_integer() && it.value().get<int64_t>() >= 0)) {
      bytes = it.value().get<uint64_t>();
    } else if (it.value().is_string()) {
      Result<uint64_t> b = ParseByteSize(it.value().get<std::string>());
      if (!b.ok()) return BadPiece(piece, b.error().message);
      bytes = *b;
    } else {
      return BadPiece(piece, "expected a byte count or a size string");
    }
    BIGPLAN_RETURN_IF_ERROR(Set(budget, d, bytes, piece));
  }
  return budget;
}

nlohmann::json MemoryBudgetToJson(const MemoryBudget& budget) {
  nlohmann::ordered_json j;
  for (const auto& [ordinal, bytes] : budget.gpus) j[std::to_string(ordinal)] = bytes;
  if (budget.cpu) j["cpu"] = *budget.cpu;
  if (budget.disk) j["disk"] = *budget.disk;
  return nlohmann::json::parse(j.dump());
}

Status ValidateRunShape(const RunShape& run, const ModelDescription& model) {
  if (run.max_batch == 0) return MakeError(ErrorCode::kInvalidArgument, "run shape: max_batch must be positive");
  if (run.max_seq_len == 0) return MakeError(ErrorCode::kInvalidArgument, "run shape: max_seq_len must be positive");
  if (run.max_seq_len > model.config.max_position_embeddings) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "run shape: max_seq_len " + std::to_string(run.max_seq_len) + " exceeds the model's " +
                         "max_position_embeddings " + std::to_string(model.config.max_position_embeddings));
  }
  return Status::Ok();
}

Result<DType> ParseExecDType(std::string_view text) {
  const std::string t = Lower(Trim(text));
  if (t == "bf16" || t == "bfloat16") return DType::kBF16;
  if (t == "fp16" || t == "f16" || t == "float16" || t == "half") return DType::kF16;
  if (t == "fp32" || t == "f32" || t == "float32" || t == "float") return DType::kF32;
  return MakeError(ErrorCode::kInvalidArgument,
                   "--dtype: \"" + std::string(text) + "\" is not an execution dtype (expected bf16, fp16 or fp32)");
}

DType DefaultExecDType(const ModelDescription& model) {
  std::map<DType, uint64_t> bytes;
  for (const BlockDesc& b : model.blocks) {
    for (const TensorSpec& t : b.params) {
      if (IsFloatingPoint(t.dtype)) bytes[t.dtype] += t.bytes();
    }
  }
  DType best = DType::kF32;
  uint64_t best_bytes = 0;
  for (const auto& [dt, n] : bytes) {
    if (n > best_bytes) {
      best = dt;
      best_bytes = n;
    }
  }
  // Execution dtypes are bf16, fp16 and fp32: an fp64 checkpoint runs in fp32, an fp8 one in bf16.
  if (best == DType::kF64) return DType::kF32;
  if (best == DType::kF8E4M3 || best == DType::kF8E5M2) return DType::kBF16;
  return best;
}

Result<DType> ResolveExecDType(const std::optional<std::string>& flag, const ModelDescription& model) {
  if (flag && !Trim(*flag).empty()) return ParseExecDType(*flag);
  return DefaultExecDType(model);
}

}  // namespace bigplan
