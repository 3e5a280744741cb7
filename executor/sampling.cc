#include "executor/sampling.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace bigplan::sampling {

int64_t Argmax(const float* logits, int64_t vocab) {
  int64_t best = 0;
  float best_value = -INFINITY;
  bool found = false;
  for (int64_t i = 0; i < vocab; ++i) {
    const float v = logits[i];
    if (std::isnan(v)) continue;
    if (!found || v > best_value) {
      best = i;
      best_value = v;
      found = true;
    }
  }
  return best;
}

int64_t SampleToken(const float* logits, int64_t vocab, double temperature, int top_k, double top_p,
                    std::mt19937_64& rng) {
  if (temperature <= 0.0 || vocab <= 1) return Argmax(logits, vocab);
  // Candidates sorted by logit, descending (ties: lower id first), so the result does not depend on the order
  // the sort visits equal elements.
  std::vector<int64_t> order(vocab);
  std::iota(order.begin(), order.end(), 0);
  auto better = [logits](int64_t a, int64_t b) {
    const float va = std::isnan(logits[a]) ? -INFINITY : logits[a];
    const float vb = std::isnan(logits[b]) ? -INFINITY : logits[b];
    return va != vb ? va > vb : a < b;
  };
  int64_t keep = vocab;
  if (top_k > 0 && top_k < vocab) {
    keep = top_k;
    std::partial_sort(order.begin(), order.begin() + keep, order.end(), better);
  } else {
    std::sort(order.begin(), order.end(), better);
  }
  order.resize(keep);
  const double max_logit = logits[order[0]];
  std::vector<double> probs(keep);
  double total = 0;
  for (int64_t i = 0; i < keep; ++i) {
    const float v = logits[order[i]];
    probs[i] = std::isnan(v) ? 0.0 : std::exp((static_cast<double>(v) - max_logit) / temperature);
    total += probs[i];
  }
  if (!(total > 0)) return order[0];
  if (top_p < 1.0 && top_p > 0.0) {
    double cum = 0;
    int64_t n = 0;
    while (n < keep) {
      cum += probs[n] / total;
      ++n;
      if (cum >= top_p) break;
    }
    keep = std::max<int64_t>(n, 1);
    probs.resize(keep);
    total = std::accumulate(probs.begin(), probs.end(), 0.0);
  }
  // A uniform draw from the generator's raw bits (std::uniform_real_distribution's output is not specified
  // across standard libraries; this is).
  const double u = static_cast<double>(rng() >> 11) * (1.0 / 9007199254740992.0) * total;
  double acc = 0;
  for (int64_t i = 0; i < keep; ++i) {
    acc += probs[i];
    if (u < acc) return order[i];
  }
  return order[keep - 1];
}

}  // namespace bigplan::sampling
