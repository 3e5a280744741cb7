// The fused kernels against the LibTorch compositions they stand for (on CUDA device 0 when built with
// BIGPLAN_TEST_CUDA), and the wrappers declining what the kernels do not take (everywhere).
#include "executor/fused_ops.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <thread>
#include <tuple>
#include <vector>

#ifdef BIGPLAN_TEST_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include "executor/fused_cuda.h"
#endif

namespace bigplan::fused_ops {
namespace {

TEST(FusedOps, DeclineCpuAndFloat32) {
  const at::Tensor x = at::randn({2, 64});
  const at::Tensor w = at::randn({32, 64});
  EXPECT_FALSE(Eligible(x));
  EXPECT_FALSE(Linear(x, w, at::Tensor(), at::Tensor()).defined());
  EXPECT_FALSE(RmsNorm(x, at::ones({64}), 1e-5).defined());
  EXPECT_FALSE(SiluMul(x).defined());
  EXPECT_FALSE(Eligible(x.to(at::kBFloat16)));  // on the CPU
  const at::Tensor cache = at::zeros({1, 2, 16, 32});
  EXPECT_FALSE(DecodeAttention(at::randn({1, 4, 1, 32}), cache, cache, StepPositions{}, 16, 0, 1.0).defined());
  int64_t top = -1;
  EXPECT_FALSE(TopRows(at::randn({1, 64}), at::ones({64}), w, 2, &top));
  EXPECT_EQ(top, -1);
  EXPECT_FALSE(RopeKvWrite(at::randn({1, 1, 128}), at::randn({1, 1, 64}), at::randn({1, 1, 64}), 4, 2, 32,
                           at::ones({16, 32}), at::zeros({16, 32}), StepPositions{}, cache, cache, at::Tensor(),
                           at::Tensor(), 1e-6)
                   .defined());
  EXPECT_FALSE(NormLinear(x, at::ones({64}), 1e-5, w, at::Tensor()).defined());
  EXPECT_FALSE(GateUpSiluMul(x, at::ones({64}), 1e-5, w, at::Tensor()).defined());
  EXPECT_FALSE(QkvRopeKvWrite(at::randn({1, 1, 64}), at::ones({64}), 1e-6, at::randn({256, 64}), at::Tensor(), 4, 2,
                              32, at::ones({16, 32}), at::zeros({16, 32}), StepPositions{}, cache, cache)
                   .defined());
}

#ifdef BIGPLAN_TEST_CUDA

class FusedOpsGpu : public ::testing::TestWithParam<at::ScalarType> {
 protected:
  void SetUp() override {
    if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
    at::manual_seed(3);
  }
  at::TensorOptions Opts() const { return at::TensorOptions().dtype(GetParam()).device(at::kCUDA, 0); }
  // Differences of one or two roundings of the execution dtype (the sums run in another order).
  double Tol() const { return GetParam() == at::kBFloat16 ? 2e-2 : 4e-3; }
  void ExpectClose(const at::Tensor& got, const at::Tensor& want, const char* what) {
    ASSERT_TRUE(got.defined()) << what;
    ASSERT_EQ(got.sizes(), want.sizes()) << what;
    const at::Tensor g = got.to(at::kFloat).cpu(), w = want.to(at::kFloat).cpu();
    const double scale = std::max(1.0, w.abs().max().item<double>());
    const double err = (g - w).abs().max().item<double>() / scale;
    EXPECT_LE(err, Tol()) << what;
    EXPECT_FALSE(std::isnan(g.sum().item<double>())) << what;
  }
};

at::Tensor RefRmsNorm(const at::Tensor& x, const at::Tensor& w, double eps) {
  at::Tensor h = x.to(at::kFloat);
  h = h * at::rsqrt(h.pow(2).mean(-1, true) + eps);
  return w * h.to(x.scalar_type());
}

at::Tensor RotateHalf(const at::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

TEST_P(FusedOpsGpu, LinearMatchesLinearPlusResidual) {
  for (int64_t m : {1, 2, 3, 17}) {  // the fused kernel (1, 2 rows) and cuBLAS
    for (auto [n, k] : std::vector<std::pair<int64_t, int64_t>>{{256, 512}, {1000, 4096}, {24, 2056}}) {
      const at::Tensor x = at::randn({m, k}, Opts());
      const at::Tensor w = at::randn({n, k}, Opts()) * 0.05;
      const at::Tensor b = at::randn({n}, Opts());
      const at::Tensor r = at::randn({m, n}, Opts());
      ExpectClose(Linear(x, w, at::Tensor(), at::Tensor()), at::linear(x, w), "plain");
      ExpectClose(Linear(x, w, b, at::Tensor()), at::linear(x, w, b), "bias");
      ExpectClose(Linear(x, w, at::Tensor(), r), r + at::linear(x, w), "residual");
      ExpectClose(Linear(x, w, b, r), r + at::linear(x, w, b), "bias and residual");
      // A column slice of a wider tensor (rows at a stride), as views of one fused product are.
      const at::Tensor wide = at::randn({m, k + 64}, Opts());
      const at::Tensor xs = wide.narrow(1, 64, k);
      ExpectClose(Linear(xs.view({m, 1, k}), w, at::Tensor(), at::Tensor()), at::linear(xs, w).view({m, 1, n}),
                  "strided rows");
    }
  }
  EXPECT_FALSE(Linear(at::randn({1, 64}, Opts()), at::randn({32, 64}, Opts()).to(at::kFloat), at::Tensor(),
                      at::Tensor())
                   .defined());
}

TEST_P(FusedOpsGpu, RmsNormAndSiluMul) {
  for (int64_t rows : {1, 5, 512}) {
    for (int64_t cols : {64, 2048, 4096, 5000}) {
      const at::Tensor x = at::randn({rows, cols}, Opts()) * 3;
      const at::Tensor w = at::randn({cols}, Opts());
      ExpectClose(RmsNorm(x, w, 1e-5), RefRmsNorm(x, w, 1e-5), "rms_norm");
      const at::Tensor gu = at::randn({rows, 2 * cols}, Opts()) * 4;
      ExpectClose(SiluMul(gu), at::silu(gu.narrow(1, 0, cols)) * gu.narrow(1, cols, cols), "silu_mul");
    }
  }
}

// The fused kernels are launched as programmatic dependents of the kernel before them (executor/pdl.cuh): each
// waits for its predecessors before it reads their outputs. A chain of dependent products, norms and SiLU issued back
// to back (eagerly and replayed from a graph) gives the same bits as the same chain with the host waiting for the
// GPU after every op, where nothing can overlap.
TEST_P(FusedOpsGpu, ChainedKernelsSeeTheirPredecessorsWrites) {
  constexpr int64_t kHidden = 2048, kInter = 4096;
  constexpr int kLayers = 24;
  std::vector<at::Tensor> norm, up, down;
  for (int l = 0; l < kLayers; ++l) {
    norm.push_back(at::randn({kHidden}, Opts()));
    up.push_back(at::randn({2 * kInter, kHidden}, Opts()) * 0.03);
    down.push_back(at::randn({kHidden, kInter}, Opts()) * 0.03);
  }
  const at::Tensor x0 = at::randn({1, kHidden}, Opts());
  // The inputs were written on the default stream; the chains run on a side stream that does not wait for it.
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  auto chain = [&](bool sync) {
    // Each op's result, with the host waiting for it first when `sync`.
    auto op = [sync](at::Tensor t) {
      if (sync) c10::cuda::getCurrentCUDAStream().synchronize();
      return t;
    };
    at::Tensor x = x0;
    for (int l = 0; l < kLayers; ++l) {
      const at::Tensor h = op(RmsNorm(x, norm[l], 1e-5));
      const at::Tensor gu = op(Linear(h, up[l], at::Tensor(), at::Tensor()));
      const at::Tensor act = op(SiluMul(gu));
      x = op(Linear(act, down[l], at::Tensor(), x));
    }
    return x;
  };
  // The same chain with the norm, the product and SiLU in one kernel (GateUpSiluMul), issued back to back.
  auto fused_chain = [&] {
    at::Tensor x = x0;
    for (int l = 0; l < kLayers; ++l) x = Linear(GateUpSiluMul(x, norm[l], 1e-5, up[l], at::Tensor()), down[l],
                                                 at::Tensor(), x);
    return x;
  };
  c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool();
  c10::cuda::CUDAStreamGuard guard(side);
  const at::Tensor want = chain(true);
  EXPECT_TRUE(at::equal(chain(false), want));
  EXPECT_TRUE(at::equal(fused_chain(), want)) << "fused products";
  at::cuda::CUDAGraph graph;
  graph.capture_begin();
  const at::Tensor captured = chain(false);
  graph.capture_end();
  at::cuda::CUDAGraph fused_graph;
  fused_graph.capture_begin();
  const at::Tensor fused_captured = fused_chain();
  fused_graph.capture_end();
  for (int r = 0; r < 3; ++r) {
    graph.replay();
    fused_graph.replay();
    side.synchronize();
    EXPECT_TRUE(at::equal(captured, want)) << "replay " << r;
    EXPECT_TRUE(at::equal(fused_captured, want)) << "fused products, replay " << r;
  }
}

// The products with their neighbours fused in (NormLinear, GateUpSiluMul, QkvRopeKvWrite) give the bits of the ops
// one by one, for one and two rows, row lengths whose norm block is smaller and larger than the product's, biases and
// rows at a stride; they decline what they cannot stage.
TEST_P(FusedOpsGpu, FusedProductsEqualTheOpsOneByOne) {
  const double eps = 1e-5;
  for (int64_t m : {1, 2}) {
    for (int64_t k : {64, 1000, 4096, 5000, 8192}) {
      const int64_t n = 2 * 344;
      const at::Tensor wide = at::randn({m, k + 8}, Opts()) * 2;
      for (bool strided : {false, true}) {
        const at::Tensor x = strided ? wide.narrow(1, 8, k) : wide.narrow(1, 0, k).contiguous();
        const at::Tensor nw = at::randn({k}, Opts());
        const at::Tensor w = at::randn({n, k}, Opts()) * 0.05;
        const at::Tensor b = at::randn({n}, Opts());
        const at::Tensor h = RmsNorm(x, nw, eps);
        for (const at::Tensor& bias : {at::Tensor(), b}) {
          const at::Tensor got = NormLinear(x, nw, eps, w, bias);
          ASSERT_TRUE(got.defined()) << m << " x " << k;
          EXPECT_TRUE(at::equal(got, Linear(h, w, bias, at::Tensor()))) << "norm + product, " << m << " x " << k;
          // The normed rows written beside the product: RmsNorm's bits, the product unchanged.
          at::Tensor normed;
          EXPECT_TRUE(at::equal(NormLinear(x, nw, eps, w, bias, &normed), got)) << m << " x " << k;
          ASSERT_TRUE(normed.defined());
          EXPECT_EQ(normed.sizes(), x.sizes());
          EXPECT_TRUE(at::equal(normed, h)) << "normed rows, " << m << " x " << k;
          EXPECT_TRUE(at::equal(GateUpSiluMul(x, nw, eps, w, bias), SiluMul(Linear(h, w, bias, at::Tensor()))))
              << "norm + gate/up + silu, " << m << " x " << k;
          EXPECT_TRUE(at::equal(GateUpSiluMul(x, at::Tensor(), eps, w, bias),
                                SiluMul(Linear(x, w, bias, at::Tensor()))))
              << "gate/up + silu, " << m << " x " << k;
        }
      }
    }
  }
  // More rows than the device's resident blocks take at one row group a warp: each warp loops over several.
  for (int64_t m : {1, 2}) {
    const int64_t k = 64, n = 2 * 40000;
    const at::Tensor x = at::randn({m, k}, Opts());
    const at::Tensor nw = at::randn({k}, Opts());
    const at::Tensor w = at::randn({n, k}, Opts()) * 0.1;
    const at::Tensor h = RmsNorm(x, nw, eps);
    EXPECT_TRUE(at::equal(NormLinear(x, nw, eps, w, at::Tensor()), Linear(h, w, at::Tensor(), at::Tensor())))
        << "norm + product, " << m << " x " << n;
    at::Tensor normed;
    EXPECT_TRUE(NormLinear(x, nw, eps, w, at::Tensor(), &normed).defined());
    EXPECT_TRUE(normed.defined() && at::equal(normed, h)) << "normed rows, several blocks, " << m << " x " << n;
    EXPECT_TRUE(at::equal(GateUpSiluMul(x, nw, eps, w, at::Tensor()), SiluMul(Linear(h, w, at::Tensor(), at::Tensor()))))
        << "norm + gate/up + silu, " << m << " x " << n;
  }
  // Two rows of 16384 do not fit the staging memory: declined, nothing computed.
  const at::Tensor big = at::randn({2, 16384}, Opts());
  EXPECT_FALSE(NormLinear(big, at::randn({16384}, Opts()), eps, at::randn({8, 16384}, Opts()), at::Tensor()).defined());
  EXPECT_TRUE(NormLinear(big.narrow(0, 0, 1), at::randn({16384}, Opts()), eps, at::randn({8, 16384}, Opts()),
                         at::Tensor())
                  .defined());
  EXPECT_FALSE(GateUpSiluMul(big, at::Tensor(), eps, at::randn({7, 16384}, Opts()), at::Tensor()).defined())
      << "odd row count";
}

// QkvRopeKvWrite writes what RopeKvWrite writes after the norm and the product: the rotated q and both caches, for
// a decode step at a device position, two rows at their own positions in their own cache rows, and a two-token
// prompt at a host position, with and without biases, head_dim 64 and 128.
TEST_P(FusedOpsGpu, QkvRopeKvWriteEqualsTheOpsOneByOne) {
  const int64_t max_seq = 40, cache_rows = 3;
  const double eps = 1e-6;
  const auto i64 = at::TensorOptions().dtype(at::kLong).device(at::kCUDA, 0);
  // (heads, kv_heads, hidden, head_dim); the last has more row pairs than the device's resident warps take at once.
  for (auto [heads, kv_heads, hidden, D] : std::vector<std::tuple<int64_t, int64_t, int64_t, int64_t>>{
           {8, 2, 512, 64}, {8, 2, 512, 128}, {64, 16, 64, 128}}) {
    const at::Tensor inv = 1.0 / at::pow(10000.0, at::arange(0, D, 2, at::kFloat) / D);
    const at::Tensor emb = at::cat({at::outer(at::arange(max_seq, at::kFloat), inv),
                                    at::outer(at::arange(max_seq, at::kFloat), inv)}, -1);
    const at::Tensor cos = emb.cos().to(Opts()), sin = emb.sin().to(Opts());
    const int64_t n = (heads + 2 * kv_heads) * D;
    const at::Tensor w = at::randn({n, hidden}, Opts()) * 0.05;
    const at::Tensor nw = at::randn({hidden}, Opts());
    struct Case {
      int64_t batch, seq;
      StepPositions at;
    };
    const std::vector<Case> cases = {
        {1, 1, StepPositions{at::full({1}, 17, i64), false, 0, at::Tensor()}},
        {2, 1, StepPositions{at::tensor({33, 4}, i64), true, 0, at::tensor({2, 0}, i64)}},
        {1, 2, StepPositions{at::Tensor(), false, 38, at::Tensor()}},
    };
    for (const Case& c : cases) {
      for (bool with_bias : {false, true}) {
        const at::Tensor b = with_bias ? at::randn({n}, Opts()) : at::Tensor();
        const at::Tensor x = at::randn({c.batch, c.seq, hidden}, Opts());
        const at::Tensor kc0 = at::randn({cache_rows, kv_heads, max_seq, D}, Opts()), vc0 = at::randn_like(kc0);
        at::Tensor kc[2] = {kc0.clone(), kc0.clone()}, vc[2] = {vc0.clone(), vc0.clone()};
        const at::Tensor got = QkvRopeKvWrite(x, nw, eps, w, b, heads, kv_heads, D, cos, sin, c.at, kc[0], vc[0]);
        ASSERT_TRUE(got.defined()) << heads << " heads of " << D;
        const at::Tensor qkv = Linear(RmsNorm(x, nw, eps), w, b, at::Tensor());
        const at::Tensor want = RopeKvWrite(qkv.narrow(2, 0, heads * D), qkv.narrow(2, heads * D, kv_heads * D),
                                            qkv.narrow(2, (heads + kv_heads) * D, kv_heads * D), heads, kv_heads, D,
                                            cos, sin, c.at, kc[1], vc[1], at::Tensor(), at::Tensor(), eps);
        ASSERT_TRUE(want.defined());
        EXPECT_EQ(got.sizes(), want.sizes());
        EXPECT_TRUE(at::equal(got, want)) << "q, head_dim " << D << ", batch " << c.batch << ", seq " << c.seq;
        EXPECT_TRUE(at::equal(kc[0], kc[1])) << "k cache, head_dim " << D << ", batch " << c.batch;
        EXPECT_TRUE(at::equal(vc[0], vc[1])) << "v cache, head_dim " << D << ", batch " << c.batch;
        EXPECT_FALSE(at::equal(kc[0], kc0)) << "the cache was written";
      }
    }
    // Qwen3's per-head norms are not fused: RopeKvWrite takes them, the fused product is not offered them. A product
    // of the wrong width is declined.
    const at::Tensor x = at::randn({1, 1, hidden}, Opts());
    at::Tensor kc = at::zeros({cache_rows, kv_heads, max_seq, D}, Opts()), vc = at::zeros_like(kc);
    EXPECT_FALSE(QkvRopeKvWrite(x, nw, eps, w.narrow(0, 0, n - 2 * D), at::Tensor(), heads, kv_heads, D, cos, sin,
                                StepPositions{at::Tensor(), false, 1, at::Tensor()}, kc, vc)
                     .defined());
    EXPECT_EQ(kc.abs().sum().item<double>(), 0.0);
  }
}

// RoPE + cache write for a prefill (seq 5 at start 3), a decode step at a device position, and rows at their own
// positions in their own cache rows, with and without Qwen3's per-head norms.
TEST_P(FusedOpsGpu, RopeKvWriteMatchesReference) {
  const int64_t heads = 8, kv_heads = 2, D = 64, max_seq = 32, cache_rows = 4;
  const at::Tensor inv = 1.0 / at::pow(10000.0, at::arange(0, D, 2, at::kFloat) / D);
  const at::Tensor freqs = at::outer(at::arange(max_seq, at::kFloat), inv);
  const at::Tensor emb = at::cat({freqs, freqs}, -1);
  const at::Tensor cos = emb.cos().to(Opts()), sin = emb.sin().to(Opts());
  for (bool norms : {false, true}) {
    const at::Tensor qn = norms ? at::randn({D}, Opts()) : at::Tensor();
    const at::Tensor kn = norms ? at::randn({D}, Opts()) : at::Tensor();
    struct Case {
      int64_t batch, seq;
      StepPositions at;
      std::vector<int64_t> pos, rows;  // per batch row
    };
    const auto i64 = at::TensorOptions().dtype(at::kLong).device(at::kCUDA, 0);
    std::vector<Case> cases;
    cases.push_back({2, 5, StepPositions{at::Tensor(), false, 3, at::Tensor()}, {3, 3}, {0, 1}});
    cases.push_back({1, 1, StepPositions{at::full({1}, 17, i64), false, 0, at::Tensor()}, {17}, {0}});
    cases.push_back({3, 1, StepPositions{at::tensor({4, 30, 9}, i64), true, 0, at::tensor({2, 0, 3}, i64)},
                     {4, 30, 9}, {2, 0, 3}});
    for (const Case& c : cases) {
      const at::Tensor qkv = at::randn({c.batch, c.seq, (heads + 2 * kv_heads) * D}, Opts());
      const at::Tensor q = qkv.narrow(2, 0, heads * D), k = qkv.narrow(2, heads * D, kv_heads * D),
                       v = qkv.narrow(2, (heads + kv_heads) * D, kv_heads * D);
      at::Tensor kc = at::zeros({cache_rows, kv_heads, max_seq, D}, Opts()), vc = at::zeros_like(kc);
      const at::Tensor got = RopeKvWrite(q, k, v, heads, kv_heads, D, cos, sin, c.at, kc, vc, qn, kn, 1e-6);
      ASSERT_TRUE(got.defined());
      for (int64_t b = 0; b < c.batch; ++b) {
        const at::Tensor pos = at::arange(c.pos[b], c.pos[b] + c.seq, i64);
        const at::Tensor cb = cos.index_select(0, pos).view({1, c.seq, D}), sb = sin.index_select(0, pos).view({1, c.seq, D});
        at::Tensor qb = q[b].reshape({c.seq, heads, D}).transpose(0, 1);  // [heads, seq, D]
        at::Tensor kb = k[b].reshape({c.seq, kv_heads, D}).transpose(0, 1);
        if (norms) {
          qb = RefRmsNorm(qb, qn, 1e-6);
          kb = RefRmsNorm(kb, kn, 1e-6);
        }
        ExpectClose(got[b], qb * cb + RotateHalf(qb) * sb, "q");
        ExpectClose(kc[c.rows[b]].narrow(1, c.pos[b], c.seq), kb * cb + RotateHalf(kb) * sb, "k cache");
        ExpectClose(vc[c.rows[b]].narrow(1, c.pos[b], c.seq), v[b].reshape({c.seq, kv_heads, D}).transpose(0, 1),
                    "v cache");
      }
    }
  }
}

// The vectorized kernel (head_dim 64, 128, 256 with aligned rows) and the scalar one (taken when a row is not
// aligned) write the same bits, with and without Qwen3's per-head norms; q comes back as a view of token-major memory.
TEST_P(FusedOpsGpu, RopeKvVectorAndScalarAgreeBitForBit) {
  const int64_t heads = 4, kv_heads = 2, max_seq = 24, batch = 2, seq = 7;
  for (int64_t D : {64, 128, 256}) {
    const at::Tensor inv = 1.0 / at::pow(10000.0, at::arange(0, D, 2, at::kFloat) / D);
    const at::Tensor emb = at::cat({at::outer(at::arange(max_seq, at::kFloat), inv), at::outer(at::arange(max_seq, at::kFloat), inv)}, -1);
    const at::Tensor cos = emb.cos().to(Opts()), sin = emb.sin().to(Opts());
    for (bool norms : {false, true}) {
      const at::Tensor qn = norms ? at::randn({D}, Opts()) : at::Tensor();
      const at::Tensor kn = norms ? at::randn({D}, Opts()) : at::Tensor();
      const int64_t width = (heads + 2 * kv_heads) * D;
      // The same values twice: at an aligned base, and one element past it (every row misaligned).
      const at::Tensor buf = at::randn({batch * seq * width + 1}, Opts());
      const at::Tensor aligned = buf.narrow(0, 0, batch * seq * width).view({batch, seq, width}).clone();
      at::Tensor shifted_buf = at::empty({batch * seq * width + 1}, Opts());
      shifted_buf.narrow(0, 1, batch * seq * width).copy_(aligned.view({-1}));
      const at::Tensor shifted = shifted_buf.narrow(0, 1, batch * seq * width).view({batch, seq, width});
      at::Tensor outs[2], kcs[2], vcs[2];
      int i = 0;
      for (const at::Tensor& qkv : {aligned, shifted}) {
        kcs[i] = at::zeros({batch, kv_heads, max_seq, D}, Opts());
        vcs[i] = at::zeros_like(kcs[i]);
        outs[i] = RopeKvWrite(qkv.narrow(2, 0, heads * D), qkv.narrow(2, heads * D, kv_heads * D),
                              qkv.narrow(2, (heads + kv_heads) * D, kv_heads * D), heads, kv_heads, D, cos, sin,
                              StepPositions{at::Tensor(), false, 5, at::Tensor()}, kcs[i], vcs[i], qn, kn, 1e-6);
        ASSERT_TRUE(outs[i].defined()) << D;
        ++i;
      }
      EXPECT_EQ(outs[0].sizes(), (at::IntArrayRef{batch, heads, seq, D}));
      EXPECT_TRUE(outs[0].transpose(1, 2).is_contiguous()) << "token-major q";
      EXPECT_TRUE(at::equal(outs[0], outs[1])) << "q, head_dim " << D << (norms ? ", norms" : "");
      EXPECT_TRUE(at::equal(kcs[0], kcs[1])) << "k cache, head_dim " << D << (norms ? ", norms" : "");
      EXPECT_TRUE(at::equal(vcs[0], vcs[1])) << "v cache, head_dim " << D;
      EXPECT_GT(kcs[0].abs().sum().item<double>(), 0.0);
    }
  }
}

// Reference decode attention in float32 over positions [lo, pos] of each row's cache row.
at::Tensor RefDecode(const at::Tensor& q, const at::Tensor& kc, const at::Tensor& vc, const std::vector<int64_t>& pos,
                     const std::vector<int64_t>& rows, int64_t window, double scale) {
  const int64_t batch = q.size(0), heads = q.size(1), D = q.size(3), kv_heads = kc.size(1);
  std::vector<at::Tensor> outs;
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t lo = window > 0 ? std::max<int64_t>(0, pos[b] - window + 1) : 0;
    at::Tensor keys = kc[rows[b]].narrow(1, lo, pos[b] - lo + 1).to(at::kFloat);  // [kv_heads, L, D]
    at::Tensor vals = vc[rows[b]].narrow(1, lo, pos[b] - lo + 1).to(at::kFloat);
    keys = keys.repeat_interleave(heads / kv_heads, 0);
    vals = vals.repeat_interleave(heads / kv_heads, 0);
    const at::Tensor qb = q[b].to(at::kFloat);  // [heads, 1, D]
    const at::Tensor p = at::softmax(at::matmul(qb, keys.transpose(1, 2)) * scale, -1);
    outs.push_back(at::matmul(p, vals).to(q.scalar_type()));
  }
  (void)D;
  return at::stack(outs);
}

TEST_P(FusedOpsGpu, DecodeAttentionMatchesReference) {
  const auto i64 = at::TensorOptions().dtype(at::kLong).device(at::kCUDA, 0);
  for (auto [heads, kv_heads, D] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
           {32, 8, 128}, {8, 8, 64}, {32, 4, 128}, {16, 2, 256}, {6, 3, 96}}) {
    const int64_t max_seq = 300, cache_rows = 3;
    const at::Tensor kc = at::randn({cache_rows, kv_heads, max_seq, D}, Opts());
    const at::Tensor vc = at::randn({cache_rows, kv_heads, max_seq, D}, Opts());
    const double scale = 1.0 / std::sqrt(static_cast<double>(D));
    for (int64_t window : {0, 40}) {
      // One position for one row (device and host), then rows at their own positions in their own cache rows.
      const at::Tensor q1 = at::randn({1, heads, 1, D}, Opts());
      for (int64_t pos : {0, 1, 15, 200, 299}) {
        const at::Tensor want = RefDecode(q1, kc, vc, {pos}, {0}, window, scale);
        ExpectClose(DecodeAttention(q1, kc, vc, StepPositions{at::full({1}, pos, i64), false, 0, at::Tensor()},
                                    max_seq, window, scale),
                    want, "device position");
        ExpectClose(DecodeAttention(q1, kc, vc, StepPositions{at::Tensor(), false, pos, at::Tensor()}, pos + 1,
                                    window, scale),
                    want, "host position");
      }
      const at::Tensor q3 = at::randn({3, heads, 1, D}, Opts());
      const std::vector<int64_t> pos{7, 299, 120}, rows{1, 2, 0};
      ExpectClose(DecodeAttention(q3, kc, vc, StepPositions{at::tensor(pos, i64), true, 0, at::tensor(rows, i64)},
                                  max_seq, window, scale),
                  RefDecode(q3, kc, vc, pos, rows, window, scale), "rows");
    }
  }
}

// A row attending few keys uses the same splits whatever the cache's length (DecodeAttnArgs::min_chunk), so a decode
// step captured for a long cache gives the bits of the eager step, which splits by the keys attended.
TEST_P(FusedOpsGpu, DecodeAttentionOfShortRowsDoesNotDependOnTheCacheLength) {
  const auto i64 = at::TensorOptions().dtype(at::kLong).device(at::kCUDA, 0);
  for (auto [heads, kv_heads] : std::vector<std::pair<int64_t, int64_t>>{{32, 8}, {16, 4}, {8, 1}}) {
    const int64_t D = 128, max_seq = 4096;
    const at::Tensor kc = at::randn({1, kv_heads, max_seq, D}, Opts());
    const at::Tensor vc = at::randn({1, kv_heads, max_seq, D}, Opts());
    const at::Tensor q = at::randn({1, heads, 1, D}, Opts());
    const double scale = 1.0 / std::sqrt(static_cast<double>(D));
    for (int64_t pos : {0, 20, 100, 511}) {
      const at::Tensor whole =
          DecodeAttention(q, kc, vc, StepPositions{at::full({1}, pos, i64), false, 0, at::Tensor()}, max_seq, 0, scale);
      const at::Tensor eager =
          DecodeAttention(q, kc, vc, StepPositions{at::Tensor(), false, pos, at::Tensor()}, pos + 1, 0, scale);
      EXPECT_TRUE(at::equal(whole, eager)) << heads << "/" << kv_heads << " heads, position " << pos;
      ExpectClose(whole, RefDecode(q, kc, vc, {pos}, {0}, 0, scale), "long cache");
    }
  }
}

// The decode attention captured once in a CUDA graph replays at any position written to its position tensor.
TEST_P(FusedOpsGpu, DecodeAttentionReplaysFromAGraphAtAnyPosition) {
  const auto i64 = at::TensorOptions().dtype(at::kLong).device(at::kCUDA, 0);
  const int64_t heads = 32, kv_heads = 8, D = 128, max_seq = 512;
  const at::Tensor kc = at::randn({1, kv_heads, max_seq, D}, Opts());
  const at::Tensor vc = at::randn({1, kv_heads, max_seq, D}, Opts());
  const at::Tensor q = at::randn({1, heads, 1, D}, Opts());
  const at::Tensor pos = at::zeros({1}, i64);
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);  // the inputs, written on the default stream, before the side one
  c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool();
  at::Tensor out;
  at::cuda::CUDAGraph graph;
  {
    c10::cuda::CUDAStreamGuard guard(side);
    out = DecodeAttention(q, kc, vc, StepPositions{pos, false, 0, at::Tensor()}, max_seq, 0, scale);  // warm-up
    graph.capture_begin();
    out = DecodeAttention(q, kc, vc, StepPositions{pos, false, 0, at::Tensor()}, max_seq, 0, scale);
    graph.capture_end();
  }
  for (int64_t p : {3, 511, 64}) {
    pos.fill_(p);
    graph.replay();
    ExpectClose(out, RefDecode(q, kc, vc, {p}, {0}, 0, scale), "replayed");
  }
}

