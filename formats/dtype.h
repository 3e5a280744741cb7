// Element types of checkpoint tensors (the safetensors dtype strings).
#pragma once

#include <cstddef>
#include <cstdint>
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

}  // namespace bigplan
