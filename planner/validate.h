// Checks a model description against a checkpoint's tensors.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "formats/checkpoint.h"
#include "planner/model_desc.h"
#include "support/result.h"

namespace bigplan {

struct ValidateOptions {
  // Report tensors of the checkpoint that no block owns. Known non-parameter buffers that old Hugging Face
  // checkpoints carry are never reported: names ending in ".attn.bias" or ".attn.masked_bias" that are not
  // params of the description (GPT-2/GPT-J causal-mask buffers) and ".rotary_emb.inv_freq".
  bool report_unexpected = true;
  // At most this many problems are listed; the rest are summarized as "... and N more".
  size_t max_listed = 20;
};

// Every missing, unexpected, shape-mismatched and dtype-mismatched tensor, at once, in one kMismatch error:
//   "mismatch: model 'x' vs checkpoint /ckpt: 3 problems:\n  missing: lm_head.weight [32000, 4096] F16\n  ..."
// `source` names the checkpoint in the message.
Status ValidateAgainstTensors(const ModelDescription& model, const std::vector<TensorSpec>& tensors,
                              const std::string& source, const ValidateOptions& options = {});
Status ValidateAgainstCheckpoint(const ModelDescription& model, const Checkpoint& checkpoint,
                                 const ValidateOptions& options = {});

// True for the buffer names described in ValidateOptions::report_unexpected.
bool IsKnownNonParameterBuffer(const std::string& name);

}  // namespace bigplan