// TopRows: the indices of the largest x . (scale * w[r]), largest first, as LibTorch's topk of the float32 product
// (the router of a sparse layer scored on another layer's input: executor/expert_engine.h); ties go to the lower row.
TEST_P(FusedOpsGpu, TopRowsMatchesTopk) {
  const auto f32 = at::TensorOptions().dtype(at::kFloat).device(at::kCUDA, 0);
  const auto i64 = at::TensorOptions().dtype(at::kLong).device(at::kCUDA, 0);
  for (const auto& [n, k, top] : std::vector<std::tuple<int64_t, int64_t, int>>{{128, 2048, 8}, {8, 4096, 2},
                                                                               {60, 64, 3}, {4096, 128, 64}}) {
    const at::Tensor x = at::randn({1, k}, Opts());
    const at::Tensor scale = at::rand({k}, f32) + 0.5;
    const at::Tensor w = at::randn({n, k}, Opts());
    at::Tensor out = at::full({top}, -1, i64);
    ASSERT_TRUE(TopRows(x, scale, w, top, out.data_ptr<int64_t>())) << n << " x " << k;
    const at::Tensor score = at::matmul(w.to(at::kFloat), (x.to(at::kFloat)[0] * scale));
    const at::Tensor want = std::get<1>(at::topk(score, top));
    // (float32 sums in another order may swap two nearly equal scores: compare the scores picked.)
    const at::Tensor got_scores = score.index_select(0, out), want_scores = score.index_select(0, want);
    EXPECT_LE((got_scores - want_scores).abs().max().item<double>(), 1e-3 * want_scores.abs().max().item<double>())
        << n << " x " << k;
  }
  // Equal scores: the lower rows first.
  const at::Tensor w = at::ones({16, 64}, Opts());
  at::Tensor out = at::full({4}, -1, i64);
  ASSERT_TRUE(TopRows(at::ones({1, 64}, Opts()), at::ones({64}, f32), w, 4, out.data_ptr<int64_t>()));
  EXPECT_TRUE(at::equal(out.cpu(), at::arange(4, at::kLong)));
  // Declined: more than one row, top above n, columns not a multiple of 8.
  EXPECT_FALSE(TopRows(at::ones({2, 64}, Opts()), at::ones({64}, f32), w, 2, out.data_ptr<int64_t>()));
  EXPECT_FALSE(TopRows(at::ones({1, 64}, Opts()), at::ones({64}, f32), w, 17, out.data_ptr<int64_t>()));
  EXPECT_FALSE(TopRows(at::ones({1, 60}, Opts()), at::ones({60}, f32), at::ones({16, 60}, Opts()), 2,
                       out.data_ptr<int64_t>()));
}

