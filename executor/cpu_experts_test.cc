#include "executor/cpu_experts.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <random>
#include <string>
#include <vector>

// Counts heap allocations made by the thread that sets g_count_allocations (the no-allocation promise of Run).
namespace {
thread_local bool g_count_allocations = false;
thread_local int g_allocations = 0;
}  // namespace
void* operator new(std::size_t n) {
  if (g_count_allocations) ++g_allocations;
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }

namespace bigplan::cpu_experts {
namespace {

using cpu_matvec::Format;
using cpu_matvec::Matrix;
using cpu_matvec::MatVecPool;

uint16_t ToBf16(float f) {  // truncation is enough for test data
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  return static_cast<uint16_t>(bits >> 16);
}
double Bf16Ref(const uint8_t* p) {
  const uint32_t bits = static_cast<uint32_t>(p[0] | (p[1] << 8)) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// A random bf16 matrix (values in [-scale, scale]) with `pad` bytes after each row.
struct TestMatrix {
  std::vector<uint8_t> bytes;
  Matrix m;
};
TestMatrix MakeBf16(int64_t rows, int64_t cols, float scale, uint32_t seed, int64_t pad = 0) {
  TestMatrix t;
  t.m = Matrix{Format::kNone, nullptr, rows, cols, 0, 2 * cols + pad};
  t.bytes.assign(rows * t.m.row_stride, 0xAB);
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> uni(-scale, scale);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < cols; ++j) {
      const uint16_t h = ToBf16(uni(rng));
      std::memcpy(t.bytes.data() + r * t.m.row_stride + 2 * j, &h, 2);
    }
  t.m.base = t.bytes.data();
  return t;
}
double W(const Matrix& m, int64_t r, int64_t j) { return Bf16Ref(m.base + r * m.row_stride + 2 * j); }

struct TestExpert {
  TestMatrix gate, up, down;
  Expert e;
};
std::vector<TestExpert> MakeExperts(int n, int64_t hidden, const std::vector<int64_t>& inters, uint32_t seed) {
  std::vector<TestExpert> out(n);
  for (int i = 0; i < n; ++i) {
    const int64_t inter = inters[i % inters.size()];
    out[i].gate = MakeBf16(inter, hidden, 0.1f, seed + 3 * i);
    out[i].up = MakeBf16(inter, hidden, 0.1f, seed + 3 * i + 1, /*pad=*/6);
    out[i].down = MakeBf16(hidden, inter, 0.1f, seed + 3 * i + 2);
    out[i].e = Expert{out[i].gate.m, out[i].up.m, out[i].down.m};
  }
  return out;
}
std::vector<Expert> Table(const std::vector<TestExpert>& t) {
  std::vector<Expert> e;
  for (const TestExpert& x : t) e.push_back(x.e);
  return e;
}

std::vector<float> RandomX(int tokens, int64_t hidden, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> uni(-2.f, 2.f);
  std::vector<float> x(tokens * hidden);
  for (float& v : x) v = uni(rng);
  return x;
}

double ActRef(Activation act, double g) {
  if (act == Activation::kSilu) return g / (1 + std::exp(-g));
  return 0.5 * g * (1 + std::tanh(std::sqrt(2 / M_PI) * (g + 0.044715 * g * g * g)));
}

// The reference in double, with an error bound for Run's float32 arithmetic. Each float32 product sum (cpu_matvec)
// is within kDot * sum |w x| of the exact one (cpu_matvec's own test bound; float32 has 2^-24 ~ 6e-8 relative
// rounding and the kernels sum a few hundred terms per partial sum at most in these shapes). That error moves
// act(g) * u by at most |act'(g)| |u| dg + |act(g)| du (|act'| <= 1.13 for SiLU and tanh-GELU; 1.2 used), plus the
// few float32 roundings of exp/tanh, the division and the product (kOps relative). The down product adds its own
// kDot * sum |D h| and carries the h errors through |D|; the routed sum adds a few roundings per term.
constexpr double kDot = 1e-5, kOps = 1e-6;
struct Reference {
  std::vector<double> out, bound;
};
Reference ReferenceRun(std::span<const Expert> experts, std::span<const Assignment> assignments,
                       const std::vector<float>& x, int tokens, int64_t hidden, Activation act) {
  Reference ref;
  ref.out.assign(tokens * hidden, 0.0);
  ref.bound.assign(tokens * hidden, 0.0);
  for (const Assignment& a : assignments) {
    const Expert& e = experts[a.expert];
    const int64_t inter = e.gate.rows;
    const float* xt = x.data() + a.token * hidden;
    std::vector<double> h(inter), dh(inter);
    for (int64_t i = 0; i < inter; ++i) {
      double g = 0, u = 0, sg = 0, su = 0;
      for (int64_t j = 0; j < hidden; ++j) {
        g += W(e.gate, i, j) * xt[j], sg += std::fabs(W(e.gate, i, j) * xt[j]);
        u += W(e.up, i, j) * xt[j], su += std::fabs(W(e.up, i, j) * xt[j]);
      }
      const double ag = ActRef(act, g);
      h[i] = ag * u;
      dh[i] = 1.2 * std::fabs(u) * kDot * sg + std::fabs(ag) * kDot * su + kOps * std::fabs(h[i]) + 1e-30;
    }
    for (int64_t r = 0; r < hidden; ++r) {
      double d = 0, sd = 0, carried = 0;
      for (int64_t i = 0; i < inter; ++i) {
        d += W(e.down, r, i) * h[i];
        sd += std::fabs(W(e.down, r, i) * h[i]);
        carried += std::fabs(W(e.down, r, i)) * dh[i];
      }
      ref.out[a.token * hidden + r] += a.weight * d;
      ref.bound[a.token * hidden + r] += std::fabs(a.weight) * (carried + kDot * sd + 4 * kOps * std::fabs(d));
    }
  }
  return ref;
}

void ExpectNear(const std::vector<float>& got, const Reference& ref, const std::string& what) {
  ASSERT_EQ(got.size(), ref.out.size());
  double worst = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_NEAR(got[i], ref.out[i], ref.bound[i]) << what << " element " << i;
    if (ref.bound[i] > 0) worst = std::max(worst, std::fabs(got[i] - ref.out[i]) / ref.bound[i]);
  }
  // The bound is not vacuous: a zero output would miss it somewhere.
  bool some_large = false;
  for (size_t i = 0; i < got.size(); ++i) some_large |= std::fabs(ref.out[i]) > 10 * ref.bound[i];
  if (!got.empty()) {
    EXPECT_TRUE(some_large) << what;
  }
  std::printf("%s: largest error %.3g of the bound\n", what.c_str(), worst);
}

const Activation kActs[] = {Activation::kSilu, Activation::kGeluTanh};

TEST(CpuExpertsTest, ActivationFormulas) {
  for (float g : {-30.0f, -3.0f, -0.5f, 0.0f, 0.25f, 1.0f, 4.0f, 50.0f}) {
    EXPECT_EQ(Activate(Activation::kSilu, g), g / (1.0f + std::exp(-g))) << g;
    EXPECT_NEAR(Activate(Activation::kSilu, g), ActRef(Activation::kSilu, g), 1e-6 * (1 + std::fabs(g))) << g;
    EXPECT_NEAR(Activate(Activation::kGeluTanh, g), ActRef(Activation::kGeluTanh, g), 1e-6 * (1 + std::fabs(g)))
        << g;
  }
  EXPECT_EQ(Activate(Activation::kSilu, -1000.0f), 0.0f);
  EXPECT_EQ(Activate(Activation::kSilu, 1000.0f), 1000.0f);
  EXPECT_EQ(Activate(Activation::kGeluTanh, 1e30f), 1e30f);
  EXPECT_EQ(Activate(Activation::kGeluTanh, -1e30f), 0.0f);
  // tanh-GELU at 1: 0.5 (1 + tanh(sqrt(2/pi) 1.044715)) = 0.8411920...
  EXPECT_NEAR(Activate(Activation::kGeluTanh, 1.0f), 0.841192, 1e-6);
}

// ActivateRows against the double formula: every instruction set, a sweep over g (past both clamps of the vector
// exp), u = 1 and u = -0.75, lengths that leave a tail. SiLU's vector exp: within 1e-6 relative (about 8 float32
// roundings; std::exp's path is within 3e-7), or 1e-30 absolute where SiLU is below 1e-36 in magnitude. (The
// expert tests' bound covers the GELU cancellation below: 1.2 |u| kDot sum|G x| is far above 0.5 |g u| 2^-24.)
TEST(CpuExpertsTest, ActivateRowsEachIsa) {
  std::vector<float> gs;
  for (float g = -120.0f; g <= 120.0f; g += 0.0371f) gs.push_back(g);
  for (float g : {0.0f, -0.0f, 1e-20f, -1e-20f, 87.29f, -87.31f, 88.31f, -88.29f}) gs.push_back(g);
  for (cpu_matvec::Isa isa : {cpu_matvec::Isa::kScalar, cpu_matvec::Isa::kAvx2, cpu_matvec::Isa::kAvx512})
    for (Activation act : kActs)
      for (float uval : {1.0f, -0.75f}) {
        std::vector<float> g = gs, u(gs.size(), uval);
        ActivateRows(act, isa, g.data(), u.data(), static_cast<int64_t>(g.size()));
        for (size_t i = 0; i < gs.size(); ++i) {
          const double want = ActRef(act, gs[i]) * uval;
          const double tol = act == Activation::kSilu && isa != cpu_matvec::Isa::kScalar ? 1e-6 : 3e-7;
          // tanh-GELU's 1 + tanh(...) cancels for g below about -5 (tanh rounds to -1): an absolute error of half a
          // float32 rounding of 1, times 0.5 |g u|, as in any float32 evaluation of the formula.
          const double cancel = act == Activation::kGeluTanh ? 0.5 * std::fabs(gs[i] * uval) * 0x1p-24 : 0.0;
          ASSERT_NEAR(g[i], want, tol * std::fabs(want) + cancel + 1e-30)
              << ActivationName(act) << " isa " << cpu_matvec::IsaName(isa) << " g " << gs[i];
        }
      }
  std::vector<float> g = {std::nanf(""), 2.0f}, u = {1.0f, 1.0f};
  ActivateRows(Activation::kSilu, cpu_matvec::Isa::kAvx2, g.data(), u.data(), 2);
  EXPECT_TRUE(std::isnan(g[0]));
}

// Batch 1, 4 of 8 experts (two intermediate sizes), both activations, one and two threads.
TEST(CpuExpertsTest, OneTokenFourExperts) {
  const int64_t hidden = 200;
  auto experts = MakeExperts(8, hidden, {96, 64}, 100);
  const auto table = Table(experts);
  const auto x = RandomX(1, hidden, 7);
  const std::vector<Assignment> as = {{5, 0, 0.4f}, {0, 0, 0.3f}, {3, 0, 0.2f}, {6, 0, 0.1f}};
  for (int threads : {1, 2})
    for (Activation act : kActs) {
      MatVecPool pool(threads);
      ExpertRunner runner(&pool, hidden, 96, 1, 8);
      std::vector<float> out(hidden, std::nanf(""));
      ASSERT_TRUE(runner.Run(table, as, x.data(), 1, act, out.data()).ok());
      ExpectNear(out, ReferenceRun(table, as, x, 1, hidden, act), ActivationName(act));
    }
}

// An expert cut along its intermediate (the executor's host/GPU split): the first rows of gate and up with the first
// columns of down (row stride kept), and the rest likewise, each run as an expert of its own; their outputs add up
// to the whole expert's (the reference of the whole), within the sum of the two parts' bounds.
TEST(CpuExpertsTest, PartsOfAnExpertAddUp) {
  const int64_t hidden = 200, inter = 96;
  auto experts = MakeExperts(1, hidden, {inter}, 300);
  const Expert whole = experts[0].e;
  const auto x = RandomX(3, hidden, 11);
  const std::vector<Assignment> as = {{0, 0, 0.7f}, {0, 2, -0.4f}};
  for (int64_t cut : {int64_t{8}, int64_t{40}, int64_t{88}}) {
    Expert head = whole, tail = whole;
    head.gate.rows = head.up.rows = head.down.cols = cut;
    tail.gate.base += cut * whole.gate.row_stride;
    tail.up.base += cut * whole.up.row_stride;
    tail.down.base += 2 * cut;
    tail.gate.rows = tail.up.rows = tail.down.cols = inter - cut;
    MatVecPool pool(2);
    ExpertRunner runner(&pool, hidden, inter, 3, 4);
    std::vector<float> a(3 * hidden), b(3 * hidden), sum(3 * hidden);
    ASSERT_TRUE(runner.Run(std::span<const Expert>(&head, 1), as, x.data(), 3, Activation::kSilu, a.data()).ok());
    ASSERT_TRUE(runner.Run(std::span<const Expert>(&tail, 1), as, x.data(), 3, Activation::kSilu, b.data()).ok());
    for (size_t i = 0; i < sum.size(); ++i) sum[i] = a[i] + b[i];
    Reference ref = ReferenceRun(std::span<const Expert>(&whole, 1), as, x, 3, hidden, Activation::kSilu);
    const Reference rh = ReferenceRun(std::span<const Expert>(&head, 1), as, x, 3, hidden, Activation::kSilu);
    const Reference rt = ReferenceRun(std::span<const Expert>(&tail, 1), as, x, 3, hidden, Activation::kSilu);
    for (size_t i = 0; i < ref.bound.size(); ++i) {
      // The parts' references add up to the whole's (double arithmetic), and each part's float32 error is bounded.
      ASSERT_NEAR(rh.out[i] + rt.out[i], ref.out[i], 1e-9 * (1 + std::fabs(ref.out[i])));
      ref.bound[i] = rh.bound[i] + rt.bound[i] + 1e-7 * std::fabs(ref.out[i]);
    }
    ExpectNear(sum, ref, "cut at " + std::to_string(cut));
  }
}

// 16 tokens, 6 experts with uneven token counts (16, 1, 5, 0, 3, 7), tokens routed to 0..3 experts (some none),
// both activations; run twice on the same runner (scratch reused) with identical results.
TEST(CpuExpertsTest, SixteenTokensUnevenCounts) {
  const int64_t hidden = 136;
  auto experts = MakeExperts(6, hidden, {48, 80, 32}, 200);
  const auto table = Table(experts);
  const int tokens = 16;
  const auto x = RandomX(tokens, hidden, 8);
  std::vector<Assignment> as;
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> uni(0.05f, 1.0f);
  for (int t = 0; t < tokens; ++t) as.push_back({0, t, uni(rng)});
  as.push_back({1, 9, uni(rng)});
  for (int t : {0, 2, 4, 6, 8}) as.push_back({2, t, uni(rng)});
  for (int t : {15, 1, 7}) as.push_back({4, t, uni(rng)});
  for (int t : {3, 5, 7, 9, 11, 13, 0}) as.push_back({5, t, uni(rng)});
  std::shuffle(as.begin(), as.end(), rng);
  // Token 10 only has expert 0; drop that so one token has no assignment.
  std::erase_if(as, [](const Assignment& a) { return a.token == 10; });
  MatVecPool pool(2);
  ExpertRunner runner(&pool, hidden, 80, tokens, 64);
  for (Activation act : kActs) {
    std::vector<float> out(tokens * hidden, std::nanf("")), again(tokens * hidden, 1.0f);
    ASSERT_TRUE(runner.Run(table, as, x.data(), tokens, act, out.data()).ok());
    ExpectNear(out, ReferenceRun(table, as, x, tokens, hidden, act), ActivationName(act));
    for (int64_t i = 0; i < hidden; ++i) EXPECT_EQ(out[10 * hidden + i], 0.0f);
    ASSERT_TRUE(runner.Run(table, as, x.data(), tokens, act, again.data()).ok());
    EXPECT_EQ(out, again);
  }
}

// A repeated (token, expert) pair runs once with the summed weight; an expert with more than kMaxBatch tokens
// (here 20, with max_tokens 20) runs in several batches.
TEST(CpuExpertsTest, RepeatedPairsAndLargeBatches) {
  const int64_t hidden = 64;
  auto experts = MakeExperts(3, hidden, {40}, 300);
  const auto table = Table(experts);
  const int tokens = 20;
  const auto x = RandomX(tokens, hidden, 9);
  std::vector<Assignment> as;
  for (int t = 0; t < tokens; ++t) as.push_back({1, t, 0.5f});
  as.push_back({2, 3, 0.25f});
  as.push_back({2, 3, 0.5f});
  as.push_back({1, 19, 0.125f});
  MatVecPool pool(2);
  ExpertRunner runner(&pool, hidden, 40, tokens, 32);
  for (Activation act : kActs) {
    std::vector<float> out(tokens * hidden);
    ASSERT_TRUE(runner.Run(table, as, x.data(), tokens, act, out.data()).ok());
    ExpectNear(out, ReferenceRun(table, as, x, tokens, hidden, act), ActivationName(act));
    // Same as the merged assignment list.
    std::vector<Assignment> merged;
    for (int t = 0; t < tokens; ++t) merged.push_back({1, t, t == 19 ? 0.625f : 0.5f});
    merged.push_back({2, 3, 0.75f});
    std::vector<float> out2(tokens * hidden);
    ASSERT_TRUE(runner.Run(table, merged, x.data(), tokens, act, out2.data()).ok());
    EXPECT_EQ(out, out2);
  }
}

// No assignments: all zero. Zero tokens: nothing written, null pointers allowed.
TEST(CpuExpertsTest, EmptyInputs) {
  const int64_t hidden = 32;
  auto experts = MakeExperts(2, hidden, {16}, 400);
  const auto table = Table(experts);
  MatVecPool pool(1);
  ExpertRunner runner(&pool, hidden, 16, 4, 4);
  const auto x = RandomX(4, hidden, 1);
  std::vector<float> out(4 * hidden, 7.0f);
  ASSERT_TRUE(runner.Run(table, {}, x.data(), 4, Activation::kSilu, out.data()).ok());
  for (float v : out) EXPECT_EQ(v, 0.0f);
  EXPECT_TRUE(runner.Run(table, {}, nullptr, 0, Activation::kSilu, nullptr).ok());
}

// After a first call of the same shape, Run makes no heap allocation on the calling thread.
TEST(CpuExpertsTest, NoAllocationPerCall) {
  const int64_t hidden = 128;
  auto experts = MakeExperts(8, hidden, {64}, 500);
  const auto table = Table(experts);
  const auto x = RandomX(2, hidden, 2);
  const std::vector<Assignment> as = {{1, 0, 0.5f}, {2, 0, 0.5f}, {2, 1, 0.5f}, {7, 1, 0.5f}, {1, 1, 0.25f}};
  MatVecPool pool(2);
  ExpertRunner runner(&pool, hidden, 64, 2, 8);
  std::vector<float> out(2 * hidden);
  ASSERT_TRUE(runner.Run(table, as, x.data(), 2, Activation::kSilu, out.data()).ok());
  g_allocations = 0;
  g_count_allocations = true;
  const Status s = runner.Run(table, as, x.data(), 2, Activation::kGeluTanh, out.data());
  g_count_allocations = false;
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(g_allocations, 0);
}

// Every validation error: kInvalidArgument, a message naming the problem, and out untouched.
TEST(CpuExpertsTest, ValidationErrors) {
  const int64_t hidden = 48;
  auto experts = MakeExperts(3, hidden, {32}, 600);
  const auto good = Table(experts);
  const auto x = RandomX(2, hidden, 3);
  const std::vector<Assignment> as = {{0, 0, 1.0f}, {2, 1, 0.5f}};
  MatVecPool pool(2);
  ExpertRunner runner(&pool, hidden, 32, 2, 4);
  auto big = MakeExperts(1, hidden, {40}, 700);
  auto wrong_hidden = MakeExperts(1, hidden + 2, {32}, 800);

  struct Case {
    std::string name;
    std::vector<Expert> experts;
    std::vector<Assignment> assignments;
    const float* x;
    int tokens;
    Activation act;
    std::string want;  // a substring of the message
  };
  auto with = [&](int i, auto edit) {
    std::vector<Expert> t = good;
    edit(t[i]);
    return t;
  };
  std::vector<float> out(2 * hidden, 3.0f);
  std::vector<Case> cases = {
      {"tokens", good, as, x.data(), 3, Activation::kSilu, "3 tokens"},
      {"negative tokens", good, {}, x.data(), -1, Activation::kSilu, "-1 tokens"},
      {"null x", good, as, nullptr, 2, Activation::kSilu, "null x"},
      {"overlap", good, as, out.data() + 1, 2, Activation::kSilu, "overlaps"},
      {"too many", good, {{0, 0, 1}, {1, 0, 1}, {2, 0, 1}, {0, 1, 1}, {1, 1, 1}}, x.data(), 2, Activation::kSilu,
       "5 assignments"},
      {"expert index", good, {{0, 0, 1}, {3, 1, 1}}, x.data(), 2, Activation::kSilu, "assignment 1: expert 3"},
      {"negative expert", good, {{-1, 0, 1}}, x.data(), 2, Activation::kSilu, "expert -1"},
      {"token index", good, {{0, 2, 1}}, x.data(), 2, Activation::kSilu, "token 2"},
      {"negative token", good, {{0, -1, 1}}, x.data(), 2, Activation::kSilu, "token -1"},
      {"nan weight", good, {{0, 0, std::nanf("")}}, x.data(), 2, Activation::kSilu, "not finite"},
      {"inf weight", good, {{0, 0, std::numeric_limits<float>::infinity()}}, x.data(), 2, Activation::kSilu,
       "not finite"},
      {"activation", good, as, x.data(), 2, static_cast<Activation>(7), "activation"},
      {"gate cols", with(2, [&](Expert& e) { e.gate = wrong_hidden[0].e.gate; }), as, x.data(), 2,
       Activation::kSilu, "expert 2: gate and up have 50 and 48 columns"},
      {"up cols", with(0, [&](Expert& e) { e.up = wrong_hidden[0].e.up; }), as, x.data(), 2, Activation::kSilu,
       "expert 0: gate and up have 48 and 50 columns"},
      {"down rows", with(0, [&](Expert& e) { e.down = wrong_hidden[0].e.down; }), as, x.data(), 2,
       Activation::kSilu, "down has 50 rows"},
      {"up rows", with(0, [&](Expert& e) { e.up.rows = 31; }), as, x.data(), 2, Activation::kSilu,
       "disagree on the intermediate size"},
      {"down cols", with(0, [&](Expert& e) { e.down = big[0].e.down; }), as, x.data(), 2, Activation::kSilu,
       "disagree on the intermediate size"},
      {"max inter", with(0, [&](Expert& e) { e = big[0].e; }), as, x.data(), 2, Activation::kSilu,
       "intermediate size 40 is above"},
      {"null base", with(2, [&](Expert& e) { e.down.base = nullptr; }), as, x.data(), 2, Activation::kSilu,
       "expert 2 down"},
      {"bad stride", with(0, [&](Expert& e) { e.gate.row_stride = 10; }), as, x.data(), 2, Activation::kSilu,
       "expert 0 gate"},
      {"bad format", with(0, [&](Expert& e) { e.up.format = static_cast<Format>(9); }), as, x.data(), 2,
       Activation::kSilu, "expert 0 up"},
      {"empty matrix", with(2, [&](Expert& e) { e.gate.base = nullptr, e.gate.rows = 0; }), as, x.data(), 2,
       Activation::kSilu, "expert 2 gate: null base"},
  };
  for (const Case& c : cases) {
    const Status s = runner.Run(c.experts, c.assignments, c.x, c.tokens, c.act, out.data());
    ASSERT_FALSE(s.ok()) << c.name;
    EXPECT_EQ(s.error().code, ErrorCode::kInvalidArgument) << c.name;
    EXPECT_NE(s.error().message.find(c.want), std::string::npos) << c.name << ": " << s.error().message;
    for (float v : out) ASSERT_EQ(v, 3.0f) << c.name;
  }
  // Null out; a runner without a pool; a bad expert no assignment names is not read.
  EXPECT_FALSE(runner.Run(good, as, x.data(), 2, Activation::kSilu, nullptr).ok());
  ExpertRunner no_pool(nullptr, hidden, 32, 2, 4);
  const Status s = no_pool.Run(good, as, x.data(), 2, Activation::kSilu, out.data());
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.error().message.find("no pool"), std::string::npos);
  for (float v : out) ASSERT_EQ(v, 3.0f);
  EXPECT_TRUE(runner.Run(with(1, [](Expert& e) { e = Expert{}; }), as, x.data(), 2, Activation::kSilu, out.data()).ok());
}

}  // namespace
}  // namespace bigplan::cpu_experts

