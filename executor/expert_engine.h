// Routed experts on a GPU (internal to executor/): the non-resident experts of the sparse layers of a
// mixture-of-experts plan (schema::Weight.routed, schema::ExpertRing), moved or computed only when a router picks
// them.
//
// After a sparse layer's router, BlockWeights::BeginExperts reaches Begin: the choices (and, in a decode forward, the
// normed input as float32) reach the host through mapped pinned memory (for one token the router's kernel writes
// them there itself: ChoicesForHost) and one event synchronization. Then (the host's job is posted before the
// copies are issued: it is the longer path):
//   - resident experts with rows are listed for the GPU as they are;
//   - of the chosen non-resident experts resting in pinned memory, in forwards of at most decode_max_tokens tokens,
//     cpu_share of their bytes go to the host (executor/cpu_experts.h), computed on a thread and a pool (leaving a
//     core to the calling thread) while the calling thread issues the GPU's work: whole experts from the last (in
//     expert order), then, where the share ends inside an expert, the first rows of its intermediate (gate and up
//     rows, down columns; a multiple of `split_rows`) — the GPU copies and computes the rest of that expert and the
//     two partial sums add up to its output (FFN(x) = sum over intermediate slices of down[:, s] act(gate[s] x)
//     up[s] x). So each layer's host and copy work keep the planned ratio however few experts it has off the GPU
//     (2 of 8 per token in Mixtral: whole experts gave the host all or none of a layer's one non-resident expert).
//     Experts below Create's split_min_bytes (or with splitting off) stay whole: the host takes such an expert where
//     the share covers at least half of it (so round(cpu_share x n) of n equal experts). The
//     others are copied into the ring's slots on a copy stream, each copy waiting for the release of the slot's
//     previous expert (a split expert's down columns by one 2-D copy); the kernel waits for a copy in Acquire and
//     releases the slot in Release, which issues the next copy;
//   - disk-resting experts are read into a pinned disk slot (O_DIRECT where the filesystem allows), cast to the
//     execution dtype when the checkpoint's differs, then copied like the others.
// Quantized experts (plan --weights, pre-quantized checkpoints) move as they rest in pinned memory, their rows in
// formats/quant.h's layout: the ring's slots hold those bytes, the host multiplies its share of them in that format
// (cpu_matvec; not act-order GPTQ's permuted columns), and the GPU computes them as grouped quantized products
// (fused::QuantGemv batched: per-row fp8/int8, int4 in groups of a multiple of 8 columns, GPU-resident int4 in its
// split layout) or, for other layouts, one by one. They never rest on disk (a read would have to quantize on the
// way; Create refuses such a plan).
// Forwards of at least copy_all_tokens tokens (prefills, where nearly every expert is chosen) start copying the
// layer's first ring's worth of non-resident experts when the layer's step starts, before its attention, so the
// copy engine never waits for the router. Finish adds the host's weighted sum to the GPU's (mapped pinned memory read,
// once the host's number is in, by the kernel that waited for it: fused::WaitFlagAdd; no copy engine). Nothing is allocated per layer beyond LibTorch's caching allocator.
//
// Next-layer prefetch (decode forwards, `prefetch` > 0 experts a layer): right after a sparse layer's router, the
// GPU also runs the next sparse layer's router on this layer's MoE input (rescaled from this layer's post-attention
// norm weights to the next layer's) and ranks its top_k, and the host, once this layer's copies are issued, copies
// the `prefetch` most probable of those that rest in pinned memory (a resident top one is passed over for the next)
// into free ring slots, behind this layer's copies.
// They cross PCIe while the copy engine would otherwise wait: for this layer's experts to be computed, the combine,
// the next layer's attention and router, and the host's sync. When the next router chooses a prefetched expert its
// copy is used (no second copy, and the host does not compute it); the others free their slots. A prediction never
// changes a result, only which bytes are already on the GPU. Prefetch runs only while a layer's chosen experts
// (tokens x top_k) and the prefetched ones fit the ring together, so no slot is taken twice.
#pragma once

