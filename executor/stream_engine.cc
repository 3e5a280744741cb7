#include "executor/stream_engine.h"

#include <algorithm>
#include <cstring>
#include <functional>

namespace bigplan::executor_internal {
namespace {

Status Cuda(cudaError_t err, const std::string& what) { return CudaStatus(static_cast<int>(err), what); }

std::string UnitName(const ModelState& state, const UnitRuntime& u) {
  const WeightRuntime& w = state.blocks[u.block].weights[u.weight];
  if (u.whole) return w.name;
  return w.name + "[" + std::to_string(u.row_begin) + ":" + std::to_string(u.row_end) + "]";
}

}  // namespace

struct StreamEngine::Stream {
  int32_t index = 0;
  StreamRuntime* rt = nullptr;
  bool gpu = false;
  int device = -1;
  CudaStream copy;
  cudaStream_t compute = nullptr;  // its device's compute stream (owned by devices_)
  std::vector<CudaEvent> ready, release, copy_start, copy_end;  // per unit (copy_*: empty without timing)
  // Per unit, the pass (generation) of its latest copy issue, release and disk read (guarded by mu_).
  std::vector<uint64_t> issued, released, read;
  // Per unit, the pass in which it was skipped (a host unit of a host-compute pass: not copied; guarded by mu_).
  std::vector<uint64_t> skipped;
  // Per unit, the pass of its latest acquire (compute thread only).
  std::vector<uint64_t> acquired;
  std::vector<const uint8_t*> h2d_source;  // Disk units: where the read put the unit's bytes
  std::vector<const uint8_t*> data;        // where each unit's bytes are for the current step
  std::vector<double> read_start, read_end;
  std::vector<int> read_worker;
  std::vector<int> read_path;  // 0 direct, 1 bounce (cast), 2 plain
  uint64_t done = 0;           // the last pass the copy thread finished
  uint32_t next_inline = 0;    // inline passes: the next unit to issue
  CudaEvent fork, join;        // inline passes: the copy stream after the pass's stream, and back
};

StreamEngine::StreamEngine(ModelState* state, const StreamEngineOptions& options) : state_(state), options_(options) {}

Result<std::unique_ptr<StreamEngine>> StreamEngine::Create(ModelState* state, const StreamEngineOptions& options) {
  std::unique_ptr<StreamEngine> engine(new StreamEngine(state, options));
  BIGPLAN_RETURN_IF_ERROR(engine->Init());
  return engine;
}

Status StreamEngine::Init() {
  const bool gpu = !state_->cuda_devices.empty();
  const size_t nsteps = state_->steps.size();
  step_start_.resize(nsteps);
  step_end_.resize(nsteps);
  step_wall_start_.assign(nsteps, 0);
  step_wall_end_.assign(nsteps, 0);
  if (gpu) {
    for (int device : state_->cuda_devices) {
      Device d;
      d.device = device;
      const std::string where = "cuda:" + std::to_string(device);
      BIGPLAN_ASSIGN_OR_RETURN(d.compute, CudaStream::Create(device, "the compute stream of " + where));
      BIGPLAN_ASSIGN_OR_RETURN(d.forward_start, CudaEvent::Create(device, true, "the forward start event of " + where));
      devices_.push_back(std::move(d));
    }
    for (size_t i = 0; i < nsteps; ++i) {
      const BlockRuntime& b = state_->blocks[state_->steps[i].block];
      if (b.device < 0 || !options_.timing) continue;
      const std::string what = "step " + std::to_string(i) + " (" + b.name + ")";
      BIGPLAN_ASSIGN_OR_RETURN(step_start_[i], CudaEvent::Create(b.device, true, "the start event of " + what));
      BIGPLAN_ASSIGN_OR_RETURN(step_end_[i], CudaEvent::Create(b.device, true, "the end event of " + what));
    }
  }
  bool any_disk = false;
  for (size_t si = 0; si < state_->streams.size(); ++si) {
    auto s = std::make_unique<Stream>();
    s->index = static_cast<int32_t>(si);
    s->rt = &state_->streams[si];
    s->device = s->rt->device;
    s->gpu = s->device >= 0;
    const size_t n = s->rt->units.size();
    s->issued.assign(n, 0);
    s->released.assign(n, 0);
    s->read.assign(n, 0);
    s->skipped.assign(n, 0);
    s->acquired.assign(n, 0);
    s->h2d_source.assign(n, nullptr);
    s->data.assign(n, nullptr);
    s->read_start.assign(n, 0);
    s->read_end.assign(n, 0);
    s->read_worker.assign(n, -1);
    s->read_path.assign(n, -1);
    if (s->gpu) {
      BIGPLAN_ASSIGN_OR_RETURN(s->copy, CudaStream::Create(s->device, "the copy stream of cuda:" +
                                                                           std::to_string(s->device)));
      for (const Device& d : devices_)
        if (d.device == s->device) s->compute = d.compute.get();
      BIGPLAN_ASSIGN_OR_RETURN(s->fork, CudaEvent::Create(s->device, false, "an inline pass's fork event"));
      BIGPLAN_ASSIGN_OR_RETURN(s->join, CudaEvent::Create(s->device, false, "an inline pass's join event"));
      s->ready.resize(n);
      s->release.resize(n);
      s->copy_start.resize(n);
      s->copy_end.resize(n);
      for (size_t u = 0; u < n; ++u) {
        const std::string what = UnitName(*state_, s->rt->units[u]);
        BIGPLAN_ASSIGN_OR_RETURN(s->ready[u], CudaEvent::Create(s->device, false, "the ready event of " + what));
        BIGPLAN_ASSIGN_OR_RETURN(s->release[u], CudaEvent::Create(s->device, false, "the release event of " + what));
        if (options_.timing) {
          BIGPLAN_ASSIGN_OR_RETURN(s->copy_start[u], CudaEvent::Create(s->device, true, "the copy start of " + what));
          BIGPLAN_ASSIGN_OR_RETURN(s->copy_end[u], CudaEvent::Create(s->device, true, "the copy end of " + what));
        }
        s->data[u] = s->rt->units[u].ring;
        any_disk |= s->rt->units[u].source == schema::Tier::Disk;
      }
    }
    streams_.push_back(std::move(s));
  }
  // Shard readers (disk units computed on a GPU; cast disk units on the CPU) and the disk read jobs (GPU streams),
  // in step order.
  if (any_disk || options_.disk_direct_io) {
    readers_.resize(state_->shards.size());
    std::vector<std::pair<uint32_t, std::pair<Stream*, uint32_t>>> jobs;
    for (auto& s : streams_) {
      for (uint32_t u = 0; u < s->rt->units.size(); ++u) {
        const UnitRuntime& un = s->rt->units[u];
        if (un.source != schema::Tier::Disk) continue;
        if (!s->gpu && (!un.cast || !options_.disk_direct_io)) continue;
        if (s->gpu && un.disk_slot == nullptr) {
          return MakeError(ErrorCode::kCorrupt, "a disk unit of " + UnitName(*state_, un) + " has no disk ring slot");
        }
        if (readers_[un.shard_index] == nullptr && options_.disk_direct_io) {
          const MappedFile* shard = state_->shards[un.shard_index].get();
          BIGPLAN_ASSIGN_OR_RETURN(ShardReader reader, ShardReader::Open(shard->path(), options_.disk_direct_io));
          readers_[un.shard_index] = std::make_unique<ShardReader>(std::move(reader));
        }
        if (s->gpu) jobs.push_back({state_->blocks[un.block].step, {s.get(), u}});
      }
    }
    std::stable_sort(jobs.begin(), jobs.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    for (const auto& j : jobs) read_jobs_.push_back(j.second);
  }
  for (auto& s : streams_) {
    if (s->gpu) threads_.emplace_back([this, p = s.get()] { CopyLoop(p); });
  }
  if (!read_jobs_.empty()) {
    const int workers = options_.disk_workers > 0 ? options_.disk_workers : 4;
    for (int w = 0; w < workers; ++w) threads_.emplace_back([this, w] { ReadLoop(w); });
    // Up to 3 helpers per worker for the pieces of large direct reads (a worker reads one piece itself).
    if (options_.disk_direct_io) read_pieces_ = std::make_unique<WorkerPool>(3 * workers);
  }
  return Status::Ok();
}

StreamEngine::~StreamEngine() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  for (std::thread& t : threads_) t.join();
  read_pieces_.reset();
  // Work queued on the streams finishes before the events and streams (owned by the members) are destroyed.
  for (const Device& d : devices_) {
    cudaSetDevice(d.device);
    cudaDeviceSynchronize();
  }
  streams_.clear();
  step_start_.clear();
  step_end_.clear();
  devices_.clear();
}

cudaStream_t StreamEngine::compute_stream(int device) const {
  for (const Device& d : devices_)
    if (d.device == device) return d.compute.get();
  return nullptr;
}

std::string StreamEngine::disk_read_mode() const {
  for (const auto& r : readers_)
    if (r != nullptr) return r->direct() ? "o_direct" : "pread+dontneed";
  for (const auto& s : streams_)
    for (const UnitRuntime& u : s->rt->units)
      if (u.source == schema::Tier::Disk) return "mmap";
  return "";
}

double StreamEngine::WallUs() const {
  return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - wall_start_).count();
}