namespace bigplan::cpu_experts {
namespace {

// bf16 rounding (ExpertRunner::set_round_bf16): every output a bf16 computation's rounding away from the float32
// result (relative steps of 2^-8 through a few roundings), not equal to it, and each weighted expert output a bf16
// value (a single expert with weight 1: the output is exactly representable in bf16).
TEST(CpuExpertsTest, RoundsLikeBf16) {
  const int64_t hidden = 128;
  auto experts = MakeExperts(2, hidden, {64}, 800);
  const auto table = Table(experts);
  const auto x = RandomX(1, hidden, 9);
  const std::vector<Assignment> as = {{0, 0, 0.6f}, {1, 0, 0.4f}};
  MatVecPool pool(1);
  ExpertRunner exact(&pool, hidden, 64, 1, 4), rounded(&pool, hidden, 64, 1, 4);
  rounded.set_round_bf16(true);
  std::vector<float> a(hidden), b(hidden);
  ASSERT_TRUE(exact.Run(table, as, x.data(), 1, Activation::kSilu, a.data()).ok());
  ASSERT_TRUE(rounded.Run(table, as, x.data(), 1, Activation::kSilu, b.data()).ok());
  double worst = 0, scale = 0;
  for (int64_t i = 0; i < hidden; ++i) {
    worst = std::max(worst, static_cast<double>(std::fabs(a[i] - b[i])));
    scale = std::max(scale, static_cast<double>(std::fabs(a[i])));
  }
  EXPECT_GT(worst, 0.0) << "rounding changed nothing";
  EXPECT_LE(worst, 0.05 * scale);
  const std::vector<Assignment> one = {{0, 0, 1.0f}};
  ASSERT_TRUE(rounded.Run(table, one, x.data(), 1, Activation::kSilu, b.data()).ok());
  for (int64_t i = 0; i < hidden; ++i) {
    uint32_t bits;
    std::memcpy(&bits, &b[i], sizeof(bits));
    EXPECT_EQ(bits & 0xffffu, 0u) << "output " << i << " is not a bf16 value";
  }
}

}  // namespace
}  // namespace bigplan::cpu_experts