#include <ATen/ATen.h>
#include <cuda_runtime.h>

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "executor/arena.h"
#include "executor/cpu_experts.h"
#include "executor/cpu_matvec.h"
#include "executor/cuda_handles.h"
#include "executor/disk_reads.h"
#include "executor/expert_share.h"
#include "executor/kernels.h"
#include "executor/model_state.h"
#include "support/result.h"

namespace bigplan::executor_internal {

class ExpertEngine {
 public:
  // Counts of one forward (for run's report and the trace).
  struct Stats {
    uint64_t resident = 0, copied = 0, host = 0, disk = 0;  // expert computations by path
    uint64_t copied_bytes = 0, host_bytes = 0;
    uint64_t split = 0;  // experts split between the host and the GPU (each counted in `host` and `copied` too)
    double wait_router_us = 0;  // host time waiting for the routers' choices
    // Next-layer prefetch: experts copied ahead of their router, of which it chose (their computations count in
    // `copied`), and the bytes of those it did not choose (in copied_bytes too: they crossed PCIe).
    uint64_t prefetched = 0, prefetch_hits = 0, prefetch_wasted_bytes = 0;
    // When recording (SetRecording): the copy stream's busy time (sum of the layers' copy spans, GPU clock) and the
    // gaps between consecutive spans (the copy engine waiting for routers), over the forward's routed layers.
    double copy_busy_us = 0, copy_idle_us = 0;
    // Decode forwards with host experts: how long the GPU waited for the host's sums (its polling, summed over the
    // layers), the host's job time, and the share in effect (after adapting, see Create's adapt_share).
    double host_wait_us = 0, host_busy_us = 0;
    double host_copy_us = 0;  // with adapt_share: the copies' time in the layers the host computed in
    double share = 0;
  };

  // For the plan's expert ring `ring` (an index into ModelState::expert_rings; nullptr when there is no such ring,
  // or in CPU mode): the sparse layers computed on that ring's GPU. A plan whose sparse layers are computed on
  // several GPUs has a ring, and an engine, per GPU: each copies its layers' experts over its own GPU's link, and
  // the host computes the share of each. `threads`: the host's computing threads
  // (0: every core); `host_compute` false: the host computes no expert (every chosen one is copied); `prefetch`:
  // next-layer experts prefetched per sparse layer in decode (-1: the plan's ExpertRing.prefetch; at most top_k and
  // the ring's slots beyond one token's top_k).
  // kInvalidArgument for a routed expert the ring cannot hold or the host cannot multiply; kDevice for CUDA failures.
  // `split_rows`: the host may take part of one expert per layer (see above), a multiple of this many intermediate
  // rows (and the GPU at least as many), of an expert of at least `split_min_bytes`; 0: whole experts only.
  // `spin_us`: how long the thread that runs the host's jobs spins for the next one before it sleeps (-1:
  // kSpinMicros; the pool's workers keep their own short spin).
  // `adapt_share`: after each decode forward with host experts, the share moves toward the point where the host's
  // jobs and the copies of the layers they ran in take equally long (executor/expert_share.h AdaptShare; the jobs
  // timed by the host thread, the copies by events on the copy stream). Off: the plan's share throughout (the host's
  // experts, and so the logits' roundings, are the same from run to run; adapting makes them depend on timing).
  static Result<std::unique_ptr<ExpertEngine>> Create(const ModelState& state, size_t ring, int threads,
                                                      bool host_compute = true,
                                                      int prefetch = -1, int64_t split_rows = kSplitRows,
                                                      uint64_t split_min_bytes = kSplitMinBytes, int spin_us = -1,
                                                      bool adapt_share = false);