void StreamEngine::Fail(const Status& status) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (error_.ok()) error_ = status;
    abort_ = true;
  }
  cv_.notify_all();
}

Status StreamEngine::IssueCopy(Stream* s, uint32_t u) {
  const UnitRuntime& un = s->rt->units[u];
  cudaStream_t copy = s->copy.get();
  Status st;
  if (un.wait_unit >= 0) {
    st = Cuda(cudaStreamWaitEvent(copy, s->release[un.wait_unit].get(), 0), "cudaStreamWaitEvent");
  }
  const uint8_t* src = un.source == schema::Tier::Cpu ? un.host : s->h2d_source[u];
  if (st.ok() && options_.timing) st = Cuda(cudaEventRecord(s->copy_start[u].get(), copy), "cudaEventRecord");
  if (st.ok()) {
    st = Cuda(cudaMemcpyAsync(un.ring, src, un.bytes, cudaMemcpyHostToDevice, copy),
              "copying " + UnitName(*state_, un) + " to cuda:" + std::to_string(s->device));
  }
  if (st.ok() && options_.timing) st = Cuda(cudaEventRecord(s->copy_end[u].get(), copy), "cudaEventRecord");
  if (st.ok()) st = Cuda(cudaEventRecord(s->ready[u].get(), copy), "cudaEventRecord");
  return st;
}

