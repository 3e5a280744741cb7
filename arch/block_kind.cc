#include "arch/block_kind.h"

#include <iterator>
#include <string>

namespace bigplan::arch {
namespace {

constexpr const char* kBlockKindNames[] = {"embedding", "position_embedding", "decoder_layer", "final_norm",
                                           "lm_head"};
static_assert(std::size(kBlockKindNames) == kNumBlockKinds, "one name per block kind");
static_assert(static_cast<int>(BlockKind::kLmHead) + 1 == kNumBlockKinds, "block kinds are 0 .. kNumBlockKinds - 1");

}  // namespace

const char* BlockKindName(BlockKind kind) {
  const size_t i = static_cast<size_t>(kind);
  return i < std::size(kBlockKindNames) ? kBlockKindNames[i] : "invalid";
}

Result<BlockKind> ParseBlockKind(std::string_view name) {
  for (size_t i = 0; i < std::size(kBlockKindNames); ++i) {
    if (name == kBlockKindNames[i]) return static_cast<BlockKind>(i);
  }
  return MakeError(ErrorCode::kInvalidArgument,
                   "unknown block kind \"" + std::string(name) +
                       "\" (expected embedding, position_embedding, decoder_layer, final_norm or lm_head)");
}

}  // namespace bigplan::arch
