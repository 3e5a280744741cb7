#include "executor/generation.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>

#include "executor/sampling.h"

namespace bigplan::executor_internal {

Status CheckGenerateArguments(const std::vector<std::vector<int64_t>>& prompts, const GenerateOptions& options,
                              int64_t max_seq_len) {
  if (prompts.empty() || prompts[0].empty()) return MakeError(ErrorCode::kInvalidArgument, "empty prompt");
  const int64_t len = static_cast<int64_t>(prompts[0].size());
  for (const auto& p : prompts) {
    if (static_cast<int64_t>(p.size()) != len) {
      return MakeError(ErrorCode::kInvalidArgument, "prompts of different lengths (" + std::to_string(len) + " and " +
                                                        std::to_string(p.size()) + " tokens); pad them to one length");
    }
  }
  if (options.max_new_tokens < 1) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "max_new_tokens " + std::to_string(options.max_new_tokens) + " must be at least 1");
  }
  if (!std::isfinite(options.temperature) || !(options.top_p > 0.0 && options.top_p <= 1.0) || options.top_k < 0) {
    auto g = [](double v) {
      char buf[32];
      std::snprintf(buf, sizeof(buf), "%.17g", v);
      return std::string(buf);
    };
    return MakeError(ErrorCode::kInvalidArgument,
                     "sampling options: temperature " + g(options.temperature) + ", top_p " + g(options.top_p) +
                         ", top_k " + std::to_string(options.top_k) +
                         " (temperature must be a finite number, top_p a number in (0, 1], top_k >= 0)");
  }
  if (len + options.max_new_tokens > max_seq_len) {
    return MakeError(ErrorCode::kInvalidArgument, "prompt of " + std::to_string(len) + " tokens + " +
                                                      std::to_string(options.max_new_tokens) + " new tokens = " +
                                                      std::to_string(len + options.max_new_tokens) +
                                                      " exceeds the plan's max_seq_len " + std::to_string(max_seq_len));
  }
  return Status::Ok();
}

Result<GenerateResult> Generate(const std::vector<std::vector<int64_t>>& prompts, const GenerateOptions& options,
                                int64_t max_seq_len, const GenerationForward& forward) {
  using Clock = std::chrono::steady_clock;
  BIGPLAN_RETURN_IF_ERROR(CheckGenerateArguments(prompts, options, max_seq_len));
  const int64_t batch = static_cast<int64_t>(prompts.size());
  const int64_t len = static_cast<int64_t>(prompts[0].size());
  std::vector<int64_t> flat;
  flat.reserve(batch * len);
  for (const auto& p : prompts) flat.insert(flat.end(), p.begin(), p.end());
  GenerateResult result;
  result.tokens.assign(batch, {});
  result.stopped.assign(batch, false);
  std::mt19937_64 rng(options.seed);
  auto is_stop = [&](int64_t t) {
    for (int64_t s : options.stop_token_ids) {
      if (s == t) return true;
    }
    return false;
  };
  std::vector<int64_t> next(batch);
  for (int n = 0; n < options.max_new_tokens; ++n) {
    const auto t0 = Clock::now();
    BIGPLAN_ASSIGN_OR_RETURN(LastLogits logits, forward(n, n == 0 ? flat : next, batch, n == 0 ? len : 1));
    bool all_stopped = true;
    for (int64_t b = 0; b < batch; ++b) {
      // Every row draws (stopped ones too), so a row's tokens do not depend on when the others stopped.
      const int64_t token = sampling::SampleToken(logits.data + b * logits.vocab, logits.vocab,
                                                  options.temperature, options.top_k, options.top_p, rng);
      if (!result.stopped[b]) {
        result.tokens[b].push_back(token);
        result.stopped[b] = is_stop(token);
        next[b] = token;
      }
      all_stopped &= result.stopped[b];
    }
    const double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
    (n == 0 ? result.prefill_ms : result.decode_ms.emplace_back()) = ms;
    if (options.on_step) {
      std::vector<int64_t> emitted(batch, -1);
      for (int64_t b = 0; b < batch; ++b) {
        if (static_cast<int64_t>(result.tokens[b].size()) == n + 1) emitted[b] = result.tokens[b].back();
      }
      if (!options.on_step(n, emitted)) break;
    }
    if (all_stopped) break;
  }
  return result;
}

}  // namespace bigplan::executor_internal
