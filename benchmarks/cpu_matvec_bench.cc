// Host-CPU matrix-vector products over one Llama-3-8B decoder layer's weights (q 4096x4096, k and v 1024x4096,
// o 4096x4096, gate and up 14336x4096, down 4096x14336): all seven matrices in one MatVecPool::Run, per weight
// format, for batch 1 and 8. Bytes/s counts the weight bytes read. Several layers' worth of weights (over 512 MiB)
// are allocated and the runs rotate through them, so the weights come from DRAM, not the last-level cache.
//
//   bazel run -c opt //benchmarks:cpu_matvec_bench
//
// BM_Pool/F/B/I: all hardware threads with instruction set I (0 best, 1 scalar, 2 avx2, 3 avx512; one the CPU lacks
// falls back); BM_OneThread/F/B: one thread, best kernels; BM_InCache/F/B: one thread over weights that fit in
// L2 (the kernels' arithmetic rate); BM_SmallRun/T: back-to-back calls on 2 MiB of bf16 with all threads (T = 0) or
// one (T = 1), the pool's per-call overhead; BM_PlainLoop/F/B: a plain single-threaded loop
// (decode each weight, multiply, add) for comparison. F: 0 bf16, 1 fp8_e4m3, 2 int8, 3 int4 (groups of 128).
//
// BM_Experts/T: cpu_experts::ExpertRunner::Run on Qwen3-30B-A3B-shaped bf16 experts (hidden 2048, intermediate
// 768, SiLU) with all hardware threads: T tokens, each routed to 8 of 64 experts (604 MiB, rotated through so the
// weights come from DRAM); bytes/s counts the weights of the distinct experts read. BM_ExpertMatrices/1: the same
// matrices for one token in one plain MatVecPool::Run (no activation, no dependency between gate/up and down), the
// bound that the runner's two pool calls can approach. BM_ExpertCount/N/T: one token through N of those experts with
// T threads; BM_LargeExpert/T: one Mixtral-8x7B-shaped expert (see each).

#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "executor/cpu_experts.h"
#include "executor/cpu_matvec.h"

