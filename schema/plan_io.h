// Reading and writing plan files. Every reader goes through VerifyPlan before touching a plan's fields.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "schema/plan_generated.h"
#include "support/result.h"

namespace bigplan {

// The plan layout version this build writes and reads. See schema/README.md for when it changes.
inline constexpr uint32_t kPlanVersion = 2;

// Checks, in order: the buffer is large enough and carries the "BGPL" identifier (else kCorrupt,
// "not a bigplan plan"); the flatbuffer verifier accepts it (else kCorrupt); Plan.version == kPlanVersion
// (else kIncompatible naming both versions); every index inside the plan is in range (tensor, block,
// buffer, shard, step indices; buffers fit their arenas) (else kCorrupt naming the field). A plan carrying
// content_sha256 must match it (else kCorrupt: the file was damaged after it was written).
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

const char* DTypeName(schema::DType dtype);      // "BF16"
size_t DTypeSize(schema::DType dtype);           // bytes per element
const char* TierName(schema::Tier tier);         // "gpu", "cpu", "disk"

}  // namespace bigplan
