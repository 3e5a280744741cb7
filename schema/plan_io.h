// Reading and writing plan files. Every reader goes through VerifyPlan before touching a plan's fields.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "arch/block_kind.h"
#include "arch/rope.h"
#include "formats/quant.h"
#include "schema/plan_generated.h"
#include "support/result.h"

namespace bigplan {

// The plan layout version this build writes and reads. See schema/README.md for when it changes.
inline constexpr uint32_t kPlanVersion = 7;
// The most tokens a forward may have for the host to compute a plan's `host` stream units (Plan.host_max_tokens).
inline constexpr uint32_t kMaxHostTokens = 16;

// The schema's enums mirror the architecture registry's (same values), checked here at compile time.
static_assert(static_cast<uint8_t>(schema::BlockKind::Embedding) == static_cast<uint8_t>(arch::BlockKind::kEmbedding));
static_assert(static_cast<uint8_t>(schema::BlockKind::PositionEmbedding) ==
              static_cast<uint8_t>(arch::BlockKind::kPositionEmbedding));
static_assert(static_cast<uint8_t>(schema::BlockKind::DecoderLayer) ==
              static_cast<uint8_t>(arch::BlockKind::kDecoderLayer));
static_assert(static_cast<uint8_t>(schema::BlockKind::FinalNorm) == static_cast<uint8_t>(arch::BlockKind::kFinalNorm));
static_assert(static_cast<uint8_t>(schema::BlockKind::LmHead) == static_cast<uint8_t>(arch::BlockKind::kLmHead));
static_assert(static_cast<int>(schema::BlockKind::MAX) + 1 == arch::kNumBlockKinds);
static_assert(static_cast<uint8_t>(schema::RopeType::Default) == static_cast<uint8_t>(arch::RopeType::kDefault));
static_assert(static_cast<uint8_t>(schema::RopeType::Linear) == static_cast<uint8_t>(arch::RopeType::kLinear));
static_assert(static_cast<uint8_t>(schema::RopeType::Dynamic) == static_cast<uint8_t>(arch::RopeType::kDynamic));
static_assert(static_cast<uint8_t>(schema::RopeType::Llama3) == static_cast<uint8_t>(arch::RopeType::kLlama3));
static_assert(static_cast<uint8_t>(schema::RopeType::Yarn) == static_cast<uint8_t>(arch::RopeType::kYarn));
static_assert(static_cast<uint8_t>(schema::RopeType::Longrope) == static_cast<uint8_t>(arch::RopeType::kLongrope));
static_assert(static_cast<int>(schema::RopeType::MAX) + 1 == arch::kNumRopeTypes);

static_assert(static_cast<uint8_t>(schema::WeightFormat::Plain) == static_cast<uint8_t>(quant::Format::kNone));
static_assert(static_cast<uint8_t>(schema::WeightFormat::Fp8E4M3) == static_cast<uint8_t>(quant::Format::kFp8E4M3));
static_assert(static_cast<uint8_t>(schema::WeightFormat::Int8) == static_cast<uint8_t>(quant::Format::kInt8));
static_assert(static_cast<uint8_t>(schema::WeightFormat::Int4) == static_cast<uint8_t>(quant::Format::kInt4));
static_assert(static_cast<int>(schema::WeightFormat::MAX) == 3);
inline quant::Format FormatOf(schema::WeightFormat f) { return static_cast<quant::Format>(f); }
inline schema::WeightFormat ToSchemaFormat(quant::Format f) { return static_cast<schema::WeightFormat>(f); }

inline schema::BlockKind ToSchemaBlockKind(arch::BlockKind k) { return static_cast<schema::BlockKind>(k); }
inline schema::RopeType ToSchemaRopeType(arch::RopeType t) { return static_cast<schema::RopeType>(t); }

// Checks, in order: the buffer is large enough and carries the "BGPL" identifier (else kCorrupt,
// "not a bigplan plan"); the flatbuffer verifier accepts it (else kCorrupt); Plan.version == kPlanVersion
// (else kIncompatible naming both versions; an older version: "made by an older planner ...: plan again"); every
// index inside the plan is in range (tensor, block, buffer, shard, step indices; buffers fit their arenas); every
// block's block_kind is known and agrees with its `kind` string; config.rope is present, its type known and its
// values pass arch::CheckRopeParams for config.head_dim, its rotary_dim agrees with config.rotary_dim (else
// kCorrupt naming the field). A plan carrying content_sha256 must match it (else kCorrupt: the file was damaged
// after it was written).
// `source` (a file name) prefixes every message. On success the returned pointer aliases `data`.
Result<const schema::Plan*> VerifyPlan(const uint8_t* data, size_t size, const std::string& source);

// The placeholder a writer stores in Plan.content_sha256 before SealPlan fills in the checksum.
inline constexpr char kPlanChecksumPlaceholder[] =
    "0000000000000000000000000000000000000000000000000000000000000000";

// Fills in Plan.content_sha256 of a finished plan buffer (written with kPlanChecksumPlaceholder), so that
// VerifyPlan detects any later change to the file's bytes. kInternal if the buffer has no placeholder.
Status SealPlan(std::vector<uint8_t>* bytes);

// Reads a whole plan file into memory under support/file_read.h's rules (regular files only, non-blocking open,
// at most kMaxPlanFileBytes). Other kinds of files: ReadBoundedFileBytes with their own cap.
Result<std::vector<uint8_t>> ReadFileBytes(const std::string& path);

// Writes bytes to `path` atomically (temporary file + rename), kIo on failure.
Status WriteFileBytes(const std::string& path, const uint8_t* data, size_t size);

// A verified plan loaded from a file; owns its bytes.
class PlanFile {
 public:
  static Result<PlanFile> Load(const std::string& path);
  const schema::Plan& plan() const { return *plan_; }
  const std::vector<uint8_t>& bytes() const { return bytes_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::vector<uint8_t> bytes_;
  const schema::Plan* plan_ = nullptr;
};

// The block's kind, typed (a block of a verified plan has a known one).
arch::BlockKind BlockKindOf(const schema::Block& block);
// The plan's RoPE, typed: config.rope of a verified plan (which always has one) converted field by field.
arch::RopeParams RopeParamsOf(const schema::RopeParams& rope);
// Writes `rope` as a schema::RopeParams table (the planner and tests).
flatbuffers::Offset<schema::RopeParams> CreateRopeParams(flatbuffers::FlatBufferBuilder& fb,
                                                         const arch::RopeParams& rope);

// A tensor-parallel weight's extent along its slice_dim: slice_end - slice_begin plus its further row ranges
// (slice_rows). 0 for a weight that is not a slice; -1 for a reversed range or a sum past int64.
int64_t SliceExtent(const schema::Weight& w);

const char* DTypeName(schema::DType dtype);      // "BF16"
size_t DTypeSize(schema::DType dtype);           // bytes per element
const char* TierName(schema::Tier tier);         // "gpu", "cpu", "disk"
// The bytes of one row (shape[0] slice) of a weight of `tensor`'s shape stored as `weight` says: numel / rows x
// DTypeSize(dtype) for Plain, quant::RowBytes(format, cols, group_size) for a quantized 2-D weight; 0 when the
// weight's format does not fit its shape (VerifyPlan refuses such plans), or the shape has no rows, a negative
// dimension or a row too large for 64 bits.
uint64_t WeightRowBytes(const schema::Weight& weight, const schema::Tensor& tensor);

}  // namespace bigplan