namespace bigplan::cpu_matvec {
namespace {

constexpr int64_t kGroup = 128;
struct Shape {
  int64_t rows, cols;
};
constexpr Shape kLayer[] = {{4096, 4096}, {1024, 4096}, {1024, 4096}, {4096, 4096},
                            {14336, 4096}, {14336, 4096}, {4096, 14336}};

uint64_t Next(uint64_t& s) {
  s ^= s << 13;
  s ^= s >> 7;
  s ^= s << 17;
  return s;
}

// Random rows in the layout: bf16 values of moderate size (no NaN, no subnormal), fp8 codes other than NaN,
// scales 0.01 (int4: scale 0.01, zero 0).
void FillRows(Format f, uint8_t* base, int64_t rows, int64_t cols, uint64_t& seed) {
  const int64_t row_bytes = quant::RowBytes(f, cols, kGroup).value();
  for (int64_t r = 0; r < rows; ++r) {
    uint8_t* row = base + r * row_bytes;
    const int64_t data = f == Format::kNone ? 2 * cols : f == Format::kInt4 ? cols / 2 : cols;
    for (int64_t i = 0; i < data; i += 8) {
      uint64_t v = Next(seed);
      if (f == Format::kNone) v = (v & 0x807F807F807F807Full) | 0x3C003C003C003C00ull;  // |w| in [2^-7, 2^-6)
      if (f == Format::kFp8E4M3) v &= 0xF7F7F7F7F7F7F7F7ull;                            // no NaN codes
      std::memcpy(row + i, &v, 8);
    }
    for (int64_t g = 0; f != Format::kNone && g < cols / kGroup; ++g) {
      uint8_t* rec = row + data + 4 * g;
      if (f == Format::kInt4) {
        const uint16_t scale = 0x3C24, zero = 0;  // bf16 0.01
        std::memcpy(rec, &scale, 2);
        std::memcpy(rec + 2, &zero, 2);
      } else {
        const float scale = 0.01f;
        std::memcpy(rec, &scale, 4);
      }
    }
  }
}

// Weights for `layers` layers in one format, filled by FillRows.
struct Weights {
  Format format;
  int layers = 0;
  int64_t layer_bytes = 0;
  std::vector<std::unique_ptr<uint8_t[]>> buffers;  // one per layer x matrix
  std::vector<Matrix> matrices;                      // [layer * 7 + m]
};

Weights MakeWeights(Format f) {
  Weights w;
  w.format = f;
  for (const Shape& s : kLayer) w.layer_bytes += s.rows * quant::RowBytes(f, s.cols, kGroup).value();
  w.layers = static_cast<int>(std::max<int64_t>(2, ((int64_t{512} << 20) + w.layer_bytes - 1) / w.layer_bytes));
  uint64_t seed = 0x9E3779B97F4A7C15ull;
  for (int l = 0; l < w.layers; ++l)
    for (const Shape& s : kLayer) {
      const int64_t row_bytes = quant::RowBytes(f, s.cols, kGroup).value();
      auto buf = std::make_unique<uint8_t[]>(s.rows * row_bytes);
      FillRows(f, buf.get(), s.rows, s.cols, seed);
      w.matrices.push_back(Matrix{f, buf.get(), s.rows, s.cols, kGroup, row_bytes});
      w.buffers.push_back(std::move(buf));
    }
  return w;
}

const Weights& WeightsOf(Format f) {
  static std::unique_ptr<Weights> cache[4];
  auto& w = cache[static_cast<int>(f)];
  if (!w) {
    cache[0].reset(), cache[1].reset(), cache[2].reset(), cache[3].reset();  // one format in memory at a time
    w = std::make_unique<Weights>(MakeWeights(f));
  }
  return *w;
}

struct Buffers {
  std::vector<float> x_small, x_large, y;  // x [batch, 4096], x [batch, 14336], y [batch, rows] per matrix
  std::vector<int64_t> y_offset;
  explicit Buffers(int batch) {
    x_small.assign(batch * 4096, 0.5f);
    x_large.assign(batch * 14336, 0.25f);
    int64_t total = 0;
    for (const Shape& s : kLayer) y_offset.push_back(total), total += batch * s.rows;
    y.assign(total, 0.0f);
  }
  std::vector<Job> JobsFor(const Weights& w, int layer) {
    std::vector<Job> jobs;
    for (int m = 0; m < 7; ++m) {
      const Matrix& mat = w.matrices[layer * 7 + m];
      jobs.push_back(Job{mat, 0, mat.rows, mat.cols == 4096 ? x_small.data() : x_large.data(),
                         y.data() + y_offset[m], mat.rows});
    }
    return jobs;
  }
};

void RunPool(benchmark::State& state, MatVecPool& pool) {
  const auto format = static_cast<Format>(state.range(0));
  const int batch = static_cast<int>(state.range(1));
  const Weights& w = WeightsOf(format);
  Buffers buf(batch);
  std::vector<std::vector<Job>> jobs;
  for (int l = 0; l < w.layers; ++l) jobs.push_back(buf.JobsFor(w, l));
  int layer = 0;
  for (auto _ : state) {
    Status s = pool.Run(jobs[layer], batch);
    if (!s.ok()) state.SkipWithError(s.error().ToString().c_str());
    layer = (layer + 1) % w.layers;
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * w.layer_bytes);
  state.SetLabel(std::string(RowsName(format)) + " " + IsaName(pool.isa()) + " threads " +
                 std::to_string(pool.threads()));
}

void BM_Pool(benchmark::State& state) {
  MatVecPool pool(0, static_cast<Isa>(state.range(2) == 0 ? 0 : state.range(2)));
  RunPool(state, pool);
}

void BM_OneThread(benchmark::State& state) {
  MatVecPool pool(1);
  RunPool(state, pool);
}

// The plain loop: for each row, decode it weight by weight into float32, then one dot product per input.
void PlainMatVec(const Matrix& m, const float* x, int batch, float* y) {
  const int64_t k = m.cols;
  auto f32 = [](const uint8_t* p) {
    float f;
    std::memcpy(&f, p, 4);
    return f;
  };
  auto bf16 = [](const uint8_t* p) {
    const uint32_t bits = static_cast<uint32_t>(p[0] | (p[1] << 8)) << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
  };
  std::vector<float> w(k);
  for (int64_t r = 0; r < m.rows; ++r) {
    const uint8_t* row = m.base + r * m.row_stride;
    for (int64_t j = 0; j < k; ++j) {
      switch (m.format) {
        case Format::kNone: w[j] = bf16(row + 2 * j); break;
        case Format::kFp8E4M3: w[j] = quant::Fp8E4M3ToFloat(row[j]) * f32(row + k + 4 * (j / m.group)); break;
        case Format::kInt8: w[j] = static_cast<int8_t>(row[j]) * f32(row + k + 4 * (j / m.group)); break;
        default: {
          const int q = j % 2 == 0 ? row[j / 2] >> 4 : row[j / 2] & 15;
          const uint8_t* rec = row + k / 2 + 4 * (j / m.group);
          w[j] = (q - 8) * bf16(rec) + bf16(rec + 2);
        }
      }
    }
    for (int b = 0; b < batch; ++b) {
      float sum = 0;
      for (int64_t j = 0; j < k; ++j) sum += w[j] * x[b * k + j];
      y[b * m.rows + r] = sum;
    }
  }
}

void BM_PlainLoop(benchmark::State& state) {
  const auto format = static_cast<Format>(state.range(0));
  const int batch = static_cast<int>(state.range(1));
  const Weights& w = WeightsOf(format);
  Buffers buf(batch);
  int layer = 0;
  for (auto _ : state) {
    for (const Job& j : buf.JobsFor(w, layer)) PlainMatVec(j.w, j.x, batch, j.y);
    layer = (layer + 1) % w.layers;
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * w.layer_bytes);
  state.SetLabel(std::string(RowsName(format)) + " plain loop");
}

// The kernels' arithmetic rate: one thread over about 512 KiB of weights (4096 columns) that stay in L2.
void BM_InCache(benchmark::State& state) {
  const auto format = static_cast<Format>(state.range(0));
  const int batch = static_cast<int>(state.range(1));
  const int64_t cols = 4096, row_bytes = quant::RowBytes(format, cols, kGroup).value();
  const int64_t rows = (int64_t{512} << 10) / row_bytes;
  std::vector<uint8_t> bytes(rows * row_bytes);
  uint64_t seed = 12345;
  FillRows(format, bytes.data(), rows, cols, seed);
  std::vector<float> x(batch * cols, 0.5f), y(batch * rows);
  const Job job{Matrix{format, bytes.data(), rows, cols, kGroup, row_bytes}, 0, rows, x.data(), y.data(), rows};
  MatVecPool pool(1);
  for (auto _ : state) {
    Status s = pool.Run({&job, 1}, batch);
    if (!s.ok()) state.SkipWithError(s.error().ToString().c_str());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * rows * row_bytes);
  state.SetLabel(std::string(RowsName(format)) + " " + IsaName(pool.isa()) + " in L2");
}

// The cost of one small call (a bf16 job of 256 x 4096, 2 MiB that stays in cache) with all hardware threads
// (range 0: 0) or one (range 0: 1), back to back: the pool's hand-off and wake-up overhead on top of the arithmetic.
void BM_SmallRun(benchmark::State& state) {
  const int64_t rows = 256, cols = 4096, row_bytes = 2 * cols;
  std::vector<uint8_t> bytes(rows * row_bytes);
  uint64_t seed = 777;
  FillRows(Format::kNone, bytes.data(), rows, cols, seed);
  std::vector<float> x(cols, 0.5f), y(rows);
  const Job job{Matrix{Format::kNone, bytes.data(), rows, cols, cols, row_bytes}, 0, rows, x.data(), y.data(), rows};
  MatVecPool pool(state.range(0) == 0 ? 0 : 1);
  for (auto _ : state) {
    Status s = pool.Run({&job, 1}, 1);
    if (!s.ok()) state.SkipWithError(s.error().ToString().c_str());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * rows * row_bytes);
  state.SetLabel("threads " + std::to_string(pool.threads()));
}

// ---- mixture-of-experts FFNs ----

constexpr int64_t kMoeHidden = 2048, kMoeInter = 768;
constexpr int kMoeExperts = 64, kMoeTopK = 8, kMoeRoutings = 8;

struct MoeWeights {
  std::vector<std::unique_ptr<uint8_t[]>> buffers;
  std::vector<cpu_experts::Expert> experts;
  int64_t expert_bytes = 0;
};
const MoeWeights& Moe() {
  static const MoeWeights* w = [] {
    auto* m = new MoeWeights;
    uint64_t seed = 0x243F6A8885A308D3ull;
    auto matrix = [&](int64_t rows, int64_t cols) {
      auto buf = std::make_unique<uint8_t[]>(rows * cols * 2);
      FillRows(Format::kNone, buf.get(), rows, cols, seed);
      const Matrix mat{Format::kNone, buf.get(), rows, cols, 0, cols * 2};
      m->buffers.push_back(std::move(buf));
      return mat;
    };
    for (int e = 0; e < kMoeExperts; ++e)
      m->experts.push_back(cpu_experts::Expert{matrix(kMoeInter, kMoeHidden), matrix(kMoeInter, kMoeHidden),
                                               matrix(kMoeHidden, kMoeInter)});
    m->expert_bytes = 3 * kMoeHidden * kMoeInter * 2;
    return m;
  }();
  return *w;
}

// kMoeRoutings routings of `tokens` tokens, each token to kMoeTopK distinct experts with weights summing to 1
// (one token: routing r takes experts 8r..8r+7, so consecutive calls read different weights); and the bytes of the
// distinct experts each routing reads.
struct MoeRoutings {
  std::vector<std::vector<cpu_experts::Assignment>> assignments;
  std::vector<int64_t> bytes;
};
MoeRoutings MakeRoutings(int tokens) {
  MoeRoutings out;
  uint64_t seed = 99;
  for (int r = 0; r < kMoeRoutings; ++r) {
    std::vector<cpu_experts::Assignment> as;
    std::vector<bool> used(kMoeExperts, false);
    for (int t = 0; t < tokens; ++t) {
      std::vector<bool> mine(kMoeExperts, false);
      for (int k = 0; k < kMoeTopK; ++k) {
        int e = t == 0 ? (r * kMoeTopK + k) % kMoeExperts : static_cast<int>(Next(seed) % kMoeExperts);
        while (mine[e]) e = (e + 1) % kMoeExperts;
        mine[e] = used[e] = true;
        as.push_back({e, t, 1.0f / kMoeTopK});
      }
    }
    out.assignments.push_back(as);
    int64_t bytes = 0;
    for (bool u : used) bytes += u ? Moe().expert_bytes : 0;
    out.bytes.push_back(bytes);
  }
  return out;
}

void BM_Experts(benchmark::State& state) {
  const int tokens = static_cast<int>(state.range(0));
  const MoeWeights& w = Moe();
  const MoeRoutings routings = MakeRoutings(tokens);
  MatVecPool pool(0);
  cpu_experts::ExpertRunner runner(&pool, kMoeHidden, kMoeInter, tokens, tokens * kMoeTopK);
  std::vector<float> x(tokens * kMoeHidden, 0.5f), out(tokens * kMoeHidden);
  int r = 0;
  int64_t bytes = 0;
  for (auto _ : state) {
    Status s = runner.Run(w.experts, routings.assignments[r], x.data(), tokens, cpu_experts::Activation::kSilu,
                          out.data());
    if (!s.ok()) state.SkipWithError(s.error().ToString().c_str());
    bytes += routings.bytes[r];
    r = (r + 1) % kMoeRoutings;
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(bytes);
  state.SetLabel("bf16 " + std::string(IsaName(pool.isa())) + " threads " + std::to_string(pool.threads()));
}

// BM_ExpertCount/N/T: one token routed to N of the Qwen3-shaped experts (routing r takes experts rN..rN+N-1 of the
// 64, so consecutive calls read different weights) with T pool threads (0: every core; -1: every core but one, as
// the executor's expert engine runs); bytes/s counts the N experts' weights. Separates a call's fixed cost from its
// rate (the executor's host gets about 3 of a layer's 8 in Qwen3 decode).
void BM_ExpertCount(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  const int t = static_cast<int>(state.range(1));
  const MoeWeights& w = Moe();
  const int threads = t >= 0 ? t : std::max(1, static_cast<int>(std::thread::hardware_concurrency()) - 1);
  MatVecPool pool(threads);
  cpu_experts::ExpertRunner runner(&pool, kMoeHidden, kMoeInter, 1, n);
  std::vector<std::vector<cpu_experts::Assignment>> routings;
  for (int r = 0; r < kMoeExperts; ++r) {
    std::vector<cpu_experts::Assignment> as;
    for (int k = 0; k < n; ++k) as.push_back({(r * n + k) % kMoeExperts, 0, 1.0f / n});
    routings.push_back(as);
  }
  std::vector<float> x(kMoeHidden, 0.5f), out(kMoeHidden);
  int r = 0;
  for (auto _ : state) {
    Status s = runner.Run(w.experts, routings[r], x.data(), 1, cpu_experts::Activation::kSilu, out.data());
    if (!s.ok()) state.SkipWithError(s.error().ToString().c_str());
    r = (r + 1) % kMoeExperts;
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * n * w.expert_bytes);
  state.SetLabel("bf16 " + std::string(IsaName(pool.isa())) + " threads " + std::to_string(pool.threads()));
}

// BM_LargeExpert/T: one token through one Mixtral-8x7B-shaped expert (hidden 4096, intermediate 14336; 352 MB), two
// alternating so the weights come from DRAM, T threads as BM_ExpertCount.
void BM_LargeExpert(benchmark::State& state) {
  constexpr int64_t kH = 4096, kI = 14336;
  static const auto* experts = [] {
    auto* v = new std::vector<std::pair<std::unique_ptr<uint8_t[]>, cpu_experts::Expert>>();
    uint64_t seed = 0x13198A2E03707344ull;
    for (int e = 0; e < 2; ++e) {
      auto buf = std::make_unique<uint8_t[]>(3 * kH * kI * 2);
      uint8_t* b = buf.get();
      FillRows(Format::kNone, b, 2 * kI, kH, seed);
      FillRows(Format::kNone, b + 2 * kI * kH * 2, kH, kI, seed);
      cpu_experts::Expert ex{Matrix{Format::kNone, b, kI, kH, 0, kH * 2},
                             Matrix{Format::kNone, b + kI * kH * 2, kI, kH, 0, kH * 2},
                             Matrix{Format::kNone, b + 2 * kI * kH * 2, kH, kI, 0, kI * 2}};
      v->emplace_back(std::move(buf), ex);
    }
    return v;
  }();
  const int t = static_cast<int>(state.range(0));
  const int threads = t >= 0 ? t : std::max(1, static_cast<int>(std::thread::hardware_concurrency()) - 1);
  MatVecPool pool(threads);
  cpu_experts::ExpertRunner runner(&pool, kH, kI, 1, 1);
  std::vector<float> x(kH, 0.5f), out(kH);
  int r = 0;
  for (auto _ : state) {
    const cpu_experts::Expert table[1] = {(*experts)[r].second};
    const cpu_experts::Assignment as[1] = {{0, 0, 1.0f}};
    Status s = runner.Run(table, as, x.data(), 1, cpu_experts::Activation::kSilu, out.data());
    if (!s.ok()) state.SkipWithError(s.error().ToString().c_str());
    r ^= 1;
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * 3 * kH * kI * 2);
  state.SetLabel("bf16 " + std::string(IsaName(pool.isa())) + " threads " + std::to_string(pool.threads()));
}

// The same weights as BM_Experts in one pool call per routing: each distinct expert's gate, up and down matrices
// as independent jobs for a batch of `tokens`.
void BM_ExpertMatrices(benchmark::State& state) {
  const int tokens = static_cast<int>(state.range(0));
  const MoeWeights& w = Moe();
  const MoeRoutings routings = MakeRoutings(tokens);
  std::vector<float> x(tokens * kMoeHidden, 0.5f), h(tokens * kMoeInter, 0.25f);
  std::vector<std::vector<float>> ys;
  std::vector<std::vector<Job>> jobs(kMoeRoutings);
  for (int r = 0; r < kMoeRoutings; ++r) {
    std::vector<bool> used(kMoeExperts, false);
    for (const auto& a : routings.assignments[r]) used[a.expert] = true;
    for (int e = 0; e < kMoeExperts; ++e) {
      if (!used[e]) continue;
      for (const Matrix& m : {w.experts[e].gate, w.experts[e].up, w.experts[e].down}) {
        ys.emplace_back(tokens * m.rows);
        jobs[r].push_back(Job{m, 0, m.rows, m.cols == kMoeHidden ? x.data() : h.data(), ys.back().data(), m.rows});
      }
    }
  }
  MatVecPool pool(0);
  int r = 0;
  int64_t bytes = 0;
  for (auto _ : state) {
    Status s = pool.Run(jobs[r], tokens);
    if (!s.ok()) state.SkipWithError(s.error().ToString().c_str());
    bytes += routings.bytes[r];
    r = (r + 1) % kMoeRoutings;
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(bytes);
  state.SetLabel("bf16 " + std::string(IsaName(pool.isa())) + " threads " + std::to_string(pool.threads()));
}

void PoolArgs(benchmark::internal::Benchmark* b) {
  for (int f = 0; f < 4; ++f)
    for (int batch : {1, 8})
      for (int isa : {0, 1, 2}) b->Args({f, batch, isa});
}
void FormatBatchArgs(benchmark::internal::Benchmark* b) {
  for (int f = 0; f < 4; ++f)
    for (int batch : {1, 8}) b->Args({f, batch});
}

BENCHMARK(BM_Pool)->Apply(PoolArgs)->UseRealTime()->Unit(benchmark::kMillisecond)->MinTime(0.5);
BENCHMARK(BM_OneThread)->Apply(FormatBatchArgs)->UseRealTime()->Unit(benchmark::kMillisecond)->MinTime(0.5);
BENCHMARK(BM_InCache)->Apply(FormatBatchArgs)->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_SmallRun)->Arg(0)->Arg(1)->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_Experts)->Arg(1)->Arg(4)->Arg(16)->UseRealTime()->Unit(benchmark::kMicrosecond)->MinTime(0.5);
BENCHMARK(BM_ExpertCount)
    ->ArgsProduct({{1, 2, 3, 4, 8, 16}, {-1}})
    ->Args({4, 0})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond)
    ->MinTime(0.3);
BENCHMARK(BM_LargeExpert)->Arg(-1)->Arg(0)->UseRealTime()->Unit(benchmark::kMicrosecond)->MinTime(0.5);
BENCHMARK(BM_ExpertMatrices)->Arg(1)->UseRealTime()->Unit(benchmark::kMicrosecond)->MinTime(0.5);
BENCHMARK(BM_PlainLoop)->Apply(FormatBatchArgs)->UseRealTime()->Unit(benchmark::kMillisecond)->Iterations(1);

}  // namespace
}  // namespace bigplan::cpu_matvec