  static constexpr int kSpinMicros = 0;
  static constexpr int64_t kSplitRows = 64;
  // Smaller experts stay whole: a split costs the GPU a task of its own and narrow 2-D copies, more than the half
  // expert it saves at most (Qwen3-30B-A3B's 9.4 MB experts, H100: 18.37 ms a token split against 17.64 whole;
  // Mixtral's 352 MB ones: 20.62 against 26.81).
  static constexpr uint64_t kSplitMinBytes = 32ull << 20;
  ~ExpertEngine();
  ExpertEngine(const ExpertEngine&) = delete;
  ExpertEngine& operator=(const ExpertEngine&) = delete;

  // Whether block `b` has routed experts.
  bool Routes(const BlockRuntime& b) const;
  // A forward of `tokens` tokens begins (chooses its paths); resets the stats.
  void BeginForward(int64_t tokens);
  // Block b's step begins on `compute` (copy-all forwards start copying its experts).
  Status StepStarted(const BlockRuntime& b, cudaStream_t compute);
  // See BlockWeights::BeginExperts.
  // Forwards of at most kGroupTokens tokens whose copied experts fit the ring compute the GPU's experts as two
  // groups (BlockWeights::ExpertGroup): the resident ones, then the copied ones once every copy is in.
  static constexpr int64_t kGroupTokens = 16;
  // `written`: the router's kernel wrote the choices (and x) to ChoicesForHost(tokens)'s buffers.
  Result<BlockWeights::ExpertWork> Begin(const BlockRuntime& b, const at::Tensor& x, const at::Tensor& topi,
                                         const at::Tensor& topw, cudaStream_t compute, bool written);
  // The mapped buffers Begin reads a forward's choices from, for `tokens` tokens (BlockWeights::ChoicesForHost): x
  // only where the host computes experts for that many tokens in this forward.
  BlockWeights::HostChoices ChoicesForHost(int64_t tokens) const;
  Status AcquireGroup(const BlockRuntime& b, int32_t index, cudaStream_t compute);
  Status ReleaseGroup(const BlockRuntime& b, int32_t index, cudaStream_t compute);
  // For a copied expert: makes `compute` wait for its copy and sets views[0..3) (gate, up, down) into its slot (a
  // split expert's: the GPU's rows of gate and up, [inter - host rows, hidden], and down's columns, [hidden, inter -
  // host rows]; for a row-quantized one, uint8 rows of those columns, and *down_quant the down matrix's columns and
  // group, else left as they are); returns false for an expert that is not copied in this layer (resident: its slots
  // hold it).
  // A split expert's copy records two events, after its gate and up rows and after down's columns: Acquire waits for
  // the first only, AcquireDown (before the down product) for the second. For other experts AcquireDown does nothing.
  struct SplitQuant {
    int64_t cols = 0, group = 0;  // 0: not a split quantized expert
  };
  Result<bool> Acquire(const BlockRuntime& b, int32_t expert, cudaStream_t compute, at::Tensor* views,
                       SplitQuant* down_quant = nullptr);
  Status AcquireDown(const BlockRuntime& b, int32_t expert, cudaStream_t compute);
  Status Release(const BlockRuntime& b, int32_t expert, cudaStream_t compute);
  // Whether `expert` is copied in the layer begun last and not yet released (Acquire returns true for it).
  bool Moves(int32_t expert) const {
    return expert >= 0 && expert < num_experts_ && copy_of_[static_cast<size_t>(expert)] >= 0;
  }
  // Adds the host experts' weighted sum to *out ([tokens, hidden] on the block's device; out + sum.to(out's dtype);
  // nothing if the host computed none). Does not wait for the host: `compute` waits (fused::WaitFlagAdd on a
  // sequence number the host thread writes after the sum, then the add), so what follows is queued at once; the host
  // job's error surfaces at the next Begin or at EndForward.
  Status Finish(const BlockRuntime& b, cudaStream_t compute, at::Tensor* out);
  // After a forward's work has finished on the GPU: the last host job's status (kDevice also when the GPU gave up
  // waiting for the host, kHostWaitTimeoutNs).
  Status EndForward();
  static constexpr uint64_t kHostWaitTimeoutNs = 30'000'000'000ull;

