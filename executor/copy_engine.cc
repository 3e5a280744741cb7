#include "executor/copy_engine.h"

#include <algorithm>
#include <array>
#include <set>

#include "formats/guarded_copy.h"

namespace bigplan::executor_internal {
namespace {

Status Cuda(cudaError_t err, const std::string& what) { return CudaStatus(static_cast<int>(err), what); }

Status NewEvent(cudaEvent_t* event, bool timing) {
  return Cuda(cudaEventCreateWithFlags(event, timing ? cudaEventDefault : cudaEventDisableTiming), "cudaEventCreate");
}

bool IsGpuStreamed(const BlockRuntime& b) { return b.feed == Feed::kCopyH2D || b.feed == Feed::kDiskH2D; }

// Blocks whose weights a disk worker (or the calling thread) reads: GPU disk-tier blocks and CPU disk-tier blocks
// with weights to cast.
bool ReadsDisk(const BlockRuntime& b) { return b.feed == Feed::kDiskH2D || b.needs_cpu_cast; }

}  // namespace

const char* DiskPathName(DiskPath path) {
  switch (path) {
    case DiskPath::kMapped: return "mmap";
    case DiskPath::kMappedFallback: return "mmap_fallback";
    case DiskPath::kDirect: return "direct";
    case DiskPath::kBounce: return "bounce";
  }
  return "?";
}

ChunkPool::ChunkPool(int threads) {
  for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { Loop(); });
}

ChunkPool::~ChunkPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  for (std::thread& t : threads_) t.join();
}

void ChunkPool::Work(Batch& batch) {
  for (;;) {
    const size_t i = batch.next++;
    if (i >= batch.n) return;
    Status s = (*batch.tasks)[i]();
    std::lock_guard<std::mutex> lock(batch.mu);
    if (!s.ok() && batch.error.ok()) batch.error = s;
    if (++batch.done == batch.n) batch.cv.notify_all();
  }
}

void ChunkPool::Loop() {
  for (;;) {
    std::shared_ptr<Batch> batch;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
      if (stop_) return;
      batch = queue_.front();
      if (batch->next.load() >= batch->n) {
        queue_.pop_front();
        continue;
      }
    }
    Work(*batch);
  }
}

Status ChunkPool::Run(const std::vector<std::function<Status()>>& tasks) {
  auto batch = std::make_shared<Batch>();
  batch->tasks = &tasks;
  batch->n = tasks.size();
  if (batch->n == 0) return Status::Ok();
  if (!threads_.empty() && batch->n > 1) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.push_back(batch);
    }
    cv_.notify_all();
  }
  Work(*batch);
  std::unique_lock<std::mutex> lock(batch->mu);
  batch->cv.wait(lock, [&] { return batch->done == batch->n; });
  return batch->error;
}

Result<std::unique_ptr<CopyEngine>> CopyEngine::Create(ModelState* state, const CopyEngineOptions& options) {
  std::unique_ptr<CopyEngine> engine(new CopyEngine(state, options));
  BIGPLAN_RETURN_IF_ERROR(engine->Init());
  return engine;
}

