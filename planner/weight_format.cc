#include "planner/weight_format.h"

#include <string>

#include "arch/registry.h"

namespace bigplan {

Status ApplyWeightFormat(ModelDescription* model, quant::Format format, int64_t group_size) {
  if (format == quant::Format::kNone) return Status::Ok();
  const arch::FamilyInfo* family = arch::FindFamily(model->architecture);
  if (family == nullptr) {
    return MakeError(ErrorCode::kUnsupported, "model " + model->name + ": architecture \"" + model->architecture +
                                                  "\" is not a registry family");
  }
  int marked = 0;
  for (BlockDesc& b : model->blocks) {
    for (TensorSpec& t : b.params) {
      if (t.format != quant::Format::kNone) continue;  // pre-quantized
      const std::string local = t.name.substr(b.prefix.size());
      const arch::TensorRule* rule = arch::FindTensorRule(*family, b.kind, local);
      if (rule == nullptr || rule->layout != arch::Layout::kLinear || t.shape.size() != 2) continue;
      // A router stays at the execution dtype: a few kilobytes a layer, its choices as the checkpoint's, and its
      // rows read by the next-layer expert prediction (fused::TopRows).
      if (rule->slot == arch::Slot::kRouter) continue;
      if (!IsFloatingPoint(t.dtype)) {
        return MakeError(ErrorCode::kUnsupported, "tensor " + t.name + " is " + DTypeString(t.dtype) +
                                                      " in the checkpoint; only floating-point weights are quantized");
      }
      Result<int64_t> group = group_size > 0 ? Result<int64_t>(group_size) : quant::DefaultGroup(format, t.shape[1]);
      if (!group.ok()) return WithContext(group.take_error(), "tensor " + t.name);
      if (t.shape[1] % *group != 0 || (format == quant::Format::kInt4 && *group % 2 != 0)) {
        return MakeError(ErrorCode::kInvalidArgument, "tensor " + t.name + " has " + std::to_string(t.shape[1]) +
                                                          " columns: " + quant::FormatName(format) + " groups of " +
                                                          std::to_string(*group) + " do not fit (the group must divide them" +
                                                          (format == quant::Format::kInt4 ? " and be even)" : ")"));
      }
      Result<uint64_t> bytes = quant::TensorBytes(format, t.shape[0], t.shape[1], *group);
      if (!bytes.ok()) return WithContext(bytes.take_error(), "tensor " + t.name);
      t.format = format;
      t.group = *group;
      ++marked;
    }
  }
  if (marked == 0) {
    return MakeError(ErrorCode::kUnsupported,
                     std::string("--weights ") + quant::FormatName(format) + ": model " + model->name + " (" +
                         model->architecture + ") has no linear-layer weights bigplan quantizes" +
                         (model->architecture == "gpt2" ? " (GPT-2 stores its projections as Conv1D [in, out])" : ""));
  }
  return Status::Ok();
}

QuantizedSummary SummarizeQuantized(const ModelDescription& model, DType exec_dtype) {
  QuantizedSummary s;
  for (const BlockDesc& b : model.blocks) {
    for (const TensorSpec& t : b.params) {
      if (t.format == quant::Format::kNone) continue;
      ++s.tensors;
      s.bytes += t.bytes_as(exec_dtype);
      s.plain_bytes += static_cast<uint64_t>(t.numel()) * DTypeBytes(exec_dtype);
    }
  }
  return s;
}

}  // namespace bigplan
