// STUB (replaced by the quant branch): sizes of the row-quantized layout.
#pragma once
#include <cstdint>
#include <string_view>
#include "support/result.h"
namespace bigplan::quant {
enum class Format : uint8_t { kNone = 0, kFp8E4M3 = 1, kInt8 = 2, kInt4 = 3 };
Result<Format> ParseFormat(std::string_view name);
const char* FormatName(Format format);
Result<int64_t> DefaultGroup(Format format, int64_t k);
Result<uint64_t> RowBytes(Format format, int64_t k, int64_t group);
Result<uint64_t> TensorBytes(Format format, int64_t n, int64_t k, int64_t group);
}  // namespace bigplan::quant
#include <span>
#include "formats/dtype.h"
namespace bigplan::quant {
Status Quantize(std::span<const uint8_t> src, DType src_dtype, int64_t n, int64_t k, Format format, int64_t group,
                std::span<uint8_t> dst, int threads = 0);
Status Dequantize(std::span<const uint8_t> q, Format format, int64_t n, int64_t k, int64_t group, std::span<float> dst);
float Fp8E4M3ToFloat(uint8_t b);
uint8_t FloatToFp8E4M3(float f);
}  // namespace bigplan::quant