Status CopyEngine::Init() {
  const size_t nsteps = state_->steps.size();
  const size_t nblocks = state_->blocks.size();
  const size_t ncopies = state_->copies.size();
  gpu_ = !state_->cuda_devices.empty();
  enqueued_gen_.assign(nblocks, 0);
  issued_gen_.assign(nblocks, 0);
  step_wall_start_.assign(nsteps, 0);
  step_wall_end_.assign(nsteps, 0);
  compute_done_.assign(nsteps, {nullptr, nullptr});
  ready_.assign(nblocks, {nullptr, nullptr});
  step_start_.assign(nsteps, nullptr);
  step_end_.assign(nsteps, nullptr);
  copy_start_.assign(ncopies, nullptr);
  copy_end_.assign(ncopies, nullptr);

  // Disk workers: for GPU disk blocks, and CPU disk blocks cast by a worker.
  bool need_workers = false;
  for (const BlockRuntime& b : state_->blocks) {
    need_workers |= b.feed == Feed::kDiskH2D || (b.needs_cpu_cast && !b.cast_inline);
  }
  int nworkers = 0;
  if (need_workers) {
    nworkers = options_.disk_workers > 0 ? options_.disk_workers
                                         : std::min(4, std::max(1, state_->num_disk_staging_buffers));
  }

  if (gpu_) {
    for (int device : state_->cuda_devices) {
      DeviceStreams ds;
      ds.device = device;
      BIGPLAN_RETURN_IF_ERROR(Cuda(cudaSetDevice(device), "cudaSetDevice"));
      BIGPLAN_RETURN_IF_ERROR(Cuda(cudaStreamCreateWithFlags(&ds.compute, cudaStreamNonBlocking), "cudaStreamCreate"));
      for (uint32_t i = 0; i < state_->max_streams_per_device; ++i) {
        cudaStream_t s;
        BIGPLAN_RETURN_IF_ERROR(Cuda(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate"));
        ds.copy.push_back(s);
      }
      BIGPLAN_RETURN_IF_ERROR(NewEvent(&ds.forward_start, true));
      devices_.push_back(std::move(ds));
    }
    for (size_t i = 0; i < nsteps; ++i) {
      const BlockRuntime& b = state_->blocks[state_->steps[i].block];
      if (b.device < 0) continue;
      BIGPLAN_RETURN_IF_ERROR(Cuda(cudaSetDevice(b.device), "cudaSetDevice"));
      for (auto& e : compute_done_[i]) BIGPLAN_RETURN_IF_ERROR(NewEvent(&e, false));
      if (options_.timing) {
        BIGPLAN_RETURN_IF_ERROR(NewEvent(&step_start_[i], true));
        BIGPLAN_RETURN_IF_ERROR(NewEvent(&step_end_[i], true));
      }
    }
    for (const BlockRuntime& b : state_->blocks) {
      if (!IsGpuStreamed(b)) continue;
      BIGPLAN_RETURN_IF_ERROR(Cuda(cudaSetDevice(b.device), "cudaSetDevice"));
      for (auto& e : ready_[b.index]) BIGPLAN_RETURN_IF_ERROR(NewEvent(&e, false));
    }
    for (const CopyRuntime* c : state_->copies) {
      const BlockRuntime& b = state_->blocks[c->block];
      if (!IsGpuStreamed(b) || !options_.timing) continue;
      BIGPLAN_RETURN_IF_ERROR(Cuda(cudaSetDevice(b.device), "cudaSetDevice"));
      BIGPLAN_RETURN_IF_ERROR(NewEvent(&copy_start_[c->index], true));
      BIGPLAN_RETURN_IF_ERROR(NewEvent(&copy_end_[c->index], true));
    }
    worker_streams_.resize(nworkers);
    for (int w = 0; w < nworkers; ++w) {
      for (const DeviceStreams& ds : devices_) {
        BIGPLAN_RETURN_IF_ERROR(Cuda(cudaSetDevice(ds.device), "cudaSetDevice"));
        cudaStream_t s;
        BIGPLAN_RETURN_IF_ERROR(Cuda(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate"));
        worker_streams_[w].push_back(s);
      }
    }
  }
  bool any_cast = false;
  for (const BlockRuntime& b : state_->blocks) any_cast |= b.needs_cpu_cast;
  if (nworkers > 0 || any_cast) {
    const int cores = static_cast<int>(std::max(2u, std::thread::hardware_concurrency()));
    chunks_ = std::make_unique<ChunkPool>(std::min(8, cores / 2));
  }
  BIGPLAN_RETURN_IF_ERROR(InitDiskReads());
  for (int w = 0; w < nworkers; ++w) workers_.emplace_back([this, w] { WorkerLoop(w); });
  return Status::Ok();
}

Status CopyEngine::InitDiskReads() {
  const size_t nblocks = state_->blocks.size();
  disk_path_.assign(nblocks, DiskPath::kMapped);
  read_plans_.assign(nblocks, {});
  if (!options_.disk_direct_io) return Status::Ok();
  readers_.resize(state_->shards.size());
  for (const BlockRuntime& b : state_->blocks) {
    if (!ReadsDisk(b)) continue;
    for (const WeightRuntime& w : b.weights) {
      if (w.shard_index >= readers_.size()) {
        return MakeError(ErrorCode::kInternal, b.name + ": weight " + w.name + " has no shard");
      }
      if (readers_[w.shard_index] != nullptr) continue;
      BIGPLAN_ASSIGN_OR_RETURN(ShardReader reader, ShardReader::Open(w.shard->path()));
      readers_[w.shard_index] = std::make_unique<ShardReader>(std::move(reader));
    }
  }
  for (const BlockRuntime& b : state_->blocks) {
    if (!ReadsDisk(b)) continue;
    if (b.feed == Feed::kDiskOnCpu) {
      disk_path_[b.index] = DiskPath::kBounce;
      continue;
    }
    bool cast = false;
    std::vector<TensorSpan> spans;
    for (const WeightRuntime& w : b.weights) {
      cast |= w.dtype != w.source_dtype || w.bytes != w.source_bytes;
      spans.push_back({w.shard_index, w.source_offset, w.source_bytes, w.offset_in_block});
    }
    if (cast) {
      disk_path_[b.index] = DiskPath::kBounce;
      continue;
    }
    BlockReadPlan plan =
        PlanBlockReads(spans, reinterpret_cast<uintptr_t>(b.disk_staging), b.disk_staging_bytes);
    if (plan.fits) {
      disk_path_[b.index] = DiskPath::kDirect;
      read_plans_[b.index] = std::move(plan);
    } else {
      disk_path_[b.index] = DiskPath::kMappedFallback;
    }
  }
  return Status::Ok();
}

std::string CopyEngine::disk_read_mode() const {
  bool any_disk = false;
  for (const BlockRuntime& b : state_->blocks) any_disk |= b.tier == schema::Tier::Disk;
  if (!any_disk) return "";
  for (const auto& r : readers_) {
    if (r != nullptr) return r->direct() ? "o_direct" : "pread+dontneed";
  }
  return "mmap";
}

int CopyEngine::direct_fallback_blocks() const {
  return static_cast<int>(std::count(disk_path_.begin(), disk_path_.end(), DiskPath::kMappedFallback));
}

uint64_t CopyEngine::ReadBytes(const BlockRuntime& b) const {
  if (disk_path_[b.index] == DiskPath::kDirect) {
    const BlockReadPlan& p = read_plans_[b.index];
    return p.direct_bytes + p.bounce_bytes;
  }
  if (b.feed != Feed::kDiskOnCpu) return b.source_bytes;
  uint64_t bytes = 0;
  for (const WeightRuntime& w : b.weights) bytes += w.cast_on_cpu ? w.source_bytes : 0;
  return bytes;
}

CopyEngine::~CopyEngine() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  for (std::thread& t : workers_) t.join();
  if (!gpu_) return;
  for (const DeviceStreams& ds : devices_) {
    cudaSetDevice(ds.device);
    cudaDeviceSynchronize();
  }
  auto destroy = [](cudaEvent_t e) {
    if (e != nullptr) cudaEventDestroy(e);
  };
  for (auto& pair : compute_done_) std::for_each(pair.begin(), pair.end(), destroy);
  for (auto& pair : ready_) std::for_each(pair.begin(), pair.end(), destroy);
  for (auto* v : {&step_start_, &step_end_, &copy_start_, &copy_end_}) std::for_each(v->begin(), v->end(), destroy);
  for (auto& streams : worker_streams_) {
    for (cudaStream_t s : streams) cudaStreamDestroy(s);
  }
  for (DeviceStreams& ds : devices_) {
    destroy(ds.forward_start);
    cudaStreamDestroy(ds.compute);
    for (cudaStream_t s : ds.copy) cudaStreamDestroy(s);
  }
}

CopyEngine::DeviceStreams* CopyEngine::Streams(int device) {
  for (DeviceStreams& ds : devices_) {
    if (ds.device == device) return &ds;
  }
  return nullptr;
}

const CopyEngine::DeviceStreams* CopyEngine::Streams(int device) const {
  for (const DeviceStreams& ds : devices_) {
    if (ds.device == device) return &ds;
  }
  return nullptr;
}

cudaStream_t CopyEngine::compute_stream(int device) const {
  const DeviceStreams* ds = Streams(device);
  return ds == nullptr ? nullptr : ds->compute;
}

double CopyEngine::WallUs() const {
  return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - wall_start_).count();
}

Status CopyEngine::Record(cudaEvent_t event, cudaStream_t stream, const char* what) {
  if (event == nullptr) return Status::Ok();
  return Cuda(cudaEventRecord(event, stream), what);
}

Status CopyEngine::BeginForward() {
  ++gen_;
  wall_start_ = std::chrono::steady_clock::now();
  copies_issued_.clear();
  cpu_bytes_ = disk_bytes_ = disk_h2d_bytes_ = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    disk_reads_.clear();
    worker_error_ = Status::Ok();
  }
  for (DeviceStreams& ds : devices_) {
    BIGPLAN_RETURN_IF_ERROR(Cuda(cudaSetDevice(ds.device), "cudaSetDevice"));
    ds.start_offset_us = WallUs();
    BIGPLAN_RETURN_IF_ERROR(Record(ds.forward_start, ds.compute, "recording the forward start"));
  }
  return Status::Ok();
}

Status CopyEngine::IssueCopies(uint32_t step) {
  const uint64_t gen = gen_;
  for (const CopyRuntime& c : state_->steps[step].copies) {
    const BlockRuntime& b = state_->blocks[c.block];
    switch (b.feed) {
      case Feed::kResident:
      case Feed::kHostInPlace:
        break;  // used in place (a Cpu-tier block computed on the CPU)
      case Feed::kCopyH2D: {
        DeviceStreams* ds = Streams(b.device);
        cudaStream_t s = ds->copy[c.stream % ds->copy.size()];
        BIGPLAN_RETURN_IF_ERROR(Cuda(cudaSetDevice(b.device), "cudaSetDevice"));
        for (uint32_t j : c.wait_compute_steps) {
          cudaEvent_t e = compute_done_[j][(j < step ? gen : gen + 1) % 2];
          if (e != nullptr) BIGPLAN_RETURN_IF_ERROR(Cuda(cudaStreamWaitEvent(s, e, 0), "cudaStreamWaitEvent"));
        }
        BIGPLAN_RETURN_IF_ERROR(Record(copy_start_[c.index], s, "recording a copy start"));
        BIGPLAN_RETURN_IF_ERROR(Cuda(cudaMemcpyAsync(b.staging, b.home, b.weight_bytes, cudaMemcpyHostToDevice, s),
                                     "copying " + b.name + " to cuda:" + std::to_string(b.device)));
        BIGPLAN_RETURN_IF_ERROR(Record(copy_end_[c.index], s, "recording a copy end"));
        BIGPLAN_RETURN_IF_ERROR(Record(ready_[b.index][gen % 2], s, "recording a ready event"));
        enqueued_gen_[b.index] = gen;
        MarkIssued(b.index, gen);
        copies_issued_.push_back(c.index);
        cpu_bytes_ += b.weight_bytes;
        break;
      }
      case Feed::kDiskH2D:
      case Feed::kDiskOnCpu: {
        disk_bytes_ += b.source_bytes;
        // Ask the kernel to start reading what will be read from the mapping (never what pread will read: that
        // would pull it into the page cache).
        const bool mapped_reads =
            disk_path_[b.index] == DiskPath::kMapped || disk_path_[b.index] == DiskPath::kMappedFallback;
        for (const WeightRuntime& w : b.weights) {
          const bool in_place = b.feed == Feed::kDiskOnCpu && !w.cast_on_cpu;
          if (mapped_reads || in_place) w.shard->WillNeed(w.source_offset, w.source_bytes);
        }
        if (b.feed == Feed::kDiskOnCpu && (!b.needs_cpu_cast || b.cast_inline)) {
          enqueued_gen_[b.index] = gen;  // used in place from the mapping, or cast at its own step
          break;
        }
        Job job;
        job.copy = &c;
        job.gen = gen;
        job.cpu_cast = b.feed == Feed::kDiskOnCpu;
        if (!job.cpu_cast) {
          for (uint32_t j : c.wait_compute_steps) {
            cudaEvent_t e = compute_done_[j][(j < step ? gen : gen + 1) % 2];
            if (e != nullptr) job.compute_waits.push_back(e);
          }
          for (uint32_t a : c.wait_copy_blocks) {
            if (IsGpuStreamed(state_->blocks[a]) && enqueued_gen_[a] > 0) {
              job.copy_waits.emplace_back(a, enqueued_gen_[a]);
            }
          }
          disk_h2d_bytes_ += b.weight_bytes;
        }
        enqueued_gen_[b.index] = gen;
        copies_issued_.push_back(c.index);
        {
          std::lock_guard<std::mutex> lock(mu_);
          queue_.push_back(std::move(job));
          ++pending_;
        }
        cv_.notify_all();
        break;
      }
    }
  }
  return Status::Ok();
}

void CopyEngine::MarkIssued(uint32_t block, uint64_t gen) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    issued_gen_[block] = std::max(issued_gen_[block], gen);
  }
  cv_.notify_all();
}

