// Grouped expert products on a GPU: one cuBLAS batched GEMM over several experts' matrices (pointer arrays), so a
// decode step's chosen experts cost a handful of launches instead of a handful each.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <cublas_v2.h>

#include <string>

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
  BIGPLAN_ASSIGN_OR_RETURN(const cudaDataType_t type, CudaType(g.gu.scalar_type()));
  BIGPLAN_RETURN_IF_ERROR(BatchedLinear(g.gate_up, g.x_ptrs, g.gu_ptrs, g.n, g.tokens, 2 * g.inter, g.hidden, type));
  at::Tensor h = g.h;  // the buffer the second product's arrays point into
  if (!(fused_kernels && act == Activation::kSilu && fused_ops::SiluMulInto(g.gu, h))) {
    at::mul_out(h, Activate(act, g.gu.narrow(-1, 0, g.inter)), g.gu.narrow(-1, g.inter, g.inter));
  }
  BIGPLAN_RETURN_IF_ERROR(BatchedLinear(g.down, g.h_ptrs, g.y_ptrs, g.n, g.tokens, g.hidden, g.inter, type));
  // Each expert's output scaled by its routing weights (in their dtype, as transformers: bf16 for Qwen, float32 for
  // Mixtral; the executor writes them so), cast back, summed over the group's experts, added to *out.
  if (fused_kernels && fused_ops::ExpertSum(g.y, g.weights, *out)) return Status::Ok();
  at::Tensor weighted = g.y * g.weights;
  if (weighted.scalar_type() != g.y.scalar_type()) weighted = weighted.to(g.y.scalar_type());
  out->add_(weighted.sum(0));
  return Status::Ok();
}

}  // namespace bigplan::kernels_internal
