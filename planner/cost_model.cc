#include "planner/cost_model.h"

#include <algorithm>
#include <map>

#include "arch/registry.h"
#include "planner/accounting.h"

namespace bigplan {

BlockWork DescribeBlockWork(const ModelDescription& model, size_t index, DType exec_dtype) {
  const BlockDesc& block = model.blocks[index];
  const ModelConfig& c = model.config;
  const uint64_t e = DTypeBytes(exec_dtype);
  BlockWork w;
  w.weight_bytes = BlockWeightBytes(model, index, exec_dtype);
  double matrix_params = 0;
  auto count = [&](const TensorSpec& t) {
    if (t.shape.size() >= 2) matrix_params += static_cast<double>(t.numel());
  };
  for (const TensorSpec& p : block.params) count(p);
  for (const std::string& name : block.tied)
    if (const TensorSpec* p = model.FindParam(name)) count(*p);
  // The registry's kernel counts for the family (a validated description always names one).
  const arch::FamilyInfo* family = arch::FindFamily(model.architecture);
  w.kernels = arch::BlockKernels(family ? *family : arch::GetFamily(arch::Family::kLlama), block.kind, c);
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
      break;
    case BlockKind::kPositionEmbedding:
      w.act_bytes_per_token = 2ull * c.hidden_size * e + 8;
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
  const double overhead_us = w.kernels * (cpu ? kCpuOpMicros : kGpuKernelMicros);
  const double host_us = cpu ? 0.0 : HostDispatchMicros(w);
  const double batch = run.max_batch;
  const double seq = run.max_seq_len;
  const double kv_bytes = static_cast<double>(w.kv_bytes_per_token) * batch * seq;
  auto time_us = [&](double tokens, double context) {
    const double flops = 2.0 * w.matmul_params * tokens + 4.0 * static_cast<double>(w.attn_dim) * batch * context;
    const double bytes = static_cast<double>(w.weight_bytes) + kv_bytes +
                         static_cast<double>(w.act_bytes_per_token) * tokens;
    return std::max(flops / flops_per_s, bytes / bytes_per_s) * 1e6 + overhead_us;
  };
  BlockCost cost;
  cost.decode_device_us = time_us(batch, seq);
  cost.prefill_device_us = time_us(batch * seq, seq * (seq + 1) / 2);
  cost.host_us = host_us;
  // Host-bound, the block ends when its last op is dispatched plus that kernel's run (its share of the device time).
  auto block_us = [&](double device_us) {
    return host_us > 0 ? std::max(device_us, host_us + device_us / std::max<uint32_t>(1, w.kernels)) : device_us;
  };
  cost.decode_us = block_us(cost.decode_device_us);
  cost.prefill_us = block_us(cost.prefill_device_us);
  return cost;
}

double HostDispatchMicros(const BlockWork& w) { return w.kernels * kHostOpMicros; }

double GraphDecodeMicros(const BlockCost& cost, const BlockWork& w) {
  return cost.decode_device_us - w.kernels * (kGpuKernelMicros - kGraphKernelMicros);
}

double CopyMicros(uint64_t bytes, schema::Tier source, const DeviceProfile& p) {
  const double b = static_cast<double>(bytes);
  double us = b / (p.h2d_gbps * 1e9) * 1e6;
  if (source == schema::Tier::Disk) us += b / (p.disk_gbps * 1e9) * 1e6;
  return source == schema::Tier::Gpu ? 0.0 : us;
}

ForwardPrediction SimulateForward(const Schedule& s, const std::vector<double>& compute_us,
                                  const std::vector<double>& copy_us, const std::vector<int32_t>& devices,
                                  const std::vector<double>& host_us) {
  ForwardPrediction f;
  const size_t n = s.steps.size();
  f.step_start.assign(n, 0);
  f.step_end.assign(n, 0);
  f.copy_start.assign(s.copies.size(), 0);
  f.copy_end.assign(s.copies.size(), 0);
  std::map<int32_t, double> stream_free;  // copy stream of each destination device
  std::vector<bool> dependency_held(s.copies.size(), false);  // the stream idled before it, waiting on a dependency
  double prev_end = 0;
  double host_free = 0;  // when the host thread finished dispatching the previous step
  for (size_t i = 0; i < n; ++i) {
    const double host = host_us.empty() ? 0.0 : host_us[i];
    for (uint32_t ci : s.steps[i].copies) {
      const ScheduledCopy& c = s.copies[ci];
      double& free_at = stream_free[devices[c.block]];
      double ready = 0;
      for (uint32_t w : c.wait_compute_steps) ready = std::max(ready, f.step_end[w]);
      for (uint32_t b : c.wait_copy_blocks) {
        const int32_t other = s.copy_of_block[b];
        if (other >= 0) ready = std::max(ready, f.copy_end[other]);
      }
      const double start = std::max(free_at, ready);
      dependency_held[ci] = ready > free_at;
      f.copy_start[ci] = start;
      f.copy_end[ci] = start + copy_us[ci];
      free_at = f.copy_end[ci];
      f.copy_us += copy_us[ci];
    }
    double start = prev_end;
    const int32_t ci = s.copy_of_block[s.steps[i].block];
    if (ci >= 0) {
      if (f.copy_end[ci] > prev_end) {
        f.compute_stall_us += f.copy_end[ci] - prev_end;
        start = f.copy_end[ci];
        if (dependency_held[ci]) {
          if (s.copies[ci].source == schema::Tier::Disk) ++f.held_disk_copies;
          else ++f.held_cpu_copies;
        }
      }
    }
    // The step cannot end before the host has dispatched its last op. (Its start needs no host term: the host began
    // dispatching it when it finished the previous step's ops, and the previous step ended no earlier.)
    host_free += host;
    f.step_start[i] = start;
    f.step_end[i] = std::max(start + compute_us[i], host_free);
    f.compute_us += f.step_end[i] - start;
    f.host_us += host;
    prev_end = f.step_end[i];
  }
  f.total_us = prev_end;
  return f;
}

double CopyFloorMicros(const Schedule& s, const std::vector<double>& copy_us, const std::vector<int32_t>& devices) {
  std::map<int32_t, double> per_device;
  for (size_t i = 0; i < s.copies.size(); ++i) per_device[devices[s.copies[i].block]] += copy_us[i];
  double floor = 0;
  for (const auto& [device, us] : per_device) floor = std::max(floor, us);
  return floor;
}

}  // namespace bigplan