Status CopyEngine::WaitIssued(uint32_t block, uint64_t gen) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return issued_gen_[block] >= gen || stop_; });
  if (!worker_error_.ok()) return worker_error_;
  return Status::Ok();
}

Status CopyEngine::RunTasks(const std::vector<std::function<Status()>>& tasks) {
  if (chunks_ == nullptr) {
    for (const auto& t : tasks) BIGPLAN_RETURN_IF_ERROR(t());
    return Status::Ok();
  }
  return chunks_->Run(tasks);
}

Status CopyEngine::ReadWeights(const BlockRuntime& b, uint8_t* base, bool only_cast_weights) {
  constexpr uint64_t kChunkBytes = 4ull << 20;
  const bool bounce = disk_path_[b.index] == DiskPath::kBounce;
  std::vector<std::function<Status()>> tasks;
  for (const WeightRuntime& w : b.weights) {
    if (only_cast_weights && !w.cast_on_cpu) continue;
    const size_t src_elem = DTypeSize(w.source_dtype), dst_elem = DTypeSize(w.dtype);
    const int64_t chunk = std::max<int64_t>(1, kChunkBytes / std::max<size_t>({src_elem, dst_elem, size_t{1}}));
    const ShardReader* reader = bounce ? readers_[w.shard_index].get() : nullptr;
    for (int64_t e = 0; e < w.numel; e += chunk) {
      const int64_t n = std::min(chunk, w.numel - e);
      tasks.push_back([&w, &b, base, e, n, src_elem, dst_elem, reader]() -> Status {
        const uint8_t* src = w.source + e * src_elem;
        if (reader != nullptr) {
          auto read = reader->ReadToBounce(w.source_offset + e * src_elem, n * src_elem);
          if (!read.ok()) return WithContext(read.take_error(), "reading " + b.name + " (" + w.name + ")");
          src = *read;
        } else {
          // From the mapping: copied under a SIGBUS guard, so a shard that shrank is an error naming it.
          uint8_t* dst = base + w.offset_in_block + e * dst_elem;
          auto copied = w.dtype == w.source_dtype ? GuardedCopy(dst, src, n * src_elem, w.shard->path())
                                                  : GuardedCopyToBounce(src, n * src_elem, w.shard->path(), &src);
          if (!copied.ok()) return WithContext(copied.take_error(), "reading " + b.name + " (" + w.name + ")");
          if (w.dtype == w.source_dtype) return Status::Ok();
        }
        Status s = CastInto(base + w.offset_in_block + e * dst_elem, w.dtype, src, w.source_dtype, n);
        if (!s.ok()) return WithContext(s.take_error(), "reading " + b.name + " (" + w.name + ")");
        return Status::Ok();
      });
    }
  }
  return RunTasks(tasks);
}