  const Stats& stats() const { return stats_; }

  // Timeline of the forward (when recording): per sparse layer the wait for the router's choices (with the layer's
  // experts by path) and the host's experts, on tracks "experts" and "host experts" (host clock); and from CUDA
  // events, when each router's choices were ready ("router (GPU)"), when the GPU had the host's sum ("expert waits
  // (GPU)") and the spans of each layer's copies and prefetches on the copy stream ("expert copies (GPU)"), aligned to
  // the host clock at the first router's synchronization. Taken by the executor after each forward (the forward's work has finished); fills
  // Stats::copy_busy_us and copy_idle_us.
  struct Event {
    std::string name, track;
    std::chrono::steady_clock::time_point start;
    double dur_us = 0;
    std::vector<std::pair<std::string, std::string>> args;
  };
  void SetRecording(bool on) { recording_ = on; }
  int prefetch() const { return prefetch_; }
  std::vector<Event> TakeEvents();
  double cpu_share() const { return cpu_share_; }
  int threads() const { return pool_ ? pool_->threads() : 0; }

 private:
  // Whether the host computes experts in a forward of `tokens` tokens (a decode forward with host compute).
  bool HostPath(int64_t tokens) const;
  struct Matrix {  // one of an expert's three matrices
    const WeightRuntime* w = nullptr;
    uint64_t slot_offset = 0;  // in a ring slot
  };
  struct Expert {
    bool routed = false;            // else resident (its slots hold it)
    schema::Tier tier = schema::Tier::Gpu;
    std::array<Matrix, 3> m;        // gate, up, down
    const uint8_t* host = nullptr;  // Cpu tier: the first matrix's bytes; the three are contiguous
    uint64_t span = 0;              // bytes from the first matrix to the end of the last (Cpu tier)
  };
  struct Layer {
    std::vector<Expert> experts;  // by expert index
  };
  struct Copy {
    int32_t expert = -1;
    int slot = -1;
    bool used = false;  // holds a chosen expert not yet released (false: released, or prefetched but not chosen)
    int64_t row0 = 0;   // a split expert: the GPU's intermediate rows start here (the host computes [0, row0))
  };
  // A split expert's part in a slot: gate rows [row0, inter) at 0, up's right after (gate and up back to back),
  // down's columns [row0, inter) as a [hidden, inter - row0] matrix at down_offset.
  // A split expert's GPU part in its slot: gate's and up's rows [row0, inter), then down's columns [row0, inter) in
  // rows of down_row_bytes (row-quantized: those columns' values, then their records; per-row scales stay one a row:
  // down_group == rows).
  struct SplitLayout {
    int64_t rows = 0;  // inter - row0
    uint64_t up_offset = 0, down_offset = 0;
    uint64_t down_row_bytes = 0;
    int64_t down_group = 0;  // row-quantized down only
  };
  SplitLayout SplitOf(const Expert& ex, int64_t row0) const;

  ExpertEngine() = default;
  Status IssueCopies(const BlockRuntime& b);
  Status IssueCopy(uint32_t block, Copy* c);
  // Next-layer prefetch: the prediction's kernels after block b's router (decode), then its copies.
  Status Predict(const BlockRuntime& b, const at::Tensor& x, cudaStream_t compute);
  // Issues the prediction's copies once this layer's copies are issued and the prediction is in; without `wait`, a
  // prediction still running is left for a later call (AcquireGroup, Release, Finish; Finish waits).
  Status IssuePrefetch(const BlockRuntime& b, bool wait);
  // Recording: a timing event recorded on `stream` now (from a pool made once), kept with `label` for TakeEvents.
  void MarkGpu(const std::string& label, const std::string& track, cudaStream_t stream, bool span_end);
  // Recording: marks the start of block b's copies on the copy stream (IssueCopies marks their end), unless a span
  // is open.
  void OpenCopySpan(const BlockRuntime& b);

