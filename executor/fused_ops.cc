#include "executor/fused_ops.h"

#include <ATen/cuda/CUDAContext.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <string>
#include <vector>

#include "executor/fused_cuda.h"

namespace bigplan::fused_ops {
namespace {

fused::DType DTypeOf(const at::Tensor& t) {
  return t.scalar_type() == at::kBFloat16 ? fused::DType::kBF16 : fused::DType::kF16;
}

bool Aligned16(const at::Tensor& t) { return (reinterpret_cast<uintptr_t>(t.data_ptr()) & 15u) == 0; }

void Check(cudaError_t e, const char* what) {
  TORCH_CHECK(e == cudaSuccess, "fused kernel ", what, ": ", cudaGetErrorString(e));
}

cudaStream_t Stream() { return at::cuda::getCurrentCUDAStream().stream(); }

// Rows of x as a 2-D view [rows, last] with a unit last stride, or undefined when x is not laid out that way.
at::Tensor Rows2d(const at::Tensor& x) {
  if (x.dim() < 1 || x.numel() == 0 || x.stride(-1) != 1) return at::Tensor();
  const int64_t last = x.size(-1);
  int64_t rows = 1, row_stride = -1, expect = 0;
  // The leading dimensions (of more than one element) must collapse into one row stride.
  for (int64_t d = x.dim() - 2; d >= 0; --d) {
    rows *= x.size(d);
    if (x.size(d) == 1) continue;
    if (row_stride < 0) {
      row_stride = x.stride(d);
      expect = row_stride * x.size(d);
    } else {
      if (x.stride(d) != expect) return at::Tensor();
      expect *= x.size(d);
    }
  }
  if (row_stride < 0) row_stride = last;
  return x.as_strided({rows, last}, {row_stride, 1});
}

fused::Positions PositionsOf(const StepPositions& at) {
  fused::Positions p;
  if (at.pos.defined()) p.pos_dev = at.pos.data_ptr<int64_t>();
  p.pos_per_row = at.per_row;
  p.pos_host = at.pos_host;
  if (at.rows.defined()) p.rows_dev = at.rows.data_ptr<int64_t>();
  return p;
}

bool PositionsOk(const StepPositions& at, int64_t batch, const at::Device& device) {
  auto ok = [&](const at::Tensor& t, int64_t n) {
    return !t.defined() || (t.device() == device && t.scalar_type() == at::kLong && t.is_contiguous() && t.numel() >= n);
  };
  return ok(at.pos, at.per_row ? batch : 1) && ok(at.rows, batch) && (at.pos.defined() || !at.per_row);
}


}  // namespace

bool Eligible(const at::Tensor& x) {
  return x.defined() && x.is_cuda() && (x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf);
}

// fused::QuantGemv of `a` (its layout fields set) for x's rows: undefined where x has more than kGemvMaxRows rows or
// the kernel declines the arguments.
at::Tensor RunQuantGemv(const at::Tensor& x, fused::QuantGemvArgs a, const at::Tensor& wq, const char* what) {
  const at::Tensor x2 = Rows2d(x);
  if (!x2.defined() || x2.size(0) > fused::kGemvMaxRows) return at::Tensor();
  const int64_t m = x2.size(0), n = wq.size(0);
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = n;
  at::Tensor y = at::empty({m, n}, x.options());
  a.dtype = DTypeOf(x);
  a.x = x2.data_ptr();
  a.x_stride = x2.stride(0);
  a.w = wq.data_ptr();
  a.y = y.data_ptr();
  a.m = static_cast<int>(m);
  a.n = n;
  if (fused::QuantGemv(a, Stream()) == cudaErrorInvalidValue) {
    cudaGetLastError();  // (not launched: its preconditions, e.g. alignment)
    return at::Tensor();
  }
  Check(cudaGetLastError(), what);
  return y.view(out_shape);
}

at::Tensor QuantGemv(const at::Tensor& x, const at::Tensor& wq, bool fp8, int64_t k) {
  if (!Eligible(x) || !wq.defined() || wq.dim() != 2 || wq.scalar_type() != at::kByte || wq.device() != x.device() ||
      wq.size(1) != k + 4 || wq.stride(1) != 1 || wq.stride(0) != k + 4 || x.size(-1) != k) {
    return at::Tensor();
  }
  return RunQuantGemv(x, fused::QuantGemvArgs{.fp8 = fp8, .row_bytes = k + 4, .k = k}, wq, "quant_gemv");
}

at::Tensor QuantGemvInt4(const at::Tensor& x, const at::Tensor& wq, int64_t k, int64_t group, bool split) {
  if (!Eligible(x) || !wq.defined() || wq.dim() != 2 || wq.scalar_type() != at::kByte || wq.device() != x.device() ||
      !wq.is_contiguous() || x.size(-1) != k || k % 8 != 0 || group < 8 || group % 8 != 0 || k % group != 0 ||
      wq.size(1) != k / 2 + 4 * (k / group)) {
    return at::Tensor();
  }
  return RunQuantGemv(x,
                      fused::QuantGemvArgs{.int4 = true,
                                           .group = group,
                                           .split_rows = split ? wq.size(0) : 0,
                                           .row_bytes = k / 2 + 4 * (k / group),
                                           .k = k},
                      wq, "quant_gemv (int4)");
}

bool DequantizeInto(const std::vector<DequantInput>& inputs, quant::Format format) {
  if (inputs.empty() || inputs.size() > static_cast<size_t>(fused::kDequantMaxJobs) || format == quant::Format::kNone) {
    return false;
  }
  const at::Tensor& first = inputs[0].out;
  if (!Eligible(first)) return false;
  // The outputs' and scales' tensors checked here; each weight as DequantBatch::Add checks it.
  DequantBatch batch(format, first.scalar_type());
  for (const DequantInput& in : inputs) {
    if (!in.out.defined() || in.out.dim() != 2 || in.out.scalar_type() != first.scalar_type() ||
        in.out.device() != first.device() || in.out.stride(1) != 1 || !in.wq.defined() ||
        in.wq.device() != first.device() || in.out.size(0) != in.wq.size(0) || in.out.size(1) != in.cols) {
      return false;
    }
    if (in.scales.defined() &&
        (in.scales.scalar_type() != at::kFloat || in.scales.device() != first.device() || in.scales.dim() != 1 ||
         in.scales.size(0) != in.wq.size(0) || !in.scales.is_contiguous())) {
      return false;
    }
    if (!batch.Add(in.wq, in.cols, in.group, in.split, in.out.data_ptr(), in.out.stride(0),
                   in.scales.defined() ? in.scales.data_ptr<float>() : nullptr)) {
      return false;
    }
  }
  return batch.Launch();
}

DequantBatch::DequantBatch(quant::Format format, at::ScalarType dtype) : format_(format) {
  args_.int4 = format == quant::Format::kInt4;
  args_.fp8 = format == quant::Format::kFp8E4M3;
  args_.dtype = dtype == at::kHalf ? fused::DType::kF16 : fused::DType::kBF16;
  if (dtype != at::kHalf && dtype != at::kBFloat16) format_ = quant::Format::kNone;  // (Add refuses everything)
}

bool DequantBatch::Add(const at::Tensor& wq, int64_t cols, int64_t group, bool split, void* out, int64_t out_stride,
                       float* scales) {
  if (format_ == quant::Format::kNone || full() || !wq.defined() || wq.dim() != 2 || wq.scalar_type() != at::kByte ||
      !wq.is_cuda() || out == nullptr || (reinterpret_cast<uintptr_t>(out) & 15u) != 0 || cols <= 0 || group <= 0 ||
      cols % group != 0 || out_stride < cols || out_stride % 8 != 0) {
    return false;
  }
  const Result<uint64_t> row_bytes = quant::RowBytes(format_, cols, group);
  if (!row_bytes.ok() || wq.size(1) != static_cast<int64_t>(*row_bytes)) return false;
  if (split ? !args_.int4 || !wq.is_contiguous() : wq.stride(1) != 1) return false;
  if (scales != nullptr && (args_.int4 || group != cols)) return false;
  if (args_.jobs > 0 && wq.get_device() != device_) return false;  // (one launch: one device)
  device_ = wq.get_device();
  args_.job[args_.jobs++] = fused::DequantJob{.w = wq.data_ptr(),
                                              .row_stride = split ? 0 : wq.stride(0),
                                              .split = split,
                                              .n = wq.size(0),
                                              .k = cols,
                                              .group = group,
                                              .out = out,
                                              .out_stride = out_stride,
                                              .scales = scales};
  return true;
}

bool DequantBatch::Launch() {
  if (args_.jobs == 0) return true;
  const cudaError_t e = fused::Dequantize(args_, Stream());
  args_.jobs = 0;
  if (e == cudaErrorInvalidValue) {
    cudaGetLastError();  // (not launched: its preconditions)
    return false;
  }
  Check(e, "dequantize");
  return true;
}

bool ScaleGroupedRows(const at::Tensor& y, const at::Tensor& ends, const at::Tensor& scales) {
  if (!Eligible(y) || y.dim() != 2 || y.stride(1) != 1 || !ends.defined() || ends.scalar_type() != at::kInt ||
      ends.dim() != 1 || !ends.is_contiguous() || ends.device() != y.device() || !scales.defined() ||
      scales.scalar_type() != at::kFloat || scales.dim() != 2 || scales.stride(1) != 1 ||
      scales.device() != y.device() || scales.size(0) != ends.size(0) || scales.size(1) != y.size(1)) {
    return false;
  }
  if (fused::ScaleGroupedRows(DTypeOf(y), y.data_ptr(), y.stride(0), y.size(0), y.size(1), ends.data_ptr<int32_t>(),
                              static_cast<int>(ends.size(0)), scales.data_ptr<float>(), scales.stride(0),
                              Stream()) == cudaErrorInvalidValue) {
    cudaGetLastError();
    return false;
  }
  Check(cudaGetLastError(), "scale_grouped_rows");
  return true;
}

at::Tensor Dequantize(const at::Tensor& wq, quant::Format format, int64_t cols, int64_t group, bool split,
                      at::ScalarType dtype) {
  if (!wq.defined() || !wq.is_cuda() || wq.dim() != 2 || (dtype != at::kBFloat16 && dtype != at::kHalf)) {
    return at::Tensor();
  }
  at::Tensor out = at::empty({wq.size(0), cols}, wq.options().dtype(dtype));
  if (!DequantizeInto({DequantInput{.wq = wq, .cols = cols, .group = group, .split = split, .out = out}}, format)) {
    return at::Tensor();
  }
  return out;
}

bool QuantGemvBatched(const void* const* ws, const void* const* xs, void* const* ys, int64_t batch, int64_t m,
                      int64_t n, int64_t k, quant::Format format, int64_t group, const at::Tensor& like,
                      int64_t split_rows) {
  if (!Eligible(like) || batch < 1 || m < 1 || m > fused::kGemvMaxRows || format == quant::Format::kNone) return false;
  const bool int4 = format == quant::Format::kInt4;
  if (int4 ? group <= 0 || k % group != 0 : group != k) return false;
  const fused::QuantGemvArgs a{.dtype = DTypeOf(like),
                               .fp8 = format == quant::Format::kFp8E4M3,
                               .int4 = int4,
                               .group = int4 ? group : 0,
                               .split_rows = int4 ? split_rows : 0,
                               .x_stride = k,
                               .row_bytes = int4 ? k / 2 + 4 * (k / group) : k + 4,
                               .m = static_cast<int>(m),
                               .n = n,
                               .k = k,
                               .batch = batch,
                               .ws = ws,
                               .xs = xs,
                               .ys = ys};
  if (fused::QuantGemv(a, Stream()) == cudaErrorInvalidValue) {
    cudaGetLastError();
    return false;
  }
  Check(cudaGetLastError(), "quant_gemv (batched)");
  return true;
}

at::Tensor Linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, const at::Tensor& residual,
                  bool overwrite_residual) {
  if (!Eligible(x) || !w.defined() || w.dim() != 2 || w.scalar_type() != x.scalar_type() || w.device() != x.device() ||
      !w.is_contiguous() || x.size(-1) != w.size(1)) {
    return at::Tensor();
  }
  const int64_t n = w.size(0), k = w.size(1);
  if (b.defined() && (b.scalar_type() != x.scalar_type() || b.numel() != n || !b.is_contiguous())) return at::Tensor();
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = n;
  const at::Tensor x2 = Rows2d(x);
  if (!x2.defined()) return at::Tensor();
  const int64_t m = x2.size(0);
  at::Tensor r2;
  if (residual.defined()) {
    if (residual.scalar_type() != x.scalar_type() || residual.device() != x.device() || residual.size(-1) != n ||
        residual.numel() != m * n) {
      return at::Tensor();
    }
    r2 = Rows2d(residual);
    if (!r2.defined()) return at::Tensor();
  }
  if (m <= fused::kGemvMaxRows && k % 8 == 0 && x2.stride(0) % 8 == 0 && Aligned16(x2) && Aligned16(w)) {
    at::Tensor y = at::empty({m, n}, x.options());
    const fused::GemvArgs a{.dtype = DTypeOf(x),
                            .x = x2.data_ptr(),
                            .x_stride = x2.stride(0),
                            .w = w.data_ptr(),
                            .bias = b.defined() ? b.data_ptr() : nullptr,
                            .residual = r2.defined() ? r2.data_ptr() : nullptr,
                            .residual_stride = r2.defined() ? r2.stride(0) : 0,
                            .y = y.data_ptr(),
                            .y_stride = n,
                            .m = static_cast<int>(m),
                            .n = n,
                            .k = k};
    Check(fused::Gemv(a, Stream()), "gemv");
    return y.view(out_shape);
  }
  // Larger batches: cuBLAS, with the residual as addmm's input.
  at::Tensor y;
  if (r2.defined() && !b.defined() && overwrite_residual && r2.is_contiguous() &&
      !r2.is_alias_of(x2) && !r2.is_alias_of(w)) {
    // The same product, accumulated in the residual's own memory: no copy of it into a new output first.
    y = r2.addmm_(x2, w.t());
  } else if (r2.defined() && !b.defined()) {
    y = at::addmm(r2, x2, w.t());
  } else {
    y = b.defined() ? at::addmm(b, x2, w.t()) : at::mm(x2, w.t());
    if (r2.defined()) y.add_(r2);
  }
  return y.view(out_shape);
}

