// Mixture-of-experts FFNs on the host CPU: the routed experts whose weights rest in host memory, computed with
// cpu_matvec's thread pool while the GPU computes the others. Plain C++ (no LibTorch, no CUDA).
//
// An expert is a gated FFN: FFN(x) = down(act(gate x) * up x), act = SiLU or tanh-GELU. The weights are any
// cpu_matvec::Matrix layout (bf16 rows or formats/quant.h's row-quantized rows); x, the intermediate and the result
// are float32. Each call makes few pool calls: the assignments are grouped by expert, each expert's token rows are
// gathered into one batch, and all experts whose batches have the same size run their gate and up products in one
// MatVecPool::Run and their down products in another (so 2 calls when every expert has one token, as in batch-1
// decode; 2 x the number of distinct per-expert token counts in general). act(gate) * up is computed on the calling
// thread in float32, then the experts' outputs are scaled by their routing weights and summed per token.
//
// Numerics: the products accumulate in float32 as cpu_matvec documents; SiLU is g / (1 + exp(-g)) and tanh-GELU is
// 0.5 g (1 + tanh(sqrt(2/pi) (g + 0.044715 g^3))), both in float32 (see ActivateRows for the exp), times up; the routed
// outputs are summed per token in float32 in the order of (expert, token). The result is deterministic for a
// given pool thread count and instruction set.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "executor/cpu_matvec.h"
#include "support/result.h"

namespace bigplan::cpu_experts {

enum class Activation { kSilu, kGeluTanh };  // act(gate) * up
const char* ActivationName(Activation act);

// act(g) in float32 by the formulas above, with std::exp / std::tanh.
float Activate(Activation act, float g);

// g[i] = act(g[i]) * u[i] for i < n, as Run computes the intermediate. tanh-GELU, and SiLU with isa kScalar (or on
// a CPU without AVX2 and FMA), use Activate. SiLU with isa kAvx2 or kAvx512 uses AVX2 + FMA with its own exp (a
// degree-7 polynomial after range reduction, within a few float32 roundings of exp): std::exp one element at a
// time cost about as much as a tenth of the weights' reading in batch-1 decode.
void ActivateRows(Activation act, cpu_matvec::Isa isa, float* g, const float* u, int64_t n);

// One expert's gated FFN: down(act(gate x) * up x).
struct Expert {
  cpu_matvec::Matrix gate;  // [inter, hidden]
  cpu_matvec::Matrix up;    // [inter, hidden]
  cpu_matvec::Matrix down;  // [hidden, inter]
};

// Token `token` is routed to experts[expert] with routing weight `weight`.
struct Assignment {
  int32_t expert;
  int32_t token;
  float weight;
};

class ExpertRunner {
 public:
  // pool: shared, not owned; it must outlive the runner, and no other thread may run it during Run (Run then
  // returns kBusy). Scratch for up to max_tokens tokens, `hidden` columns, intermediate sizes up to max_inter and
  // max_assignments assignments is allocated here, once. Negative sizes count as 0 (every call that needs them is
  // then refused by Run); a null pool makes every Run fail with kInvalidArgument.
  ExpertRunner(cpu_matvec::MatVecPool* pool, int64_t hidden, int64_t max_inter, int max_tokens, int max_assignments);
  ExpertRunner(const ExpertRunner&) = delete;
  ExpertRunner& operator=(const ExpertRunner&) = delete;

  int64_t hidden() const { return hidden_; }
  int64_t max_inter() const { return max_inter_; }
  int max_tokens() const { return max_tokens_; }
  int max_assignments() const { return max_assignments_; }

  // out[t, :] = sum over assignments a with a.token == t of a.weight * FFN_{experts[a.expert]}(x[t, :]),
  // float32 [tokens, hidden]; rows of tokens with no assignment are zero. x: float32 [tokens, hidden]; out must not
  // overlap x. Only experts that some assignment names are read or checked, so `experts` may be a whole layer's
  // table in which other entries are empty (e.g. experts resident on the GPU).
  //
  // Assignments may come in any order. A (token, expert) pair may repeat: its weights then add up (the expert runs
  // once for that token, scaled by the sum). An expert may get any number of tokens (more than
  // cpu_matvec::kMaxBatch are run in several batches).
  //
  // Validates everything before it writes anything, returning kInvalidArgument naming the problem: a null pool,
  // tokens outside 0..max_tokens, null x or out (when tokens > 0), out overlapping x, more than max_assignments
  // assignments, an expert or token index out of range, a non-finite weight, an unknown activation; and for each
  // named expert, a bad matrix (cpu_matvec::Validate, null base), gate/up columns != hidden, down rows != hidden,
  // gate rows != up rows != down columns (the intermediate size), or an intermediate size above max_inter. kBusy
  // when another thread runs the pool (nothing written then either). Any other failure of the pool after writing
  // started is reported as is (out then holds partial results).
  //
  // No heap allocation per call by the runner once constructed (its grouping, gathering and job lists use the
  // scratch allocated by the constructor); MatVecPool::Run allocates only when it sees a longer job list than
  // before.
  Status Run(std::span<const Expert> experts, std::span<const Assignment> assignments, const float* x, int tokens,
             Activation act, float* out);
  // Rounds what a bf16 computation rounds (the products, the activation, act(gate) * up, each expert's output and
  // its weighted output) to bf16, so the host's experts agree with a bf16 GPU's (transformers' bf16 math) instead
  // of being more precise than them; the sum over experts stays float32. Off by default.
  void set_round_bf16(bool on) { round_bf16_ = on; }

 private:
  // One expert's batch: up to kMaxBatch distinct tokens routed to one expert, `rows` rows of the scratch starting
  // at `row` (gathered x rows, gate/up/act rows, down rows, in the same order).
  bool round_bf16_ = false;
  struct Chunk {
    int32_t expert;
    int32_t count;  // tokens in the batch, 1..kMaxBatch
    int32_t row;    // first scratch row
  };

  Status Check(std::span<const Expert> experts, std::span<const Assignment> assignments, const float* x, int tokens,
               Activation act, const float* out) const;
  Status RunPool(std::span<const cpu_matvec::Job> jobs, int batch);

  cpu_matvec::MatVecPool* pool_;
  int64_t hidden_;
  int64_t max_inter_;
  int max_tokens_;
  int max_assignments_;
  cpu_matvec::Isa isa_;  // the pool's, for the activation

  // Per call: assignment indices sorted by (expert, token), then merged into rows (one per distinct pair).
  std::vector<int32_t> order_;       // [max_assignments]
  std::vector<int32_t> row_token_;   // [max_assignments] token of each scratch row
  std::vector<float> row_weight_;    // [max_assignments] summed routing weight of each scratch row
  std::vector<Chunk> chunks_;        // [max_assignments]
  std::vector<cpu_matvec::Job> jobs_;  // [2 * max_assignments]
  std::vector<float> xs_;            // [max_assignments, hidden]: gathered x rows, later the down outputs
  std::vector<float> gate_;          // [max_assignments, max_inter]: gate rows, later act(gate) * up
  std::vector<float> up_;            // [max_assignments, max_inter]
};

}  // namespace bigplan::cpu_experts
