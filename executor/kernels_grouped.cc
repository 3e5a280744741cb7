// Grouped expert products on a GPU: one cuBLAS batched GEMM over several experts' matrices (pointer arrays; for
// quantized experts one batched fused::QuantGemv), so a decode step's chosen experts cost a handful of launches
// instead of a handful each; and a prompt's routed experts,
// where all rest on the GPU, as two grouped products over every expert (at::_grouped_mm).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <cublas_v2.h>

#include <algorithm>
#include <string>

#include "arch/temporaries.h"
#include "executor/fused_ops.h"
#include "executor/kernels_internal.h"

namespace bigplan::kernels_internal {
namespace {

Result<cudaDataType_t> CudaType(at::ScalarType t) {
  switch (t) {
    case at::kBFloat16: return CUDA_R_16BF;
    case at::kHalf: return CUDA_R_16F;
    case at::kFloat: return CUDA_R_32F;
    default: return MakeError(ErrorCode::kUnsupported, "grouped expert products in " + std::string(at::toString(t)));
  }
}

// For each i < n: C_i [tokens, rows] = B_i [tokens, cols] x A_i^T, A_i [rows, cols] row-major (nn.Linear).
Status BatchedLinear(const void* const* a, const void* const* b, void* const* c, int64_t n, int64_t tokens,
                     int64_t rows, int64_t cols, cudaDataType_t type) {
  cublasHandle_t handle = at::cuda::getCurrentCUDABlasHandle();
  const float one = 1.0f, zero = 0.0f;
  // Column-major: C_i^T [rows, tokens] = A_i^T' ... i.e. op(A) = A^T of the column-major [cols, rows] view.
  const cublasStatus_t st = cublasGemmBatchedEx(
      handle, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(rows), static_cast<int>(tokens), static_cast<int>(cols), &one,
      a, type, static_cast<int>(cols), b, type, static_cast<int>(cols), &zero, c, type, static_cast<int>(rows),
      static_cast<int>(n), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  if (st != CUBLAS_STATUS_SUCCESS) {
    return MakeError(ErrorCode::kDevice, std::string("cublasGemmBatchedEx: ") + cublasGetStatusString(st));
  }
  return Status::Ok();
}

}  // namespace

Status GroupedSwiGlu(const BlockWeights::ExpertGroup& g, Activation act, bool fused_kernels, at::Tensor* out) {
  const bool quantized = g.format != quant::Format::kNone;
  auto product = [&](const void* const* a, const void* const* b, void* const* c, int64_t rows, int64_t cols,
                     int64_t group, int64_t split_rows) -> Status {
    if (quantized) {
      // Quantized rows: the products QuantLinear computes one expert at a time, batched.
      if (!fused_ops::QuantGemvBatched(a, b, c, g.n, g.tokens, rows, cols, g.format, group, g.gu,
                                       g.split ? split_rows : 0)) {
        return MakeError(ErrorCode::kUnsupported, std::string("grouped ") + quant::FormatName(g.format) +
                                                      " expert products: not eligible (" + std::to_string(g.tokens) +
                                                      " tokens, " + std::to_string(cols) + " columns)");
      }
      return Status::Ok();
    }
    BIGPLAN_ASSIGN_OR_RETURN(const cudaDataType_t type, CudaType(g.gu.scalar_type()));
    return BatchedLinear(a, b, c, g.n, g.tokens, rows, cols, type);
  };
  BIGPLAN_RETURN_IF_ERROR(product(g.gate_up, g.x_ptrs, g.gu_ptrs, 2 * g.inter, g.hidden, g.gate_up_group, g.inter));
  at::Tensor h = g.h;  // the buffer the second product's arrays point into
  if (!(fused_kernels && act == Activation::kSilu && fused_ops::SiluMulInto(g.gu, h))) {
    at::mul_out(h, Activate(act, g.gu.narrow(-1, 0, g.inter)), g.gu.narrow(-1, g.inter, g.inter));
  }
  BIGPLAN_RETURN_IF_ERROR(product(g.down, g.h_ptrs, g.y_ptrs, g.hidden, g.inter, g.down_group, g.hidden));
  // Each expert's output scaled by its routing weights (in their dtype, as transformers: bf16 for Qwen, float32 for
  // Mixtral; the executor writes them so), cast back, summed over the group's experts, added to *out.
  if (fused_kernels && fused_ops::ExpertSum(g.y, g.weights, *out)) return Status::Ok();
  at::Tensor weighted = g.y * g.weights;
  if (weighted.scalar_type() != g.y.scalar_type()) weighted = weighted.to(g.y.scalar_type());
  out->add_(weighted.sum(0));
  return Status::Ok();
}

namespace {

// GroupedResidentExperts for one chunk of tokens; w1 [E, hidden, 2 inter] and w2 [E, inter, hidden] are the experts'
// matrices viewed column-major (the row-major nn.Linear weights, transposed). Undefined where the routing kernel
// declines.
at::Tensor GroupedChunk(const at::Tensor& x, const at::Tensor& topi, const at::Tensor& topw, const at::Tensor& w1,
                        const at::Tensor& w2, int64_t inter) {
  // The pairs grouped by expert on the device: each expert's rows end at offs[e]; token[s]: the token of row s.
  at::Tensor offs, token, place;
  if (!fused_ops::MoeRoute(topi, w1.size(0), &offs, &token, &place)) return at::Tensor();
  at::Tensor gu = at::_grouped_mm(x.index_select(0, token), w1, offs);  // [pairs, 2 inter]
  at::Tensor h = at::empty({gu.size(0), inter}, x.options());
  if (!fused_ops::SiluMulInto(gu, h)) at::mul_out(h, at::silu(gu.narrow(-1, 0, inter)), gu.narrow(-1, inter, inter));
  gu = at::Tensor();
  const at::Tensor y = at::_grouped_mm(h, w2, offs);  // [pairs, hidden]
  // Each token's weighted outputs summed in expert order, rounded to x's dtype after each addition.
  return fused_ops::MoeCombine(y, topi, topw, place);
}

}  // namespace

bool GroupedProductsRun(const at::Tensor& x) {
  return x.is_cuda() && at::cuda::getDeviceProperties(x.get_device())->major >= 9;
}

at::Tensor GroupedResidentExperts(const at::Tensor& x, const at::Tensor& topi, const at::Tensor& topw,
                                  const BlockWeights::ResidentExpertTable& t) {
  const int64_t experts = static_cast<int64_t>(t.gate_up.size()), hidden = t.hidden, inter = t.inter;
  if (x.scalar_type() != at::kBFloat16 || !x.is_cuda() || x.dim() != 2 || x.size(1) != hidden || experts == 0 ||
      experts > fused_ops::kMoeRouteMaxExperts ||
      t.down.size() != t.gate_up.size() || topi.dim() != 2 || topi.size(0) != x.size(0) || topw.sizes() != topi.sizes()) {
    return at::Tensor();
  }
  const int64_t e = 2;  // bytes of a bfloat16
  if (t.gate_up_stride <= 0 || t.down_stride <= 0 || t.gate_up_stride % 16 != 0 || t.down_stride % 16 != 0 ||
      t.gate_up[0] % 16 != 0 || t.down[0] % 16 != 0 || (hidden * e) % 16 != 0 || (inter * e) % 16 != 0 ||
      t.gate_up_stride < 2 * inter * hidden * e || t.down_stride < hidden * inter * e) {
    return at::Tensor();
  }
  if (!GroupedProductsRun(x)) return at::Tensor();
  const at::TensorOptions opts = x.options();
  // Element (e, h, j) of w1 is row j, column h of expert e's [gate; up]; of w2, row h, column i of its down matrix.
  const at::Tensor w1 = at::from_blob(reinterpret_cast<void*>(t.gate_up[0]), {experts, hidden, 2 * inter},
                                      {t.gate_up_stride / e, 1, hidden}, opts);
  const at::Tensor w2 = at::from_blob(reinterpret_cast<void*>(t.down[0]), {experts, inter, hidden},
                                      {t.down_stride / e, 1, inter}, opts);
  const int64_t tokens = x.size(0);
  if (tokens <= arch::kMoeGroupedTokens) return GroupedChunk(x, topi, topw, w1, w2, inter);
  at::Tensor out = at::empty_like(x);
  for (int64_t t0 = 0; t0 < tokens; t0 += arch::kMoeGroupedTokens) {
    const int64_t n = std::min(arch::kMoeGroupedTokens, tokens - t0);
    const at::Tensor part = GroupedChunk(x.narrow(0, t0, n), topi.narrow(0, t0, n), topw.narrow(0, t0, n), w1, w2,
                                         inter);
    if (!part.defined()) return at::Tensor();
    out.narrow(0, t0, n).copy_(part);
  }
  return out;
}

}  // namespace bigplan::kernels_internal
