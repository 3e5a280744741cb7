// Next-token selection on host logits, shared by Executor::Generate and the server (GenerateOptions documents the
// semantics).
#pragma once

#include <cstdint>
#include <random>

namespace bigplan::sampling {

// Index of the largest logit; ties go to the lowest index. NaNs are never chosen unless all are NaN (then 0).
int64_t Argmax(const float* logits, int64_t vocab);

// Greedy when temperature <= 0; else temperature, top_k (0 = off), top_p (>= 1 = off), then a draw from `rng`.
int64_t SampleToken(const float* logits, int64_t vocab, double temperature, int top_k, double top_p,
                    std::mt19937_64& rng);

}  // namespace bigplan::sampling