// RouterTopK against the LibTorch ops it replaces (softmax over float32 logits, topk, the division, the cast): the
// same choices (compared by their probabilities: an exact tie may list either first) and weights within the last
// bit of the weight dtype.
TEST_P(FusedOpsGpu, RouterTopKMatchesSoftmaxTopk) {
  for (const auto& [n, top] : std::vector<std::pair<int64_t, int>>{{128, 8}, {8, 2}, {60, 4}, {1024, 64}, {4096, 8}}) {
    for (const bool renorm : {true, false}) {
      for (const at::ScalarType logit_type : {GetParam(), at::kFloat}) {
        for (const at::ScalarType weight_type : {GetParam(), at::kFloat}) {
          SCOPED_TRACE(std::to_string(n) + " top " + std::to_string(top) + (renorm ? " renorm" : "") + " logits " +
                       c10::toString(logit_type) + " weights " + c10::toString(weight_type));
          const at::Tensor logits = (at::randn({1, n}, Opts()) * 3).to(logit_type);
          auto [w, ids] = RouterTopK(logits, top, renorm, weight_type);
          ASSERT_TRUE(w.defined() && ids.defined());
          const at::Tensor probs = at::softmax(logits.to(at::kFloat), -1);
          auto [want_w, want_ids] = at::topk(probs, top, -1);
          if (renorm) want_w = want_w / want_w.sum(-1, true);
          want_w = want_w.to(weight_type);
          const at::Tensor got_p = probs.index_select(1, ids[0]), want_p = probs.index_select(1, want_ids[0]);
          EXPECT_TRUE(at::equal(got_p, want_p));
          const double ulp = weight_type == at::kFloat ? 1.2e-7 : weight_type == at::kHalf ? 9.8e-4 : 7.9e-3;
          const double err = (w.to(at::kFloat) - want_w.to(at::kFloat)).abs().max().item<double>();
          EXPECT_LE(err, 2 * ulp * want_w.to(at::kFloat).abs().max().item<double>());
        }
      }
    }
  }
  // The copy for the host (here device memory standing in for mapped memory): the same ids, each weight's value in
  // float32, and x in float32.
  for (const at::ScalarType weight_type : {GetParam(), at::kFloat}) {
    const at::Tensor logits = (at::randn({1, 128}, Opts()) * 3).to(GetParam());
    const at::Tensor x = at::randn({1, 2048}, Opts());
    at::Tensor host_ids = at::full({8}, -1, Opts().dtype(at::kLong));
    at::Tensor host_w = at::zeros({8}, Opts().dtype(at::kFloat));
    at::Tensor host_x = at::zeros({2048}, Opts().dtype(at::kFloat));
    auto [w, ids] = RouterTopK(logits, 8, true, weight_type, host_ids.data_ptr<int64_t>(), host_w.data_ptr<float>(), x,
                               host_x.data_ptr<float>());
    ASSERT_TRUE(w.defined());
    auto [w2, ids2] = RouterTopK(logits, 8, true, weight_type);
    EXPECT_TRUE(at::equal(ids, ids2));
    EXPECT_TRUE(at::equal(w, w2));
    EXPECT_TRUE(at::equal(host_ids, ids[0]));
    EXPECT_TRUE(at::equal(host_w, w[0].to(at::kFloat)));
    EXPECT_TRUE(at::equal(host_x, x[0].to(at::kFloat)));
    // Declined: x on more than one row.
    EXPECT_FALSE(RouterTopK(logits, 8, true, weight_type, nullptr, nullptr, at::randn({2, 16}, Opts()),
                            host_x.data_ptr<float>())
                     .first.defined());
  }
  // Declined: more than one row, top above 64 or n.
  EXPECT_FALSE(RouterTopK(at::randn({2, 16}, Opts()), 2, true, at::kFloat).first.defined());
  EXPECT_FALSE(RouterTopK(at::randn({1, 128}, Opts()), 65, true, at::kFloat).first.defined());
  EXPECT_FALSE(RouterTopK(at::randn({1, 4}, Opts()), 5, true, at::kFloat).first.defined());
}