void StreamEngine::CopyLoop(Stream* s) {
  uint64_t gen = 0;
  bool host_pass = false;
  const std::vector<UnitRuntime>& units = s->rt->units;
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stop_ || forward_gen_ > gen; });
      if (stop_) return;
      gen = forward_gen_;
      host_pass = host_pass_ == gen;
    }
    Status st = Cuda(cudaSetDevice(s->device), "cudaSetDevice");
    for (uint32_t u = 0; u < units.size() && st.ok(); ++u) {
      const UnitRuntime& un = units[u];
      const int32_t w = un.wait_unit;
      const bool this_pass = w >= 0 && static_cast<uint32_t>(w) < u;
      if (un.host_compute && host_pass) {
        // The host computes these rows in this pass: nothing to copy and nothing to wait for (its release still
        // comes at its place in the compute order, so the units that reuse its ring bytes wait as planned).
        {
          std::lock_guard<std::mutex> lock(mu_);
          if (s->issued[u] == gen) continue;
          s->skipped[u] = gen;
          s->issued[u] = gen;
        }
        cv_.notify_all();
        continue;
      }
      {
        std::unique_lock<std::mutex> lock(mu_);
        if (s->issued[u] == gen) continue;  // copied ahead, while the previous pass finished (RunAhead)
        cv_.wait(lock, [&] {
          return stop_ || abort_ ||
                 ((!this_pass || s->released[w] == gen) && (un.source != schema::Tier::Disk || s->read[u] == gen));
        });
        if (stop_ || abort_) break;
      }
      st = IssueCopy(s, u);
      if (!st.ok()) break;
      {
        std::lock_guard<std::mutex> lock(mu_);
        s->issued[u] = gen;
      }
      cv_.notify_all();
    }
    if (!st.ok()) Fail(st);
    {
      std::lock_guard<std::mutex> lock(mu_);
      s->done = gen;
    }
    cv_.notify_all();
    if (st.ok()) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (gen_ != gen) continue;  // an inline pass began: no run-ahead
        ++ahead_running_;
      }
      RunAhead(s, gen, host_pass);
      {
        std::lock_guard<std::mutex> lock(mu_);
        --ahead_running_;
      }
      cv_.notify_all();
    }
  }
}

void StreamEngine::RunAhead(Stream* s, uint64_t gen, bool host_pass) {
  // The leading units of the next pass whose ring bytes were last used in pass `gen` (wait_unit >= their index)
  // and whose bytes are in the pinned pool: each is copied once its predecessor's release in pass `gen` has been
  // recorded, so the copy stream stays busy through this pass's last computations and the host's turn between
  // passes. The first unit that depends on the next pass's compute (or a disk read) ends the run; so does the
  // next pass beginning (its loop issues the rest) or a failure (its loop retries the unit and reports).
  const std::vector<UnitRuntime>& units = s->rt->units;
  const uint64_t next = gen + 1;
  for (uint32_t u = 0; u < units.size(); ++u) {
    const UnitRuntime& un = units[u];
    const int32_t w = un.wait_unit;
    // (w < 0 never comes from the planner, whose cyclic order makes a unit at least its own predecessor; such a
    // unit could be copied again before this pass's kernels acquired it, so it ends the run too.)
    if (un.source != schema::Tier::Cpu || w < 0 || static_cast<uint32_t>(w) < u) return;
    // A host unit after a host-compute pass: the next pass is most likely a decode step that skips it (a prefill
    // copies it in its own loop).
    if (un.host_compute && host_pass) return;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stop_ || gen_ != gen || s->released[w] == gen; });
      if (stop_ || gen_ != gen) return;
    }
    if (!IssueCopy(s, u).ok()) return;
    {
      std::lock_guard<std::mutex> lock(mu_);
      s->issued[u] = next;
    }
    cv_.notify_all();
  }
}

bool StreamEngine::CanInline() const {
  if (streams_.empty()) return false;
  for (const auto& s : streams_) {
    if (!s->gpu) return false;
    for (const UnitRuntime& un : s->rt->units) {
      if (un.source != schema::Tier::Cpu || un.host_compute) return false;
    }
  }
  return true;
}