Status CopyEngine::ReadDirect(const BlockRuntime& b) {
  const BlockReadPlan& plan = read_plans_[b.index];
  std::vector<std::function<Status()>> tasks;
  tasks.reserve(plan.reads.size());
  for (const StagingRead& r : plan.reads) {
    tasks.push_back([this, &r, &b]() -> Status {
      const ShardReader& reader = *readers_[r.shard];
      uint8_t* dst = b.disk_staging + r.staging_offset;
      Status s = r.direct ? reader.ReadAligned(r.file_offset, r.bytes, r.needed, dst)
                          : reader.Read(r.file_offset, r.bytes, dst);
      if (!s.ok()) return WithContext(s.take_error(), "reading " + b.name);
      return Status::Ok();
    });
  }
  return RunTasks(tasks);
}

Status CopyEngine::CastBlockOnCpu(const BlockRuntime& b) { return ReadWeights(b, b.staging, true); }

Status CopyEngine::WaitReady(uint32_t step) {
  const uint64_t gen = gen_;
  const BlockRuntime& b = state_->blocks[state_->steps[step].block];
  if (b.feed == Feed::kDiskOnCpu) {
    const bool listed = enqueued_gen_[b.index] == gen;  // the plan copied it earlier in this pass
    if (!listed) disk_bytes_ += b.source_bytes;
    if (!b.needs_cpu_cast) return Status::Ok();
    if (b.cast_inline || !listed) {
      // No worker copy this pass (cast into disk staging, or the plan lists no copy for the block): cast now.
      const double t0 = WallUs();
      BIGPLAN_RETURN_IF_ERROR(CastBlockOnCpu(b));
      std::lock_guard<std::mutex> lock(mu_);
      disk_reads_.push_back({step, b.index, -1, ReadBytes(b), t0, WallUs(), disk_path_[b.index]});
      return Status::Ok();
    }
    return WaitIssued(b.index, gen);
  }
  if (!IsGpuStreamed(b)) return Status::Ok();
  BIGPLAN_RETURN_IF_ERROR(WaitIssued(b.index, gen));
  BIGPLAN_RETURN_IF_ERROR(Cuda(cudaSetDevice(b.device), "cudaSetDevice"));
  return Cuda(cudaStreamWaitEvent(Streams(b.device)->compute, ready_[b.index][gen % 2], 0),
              "waiting for " + b.name + "'s copy");
}

