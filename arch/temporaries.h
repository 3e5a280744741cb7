// Bounds the executor keeps its largest temporaries within, so that the planner can account them
// (planner/accounting.h, EstimateActivations) without reserving memory that grows with the square of the sequence
// length or with the vocabulary times every position:
//   * attention scores: where a prompt's attention is not left to a fused (flash) kernel, the executor takes the
//     queries in chunks (AttentionQueryChunk) so that the scores of one chunk, batch x heads x chunk x keys, are at
//     most kAttentionScoreElements (or one query row per chunk where a row alone is more);
//   * logits: Executor::Forward asked for every position's logits computes a pass of more than kLogitsTokens tokens
//     as consecutive passes of at most kLogitsTokens tokens (at least one position per row), so the float logits
//     on the device are at most that many tokens' (each pass's go to the host before the next begins);
//   * mixture-of-experts prompts over resident experts: kMoeGroupedTokens tokens' (token, expert) pairs at once; over
//     quantized experts dispatched from the host, also a dequantized scratch of kMoeDequantScratchBytes;
//   * one GPU's prefill graphs, whose pools lie outside the reserve: passes of at most kPrefillGraphTokens tokens.
// No LibTorch; the planner and the executor both include it.
#pragma once

#include <algorithm>
#include <cstdint>

namespace bigplan::arch {

// Scores (and the softmax's probabilities, and the mask) of one chunk of queries: float32 elements.
inline constexpr int64_t kAttentionScoreElements = int64_t{32} << 20;  // 128 MiB as float32
// Copies of a chunk's scores alive at once in LibTorch's eager attention (the scores and the softmax's
// probabilities): the planner reserves this many times the chunk's float32 scores.
inline constexpr int64_t kAttentionScoreCopies = 2;
// Tokens per pass whose float32 logits a pass returning every position's logits holds on the device.
inline constexpr int64_t kLogitsTokens = 512;

// One GPU's prefill graphs (ExecutorOptions::prefill_graph_shapes) hold a padded prompt's activations in their own
// memory pools, outside the plan's activation reserve: only passes of at most this many tokens (rows x padded tokens)
// are captured, so each pool holds at most that many tokens' activations. Longer prompts run eagerly (their launches
// are a small part of their time).
inline constexpr int64_t kPrefillGraphTokens = 2048;

// Mixture-of-experts layers whose routed experts are all resident, computed by grouped products over every expert:
// the (token, expert) pairs of at most kMoeGroupedTokens tokens at once. Per pair the temporaries are the gathered
// input, [gate; up], SiLU(gate) x up, the output, its weighted copy (float32 for Mixtral's weights) and its place in
// expert order: MoeGroupedBytesPerPair.
inline constexpr int64_t kMoeGroupedTokens = 2048;
inline int64_t MoeGroupedBytesPerPair(int64_t hidden, int64_t inter, int64_t dtype_bytes) {
  return (3 * hidden + 3 * inter) * dtype_bytes + 4 * hidden;
}

// A prompt's quantized experts dispatched from the host (not all resident, or not in the execution dtype) are
// dequantized into a scratch of at most this many bytes, as many consecutive experts at a time as fit, and computed by
// grouped products over them (where at least two fit; else one expert at a time, its matrices dequantized one by one).
inline constexpr int64_t kMoeDequantScratchBytes = int64_t{128} << 20;
// The experts resting on the GPU are dequantized this many matrices a launch (executor fused::kDequantMaxJobs:
// sixteen experts' three).
inline constexpr int64_t kMoeDequantBatchMatrices = 48;
// Experts of `experts` whose [gate; up] and down matrices (3 x hidden x inter values) the scratch holds in
// `dtype_bytes`: at most all of them.
inline int64_t MoeDequantScratchExperts(int64_t hidden, int64_t inter, int64_t dtype_bytes, int64_t experts) {
  const int64_t per = 3 * hidden * inter * dtype_bytes;
  return per > 0 ? std::min(experts, kMoeDequantScratchBytes / per) : 0;
}

// Queries per chunk for `batch` rows of `heads` heads attending over `keys` keys: at least 1, at most `queries`.
inline int64_t AttentionQueryChunk(int64_t batch, int64_t heads, int64_t keys, int64_t queries) {
  const int64_t per_query = std::max<int64_t>(1, batch * heads * keys);
  return std::clamp<int64_t>(kAttentionScoreElements / per_query, 1, std::max<int64_t>(1, queries));
}

}  // namespace bigplan::arch