void StreamEngine::StopRunAhead() {
  std::unique_lock<std::mutex> lock(mu_);
  ++gen_;  // the run-ahead stops at its next unit, and what it copied (marked for the pass after) no longer counts
  cv_.notify_all();
  cv_.wait(lock, [&] { return ahead_running_ == 0; });
}

Status StreamEngine::JoinCopies(cudaStream_t stream) {
  Status status;
  for (const auto& s : streams_) {
    if (!s->gpu) continue;
    Status st = Cuda(cudaEventRecord(s->join.get(), s->copy.get()), "cudaEventRecord");
    if (st.ok()) st = Cuda(cudaStreamWaitEvent(stream, s->join.get(), 0), "cudaStreamWaitEvent");
    if (status.ok() && !st.ok()) status = std::move(st);
  }
  return status;
}

Status StreamEngine::Quiesce(cudaStream_t stream) {
  StopRunAhead();
  return JoinCopies(stream);
}

Status StreamEngine::BeginInline(cudaStream_t stream) {
  if (!CanInline()) return MakeError(ErrorCode::kInternal, "inline passes need GPU streams of pinned units only");
  if (inline_ != nullptr) return MakeError(ErrorCode::kInternal, "an inline pass is already under way");
  StopRunAhead();
  {
    std::lock_guard<std::mutex> lock(mu_);
    abort_ = false;
    error_ = Status::Ok();
  }
  cudaStreamCaptureStatus capturing = cudaStreamCaptureStatusNone;
  BIGPLAN_RETURN_IF_ERROR(Cuda(cudaStreamIsCapturing(stream, &capturing), "cudaStreamIsCapturing"));
  if (capturing != cudaStreamCaptureStatusNone) events_captured_ = true;
  hold_chunks_ = false;
  cpu_bytes_ = disk_bytes_ = disk_h2d_bytes_ = disk_read_bytes_ = host_bytes_ = 0;
  units_ = 0;
  for (const auto& s : streams_) {
    s->next_inline = 0;
    BIGPLAN_RETURN_IF_ERROR(Cuda(cudaEventRecord(s->fork.get(), stream), "cudaEventRecord"));
    BIGPLAN_RETURN_IF_ERROR(Cuda(cudaStreamWaitEvent(s->copy.get(), s->fork.get(), 0), "cudaStreamWaitEvent"));
  }
  inline_ = stream;
  return Status::Ok();
}

Status StreamEngine::IssueInline(Stream* s, uint32_t upto) {
  const std::vector<UnitRuntime>& units = s->rt->units;
  cudaStream_t copy = s->copy.get();
  for (; s->next_inline <= upto; ++s->next_inline) {
    const uint32_t u = s->next_inline;
    const UnitRuntime& un = units[u];
    const int32_t w = un.wait_unit;
    if (w >= 0 && static_cast<uint32_t>(w) < u) {
      bool released;
      {
        std::lock_guard<std::mutex> lock(mu_);
        released = s->released[w] == gen_;
      }
      if (!released) {
        return MakeError(ErrorCode::kInternal, "inline pass: " + UnitName(*state_, un) +
                                                   " would wait for a release that comes after its use");
      }
      BIGPLAN_RETURN_IF_ERROR(Cuda(cudaStreamWaitEvent(copy, s->release[w].get(), 0), "cudaStreamWaitEvent"));
    }
    BIGPLAN_RETURN_IF_ERROR(Cuda(cudaMemcpyAsync(un.ring, un.host, un.bytes, cudaMemcpyHostToDevice, copy),
                                 "copying " + UnitName(*state_, un) + " to cuda:" + std::to_string(s->device)));
    BIGPLAN_RETURN_IF_ERROR(Cuda(cudaEventRecord(s->ready[u].get(), copy), "cudaEventRecord"));
    std::lock_guard<std::mutex> lock(mu_);
    s->issued[u] = gen_;
  }
  return Status::Ok();
}

Status StreamEngine::EndInline() {
  if (inline_ == nullptr) return MakeError(ErrorCode::kInternal, "no inline pass under way");
  cudaStream_t stream = inline_;
  inline_ = nullptr;
  return JoinCopies(stream);
}

void StreamEngine::ReadLoop(int worker) {
  uint64_t gen = 0;
  bool set_device = false;
  for (;;) {
    Stream* s = nullptr;
    uint32_t u = 0;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stop_ || (gen_ > 0 && !abort_ && next_read_ < read_jobs_.size()) || gen_ > gen; });
      if (stop_) return;
      gen = gen_;
      if (abort_ || next_read_ >= read_jobs_.size()) continue;
      std::tie(s, u) = read_jobs_[next_read_++];
      ++readers_busy_;
    }
    if (!set_device) {
      cudaSetDevice(s->device);
      set_device = true;
    }
    Status st = ReadUnit(worker, s, u);
    {
      std::lock_guard<std::mutex> lock(mu_);
      --readers_busy_;
      if (st.ok()) s->read[u] = gen;
    }
    if (!st.ok()) Fail(st);
    cv_.notify_all();
  }
}

