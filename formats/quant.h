// Quantized weights in bigplan's row-quantized layout: what the planner sizes, what the loader writes (by quantizing
// bf16/f16/f32 checkpoint tensors, or by converting pre-quantized FP8 and GPTQ checkpoints without requantizing),
// and what the GPU and CPU kernels read.
//
// The layout. A weight W has n rows (outputs) and k columns (inputs); the group size g divides k (g == k: one group
// per row). Row r starts at byte r * RowBytes(format, k, g); a row is its data followed by k / g scale records, with
// no padding anywhere. All multi-byte values are little-endian.
//   kFp8E4M3: data = k bytes of float8 e4m3fn (sign bit 7, 4 exponent bits with bias 7, 3 mantissa bits; exponent 0
//             holds the subnormals m * 2^-9; largest finite 448; 0x7F and 0xFF are NaN, there is no infinity);
//             record = float32 scale s; w = fp8 * s.
//   kInt8:    data = k int8 q in [-127, 127]; record = float32 s; w = q * s.
//   kInt4:    data = k / 2 bytes, byte j = (q[2j] << 4) | q[2j + 1] (the HIGH nibble holds the even column), q in
//             0..15; record = two bf16, the scale s then the zero z; w = (q - 8) * s + z. This is the dequantization
//             of PyTorch's tinygemm kernel (_weight_int4pack_mm), whose packer takes this byte order.
// Everything here is plain C++ over little-endian byte buffers: no LibTorch.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "formats/dtype.h"
#include "support/result.h"

