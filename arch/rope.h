// Rotary position embeddings, typed: the RoPE types bigplan computes and their parameters resolved once from a
// model's config (arch::ResolveRope in registry.h does that, as transformers' ROPE_INIT_FUNCTIONS read the config).
// The plan stores these values in schema::RopeParams (mirrored enum, checked at compile time in schema/plan_io.h);
// the executor's kernels compute from them without reading any JSON. No dependencies beyond //support:result.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "support/result.h"

namespace bigplan::arch {

enum class RopeType : uint8_t {
  kDefault = 0,   // inv_freq = 1 / theta^(2i / dim)
  kLinear = 1,    // inv_freq / factor
  kDynamic = 2,   // NTK-aware: theta rescaled for forwards longer than max_position_embeddings
  kLlama3 = 3,    // Llama 3.1's smoothed per-band scaling (factor, low/high_freq_factor, original length)
  kYarn = 4,      // ramp between interpolated and extrapolated frequencies, cos/sin x attention_factor
  kLongrope = 5,  // per-frequency divisors (short/long factors), cos/sin x attention_factor
};
inline constexpr int kNumRopeTypes = 6;

// "default", "linear", "dynamic", "llama3", "yarn", "longrope" ("invalid" for other values).
const char* RopeTypeName(RopeType type);
// Inverse of RopeTypeName; kUnsupported naming the string otherwise.
Result<RopeType> ParseRopeType(std::string_view name);

// Everything the RoPE of a model computes from, with transformers' defaults applied and derived values (yarn's ramp,
// the attention factors) computed: the kernels read these and nothing else.
struct RopeParams {
  RopeType type = RopeType::kDefault;
  double theta = 10000.0;         // the base (rope_theta; a rope_theta inside the scaling object wins)
  // Dims rotated per head (the first rotary_dim of each head): head_dim for full rotary, less for partial rotary.
  // 0: the model has no RoPE (learned positions); in a ModelSpec built by hand, also "the spec's rotary_dim".
  uint32_t rotary_dim = 0;
  double factor = 1.0;            // linear, dynamic, llama3, yarn: the scaling factor; longrope: the context
                                  // extension (max_position_embeddings / original) its attention_factor came from
  double low_freq_factor = 1.0;   // llama3
  double high_freq_factor = 4.0;  // llama3
  // llama3, yarn, longrope: the pretraining length (longrope switches to long_factor past it); the model's
  // max_position_embeddings for the other types.
  uint32_t original_max_position_embeddings = 0;
  // yarn: beta_fast / beta_slow (defaults 32 and 1) give the correction range [ramp_low, ramp_high] of the dims over
  // which interpolated and extrapolated frequencies blend (transformers' find_correction_range and
  // linear_ramp_factor, truncation included); only ramp_low / ramp_high are computed from.
  double beta_fast = 0;
  double beta_slow = 0;
  double ramp_low = 0;
  double ramp_high = 0;
  // cos and sin are multiplied by it: yarn's mscale (or the config's attention_factor), longrope's
  // sqrt(1 + ln(factor) / ln(original)) (or the config's); 1 for the other types.
  double attention_factor = 1.0;
  // longrope: per-frequency divisors, rotary_dim / 2 each (float32, as transformers makes them); the long ones for
  // forwards longer than original_max_position_embeddings. Empty for the other types.
  std::vector<float> short_factor;
  std::vector<float> long_factor;

  bool operator==(const RopeParams&) const = default;
};

// Whether `rope` is something the kernels can compute for heads of `head_dim` dims: a known type; theta, factor,
// low/high_freq_factor and attention_factor finite and positive; rotary_dim even, at most head_dim, positive unless
// the type is default; llama3: low_freq_factor != high_freq_factor; llama3, yarn, longrope:
// original_max_position_embeddings > 0; yarn: a finite ramp with ramp_low != ramp_high; longrope: short_factor and
// long_factor of rotary_dim / 2 finite positive numbers (other types: none). kInvalidArgument naming the field
// ("rope.factor ...") otherwise.
Status CheckRopeParams(const RopeParams& rope, uint32_t head_dim);

// One line for people: "llama3 theta 500000 dims 128 factor 8 low_freq_factor 1 high_freq_factor 4 original 8192".
std::string DescribeRope(const RopeParams& rope);

}  // namespace bigplan::arch
