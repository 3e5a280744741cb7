// A prompt's attention with its queries taken in chunks (AttendCache, when the scores of every query would pass
// arch::kAttentionScoreElements) gives the attention of every query at once: causal from position 0, continuing a
// cached sequence, with a sliding window, grouped-query heads and GPT-2's upcast path. CPU, float32: the reference is
// the attention written out (scores, mask, softmax, values) in float64.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "arch/temporaries.h"
#include "executor/kernels_internal.h"

namespace bigplan::kernels_internal {
namespace {

// q [batch, heads, seq, d] at positions start_pos.. over keys/values [batch, kv_heads, start_pos + seq, d].
at::Tensor Reference(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t start_pos, double scale,
                     int64_t window) {
  const int64_t heads = q.size(1), kv_heads = k.size(1), seq = q.size(2), total = k.size(2);
  const at::Tensor kr = k.to(at::kDouble).repeat_interleave(heads / kv_heads, 1);
  const at::Tensor vr = v.to(at::kDouble).repeat_interleave(heads / kv_heads, 1);
  at::Tensor scores = at::matmul(q.to(at::kDouble), kr.transpose(-1, -2)) * scale;
  const at::Tensor qpos = at::arange(start_pos, start_pos + seq, at::kLong).unsqueeze(1);
  const at::Tensor kpos = at::arange(total, at::kLong).unsqueeze(0);
  at::Tensor allowed = kpos <= qpos;
  if (window > 0) allowed = allowed & (kpos > qpos - window);
  scores = scores.masked_fill(allowed.logical_not(), -std::numeric_limits<double>::infinity());
  return at::matmul(at::softmax(scores, -1), vr).to(q.scalar_type());
}

struct Case {
  int64_t batch, heads, kv_heads, seq, start_pos, window;
  bool upcast;
};

class AttendCacheChunksTest : public ::testing::TestWithParam<Case> {};

TEST_P(AttendCacheChunksTest, EqualsEveryQueryAtOnce) {
  const Case c = GetParam();
  const int64_t d = 8, total = c.start_pos + c.seq;
  // The case is chosen so that the queries do come in chunks.
  ASSERT_LT(arch::AttentionQueryChunk(c.batch, c.heads, total, c.seq), c.seq);
  at::manual_seed(5);
  const at::Tensor q = at::randn({c.batch, c.heads, c.seq, d});
  const at::Tensor k = at::randn({c.batch, c.kv_heads, total, d});
  const at::Tensor v = at::randn({c.batch, c.kv_heads, total, d});
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  const at::Tensor got = AttendCache(q, k, v, c.start_pos, scale, c.window, c.upcast);
  ASSERT_EQ(got.sizes(), q.sizes());
  const at::Tensor want = Reference(q, k, v, c.start_pos, scale, c.window);
  EXPECT_LE((got - want).abs().max().item<double>(), 2e-5);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, AttendCacheChunksTest,
    ::testing::Values(Case{1, 32, 32, 1100, 0, 0, false},    // causal from 0: two chunks
                      Case{1, 32, 8, 700, 900, 0, false},    // continuing a cached sequence, grouped heads
                      Case{2, 16, 4, 1100, 0, 300, false},   // a sliding window
                      Case{1, 32, 32, 1100, 0, 0, true}));   // GPT-2's float32 scores and softmax

}  // namespace
}  // namespace bigplan::kernels_internal