bool TopRows(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& w, int top, int64_t* out) {
  if (!Eligible(x) || x.numel() != x.size(-1) || !x.is_contiguous() || !w.defined() || w.dim() != 2 ||
      w.scalar_type() != x.scalar_type() || w.device() != x.device() || !w.is_contiguous() || w.size(1) != x.size(-1) ||
      !scale.defined() || scale.scalar_type() != at::kFloat || scale.device() != x.device() || !scale.is_contiguous() ||
      scale.numel() != x.size(-1) || !Aligned16(x) || !Aligned16(w) || !Aligned16(scale)) {
    return false;
  }
  return fused::TopRows(DTypeOf(x), x.data_ptr(), scale.data_ptr<float>(), w.data_ptr(), w.size(0), w.size(1), top, out,
                        Stream()) == cudaSuccess;
}

namespace {
bool ElemOf(at::ScalarType t, fused::Elem* e) {
  if (t == at::kBFloat16) *e = fused::Elem::kBF16;
  else if (t == at::kHalf) *e = fused::Elem::kF16;
  else if (t == at::kFloat) *e = fused::Elem::kF32;
  else return false;
  return true;
}
}  // namespace

std::pair<at::Tensor, at::Tensor> RouterTopK(const at::Tensor& logits, int top, bool renorm, at::ScalarType weight_dtype) {
  return RouterTopK(logits, top, renorm, weight_dtype, nullptr, nullptr, at::Tensor(), nullptr);
}

