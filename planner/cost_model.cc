#include "planner/cost_model.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>

#include "arch/registry.h"
#include "arch/temporaries.h"
#include "planner/accounting.h"

namespace bigplan {

BlockWork DescribeBlockWork(const ModelDescription& model, size_t index, DType exec_dtype) {
  const BlockDesc& block = model.blocks[index];
  const ModelConfig& c = model.config;
  const uint64_t e = DTypeBytes(exec_dtype);
  BlockWork w;
  w.weight_bytes = BlockWeightBytes(model, index, exec_dtype);
  // Per-row-scaled fp8/int8 matrices and int4 ones in groups of a multiple of 8 columns: a decode step's product
  // reads them in one kernel (fused::QuantGemv).
  const auto fused_decode = [&](const TensorSpec& t) {
    if (t.shape.size() != 2 || e != 2) return false;
    if (t.format == quant::Format::kInt4) return t.shape[1] % 8 == 0 && t.group > 0 && t.group % 8 == 0;
    return (t.format == quant::Format::kInt8 || t.format == quant::Format::kFp8E4M3) && t.group == t.shape[1];
  };
  // Matrix elements, stored bytes, unpacking traffic and quantized matrices of a set of tensors.
  struct Tally {
    double params = 0, bytes = 0, dequant = 0, fused_dequant = 0;
    double unpack = 0, unpacked_extra = 0, rescaled_rows = 0;  // a prompt's (below)
    uint32_t quantized = 0, fused = 0, per_row = 0;
  };
  const auto add = [&](const TensorSpec& t, Tally* to) {
    const double stored = static_cast<double>(t.bytes_as(exec_dtype));
    if (t.shape.size() >= 2) to->params += static_cast<double>(t.numel());
    to->bytes += stored;
    if (t.format == quant::Format::kNone) return;
    ++to->quantized;
    const double n = static_cast<double>(t.numel());
    to->dequant += t.format == quant::Format::kInt4 ? n : 2 * n * static_cast<double>(e);
    // A prompt unpacks every format into the execution dtype (fused::Dequantize, or the per-row values' widening:
    // the stored bytes read, e per element written), and its product reads that copy in place of the stored bytes.
    // Per-row fp8/int8 products are scaled after rounding (QuantLinear: three elementwise ops over the output).
    to->unpack += stored + n * static_cast<double>(e);
    to->unpacked_extra += std::max(0.0, n * static_cast<double>(e) - stored);
    if (t.format != quant::Format::kInt4 && t.shape.size() == 2 && t.group == t.shape[1]) {
      ++to->per_row;
      to->rescaled_rows += static_cast<double>(t.shape[0]);
    }
    if (fused_decode(t)) {
      to->fused_dequant += t.format == quant::Format::kInt4 ? n : 2 * n * static_cast<double>(e);
      ++to->fused;
    }
  };
  // A sparse layer reads, per token, its other weights and the num_experts_per_tok experts it routes to (and
  // unpacks only those, where they are quantized).
  const bool sparse = block.kind == BlockKind::kDecoderLayer && c.SparseLayer(block.layer) && c.num_experts > 0;
  Tally all, experts;
  for (const TensorSpec& p : block.params) {
    add(p, &all);
    if (sparse && p.name.find(".experts.") != std::string::npos) add(p, &experts);
  }
  for (const std::string& name : block.tied)
    if (const TensorSpec* p = model.FindParam(name)) add(*p, &all);
  double matrix_params = all.params;
  uint32_t quantized = all.quantized;
  w.dequant_bytes = static_cast<uint64_t>(all.dequant);
  w.prefill_unpack_bytes = static_cast<uint64_t>(all.unpack - experts.unpack);
  w.prefill_unpacked_extra_bytes = static_cast<uint64_t>(all.unpacked_extra - experts.unpacked_extra);
  w.fused_dequant_bytes = static_cast<uint64_t>(all.fused_dequant);
  w.fused_quantized = all.fused;
  if (sparse) {
    const double picked_share = static_cast<double>(c.num_experts_per_tok) / c.num_experts;
    const double unpicked_share = 1.0 - picked_share;
    const double unpicked = experts.params * unpicked_share;
    matrix_params -= unpicked;
    w.expert_pick_share = picked_share;
    w.expert_bytes = static_cast<uint64_t>(experts.bytes);
    w.num_experts = c.num_experts;
    w.expert_prefill_unpack_bytes = static_cast<uint64_t>(experts.unpack);
    w.expert_prefill_unpacked_extra_bytes = static_cast<uint64_t>(experts.unpacked_extra);
    // (The experts' bytes as stored: a quantized expert's are its values and records.)
    w.weight_bytes -= std::min<uint64_t>(w.weight_bytes, static_cast<uint64_t>(experts.bytes * unpicked_share));
    w.dequant_bytes -= std::min<uint64_t>(w.dequant_bytes, static_cast<uint64_t>(experts.dequant * unpicked_share));
    w.fused_dequant_bytes -=
        std::min<uint64_t>(w.fused_dequant_bytes, static_cast<uint64_t>(experts.fused_dequant * unpicked_share));
    // (The unpacking kernels too: the chosen experts' only.)
    quantized -= std::min(quantized, static_cast<uint32_t>(std::floor(experts.quantized * unpicked_share)));
    w.fused_quantized -= std::min(w.fused_quantized, static_cast<uint32_t>(std::floor(experts.fused * unpicked_share)));
  }
  // The registry's kernel counts for the family (a validated description always names one).
  const arch::FamilyInfo* family = arch::FindFamily(model.architecture);
  const arch::FamilyInfo& fam = family ? *family : arch::GetFamily(arch::Family::kLlama);
  w.cpu_kernels = arch::BlockKernels(fam, block.kind, c) + 3 * quantized;
  w.kernels = arch::BlockKernels(fam, block.kind, c, /*fused=*/e == 2 && quantized == 0) + 3 * quantized;
  w.decode_kernels = e == 2 && quantized == 0 ? arch::DecodeBlockKernels(fam, block.kind, c)
                                              : w.kernels - std::min(w.kernels - 1, 3 * w.fused_quantized);
  // A prompt in bf16/fp16 with quantized matrices runs the fused kernels around its products all the same, and one
  // unpacking kernel a quantized matrix (three more for a per-row one's scaling); a sparse layer's quantized experts
  // add theirs per expert hit. (Plain blocks: `kernels` and op_bytes_per_token, as a decode step.)
  if (e == 2 && all.quantized > 0) {
    const uint32_t dense_quantized = all.quantized - experts.quantized;
    const uint32_t dense_per_row = all.per_row - experts.per_row;
    w.prefill_kernels = arch::BlockKernels(fam, block.kind, c, /*fused=*/true) + dense_quantized + 3 * dense_per_row;
    w.prefill_rescale_bytes_per_token =
        static_cast<uint64_t>(kRescaleBytesPerElement * (all.rescaled_rows - experts.rescaled_rows));
    if (sparse && experts.quantized > 0) {
      // An expert run by itself (too large for two in the unpacking scratch): its gather, products, activation,
      // weighting and scatter (kExpertPromptTaskOps) and its three matrices' unpacking kernels; in the scratch's
      // windows, its share of its window's ops (kExpertWindowOps) and of a batched unpacking launch.
      const int64_t inter = static_cast<int64_t>(c.moe_intermediate_size > 0 ? c.moe_intermediate_size
                                                                            : c.intermediate_size);
      const int64_t window =
          arch::MoeDequantScratchExperts(static_cast<int64_t>(c.hidden_size), inter, 2, c.num_experts);
      const bool windows = window >= 2;
      w.expert_prompt_kernels =
          windows ? kExpertWindowOps / static_cast<double>(window) + 3.0 / arch::kMoeDequantBatchMatrices
                  : 3 + kExpertPromptTaskOps;
      w.expert_prompt_windows = windows;
    }
  }
  // LibTorch's ops where the fused kernels do not apply: the ones beyond the fused path's count.
  const uint32_t fused_kernels = arch::BlockKernels(fam, block.kind, c, /*fused=*/true);
  const uint32_t libtorch_kernels = arch::BlockKernels(fam, block.kind, c);
  if (!(e == 2 && quantized == 0) && libtorch_kernels > fused_kernels) {
    w.op_bytes_per_token = static_cast<uint64_t>((libtorch_kernels - fused_kernels) * kLibTorchOpBytesPerHidden *
                                                 static_cast<double>(c.hidden_size));
  }
  switch (block.kind) {
    case BlockKind::kDecoderLayer:
      w.matmul_params = matrix_params;
      w.attn_dim = uint64_t{c.num_heads} * c.head_dim;
      w.kv_bytes_per_token = 2ull * c.num_kv_heads * c.head_dim * e;
      w.act_bytes_per_token =
          (8ull * c.hidden_size + 2ull * (c.num_heads + 2ull * c.num_kv_heads) * c.head_dim +
           3ull * c.intermediate_size) * e;
      break;
    case BlockKind::kFinalNorm:
      w.act_bytes_per_token = 2ull * c.hidden_size * e;
      break;
    case BlockKind::kEmbedding:
      w.act_bytes_per_token = uint64_t{c.hidden_size} * e + 8;
      w.lookup_row_bytes = uint64_t{c.hidden_size} * e;
      break;
    case BlockKind::kPositionEmbedding:
      w.act_bytes_per_token = 2ull * c.hidden_size * e + 8;
      w.lookup_row_bytes = uint64_t{c.hidden_size} * e;
      break;
    case BlockKind::kLmHead:
      w.matmul_params = matrix_params;
      w.act_bytes_per_token = uint64_t{c.hidden_size} * e + uint64_t{c.vocab_size} * 4;
      break;
  }
  return w;
}

BlockCost EstimateBlockCost(const BlockWork& w, const RunSize& run, int32_t device, const DeviceProfile& p) {
  const bool cpu = device < 0;
  const double flops_per_s = cpu ? p.cpu_gflops * 1e9 : p.matmul_tflops * 1e12;
  const double bytes_per_s = (cpu ? p.cpu_mem_gbps : p.device_mem_gbps) * 1e9;
  // A decode step of up to kFusedDecodeMaxRows rows runs the fused products with their neighbours in.
  const bool fused_decode = run.max_batch <= arch::kFusedDecodeMaxRows && w.decode_kernels > 0;
  const uint32_t decode_kernels = fused_decode ? w.decode_kernels : w.kernels;
  const double overhead_us =
      cpu ? w.cpu_kernels * kCpuOpMicros
          : decode_kernels * kGpuKernelMicros +
                (fused_decode ? 2.0 * w.device_expert_choices * kMoeDeviceChoiceMicros : 0.0);
  const double host_us = cpu ? 0.0 : HostDispatchMicros(decode_kernels);
  const double batch = run.max_batch;
  const double seq = run.max_seq_len;
  const double kv_bytes = static_cast<double>(w.kv_bytes_per_token) * batch * seq;
  // A sparse layer's routed experts that `tokens` tokens choose, as a share of them: each token picks its
  // num_experts_per_tok of num_experts (expert_pick_share), taken as independent across tokens. One token: the pick
  // share itself; a 512-token prompt of Mixtral's (2 of 8): all of them.
  auto experts_hit = [&](double tokens) {
    return w.expert_pick_share > 0 ? 1.0 - std::pow(1.0 - w.expert_pick_share, std::max(1.0, tokens)) : 0.0;
  };
  auto weights_read = [&](double tokens) {
    if (w.lookup_row_bytes > 0) {
      return std::min(static_cast<double>(w.weight_bytes), static_cast<double>(w.lookup_row_bytes) * tokens);
    }
    // (weight_bytes holds one token's experts.)
    return static_cast<double>(w.weight_bytes) +
           static_cast<double>(w.expert_bytes) * (experts_hit(tokens) - w.expert_pick_share);
  };
  // The decode form (and the CPU's): the roofline of every FLOP and byte, plus a fixed cost per kernel.
  // (A decode step of a few rows reads per-row fp8/int8 weights without unpacking them: fused_dequant_bytes.)
  const double decode_dequant =
      static_cast<double>(w.dequant_bytes) -
      (run.max_batch <= arch::kFusedDecodeMaxRows ? static_cast<double>(w.fused_dequant_bytes) : 0.0);
  auto time_us = [&](double tokens, double context) {
    const double flops = 2.0 * w.matmul_params * tokens + 4.0 * static_cast<double>(w.attn_dim) * batch * context;
    const double dequant = tokens <= batch ? decode_dequant : static_cast<double>(w.dequant_bytes);
    const double bytes = weights_read(tokens) + (cpu ? 0.0 : dequant) + kv_bytes +
                         static_cast<double>(w.act_bytes_per_token) * tokens;
    return std::max(flops / flops_per_s, bytes / bytes_per_s) * 1e6 + overhead_us;
  };
  // A GPU prefill's kernels one after another: the products (their weights read as they go), the attention, the
  // kernels that move activations, the cache and unpacked weights, and the gaps between kernels.
  // Quantized matrices: unpacked first (their stored bytes read, the copy written, at kUnpackEfficiency of the
  // bandwidth), the products reading the copies.
  auto prefill_kernels = [&](double tokens) {
    if (w.prefill_kernels == 0) return w.kernels;
    return w.prefill_kernels + static_cast<uint32_t>(std::lround(
                                   std::round(w.num_experts * experts_hit(tokens)) * w.expert_prompt_kernels));
  };
  auto prefill_gpu_us = [&](double tokens, double context) {
    const double hit = experts_hit(tokens);
    const double products = 2.0 * w.matmul_params * tokens / (kPrefillMatmulEfficiency * flops_per_s);
    const double reads = weights_read(tokens) + static_cast<double>(w.prefill_unpacked_extra_bytes) +
                         static_cast<double>(w.expert_prefill_unpacked_extra_bytes) * hit;
    const double attention =
        4.0 * static_cast<double>(w.attn_dim) * batch * context / (kAttentionEfficiency * flops_per_s);
    const double unpack =
        static_cast<double>(w.prefill_unpack_bytes) + static_cast<double>(w.expert_prefill_unpack_bytes) * hit;
    const uint64_t op_bytes = w.prefill_kernels > 0 ? w.prefill_rescale_bytes_per_token : w.op_bytes_per_token;
    const double moved = kv_bytes + static_cast<double>(w.act_bytes_per_token + op_bytes) * tokens;
    // (Reads at kPrefillReadEfficiency where it was measured: products of unpacked copies; a window's grouped
    // products of experts' copies at kExpertWindowReadEfficiency.)
    const double read_share = w.prefill_kernels > 0 ? kPrefillReadEfficiency : 1.0;
    const double window_reads =
        w.expert_prompt_windows
            ? std::min(reads, (static_cast<double>(w.expert_bytes) +
                               static_cast<double>(w.expert_prefill_unpacked_extra_bytes)) * hit)
            : 0.0;
    const double read_us = (reads - window_reads) / (read_share * bytes_per_s) +
                           window_reads / (kExpertWindowReadEfficiency * bytes_per_s);
    return (std::max(products, read_us) + attention + moved / bytes_per_s +
            unpack / (kUnpackEfficiency * bytes_per_s)) * 1e6 +
           prefill_kernels(tokens) * kPrefillKernelMicros;
  };
  BlockCost cost;
  const double prefill_tokens = batch * seq, prefill_context = seq * (seq + 1) / 2;
  const uint32_t prompt_kernels = cpu ? w.cpu_kernels : prefill_kernels(prefill_tokens);
  const double prefill_host_us = cpu ? 0.0 : HostDispatchMicros(prompt_kernels);
  cost.decode_device_us = time_us(batch, seq);
  cost.prefill_device_us =
      cpu ? time_us(prefill_tokens, prefill_context) : prefill_gpu_us(prefill_tokens, prefill_context);
  cost.host_us = host_us;
  cost.prefill_host_us = prefill_host_us;
  cost.decode_kernels = decode_kernels;
  // Host-bound, the block ends when its last op is dispatched plus that kernel's run (its share of the device time).
  auto block_us = [&](double device_us, double host, uint32_t kernels) {
    return host > 0 ? std::max(device_us, host + device_us / std::max<uint32_t>(1, kernels)) : device_us;
  };
  cost.decode_us = block_us(cost.decode_device_us, host_us, decode_kernels);
  cost.prefill_us = block_us(cost.prefill_device_us, prefill_host_us, prompt_kernels);
  return cost;
}

double HostDispatchMicros(uint32_t kernels) { return kernels * kHostOpMicros; }

double SparseLayerDenseMicros(const ModelDescription& model, size_t index, DType exec_dtype, const RunSize& run,
                              const DeviceProfile& p) {
  const BlockDesc& block = model.blocks[index];
  const ModelConfig& c = model.config;
  const uint64_t e = DTypeBytes(exec_dtype);
  double bytes = 0;
  uint32_t quantized = 0;  // the non-expert matrices stored quantized (read as stored)
  for (const TensorSpec& t : block.params) {
    if (t.name.find(".experts.") != std::string::npos) continue;
    if (t.format != quant::Format::kNone && t.shape.size() == 2) {
      const Result<uint64_t> stored = quant::TensorBytes(t.format, t.shape[0], t.shape[1], t.group);
      if (stored.ok()) {
        bytes += static_cast<double>(*stored);
        ++quantized;
        continue;
      }
    }
    bytes += static_cast<double>(t.numel()) * static_cast<double>(e);
  }
  bytes += 2.0 * c.num_kv_heads * c.head_dim * static_cast<double>(e) * run.max_batch * run.max_seq_len;
  const double gbps = p.device_mem_gbps > 0 ? p.device_mem_gbps : 1e3;
  return bytes / (gbps * 1e3) + SparseLayerDenseKernels(model, index, quantized) * kGpuKernelMicros;
}

uint32_t SparseLayerDenseKernels(const ModelDescription& model, size_t index, uint32_t quantized) {
  const ModelConfig& c = model.config;
  const arch::FamilyInfo* family = arch::FindFamily(model.architecture);
  const arch::FamilyInfo& fam = family ? *family : arch::GetFamily(arch::Family::kLlama);
  // After the attention half: the router's product (with the norm where the products take it), its top k, the
  // residual's add, and a shared expert's ops.
  const uint32_t rest = 3 + (c.shared_expert_intermediate_size > 0 ? 8 : 0);
  if (!arch::FusedKernelsApply(fam, c) || fam.kernels.fused_decode_layer == 0) return fam.kernels.decoder_layer + rest;
  // Quantized products do not take their neighbours into their kernels: the fused layer's kernels one by one.
  return (quantized > 0 ? fam.kernels.fused_decoder_layer : fam.kernels.fused_decode_layer) + rest;
}

double SparseLayerIssueMicros(const ModelDescription& model, size_t index) {
  uint32_t quantized = 0;
  for (const TensorSpec& t : model.blocks[index].params) {
    if (t.name.find(".experts.") == std::string::npos && t.format != quant::Format::kNone) ++quantized;
  }
  // A quantized product is LibTorch calls around its kernel (QuantLinear): one more op each.
  return (SparseLayerDenseKernels(model, index, quantized) + quantized + kExpertIssueOps) * kHostOpMicros;
}

double GraphDecodeMicros(const BlockCost& cost) {
  return cost.decode_device_us - cost.decode_kernels * (kGpuKernelMicros - kGraphKernelMicros);
}

double CopyMicros(uint64_t bytes, schema::Tier source, const DeviceProfile& p) {
  const double b = static_cast<double>(bytes);
  double us = b / (p.h2d_gbps * 1e9) * 1e6;
  if (source == schema::Tier::Disk) us += b / (p.disk_gbps * 1e9) * 1e6;
  return source == schema::Tier::Gpu ? 0.0 : us;
}

double HostGemvGbps(const DeviceProfile& p, quant::Format format) {
  const double measured = format == quant::Format::kFp8E4M3 ? p.cpu_gemv_fp8_gbps
                          : format == quant::Format::kInt8  ? p.cpu_gemv_int8_gbps
                          : format == quant::Format::kInt4  ? p.cpu_gemv_int4_gbps
                                                            : p.cpu_gemv_gbps;
  if (measured > 0) return measured;
  const double bf16 = p.cpu_gemv_gbps > 0 ? p.cpu_gemv_gbps : p.cpu_mem_gbps / 2;
  return bf16 * kHostFormatFactor[static_cast<int>(format)];
}

double HostExpertGbps(const DeviceProfile& p, quant::Format format) {
  return HostGemvGbps(p, format) * (format == quant::Format::kNone ? 1.0 : kHostQuantizedExpertShare);
}

double HostProductMicros(uint64_t bytes, uint32_t tokens, const DeviceProfile& p, quant::Format format) {
  return static_cast<double>(bytes) / (HostGemvGbps(p, format) * 1e9) * 1e6 * std::max(1.0, tokens / 4.0);
}

double H2dGbps(const DeviceProfile& profile, bool beside_host) {
  return beside_host && profile.h2d_busy_gbps > 0 ? profile.h2d_busy_gbps : profile.h2d_gbps;
}

double MixFloorMicros(double copy_bytes, double host_bytes, const DeviceProfile& profile, quant::Format format) {
  const double a = profile.h2d_gbps * 1e3;  // bytes per microsecond
  // (The host's rate for `format` against its bf16 rate, which the alone and beside-copies rates are measured in.)
  const double f = format == quant::Format::kNone || !(profile.cpu_gemv_gbps > 0)
                       ? 1.0
                       : HostGemvGbps(profile, format) / profile.cpu_gemv_gbps;
  const double b = f * (profile.cpu_gemv_alone_gbps > 0 ? profile.cpu_gemv_alone_gbps : profile.cpu_gemv_gbps) * 1e3;
  const double c = H2dGbps(profile, true) * 1e3;
  const double h = f * profile.cpu_gemv_gbps * 1e3;
  const double copy = std::max(0.0, copy_bytes), host = std::max(0.0, host_bytes);
  if (host <= 0) return a > 0 ? copy / a : 0.0;
  if (b <= 0 || h <= 0) return std::numeric_limits<double>::infinity();
  if (copy <= 0) return host / b;
  if (a <= 0) return std::numeric_limits<double>::infinity();
  const double sequential = copy / a + host / b;
  // Both at once until one side is done, then the other alone.
  const double together = copy / c >= host / h ? host / h + (copy - c * host / h) / a
                                                : copy / c + (host - h * copy / c) / b;
  return std::max(std::min(sequential, together), std::max(copy / a, host / b));
}

double UnitCopyMicros(uint64_t bytes, const DeviceProfile& p) {
  return static_cast<double>(bytes) / (p.h2d_gbps * 1e9) * 1e6;
}

double UnitReadMicros(uint64_t file_bytes, const DeviceProfile& p) {
  return static_cast<double>(file_bytes) / (p.disk_gbps * 1e9) * 1e6;
}

ForwardPrediction SimulateForward(const Schedule& s, const std::vector<double>& compute_us,
                                  const std::vector<int32_t>& devices, const DeviceProfile& profile,
                                  const std::vector<double>& host_us, uint32_t host_tokens) {
  ForwardPrediction f;
  const bool host_mode = host_tokens > 0;
  const size_t n = s.steps.size();
  f.step_start.assign(n, 0);
  f.step_end.assign(n, 0);
  // Per device stream: units of each block, copy and read progress.
  struct StreamState {
    const DeviceStreamPlan* plan = nullptr;
    std::vector<double> copy_end, read_end, release;
    size_t next_copy = 0;
    double copy_free = 0, disk_free = 0;
    size_t first_unit = 0;  // index of the stream's first unit in f.copy_start
  };
  std::map<int32_t, StreamState> streams;
  std::map<uint32_t, std::vector<size_t>> units_of_block;  // block -> unit indices in its device's stream
  size_t total_units = 0;
  for (const DeviceStreamPlan& st : s.streams) {
    StreamState& ss = streams[st.device];
    ss.plan = &st;
    ss.copy_end.assign(st.units.size(), 0);
    ss.read_end.assign(st.units.size(), 0);
    ss.release.assign(st.units.size(), 0);
    ss.first_unit = total_units;
    total_units += st.units.size();
    for (size_t u = 0; u < st.units.size(); ++u) units_of_block[st.units[u].block].push_back(u);
  }
  f.copy_start.assign(total_units, 0);
  f.copy_end.assign(total_units, 0);
  // Copies run in unit order on the device's copy stream; a unit waits for its wait_unit's release (this pass, an
  // earlier unit; later units name the previous pass, over by now) and, from disk, for its read, which waits for
  // the H2D copy of the unit whose disk slot it reuses.
  auto ensure_copied = [&](StreamState& ss, size_t upto) {
    const DeviceStreamPlan& st = *ss.plan;
    while (ss.next_copy <= upto && ss.next_copy < st.units.size()) {
      const size_t u = ss.next_copy++;
      const StreamUnitPlan& un = st.units[u];
      if (host_mode && un.host) continue;  // not copied: the host computes its rows
      double ready = 0;
      if (un.wait_unit >= 0 && static_cast<size_t>(un.wait_unit) < u) ready = ss.release[un.wait_unit];
      if (un.source == Tier::kDisk) {
        double slot_free = 0;
        if (un.disk_wait_unit >= 0 && static_cast<size_t>(un.disk_wait_unit) < u)
          slot_free = ss.copy_end[un.disk_wait_unit];
        const double read_start = std::max(ss.disk_free, slot_free);
        ss.read_end[u] = read_start + UnitReadMicros(un.file_bytes, profile);
        ss.disk_free = ss.read_end[u];
        ready = std::max(ready, ss.read_end[u]);
      }
      const double start = std::max(ss.copy_free, ready);
      // While the host computes, it shares host memory with the copies: they run at h2d_busy_gbps.
      const double us = static_cast<double>(un.bytes) / (H2dGbps(profile, host_mode) * 1e9) * 1e6;
      ss.copy_end[u] = start + us;
      ss.copy_free = ss.copy_end[u];
      f.copy_start[ss.first_unit + u] = start;
      f.copy_end[ss.first_unit + u] = ss.copy_end[u];
      f.copy_us += us;
    }
  };
  double prev_end = 0;
  double host_free = 0;
  for (size_t i = 0; i < n; ++i) {
    const uint32_t block = s.steps[i].block;
    const double host = host_us.empty() ? 0.0 : host_us[i];
    host_free += host;
    double start = prev_end;
    double t = 0;
    auto it = streams.find(devices[block]);
    auto ub = units_of_block.find(block);
    if (it != streams.end() && ub != units_of_block.end()) {
      StreamState& ss = it->second;
      const DeviceStreamPlan& st = *ss.plan;
      uint64_t chunk_bytes = 0;
      for (size_t u : ub->second) {
        if (st.units[u].whole) {
          ensure_copied(ss, u);
          start = std::max(start, ss.copy_end[u]);
        } else {
          if (!(host_mode && st.units[u].host)) chunk_bytes += st.units[u].bytes;
        }
      }
      const double total = compute_us[i];
      // A block with chunks runs half of its compute first, the other half spread over its chunks by bytes.
      const double chunk_share = chunk_bytes > 0 ? 0.5 : 0.0;
      t = start + total * (1.0 - chunk_share);
      for (size_t u : ub->second) {
        if (st.units[u].whole) continue;
        ensure_copied(ss, u);
        if (host_mode && st.units[u].host) {
          const bool first = u == 0 || !st.units[u - 1].host || st.units[u - 1].weight != st.units[u].weight ||
                             st.units[u - 1].block != st.units[u].block;
          t += HostProductMicros(st.units[u].bytes, host_tokens, profile, st.units[u].format) +
               (first ? kHostProductMicros : 0.0);
          ss.release[u] = t;
          continue;
        }
        const double ready = ss.copy_end[u];
        if (ready > t) f.compute_stall_us += ready - t;
        t = std::max(t, ready) +
            total * chunk_share * static_cast<double>(st.units[u].bytes) / static_cast<double>(chunk_bytes);
        ss.release[u] = t;
      }
      if (start > prev_end) f.compute_stall_us += start - prev_end;
    } else {
      t = start + compute_us[i];
    }
    f.step_start[i] = start;
    f.step_end[i] = std::max(t, host_free);
    if (it != streams.end() && ub != units_of_block.end()) {
      StreamState& ss = it->second;
      for (size_t u : ub->second)
        if (ss.plan->units[u].whole) ss.release[u] = f.step_end[i];
    }
    f.compute_us += f.step_end[i] - start;
    f.host_us += host;
    prev_end = f.step_end[i];
  }
  f.total_us = prev_end;
  return f;
}

double SimulatePipelinedPass(const std::vector<double>& device_us, const std::vector<int32_t>& devices,
                             const std::vector<double>& hop_us, uint32_t micro_batches, double host_task_us,
                             uint32_t group_size) {
  const size_t n = device_us.size();
  const size_t m = micro_batches;
  if (n == 0 || m == 0) return 0;
  auto hop_of = [&](size_t i) { return i < hop_us.size() ? hop_us[i] : 0.0; };
  // Segments: runs of consecutive steps on one device; each one's device time, device and incoming hop.
  std::vector<double> segment_us, segment_hop;
  std::vector<int32_t> segment_device;
  for (size_t i = 0; i < n; ++i) {
    if (i == 0 || devices[i] != devices[i - 1]) {
      segment_us.push_back(0);
      segment_hop.push_back(i > 0 ? hop_of(i) : 0.0);
      segment_device.push_back(devices[i]);
    }
    segment_us.back() += device_us[i];
  }
  std::map<int32_t, double> device_free;
  for (int32_t d : devices) device_free[d] = 0;
  const size_t group = group_size > 0 ? group_size : m;
  // The tasks in the executor's order, key (k / group, j, k): each waits for its GPU's previous task and for its
  // micro-batch's previous segment and the hop after it; it starts no earlier than the host issued it.
  std::vector<double> previous_end(m, 0);  // each micro-batch's last segment's end
  double issued = 0, last = 0;
  for (size_t first = 0; first < m; first += group) {
    for (size_t j = 0; j < segment_us.size(); ++j) {
      for (size_t k = first; k < std::min(m, first + group); ++k) {
        issued += host_task_us;
        double& free = device_free[segment_device[j]];
        const double ready = std::max(free, j > 0 ? previous_end[k] + segment_hop[j] : 0.0);
        const double end = std::max(ready, issued) + segment_us[j];
        free = end;
        previous_end[k] = end;
        last = std::max(last, end);
      }
    }
  }
  return last;
}

double CopyFloorMicros(const Schedule& s, const DeviceProfile& profile, bool skip_host) {
  double floor = 0;
  for (const DeviceStreamPlan& st : s.streams) {
    double h2d = 0, disk = 0;
    for (const StreamUnitPlan& u : st.units) {
      if (skip_host && u.host) continue;
      h2d += UnitCopyMicros(u.bytes, profile);
      if (u.source == Tier::kDisk) disk += UnitReadMicros(u.file_bytes, profile);
    }
    floor = std::max({floor, h2d, disk});
  }
  return floor;
}

}  // namespace bigplan