Status StreamEngine::ReadUnit(int worker, Stream* s, uint32_t u) {
  const UnitRuntime& un = s->rt->units[u];
  const int32_t v = un.disk_wait_unit;
  uint64_t gen;
  {
    std::unique_lock<std::mutex> lock(mu_);
    gen = gen_;
    if (v >= 0 && static_cast<uint32_t>(v) < u) {
      cv_.wait(lock, [&] { return stop_ || abort_ || s->issued[v] == gen; });
      if (stop_ || abort_) return Status::Ok();
    }
  }
  // The slot's previous occupant was copied (or is being copied) to the device: wait for that copy to finish.
  if (v >= 0) BIGPLAN_RETURN_IF_ERROR(Cuda(cudaEventSynchronize(s->ready[v].get()), "waiting for a disk slot"));
  s->read_start[u] = WallUs();
  s->read_worker[u] = worker;
  const WeightRuntime& w = state_->blocks[un.block].weights[un.weight];
  if (readers_.empty() || readers_[un.shard_index] == nullptr) {
    // disk_direct_io off: copy or cast from the mapped shard.
    const uint8_t* src = w.source + static_cast<uint64_t>(un.row_begin) * w.source_row_bytes();
    const int64_t numel = (un.row_end - un.row_begin) * (w.rows > 0 ? w.numel / w.rows : w.numel);
    w.shard->WillNeed(un.file_offset, un.file_bytes);
    BIGPLAN_RETURN_IF_ERROR(CastInto(un.disk_slot, w.dtype, src, w.source_dtype, numel));
    s->h2d_source[u] = un.disk_slot;
    s->read_path[u] = 3;
    s->read_end[u] = WallUs();
    return Status::Ok();
  }
  const ShardReader& reader = *readers_[un.shard_index];
  if (un.cast) {
    BIGPLAN_ASSIGN_OR_RETURN(const uint8_t* bytes, reader.ReadToBounce(un.file_offset, un.file_bytes));
    const int64_t numel = (un.row_end - un.row_begin) * (w.rows > 0 ? w.numel / w.rows : w.numel);
    BIGPLAN_RETURN_IF_ERROR(CastInto(un.disk_slot, w.dtype, bytes, w.source_dtype, numel));
    s->h2d_source[u] = un.disk_slot;
    s->read_path[u] = 1;
    std::lock_guard<std::mutex> lock(mu_);
    disk_read_bytes_ += un.file_bytes;
  } else if (reader.direct()) {
    const uint64_t a0 = un.file_offset / kDirectAlignment * kDirectAlignment;
    const uint64_t end = un.file_offset + un.file_bytes;
    const uint64_t a1 = (end + kDirectAlignment - 1) / kDirectAlignment * kDirectAlignment;
    if (a1 - a0 > un.disk_slot_bytes) {
      return MakeError(ErrorCode::kCorrupt, "the disk slot of " + UnitName(*state_, un) + " is too small for its read");
    }
    // Large reads in parallel pieces of at least 16 MiB (aligned), so one unit keeps the disk busy.
    constexpr uint64_t kPiece = 16ull << 20;
    const uint64_t length = a1 - a0;
    const uint64_t pieces = std::min<uint64_t>(4, std::max<uint64_t>(1, length / kPiece));
    const uint64_t piece = (length / pieces + kDirectAlignment - 1) / kDirectAlignment * kDirectAlignment;
    std::vector<std::function<Status()>> reads;
    for (uint64_t k = 0; k < pieces; ++k) {
      const uint64_t off = k * piece;
      if (off >= length) break;
      const uint64_t len = std::min(piece, length - off);
      const uint64_t need = std::min(len, (end - a0) > off ? (end - a0) - off : 0);
      reads.push_back([&, off, len, need] { return reader.ReadAligned(a0 + off, len, need, un.disk_slot + off); });
    }
    if (reads.size() == 1 || read_pieces_ == nullptr) {
      for (auto& read : reads) BIGPLAN_RETURN_IF_ERROR(read());
    } else {
      BIGPLAN_RETURN_IF_ERROR(read_pieces_->RunAll(std::move(reads)));
    }
    s->h2d_source[u] = un.disk_slot + (un.file_offset - a0);
    s->read_path[u] = 0;
    std::lock_guard<std::mutex> lock(mu_);
    disk_read_bytes_ += a1 - a0;
  } else {
    BIGPLAN_RETURN_IF_ERROR(reader.Read(un.file_offset, un.file_bytes, un.disk_slot));
    s->h2d_source[u] = un.disk_slot;
    s->read_path[u] = 2;
    std::lock_guard<std::mutex> lock(mu_);
    disk_read_bytes_ += un.file_bytes;
  }
  s->read_end[u] = WallUs();
  (void)gen;
  return Status::Ok();
}