std::pair<at::Tensor, at::Tensor> RouterTopK(const at::Tensor& logits, int top, bool renorm,
                                             at::ScalarType weight_dtype, int64_t* host_ids, float* host_weights,
                                             const at::Tensor& x, float* host_x) {
  fused::Elem le, we;
  if (!logits.defined() || !logits.is_cuda() || logits.dim() != 2 || logits.size(0) != 1 || !logits.is_contiguous() ||
      logits.size(1) < 1 || logits.size(1) > fused::kTopRowsMax || top < 1 || top > 64 || top > logits.size(1) ||
      !ElemOf(logits.scalar_type(), &le) || !ElemOf(weight_dtype, &we)) {
    return {};
  }
  fused::RouterExport ex;
  ex.host_ids = host_ids;
  ex.host_weights = host_weights;
  if (host_x != nullptr) {
    if (!x.defined() || !x.is_cuda() || x.device() != logits.device() || !x.is_contiguous() || x.numel() < 1 ||
        (x.dim() == 2 && x.size(0) != 1) || !ElemOf(x.scalar_type(), &ex.x_elem)) {
      return {};
    }
    ex.x = x.data_ptr();
    ex.x_n = x.numel();
    ex.host_x = host_x;
  }
  at::Tensor ids = at::empty({1, top}, logits.options().dtype(at::kLong));
  at::Tensor weights = at::empty({1, top}, logits.options().dtype(weight_dtype));
  Check(fused::RouterTopK(le, logits.data_ptr(), logits.size(1), top, renorm, ids.data_ptr<int64_t>(), we,
                          weights.data_ptr(), ex, Stream()),
        "RouterTopK");
  return {weights, ids};
}

