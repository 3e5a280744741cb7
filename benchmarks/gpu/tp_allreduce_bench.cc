// tp::AllReduce (executor/tp_comm.h) over CUDA devices 0 and 1, bf16, against peer copies of the same bytes: each
// rank's stream captured with 64 consecutive calls into a CUDA graph, both graphs replayed, time per call = the
// slower rank's event time / 64 (manual time). The reference BM_PeerCopy: each device copies n bf16 to the other
// with cudaMemcpyPeerAsync, 64 copies per rank, both directions at once (the bytes each all-reduce rank sends),
// captured the same way (eager when the capture is refused; the label says which).
// Counter: bytes_per_second = n * 2 bytes (one rank's data) / time per call. Each benchmark runs a fixed
// kIterations replays (kIterations x 64 calls): the reported time is per call, so Google Benchmark's minimum time
// (which counts that manual time) would otherwise run 64 times its wall-clock budget.
//
//   NCCL_NVLS_ENABLE=0 tp_allreduce_bench [--benchmark_filter=...]
//   (bazel build -c opt //benchmarks/gpu:tp_allreduce_bench, or tools/bundle_gpu.sh for a GPU machine)
#include <benchmark/benchmark.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>

#include "executor/tp_comm.h"

namespace bigplan {
namespace {

constexpr int kCalls = 64;
constexpr int kIterations = 200;
constexpr int64_t kMaxN = int64_t{1} << 22;

// Devices 0 and 1: the group, and per rank a stream, two timing events and input/output buffers of kMaxN bf16.
struct Pair {
  std::string error;  // set when the pair could not be made
  std::unique_ptr<tp::AllReduce> ar;
  cudaStream_t stream[2] = {};
  cudaEvent_t start[2] = {}, stop[2] = {};
  void* in[2] = {};
  void* out[2] = {};
};

Pair* MakePair() {
  auto* p = new Pair();
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count < 2) {
    cudaGetLastError();
    p->error = "needs 2 CUDA devices; this machine has " + std::to_string(count);
    return p;
  }
  if (cudaError_t err = tp::AllReduce::Create({0, 1}, kMaxN, &p->ar, &p->error); err != cudaSuccess) return p;
  for (int r = 0; r < 2; ++r) {
    const bool ok = cudaSetDevice(r) == cudaSuccess &&
                    cudaStreamCreateWithFlags(&p->stream[r], cudaStreamNonBlocking) == cudaSuccess &&
                    cudaEventCreate(&p->start[r]) == cudaSuccess && cudaEventCreate(&p->stop[r]) == cudaSuccess &&
                    cudaMalloc(&p->in[r], kMaxN * 2) == cudaSuccess &&
                    cudaMalloc(&p->out[r], kMaxN * 2) == cudaSuccess &&
                    cudaMemset(p->in[r], 0, kMaxN * 2) == cudaSuccess && cudaDeviceSynchronize() == cudaSuccess;
    if (!ok) {
      p->error = std::string("setting up device ") + std::to_string(r) + ": " + cudaGetErrorString(cudaGetLastError());
      return p;
    }
  }
  return p;
}

Pair& GetPair() {
  static Pair* pair = MakePair();  // kept until exit
  return *pair;
}

// Captures `per_rank(r)` (the 64 calls of rank r on its stream) into a graph per rank; falls back to running them
// eagerly when a capture fails. Then times replays: each iteration's time = max over ranks of its events' time / 64.
void TimePair(benchmark::State& state, Pair& p, const std::function<cudaError_t(int)>& per_rank) {
  cudaGraphExec_t exec[2] = {};
  bool graphs = true;
  for (int r = 0; r < 2 && graphs; ++r) {
    cudaSetDevice(r);
    cudaGraph_t graph = nullptr;
    graphs = cudaStreamBeginCapture(p.stream[r], cudaStreamCaptureModeThreadLocal) == cudaSuccess;
    const cudaError_t calls = graphs ? per_rank(r) : cudaSuccess;
    graphs = graphs && cudaStreamEndCapture(p.stream[r], &graph) == cudaSuccess && calls == cudaSuccess &&
             cudaGraphInstantiate(&exec[r], graph, 0) == cudaSuccess;
    if (graph != nullptr) cudaGraphDestroy(graph);
  }
  if (!graphs) {
    cudaGetLastError();
    for (int r = 0; r < 2; ++r) {
      if (exec[r] != nullptr) cudaGraphExecDestroy(exec[r]);
      exec[r] = nullptr;
    }
  }
  state.SetLabel(graphs ? "graph" : "eager");
  const auto run = [&]() -> cudaError_t {
    for (int r = 0; r < 2; ++r) {
      cudaSetDevice(r);
      if (cudaError_t err = cudaEventRecord(p.start[r], p.stream[r]); err != cudaSuccess) return err;
      if (cudaError_t err = graphs ? cudaGraphLaunch(exec[r], p.stream[r]) : per_rank(r); err != cudaSuccess) {
        return err;
      }
      if (cudaError_t err = cudaEventRecord(p.stop[r], p.stream[r]); err != cudaSuccess) return err;
    }
    for (int r = 0; r < 2; ++r) {
      cudaSetDevice(r);
      if (cudaError_t err = cudaEventSynchronize(p.stop[r]); err != cudaSuccess) return err;
    }
    return cudaSuccess;
  };
  for (int i = 0; i < 3; ++i) {
    if (cudaError_t err = run(); err != cudaSuccess) {
      state.SkipWithError(cudaGetErrorString(err));
      return;
    }
  }
  for (auto _ : state) {
    if (cudaError_t err = run(); err != cudaSuccess) {
      state.SkipWithError(cudaGetErrorString(err));
      break;
    }
    float ms[2] = {0, 0};
    for (int r = 0; r < 2; ++r) cudaEventElapsedTime(&ms[r], p.start[r], p.stop[r]);
    state.SetIterationTime(std::max(ms[0], ms[1]) / 1e3 / kCalls);
  }
  for (int r = 0; r < 2; ++r) {
    if (exec[r] != nullptr) cudaGraphExecDestroy(exec[r]);
  }
  if (p.ar->Failed()) state.SkipWithError("the all-reduce reported a timeout or abort");
}

// Times kCalls of `call(rank)` per rank on both GPUs (TimePair), n bf16 values each; skips without two GPUs.
template <typename Call>
void TimeCalls(benchmark::State& state, Call call) {
  Pair& p = GetPair();
  if (!p.error.empty()) {
    state.SkipWithError(p.error.c_str());
    return;
  }
  const int64_t n = state.range(0);
  TimePair(state, p, [&](int r) {
    for (int i = 0; i < kCalls; ++i) {
      if (cudaError_t err = call(p, r, n); err != cudaSuccess) return err;
    }
    return cudaSuccess;
  });
  state.counters["bytes_per_second"] = benchmark::Counter(n * 2.0 * state.iterations(), benchmark::Counter::kIsRate);
}

void BM_AllReduce(benchmark::State& state) {
  TimeCalls(state, [](Pair& p, int r, int64_t n) {
    return p.ar->Launch(r, tp::DType::kBF16, p.in[r], p.out[r], n, p.stream[r]);
  });
}
BENCHMARK(BM_AllReduce)
    ->Arg(4096)->Arg(8192)->Arg(65536)->Arg(1 << 20)->Arg(1 << 22)
    ->Iterations(kIterations)->UseManualTime()->Unit(benchmark::kMicrosecond)->ArgName("n");

void BM_PeerCopy(benchmark::State& state) {
  TimeCalls(state, [](Pair& p, int r, int64_t n) {
    return cudaMemcpyPeerAsync(p.out[1 - r], 1 - r, p.in[r], r, n * 2, p.stream[r]);
  });
}
BENCHMARK(BM_PeerCopy)
    ->Arg(4096)->Arg(8192)->Arg(65536)->Arg(1 << 20)->Arg(1 << 22)
    ->Iterations(kIterations)->UseManualTime()->Unit(benchmark::kMicrosecond)->ArgName("n");

}  // namespace
}  // namespace bigplan

int main(int argc, char** argv) {
  int count = 0;
  if (cudaGetDeviceCount(&count) == cudaSuccess) {
    for (int d = 0; d < count && d < 2; ++d) {
      cudaDeviceProp prop{};
      if (cudaGetDeviceProperties(&prop, d) == cudaSuccess) {
        benchmark::AddCustomContext("cuda:" + std::to_string(d), prop.name);
      }
    }
  }
  cudaGetLastError();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
