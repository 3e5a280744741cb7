// Products with row-quantized weights (formats/quant.h): dequantization with LibTorch ops on any device and dtype,
// and PyTorch's tinygemm int4 kernel on CUDA for bf16 activations.
#include <ATen/ATen.h>

#include <algorithm>
#include <string>

#include "executor/fused_ops.h"
#include "executor/kernels_internal.h"

namespace bigplan::kernels_internal {
namespace {

struct Parts {
  at::Tensor data;     // [n, data bytes] uint8 (a strided view of the rows; contiguous for a split layout)
  at::Tensor records;  // fp8/int8: [n, groups] float32; int4: [n, groups, 2] bf16 (scale, zero), maybe strided
};

// The element type of fp8/int8 values as LibTorch reads them.
at::ScalarType StoredType(quant::Format format) {
  return format == quant::Format::kInt8 ? at::kChar : at::kFloat8_e4m3fn;
}

Parts Split(const at::Tensor& wq, const WeightQuant& q) {
  TORCH_CHECK(wq.dim() == 2 && wq.scalar_type() == at::kByte, "a quantized weight must be uint8 rows, got ",
              wq.sizes(), " ", wq.scalar_type());
  TORCH_CHECK(q.group > 0 && q.cols > 0 && q.cols % q.group == 0, "quantized weight: bad group ", q.group,
              " for ", q.cols, " columns");
  const int64_t n = wq.size(0), groups = q.cols / q.group;
  const int64_t data = q.format == quant::Format::kInt4 ? q.cols / 2 : q.cols;
  const Result<uint64_t> row_bytes = quant::RowBytes(q.format, q.cols, q.group);
  TORCH_CHECK(row_bytes.ok() && wq.size(1) == static_cast<int64_t>(*row_bytes), "quantized weight rows of ",
              wq.size(1), " bytes do not hold ", quant::FormatName(q.format), " rows of ", q.cols, " columns in groups of ",
              q.group);
  Parts p;
  if (q.split) {
    TORCH_CHECK(q.format == quant::Format::kInt4 && wq.is_contiguous(), "a split layout is an int4 weight's, whole");
    const at::Tensor flat = wq.reshape({-1});
    p.data = flat.narrow(0, 0, n * data).view({n, data});
    p.records = flat.narrow(0, n * data, n * 4 * groups).view(at::kBFloat16).view({groups, n, 2}).transpose(0, 1);
    return p;
  }
  p.data = wq.narrow(1, 0, data);
  at::Tensor rec = wq.narrow(1, data, 4 * groups).contiguous();
  if (q.format == quant::Format::kInt4) {
    p.records = rec.view(at::kBFloat16).view({n, groups, 2});
  } else {
    p.records = rec.view(at::kFloat).view({n, groups});
  }
  return p;
}

// The int4 values [n, cols] as `dtype` (0..15; the high nibble of byte j is column 2j).
at::Tensor UnpackInt4(const at::Tensor& data, int64_t cols, at::ScalarType dtype) {
  at::Tensor hi = at::bitwise_right_shift(data, 4);
  at::Tensor lo = at::bitwise_and(data, 15);
  return at::stack({hi, lo}, -1).view({data.size(0), cols}).to(dtype);
}

// tinygemm's innerKTiles for `cols` (cols % (innerKTiles * 16) == 0), 0 when none fits.
int64_t InnerKTiles(int64_t cols) {
  for (int64_t t : {8, 4, 2})
    if (cols % (t * 16) == 0) return t;
  return 0;
}

// tinygemm is a decode kernel: for more than this many rows of x, dequantizing once and one cuBLAS product is faster
// (a 512-token Llama-3-8B prefill: 264 ms through tinygemm on an H100).
constexpr int64_t kTinyGemmMaxRows = 16;

bool TinyGemmEligible(const at::Tensor& x, const at::Tensor& wq, const WeightQuant& q) {
  if (!x.is_cuda() || x.scalar_type() != at::kBFloat16 || q.format != quant::Format::kInt4) return false;
  if (x.numel() / std::max<int64_t>(1, x.size(-1)) > kTinyGemmMaxRows) return false;
  if (wq.size(0) % 8 != 0 || InnerKTiles(q.cols) == 0) return false;
  return q.group == 32 || q.group == 64 || q.group == 128 || q.group == 256;
}

}  // namespace

at::Tensor DequantizeWeight(const at::Tensor& wq, const WeightQuant& q, at::ScalarType dtype) {
  const Parts p = Split(wq, q);
  const int64_t n = wq.size(0), groups = q.cols / q.group;
  // float32 results are computed in float32; half-precision ones in their own dtype (fewer passes over the weight,
  // each operation rounded once to that dtype).
  const at::ScalarType math = dtype == at::kFloat || dtype == at::kDouble ? at::kFloat : dtype;
  switch (q.format) {
    case quant::Format::kFp8E4M3:
    case quant::Format::kInt8: {
      at::Tensor w = p.data.view(StoredType(q.format)).to(math).view({n, groups, q.group}) * p.records.to(math).unsqueeze(-1);
      return w.reshape({n, q.cols}).to(dtype);
    }
    case quant::Format::kInt4: {
      at::Tensor v = UnpackInt4(p.data, q.cols, math).view({n, groups, q.group});
      at::Tensor s = p.records.select(-1, 0).to(math).unsqueeze(-1);
      at::Tensor z = p.records.select(-1, 1).to(math).unsqueeze(-1);
      // (The result may follow the records' strides: reshape, not view.)
      return at::addcmul(z, v.sub_(8.0), s).reshape({n, q.cols}).to(dtype);
    }
    case quant::Format::kNone: break;
  }
  TORCH_CHECK(false, "DequantizeWeight: not a quantized weight");
}

at::Tensor QuantLinear(const at::Tensor& x, const at::Tensor& wq, const WeightQuant& q, const at::Tensor& b) {
  TORCH_CHECK(x.size(-1) == q.cols, "input has ", x.size(-1), " features, the quantized weight ", q.cols);
  const int64_t n = wq.size(0);
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = n;
  at::Tensor y;
  if (q.format == quant::Format::kInt4 && x.is_cuda() &&
      (y = fused_ops::QuantGemvInt4(x, wq, q.cols, q.group, q.split)).defined()) {
    // int4 at a decode step's rows: one kernel reads the packed values and their records where they lie (tinygemm
    // would repack the weight on every call).
  } else if (TinyGemmEligible(x, wq, q)) {
    const Parts p = Split(wq, q);
    at::Tensor packed = at::_convert_weight_to_int4pack(p.data.contiguous(), InnerKTiles(q.cols));
    at::Tensor scale_zero = p.records.transpose(0, 1).contiguous();  // [groups, n, 2]
    y = at::_weight_int4pack_mm(x.reshape({-1, q.cols}).contiguous(), packed, q.group, scale_zero).view(out_shape);
  } else if (q.format != quant::Format::kInt4 && q.group == q.cols && !q.split && x.is_cuda() &&
             (y = fused_ops::QuantGemv(x, wq, q.format == quant::Format::kFp8E4M3, q.cols)).defined()) {
    // One scale per row, a decode step's rows: one kernel reads the stored values (a quarter or half of a bf16
    // weight's bytes) and scales the outputs as the path below rounds them.
  } else if (q.format != quant::Format::kInt4 && q.group == q.cols) {
    // One scale per row: multiply by the stored values, scale the output columns (no scaled copy of the weight).
    const Parts p = Split(wq, q);
    at::Tensor w = p.data.view(StoredType(q.format)).to(x.scalar_type());
    y = at::linear(x, w);
    if (x.scalar_type() == at::kFloat) {
      y.mul_(p.records.view({n}));
    } else {
      y = (y.to(at::kFloat) * p.records.view({n})).to(x.scalar_type());
    }
  } else {
    // Dequantized once (one kernel on a GPU, as DequantizeWeight computes it), then one product.
    at::Tensor w = x.is_cuda() ? fused_ops::Dequantize(wq, q.format, q.cols, q.group, q.split, x.scalar_type())
                               : at::Tensor();
    y = at::linear(x, w.defined() ? w : DequantizeWeight(wq, q, x.scalar_type()));
  }
  if (b.defined()) y.add_(b);
  return y;
}

}  // namespace bigplan::kernels_internal