at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& w, double eps) {
  if (!Eligible(x) || !w.defined() || w.scalar_type() != x.scalar_type() || w.device() != x.device() ||
      !w.is_contiguous() || w.numel() != x.size(-1)) {
    return at::Tensor();
  }
  const at::Tensor x2 = Rows2d(x);
  if (!x2.defined()) return at::Tensor();
  at::Tensor out = at::empty(x.sizes(), x.options());
  Check(fused::RmsNorm(DTypeOf(x), x2.data_ptr(), x2.stride(0), w.data_ptr(), out.data_ptr(), x2.size(1), x2.size(0),
                       x2.size(1), static_cast<float>(eps), Stream()),
        "rms_norm");
  return out;
}

at::Tensor SiluMul(const at::Tensor& gu) {
  if (!Eligible(gu) || gu.size(-1) % 2 != 0) return at::Tensor();
  const at::Tensor g2 = Rows2d(gu);
  if (!g2.defined() || g2.size(0) > 65535) return at::Tensor();
  const int64_t inter = gu.size(-1) / 2;
  std::vector<int64_t> shape(gu.sizes().begin(), gu.sizes().end());
  shape.back() = inter;
  at::Tensor out = at::empty(shape, gu.options());
  Check(fused::SiluMul(DTypeOf(gu), g2.data_ptr(), g2.stride(0), out.data_ptr(), g2.size(0), inter, Stream()),
        "silu_mul");
  return out;
}