  int device_ = -1;
  int64_t hidden_ = 0, max_tokens_ = 0, top_k_ = 0, num_experts_ = 0;
  double cpu_share_ = 0;
  bool adapt_ = false;
  std::vector<CudaEvent> adapt_spans_;  // timing events, two a host-computing layer: before and after its copies
  size_t adapt_used_ = 0;               // spans closed in this forward
  bool adapt_span_open_ = false;
  Status OpenAdaptSpan();
  int host_layers_ = 0;        // this forward's host jobs
  double host_busy_us_ = 0;    // their time (the host thread adds under mu_)
  double host_spanned_us_ = 0; // of it, the jobs whose layers' copies were timed (adapt_)
  bool host_job_spanned_ = false;  // the posted job's layer's copies are timed (under mu_)
  uint32_t decode_max_tokens_ = 0, copy_all_tokens_ = 0;
  cpu_experts::Activation act_ = cpu_experts::Activation::kSilu;
  std::vector<Layer> layers_;   // by block index (empty for blocks without routed experts)
  // The ring.
  uint8_t* ring_ = nullptr;
  int slots_ = 0;
  uint64_t slot_bytes_ = 0;
  std::vector<CudaEvent> ready_, free_;
  std::vector<CudaEvent> gate_up_ready_;  // per slot: a split expert's gate and up rows are in
  std::vector<bool> free_recorded_;
  int next_slot_ = 0;
  CudaStream copy_stream_;
  // Disk-resting experts: pinned slots and a reader per shard.
  uint8_t* disk_ring_ = nullptr;
  int disk_slots_ = 0;
  uint64_t disk_slot_bytes_ = 0;
  std::vector<CudaEvent> disk_copied_;
  std::vector<bool> disk_pending_;
  int next_disk_slot_ = 0;
  std::vector<std::unique_ptr<ShardReader>> readers_;  // by shard index
  // This layer's copies, in the order the kernel acquires them; copies_[issued_..) wait for a release.
  std::vector<Copy> copies_;
  size_t issued_ = 0;
  std::vector<int32_t> copy_of_;  // expert -> index into copies_ (-1: none)
  // Per layer (sized once): chosen rows per expert, the host's experts (0: none, else its rows, inter for all of it),
  // the host's index of each expert.
  std::vector<int32_t> count_;
  std::vector<int64_t> host_rows_;
  std::vector<int32_t> index_of_;
  std::vector<int32_t> members_[2];  // grouped experts (Begin), capacity num_experts
  std::vector<HostableExpert> hostable_;  // Begin: the experts the host may take, their ids, its rows of each
  std::vector<int32_t> hostable_ids_;
  std::vector<int64_t> share_rows_;
  int64_t split_rows_ = 0;      // 0: no split
  uint64_t split_min_bytes_ = 0;  // experts smaller than this stay whole
  int32_t split_expert_ = -1;  // this layer's split expert (-1: none)
  bool prefetched_ = false;       // copy-all: copies_ were issued at StepStarted
  uint32_t prefetched_block_ = 0;
  // Next-layer prefetch: per block, the next sparse block on this device (-1: none), its router's weight and the
  // ratio of its post-attention norm weights to this block's (float32; made at the first prediction).
  struct Next {
    int32_t block = -1;
    std::string name;
    at::Tensor router;
    const WeightRuntime* norm = nullptr;
    const WeightRuntime* next_norm = nullptr;
    at::Tensor ratio;
  };
  std::vector<Next> next_;
  int prefetch_ = 0;
  int candidates_ = 0;              // experts ranked per prediction (the next router's top_k, at most 64)
  Allocation predicted_;            // mapped int64 [candidates_]: the next layer's most probable experts, in order
  CudaEvent predicted_ready_;
  bool predicting_ = false;         // this layer launched a prediction
  std::vector<Copy> next_copies_;   // prefetched for next_copies_block_
  int32_t next_copies_block_ = -1;
  // The forward.
  int64_t tokens_ = 0;
  bool decode_ = false, copy_all_ = false;
  // Mapped pinned buffers: the router's choices and weights, x (float32), index arrays, the host's result.
  Allocation choices_;  // int64 topi [max_tokens x k], then float topw [max_tokens x k]
  Allocation x_host_;   // float [max_tokens x hidden]
  Allocation indices_;  // int64: per task rows then picks
  Allocation y_host_;   // float [max_tokens x hidden]
  // Grouped experts: pointer arrays and routing weights (mapped), and the products' device buffers.
  bool grouped_ = false;   // every expert's gate and up lie back to back (resident and in a slot)
  // kNone: the grouped experts are plain matrices; else every expert's are quantized rows of this format (per-row
  // fp8/int8, or int4 in groups of group_cols_ columns: gate and up's, down's).
  quant::Format group_format_ = quant::Format::kNone;
  int64_t group_cols_[2] = {0, 0};
  bool resident_split_ = false;  // the resident quantized experts are int4 in the split layout (copied ones never)
  Allocation groups_;      // per group: 6 pointer arrays of num_experts, then float weights [num_experts x kGroupTokens]
  at::Tensor gu_buf_, h_buf_, y_buf_;
  at::Tensor ptr_dev_;  // groups_ mirrored in device memory (the pointer arrays cuBLAS reads, the routing weights)
  int64_t inter_ = 0;
  bool copies_grouped_ = false;  // this layer's copies form group 1
  CudaEvent choices_ready_;
  // Host compute.
  std::unique_ptr<cpu_matvec::MatVecPool> pool_;
  std::unique_ptr<cpu_experts::ExpertRunner> runner_;
  std::vector<cpu_experts::Expert> host_experts_;        // this layer's, indexed by host_expert_of_
  std::vector<cpu_experts::Assignment> host_assignments_;
  // The host's experts run on host_thread_ (with the pool) from Begin on, while the calling thread issues the GPU's
  // work; Finish waits for them.
  int host_tokens_ = 0;
  bool host_pending_ = false;
  std::thread host_thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool host_job_ = false, host_done_ = true, stop_ = false;
  std::atomic<uint32_t> host_posts_{0};  // bumped with each job posted and at shutdown (host_thread_ spins on it)
  std::chrono::microseconds host_spin_{0};
  Status host_status_;
  uint32_t host_seq_ = 0;        // the last job's number; the host thread writes it to host_flag_ when done
  std::string host_block_;
  Allocation host_flag_;         // mapped: [0] the last finished job's number, [1] set by the GPU on a timeout,
                                 // bytes [8, 16): the GPU's polling for the host's sums in this forward, ns
  void HostLoop();
  // Waits for the host's job in progress (none: returns at once); its error with `where`, or the GPU's timeout.
  Status WaitHostJob(const std::string& where);
  Stats stats_;
  bool recording_ = false;
  std::mutex events_mu_;
  std::vector<Event> events_;
  // GPU-side marks of the forward (recording): pool of timing events, and per mark its label, track, event and
  // whether it ends the span its previous mark on the track started. The first router mark is aligned with the host
  // time its synchronization returned (first_sync_).
  std::vector<CudaEvent> mark_pool_;
  struct Mark {
    std::string label, track;
    int event = -1;
    bool span_end = false;
  };
  std::vector<Mark> marks_;
  std::chrono::steady_clock::time_point first_sync_;
  bool first_sync_set_ = false;
  bool copy_span_open_ = false;  // a layer's copies began on the copy stream's track; the last one ends it
  std::string copy_span_label_;
  void CollectGpuMarks();
};

}  // namespace bigplan::executor_internal
