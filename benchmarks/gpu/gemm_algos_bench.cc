// The bf16 products of a prefill, y[M,N] = x[M,K] . W[N,K]^T (+ y when --residual), timed on CUDA device 0 three
// ways: cublasGemmEx with its default algorithm (what LibTorch's at::mm runs), cublasLt's first heuristic choice, and
// the fastest of every algorithm cublasLt's heuristic offers (up to 64, each timed on the same data). Prints TFLOP/s
// for each, against the 8192^3 rate measured first, so one run shows what choosing algorithms per shape could gain.
//
//   gemm_algos_bench [--m 512] [--shapes N:K,N:K,...] [--iters 20]
// Default shapes: the Llama-2-7B and Llama-3-8B products (q/k/v, o, gate/up, down).
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

namespace {

#define CHECK_CUDA(x)                                                                      \
  do {                                                                                     \
    cudaError_t e_ = (x);                                                                  \
    if (e_ != cudaSuccess) {                                                               \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(1);                                                                        \
    }                                                                                      \
  } while (0)
#define CHECK_BLAS(x)                                                                   \
  do {                                                                                  \
    cublasStatus_t s_ = (x);                                                            \
    if (s_ != CUBLAS_STATUS_SUCCESS) {                                                  \
      std::fprintf(stderr, "%s:%d %s: cuBLAS status %d\n", __FILE__, __LINE__, #x, int(s_)); \
      std::exit(1);                                                                     \
    }                                                                                   \
  } while (0)

struct Shape {
  std::string name;
  int64_t n, k;
};

template <typename Fn>
float TimeMs(int iters, Fn fn) {
  cudaEvent_t a, b;
  CHECK_CUDA(cudaEventCreate(&a));
  CHECK_CUDA(cudaEventCreate(&b));
  for (int i = 0; i < 3; ++i) fn();
  CHECK_CUDA(cudaEventRecord(a));
  for (int i = 0; i < iters; ++i) fn();
  CHECK_CUDA(cudaEventRecord(b));
  CHECK_CUDA(cudaEventSynchronize(b));
  float ms = 0;
  CHECK_CUDA(cudaEventElapsedTime(&ms, a, b));
  CHECK_CUDA(cudaEventDestroy(a));
  CHECK_CUDA(cudaEventDestroy(b));
  return ms / iters;
}

}  // namespace

int main(int argc, char** argv) {
  int64_t m = 512;
  int iters = 20;
  bool residual = false;
  std::vector<Shape> shapes = {{"llama2 qkv", 12288, 4096}, {"llama2 o", 4096, 4096},    {"llama2 gate_up", 22016, 4096},
                               {"llama2 down", 4096, 11008}, {"llama3 qkv", 6144, 4096}, {"llama3 gate_up", 28672, 4096},
                               {"llama3 down", 4096, 14336}};
  for (int i = 1; i < argc; ++i) {
    std::string f = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", f.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (f == "--m") m = std::atoll(next().c_str());
    else if (f == "--iters") iters = std::atoi(next().c_str());
    else if (f == "--residual") residual = true;
    else if (f == "--shapes") {
      shapes.clear();
      std::string s = next();
      size_t p = 0;
      while (p < s.size()) {
        size_t c = s.find(',', p);
        if (c == std::string::npos) c = s.size();
        const std::string one = s.substr(p, c - p);
        const size_t colon = one.find(':');
        shapes.push_back({one, std::atoll(one.substr(0, colon).c_str()),
                          std::atoll(one.substr(colon + 1).c_str())});
        p = c + 1;
      }
    } else {
      std::fprintf(stderr, "unknown flag %s\n", f.c_str());
      return 2;
    }
  }
  cublasHandle_t blas;
  cublasLtHandle_t lt;
  CHECK_BLAS(cublasCreate(&blas));
  CHECK_BLAS(cublasLtCreate(&lt));
  const size_t workspace_bytes = size_t{64} << 20;
  void* workspace = nullptr;
  CHECK_CUDA(cudaMalloc(&workspace, workspace_bytes));
  CHECK_BLAS(cublasSetWorkspace(blas, workspace, workspace_bytes));

  // Peak: 8192^3 through cublasGemmEx.
  const int64_t big = 8192;
  __nv_bfloat16 *pa, *pb, *pc;
  int64_t max_elems = big * big;
  for (const Shape& s : shapes) max_elems = std::max({max_elems, s.n * s.k, m * s.k, m * s.n});
  CHECK_CUDA(cudaMalloc(&pa, max_elems * 2));
  CHECK_CUDA(cudaMalloc(&pb, max_elems * 2));
  CHECK_CUDA(cudaMalloc(&pc, max_elems * 2));
  {
    // Small random values (bf16 bit patterns of [-0.05, 0.05)).
    std::vector<__nv_bfloat16> host(static_cast<size_t>(max_elems));
    uint32_t h = 12345;
    for (auto& v : host) {
      h = h * 1664525u + 1013904223u;
      v = __float2bfloat16((static_cast<float>(h >> 16) / 65536.0f - 0.5f) * 0.1f);
    }
    for (__nv_bfloat16* p : {pa, pb, pc}) CHECK_CUDA(cudaMemcpy(p, host.data(), max_elems * 2, cudaMemcpyHostToDevice));
  }
  const float one = 1.0f, zero = 0.0f;
  const float beta = residual ? 1.0f : 0.0f;
  auto gemm_ex = [&](int64_t mm, int64_t nn, int64_t kk, const float* b) {
    // Row-major y[mm, nn] = x[mm, kk] W[nn, kk]^T is column-major Y^T = W^T(op T of a kk x nn) . X^T.
    CHECK_BLAS(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(nn), static_cast<int>(mm),
                            static_cast<int>(kk), &one, pb, CUDA_R_16BF, static_cast<int>(kk), pa, CUDA_R_16BF,
                            static_cast<int>(kk), b, pc, CUDA_R_16BF, static_cast<int>(nn), CUBLAS_COMPUTE_32F,
                            CUBLAS_GEMM_DEFAULT_TENSOR_OP));
  };
  const float peak_ms = TimeMs(10, [&] { gemm_ex(big, big, big, &zero); });
  const double peak = 2.0 * big * big * big / (peak_ms * 1e-3) / 1e12;
  cudaDeviceProp prop{};
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  std::printf("%s: 8192^3 bf16 %.0f TFLOP/s; M = %lld, %s\n", prop.name, peak, static_cast<long long>(m),
              residual ? "y += x W^T (beta 1)" : "y = x W^T");
  std::printf("%-16s %6s %6s %9s %9s %9s %9s  %s\n", "shape", "N", "K", "GemmEx", "Lt first", "Lt best", "best/peak",
              "algorithms timed");
  for (const Shape& s : shapes) {
    const double flops = 2.0 * m * s.n * s.k;
    const float ex_ms = TimeMs(iters, [&] { gemm_ex(m, s.n, s.k, &beta); });
    cublasLtMatmulDesc_t desc;
    CHECK_BLAS(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t t = CUBLAS_OP_T, nop = CUBLAS_OP_N;
    CHECK_BLAS(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &t, sizeof(t)));
    CHECK_BLAS(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &nop, sizeof(nop)));
    cublasLtMatrixLayout_t la, lb, lc;
    CHECK_BLAS(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, s.k, s.n, s.k));
    CHECK_BLAS(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, s.k, m, s.k));
    CHECK_BLAS(cublasLtMatrixLayoutCreate(&lc, CUDA_R_16BF, s.n, m, s.n));
    cublasLtMatmulPreference_t pref;
    CHECK_BLAS(cublasLtMatmulPreferenceCreate(&pref));
    CHECK_BLAS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace_bytes,
                                                    sizeof(workspace_bytes)));
    cublasLtMatmulHeuristicResult_t results[64];
    int found = 0;
    CHECK_BLAS(cublasLtMatmulAlgoGetHeuristic(lt, desc, la, lb, lc, lc, pref, 64, results, &found));
    float first_ms = 0, best_ms = 1e30f;
    int best = -1;
    for (int i = 0; i < found; ++i) {
      if (results[i].state != CUBLAS_STATUS_SUCCESS) continue;
      const float ms = TimeMs(iters, [&] {
        CHECK_BLAS(cublasLtMatmul(lt, desc, &one, pb, la, pa, lb, &beta, pc, lc, pc, lc, &results[i].algo, workspace,
                                  workspace_bytes, nullptr));
      });
      if (i == 0) first_ms = ms;
      if (ms < best_ms) {
        best_ms = ms;
        best = i;
      }
    }
    std::printf("%-16s %6lld %6lld %9.1f %9.1f %9.1f %8.0f%%  %d (best: #%d, %.1f us against %.1f us)\n", s.name.c_str(),
                static_cast<long long>(s.n), static_cast<long long>(s.k), flops / (ex_ms * 1e-3) / 1e12,
                flops / (first_ms * 1e-3) / 1e12, flops / (best_ms * 1e-3) / 1e12,
                100.0 * flops / (best_ms * 1e-3) / 1e12 / peak, found, best, best_ms * 1e3, ex_ms * 1e3);
    cublasLtMatmulPreferenceDestroy(pref);
    cublasLtMatrixLayoutDestroy(la);
    cublasLtMatrixLayoutDestroy(lb);
    cublasLtMatrixLayoutDestroy(lc);
    cublasLtMatmulDescDestroy(desc);
  }
  return 0;
}