bool SiluMulInto(const at::Tensor& gu, const at::Tensor& out) {
  if (!Eligible(gu) || gu.size(-1) % 2 != 0 || !out.defined() || out.scalar_type() != gu.scalar_type() ||
      out.device() != gu.device() || !out.is_contiguous() || out.numel() * 2 != gu.numel()) {
    return false;
  }
  const at::Tensor g2 = Rows2d(gu);
  if (!g2.defined() || g2.size(0) > 65535) return false;
  Check(fused::SiluMul(DTypeOf(gu), g2.data_ptr(), g2.stride(0), out.data_ptr(), g2.size(0), gu.size(-1) / 2, Stream()),
        "silu_mul");
  return true;
}

static_assert(kMoeMaxTokens == fused::kMoeMaxTokens && kMoeMaxExperts == fused::kMoeMaxExperts);

at::Tensor MoeExperts(const at::Tensor& x, const at::Tensor& ids, const at::Tensor& w,
                      const std::vector<uint64_t>& gate_up, const std::vector<uint64_t>& down, int64_t inter,
                      const at::Tensor& residual) {
  fused::MoeArgs a;
  const int64_t n = static_cast<int64_t>(gate_up.size());
  if (!x.defined() || !x.is_cuda() || x.dim() != 2 || !x.is_contiguous() || !ElemOf(x.scalar_type(), &a.elem) ||
      !ids.defined() || ids.device() != x.device() || ids.scalar_type() != at::kLong || ids.dim() != 2 ||
      ids.size(0) != x.size(0) || !ids.is_contiguous() || !w.defined() || w.device() != x.device() ||
      w.sizes() != ids.sizes() || !w.is_contiguous() || !ElemOf(w.scalar_type(), &a.w_elem) || n < 1 ||
      n > fused::kMoeMaxExperts || static_cast<int64_t>(down.size()) != n || x.size(0) < 1 ||
      x.size(0) > fused::kMoeMaxTokens || ids.size(1) < 1 || ids.size(1) > 32 || x.size(1) % 8 != 0 || inter < 8 ||
      inter % 8 != 0 || !Aligned16(x)) {
    return at::Tensor();
  }
  for (int64_t e = 0; e < n; ++e) {
    if (gate_up[e] == 0 || down[e] == 0 || ((gate_up[e] | down[e]) & 15u) != 0) return at::Tensor();
  }
  if (residual.defined() && (residual.sizes() != x.sizes() || residual.scalar_type() != x.scalar_type() ||
                             residual.device() != x.device() || !residual.is_contiguous())) {
    return at::Tensor();
  }
  a.residual = residual.defined() ? residual.data_ptr() : nullptr;
  a.x = x.data_ptr();
  a.ids = ids.data_ptr<int64_t>();
  a.w = w.data_ptr();
  a.tokens = x.size(0);
  a.k = ids.size(1);
  a.hidden = x.size(1);
  a.inter = inter;
  a.num_experts = n;
  std::copy(gate_up.begin(), gate_up.end(), a.gate_up);
  std::copy(down.begin(), down.end(), a.down);
  const at::Tensor h = at::empty({a.tokens * a.k, inter}, x.options());
  at::Tensor out = at::empty_like(x);
  a.h = h.data_ptr();
  a.out = out.data_ptr();
  Check(fused::MoeExperts(a, Stream()), "moe_experts");
  return out;
}

bool MoeRoute(const at::Tensor& ids, int64_t num_experts, at::Tensor* offs, at::Tensor* token, at::Tensor* place) {
  if (!ids.defined() || !ids.is_cuda() || ids.scalar_type() != at::kLong || ids.dim() != 2 || !ids.is_contiguous() ||
      ids.numel() < 1 || ids.numel() > (int64_t{1} << 30) || num_experts < 1 ||
      num_experts > fused::kMoeRouteMaxExperts) {
    return false;
  }
  static_assert(kMoeRouteMaxExperts == fused::kMoeRouteMaxExperts);
  *offs = at::empty({num_experts}, ids.options().dtype(at::kInt));
  *token = at::empty({ids.numel()}, ids.options());
  *place = at::empty(ids.sizes(), ids.options());
  Check(fused::MoeRoute(ids.data_ptr<int64_t>(), ids.numel(), ids.size(1), num_experts, offs->data_ptr<int32_t>(),
                        token->data_ptr<int64_t>(), place->data_ptr<int64_t>(), Stream()),
        "moe_route");
  return true;
}