Status StreamEngine::BeginForward(bool host_compute, bool hold_chunks) {
  if (hold_chunks) {
    for (const auto& s : streams_) {
      if (!s->rt->chunks_holdable) {
        return MakeError(ErrorCode::kInternal, "a stream whose chunks wait for each other cannot hold them");
      }
    }
  }
  hold_chunks_ = hold_chunks;
  wall_start_ = std::chrono::steady_clock::now();
  cpu_bytes_ = disk_bytes_ = disk_h2d_bytes_ = disk_read_bytes_ = host_bytes_ = 0;
  host_products_.clear();
  direct_units_ = bounce_units_ = mmap_units_ = units_ = 0;
  if (events_captured_) {
    // Events last recorded in a graph capture are recorded again (already complete: the graph's replays ended
    // before this pass), so this pass's copies and kernels may wait for them.
    for (const auto& s : streams_) {
      if (!s->gpu) continue;
      BIGPLAN_RETURN_IF_ERROR(Cuda(cudaSetDevice(s->device), "cudaSetDevice"));
      for (size_t u = 0; u < s->ready.size(); ++u) {
        BIGPLAN_RETURN_IF_ERROR(Cuda(cudaEventRecord(s->ready[u].get(), s->compute), "cudaEventRecord"));
        BIGPLAN_RETURN_IF_ERROR(Cuda(cudaEventRecord(s->release[u].get(), s->compute), "cudaEventRecord"));
      }
    }
    events_captured_ = false;
  }
  for (Device& d : devices_) {
    BIGPLAN_RETURN_IF_ERROR(Cuda(cudaSetDevice(d.device), "cudaSetDevice"));
    d.start_offset_us = WallUs();
    BIGPLAN_RETURN_IF_ERROR(Cuda(cudaEventRecord(d.forward_start.get(), d.compute.get()), "recording the forward start"));
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (inline_ != nullptr) return MakeError(ErrorCode::kInternal, "a forward pass began inside an inline pass");
    ++gen_;
    forward_gen_ = gen_;
    if (host_compute) host_pass_ = gen_;
    abort_ = false;
    error_ = Status::Ok();
    next_read_ = 0;
  }
  cv_.notify_all();
  return Status::Ok();
}

bool StreamEngine::host_pass() const {
  std::lock_guard<std::mutex> lock(mu_);
  return host_pass_ == gen_;
}

double StreamEngine::NowUs() const { return WallUs(); }

void StreamEngine::RecordHostProduct(uint32_t block, const std::string& what, uint64_t bytes, double start_us,
                                     double end_us) {
  CopyTiming c;
  c.step = state_->blocks[block].step;
  c.block = block;
  c.source = "host";
  c.bytes = bytes;
  c.what = what;
  c.start_us = start_us;
  c.end_us = end_us;
  host_products_.push_back(std::move(c));
}

Status StreamEngine::PrepareOnCpu(Stream* s, uint32_t u) {
  const UnitRuntime& un = s->rt->units[u];
  const WeightRuntime& w = state_->blocks[un.block].weights[un.weight];
  ++units_;
  if (un.source == schema::Tier::Cpu) {
    s->data[u] = un.host;
    return Status::Ok();
  }
  disk_bytes_ += un.file_bytes;
  const uint8_t* src = w.source + static_cast<uint64_t>(un.row_begin) * w.source_row_bytes();
  const size_t elem = DTypeSize(w.dtype);
  if (!un.cast && (elem == 0 || reinterpret_cast<uintptr_t>(src) % elem == 0)) {
    s->data[u] = src;  // in place from the mapping (zero-copy; not a read)
    return Status::Ok();
  }
  const int64_t numel = (un.row_end - un.row_begin) * (w.rows > 0 ? w.numel / w.rows : w.numel);
  const ShardReader* reader = un.shard_index < readers_.size() ? readers_[un.shard_index].get() : nullptr;
  if (reader != nullptr) {
    // Read with pread (O_DIRECT where allowed) through the bounce buffer, so the page cache is left alone.
    BIGPLAN_ASSIGN_OR_RETURN(const uint8_t* bytes, reader->ReadToBounce(un.file_offset, un.file_bytes));
    BIGPLAN_RETURN_IF_ERROR(CastInto(un.ring, w.dtype, bytes, w.source_dtype, numel));
    ++bounce_units_;
    disk_read_bytes_ += un.file_bytes;
  } else {
    w.shard->WillNeed(un.file_offset, un.file_bytes);
    BIGPLAN_RETURN_IF_ERROR(CastInto(un.ring, w.dtype, src, w.source_dtype, numel));
    ++mmap_units_;
  }
  s->data[u] = un.ring;
  return Status::Ok();
}

