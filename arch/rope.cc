#include "arch/rope.h"

#include <cmath>
#include <cstdio>
#include <iterator>
#include <utility>

namespace bigplan::arch {
namespace {

constexpr const char* kRopeTypeNames[] = {"default", "linear", "dynamic", "llama3", "yarn", "longrope"};
static_assert(std::size(kRopeTypeNames) == kNumRopeTypes, "one name per rope type");
static_assert(static_cast<int>(RopeType::kLongrope) + 1 == kNumRopeTypes, "rope types are 0 .. kNumRopeTypes - 1");

std::string Num(double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.9g", v);
  return buf;
}

bool Positive(double v) { return std::isfinite(v) && v > 0; }

}  // namespace

const char* RopeTypeName(RopeType type) {
  const size_t i = static_cast<size_t>(type);
  return i < std::size(kRopeTypeNames) ? kRopeTypeNames[i] : "invalid";
}

Result<RopeType> ParseRopeType(std::string_view name) {
  for (size_t i = 0; i < std::size(kRopeTypeNames); ++i) {
    if (name == kRopeTypeNames[i]) return static_cast<RopeType>(i);
  }
  return MakeError(ErrorCode::kUnsupported, "unsupported rope type \"" + std::string(name) +
                                                "\" (known: default, linear, dynamic, llama3, yarn, longrope)");
}

Status CheckRopeParams(const RopeParams& r, uint32_t head_dim) {
  auto bad = [](const std::string& what) { return MakeError(ErrorCode::kInvalidArgument, "rope." + what); };
  if (static_cast<int>(r.type) >= kNumRopeTypes) {
    return bad("type " + std::to_string(static_cast<int>(r.type)) + " is unknown");
  }
  const std::string type = RopeTypeName(r.type);
  if (!Positive(r.theta)) return bad("theta " + Num(r.theta) + " must be finite and positive");
  if (r.rotary_dim % 2 != 0) return bad("rotary_dim " + std::to_string(r.rotary_dim) + " is odd");
  if (r.rotary_dim > head_dim) {
    return bad("rotary_dim " + std::to_string(r.rotary_dim) + " exceeds head_dim " + std::to_string(head_dim));
  }
  if (r.rotary_dim == 0 && r.type != RopeType::kDefault) return bad("rotary_dim is 0 for " + type + " rope");
  for (auto [name, v] : {std::pair<const char*, double>{"factor", r.factor}, {"low_freq_factor", r.low_freq_factor},
                         {"high_freq_factor", r.high_freq_factor}, {"attention_factor", r.attention_factor}}) {
    if (!Positive(v)) return bad(std::string(name) + " " + Num(v) + " must be finite and positive");
  }
  if (r.type == RopeType::kLlama3 && r.low_freq_factor == r.high_freq_factor) {
    return bad("high_freq_factor equals low_freq_factor (llama3)");
  }
  if ((r.type == RopeType::kLlama3 || r.type == RopeType::kYarn || r.type == RopeType::kLongrope) &&
      r.original_max_position_embeddings == 0) {
    return bad("original_max_position_embeddings is 0 for " + type + " rope");
  }
  if (r.type == RopeType::kYarn) {
    for (double v : {r.beta_fast, r.beta_slow, r.ramp_low, r.ramp_high}) {
      if (!std::isfinite(v)) return bad("yarn beta/ramp value " + Num(v) + " is not finite");
    }
    if (r.ramp_low == r.ramp_high) return bad("ramp_low equals ramp_high (yarn)");
  }
  if (r.type == RopeType::kLongrope) {
    for (auto [name, f] : {std::pair<const char*, const std::vector<float>*>{"short_factor", &r.short_factor},
                           {"long_factor", &r.long_factor}}) {
      if (f->size() != r.rotary_dim / 2) {
        return bad(std::string(name) + " has " + std::to_string(f->size()) + " entries, expected rotary_dim / 2 = " +
                   std::to_string(r.rotary_dim / 2));
      }
      for (float v : *f) {
        if (!Positive(v)) return bad(std::string(name) + " holds " + Num(v) + " (must be finite and positive)");
      }
    }
  } else if (!r.short_factor.empty() || !r.long_factor.empty()) {
    return bad("short_factor/long_factor given for " + type + " rope (longrope only)");
  }
  return Status::Ok();
}

std::string DescribeRope(const RopeParams& r) {
  std::string s = std::string(RopeTypeName(r.type)) + " theta " + Num(r.theta) + " dims " + std::to_string(r.rotary_dim);
  switch (r.type) {
    case RopeType::kDefault: break;
    case RopeType::kLinear:
    case RopeType::kDynamic: s += " factor " + Num(r.factor); break;
    case RopeType::kLlama3:
      s += " factor " + Num(r.factor) + " low_freq_factor " + Num(r.low_freq_factor) + " high_freq_factor " +
           Num(r.high_freq_factor) + " original " + std::to_string(r.original_max_position_embeddings);
      break;
    case RopeType::kYarn:
      s += " factor " + Num(r.factor) + " original " + std::to_string(r.original_max_position_embeddings) +
           " beta_fast " + Num(r.beta_fast) + " beta_slow " + Num(r.beta_slow) + " ramp [" + Num(r.ramp_low) + ", " +
           Num(r.ramp_high) + "] attention_factor " + Num(r.attention_factor);
      break;
    case RopeType::kLongrope: {
      auto list = [](const std::vector<float>& v) {
        std::string out = "[";
        for (size_t i = 0; i < v.size(); ++i) out += (i ? "," : "") + Num(v[i]);
        return out + "]";
      };
      s += " factor " + Num(r.factor) + " original " + std::to_string(r.original_max_position_embeddings) +
           " attention_factor " + Num(r.attention_factor) + " short_factor " + list(r.short_factor) +
           " long_factor " + list(r.long_factor);
      break;
    }
  }
  return s;
}

}  // namespace bigplan::arch