at::Tensor MoeCombine(const at::Tensor& y, const at::Tensor& ids, const at::Tensor& w, const at::Tensor& place) {
  fused::Elem ye, we;
  if (!y.defined() || !y.is_cuda() || y.dim() != 2 || y.stride(1) != 1 || y.stride(0) < y.size(1) ||
      !ElemOf(y.scalar_type(), &ye) || !ids.defined() || ids.device() != y.device() || ids.scalar_type() != at::kLong ||
      ids.dim() != 2 || !ids.is_contiguous() || ids.size(0) < 1 || ids.size(0) > 65535 || ids.size(1) < 1 ||
      ids.size(1) > 32 || !w.defined() || w.device() != y.device() || w.sizes() != ids.sizes() ||
      !w.is_contiguous() || !ElemOf(w.scalar_type(), &we) || !place.defined() || place.device() != y.device() ||
      place.scalar_type() != at::kLong || place.sizes() != ids.sizes() || !place.is_contiguous()) {
    return at::Tensor();
  }
  at::Tensor out = at::empty({ids.size(0), y.size(1)}, y.options());
  Check(fused::MoeCombine(ye, y.data_ptr(), y.stride(0), we, w.data_ptr(), ids.data_ptr<int64_t>(),
                          place.data_ptr<int64_t>(), ids.size(0), ids.size(1), y.size(1), out.data_ptr(), Stream()),
        "moe_combine");
  return out;
}

bool ExpertSum(const at::Tensor& y, const at::Tensor& w, const at::Tensor& out) {
  fused::Elem ye, we;
  if (!y.defined() || !y.is_cuda() || y.dim() != 3 || !y.is_contiguous() || !ElemOf(y.scalar_type(), &ye) ||
      !w.defined() || !w.is_contiguous() || w.numel() != y.size(0) * y.size(1) || !ElemOf(w.scalar_type(), &we) ||
      !out.defined() || out.device() != y.device() || out.scalar_type() != y.scalar_type() || !out.is_contiguous() ||
      out.numel() != y.size(1) * y.size(2) || y.size(0) < 1) {
    return false;
  }
  Check(fused::ExpertSum(ye, y.data_ptr(), we, w.data_ptr(), y.size(0), y.size(1), y.size(2), out.data_ptr(), Stream()),
        "expert_sum");
  return true;
}

namespace {

// The arguments RopeKvWrite's kernels take besides q, k, v (tables, positions, caches, norms) for `batch` rows of
// `seq` tokens of `dtype` on `device`, filled into *a with q_out; false when they are not ones they take.
bool RopeArgs(at::ScalarType dtype, const at::Device& device, int64_t batch, int64_t seq, int64_t heads,
              int64_t kv_heads, int64_t head_dim, const at::Tensor& cos, const at::Tensor& sin, const StepPositions& at,
              const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& q_norm, const at::Tensor& k_norm,
              double eps, const at::Tensor& q_out, fused::RopeKvArgs* a) {
  auto same = [&](const at::Tensor& t) { return t.defined() && t.scalar_type() == dtype && t.device() == device; };
  if (head_dim % 2 != 0 || head_dim > 256 || !same(cos) || !same(sin) || !same(k_cache) || !same(v_cache) ||
      cos.dim() != 2 || cos.size(1) != head_dim || !cos.is_contiguous() || !sin.is_contiguous() ||
      sin.sizes() != cos.sizes() || k_cache.dim() != 4 || !k_cache.is_contiguous() || !v_cache.is_contiguous() ||
      v_cache.sizes() != k_cache.sizes() || k_cache.size(1) != kv_heads || k_cache.size(3) != head_dim ||
      k_cache.size(0) < batch || !PositionsOk(at, batch, device)) {
    return false;
  }
  if ((q_norm.defined() && (!same(q_norm) || q_norm.numel() != head_dim || !q_norm.is_contiguous())) ||
      (k_norm.defined() && (!same(k_norm) || k_norm.numel() != head_dim || !k_norm.is_contiguous())) ||
      q_norm.defined() != k_norm.defined()) {
    return false;
  }
  a->dtype = dtype == at::kBFloat16 ? fused::DType::kBF16 : fused::DType::kF16;
  a->batch = batch;
  a->seq = seq;
  a->heads = heads;
  a->kv_heads = kv_heads;
  a->head_dim = head_dim;
  a->cos = cos.data_ptr();
  a->sin = sin.data_ptr();
  a->table_rows = cos.size(0);
  a->at = PositionsOf(at);
  a->k_cache = k_cache.data_ptr();
  a->v_cache = v_cache.data_ptr();
  a->cache_rows = k_cache.size(0);
  a->max_seq = k_cache.size(2);
  a->q_norm = q_norm.defined() ? q_norm.data_ptr() : nullptr;
  a->k_norm = k_norm.defined() ? k_norm.data_ptr() : nullptr;
  a->eps = static_cast<float>(eps);
  a->q_out = q_out.data_ptr();
  return true;
}

// fused::GemvArgs for x (rows [.., k]) times w [n, k] (+ b), RMSNorm'ed first when norm_w is defined, with the
// checks the fused product's kernel needs; false when they fail. *x2 gets x's 2-D rows view.
bool ProductArgs(const at::Tensor& x, const at::Tensor& norm_w, double eps, const at::Tensor& w, const at::Tensor& b,
                 fused::GemvArgs* a, at::Tensor* x2) {
  if (!Eligible(x) || !w.defined() || w.dim() != 2 || w.scalar_type() != x.scalar_type() || w.device() != x.device() ||
      !w.is_contiguous() || x.size(-1) != w.size(1) || !Aligned16(w) || w.size(1) % 8 != 0) {
    return false;
  }
  const int64_t n = w.size(0), k = w.size(1);
  if (b.defined() && (b.scalar_type() != x.scalar_type() || b.device() != x.device() || b.numel() != n ||
                      !b.is_contiguous())) {
    return false;
  }
  *x2 = Rows2d(x);
  if (!x2->defined() || x2->size(0) > fused::kGemvMaxRows || x2->stride(0) % 8 != 0 || !Aligned16(*x2)) return false;
  const int m = static_cast<int>(x2->size(0));
  if (norm_w.defined()) {
    if (norm_w.scalar_type() != x.scalar_type() || norm_w.device() != x.device() || !norm_w.is_contiguous() ||
        norm_w.numel() != k || !Aligned16(norm_w) ||
        fused::GemvNormSmemBytes(m, k, x.element_size()) > static_cast<size_t>(fused::kGemvNormMaxSmem)) {
      return false;
    }
    a->norm_w = norm_w.data_ptr();
    a->eps = static_cast<float>(eps);
  }
  a->dtype = DTypeOf(x);
  a->x = x2->data_ptr();
  a->x_stride = x2->stride(0);
  a->w = w.data_ptr();
  a->bias = b.defined() ? b.data_ptr() : nullptr;
  a->m = m;
  a->n = n;
  a->k = k;
  return true;
}

}  // namespace