Status StreamEngine::Acquire(Stream* s, uint32_t u) {
  const UnitRuntime& un = s->rt->units[u];
  if (hold_chunks_ && !un.whole && s->acquired[u] == gen_) return Status::Ok();  // held since its first use
  if (!s->gpu) return PrepareOnCpu(s, u);
  if (inline_ != nullptr) {
    BIGPLAN_RETURN_IF_ERROR(IssueInline(s, u));
    ++units_;
    s->acquired[u] = gen_;
    cpu_bytes_ += un.bytes;
    return Cuda(cudaStreamWaitEvent(inline_, s->ready[u].get(), 0), "waiting for " + UnitName(*state_, un));
  }
  {
    // (The counts under the lock too: a tensor-parallel plan's shards acquire their streams' units from threads of
    // their own.)
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return abort_ || s->issued[u] == gen_; });
    if (abort_) {
      return error_.ok() ? MakeError(ErrorCode::kInternal, "the forward pass was aborted") : error_;
    }
    ++units_;
    s->acquired[u] = gen_;
    if (un.host_compute && host_pass_ == gen_) {
      host_bytes_ += un.bytes;  // not copied: the host computes its rows from where they rest
      return Status::Ok();
    }
    if (un.source == schema::Tier::Cpu) {
      cpu_bytes_ += un.bytes;
    } else {
      disk_bytes_ += un.file_bytes;
      disk_h2d_bytes_ += un.bytes;
      const int path = s->read_path[u];
      direct_units_ += path == 0 || path == 2;
      bounce_units_ += path == 1;
      mmap_units_ += path == 3;
    }
  }
  return Cuda(cudaStreamWaitEvent(s->compute, s->ready[u].get(), 0), "waiting for " + UnitName(*state_, un));
}

Status StreamEngine::Release(Stream* s, uint32_t u) {
  if (!s->gpu) return Status::Ok();
  if (hold_chunks_ && !s->rt->units[u].whole) return Status::Ok();  // released when its step ends
  return ReleaseNow(s, u);
}

Status StreamEngine::ReleaseNow(Stream* s, uint32_t u) {
  BIGPLAN_RETURN_IF_ERROR(
      Cuda(cudaEventRecord(s->release[u].get(), inline_ != nullptr ? inline_ : s->compute), "recording a release"));
  {
    std::lock_guard<std::mutex> lock(mu_);
    s->released[u] = gen_;
  }
  cv_.notify_all();
  return Status::Ok();
}

Status StreamEngine::BeginStep(uint32_t step) {
  const BlockRuntime& b = state_->blocks[state_->steps[step].block];
  if (b.device >= 0) {
    BIGPLAN_RETURN_IF_ERROR(Cuda(cudaSetDevice(b.device), "cudaSetDevice"));
  }
  if (b.stream >= 0) {
    Stream* s = streams_[b.stream].get();
    for (uint32_t u : b.whole_units) BIGPLAN_RETURN_IF_ERROR(Acquire(s, u));
  }
  step_wall_start_[step] = WallUs();
  if (step_start_[step] && inline_ == nullptr) {
    BIGPLAN_RETURN_IF_ERROR(
        Cuda(cudaEventRecord(step_start_[step].get(), compute_stream(b.device)), "cudaEventRecord"));
  }
  return Status::Ok();
}

Result<const uint8_t*> StreamEngine::UnitData(int32_t stream, uint32_t unit) {
  if (stream < 0 || static_cast<size_t>(stream) >= streams_.size() || unit >= streams_[stream]->data.size()) {
    return MakeError(ErrorCode::kInternal, "no such stream unit");
  }
  return streams_[stream]->data[unit];
}

Result<const uint8_t*> StreamEngine::AcquireChunk(int32_t stream, uint32_t unit) {
  if (stream < 0 || static_cast<size_t>(stream) >= streams_.size() || unit >= streams_[stream]->data.size()) {
    return MakeError(ErrorCode::kInternal, "no such stream unit");
  }
  Stream* s = streams_[stream].get();
  BIGPLAN_RETURN_IF_ERROR(Acquire(s, unit));
  return s->data[unit];
}

Status StreamEngine::ReleaseChunk(int32_t stream, uint32_t unit) {
  if (stream < 0 || static_cast<size_t>(stream) >= streams_.size() || unit >= streams_[stream]->data.size()) {
    return MakeError(ErrorCode::kInternal, "no such stream unit");
  }
  return Release(streams_[stream].get(), unit);
}