Status CopyEngine::StepBegin(uint32_t step) {
  step_wall_start_[step] = WallUs();
  const BlockRuntime& b = state_->blocks[state_->steps[step].block];
  if (b.device < 0) return Status::Ok();
  return Record(step_start_[step], Streams(b.device)->compute, "recording a step start");
}

Status CopyEngine::StepEnd(uint32_t step) {
  step_wall_end_[step] = WallUs();
  const BlockRuntime& b = state_->blocks[state_->steps[step].block];
  if (b.device < 0) return Status::Ok();
  cudaStream_t s = Streams(b.device)->compute;
  BIGPLAN_RETURN_IF_ERROR(Record(step_end_[step], s, "recording a step end"));
  return Record(compute_done_[step][gen_ % 2], s, "recording compute done");
}

void CopyEngine::WorkerLoop(int worker) {
  for (;;) {
    Job job;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
      if (stop_) return;
      job = std::move(queue_.front());
      queue_.pop_front();
    }
    Status status = RunJob(worker, job);
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!status.ok() && worker_error_.ok()) worker_error_ = status;
      issued_gen_[job.copy->block] = std::max(issued_gen_[job.copy->block], job.gen);
      --pending_;
    }
    cv_.notify_all();
  }
}

Status CopyEngine::RunJob(int worker, const Job& job) {
  const CopyRuntime& c = *job.copy;
  const BlockRuntime& b = state_->blocks[c.block];
  if (job.cpu_cast) {
    const double t0 = WallUs();
    BIGPLAN_RETURN_IF_ERROR(CastBlockOnCpu(b));
    std::lock_guard<std::mutex> lock(mu_);
    disk_reads_.push_back({c.step, b.index, worker, ReadBytes(b), t0, WallUs(), disk_path_[b.index]});
    return Status::Ok();
  }
  // Disk staging may be reused only once the H2D copies that read it have finished.
  for (const auto& [block, gen] : job.copy_waits) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return issued_gen_[block] >= gen || stop_; });
      if (stop_) return MakeError(ErrorCode::kInternal, "copy engine stopped");
    }
    BIGPLAN_RETURN_IF_ERROR(Cuda(cudaEventSynchronize(ready_[block][gen % 2]),
                                 "waiting for " + state_->blocks[block].name + "'s copy"));
  }
  const DiskPath path = disk_path_[b.index];
  const double t0 = WallUs();
  if (path == DiskPath::kDirect) {
    BIGPLAN_RETURN_IF_ERROR(ReadDirect(b));
  } else {
    BIGPLAN_RETURN_IF_ERROR(ReadWeights(b, b.disk_staging, false));
  }
  const double t1 = WallUs();
  size_t slot = 0;
  while (slot < devices_.size() && devices_[slot].device != b.device) ++slot;
  cudaStream_t s = worker_streams_[worker][slot];
  BIGPLAN_RETURN_IF_ERROR(Cuda(cudaSetDevice(b.device), "cudaSetDevice"));
  for (cudaEvent_t e : job.compute_waits) {
    BIGPLAN_RETURN_IF_ERROR(Cuda(cudaStreamWaitEvent(s, e, 0), "cudaStreamWaitEvent"));
  }
  BIGPLAN_RETURN_IF_ERROR(Record(copy_start_[c.index], s, "recording a copy start"));
  const std::string what = "copying " + b.name + " to cuda:" + std::to_string(b.device);
  if (path == DiskPath::kDirect) {
    // Each tensor from where its bytes landed in disk staging (the read plan's copies, coalesced).
    for (const StagingCopy& copy : read_plans_[b.index].copies) {
      BIGPLAN_RETURN_IF_ERROR(Cuda(cudaMemcpyAsync(b.staging + copy.block_offset, b.disk_staging + copy.staging_offset,
                                                   copy.bytes, cudaMemcpyHostToDevice, s),
                                   what));
    }
  } else {
    BIGPLAN_RETURN_IF_ERROR(
        Cuda(cudaMemcpyAsync(b.staging, b.disk_staging, b.weight_bytes, cudaMemcpyHostToDevice, s), what));
  }
  BIGPLAN_RETURN_IF_ERROR(Record(copy_end_[c.index], s, "recording a copy end"));
  BIGPLAN_RETURN_IF_ERROR(Record(ready_[b.index][job.gen % 2], s, "recording a ready event"));
  std::lock_guard<std::mutex> lock(mu_);
  disk_reads_.push_back({c.step, b.index, worker, ReadBytes(b), t0, t1, path});
  return Status::Ok();
}

