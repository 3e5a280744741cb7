// Element types of checkpoint tensors (the safetensors dtype strings).
#pragma once

#include <cstddef>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "support/result.h"

namespace bigplan {

enum class DType : uint8_t {
  // Values match schema::DType so the two convert by static_cast.
  kF32 = 0, kF16 = 1, kBF16 = 2, kF64 = 3, kI64 = 4, kI32 = 5, kI16 = 6, kI8 = 7, kU8 = 8, kBool = 9,
  kF8E4M3 = 10, kF8E5M2 = 11,
};

// "F32", "BF16", "F8_E4M3", ... -> DType; kUnsupported naming the string otherwise.
Result<DType> ParseDType(std::string_view name);
// The safetensors spelling: "BF16".
const char* DTypeString(DType dtype);
size_t DTypeBytes(DType dtype);
bool IsFloatingPoint(DType dtype);

// Scalar conversions of bfloat16 / float16 bit patterns. Widening is exact (subnormals, infinities and NaN
// included); narrowing rounds to nearest, ties to even; NaN stays a (quiet) NaN, and float16 overflows to infinity.
[[gnu::always_inline]] inline float Bf16ToFloat(uint16_t bits) {
  const uint32_t u = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
[[gnu::always_inline]] inline uint16_t FloatToBf16(float value) {
  uint32_t u;
  std::memcpy(&u, &value, 4);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);  // quiet NaN
  return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}
[[gnu::always_inline]] inline float F16ToFloat(uint16_t bits) {
  const uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
  const uint32_t em = bits & 0x7FFFu;
  // Rebias by scaling: exact for normals and subnormals alike.
  uint32_t u = em << 13;
  float f;
  std::memcpy(&f, &u, 4);
  f *= 0x1p112f;
  std::memcpy(&u, &f, 4);
  u = em >= 0x7C00u ? (0x7F800000u | (em << 13)) : u;  // infinity, NaN
  u |= sign;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint16_t FloatToF16(float value) {
  uint32_t x;
  std::memcpy(&x, &value, 4);
  const uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t a = x & 0x7FFFFFFFu;
  if (a >= 0x47800000u) {  // >= 65536: inf (or NaN)
    return static_cast<uint16_t>(sign | (a > 0x7F800000u ? 0x7E00u : 0x7C00u));
  }
  if (a < 0x38800000u) {  // below the smallest normal half: subnormal, in units of 2^-24
    float mag;
    std::memcpy(&mag, &a, 4);
    return static_cast<uint16_t>(sign | static_cast<uint32_t>(std::nearbyint(mag * 16777216.0f)));
  }
  const uint32_t odd = (a >> 13) & 1u;
  a += 0xC8000FFFu + odd;  // rebias the exponent (127 -> 15) and round to nearest even
  return static_cast<uint16_t>(sign | (a >> 13));
}

}  // namespace bigplan
