// Overflow-checked and saturating unsigned 64-bit arithmetic for sizes computed from untrusted inputs (shapes from
// config files and checkpoint headers, run shapes from flags).
#pragma once

#include <cstdint>
#include <initializer_list>
#include <limits>
#include <optional>

namespace bigplan {

inline constexpr uint64_t kU64Max = std::numeric_limits<uint64_t>::max();

// a x b / a + b, or nullopt when the exact result does not fit in 64 bits.
constexpr std::optional<uint64_t> CheckedMul(uint64_t a, uint64_t b) {
  uint64_t r = 0;
  if (__builtin_mul_overflow(a, b, &r)) return std::nullopt;
  return r;
}
constexpr std::optional<uint64_t> CheckedAdd(uint64_t a, uint64_t b) {
  uint64_t r = 0;
  if (__builtin_add_overflow(a, b, &r)) return std::nullopt;
  return r;
}
// The product / sum of all factors, or nullopt on overflow (an empty product is 1, an empty sum 0).
constexpr std::optional<uint64_t> CheckedProduct(std::initializer_list<uint64_t> factors) {
  uint64_t r = 1;
  for (uint64_t f : factors) {
    if (__builtin_mul_overflow(r, f, &r)) return std::nullopt;
  }
  return r;
}
constexpr std::optional<uint64_t> CheckedSum(std::initializer_list<uint64_t> terms) {
  uint64_t r = 0;
  for (uint64_t t : terms) {
    if (__builtin_add_overflow(r, t, &r)) return std::nullopt;
  }
  return r;
}

// Saturating forms: kU64Max instead of a wrapped-around value, so that an impossible size stays impossible (it never
// fits any budget) instead of becoming small.
constexpr uint64_t SatMul(uint64_t a, uint64_t b) { return CheckedMul(a, b).value_or(kU64Max); }
constexpr uint64_t SatAdd(uint64_t a, uint64_t b) { return CheckedAdd(a, b).value_or(kU64Max); }
constexpr uint64_t SatProduct(std::initializer_list<uint64_t> factors) { return CheckedProduct(factors).value_or(kU64Max); }
constexpr uint64_t SatSum(std::initializer_list<uint64_t> terms) { return CheckedSum(terms).value_or(kU64Max); }

}  // namespace bigplan
