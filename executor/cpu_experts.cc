#include "executor/cpu_experts.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#if defined(__x86_64__) || defined(__i386__)
#define BIGPLAN_CPU_EXPERTS_X86 1
#include <immintrin.h>
#else
#define BIGPLAN_CPU_EXPERTS_X86 0
#endif

namespace bigplan::cpu_experts {
namespace {
// Rounds a float to the nearest bf16 value (ties to even), returned as a float; NaN stays NaN.
inline float RoundBf16(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  if ((bits & 0x7f800000u) == 0x7f800000u) return v;  // inf, NaN
  bits += 0x7fffu + ((bits >> 16) & 1u);
  bits &= 0xffff0000u;
  std::memcpy(&v, &bits, sizeof(v));
  return v;
}
}  // namespace
namespace {

using cpu_matvec::Job;
using cpu_matvec::kMaxBatch;
using cpu_matvec::Matrix;
using cpu_matvec::MatVecPool;

std::string Str(int64_t v) { return std::to_string(v); }

Error Invalid(std::string message) { return MakeError(ErrorCode::kInvalidArgument, "cpu_experts: " + message); }

// Messages are built only on failure (a passing check does not allocate).
Status CheckMatrix(const Matrix& m, int32_t index, const char* name) {
  auto what = [&] { return "expert " + Str(index) + " " + name; };
  if (Status s = cpu_matvec::Validate(m); !s.ok()) return WithContext(s.take_error(), "cpu_experts: " + what());
  if (m.base == nullptr) return Invalid(what() + ": null base");
  return Status::Ok();
}

// Expert e's shapes against the runner's: inter is gate's rows.
Status CheckExpert(const Expert& e, int32_t index, int64_t hidden, int64_t max_inter) {
  if (Status s = CheckMatrix(e.gate, index, "gate"); !s.ok()) return s;
  if (Status s = CheckMatrix(e.up, index, "up"); !s.ok()) return s;
  if (Status s = CheckMatrix(e.down, index, "down"); !s.ok()) return s;
  auto what = [&] { return "expert " + Str(index); };
  const int64_t inter = e.gate.rows;
  if (e.gate.cols != hidden || e.up.cols != hidden)
    return Invalid(what() + ": gate and up have " + Str(e.gate.cols) + " and " + Str(e.up.cols) +
                   " columns, want hidden " + Str(hidden));
  if (e.down.rows != hidden) return Invalid(what() + ": down has " + Str(e.down.rows) + " rows, want hidden " + Str(hidden));
  if (e.up.rows != inter || e.down.cols != inter)
    return Invalid(what() + ": gate rows " + Str(inter) + ", up rows " + Str(e.up.rows) + " and down columns " +
                   Str(e.down.cols) + " disagree on the intermediate size");
  if (inter > max_inter)
    return Invalid(what() + ": intermediate size " + Str(inter) + " is above the runner's max_inter " + Str(max_inter));
  return Status::Ok();
}

}  // namespace

// ---- SiLU with AVX2 + FMA ----
#if BIGPLAN_CPU_EXPERTS_X86
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif
namespace {
// g[i] = g[i] / (1 + exp(-g[i])) * u[i], 8 at a time. exp(x) for x = -g clamped to [-87.3, 88.3] (so 2^n below
// stays a normal float; outside it SiLU is g or a magnitude below 1e-36 either way): n = round(x log2 e),
// r = x - n ln 2 in two steps (the first exact), exp(r) by Cephes' expf polynomial (relative error about 1e-7 on
// |r| <= ln 2 / 2), times 2^n built in the exponent bits. A NaN g stays NaN (it is the numerator).
void SiluAvx2(float* g, const float* u, int64_t n) {
  const __m256 log2e = _mm256_set1_ps(1.44269504088896341f), one = _mm256_set1_ps(1.0f);
  const __m256 ln2_hi = _mm256_set1_ps(0.693359375f), ln2_lo = _mm256_set1_ps(-2.12194440e-4f);
  const __m256 lo = _mm256_set1_ps(-87.3f), hi = _mm256_set1_ps(88.3f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 gv = _mm256_loadu_ps(g + i);
    const __m256 x = _mm256_min_ps(_mm256_max_ps(_mm256_sub_ps(_mm256_setzero_ps(), gv), lo), hi);
    const __m256 k = _mm256_round_ps(_mm256_mul_ps(x, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m256 r = _mm256_fnmadd_ps(k, ln2_lo, _mm256_fnmadd_ps(k, ln2_hi, x));
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, one));
    const __m256i two_k =
        _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
    const __m256 e = _mm256_mul_ps(p, _mm256_castsi256_ps(two_k));
    _mm256_storeu_ps(g + i, _mm256_mul_ps(_mm256_div_ps(gv, _mm256_add_ps(one, e)), _mm256_loadu_ps(u + i)));
  }
  for (; i < n; ++i) g[i] = Activate(Activation::kSilu, g[i]) * u[i];
}
}  // namespace
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif

void ActivateRows(Activation act, cpu_matvec::Isa isa, float* g, const float* u, int64_t n) {
#if BIGPLAN_CPU_EXPERTS_X86
  static const cpu_matvec::Isa best = cpu_matvec::DetectIsa();
  if (act == Activation::kSilu && isa >= cpu_matvec::Isa::kAvx2 && best >= cpu_matvec::Isa::kAvx2)
    return SiluAvx2(g, u, n);
#endif
  if (act == Activation::kSilu) {
    for (int64_t i = 0; i < n; ++i) g[i] = Activate(Activation::kSilu, g[i]) * u[i];
  } else {
    for (int64_t i = 0; i < n; ++i) g[i] = Activate(Activation::kGeluTanh, g[i]) * u[i];
  }
}

const char* ActivationName(Activation act) {
  switch (act) {
    case Activation::kSilu: return "silu";
    case Activation::kGeluTanh: return "gelu_tanh";
  }
  return "unknown";
}

float Activate(Activation act, float g) {
  if (act == Activation::kSilu) return g / (1.0f + std::exp(-g));
  constexpr float kSqrt2OverPi = 0.7978845608028654f;  // sqrt(2 / pi)
  return 0.5f * g * (1.0f + std::tanh(kSqrt2OverPi * (g + 0.044715f * g * g * g)));
}

ExpertRunner::ExpertRunner(MatVecPool* pool, int64_t hidden, int64_t max_inter, int max_tokens, int max_assignments)
    : pool_(pool),
      hidden_(std::max<int64_t>(0, hidden)),
      max_inter_(std::max<int64_t>(0, max_inter)),
      max_tokens_(std::max(0, max_tokens)),
      max_assignments_(std::max(0, max_assignments)),
      isa_(pool != nullptr ? pool->isa() : cpu_matvec::Isa::kScalar) {
  const size_t n = static_cast<size_t>(max_assignments_);
  order_.resize(n);
  row_token_.resize(n);
  row_weight_.resize(n);
  chunks_.resize(n);
  jobs_.resize(2 * n);
  xs_.resize(n * static_cast<size_t>(hidden_));
  gate_.resize(n * static_cast<size_t>(max_inter_));
  up_.resize(n * static_cast<size_t>(max_inter_));
}

Status ExpertRunner::Check(std::span<const Expert> experts, std::span<const Assignment> assignments, const float* x,
                           int tokens, Activation act, const float* out) const {
  if (pool_ == nullptr) return Invalid("the runner has no pool");
  if (act != Activation::kSilu && act != Activation::kGeluTanh)
    return Invalid("unknown activation " + Str(static_cast<int>(act)));
  if (tokens < 0 || tokens > max_tokens_)
    return Invalid(Str(tokens) + " tokens, outside the runner's 0.." + Str(max_tokens_));
  if (assignments.size() > static_cast<size_t>(max_assignments_))
    return Invalid(Str(static_cast<int64_t>(assignments.size())) + " assignments, more than the runner's " +
                   Str(max_assignments_));
  if (tokens > 0) {
    if (x == nullptr || out == nullptr) return Invalid("null x or out");
    const uintptr_t bytes = static_cast<uintptr_t>(tokens) * static_cast<uintptr_t>(hidden_) * sizeof(float);
    const uintptr_t xa = reinterpret_cast<uintptr_t>(x), oa = reinterpret_cast<uintptr_t>(out);
    if (oa < xa + bytes && xa < oa + bytes) return Invalid("out overlaps x");
  }
  for (size_t i = 0; i < assignments.size(); ++i) {
    const Assignment& a = assignments[i];
    auto what = [&] { return "assignment " + Str(static_cast<int64_t>(i)); };
    if (a.expert < 0 || static_cast<size_t>(a.expert) >= experts.size())
      return Invalid(what() + ": expert " + Str(a.expert) + " is outside the " +
                     Str(static_cast<int64_t>(experts.size())) + " experts");
    if (a.token < 0 || a.token >= tokens)
      return Invalid(what() + ": token " + Str(a.token) + " is outside the " + Str(tokens) + " tokens");
    if (!std::isfinite(a.weight)) return Invalid(what() + ": routing weight " + std::to_string(a.weight) + " is not finite");
  }
  // Each named expert once: its first assignment in sorted order is checked (order_ is sorted by then).
  for (size_t i = 0; i < assignments.size(); ++i) {
    const int32_t e = assignments[order_[i]].expert;
    if (i > 0 && assignments[order_[i - 1]].expert == e) continue;
    if (Status s = CheckExpert(experts[e], e, hidden_, max_inter_); !s.ok()) return s;
  }
  return Status::Ok();
}

Status ExpertRunner::RunPool(std::span<const Job> jobs, int batch) {
  for (size_t i = 0; i < jobs.size(); i += MatVecPool::kMaxJobs) {
    const size_t n = std::min(jobs.size() - i, static_cast<size_t>(MatVecPool::kMaxJobs));
    if (Status s = pool_->Run(jobs.subspan(i, n), batch); !s.ok()) return s;
  }
  return Status::Ok();
}

Status ExpertRunner::Run(std::span<const Expert> experts, std::span<const Assignment> assignments, const float* x,
                         int tokens, Activation act, float* out) {
  // Order the assignments by (expert, token) first (only if the count fits the scratch; Check refuses otherwise).
  const int n_assign = static_cast<int>(std::min(assignments.size(), static_cast<size_t>(max_assignments_)));
  for (int i = 0; i < n_assign; ++i) order_[i] = i;
  bool indices_ok = assignments.size() <= static_cast<size_t>(max_assignments_);
  for (int i = 0; indices_ok && i < n_assign; ++i)
    indices_ok = assignments[i].expert >= 0 && static_cast<size_t>(assignments[i].expert) < experts.size();
  if (indices_ok)
    std::sort(order_.begin(), order_.begin() + n_assign, [&](int32_t a, int32_t b) {
      const Assignment& p = assignments[a];
      const Assignment& q = assignments[b];
      return p.expert != q.expert ? p.expert < q.expert : p.token != q.token ? p.token < q.token : a < b;
    });
  if (Status s = Check(experts, assignments, x, tokens, act, out); !s.ok()) return s;
  if (tokens == 0) return Status::Ok();

  // Rows: one per distinct (expert, token), weights summed; chunks: each expert's rows, kMaxBatch at a time.
  int rows = 0, n_chunks = 0;
  for (int i = 0; i < n_assign; ++i) {
    const Assignment& a = assignments[order_[i]];
    if (i > 0) {
      const Assignment& prev = assignments[order_[i - 1]];
      if (prev.expert == a.expert && prev.token == a.token) {
        row_weight_[rows - 1] += a.weight;
        continue;
      }
    }
    if (n_chunks == 0 || chunks_[n_chunks - 1].expert != a.expert || chunks_[n_chunks - 1].count == kMaxBatch)
      chunks_[n_chunks++] = Chunk{a.expert, 0, rows};
    ++chunks_[n_chunks - 1].count;
    row_token_[rows] = a.token;
    row_weight_[rows] = a.weight;
    ++rows;
  }

  // Gather x rows.
  for (int r = 0; r < rows; ++r)
    std::memcpy(xs_.data() + r * hidden_, x + int64_t{row_token_[r]} * hidden_, hidden_ * sizeof(float));

  // One class of chunks per distinct token count: gate and up of the class in one pool call, then act(gate) * up
  // here, then down of the class in one pool call (its outputs overwrite the class's own gathered x rows).
  bool seen[kMaxBatch + 1] = {};
  for (int c = 0; c < n_chunks; ++c) seen[chunks_[c].count] = true;
  for (int count = 1; count <= kMaxBatch; ++count) {
    if (!seen[count]) continue;
    int n_jobs = 0;
    for (int c = 0; c < n_chunks; ++c) {
      const Chunk& ch = chunks_[c];
      if (ch.count != count) continue;
      const Expert& e = experts[ch.expert];
      const int64_t inter = e.gate.rows;
      const float* xc = xs_.data() + ch.row * hidden_;
      jobs_[n_jobs++] = Job{e.gate, 0, inter, xc, gate_.data() + ch.row * max_inter_, inter};
      jobs_[n_jobs++] = Job{e.up, 0, inter, xc, up_.data() + ch.row * max_inter_, inter};
    }
    if (Status s = RunPool({jobs_.data(), static_cast<size_t>(n_jobs)}, count); !s.ok()) return s;

    n_jobs = 0;
    for (int c = 0; c < n_chunks; ++c) {
      const Chunk& ch = chunks_[c];
      if (ch.count != count) continue;
      const Expert& e = experts[ch.expert];
      const int64_t inter = e.gate.rows;
      float* g = gate_.data() + ch.row * max_inter_;
      const float* u = up_.data() + ch.row * max_inter_;
      if (round_bf16_) {
        for (int64_t i = 0; i < int64_t{count} * inter; ++i) {
          const float a = RoundBf16(Activate(act, RoundBf16(g[i])));
          g[i] = RoundBf16(a * RoundBf16(u[i]));
        }
      } else {
        ActivateRows(act, isa_, g, u, int64_t{count} * inter);
      }
      jobs_[n_jobs++] = Job{e.down, 0, hidden_, g, xs_.data() + ch.row * hidden_, hidden_};
    }
    if (Status s = RunPool({jobs_.data(), static_cast<size_t>(n_jobs)}, count); !s.ok()) return s;
  }

  // Scatter: out[t] = sum of weight * down rows of t, in (expert, token) order.
  std::fill(out, out + int64_t{tokens} * hidden_, 0.0f);
  for (int r = 0; r < rows; ++r) {
    float* o = out + int64_t{row_token_[r]} * hidden_;
    const float* d = xs_.data() + r * hidden_;
    const float w = row_weight_[r];
    if (round_bf16_) {
      for (int64_t i = 0; i < hidden_; ++i) o[i] += RoundBf16(w * RoundBf16(d[i]));
    } else {
      for (int64_t i = 0; i < hidden_; ++i) o[i] += w * d[i];
    }
  }
  return Status::Ok();
}

}  // namespace bigplan::cpu_experts