// ExpertSum against the LibTorch ops it replaces (out.add_((y * w).to(y's dtype).sum(0))), weights in the activation
// dtype (Qwen) and in float32 (Mixtral), one token and several; SiluMulInto against at::mul_out(out, silu(gate), up).
TEST_P(FusedOpsGpu, ExpertSumAndSiluMulIntoMatchLibTorch) {
  for (const auto& [n, tokens, hidden] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{{1, 1, 64}, {7, 1, 2048},
                                                                                          {3, 5, 4096}}) {
    for (const at::ScalarType wt : {GetParam(), at::kFloat}) {
      SCOPED_TRACE(std::to_string(n) + " experts, " + std::to_string(tokens) + " tokens, weights " + c10::toString(wt));
      const at::Tensor y = at::randn({n, tokens, hidden}, Opts());
      const at::Tensor w = at::rand({n, tokens, 1}, Opts().dtype(wt));
      const at::Tensor base = at::randn({tokens, hidden}, Opts());
      at::Tensor want = base.clone();
      at::Tensor weighted = y * w;
      if (weighted.scalar_type() != y.scalar_type()) weighted = weighted.to(y.scalar_type());
      want.add_(weighted.sum(0));
      at::Tensor got = base.clone();
      ASSERT_TRUE(ExpertSum(y, w, got));
      // (LibTorch's sum may add in another order: within a unit of the last place.)
      const double ulp = GetParam() == at::kBFloat16 ? 7.9e-3 : 9.8e-4;
      EXPECT_LE((got.to(at::kFloat) - want.to(at::kFloat)).abs().max().item<double>(),
                ulp * (want.to(at::kFloat).abs().max().item<double>() + 1));
      EXPECT_GE((got == want).to(at::kFloat).mean().item<double>(), 0.99);
    }
  }
  const at::Tensor gu = at::randn({6, 2 * 768}, Opts());
  at::Tensor h = at::empty({6, 768}, Opts());
  ASSERT_TRUE(SiluMulInto(gu, h));
  EXPECT_TRUE(at::equal(h, SiluMul(gu)));
  ExpectClose(h, at::silu(gu.narrow(-1, 0, 768)) * gu.narrow(-1, 768, 768), "silu_mul into");
  // Declined: out of another size or dtype; y not 3-D.
  EXPECT_FALSE(SiluMulInto(gu, at::empty({6, 767}, Opts())));
  EXPECT_FALSE(ExpertSum(at::randn({2, 4}, Opts()), at::rand({2, 1}, Opts()), at::zeros({1, 4}, Opts())));
  EXPECT_FALSE(ExpertSum(at::randn({2, 1, 4}, Opts()), at::rand({2, 1, 1}, Opts()),
                         at::zeros({1, 4}, Opts().dtype(at::kFloat))));
}

