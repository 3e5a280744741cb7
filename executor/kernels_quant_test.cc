// Products with row-quantized weights: every format, against the dequantized weight in float32 (CPU) and, on CUDA
// (kernels_quant_gpu_test), the tinygemm int4 path and the per-row fp8/int8 paths in bf16.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "executor/fused_ops.h"
#include "executor/kernels_internal.h"
#include "formats/quant.h"

namespace bigplan::kernels_internal {
namespace {

at::Device TestDevice() {
#ifdef BIGPLAN_TEST_CUDA
  return at::Device(at::kCUDA, 0);
#else
  return at::Device(at::kCPU);
#endif
}

// A random [n, k] weight quantized with formats/quant into uint8 rows.
at::Tensor QuantizedRows(const at::Tensor& w, quant::Format f, int64_t group) {
  const int64_t n = w.size(0), k = w.size(1);
  at::Tensor src = w.to(at::kFloat).contiguous();
  const uint64_t row = *quant::RowBytes(f, k, group);
  at::Tensor out = at::empty({n, static_cast<int64_t>(row)}, at::kByte);
  Status s = quant::Quantize(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(src.data_ptr()), n * k * 4),
                             DType::kF32, n, k, f, group, std::span<uint8_t>(out.data_ptr<uint8_t>(), n * row));
  EXPECT_TRUE(s.ok()) << s.error().ToString();
  return out;
}

struct Case {
  quant::Format format;
  int64_t n, k, group;
};

class QuantLinearTest : public ::testing::TestWithParam<Case> {};

TEST_P(QuantLinearTest, MatchesTheDequantizedWeight) {
  const Case c = GetParam();
  at::manual_seed(7);
  at::Tensor w = at::randn({c.n, c.k}) * 0.05;
  at::Tensor wq = QuantizedRows(w, c.format, c.group);
  const WeightQuant q{c.format, c.group, c.k};
  // The reference: the dequantized weight in float32 on the CPU.
  at::Tensor deq = DequantizeWeight(wq, q, at::kFloat);
  ASSERT_EQ(deq.sizes(), w.sizes());
  // Quantization error is bounded (the layout is read as it was written).
  const double rel = ((deq - w).norm() / w.norm()).item<double>();
  EXPECT_LT(rel, c.format == quant::Format::kInt4 ? 0.15 : 0.05);
  // An int4 weight split into a values block and transposed records (as the executor stores GPU-resident ones).
  at::Tensor split;
  WeightQuant qs = q;
  if (c.format == quant::Format::kInt4) {
    const int64_t data = c.k / 2, groups = c.k / c.group;
    at::Tensor values = wq.narrow(1, 0, data).contiguous().reshape({-1});
    at::Tensor records = wq.narrow(1, data, 4 * groups).contiguous().view({c.n, groups, 4}).transpose(0, 1);
    split = at::cat({values, records.contiguous().reshape({-1})}).view(wq.sizes());
    qs.split = true;
    EXPECT_TRUE(at::equal(DequantizeWeight(split, qs, at::kFloat), deq));
  }
  for (int64_t m : {1, 3, 17, 40}) {
    at::Tensor x = at::randn({m, c.k});
    at::Tensor bias = at::randn({c.n});
    at::Tensor ref = at::linear(x, deq, bias);
    // float32 on the CPU: the same products.
    at::Tensor y = QuantLinear(x, wq, q, bias);
    EXPECT_TRUE(at::allclose(y, ref, 1e-4, 1e-4)) << (y - ref).abs().max().item<float>();
    if (split.defined()) {
      at::Tensor ys = QuantLinear(x, split, qs, bias);
      EXPECT_TRUE(at::allclose(ys, ref, 1e-4, 1e-4)) << "split layout";
    }
    const at::Device dev = TestDevice();
    if (dev.is_cuda()) {
      at::Tensor yd = QuantLinear(x.to(dev).to(at::kBFloat16), wq.to(dev), q, bias.to(dev).to(at::kBFloat16));
      const double err = ((yd.to(at::kCPU).to(at::kFloat) - ref).norm() / ref.norm()).item<double>();
      EXPECT_LT(err, 0.02) << "bf16 on CUDA, m=" << m;
      if (split.defined()) {
        at::Tensor ys = QuantLinear(x.to(dev).to(at::kBFloat16), split.to(dev), qs, bias.to(dev).to(at::kBFloat16));
        EXPECT_LT(((ys.to(at::kCPU).to(at::kFloat) - ref).norm() / ref.norm()).item<double>(), 0.02) << "split, m=" << m;
      }
      // Per-row fp8/int8 at up to 2 rows of x: the fused kernel (fused_ops::QuantGemv), against the LibTorch path's
      // roundings (the product with the values in bf16, rounded, then scaled in float32 and rounded) within a bf16
      // step of the pre-scale sum (the sums run in another order).
      if (c.format != quant::Format::kInt4 && c.group == c.k && m <= 2) {
        const at::Tensor xb = x.to(dev).to(at::kBFloat16);
        const at::Tensor values = wq.narrow(1, 0, c.k).contiguous().view(
            c.format == quant::Format::kInt8 ? at::kChar : at::kFloat8_e4m3fn);
        const at::Tensor scales = wq.narrow(1, c.k, 4).contiguous().view(at::kFloat).view({c.n});
        const at::Tensor path =
            (at::linear(xb, values.to(dev).to(at::kBFloat16)).to(at::kFloat) * scales.to(dev)).to(at::kBFloat16);
        const at::Tensor fused = QuantLinear(xb, wq.to(dev), q, {});
        ASSERT_EQ(fused.sizes(), path.sizes());
        const at::Tensor diff = (fused.to(at::kFloat) - path.to(at::kFloat)).abs();
        const at::Tensor bound = path.to(at::kFloat).abs() * (1.0 / 64) + scales.to(dev).abs() * 1e-2;
        EXPECT_TRUE(diff.le(bound).all().item<bool>()) << "fused per-row product, m=" << m << ": max diff "
                                                        << diff.max().item<float>();
      }
      // A chunk of rows (8 rows, or the last 4 of a small weight) multiplies like the whole weight's rows.
      const int64_t first = c.n >= 16 ? 8 : c.n - 4, rows = c.n >= 16 ? 8 : 4;
      at::Tensor part = QuantLinear(x.to(dev).to(at::kBFloat16), wq.narrow(0, first, rows).to(dev), q, {});
      at::Tensor part_ref = at::linear(x, deq.narrow(0, first, rows));
      EXPECT_LT(((part.to(at::kCPU).to(at::kFloat) - part_ref).norm() / part_ref.norm()).item<double>(), 0.02);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Formats, QuantLinearTest,
                         ::testing::Values(Case{quant::Format::kFp8E4M3, 64, 256, 256},
                                           Case{quant::Format::kFp8E4M3, 48, 256, 128},
                                           Case{quant::Format::kInt8, 64, 256, 256},
                                           Case{quant::Format::kInt8, 33, 4100, 4100},  // odd rows, a word tail
                                           Case{quant::Format::kFp8E4M3, 130, 2048, 2048},
                                           Case{quant::Format::kInt4, 64, 256, 128},
                                           Case{quant::Format::kInt4, 64, 576, 64},
                                           Case{quant::Format::kInt4, 40, 1024, 32},
                                           Case{quant::Format::kInt4, 12, 96, 32}));  // rows not a multiple of 8

#ifdef BIGPLAN_TEST_CUDA
// The batched quantized product (fused_ops::QuantGemvBatched, what grouped experts run): per-row fp8/int8 give each
// weight's product bit for bit as the single one (fused_ops::QuantGemv: the same kernel, a weight per grid row);
// int4, in the row layout and in the GPU-resident split one (two stacked matrices, as an expert's gate and up), the
// product with the dequantized weight within bf16 rounding.
TEST(QuantGemvBatched, MatchesEachProduct) {
  const at::Device dev = TestDevice();
  at::manual_seed(11);
  auto on_device = [&](const auto& pointers) {
    at::Tensor t = at::empty({static_cast<int64_t>(pointers.size())}, at::kLong);
    std::memcpy(t.data_ptr(), pointers.data(), pointers.size() * sizeof(void*));
    return t.to(dev);
  };
  for (quant::Format f : {quant::Format::kInt8, quant::Format::kFp8E4M3, quant::Format::kInt4}) {
    for (bool split : {false, true}) {
      if (split && f != quant::Format::kInt4) continue;
      for (int64_t m : {1, 2}) {
        SCOPED_TRACE(std::string(quant::FormatName(f)) + (split ? " split" : "") + " m=" + std::to_string(m));
        // (k + 4) % 16 != 0: per-row rows not 16-byte aligned; int4 in groups of 64 (k = 8 x 33)
        constexpr int64_t kBatch = 5, n = 96, k = 264;
        const int64_t group = f == quant::Format::kInt4 ? 8 : k;
        std::vector<at::Tensor> ws, xs, ys, refs;
        std::vector<const void*> wp, xp;
        std::vector<void*> yp;
        for (int64_t i = 0; i < kBatch; ++i) {
          const at::Tensor w = at::randn({n, k}) * 0.05;
          at::Tensor wq = QuantizedRows(w, f, group);
          const WeightQuant q{f, group, k};
          refs.push_back(DequantizeWeight(wq, q, at::kFloat));
          if (split) {  // two matrices of n / 2 rows, each values then transposed records
            std::vector<at::Tensor> parts;
            for (int64_t h = 0; h < 2; ++h) {
              const at::Tensor rows = wq.narrow(0, h * n / 2, n / 2);
              parts.push_back(rows.narrow(1, 0, k / 2).contiguous().reshape({-1}));
              parts.push_back(rows.narrow(1, k / 2, 4 * (k / group)).contiguous().view({n / 2, k / group, 4})
                                  .transpose(0, 1).contiguous().reshape({-1}));
            }
            wq = at::cat(parts).view(wq.sizes());
          }
          ws.push_back(wq.to(dev));
          xs.push_back(at::randn({m, k}).to(dev).to(at::kBFloat16));
          ys.push_back(at::full({m, n}, 7.0, xs.back().options()));
          wp.push_back(ws.back().data_ptr());
          xp.push_back(xs.back().data_ptr());
          yp.push_back(ys.back().data_ptr());
        }
        const at::Tensor dw = on_device(wp), dx = on_device(xp), dy = on_device(yp);
        const auto* a = static_cast<const void* const*>(dw.data_ptr());
        const auto* b = static_cast<const void* const*>(dx.data_ptr());
        auto* c = static_cast<void* const*>(dy.data_ptr());
        ASSERT_TRUE(fused_ops::QuantGemvBatched(a, b, c, kBatch, m, n, k, f, group, xs[0], split ? n / 2 : 0));
        for (int64_t i = 0; i < kBatch; ++i) {
          if (f != quant::Format::kInt4) {
            const at::Tensor one = fused_ops::QuantGemv(xs[i], ws[i], f == quant::Format::kFp8E4M3, k);
            ASSERT_TRUE(one.defined());
            EXPECT_TRUE(at::equal(one, ys[i])) << "weight " << i;
          } else {
            const at::Tensor ref = at::linear(xs[i].to(at::kCPU).to(at::kFloat), refs[i]);
            const at::Tensor got = ys[i].to(at::kCPU).to(at::kFloat);
            EXPECT_TRUE(at::allclose(got, ref, 1.0 / 128, 1e-3)) << "weight " << i << ": max diff "
                                                                 << (got - ref).abs().max().item<float>();
          }
        }
        // Not eligible: 3 rows; a group that does not divide k.
        EXPECT_FALSE(fused_ops::QuantGemvBatched(a, b, c, kBatch, 3, n, k, f, group, xs[0]));
        EXPECT_FALSE(fused_ops::QuantGemvBatched(a, b, c, kBatch, m, n, k, f, 7, xs[0]));
      }
    }
  }
}

// The dequantizing kernel (fused_ops::Dequantize / DequantizeInto: what quantized prompts and grouped prompt experts
// run) against DequantizeWeight's LibTorch ops in the same dtype: every format and group, int4 in both layouts, rows
// read from a strided view of longer rows, several weights of different shapes in one launch, into views of wider
// outputs. fp8/int8 bit for bit; int4 within one step of the dtype (z + (q - 8) s may round once less where the
// compiler fuses it).
TEST(Dequantize, MatchesTheLibTorchOps) {
  const at::Device dev = TestDevice();
  at::manual_seed(13);
  auto close = [](const at::Tensor& got, const at::Tensor& ref, bool exact) {
    const at::Tensor g = got.to(at::kCPU).to(at::kFloat), r = ref.to(at::kCPU).to(at::kFloat);
    if (exact) return at::equal(g, r);
    return (g - r).abs().le(r.abs() * (1.0 / 128) + 1e-6).all().item<bool>();
  };
  for (const Case& c : {Case{quant::Format::kFp8E4M3, 64, 256, 256}, Case{quant::Format::kFp8E4M3, 48, 256, 128},
                        Case{quant::Format::kInt8, 33, 4104, 4104}, Case{quant::Format::kInt8, 20, 96, 24},
                        Case{quant::Format::kInt4, 64, 576, 64}, Case{quant::Format::kInt4, 40, 1024, 32},
                        Case{quant::Format::kInt4, 12, 96, 12}}) {
    for (at::ScalarType dtype : {at::kBFloat16, at::kHalf}) {
      SCOPED_TRACE(std::string(quant::FormatName(c.format)) + " " + std::to_string(c.n) + "x" + std::to_string(c.k) +
                   "/" + std::to_string(c.group) + " " + at::toString(dtype));
      const bool exact = c.format != quant::Format::kInt4;
      const WeightQuant q{c.format, c.group, c.k};
      const at::Tensor wq = QuantizedRows(at::randn({c.n, c.k}) * 0.05, c.format, c.group).to(dev);
      const at::Tensor ref = DequantizeWeight(wq, q, dtype);
      const at::Tensor got = fused_ops::Dequantize(wq, c.format, c.k, c.group, false, dtype);
      ASSERT_TRUE(got.defined());
      EXPECT_TRUE(close(got, ref, exact));
      // Rows 4 bytes longer than the weight's (a strided view), written into the left part of wider rows, with a
      // second weight of another shape (the first's rows transposed in shape) in the same launch.
      const int64_t rb = wq.size(1);
      const at::Tensor wide = at::zeros({c.n, rb + 4}, wq.options());
      wide.narrow(1, 0, rb).copy_(wq);
      const at::Tensor second = QuantizedRows(at::randn({2 * c.n, c.k}) * 0.05, c.format, c.group).to(dev);
      const at::Tensor out1 = at::full({c.n, c.k + 8}, 3.0, at::TensorOptions().dtype(dtype).device(dev));
      const at::Tensor out2 = at::empty({2 * c.n, c.k}, out1.options());
      ASSERT_TRUE(fused_ops::DequantizeInto(
          {fused_ops::DequantInput{
               .wq = wide.narrow(1, 0, rb), .cols = c.k, .group = c.group, .out = out1.narrow(1, 0, c.k)},
           fused_ops::DequantInput{.wq = second, .cols = c.k, .group = c.group, .out = out2}},
          c.format));
      EXPECT_TRUE(close(out1.narrow(1, 0, c.k), ref, exact));
      EXPECT_TRUE(at::equal(out1.narrow(1, c.k, 8).to(at::kCPU),
                            at::full({c.n, 8}, 3.0, at::TensorOptions().dtype(dtype))));  // untouched
      EXPECT_TRUE(close(out2, DequantizeWeight(second, q, dtype), exact));
      if (c.format == quant::Format::kInt4) {  // the split layout
        const int64_t data = c.k / 2, groups = c.k / c.group;
        const at::Tensor values = wq.narrow(1, 0, data).contiguous().reshape({-1});
        const at::Tensor records = wq.narrow(1, data, 4 * groups).contiguous().view({c.n, groups, 4}).transpose(0, 1);
        const at::Tensor split = at::cat({values, records.contiguous().reshape({-1})}).view(wq.sizes());
        const at::Tensor gs = fused_ops::Dequantize(split, c.format, c.k, c.group, true, dtype);
        ASSERT_TRUE(gs.defined());
        EXPECT_TRUE(at::equal(gs, got));
      }
      if (c.format != quant::Format::kInt4 && c.group == c.k) {
        // The values alone and each row's scale (what grouped prompt experts scale their products by).
        const at::Tensor raw = at::empty({c.n, c.k}, out2.options());
        const at::Tensor scales = at::empty({c.n}, at::TensorOptions().dtype(at::kFloat).device(dev));
        ASSERT_TRUE(fused_ops::DequantizeInto(
            {fused_ops::DequantInput{.wq = wq, .cols = c.k, .group = c.group, .out = raw, .scales = scales}},
            c.format));
        const at::Tensor cpu = wq.to(at::kCPU);
        const at::Tensor values = cpu.narrow(1, 0, c.k).contiguous().view(
            c.format == quant::Format::kInt8 ? at::kChar : at::kFloat8_e4m3fn);
        EXPECT_TRUE(at::equal(raw.to(at::kCPU), values.to(dtype)));
        EXPECT_TRUE(at::equal(scales.to(at::kCPU), cpu.narrow(1, c.k, 4).contiguous().view(at::kFloat).view({c.n})));
      }
      // Not eligible: float32 outputs; a group that does not divide the columns; a CPU weight.
      EXPECT_FALSE(fused_ops::Dequantize(wq, c.format, c.k, c.group, false, at::kFloat).defined());
      EXPECT_FALSE(fused_ops::Dequantize(wq, c.format, c.k, c.group + 1, false, dtype).defined());
      EXPECT_FALSE(fused_ops::Dequantize(wq.to(at::kCPU), c.format, c.k, c.group, false, dtype).defined());
    }
  }
}

// fused_ops::DequantBatch (a MoE prompt's experts unpacked many matrices a launch): a full batch of
// fused::kDequantMaxJobs weights of two shapes, launched once, equals each weight dequantized by itself, in rows of a
// wider raw output; weights it does not take (a group that does not divide the columns, a scaled int4 weight) queue
// nothing; Truncate drops what was queued after a point (those outputs stay untouched); per-row scales go where Add
// points them.
TEST(DequantBatch, EqualsEachWeightDequantizedByItself) {
  const at::Device dev = TestDevice();
  at::manual_seed(17);
  for (const Case& c : {Case{quant::Format::kInt4, 24, 256, 64}, Case{quant::Format::kInt8, 24, 256, 256},
                        Case{quant::Format::kFp8E4M3, 16, 128, 128}}) {
    SCOPED_TRACE(quant::FormatName(c.format));
    const int jobs = fused::kDequantMaxJobs;
    const at::TensorOptions bf16 = at::TensorOptions().dtype(at::kBFloat16).device(dev);
    std::vector<at::Tensor> ws;
    int64_t rows = 0;
    for (int j = 0; j < jobs; ++j) {
      const int64_t n = j % 2 == 0 ? c.n : 2 * c.n;  // two shapes alternating (gate/up and down's rows)
      ws.push_back(QuantizedRows(at::randn({n, c.k}) * 0.05, c.format, c.group).to(dev));
      rows += n;
    }
    const int64_t stride = c.k + 8;  // the outputs' rows, wider than the weights'
    const at::Tensor out = at::full({rows, stride}, 5.0, bf16);
    const bool per_row = c.format != quant::Format::kInt4;
    const at::Tensor scales = at::zeros({rows}, bf16.dtype(at::kFloat));
    fused_ops::DequantBatch batch(c.format, at::kBFloat16);
    EXPECT_FALSE(batch.Add(ws[0], c.k, c.group + 1, false, out.data_ptr(), stride));
    if (!per_row) {
      EXPECT_FALSE(batch.Add(ws[0], c.k, c.group, false, out.data_ptr(), stride, scales.data_ptr<float>()));
    }
    EXPECT_EQ(batch.size(), 0);
    int64_t row = 0;
    std::vector<int64_t> first;
    for (int j = 0; j < jobs; ++j) {
      ASSERT_FALSE(batch.full());
      char* o = static_cast<char*>(out.data_ptr()) + row * stride * 2;
      float* sc = per_row && j % 3 == 0 ? scales.data_ptr<float>() + row : nullptr;
      ASSERT_TRUE(batch.Add(ws[j], c.k, c.group, false, o, stride, sc));
      first.push_back(row);
      row += ws[j].size(0);
    }
    EXPECT_TRUE(batch.full());
    EXPECT_FALSE(batch.Add(ws[0], c.k, c.group, false, out.data_ptr(), stride));  // full: nothing queued
    ASSERT_TRUE(batch.Launch());
    EXPECT_EQ(batch.size(), 0);
    const at::Tensor cpu = out.to(at::kCPU);
    for (int j = 0; j < jobs; ++j) {
      const int64_t n = ws[j].size(0);
      const at::Tensor got = cpu.narrow(0, first[j], n);
      if (per_row && j % 3 == 0) {  // the values alone, and the rows' scales
        const at::Tensor raw = at::empty({n, c.k}, bf16);
        const at::Tensor want_scales = at::empty({n}, bf16.dtype(at::kFloat));
        ASSERT_TRUE(fused_ops::DequantizeInto(
            {fused_ops::DequantInput{.wq = ws[j], .cols = c.k, .group = c.group, .out = raw, .scales = want_scales}},
            c.format));
        EXPECT_TRUE(at::equal(got.narrow(1, 0, c.k), raw.to(at::kCPU))) << j;
        EXPECT_TRUE(at::equal(scales.narrow(0, first[j], n).to(at::kCPU), want_scales.to(at::kCPU))) << j;
      } else {
        const at::Tensor want = fused_ops::Dequantize(ws[j], c.format, c.k, c.group, false, at::kBFloat16);
        ASSERT_TRUE(want.defined());
        EXPECT_TRUE(at::equal(got.narrow(1, 0, c.k), want.to(at::kCPU))) << j;
      }
      EXPECT_TRUE(at::equal(got.narrow(1, c.k, 8), at::full({n, 8}, 5.0, at::kBFloat16))) << j;  // untouched
    }
    // Truncate: the second weight queued is dropped; its output keeps its old values.
    const at::Tensor out2 = at::full({2 * c.n + c.n, c.k}, 7.0, bf16);
    ASSERT_TRUE(batch.Add(ws[0], c.k, c.group, false, out2.data_ptr(), c.k));
    ASSERT_TRUE(batch.Add(ws[1], c.k, c.group, false, static_cast<char*>(out2.data_ptr()) + c.n * c.k * 2, c.k));
    batch.Truncate(1);
    EXPECT_EQ(batch.size(), 1);
    ASSERT_TRUE(batch.Launch());
    const at::Tensor want0 = fused_ops::Dequantize(ws[0], c.format, c.k, c.group, false, at::kBFloat16);
    EXPECT_TRUE(at::equal(out2.narrow(0, 0, c.n).to(at::kCPU), want0.to(at::kCPU)));
    EXPECT_TRUE(at::equal(out2.narrow(0, c.n, 2 * c.n).to(at::kCPU), at::full({2 * c.n, c.k}, 7.0, at::kBFloat16)));
    EXPECT_TRUE(batch.Launch());  // nothing queued: nothing to do
  }
}
#endif

#ifdef BIGPLAN_TEST_CUDA
// Grouped products' rows scaled by their group's scales (fused_ops::ScaleGroupedRows): each row by the scales of the
// group its row falls in (groups given by their end rows, some empty), rounded once, against LibTorch's ops.
TEST(ScaleGroupedRows, ScalesEachRowByItsGroup) {
  const at::Device dev = TestDevice();
  at::manual_seed(17);
  for (at::ScalarType dtype : {at::kBFloat16, at::kHalf}) {
    const int64_t rows = 37, n = 300;
    const std::vector<int32_t> ends = {5, 5, 20, 36, 37};  // the second group empty
    const at::Tensor y = at::randn({rows, n}).to(dtype).to(dev);
    const at::Tensor scales = at::rand({static_cast<int64_t>(ends.size()), n}).to(dev) + 0.5;
    std::vector<int64_t> group_of;
    for (size_t g = 0, r = 0; g < ends.size(); ++g) {
      for (; r < static_cast<size_t>(ends[g]); ++r) group_of.push_back(static_cast<int64_t>(g));
    }
    const at::Tensor index = at::tensor(group_of, at::kLong).to(dev);
    const at::Tensor ref = (y.to(at::kFloat) * scales.index_select(0, index)).to(dtype);
    const at::Tensor got = y.clone();
    ASSERT_TRUE(fused_ops::ScaleGroupedRows(got, at::tensor(ends, at::kInt).to(dev), scales));
    EXPECT_TRUE(at::equal(got, ref)) << at::toString(dtype);
    // Not eligible: float32 rows; scales of another width.
    EXPECT_FALSE(fused_ops::ScaleGroupedRows(y.to(at::kFloat), at::tensor(ends, at::kInt).to(dev), scales));
    EXPECT_FALSE(fused_ops::ScaleGroupedRows(got, at::tensor(ends, at::kInt).to(dev), scales.narrow(1, 0, 8)));
  }
}
#endif

TEST(QuantLinear, WrongShapesThrow) {
  at::Tensor wq = at::zeros({4, 10}, at::kByte);
  const WeightQuant q{quant::Format::kInt8, 8, 8};
  EXPECT_NO_THROW(QuantLinear(at::zeros({1, 8}), at::zeros({4, 12}, at::kByte), q, {}));  // 8 values + a scale
  EXPECT_THROW(QuantLinear(at::zeros({1, 8}), wq, q, {}), c10::Error);         // rows of 10 bytes, 12 expected
  EXPECT_THROW(QuantLinear(at::zeros({1, 9}), wq, q, {}), c10::Error);         // 9 features for 8 columns
  EXPECT_THROW(DequantizeWeight(wq, WeightQuant{quant::Format::kInt4, 3, 8}, at::kFloat), c10::Error);
}

}  // namespace
}  // namespace bigplan::kernels_internal
