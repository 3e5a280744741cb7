// Perplexity of a language model over a token sequence, and greedy agreement between two runs: the scoring half of
// tools/perplexity.cc, with no model and no LibTorch (the caller supplies each window's logits).
//
// Protocol (benchmarks/perplexity_hf.py does the same with transformers):
//   - the text's token ids are cut into consecutive, non-overlapping windows of `window` tokens; the last, partial
//     window is kept when it has at least 2 tokens (one token has nothing to score);
//   - each window is one fresh sequence (positions 0..len-1, nothing cached);
//   - in a window of len tokens, positions 1..len-1 are scored: the logits row at position i-1 predicts token i.
//     Its negative log-likelihood is -log_softmax(row)[token], computed in double from the float logits;
//   - mean NLL = sum of NLLs / tokens scored; perplexity = exp(mean NLL);
//   - the argmax of every scored position's row (ties to the lowest id) is kept for greedy agreement.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "support/result.h"

namespace bigplan::text {

// One window: tokens [begin, begin + length) of the text.
struct Window {
  int64_t begin = 0;
  int64_t length = 0;
};

// The windows for `num_tokens` tokens, in order. kInvalidArgument for window < 2 or num_tokens < 0. No windows
// (empty result) when num_tokens < 2.
Result<std::vector<Window>> SplitWindows(int64_t num_tokens, int64_t window);

// -log_softmax(row)[target] over row[0, vocab), in double (max-subtracted). Preconditions: vocab > 0,
// 0 <= target < vocab. A non-finite row gives a non-finite result.
double TokenNll(const float* row, int64_t vocab, int64_t target);

// The index of the largest value in row[0, vocab) (the lowest index among equal values). vocab > 0.
int64_t Argmax(const float* row, int64_t vocab);

// Accumulates NLL and argmaxes over windows.
class PerplexityAccumulator {
 public:
  // Scores one window. `tokens` are the window's ids (at least 2); `logits` is row-major [tokens.size(), vocab]
  // (row i: the model's logits after tokens[0..i]). Only rows 0..len-2 are read. Errors (nothing is accumulated):
  // kInvalidArgument for fewer than 2 tokens, vocab <= 0, or a token outside [0, vocab); kCorrupt for a non-finite
  // logit in a scored row (naming the window and position).
  Status AddWindow(const std::vector<int64_t>& tokens, const float* logits, int64_t vocab);

  int64_t windows() const { return windows_; }
  int64_t tokens_scored() const { return static_cast<int64_t>(argmax_.size()); }
  double total_nll() const { return total_nll_; }
  // total_nll / tokens_scored (0 when nothing was scored).
  double mean_nll() const;
  // exp(mean_nll) (1 when nothing was scored).
  double perplexity() const;
  // The argmax of every scored position, in order (window by window, position 1..len-1 of each).
  const std::vector<int64_t>& argmax() const { return argmax_; }

 private:
  int64_t windows_ = 0;
  double total_nll_ = 0;
  std::vector<int64_t> argmax_;
};

// Lowercase hex SHA-256 of the ids as little-endian int64 (Python: hashlib.sha256(struct.pack("<%dq" % n, *ids))).
// Identifies the scored tokens (text, tokenizer and --max-tokens together) in argmax files.
std::string TokenIdsSha256(const std::vector<int64_t>& ids);

// An argmax file: the argmax token of every scored position of one run, and what identifies the run's inputs.
//
// Text format (written by WriteArgmaxFile and by benchmarks/perplexity_hf.py --argmax-out):
//   bigplan-argmax 1
//   tokens N                  text tokens after --max-tokens
//   window W
//   tokens_sha256 HEX         TokenIdsSha256 of those N tokens
//   positions P               scored positions (the number of ids that follow)
//   source TEXT               informational (the plan or model that produced it; rest of the line)
//   ids
//   ID ID ID ...              P ids, whitespace-separated (any line breaks)
// Header lines are "key value"; unknown keys are ignored; the five numeric/hash keys are required.
struct ArgmaxRecord {
  int64_t tokens = 0;
  int64_t window = 0;
  std::string tokens_sha256;
  std::string source;
  std::vector<int64_t> ids;  // positions = ids.size()
};

// Writes `record` to `path` (replaced). kIo naming the file.
Status WriteArgmaxFile(const std::string& path, const ArgmaxRecord& record);

// Reads a file written by WriteArgmaxFile. kNotFound / kIo naming the file; kCorrupt naming the file and the line
// or key for anything malformed (bad magic, missing key, a count that does not match the ids).
Result<ArgmaxRecord> ReadArgmaxFile(const std::string& path);

// Fraction of positions where `ours` and `reference` have the same argmax. kMismatch naming `reference_name` and
// the differing field (tokens, window, tokens_sha256 or positions) when the two runs did not score the same tokens
// the same way. 1 for two empty runs.
Result<double> GreedyAgreement(const ArgmaxRecord& ours, const ArgmaxRecord& reference,
                               const std::string& reference_name);

}  // namespace bigplan::text