Status StreamEngine::EndStep(uint32_t step) {
  const BlockRuntime& b = state_->blocks[state_->steps[step].block];
  if (step_end_[step] && inline_ == nullptr) {
    BIGPLAN_RETURN_IF_ERROR(Cuda(cudaEventRecord(step_end_[step].get(), compute_stream(b.device)), "cudaEventRecord"));
  }
  step_wall_end_[step] = WallUs();
  if (b.stream >= 0) {
    Stream* s = streams_[b.stream].get();
    for (uint32_t u : b.whole_units) BIGPLAN_RETURN_IF_ERROR(Release(s, u));
    if (hold_chunks_ && s->gpu) {
      for (uint32_t u : b.chunk_units) {
        bool acquired;
        {
          std::lock_guard<std::mutex> lock(mu_);
          acquired = s->acquired[u] == gen_ && s->released[u] != gen_;
        }
        if (acquired) BIGPLAN_RETURN_IF_ERROR(ReleaseNow(s, u));
      }
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  return error_;
}

Status StreamEngine::EndForward(ForwardTimings* t) {
  // Units a kernel did not read (or a failed pass never reached) are released now, so every copy thread finishes.
  Status status;
  uint64_t gen;
  {
    std::lock_guard<std::mutex> lock(mu_);
    gen = gen_;
  }
  for (auto& s : streams_) {
    if (!s->gpu) continue;
    for (uint32_t u = 0; u < s->rt->units.size(); ++u) {
      bool released;
      {
        std::lock_guard<std::mutex> lock(mu_);
        released = s->released[u] == gen;
      }
      if (!released) {
        // The compute stream waits for its copy before releasing it, so synchronizing the compute streams below
        // covers every copy of this pass (the copy streams may already be copying the next pass's first units).
        Status r = Cuda(cudaStreamWaitEvent(s->compute, s->ready[u].get(), 0), "waiting for an unread unit");
        if (r.ok()) r = ReleaseNow(s.get(), u);
        if (status.ok() && !r.ok()) status = r;
      }
    }
  }
  {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] {
      bool done = readers_busy_ == 0;
      for (auto& s : streams_) done = done && (!s->gpu || s->done == gen);
      return done;
    });
    if (status.ok() && !error_.ok()) status = error_;
    abort_ = true;  // readers stop taking this pass's jobs
  }
  cv_.notify_all();
  for (const Device& d : devices_) {
    Status sync = Cuda(cudaSetDevice(d.device), "cudaSetDevice");
    if (sync.ok()) sync = Cuda(cudaStreamSynchronize(d.compute.get()), "synchronizing cuda:" + std::to_string(d.device));
    if (status.ok() && !sync.ok()) status = sync;
  }
  if (!status.ok() || t == nullptr) return status;
  t->wall_start = wall_start_;
  t->cpu_tier_bytes = cpu_bytes_;
  t->disk_tier_bytes = disk_bytes_;
  t->disk_h2d_bytes = disk_h2d_bytes_;
  t->disk_read_bytes = disk_read_bytes_;
  t->disk_direct_blocks = direct_units_;
  t->disk_bounce_blocks = bounce_units_;
  t->disk_mmap_blocks = mmap_units_;
  t->units = units_;
  t->host_compute_bytes = host_bytes_;
  for (const CopyTiming& h : host_products_) t->copies.push_back(h);
  auto device_offset = [&](int device) {
    for (const Device& d : devices_)
      if (d.device == device) return d.start_offset_us;
    return 0.0;
  };
  auto event_us = [&](int device, cudaEvent_t e, double* out) {
    for (const Device& d : devices_) {
      if (d.device != device) continue;
      float ms = 0;
      if (e == nullptr) return false;
      if (cudaEventElapsedTime(&ms, d.forward_start.get(), e) != cudaSuccess) {
        cudaGetLastError();  // an event this pass did not record (a graph-replayed or padded pass): no time
        return false;
      }
      *out = d.start_offset_us + ms * 1000.0;
      return true;
    }
    return false;
  };
  for (uint32_t i = 0; i < state_->steps.size(); ++i) {
    const BlockRuntime& b = state_->blocks[state_->steps[i].block];
    StepTiming st;
    st.step = i;
    st.block = b.index;
    st.device = b.device;
    st.start_us = step_wall_start_[i];
    st.end_us = step_wall_end_[i];
    if (b.device >= 0 && step_start_[i]) {
      event_us(b.device, step_start_[i].get(), &st.start_us);
      event_us(b.device, step_end_[i].get(), &st.end_us);
    }
    t->steps.push_back(st);
  }
  (void)device_offset;
  for (auto& s : streams_) {
    if (!s->gpu) continue;
    for (uint32_t u = 0; u < s->rt->units.size(); ++u) {
      const UnitRuntime& un = s->rt->units[u];
      const BlockRuntime& b = state_->blocks[un.block];
      if (un.source == schema::Tier::Disk && s->read_worker[u] >= 0) {
        CopyTiming r;
        r.step = b.step;
        r.block = un.block;
        r.source = "disk_read";
        r.worker = s->read_worker[u];
        r.read = s->read_path[u] == 1 ? "bounce" : s->read_path[u] == 3 ? "mmap" : "direct";
        r.bytes = un.file_bytes;
        r.start_us = s->read_start[u];
        r.end_us = s->read_end[u];
        r.what = UnitName(*state_, un);
        t->copies.push_back(r);
      }
      if (!options_.timing || s->skipped[u] == gen) continue;
      CopyTiming c;
      c.step = b.step;
      c.block = un.block;
      c.source = un.source == schema::Tier::Cpu ? "cpu" : "disk";
      c.bytes = un.bytes;
      c.what = UnitName(*state_, un);
      if (event_us(s->device, s->copy_start[u].get(), &c.start_us) &&
          event_us(s->device, s->copy_end[u].get(), &c.end_us)) {
        t->copies.push_back(c);
      }
    }
  }
  return Status::Ok();
}

}  // namespace bigplan::executor_internal