Status CopyEngine::EndForward(ForwardTimings* timings) {
  {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return pending_ == 0; });
  }
  Status first;
  auto keep = [&first](Status s) {
    if (!s.ok() && first.ok()) first = s;
  };
  if (gpu_) {
    for (DeviceStreams& ds : devices_) {
      keep(Cuda(cudaSetDevice(ds.device), "cudaSetDevice"));
      keep(Cuda(cudaStreamSynchronize(ds.compute), "synchronizing the compute stream"));
      for (cudaStream_t s : ds.copy) keep(Cuda(cudaStreamSynchronize(s), "synchronizing a copy stream"));
    }
    for (auto& streams : worker_streams_) {
      for (cudaStream_t s : streams) keep(Cuda(cudaStreamSynchronize(s), "synchronizing a disk stream"));
    }
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!worker_error_.ok()) keep(worker_error_);
  }
  if (!first.ok() || timings == nullptr) return first;

  auto gpu_us = [this](int device, cudaEvent_t e, double* out) {
    const DeviceStreams* ds = Streams(device);
    float ms = 0;
    if (ds == nullptr || e == nullptr || cudaEventElapsedTime(&ms, ds->forward_start, e) != cudaSuccess) {
      cudaGetLastError();
      return false;
    }
    *out = ds->start_offset_us + ms * 1000.0;
    return true;
  };
  timings->wall_start = wall_start_;
  timings->steps.clear();
  for (uint32_t i = 0; i < state_->steps.size(); ++i) {
    const BlockRuntime& b = state_->blocks[state_->steps[i].block];
    StepTiming t;
    t.step = i;
    t.block = b.index;
    t.device = b.device;
    t.start_us = step_wall_start_[i];
    t.end_us = step_wall_end_[i];
    if (b.device >= 0) {
      gpu_us(b.device, step_start_[i], &t.start_us);
      gpu_us(b.device, step_end_[i], &t.end_us);
    }
    timings->steps.push_back(t);
  }
  timings->copies.clear();
  for (uint32_t index : copies_issued_) {
    const CopyRuntime& c = *state_->copies[index];
    const BlockRuntime& b = state_->blocks[c.block];
    if (!IsGpuStreamed(b)) continue;
    CopyTiming t;
    t.step = c.step;
    t.block = c.block;
    t.source = b.feed == Feed::kCopyH2D ? "cpu" : "disk";
    t.bytes = b.weight_bytes;
    if (gpu_us(b.device, copy_start_[index], &t.start_us) && gpu_us(b.device, copy_end_[index], &t.end_us)) {
      timings->copies.push_back(t);
    }
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const DiskRead& r : disk_reads_) {
      CopyTiming t;
      t.step = r.step;
      t.block = r.block;
      t.source = "disk_read";
      t.worker = r.worker;
      t.read = DiskPathName(r.path);
      t.bytes = r.bytes;
      t.start_us = r.start_us;
      t.end_us = r.end_us;
      timings->copies.push_back(t);
      switch (r.path) {
        case DiskPath::kDirect: ++timings->disk_direct_blocks; break;
        case DiskPath::kBounce: ++timings->disk_bounce_blocks; break;
        case DiskPath::kMappedFallback: ++timings->disk_direct_fallbacks; [[fallthrough]];
        case DiskPath::kMapped: ++timings->disk_mmap_blocks; break;
      }
      if (r.path == DiskPath::kDirect || r.path == DiskPath::kBounce) timings->disk_read_bytes += r.bytes;
    }
  }
  timings->cpu_tier_bytes = cpu_bytes_;
  timings->disk_tier_bytes = disk_bytes_;
  timings->disk_h2d_bytes = disk_h2d_bytes_;
  return Status::Ok();
}

}  // namespace bigplan::executor_internal