at::Tensor NormLinear(const at::Tensor& x, const at::Tensor& norm_w, double eps, const at::Tensor& w,
                      const at::Tensor& b, at::Tensor* normed) {
  fused::GemvArgs a;
  at::Tensor x2;
  if (!norm_w.defined() || !ProductArgs(x, norm_w, eps, w, b, &a, &x2)) return at::Tensor();
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = a.n;
  at::Tensor y = at::empty({a.m, a.n}, x.options());
  a.y = y.data_ptr();
  a.y_stride = a.n;
  if (normed != nullptr) {
    *normed = at::empty(x.sizes(), x.options());
    a.norm_out = normed->data_ptr();
  }
  Check(fused::Gemv(a, Stream()), "norm_gemv");
  return y.view(shape);
}

at::Tensor GateUpSiluMul(const at::Tensor& x, const at::Tensor& norm_w, double eps, const at::Tensor& w,
                         const at::Tensor& b) {
  fused::GemvArgs a;
  at::Tensor x2;
  if (!ProductArgs(x, norm_w, eps, w, b, &a, &x2) || a.n % 2 != 0) return at::Tensor();
  const int64_t inter = a.n / 2;
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = inter;
  at::Tensor y = at::empty({a.m, inter}, x.options());
  a.y = y.data_ptr();
  a.y_stride = inter;
  a.out = fused::GemvOut::kSiluPairs;
  Check(fused::Gemv(a, Stream()), "gate_up_silu_gemv");
  return y.view(shape);
}

at::Tensor QkvRopeKvWrite(const at::Tensor& x, const at::Tensor& norm_w, double eps, const at::Tensor& w,
                          const at::Tensor& b, int64_t heads, int64_t kv_heads, int64_t head_dim, const at::Tensor& cos,
                          const at::Tensor& sin, const StepPositions& at, const at::Tensor& k_cache,
                          const at::Tensor& v_cache) {
  fused::GemvArgs a;
  at::Tensor x2;
  if (x.dim() != 3 || !ProductArgs(x, norm_w, eps, w, b, &a, &x2) || a.n != (heads + 2 * kv_heads) * head_dim) {
    return at::Tensor();
  }
  const int64_t batch = x.size(0), seq = x.size(1);
  at::Tensor q_out = at::empty({batch, seq, heads, head_dim}, x.options());
  if (!RopeArgs(x.scalar_type(), x.device(), batch, seq, heads, kv_heads, head_dim, cos, sin, at, k_cache, v_cache,
                at::Tensor(), at::Tensor(), eps, q_out, &a.rope)) {
    return at::Tensor();
  }
  a.out = fused::GemvOut::kRope;
  Check(fused::Gemv(a, Stream()), "qkv_rope_gemv");
  return q_out.transpose(1, 2);
}

