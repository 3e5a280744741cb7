// The generation loop behind Executor::Generate, over an abstract forward pass (internal to executor/). Plain
// C++: no LibTorch, no CUDA.
//
// Generate checks its arguments, runs the prompts' forward pass (the prefill) and then one single-token pass per
// new token, choosing each row's next token from the last position's logits with sampling.h (GenerateOptions
// documents greedy, temperature, top_k, top_p and seeds). A row that emits a stop token stops (the token is part
// of its output); later steps still feed it its last token (the batch keeps its shape) but discard what it would
// emit. Generation ends when every row has stopped, after max_new_tokens, or when on_step returns false.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "executor/executor.h"
#include "support/result.h"

namespace bigplan::executor_internal {

// Float logits of the last position of each row, row-major [batch, vocab]; `data` stays valid until the next call
// of the forward function that returned it.
struct LastLogits {
  const float* data = nullptr;
  int64_t vocab = 0;
};

// One forward pass of `tokens`, row-major [batch][seq], continuing the sequence (step 0 is the prefill of the
// prompts: the callee starts a new sequence then).
using GenerationForward =
    std::function<Result<LastLogits>(int step, const std::vector<int64_t>& tokens, int64_t batch, int64_t seq)>;

// kInvalidArgument (naming the values) for: no prompt or an empty one, prompts of different lengths,
// max_new_tokens < 1, a non-finite temperature, a top_p that is NaN or outside (0, 1], top_k < 0, and prompt +
// max_new_tokens > max_seq_len. Nothing is forwarded then.
Status CheckGenerateArguments(const std::vector<std::vector<int64_t>>& prompts, const GenerateOptions& options,
                              int64_t max_seq_len);

// Checks the arguments, then generates. A forward error is returned as is (the tokens so far are lost).
// GenerateResult::prefill_ms and decode_ms time each step's forward pass plus sampling (wall clock).
Result<GenerateResult> Generate(const std::vector<std::vector<int64_t>>& prompts, const GenerateOptions& options,
                                int64_t max_seq_len, const GenerationForward& forward);

}  // namespace bigplan::executor_internal