namespace bigplan::quant {

enum class Format : uint8_t { kNone = 0, kFp8E4M3 = 1, kInt8 = 2, kInt4 = 3 };

// "bf16" or "none" -> kNone, "fp8", "int8", "int4"; kInvalidArgument naming the string and listing the choices.
Result<Format> ParseFormat(std::string_view name);
// "none", "fp8", "int8", "int4".
const char* FormatName(Format format);

// The group size bigplan uses when it quantizes an [n, k] weight at load: k (one scale per row) for fp8 and int8;
// for int4 the largest of 128, 64 and 32 that divides k (kUnsupported naming k when none does). kInvalidArgument for
// k <= 0 and for kNone.
Result<int64_t> DefaultGroup(Format format, int64_t k);

// Bytes of one row. kNone: 2 * k (a bf16 row; `group` is not looked at). Otherwise kInvalidArgument, naming the
// values, for k <= 0, group <= 0, a group that does not divide k, or an odd k for int4.
Result<uint64_t> RowBytes(Format format, int64_t k, int64_t group);
// Bytes of the values of a row's first k columns (where its records begin, for a row of k columns): 2 k (kNone),
// k (fp8, int8), k / 2 (int4; k even). 0 for k <= 0.
uint64_t DataBytes(Format format, int64_t k);
// n * RowBytes; also kInvalidArgument for n < 0 and for a size that does not fit in 64 bits.
Result<uint64_t> TensorBytes(Format format, int64_t n, int64_t k, int64_t group);

// Quantizes the row-major [n, k] tensor `src` (src_dtype kBF16, kF16 or kF32, little-endian, any alignment) into
// `dst`, which must hold exactly TensorBytes(format, n, k, group) bytes. `threads` <= 0 uses every hardware thread;
// small tensors use fewer. How each format chooses its values:
//   fp8:  per group, s = amax / 448 (s = 1 for an all-zero group); codes = FloatToFp8E4M3(w * (1 / s)).
//   int8: per group, s = amax / 127 (s = 1 for an all-zero group); q = round-half-even(w * (1 / s)), clamped to +-127.
//   int4: per group, asymmetric: the range [p * min, p * max] gives s = bf16(range / 15) and z = bf16(lo + 8 s), and
//         q = clamp(round-half-even(w / s + 8 - z / s), 0, 15) with those rounded values (so Dequantize reproduces
//         exactly the error that was minimized). p = 1 - 0.01 i for i in 0..19 (1.00 down to 0.81): i = 0, 4, 8, 12, 16
//         are tried, then the i within 2 of the best of those; the least squared error of the group wins (p = 1 is
//         plain min/max rounding, so the result is never worse than that). This matches trying all 20 to within 0.1%
//         of the error at under half the work. A constant group stores s = 0, z = bf16(value), q = 8.
// The bytes written depend only on the input (not on the thread count, the CPU or its vector width).
// Errors: kInvalidArgument for a bad shape or group (as RowBytes), a src size other than n * k * dtype size, a dst
// of the wrong size, an unsupported src_dtype or format kNone, and a NaN or infinite weight (the message names its
// row and column; the caller adds the tensor name). `dst` is unspecified after an error.
Status Quantize(std::span<const uint8_t> src, DType src_dtype, int64_t n, int64_t k, Format format, int64_t group,
                std::span<uint8_t> dst, int threads = 0);

// The float32 values of a quantized [n, k] tensor (the reference the tests use, and the CPU fallback). kInvalidArgument
// for a bad shape or group, `q` not TensorBytes long, `dst` not n * k long, or format kNone.
Status Dequantize(std::span<const uint8_t> q, Format format, int64_t n, int64_t k, int64_t group, std::span<float> dst);

// Float8 e4m3fn. The decoder is exact for all 256 codes (0x7F / 0xFF give NaN). The encoder rounds to nearest, ties to
// even, saturates finite and infinite values beyond +-448 to +-448 (0x7E / 0xFE), and maps NaN to 0x7F.
float Fp8E4M3ToFloat(uint8_t code);
uint8_t FloatToFp8E4M3(float value);
// (bfloat16 / float16 bit patterns: Bf16ToFloat, FloatToBf16, F16ToFloat in formats/dtype.h.)

// ---------------------------------------------------------------------------------------------------------------
// Pre-quantized checkpoints, converted into the layout above.

// The shape of a scale tensor as rows x cols: [a, b] -> {a, b}; [a] -> {a, 1}; a scalar -> {1, 1}.
struct ScaleShape {
  int64_t rows = 1;
  int64_t cols = 1;
};

// An FP8 e4m3fn weight [n, k] with float32 scales (`scale`: an aligned array of scale_shape.rows * cols floats; copy
// them out of a mapped file first, where a tensor's offset need not be a multiple of 4) (w = fp8 * scale; transformers' `weight_scale_inv` multiplies too,
// despite its name), written to `dst` (exactly TensorBytes(kFp8E4M3, n, k, *group_out) bytes) with the fp8 bytes
// copied verbatim: exact.
//   block_rows > 0 and block_cols > 0: block scales (quant_method "fp8" with weight_block_size [block_rows,
//     block_cols]); `scale_shape` must be {ceil(n / block_rows), ceil(k / block_cols)}; row r, column c uses
//     scale[r / block_rows][c / block_cols]; *group_out = block_cols, so k % block_cols must be 0 (kUnsupported
//     otherwise).
//   block_rows == 0 and block_cols == 0: per-channel ({n, 1}) or per-tensor ({1, 1}) scales; *group_out = k.
// Errors: kInvalidArgument for bad n, k, block sizes or a dst of the wrong size; kMismatch for `fp8` not n * k bytes or
// a scale shape that does not fit; kCorrupt for a NaN or infinite scale or a NaN fp8 code (naming row and column).
Status FromFp8(std::span<const uint8_t> fp8, const float* scale, ScaleShape scale_shape, int64_t block_rows,
               int64_t block_cols, int64_t n, int64_t k, std::span<uint8_t> dst, int64_t* group_out);

// The tensors of one GPTQ 4-bit linear layer (AutoGPTQ / GPTQModel / optimum), as raw little-endian bytes with their
// dtypes and shapes as the checkpoint states them.
//   qweight I32 [k / 8, n]: value i of column c in bits 4i..4i+3 of qweight[j][c] is row k-index 8j + i.
//   qzeros  I32 [ceil(k / g), n / 8]: packed along n the same way.
//   scales  F16 (or BF16 / F32) [ceil(k / g), n].
//   g_idx   I32 [k], optional (empty bytes and shape: column c is in group c / g).
struct GptqTensors {
  std::span<const uint8_t> qweight;
  DType qweight_dtype = DType::kI32;
  std::vector<int64_t> qweight_shape;
  std::span<const uint8_t> qzeros;
  DType qzeros_dtype = DType::kI32;
  std::vector<int64_t> qzeros_shape;
  std::span<const uint8_t> scales;
  DType scales_dtype = DType::kF16;
  std::vector<int64_t> scales_shape;
  std::span<const uint8_t> g_idx;
  DType g_idx_dtype = DType::kI32;
  std::vector<int64_t> g_idx_shape;
};

// Converts a GPTQ layer (w[r][c] = (q - z[g_idx[c]][r]) * s[g_idx[c]][r], r the output row and c the input column)
// into kInt4 with group `group` (the config's group_size, -1 meaning k): q is kept, s_ours = bf16(s) and
// z_ours = bf16((8 - z) * s), with z = stored zero + 1 when `v1_zero_offset` (checkpoint_format "gptq") and the stored
// zero for "gptq_v2". Not bit-exact when the checkpoint's scales are f16: bf16 keeps 8 significant bits, so each
// weight is off by at most about 2^-9 of its group's |s| * 8 + |z| (relative rounding of s and z); f32 scales round
// likewise, bf16 scales keep s exact.
// When g_idx is not the trivial c / group (act-order, desc_act), the columns are reordered so that the groups are
// contiguous: our column i is the checkpoint's column (*perm)[i] (a stable sort by group) and the consumer must
// multiply with x[perm]. *perm is left empty when g_idx is trivial or absent.
// `dst` must hold exactly TensorBytes(kInt4, n, k, group) bytes.
// Errors: kInvalidArgument for bad n, k or group, or a dst of the wrong size; kUnsupported for n or k not a multiple
// of 8 or a group not dividing k; kMismatch for a dtype, shape or byte size that does not match n, k and group
// (naming the tensor and the expected shape); kCorrupt for a g_idx entry out of range or a group that does not hold
// exactly `group` columns (naming it), or a NaN or infinite scale.
Status FromGptq(const GptqTensors& tensors, int64_t n, int64_t k, int64_t group, bool v1_zero_offset,
                std::span<uint8_t> dst, std::vector<int32_t>* perm);

// ---------------------------------------------------------------------------------------------------------------
// config.json's quantization_config.

struct GptqConfig {
  int bits = 4;
  int64_t group_size = 128;  // -1: one group per row (g = k)
  bool desc_act = false;
  bool sym = true;
  bool v1_zero_offset = true;  // checkpoint_format "gptq" (stored zero = z - 1); false for "gptq_v2"
  bool lm_head = false;        // the checkpoint quantizes lm_head too
};

struct CheckpointQuant {
  enum class Kind {
    kNone,      // no quantization_config (or null)
    kFp8Block,  // fp8 weights with float32 block scales `weight_scale_inv` [ceil(n / block_rows), ceil(k / block_cols)]
    kFp8Scaled, // fp8 weights with a float32 `weight_scale`, per channel ([n] or [n, 1]) or per tensor (scalar or [1])
    kGptq,      // GPTQ 4-bit (qweight, qzeros, scales, optional g_idx)
  };
  Kind kind = Kind::kNone;
  std::string method;  // quant_method as written: "fp8", "fbgemm_fp8", "compressed-tensors", "gptq"
  int64_t block_rows = 0;
  int64_t block_cols = 0;
  GptqConfig gptq;
  // Modules the checkpoint leaves unquantized, as written (modules_to_not_convert, ignored_layers, ignore).
  std::vector<std::string> not_quantized;
};

// Reads config["quantization_config"] (or the older "compression_config" of compressed-tensors) of a Hugging Face
// config.json object. Supported:
//   quant_method "fp8" with weight_block_size [br, bc] -> kFp8Block; without it (AutoFP8) -> kFp8Scaled;
//   "fbgemm_fp8" -> kFp8Scaled;
//   "compressed-tensors" with one config group whose weights are {num_bits 8, type "float", strategy "channel" |
//     "tensor"} (kFp8Scaled) or strategy "block" with block_structure [br, bc] (kFp8Block), format
//     "float-quantized" or "naive-quantized", targets ["Linear"], no sparsity or kv-cache scheme;
//   "gptq" with bits 4, group_size -1 or > 0, checkpoint_format (or format) "gptq" / "gptq_v2".
// Activation quantization settings are accepted and not used (bigplan computes in bf16). Anything else is refused,
// never ignored: kUnsupported naming the key and its value (quant_method "awq", "bitsandbytes", gptq bits 8,
// compressed-tensors int weights, marlin formats, per-module dynamic overrides, ...); kCorrupt for a key of the wrong
// JSON type or an impossible value (group_size 0, weight_block_size not two positive integers).
Result<CheckpointQuant> ParseQuantizationConfig(const nlohmann::json& config);

}  // namespace bigplan::quant
