// The fused kernels against the LibTorch ops they replace, on CUDA device 0 (bf16): the matrix-vector product
// (Llama-3-8B's q/k/v, o, gate/up, down and lm_head shapes at 1 and 2 rows) against at::linear, and the split-K
// decode attention against the masked attention over the whole cache that graph-replayed steps used before; the
// unpacking of quantized weights (fused_ops::Dequantize) against a device copy of its output's bytes, and a
// prompt's quantized product (unpacked, then cuBLAS) against the same product of bf16 weights.
// Counters: bytes_per_second = weight (or KV) bytes read / time; for Dequantize and the copy, bytes read + written.
//
//   fused_ops_bench [--benchmark_filter=...]      (bazel build -c opt //benchmarks/gpu:fused_ops_bench)
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <benchmark/benchmark.h>

#include <cmath>
#include <limits>

#include "executor/fused_ops.h"
#include "formats/quant.h"

namespace bigplan {
namespace {

at::TensorOptions Opts() { return at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA, 0); }

// Times `fn` with CUDA events over each benchmark iteration's batch of 20 calls.
template <typename Fn>
void TimeOnGpu(benchmark::State& state, Fn&& fn, double bytes) {
  for (int i = 0; i < 3; ++i) fn();
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  const cudaStream_t s = at::cuda::getCurrentCUDAStream().stream();
  constexpr int kCalls = 20;
  for (auto _ : state) {
    cudaEventRecord(a, s);
    for (int i = 0; i < kCalls; ++i) fn();
    cudaEventRecord(b, s);
    cudaEventSynchronize(b);
    float ms = 0;
    cudaEventElapsedTime(&ms, a, b);
    state.SetIterationTime(ms / 1e3 / kCalls);
  }
  state.counters["bytes_per_second"] = benchmark::Counter(bytes * state.iterations(), benchmark::Counter::kIsRate);
  cudaEventDestroy(a);
  cudaEventDestroy(b);
}

// Args: rows of x, n, k; fused (1) or at::linear (0).
void BM_Linear(benchmark::State& state) {
  if (!at::hasCUDA()) {
    state.SkipWithError("no CUDA device");
    return;
  }
  const int64_t m = state.range(0), n = state.range(1), k = state.range(2);
  const bool fused = state.range(3) != 0;
  const at::Tensor x = at::randn({m, k}, Opts()), w = at::randn({n, k}, Opts());
  TimeOnGpu(state, [&] {
    if (fused) {
      benchmark::DoNotOptimize(fused_ops::Linear(x, w, at::Tensor(), at::Tensor()));
    } else {
      benchmark::DoNotOptimize(at::linear(x, w));
    }
  }, static_cast<double>(n) * k * 2);
}

void LinearArgs(benchmark::internal::Benchmark* b) {
  for (int64_t m : {1, 2}) {  // (more rows: fused_ops::Linear runs cuBLAS)
    for (auto [n, k] : {std::pair<int64_t, int64_t>{6144, 4096}, {4096, 4096}, {28672, 4096}, {4096, 14336},
                        {128256, 4096}}) {
      for (int64_t fused : {1, 0}) b->Args({m, n, k, fused});
    }
  }
}
BENCHMARK(BM_Linear)->Apply(LinearArgs)->UseManualTime()->ArgNames({"m", "n", "k", "fused"});

// Args: attended positions, cache positions; fused (1) or masked attention over the whole cache (0). Llama-3-8B's
// heads (32 query, 8 kv, 128 dims), one row.
void BM_DecodeAttention(benchmark::State& state) {
  if (!at::hasCUDA()) {
    state.SkipWithError("no CUDA device");
    return;
  }
  const int64_t len = state.range(0), max_seq = state.range(1);
  const bool fused = state.range(2) != 0;
  const int64_t heads = 32, kv_heads = 8, D = 128;
  const at::Tensor kc = at::randn({1, kv_heads, max_seq, D}, Opts()), vc = at::randn({1, kv_heads, max_seq, D}, Opts());
  const at::Tensor q = at::randn({1, heads, 1, D}, Opts());
  const at::Tensor pos = at::full({1}, len - 1, at::TensorOptions().dtype(at::kLong).device(at::kCUDA, 0));
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  TimeOnGpu(state, [&] {
    if (fused) {
      benchmark::DoNotOptimize(
          fused_ops::DecodeAttention(q, kc, vc, {pos, false, 0, at::Tensor()}, max_seq, 0, scale));
    } else {
      // The static step's LibTorch attention (executor/kernels.cc StaticDecodeAttention without its cache write).
      const at::Tensor qg = q.reshape({1, kv_heads, heads / kv_heads, D});
      const at::Tensor scores = at::matmul(qg, kc.transpose(2, 3)) * scale;
      const at::Tensor mask = at::zeros({max_seq}, q.options().dtype(at::kFloat))
                                  .masked_fill_(at::arange(max_seq, pos.options()) > pos,
                                                -std::numeric_limits<float>::infinity());
      const at::Tensor probs = at::softmax(scores.to(at::kFloat) + mask, -1).to(q.scalar_type());
      benchmark::DoNotOptimize(at::matmul(probs, vc));
    }
  }, static_cast<double>(len) * kv_heads * D * 2 * 2);
}
BENCHMARK(BM_DecodeAttention)
    ->Args({512, 1024, 1})->Args({512, 1024, 0})->Args({4096, 8192, 1})->Args({4096, 8192, 0})
    ->UseManualTime()->ArgNames({"len", "max_seq", "fused"});

// Quantized weights for the benchmarks below: random bytes in the stored layout of `format` (values and scale records
// alike: the kernels' time does not depend on them). Format codes: 1 int8 per row, 2 fp8 per row, 3 int4 in groups
// of 128 columns (plan --weights' formats).
quant::Format BenchFormat(int64_t code) {
  return code == 1 ? quant::Format::kInt8 : code == 2 ? quant::Format::kFp8E4M3 : quant::Format::kInt4;
}
int64_t BenchGroup(int64_t code, int64_t k) { return code == 3 ? 128 : k; }
at::Tensor RandomStored(quant::Format format, int64_t n, int64_t k, int64_t group) {
  const Result<uint64_t> row = quant::RowBytes(format, k, group);
  return at::randint(0, 256, {n, static_cast<int64_t>(*row)},
                     at::TensorOptions().dtype(at::kByte).device(at::kCUDA, 0));
}

// Args: format code (0: a bf16 device copy of the same [n, k], the floor), n, k.
void BM_Dequantize(benchmark::State& state) {
  if (!at::hasCUDA()) {
    state.SkipWithError("no CUDA device");
    return;
  }
  const int64_t code = state.range(0), n = state.range(1), k = state.range(2);
  at::Tensor out = at::empty({n, k}, Opts());
  if (code == 0) {
    const at::Tensor src = at::randn({n, k}, Opts());
    TimeOnGpu(state, [&] { out.copy_(src); }, 4.0 * n * k);
    return;
  }
  const quant::Format f = BenchFormat(code);
  const int64_t group = BenchGroup(code, k);
  const at::Tensor wq = RandomStored(f, n, k, group);
  TimeOnGpu(state, [&] {
    if (!fused_ops::DequantizeInto({fused_ops::DequantInput{.wq = wq, .cols = k, .group = group, .out = out}}, f)) {
      state.SkipWithError("not eligible");
    }
  }, static_cast<double>(wq.numel()) + 2.0 * n * k);
}
void DequantArgs(benchmark::internal::Benchmark* b) {
  for (auto [n, k] : {std::pair<int64_t, int64_t>{14336, 4096}, {4096, 14336}, {1536, 2048}, {2048, 768}}) {
    for (int64_t code : {0, 1, 2, 3}) b->Args({code, n, k});
  }
}
BENCHMARK(BM_Dequantize)->Apply(DequantArgs)->UseManualTime()->ArgNames({"format", "n", "k"});

// A prompt's product of m rows with a quantized [n, k] weight as QuantLinear runs it: unpacked into a bf16 scratch,
// then at::linear. Format code 0: at::linear of the bf16 weight alone. Bytes: the stored weight's.
void BM_QuantPromptProduct(benchmark::State& state) {
  if (!at::hasCUDA()) {
    state.SkipWithError("no CUDA device");
    return;
  }
  const int64_t code = state.range(0), m = state.range(1), n = state.range(2), k = state.range(3);
  const at::Tensor x = at::randn({m, k}, Opts());
  if (code == 0) {
    const at::Tensor w = at::randn({n, k}, Opts());
    TimeOnGpu(state, [&] { benchmark::DoNotOptimize(at::linear(x, w)); }, 2.0 * n * k);
    return;
  }
  const quant::Format f = BenchFormat(code);
  const int64_t group = BenchGroup(code, k);
  const at::Tensor wq = RandomStored(f, n, k, group);
  at::Tensor w = at::empty({n, k}, Opts());
  TimeOnGpu(state, [&] {
    if (!fused_ops::DequantizeInto({fused_ops::DequantInput{.wq = wq, .cols = k, .group = group, .out = w}}, f)) {
      state.SkipWithError("not eligible");
    }
    benchmark::DoNotOptimize(at::linear(x, w));
  }, static_cast<double>(wq.numel()));
}
void PromptProductArgs(benchmark::internal::Benchmark* b) {
  for (int64_t m : {128, 512}) {
    for (auto [n, k] : {std::pair<int64_t, int64_t>{28672, 4096}, {4096, 14336}}) {
      for (int64_t code : {0, 1, 3}) b->Args({code, m, n, k});
    }
  }
}
BENCHMARK(BM_QuantPromptProduct)->Apply(PromptProductArgs)->UseManualTime()->ArgNames({"format", "m", "n", "k"});

}  // namespace
}  // namespace bigplan

BENCHMARK_MAIN();
