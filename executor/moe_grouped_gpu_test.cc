// A prompt's routed experts as grouped products over every resident expert (kernels_internal::
// GroupedResidentExperts, with its routing and combining kernels) against the host-dispatched path's math (each
// expert's rows gathered, its SwiGLU products, scaled by the routing weights, cast and added in expert order) and
// against float32. GPU only (sm_90: the grouped products); skips without a CUDA device.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "arch/temporaries.h"
#include "executor/fused_ops.h"
#include "executor/kernels_internal.h"

namespace bigplan::kernels_internal {
namespace {

bool HaveGroupedProducts() {
  return at::cuda::is_available() && at::cuda::getDeviceProperties(0)->major >= 9;
}

double MaxRelError(const at::Tensor& a, const at::Tensor& b) {
  const at::Tensor fa = a.to(at::kFloat).cpu(), fb = b.to(at::kFloat).cpu();
  return ((fa - fb).abs().max() / fb.abs().max().clamp_min(1e-30)).item<double>();
}

// `experts` SwiGLU experts laid out as the planner lays out a resident layer: each expert's gate, up and down
// matrices back to back, experts one after another.
struct Experts {
  at::Tensor buffer;                 // [experts, 3 x inter x hidden] bf16 on cuda:0
  at::Tensor gate, up, down;         // views [experts, inter, hidden], [experts, inter, hidden], [experts, hidden, inter]
  BlockWeights::ResidentExpertTable table;
};

Experts MakeExperts(int64_t experts, int64_t hidden, int64_t inter) {
  Experts x;
  const auto opts = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA, 0);
  x.buffer = (at::randn({experts, 3 * inter * hidden}, opts.dtype(at::kFloat)) * 0.05).to(opts);
  x.gate = x.buffer.narrow(1, 0, inter * hidden).view({experts, inter, hidden});
  x.up = x.buffer.narrow(1, inter * hidden, inter * hidden).view({experts, inter, hidden});
  x.down = x.buffer.narrow(1, 2 * inter * hidden, inter * hidden).view({experts, hidden, inter});
  const int64_t stride = 3 * inter * hidden * 2;
  for (int64_t e = 0; e < experts; ++e) {
    const uint64_t base = reinterpret_cast<uint64_t>(x.buffer.data_ptr()) + static_cast<uint64_t>(e * stride);
    x.table.gate_up.push_back(base);
    x.table.down.push_back(base + static_cast<uint64_t>(2 * inter * hidden * 2));
  }
  x.table.hidden = hidden;
  x.table.inter = inter;
  x.table.gate_up_stride = x.table.down_stride = stride;
  return x;
}

// The host-dispatched path's math (kernels_llama.cc HostDispatchedExperts) in `dtype`.
at::Tensor OneByOne(const Experts& ex, const at::Tensor& x, const at::Tensor& topi, const at::Tensor& topw,
                    at::ScalarType dtype) {
  const int64_t experts = ex.gate.size(0), inter = ex.gate.size(1);
  const at::Tensor xd = x.to(dtype);
  at::Tensor out = at::zeros_like(xd);
  for (int64_t e = 0; e < experts; ++e) {
    const at::Tensor hit = (topi == e);
    const at::Tensor rows = hit.any(1).nonzero().reshape({-1});
    if (rows.numel() == 0) continue;
    const at::Tensor w = (topw * hit.to(topw.scalar_type())).sum(1).index_select(0, rows).unsqueeze(1);
    const at::Tensor xe = xd.index_select(0, rows);
    const at::Tensor both = at::linear(xe, at::cat({ex.gate[e], ex.up[e]}, 0).to(dtype));
    const at::Tensor h = at::silu(both.narrow(-1, 0, inter)) * both.narrow(-1, inter, inter);
    const at::Tensor ye = at::linear(h, ex.down[e].to(dtype));
    out.index_add_(0, rows, (ye * (dtype == at::kFloat ? w.to(at::kFloat) : w)).to(dtype));
  }
  return out;
}

struct Routing {
  at::Tensor x, topi, topw;
};

Routing Route(int64_t tokens, int64_t hidden, int64_t experts, int64_t k, bool float32_weights) {
  const auto cuda = at::TensorOptions().device(at::kCUDA, 0);
  Routing r;
  r.x = at::randn({tokens, hidden}, cuda.dtype(at::kFloat)).to(at::kBFloat16);
  const at::Tensor probs = at::softmax(at::randn({tokens, experts}, cuda.dtype(at::kFloat)), -1);
  auto [w, i] = at::topk(probs, k, -1);
  r.topi = i;
  r.topw = float32_weights ? w / w.sum(-1, true) : w.to(at::kBFloat16);
  return r;
}

struct Case {
  int64_t experts, k, hidden, inter, tokens;
  bool float32_weights;
};

class GroupedResidentExpertsTest : public ::testing::TestWithParam<Case> {};

TEST_P(GroupedResidentExpertsTest, MatchTheExpertsOneByOne) {
  if (!HaveGroupedProducts()) GTEST_SKIP() << "needs a CUDA device of sm_90 or later";
  const Case c = GetParam();
  at::manual_seed(11);
  const Experts ex = MakeExperts(c.experts, c.hidden, c.inter);
  const Routing r = Route(c.tokens, c.hidden, c.experts, c.k, c.float32_weights);
  const at::Tensor got = GroupedResidentExperts(r.x, r.topi, r.topw, ex.table);
  ASSERT_TRUE(got.defined());
  EXPECT_EQ(got.sizes(), r.x.sizes());
  EXPECT_EQ(got.scalar_type(), at::kBFloat16);
  const at::Tensor same_math = OneByOne(ex, r.x, r.topi, r.topw, at::kBFloat16);
  const at::Tensor exact = OneByOne(ex, r.x, r.topi, r.topw, at::kFloat);
  const double vs_bf16 = MaxRelError(got, same_math), vs_f32 = MaxRelError(got, exact);
  const double bf16_vs_f32 = MaxRelError(same_math, exact);
  // The products round differently from cuBLAS's one expert at a time (other tiles): within bf16's rounding, and no
  // further from float32 than the one-by-one path (with a margin of one rounding).
  EXPECT_LE(vs_bf16, 2e-2);
  EXPECT_LE(vs_f32, bf16_vs_f32 + 1e-2);
  EXPECT_FALSE(at::isnan(got).any().item<bool>());
  std::printf("[ grouped experts ] %3lld experts top-%lld, %5lld tokens: %.2e from bf16 one by one, %.2e from fp32 "
              "(one by one %.2e)\n",
              static_cast<long long>(c.experts), static_cast<long long>(c.k), static_cast<long long>(c.tokens),
              vs_bf16, vs_f32, bf16_vs_f32);
  // Deterministic: the same call gives the same bits.
  EXPECT_TRUE(at::equal(got, GroupedResidentExperts(r.x, r.topi, r.topw, ex.table)));
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, GroupedResidentExpertsTest,
    ::testing::Values(Case{8, 2, 256, 512, 40, true},                                 // Mixtral-like routing
                      Case{64, 8, 256, 128, 17, false},                               // Qwen-like, just past decode
                      Case{128, 8, 512, 128, 300, false},                             // 128 experts, some unused
                      Case{16, 4, 128, 64, arch::kMoeGroupedTokens + 45, false}));  // two chunks of tokens

// The routing kernel: offs are the cumulative counts per expert, each pair's place lies in its expert's rows and
// holds its token, the places are a permutation of the rows; an id out of range gets place -1 and makes its token's
// combined row NaN.
TEST(GroupedResidentExpertsTest, RouteGroupsThePairsByExpert) {
  if (!HaveGroupedProducts()) GTEST_SKIP() << "needs a CUDA device of sm_90 or later";
  at::manual_seed(9);
  const int64_t experts = 128, tokens = 300, k = 8;
  const Routing r = Route(tokens, 64, experts, k, false);
  at::Tensor ids = r.topi.clone();
  ids[7][3] = experts;  // out of range
  at::Tensor offs, token, place;
  ASSERT_TRUE(fused_ops::MoeRoute(ids, experts, &offs, &token, &place));
  const at::Tensor ids_h = ids.cpu(), offs_h = offs.cpu(), token_h = token.cpu(), place_h = place.cpu();
  std::vector<int64_t> count(experts, 0);
  for (int64_t p = 0; p < tokens * k; ++p) {
    const int64_t e = ids_h.view({-1})[p].item<int64_t>();
    if (e < experts) ++count[e];
  }
  int64_t run = 0;
  std::vector<bool> seen(tokens * k, false);
  for (int64_t e = 0; e < experts; ++e) {
    run += count[e];
    ASSERT_EQ(offs_h[e].item<int32_t>(), run) << "expert " << e;
  }
  EXPECT_EQ(run, tokens * k - 1);
  for (int64_t p = 0; p < tokens * k; ++p) {
    const int64_t e = ids_h.view({-1})[p].item<int64_t>(), s = place_h.view({-1})[p].item<int64_t>();
    if (e >= experts) {
      EXPECT_EQ(s, -1);
      continue;
    }
    ASSERT_GE(s, e == 0 ? 0 : offs_h[e - 1].item<int32_t>());
    ASSERT_LT(s, offs_h[e].item<int32_t>());
    EXPECT_FALSE(seen[s]) << "place " << s << " twice";
    seen[s] = true;
    EXPECT_EQ(token_h[s].item<int64_t>(), p / k);
  }
  // The combine: token 7's row is NaN, the others finite.
  const at::Tensor y = at::randn({tokens * k, 64}, r.x.options());
  const at::Tensor out = fused_ops::MoeCombine(y, ids, r.topw, place);
  ASSERT_TRUE(out.defined());
  EXPECT_TRUE(at::isnan(out[7]).all().item<bool>());
  EXPECT_FALSE(at::isnan(out.narrow(0, 8, tokens - 8)).any().item<bool>());
  EXPECT_FALSE(fused_ops::MoeRoute(ids, fused_ops::kMoeRouteMaxExperts + 1, &offs, &token, &place));
}

// Where the grouped products do not apply it declines (undefined, nothing queued) and the caller dispatches.
TEST(GroupedResidentExpertsTest, DeclinesWhatItDoesNotTake) {
  if (!HaveGroupedProducts()) GTEST_SKIP() << "needs a CUDA device of sm_90 or later";
  at::manual_seed(3);
  Experts ex = MakeExperts(8, 128, 64);
  const Routing r = Route(32, 128, 8, 2, false);
  EXPECT_TRUE(GroupedResidentExperts(r.x, r.topi, r.topw, ex.table).defined());
  // Not bfloat16.
  EXPECT_FALSE(GroupedResidentExperts(r.x.to(at::kFloat), r.topi, r.topw.to(at::kFloat), ex.table).defined());
  // Experts not at equal distances.
  BlockWeights::ResidentExpertTable uneven = ex.table;
  uneven.gate_up_stride = 0;
  EXPECT_FALSE(GroupedResidentExperts(r.x, r.topi, r.topw, uneven).defined());
  // A stride shorter than an expert's matrices.
  BlockWeights::ResidentExpertTable overlapping = ex.table;
  overlapping.down_stride = 2 * 64 * 128 - 16;
  EXPECT_FALSE(GroupedResidentExperts(r.x, r.topi, r.topw, overlapping).defined());
  // Choices that do not match the tokens.
  EXPECT_FALSE(GroupedResidentExperts(r.x, r.topi.narrow(0, 0, 16), r.topw.narrow(0, 0, 16), ex.table).defined());
}

}  // namespace
}  // namespace bigplan::kernels_internal
