// Compressed weights (plan --weights): which of a model's tensors the executor stores quantized, and how.
#pragma once

#include "formats/quant.h"
#include "planner/model_desc.h"
#include "support/result.h"

namespace bigplan {

// Marks every linear-layer matrix of `model` (the registry's Layout::kLinear tensors: attention and MLP projections
// of each decoder layer, and an untied lm_head) to be stored in `format` with quant::DefaultGroup's group size
// (fp8 and int8 per row, int4 in groups of 128 columns, or 64/32 where 128 does not divide the columns). Norms,
// biases, embeddings and mixture-of-experts routers stay at the execution dtype; tensors already quantized (a
// pre-quantized checkpoint) keep their format. kNone leaves the model unchanged.
// `group` > 0 replaces the default group size for every matrix (e.g. 32 for a checkpoint whose weights were
// quantized before in blocks of 32 columns, as GGUF's Q4 types are: a group of 128 would quantize them again onto a
// grid that does not line up with theirs).
// Errors: kUnsupported when the family has no such matrices (GPT-2 stores its projections as Conv1D [in, out]),
// when a matrix's source dtype is not floating point, or when its columns fit no group size (naming the tensor);
// kInvalidArgument when `group` does not divide a matrix's columns (naming the tensor) or is odd for int4.
Status ApplyWeightFormat(ModelDescription* model, quant::Format format, int64_t group = 0);

// The number of tensors of `model` stored quantized, and their bytes at run time / at the execution dtype.
struct QuantizedSummary {
  int tensors = 0;
  uint64_t bytes = 0;
  uint64_t plain_bytes = 0;
};
QuantizedSummary SummarizeQuantized(const ModelDescription& model, DType exec_dtype);

}  // namespace bigplan