// The experts' products read on the device (MoeExperts) against what the executor's host-dispatched path computes with
// LibTorch (kernels_llama.cc: gate and up as one product, SiLU(gate) x up, the down product, each output scaled by
// its routing weight, cast, and added in expert order), within a rounding or two of the dtype (cuBLAS sums in another
// order): in the execution dtype and in float32, the weights of either dtype, 1 to 16 tokens, 2 to 8 choices of up to
// 128 experts; replayed from a CUDA graph with other choices it gives what it gives eagerly; an expert id out of range
// poisons its token's outputs (NaN) instead of reading elsewhere; and what the kernels do not take is declined.
TEST_P(FusedOpsGpu, MoeExpertsMatchTheExpertsOneByOne) {
  struct Case {
    int64_t experts, k, tokens, hidden, inter;
    at::ScalarType dtype;
  };
  const at::ScalarType dt = GetParam();
  for (const Case& c : std::vector<Case>{{8, 2, 1, 256, 512, dt}, {8, 2, 2, 4096, 1024, dt}, {128, 8, 1, 2048, 768, dt},
                                          {60, 4, 16, 512, 256, dt}, {16, 3, 3, 256, 128, at::kFloat}}) {
    for (const at::ScalarType wt : {c.dtype, at::kFloat}) {
      SCOPED_TRACE(std::to_string(c.experts) + " experts top " + std::to_string(c.k) + ", " +
                   std::to_string(c.tokens) + " tokens, " + c10::toString(c.dtype) + ", weights " + c10::toString(wt));
      const auto o = at::TensorOptions().dtype(c.dtype).device(at::kCUDA, 0);
      const at::Tensor gate_up = at::randn({c.experts, 2 * c.inter, c.hidden}, o) * 0.05;
      const at::Tensor down = at::randn({c.experts, c.hidden, c.inter}, o) * 0.05;
      const at::Tensor x = at::randn({c.tokens, c.hidden}, o);
      // Distinct choices per token, in no particular order, and their weights.
      const at::Tensor ids = at::argsort(at::rand({c.tokens, c.experts}), int64_t{1}, false).narrow(1, 0, c.k).contiguous().to(
          at::TensorOptions().dtype(at::kLong).device(at::kCUDA, 0));
      const at::Tensor w = at::rand({c.tokens, c.k}, o.dtype(wt));
      std::vector<uint64_t> gu_ptr, down_ptr;
      for (int64_t e = 0; e < c.experts; ++e) {
        gu_ptr.push_back(reinterpret_cast<uint64_t>(gate_up[e].data_ptr()));
        down_ptr.push_back(reinterpret_cast<uint64_t>(down[e].data_ptr()));
      }
      const at::Tensor got = MoeExperts(x, ids, w, gu_ptr, down_ptr, c.inter);
      ASSERT_TRUE(got.defined());
      // With a residual: the residual plus the same sum, rounded as adding the two tensors rounds.
      const at::Tensor residual = at::randn({c.tokens, c.hidden}, o);
      const at::Tensor with_residual = MoeExperts(x, ids, w, gu_ptr, down_ptr, c.inter, residual);
      ASSERT_TRUE(with_residual.defined());
      EXPECT_TRUE(at::equal(with_residual, residual + got));
      at::Tensor want = at::zeros_like(x);
      const at::Tensor ids_cpu = ids.cpu();
      for (int64_t t = 0; t < c.tokens; ++t) {
        std::vector<std::pair<int64_t, int64_t>> order;  // (expert, choice)
        for (int64_t j = 0; j < c.k; ++j) order.emplace_back(ids_cpu[t][j].item<int64_t>(), j);
        std::sort(order.begin(), order.end());
        const at::Tensor xt = x.narrow(0, t, 1);
        at::Tensor out = want.narrow(0, t, 1);
        for (const auto& [e, j] : order) {
          const at::Tensor both = at::linear(xt, gate_up[e]);
          const at::Tensor h = at::silu(both.narrow(-1, 0, c.inter)) * both.narrow(-1, c.inter, c.inter);
          const at::Tensor y = at::linear(h, down[e]);
          out.add_((y * w.narrow(0, t, 1).narrow(1, j, 1)).to(c.dtype));
        }
      }
      const at::Tensor g = got.to(at::kFloat).cpu(), r = want.to(at::kFloat).cpu();
      const double tol = c.dtype == at::kFloat ? 1e-5 : Tol();
      EXPECT_LE((g - r).abs().max().item<double>() / std::max(1e-6, r.abs().max().item<double>()), tol);
      EXPECT_FALSE(std::isnan(g.sum().item<double>()));
      // From a graph, with other choices written into the same ids before the replay.
      if (wt == c.dtype) {
        at::Tensor ids_static = ids.clone(), graph_out;
        c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool(false, 0);
        at::cuda::getCurrentCUDAStream().synchronize();  // (the inputs were written on the default stream)
        at::cuda::CUDAGraph graph;
        {
          c10::cuda::CUDAStreamGuard guard(side);
          graph_out = MoeExperts(x, ids_static, w, gu_ptr, down_ptr, c.inter);  // warm-up
          graph.capture_begin();
          graph_out = MoeExperts(x, ids_static, w, gu_ptr, down_ptr, c.inter);
          graph.capture_end();
        }
        const at::Tensor other = at::argsort(at::rand({c.tokens, c.experts}), int64_t{1}, false).narrow(1, 0, c.k).contiguous();
        ids_static.copy_(other);
        graph.replay();
        at::cuda::getCurrentCUDAStream().synchronize();
        side.synchronize();
        EXPECT_TRUE(at::equal(graph_out, MoeExperts(x, ids_static, w, gu_ptr, down_ptr, c.inter)));
      }
    }
  }
  // An id out of range: that token's outputs are NaN, the other token's are not.
  {
    const at::Tensor gate_up = at::randn({4, 2 * 64, 64}, Opts()), down = at::randn({4, 64, 64}, Opts());
    std::vector<uint64_t> gu_ptr, down_ptr;
    for (int64_t e = 0; e < 4; ++e) {
      gu_ptr.push_back(reinterpret_cast<uint64_t>(gate_up[e].data_ptr()));
      down_ptr.push_back(reinterpret_cast<uint64_t>(down[e].data_ptr()));
    }
    const at::Tensor ids = at::tensor({0, 1, 2, 7}, at::TensorOptions().dtype(at::kLong)).view({2, 2}).to(at::kCUDA);
    const at::Tensor out = MoeExperts(at::randn({2, 64}, Opts()), ids, at::rand({2, 2}, Opts()), gu_ptr, down_ptr, 64);
    ASSERT_TRUE(out.defined());
    EXPECT_FALSE(at::isnan(out[0]).any().item<bool>());
    EXPECT_TRUE(at::isnan(out[1]).all().item<bool>());
    // Declined: 17 tokens, more than 128 experts, hidden not a multiple of 8, ids of another dtype.
    const at::Tensor w2 = at::rand({2, 2}, Opts());
    EXPECT_FALSE(MoeExperts(at::randn({17, 64}, Opts()), at::zeros({17, 2}, ids.options()), at::rand({17, 2}, Opts()),
                            gu_ptr, down_ptr, 64).defined());
    EXPECT_FALSE(MoeExperts(at::randn({2, 64}, Opts()), ids, w2, std::vector<uint64_t>(129, gu_ptr[0]),
                            std::vector<uint64_t>(129, down_ptr[0]), 64).defined());
    EXPECT_FALSE(MoeExperts(at::randn({2, 60}, Opts()), ids, w2, gu_ptr, down_ptr, 64).defined());
    EXPECT_FALSE(MoeExperts(at::randn({2, 64}, Opts()), ids.to(at::kInt), w2, gu_ptr, down_ptr, 64).defined());
    // A residual of another shape or dtype.
    EXPECT_FALSE(MoeExperts(at::randn({2, 64}, Opts()), ids, w2, gu_ptr, down_ptr, 64, at::randn({1, 64}, Opts()))
                     .defined());
    EXPECT_FALSE(MoeExperts(at::randn({2, 64}, Opts()), ids, w2, gu_ptr, down_ptr, 64,
                            at::randn({2, 64}, Opts().dtype(at::kFloat)))
                     .defined());
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, FusedOpsGpu, ::testing::Values(at::kBFloat16, at::kHalf),
                         [](const auto& info) { return std::string(info.param == at::kBFloat16 ? "bf16" : "fp16"); });

// WaitFlag holds a stream until the host writes the number (the work queued behind it waits), and gives up after its
// timeout, saying so, when the host never does.
TEST(FusedCudaGpu, WaitFlagHoldsTheStreamUntilTheHostWrites) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  uint32_t* flag = nullptr;
  ASSERT_EQ(cudaHostAlloc(reinterpret_cast<void**>(&flag), 2 * sizeof(uint32_t), cudaHostAllocMapped), cudaSuccess);
  flag[0] = 0;
  flag[1] = 0;
  c10::cuda::CUDAStream stream = c10::cuda::getStreamFromPool();
  const at::Tensor done = at::zeros({1}, at::TensorOptions().dtype(at::kInt).device(at::kCUDA, 0));
  ASSERT_EQ(fused::WaitFlag(flag, 7, 10'000'000'000ull, flag + 1, stream.stream()), cudaSuccess);
  {
    c10::cuda::CUDAStreamGuard guard(stream);
    done.fill_(1);  // queued behind the wait
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(cudaStreamQuery(stream.stream()), cudaErrorNotReady);
  reinterpret_cast<volatile uint32_t*>(flag)[0] = 6;  // not yet
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  EXPECT_EQ(cudaStreamQuery(stream.stream()), cudaErrorNotReady);
  reinterpret_cast<volatile uint32_t*>(flag)[0] = 7;
  ASSERT_EQ(cudaStreamSynchronize(stream.stream()), cudaSuccess);
  EXPECT_EQ(done.item<int>(), 1);
  EXPECT_EQ(flag[1], 0u);
  // A number that never comes: the stream goes on after the timeout, with the flag's second word set.
  ASSERT_EQ(fused::WaitFlag(flag, 9, 2'000'000ull, flag + 1, stream.stream()), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(stream.stream()), cudaSuccess);
  EXPECT_EQ(flag[1], 1u);
  cudaFreeHost(flag);
}

// WaitFlagAdd holds the stream as WaitFlag does, then adds the host's float32 sum as out + y.to(out's dtype) does,
// bit for bit, reading y only after the host wrote the number.
TEST(FusedCudaGpu, WaitFlagAddAddsTheHostsSumOnceWritten) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  uint32_t* flag = nullptr;
  ASSERT_EQ(cudaHostAlloc(reinterpret_cast<void**>(&flag), 2 * sizeof(uint32_t), cudaHostAllocMapped), cudaSuccess);
  float* y = nullptr;
  constexpr int64_t kN = 4096 + 3;  // past the kernel's 16 blocks of 256
  ASSERT_EQ(cudaHostAlloc(reinterpret_cast<void**>(&y), kN * sizeof(float), cudaHostAllocMapped), cudaSuccess);
  c10::cuda::CUDAStream stream = c10::cuda::getStreamFromPool();
  const auto dev = at::TensorOptions().device(at::kCUDA, 0);
  for (const auto& [type, elem] : std::vector<std::pair<at::ScalarType, fused::Elem>>{
           {at::kBFloat16, fused::Elem::kBF16}, {at::kHalf, fused::Elem::kF16}, {at::kFloat, fused::Elem::kF32}}) {
    SCOPED_TRACE(c10::toString(type));
    flag[0] = 0;
    flag[1] = 0;
    const at::Tensor sum = at::randn({kN}, at::kFloat) * 4;
    const at::Tensor out = at::randn({kN}, dev.dtype(type));
    const at::Tensor want = out + sum.to(dev).to(type);
    for (int64_t i = 0; i < kN; ++i) y[i] = -1.0f;  // not the sum yet
    ASSERT_EQ(fused::WaitFlagAdd(flag, 3, 10'000'000'000ull, flag + 1, elem, out.data_ptr(), y, kN, stream.stream()),
              cudaSuccess);
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    EXPECT_EQ(cudaStreamQuery(stream.stream()), cudaErrorNotReady);
    std::memcpy(y, sum.data_ptr<float>(), kN * sizeof(float));
    std::atomic_thread_fence(std::memory_order_release);
    reinterpret_cast<volatile uint32_t*>(flag)[0] = 3;
    ASSERT_EQ(cudaStreamSynchronize(stream.stream()), cudaSuccess);
    EXPECT_TRUE(at::equal(out, want));
    EXPECT_EQ(flag[1], 0u);
  }
  cudaFreeHost(y);
  cudaFreeHost(flag);
}

#endif  // BIGPLAN_TEST_CUDA

}  // namespace
}  // namespace bigplan::fused_ops