at::Tensor RopeKvWrite(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t heads, int64_t kv_heads,
                       int64_t head_dim, const at::Tensor& cos, const at::Tensor& sin, const StepPositions& at,
                       const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& q_norm,
                       const at::Tensor& k_norm, double eps) {
  if (!Eligible(q) || q.dim() != 3 || k.dim() != 3 || v.dim() != 3) return at::Tensor();
  const int64_t batch = q.size(0), seq = q.size(1);
  auto same = [&](const at::Tensor& t) {
    return t.defined() && t.scalar_type() == q.scalar_type() && t.device() == q.device();
  };
  if (!same(k) || !same(v) || q.size(2) != heads * head_dim || k.size(2) != kv_heads * head_dim ||
      v.size(2) != kv_heads * head_dim || k.size(0) != batch || v.size(0) != batch || k.size(1) != seq ||
      v.size(1) != seq) {
    return at::Tensor();
  }
  const at::Tensor q2 = Rows2d(q), k2 = Rows2d(k), v2 = Rows2d(v);
  if (!q2.defined() || !k2.defined() || !v2.defined()) return at::Tensor();
  // Written [batch, seq, heads, head_dim] (token-major), returned as the [batch, heads, seq, head_dim] view: SDPA's
  // flash kernel then writes its output token-major too, and [batch, seq, heads x head_dim] is a view of it.
  at::Tensor q_out = at::empty({batch, seq, heads, head_dim}, q.options());
  fused::RopeKvArgs a;
  if (!RopeArgs(q.scalar_type(), q.device(), batch, seq, heads, kv_heads, head_dim, cos, sin, at, k_cache, v_cache,
                q_norm, k_norm, eps, q_out, &a)) {
    return at::Tensor();
  }
  a.q = q2.data_ptr();
  a.k = k2.data_ptr();
  a.v = v2.data_ptr();
  a.q_stride = q2.stride(0);
  a.k_stride = k2.stride(0);
  a.v_stride = v2.stride(0);
  Check(fused::RopeKvWrite(a, Stream()), "rope_kv_write");
  return q_out.transpose(1, 2);
}

bool DecodeAttentionTakes(int64_t heads, int64_t kv_heads, int64_t head_dim) {
  return heads > 0 && kv_heads > 0 && head_dim % 32 == 0 && head_dim > 0 && head_dim <= 256 && heads % kv_heads == 0 &&
         heads / kv_heads <= 8;
}

at::Tensor DecodeAttention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                           const StepPositions& at, int64_t max_len, int64_t window, double scale) {
  if (!Eligible(q) || q.dim() != 4 || q.size(2) != 1 || !q.is_contiguous() || !k_cache.defined() ||
      k_cache.dim() != 4 || !k_cache.is_contiguous() || !v_cache.is_contiguous() ||
      v_cache.sizes() != k_cache.sizes() || k_cache.scalar_type() != q.scalar_type() ||
      v_cache.scalar_type() != q.scalar_type() || k_cache.device() != q.device() || v_cache.device() != q.device()) {
    return at::Tensor();
  }
  const int64_t batch = q.size(0), heads = q.size(1), head_dim = q.size(3), kv_heads = k_cache.size(1);
  if (k_cache.size(3) != head_dim || !DecodeAttentionTakes(heads, kv_heads, head_dim) || k_cache.size(0) < batch ||
      !PositionsOk(at, batch, q.device())) {
    return at::Tensor();
  }
  fused::DecodeAttnArgs a;
  a.dtype = DTypeOf(q);
  a.q = q.data_ptr();
  a.k_cache = k_cache.data_ptr();
  a.v_cache = v_cache.data_ptr();
  a.cache_rows = k_cache.size(0);
  a.max_seq = k_cache.size(2);
  a.batch = batch;
  a.heads = heads;
  a.kv_heads = kv_heads;
  a.head_dim = head_dim;
  a.at = PositionsOf(at);
  a.window = window;
  a.scale = static_cast<float>(scale);
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  a.splits = fused::DecodeAttentionSplits(batch, kv_heads, std::min(max_len, a.max_seq), sms, a.min_chunk);
  at::Tensor workspace = at::empty({batch * heads * a.splits * (head_dim + 2)}, q.options().dtype(at::kFloat));
  at::Tensor out = at::empty({batch, heads, 1, head_dim}, q.options());
  a.workspace = workspace.data_ptr<float>();
  a.out = out.data_ptr();
  Check(fused::DecodeAttention(a, Stream()), "decode_attention");
  return out;
}

}  // namespace bigplan::fused_ops
