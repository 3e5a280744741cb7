#include "planner/schedule.h"

#include <algorithm>
#include <set>

namespace bigplan {
namespace {

PoolKey DeviceArena(int32_t device) { return PoolKey{schema::Pool::DeviceArena, device}; }
PoolKey Pinned() { return PoolKey{schema::Pool::PinnedHost, -1}; }

bool BytesOverlap(const ScheduledBuffer& a, const ScheduledBuffer& b) {
  if (a.request.size == 0 || b.request.size == 0) return false;
  return a.offset < b.offset + b.request.size && b.offset < a.offset + a.request.size;
}

}  // namespace

Result<Schedule> BuildSchedule(const std::vector<ScheduleBlock>& blocks, const ScheduleOptions& options) {
  if (blocks.empty()) return MakeError(ErrorCode::kInvalidArgument, "schedule: the model has no blocks");
  if (options.cpu_prefetch_depth == 0 || options.disk_prefetch_depth == 0)
    return MakeError(ErrorCode::kInvalidArgument, "schedule: prefetch depth must be at least 1");
  const uint32_t n = static_cast<uint32_t>(blocks.size());
  const uint32_t last = n - 1;

  Schedule s;
  s.cpu_prefetch_depth = options.cpu_prefetch_depth;
  s.disk_prefetch_depth = options.disk_prefetch_depth;
  s.block_buffers.assign(n, {});
  s.copy_of_block.assign(n, -1);
  s.steps.resize(n);
  for (uint32_t i = 0; i < n; ++i) s.steps[i].block = i;

  // Issue steps of the streamed blocks' copies.
  std::vector<uint32_t> streamed;
  for (uint32_t i = 0; i < n; ++i)
    if (IsStreamed(blocks[i].tier)) streamed.push_back(i);
  std::vector<uint32_t> issue(n, 0);
  uint32_t previous_issue = 0;
  for (size_t k = 0; k < streamed.size(); ++k) {
    const ScheduleBlock& b = blocks[streamed[k]];
    const uint32_t d = b.tier == schema::Tier::Disk ? options.disk_prefetch_depth : options.cpu_prefetch_depth;
    uint32_t step = k >= d ? streamed[k - d] : 0;
    step = std::max(step, previous_issue);
    issue[streamed[k]] = step;
    previous_issue = step;
  }

  auto add = [&](const std::string& name, schema::BufferKind kind, int32_t block, uint64_t size, uint32_t first,
                 uint32_t last_step, PoolKey pool) -> int32_t {
    ScheduledBuffer buf;
    buf.request.name = name;
    buf.request.size = size;
    buf.request.alignment = kBufferAlignment;
    buf.request.first_step = first;
    buf.request.last_step = last_step;
    buf.request.pool = pool;
    buf.kind = kind;
    buf.block = block;
    s.buffers.push_back(std::move(buf));
    return static_cast<int32_t>(s.buffers.size() - 1);
  };

  std::set<int32_t> devices;
  for (uint32_t i = 0; i < n; ++i) {
    const ScheduleBlock& b = blocks[i];
    devices.insert(b.device);
    BlockBuffers& bb = s.block_buffers[i];
    switch (b.tier) {
      case schema::Tier::Gpu:
        bb.home = add(b.name + ".weights", schema::BufferKind::ResidentWeights, i, b.weight_bytes, 0, last,
                      DeviceArena(b.device));
        break;
      case schema::Tier::Cpu:
        bb.home = add(b.name + ".host_weights", schema::BufferKind::HostWeights, i, b.weight_bytes, 0, last, Pinned());
        bb.staging = add(b.name + ".staging", schema::BufferKind::Staging, i, b.weight_bytes, issue[i], i,
                         DeviceArena(b.device));
        break;
      case schema::Tier::Disk:
        bb.staging = add(b.name + ".staging", schema::BufferKind::Staging, i, b.weight_bytes, issue[i], i,
                         DeviceArena(b.device));
        bb.disk_staging = add(b.name + ".disk_staging", schema::BufferKind::DiskStaging, i, b.weight_bytes,
                              issue[i], i, Pinned());
        break;
    }
    if (b.kv_bytes > 0)
      bb.kv = add(b.name + ".kv", schema::BufferKind::KvCache, i, b.kv_bytes, 0, last, DeviceArena(b.device));
    if (IsStreamed(b.tier)) {
      ScheduledCopy c;
      c.block = i;
      c.source = b.tier;
      c.issue_step = issue[i];
      c.bytes = b.weight_bytes;
      s.copy_of_block[i] = static_cast<int32_t>(s.copies.size());
      s.steps[issue[i]].copies.push_back(static_cast<uint32_t>(s.copies.size()));
      s.copies.push_back(std::move(c));
    }
  }
  for (int32_t device : devices) {
    auto it = options.activation_bytes.find(device);
    const uint64_t bytes = it == options.activation_bytes.end() ? 0 : it->second;
    add("activations." + PoolName(DeviceArena(device)), schema::BufferKind::Activations, -1, bytes, 0, last,
        DeviceArena(device));
  }

  std::vector<BufferRequest> requests;
  requests.reserve(s.buffers.size());
  for (const ScheduledBuffer& b : s.buffers) requests.push_back(b.request);
  BIGPLAN_ASSIGN_OR_RETURN(s.memory, PlanMemory(requests, options.memory_algorithm));
  for (size_t i = 0; i < s.buffers.size(); ++i) s.buffers[i].offset = s.memory.offsets[i];

  for (uint32_t b = 0; b < s.buffers.size(); ++b) s.steps[s.buffers[b].request.last_step].frees.push_back(b);
  ComputeCopyDependencies(&s);
  return s;
}

void ComputeCopyDependencies(Schedule* s) {
  // Buffers grouped by pool, so each copy scans only its own pool.
  std::map<PoolKey, std::vector<uint32_t>> by_pool;
  for (uint32_t i = 0; i < s->buffers.size(); ++i) by_pool[s->buffers[i].request.pool].push_back(i);
  for (ScheduledCopy& c : s->copies) {
    const BlockBuffers& bb = s->block_buffers[c.block];
    const uint32_t i = c.issue_step;
    std::set<uint32_t> steps;
    const ScheduledBuffer& dst = s->buffers[bb.staging];
    for (uint32_t other : by_pool[dst.request.pool]) {
      if (other == static_cast<uint32_t>(bb.staging)) continue;
      const ScheduledBuffer& o = s->buffers[other];
      if (o.request.last_step < i && BytesOverlap(dst, o)) steps.insert(o.request.last_step);
    }
    c.wait_compute_steps.assign(steps.begin(), steps.end());
    std::set<uint32_t> copy_blocks;
    if (bb.disk_staging >= 0) {
      const ScheduledBuffer& ds = s->buffers[bb.disk_staging];
      for (uint32_t other : by_pool[ds.request.pool]) {
        const ScheduledBuffer& o = s->buffers[other];
        if (other == static_cast<uint32_t>(bb.disk_staging) || o.kind != schema::BufferKind::DiskStaging) continue;
        if (o.request.last_step < i && BytesOverlap(ds, o)) copy_blocks.insert(static_cast<uint32_t>(o.block));
      }
    }
    c.wait_copy_blocks.assign(copy_blocks.begin(), copy_blocks.end());
  }
}

}  // namespace bigplan
