// Tiny pre-quantized Llama checkpoints without Python: the test oracle for reading FP8 and GPTQ checkpoints.
//
// WriteTinyPreQuantLlama writes a 2-layer Llama (hidden 64, intermediate 128, 4 heads / 2 KV heads, vocab 256)
// whose attention and MLP projections are stored the way a pre-quantized Hugging Face checkpoint stores them, and,
// next to it, the same model with those weights dequantized into a plain F32 checkpoint. The quantized values are
// drawn first and the F32 weights computed from them, so the two checkpoints hold the same model exactly:
//   fp8 block:    X.weight F8_E4M3 [n, k] + X.weight_scale_inv F32 [n / 32, k / 32] (quant_method "fp8",
//                 weight_block_size [32, 32]); w = fp8 * scale;
//   fp8 channel:  X.weight F8_E4M3 [n, k] + X.weight_scale F32 [n, 1] (quant_method "fbgemm_fp8"); also an unused
//                 X.input_scale_ub, as fbgemm checkpoints carry;
//   gptq:         X.qweight I32 [k / 8, n], X.qzeros I32 [k / 32, n / 8], X.scales F16 [k / 32, n], X.g_idx I32 [k]
//                 (c / 32) (quant_method "gptq", bits 4, group_size 32, checkpoint_format "gptq": stored zero = z - 1);
//   gptq-act:     the same with act-order (desc_act true): g_idx[c] = c mod (k / 32), every group's columns scattered;
//                 w = (q - z) * s, with s = m / 1024 (m in 4..15) so that bf16 holds s and (8 - z) * s exactly.
// Embeddings, norms and lm_head are plain F32 in both (lm_head listed as not quantized).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "formats/dtype.h"
#include "support/result.h"

namespace bigplan {

enum class TinyQuant { kFp8Block, kFp8Channel, kGptq, kGptqActOrder };

// "fp8-block", "fp8-channel", "gptq", "gptq-act"; kInvalidArgument naming the string otherwise.
Result<TinyQuant> ParseTinyQuant(const std::string& name);

struct RawTensor {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::string bytes;  // little-endian, numel x dtype size
};

// Writes `tensors`, in order, as one safetensors file at `path`.
Status WriteSafetensorsFile(const std::string& path, const std::vector<RawTensor>& tensors);

struct TinyPreQuantOptions {
  uint64_t seed = 1;
  // Called with the quantized checkpoint's tensors and its config.json object before they are written (tests use
  // it to damage them). May be empty.
  std::function<void(std::vector<RawTensor>*, std::string* config_json)> mutate;
};

// Writes DIR/config.json and DIR/model.safetensors (pre-quantized), and, when `reference_dir` is not empty, the
// dequantized model as REFERENCE_DIR/config.json (without quantization_config) and REFERENCE_DIR/model.safetensors.
// Directories are created. kIo naming the file on write failures.
Status WriteTinyPreQuantLlama(const std::string& dir, const std::string& reference_dir, TinyQuant kind,
                              const TinyPreQuantOptions& options = {});

}  // namespace bigplan
