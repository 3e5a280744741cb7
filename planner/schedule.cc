#include "planner/schedule.h"

#include <algorithm>

namespace bigplan {
namespace {

PoolKey DeviceArena(int32_t device) { return PoolKey{schema::Pool::DeviceArena, device}; }
PoolKey Pinned() { return PoolKey{schema::Pool::PinnedHost, -1}; }

std::string DeviceName(int32_t device) { return device < 0 ? "cpu" : "cuda:" + std::to_string(device); }

}  // namespace

Result<Schedule> BuildSchedule(const std::vector<ScheduleBlock>& blocks, std::vector<DeviceStreamPlan> streams,
                               const ScheduleOptions& options) {
  if (blocks.empty()) return MakeError(ErrorCode::kInvalidArgument, "schedule: the model has no blocks");
  const uint32_t n = static_cast<uint32_t>(blocks.size());
  const uint32_t last = n - 1;
  Schedule s;
  s.block_buffers.assign(n, {});
  s.steps.resize(n);
  for (uint32_t i = 0; i < n; ++i) s.steps[i].block = i;
  auto add = [&](const std::string& name, schema::BufferKind kind, int32_t block, uint64_t size, PoolKey pool,
                 uint64_t alignment = kBufferAlignment) -> int32_t {
    ScheduledBuffer buf;
    buf.request.name = name;
    buf.request.size = size;
    buf.request.alignment = alignment;
    buf.request.first_step = 0;
    buf.request.last_step = last;
    buf.request.pool = pool;
    buf.kind = kind;
    buf.block = block;
    s.buffers.push_back(std::move(buf));
    return static_cast<int32_t>(s.buffers.size() - 1);
  };
  for (uint32_t i = 0; i < n; ++i) {
    const ScheduleBlock& b = blocks[i];
    BlockBuffers& bb = s.block_buffers[i];
    if (b.resident_bytes > 0)
      bb.home = add(b.name + ".weights", schema::BufferKind::ResidentWeights, i, b.resident_bytes, DeviceArena(b.device));
    if (b.host_bytes > 0)
      bb.host = add(b.name + ".host", schema::BufferKind::HostWeights, i, b.host_bytes, Pinned());
    if (b.kv_bytes > 0) bb.kv = add(b.name + ".kv", schema::BufferKind::KvCache, i, b.kv_bytes, DeviceArena(b.device));
  }
  std::vector<int32_t> devices;
  for (const ScheduleBlock& b : blocks)
    if (std::find(devices.begin(), devices.end(), b.device) == devices.end()) devices.push_back(b.device);
  std::sort(devices.begin(), devices.end());
  for (int32_t d : devices) {
    auto it = options.activation_bytes.find(d);
    const uint64_t bytes = it == options.activation_bytes.end() ? 0 : it->second;
    if (bytes > 0) add("activations." + DeviceName(d), schema::BufferKind::Activations, -1, bytes, DeviceArena(d));
  }
  std::sort(streams.begin(), streams.end(),
            [](const DeviceStreamPlan& a, const DeviceStreamPlan& b) { return a.device < b.device; });
  for (const DeviceStreamPlan& st : streams) {
    if (st.units.empty()) continue;
    s.ring_buffer[st.device] =
        add("ring." + DeviceName(st.device), schema::BufferKind::Staging, -1, st.ring_bytes, DeviceArena(st.device));
    if (st.disk_ring_bytes > 0) {
      s.disk_ring_buffer[st.device] = add("disk_ring." + DeviceName(st.device), schema::BufferKind::DiskStaging, -1,
                                          st.disk_ring_bytes, Pinned(), kDiskSlotAlignment);
    }
  }
  for (const auto& [device, bytes] : options.expert_rings) {
    if (bytes.first > 0) {
      s.expert_ring_buffer[device] = add("expert_ring." + DeviceName(device), schema::BufferKind::ExpertStaging, -1,
                                         bytes.first, DeviceArena(device));
    }
    if (bytes.second > 0) {
      s.expert_disk_ring_buffer[device] = add("expert_disk_ring." + DeviceName(device),
                                              schema::BufferKind::ExpertDiskStaging, -1, bytes.second, Pinned(),
                                              kDiskSlotAlignment);
    }
  }
  s.streams = std::move(streams);
  std::vector<BufferRequest> requests;
  for (const ScheduledBuffer& b : s.buffers) requests.push_back(b.request);
  BIGPLAN_ASSIGN_OR_RETURN(s.memory, PlanMemory(requests, options.memory_algorithm));
  for (size_t i = 0; i < s.buffers.size(); ++i) {
    s.buffers[i].offset = s.memory.offsets[i];
    s.steps[last].frees.push_back(static_cast<uint32_t>(i));
  }
  return s;
}

}  // namespace bigplan
