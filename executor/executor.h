// bigplan's executor: loads a plan and its checkpoint once, then replays the plan's steps for every forward pass,
// overlapping weight copies (pinned host -> GPU, disk -> pinned -> GPU) with compute.
//
// This header is the public API for services. It uses only standard C++ types (no LibTorch, no CUDA).
//
// Modes. With a CUDA device (and not ExecutorOptions::force_cpu), blocks run on the device the plan names and
// streamed blocks are copied on dedicated copy streams. Without one (or forced), every block runs on the CPU from
// the same plan: GPU-tier weights live in a host arena, CPU-tier weights are used in place from the host pool,
// disk-tier weights straight from the memory-mapped shard (cast into the block's staging buffer when the plan's
// execution dtype differs from the file's).
//
// Disk tier (ExecutorOptions::disk_direct_io, the default). On a GPU, a disk worker reads a block's tensors with
// pread on a file descriptor opened with O_DIRECT (opened once per shard at load) straight into the block's pinned
// disk staging buffer, in 4 KiB-aligned chunks of up to 16 MiB read in parallel, then copies each tensor from
// where it landed to the device staging buffer. The page cache is left out: the disk tier does not silently stay
// in RAM after the first pass, and dropping the caches measures the disk. Where the filesystem refuses O_DIRECT
// (e.g. tmpfs), a plain descriptor is read and posix_fadvise(POSIX_FADV_DONTNEED) drops the pages after each read.
// A block whose weights must be cast to the execution dtype is read through a small aligned bounce buffer per
// thread and cast on the CPU into the pinned staging (on the CPU too: that is the only disk read CPU mode does).
// CPU mode uses disk-tier weights that need no cast in place from the mapping (zero-copy; they go through the
// page cache, which is what a CPU-only run wants). Blocks the direct reads cannot take (their aligned reads would
// not fit the staging buffer) are copied from the mapping and counted in Stats::disk_direct_fallbacks.
//
// Memory. Load allocates one arena per device and one pinned host pool, with the plan's sizes, and fills the
// resident and CPU-tier weights. A forward pass allocates no weight or staging memory; activations and
// intermediates come from LibTorch's caching allocator (the plan reserves room for them).
//
// Threading contract. An Executor may be shared between threads. Every public method takes one internal mutex,
// so concurrent calls are serialized: each runs to completion before the next starts, and none observes or
// leaves a half-updated state. Calls are not reordered relative to lock acquisition order, which the OS decides;
// a caller that needs a particular interleaving of Forward calls on one KV cache (e.g. continuing a sequence)
// must order them itself. Generate holds the mutex for the whole generation, so another thread's Forward cannot
// interleave with its decode steps. stats() and info() are safe at any time.
//
// KV cache. Forward continues from the tokens of earlier Forward calls (position = tokens already cached) until
// Reset(). Generate starts from an empty cache (it resets first) and leaves the generated sequence cached.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "support/result.h"

namespace bigplan {

struct ExecutorOptions {
  // Run every block on the CPU even if a CUDA device is present.
  bool force_cpu = false;
  // Worker threads that read disk-tier blocks (and, on the CPU, cast them). 0: min(4, disk-staging buffers),
  // at least 1 when the plan has disk-tier blocks.
  int disk_workers = 0;
  // Print load progress ("loading weights: 1.20 GiB / 10.00 GiB") to stderr about once a second while loading
  // takes longer than a second.
  bool progress = true;
  // Keep a timeline of every forward pass for WriteTrace (copies, compute steps, disk reads). Stats always holds
  // the timings of the last forward pass.
  bool record_trace = false;
  // Intra-op threads for CPU compute; 0 leaves LibTorch's default.
  int cpu_threads = 0;
  // Read disk-tier blocks with pread (O_DIRECT where the filesystem allows) instead of copying from the mapped
  // shard (see "Disk tier" above). Off: every disk-tier read copies or casts from the mapping, through the page
  // cache.
  bool disk_direct_io = true;
  // Replay decode steps (one token per row after at least one cached token) from CUDA graphs. Applies to plans
  // whose every block is Gpu tier (on one or several CUDA devices: one graph per run of consecutive blocks on one
  // device, the hidden state copied to the next device's graph between replays), and to one-GPU plans whose streams
  // copy pinned weights only (no disk-tier, host-computed or routed-expert units: the graph holds the step's copies
  // and their waits, issued by the stream engine's inline passes), for architectures whose kernels have a static
  // decode step (the Llama family; not dynamic NTK RoPE past max_position_embeddings). The first decode step at a
  // batch size runs eagerly on a side stream (warm-up) and is captured; later ones copy the token ids and the
  // position to the device and replay it. Prefills: see prefill_graph_shapes and micro_batch_rows. Everything else
  // (a first pass of one token, other plans, CPU mode) runs eagerly. The captured step attends over the whole KV cache with a mask (results equal the eager path's within
  // the execution dtype's rounding). A replayed step has no per-block events: its Stats::last_steps is empty and
  // it adds nothing to the trace but the time it takes in Stats::last_forward_ms.
  bool cuda_graphs = true;
  // Run the fused CUDA kernels (executor/fused_ops.h: matrix-vector products with their bias and residual, q/k/v and
  // gate/up as one product each, RMSNorm, SiLU x up, RoPE with the KV-cache write, split-K decode attention) for
  // Llama-family layers in bf16/fp16 on a GPU. Off: the same math as LibTorch ops (more kernels per layer).
  bool fused_kernels = true;
  // A prompt's quantized experts dispatched from the host (with fused_kernels, bf16, a GPU with grouped products):
  // dequantized into a scratch, a window of consecutive experts at a time, and computed by two grouped products per
  // window (Stats::expert_grouped_prompt counts them). Off: each expert by itself (its matrices dequantized, or
  // per-row fp8/int8 multiplied by their values and scaled). The same math within the execution dtype's rounding.
  bool grouped_prompt_experts = true;
  // Host compute (plans made with `plan --cpu-share`): forwards of at most the plan's host_max_tokens tokens
  // multiply the last rows of the streamed matrices the plan marks on the host CPU, with this many threads (0: every
  // core; the calling thread is one of them), while the other rows stream. Off: every row streams (the plan's
  // predictions for decode then do not hold).
  bool host_compute = true;
  int host_threads = 0;
  // Mixture-of-experts plans: experts of the next sparse layer prefetched per layer in decode forwards
  // (executor/expert_engine.h); -1: the plan's (ExpertRing.prefetch), 0: none; at most num_experts_per_tok.
  int expert_prefetch = -1;
  // Mixture-of-experts plans, decode forwards with a host share: where a layer's host share ends inside an expert,
  // the host computes the first rows of its intermediate (a multiple of this many) and the GPU copies and computes
  // the rest, so every layer splits its bytes at the share (executor/expert_engine.h). -1: 64 rows; 0: whole experts
  // only (the host takes the last round(share x n) of a layer's n). Only experts of at least expert_split_min_bytes
  // are split (-1: 32 MiB; smaller ones lost more to the GPU's extra task and narrow copies than they gained).
  int expert_split_rows = -1;
  int64_t expert_split_min_bytes = -1;
  // Mixture-of-experts plans with a host share: how long the thread that runs the host's expert jobs spins waiting
  // for the next layer's job before it sleeps, in microseconds (-1: ExpertEngine::kSpinMicros, none). On an H100
  // host (16 cores), 1000 us took the Mixtral shape's rare late starts away (layers whose job started over 200 us
  // after the router: 4-6% without, up to 3.3 ms late; 1% with, at most 230 us) but made the Qwen3 shape's jobs 7%
  // slower and its decode 0.9-1.8 ms slower (benchmarks/RESULTS.md), so it is off by default.
  int host_spin_us = -1;
  // Mixture-of-experts plans with a host share: after each decode forward, move the share toward the point where
  // neither the GPU (polling for the host's sums) nor the host waits (executor/expert_share.h AdaptShare), so a host slower or
  // faster than the plan's profile (other load, fewer host_threads) keeps both sides busy. Off by default: the plan's
  // share throughout, so which experts the host computes, and the logits' float32 roundings, do not depend on timing.
  bool adapt_expert_share = false;
  // Micro-batch pipelining: a batched pass of a plan whose every block is resident on two or more GPUs (and that
  // has no routed experts or host units) is cut into micro-batches of this many rows; each micro-batch runs on
  // streams of its own on every GPU, so one GPU computes micro-batch k + 1 while the next computes micro-batch k
  // (the hidden state hops between them by a peer copy ordered on those two streams only). Results equal the
  // unpipelined pass's within the execution dtype's rounding (products over fewer rows may take other cuBLAS
  // kernels). 0 (auto): ceil(512 / tokens per row) rows, so that a micro-batch's products stay compute-bound,
  // doubled while that leaves more than two micro-batches per GPU (2x H200, 8 rows of 512 tokens: 4 micro-batches
  // of 2 rows ran 3-5% faster than 8 of 1), and no pipelining unless that makes at least two micro-batches (decode
  // steps are not pipelined: their cost is reading the weights, which every micro-batch would repeat); -1: off.
  // ForwardOptions::micro_batch_rows overrides it for one pass. A pipelined pass records no per-block timings
  // (Stats::last_steps is empty); Stats::last_micro_batches counts its micro-batches. A pass from an empty cache
  // whose shape ran before replays CUDA graphs (Stats::graph_prefills; ExecutorOptions::cuda_graphs, Llama family).
  int micro_batch_rows = 0;
  // How many micro-batches of a pipelined pass are in flight at once: each GPU takes its tasks (one micro-batch's run
  // of consecutive blocks on it) one at a time, micro-batches in groups of this many, within a group segment after
  // segment and the group's micro-batches in order. 0: one group of every micro-batch (the default: a GPU's next
  // input then crossed from the other GPU while it ran other micro-batches, so the hops hide; on 2x H200 with the
  // layers dealt in groups of 4, a batch-8 prefill of 4 micro-batches ran 50.8-51.3 ms, median, against 51.8-52.0 in
  // groups of 2). 2 with two GPUs is the schedule of earlier builds.
  int micro_batch_group = 0;
  // Prefill graphs on one GPU: for plans whose every block is resident on one GPU (Llama family, cuda_graphs on), a
  // pass from an empty cache pads each row at its end to a multiple of 64 tokens (at most max_seq_len) and runs the
  // blocks before the lm_head; a (rows, padded length) shape's second pass captures them in a CUDA graph, which its
  // later passes replay (Stats::graph_prefills); the lm_head runs on the real positions. Padding leaves the real
  // positions' results as unpadded passes give them (within the execution dtype's rounding: products over more rows
  // may take other cuBLAS kernels), and the padded positions' KV-cache entries lie past the sequence's end, where
  // later steps write before they attend. Up to this many shapes' graphs are kept (the least recently used goes
  // first; each holds its activations' memory, outside the plan's activation reserve); 0: no padding, no graphs.
  // Only passes of at most arch::kPrefillGraphTokens (2048) tokens, rows x padded tokens, are padded and captured;
  // longer ones run eagerly, so a graph's pool holds at most that many tokens' activations.
  int prefill_graph_shapes = 4;
  // Ranks: one process per plan device, so that a plan spans the GPUs of several hosts (plans whose every block is
  // resident on a GPU). world_size 0: this process runs the whole plan. Otherwise rank r (0 <= r < world_size) loads
  // only the blocks the plan places on cuda:r, on its CUDA device `local_device` (-1: cuda:r when this process sees
  // more than r devices, else cuda:0), and computes them in every pass; the hidden state travels to the next rank
  // over NCCL (LibTorch's c10d ProcessGroupNCCL; in CPU mode through the rendezvous store), the logits back to rank 0.
  // The ranks meet at `rendezvous`, "host:port", where rank 0 listens (c10d TCPStore); Load returns once all have
  // joined (kIo after rendezvous_timeout_s). Rank 0 drives: Forward and Generate on it run the whole plan (StepRows is
  // refused). Every other rank calls ServeRank(), which computes its part of each pass rank 0 runs and returns
  // when rank 0's executor is destroyed. Every rank needs the checkpoint directory (all of it). Decode steps replay
  // CUDA graphs on each rank as in one process (ExecutorOptions::cuda_graphs: one graph per run of consecutive
  // blocks a rank computes; the hidden state is received into, and sent from, the graphs' static buffers); other
  // passes run eagerly (no micro-batches). Results equal the one-process plan's on the same path. A tensor-parallel
  // plan (Plan.tensor_parallel N) runs as exactly N ranks (kInvalidArgument otherwise): rank r computes shard r of
  // every block, the shards' partial sums added by NCCL all-reduces (in CPU mode through the store, which also lets
  // such a plan run on the CPU), and its decode steps replay one graph of its whole shard.
  int world_size = 0;
  int rank = 0;
  std::string rendezvous;
  int local_device = -1;
  int rendezvous_timeout_s = 300;
};

struct ForwardOptions {
  // Reset() and the pass as one call: start a new sequence.
  bool reset = false;
  // Logits of the last position only: [batch, 1, vocab]. The lm_head computes only that position, and only it is
  // copied to the host (what a prefill for generation needs).
  bool last_position_only = false;
  // Overrides ExecutorOptions::micro_batch_rows for this pass when not 0 (-1: no pipelining; N > 0: N rows per
  // micro-batch).
  int micro_batch_rows = 0;
  // Overrides ExecutorOptions::micro_batch_group for this pass when not 0.
  int micro_batch_group = 0;
};

// Float logits of one forward pass, row-major [batch, seq, vocab].
struct Logits {
  int64_t batch = 0;
  int64_t seq = 0;
  int64_t vocab = 0;
  std::vector<float> data;
  float at(int64_t b, int64_t s, int64_t v) const { return data[(b * seq + s) * vocab + v]; }
  const float* row(int64_t b, int64_t s) const { return data.data() + (b * seq + s) * vocab; }
};

struct GenerateOptions {
  int max_new_tokens = 16;
  // Sampling: temperature <= 0 is greedy (argmax; ties to the lowest id). Otherwise logits / temperature, then
  // top_k (0: off), then top_p (nucleus, in (0, 1]; 1: off), sampled with a generator seeded by `seed` (same seed,
  // same prompts, same plan family -> same tokens). Doubles, used as doubles throughout: a top_p of 1e-300 keeps
  // the single most likely token (as a float it would be 0). Generate refuses (kInvalidArgument) a temperature
  // that is NaN or infinite, a top_p that is NaN or outside (0, 1], and top_k < 0.
  double temperature = 0.0;
  int top_k = 0;
  double top_p = 1.0;
  uint64_t seed = 0;
  // A row stops after it emits one of these (the stop token is included in its output). Generation ends when
  // every row has stopped or after max_new_tokens.
  std::vector<int64_t> stop_token_ids;
  // Called after every step (the prefill's first token is step 0) with the token each row emitted, -1 for rows
  // that had already stopped, from the thread that called Generate (with the executor's mutex held: it must not
  // call the executor). Returning false ends the generation after this step (the tokens so far are the result;
  // rows not stopped by a stop token keep stopped = false). Use it to stream text, match stop strings or cancel.
  std::function<bool(int step, const std::vector<int64_t>& tokens)> on_step;
};

// One sequence's part of a StepRows pass (continuous batching).
struct RowStep {
  int row = 0;                  // its KV-cache row (slot) in [0, max_batch)
  int64_t start_pos = 0;        // tokens of the sequence already cached in that row (0: a new sequence)
  std::vector<int64_t> tokens;  // the new tokens: a prompt, or the token generated last
};

struct GenerateResult {
  std::vector<std::vector<int64_t>> tokens;  // generated tokens per row (prompt excluded)
  std::vector<bool> stopped;                 // per row: ended on a stop token
  double prefill_ms = 0;                     // prompt forward pass + first token (time to first token)
  std::vector<double> decode_ms;             // each later token's forward pass + sampling
};

// Timings of one forward pass, relative to its start (microseconds). GPU mode: CUDA event timestamps; CPU mode
// and disk reads: wall clock.
struct StepTiming {
  uint32_t step = 0;
  uint32_t block = 0;
  int32_t device = -1;  // where it ran (-1: CPU)
  double start_us = 0;
  double end_us = 0;
};

struct CopyTiming {
  uint32_t step = 0;   // the step that issued the copy
  uint32_t block = 0;  // whose weights
  std::string source;  // "cpu" (pinned -> device), "disk" (H2D part of a disk copy), "disk_read" (shard ->
                       // pinned staging, or shard -> staging cast on the CPU), per worker thread
  int worker = -1;     // disk worker index for "disk_read", else -1
  // "disk_read" only, how the block was read: "direct" (pread into pinned staging; O_DIRECT where the filesystem
  // allows), "bounce" (pread through a bounce buffer, cast on the CPU), "mmap" (copied or cast from the mapping:
  // disk_direct_io off), "mmap_fallback" (from the mapping because the direct reads do not fit the staging buffer).
  std::string read;
  uint64_t bytes = 0;  // "disk_read": bytes read from the shard (for "direct", whole 4 KiB pages)
  std::string what;    // the weight (with its rows, "name[begin:end]", for a row chunk)
  double start_us = 0;
  double end_us = 0;
};

struct Stats {
  double load_seconds = 0;
  uint64_t loaded_bytes = 0;         // weight bytes read at load (resident + CPU tier)
  uint64_t forward_count = 0;
  // Totals over all forward passes.
  uint64_t cpu_tier_bytes = 0;       // pinned host -> device copies
  uint64_t disk_tier_bytes = 0;      // bytes read from shards for disk-tier blocks
  uint64_t disk_h2d_bytes = 0;       // pinned disk staging -> device copies
  // Disk-tier block reads by how they were done (CopyTiming::read); CPU-mode blocks used in place are not reads.
  uint64_t disk_direct_blocks = 0;     // "direct"
  uint64_t disk_bounce_blocks = 0;     // "bounce"
  uint64_t disk_mmap_blocks = 0;       // "mmap" and "mmap_fallback"
  uint64_t disk_direct_fallbacks = 0;  // "mmap_fallback": the direct path was on but the block's reads did not fit
  uint64_t disk_read_bytes = 0;        // bytes read from shards by "direct" and "bounce" reads (whole pages)
  // Weight bytes the host multiplied in place instead of copying (host units, ExecutorOptions::host_compute), and
  // the forward passes that did.
  uint64_t host_compute_bytes = 0;
  uint64_t host_compute_forwards = 0;
  // Routed experts (mixture-of-experts plans, planner/experts.h): expert computations by path over all forwards
  // (resident on the GPU, copied to it, of which read from disk first, computed by the host), the bytes copied and
  // read by the host, and the time the host waited for the routers' choices.
  uint64_t expert_resident = 0, expert_copied = 0, expert_disk = 0, expert_host = 0;
  uint64_t expert_copied_bytes = 0, expert_host_bytes = 0;
  uint64_t expert_split = 0;  // experts split between the host and the GPU (counted in expert_host and expert_copied)
  // Quantized experts of prompts dequantized into a scratch and computed by grouped products (the others one by one).
  uint64_t expert_grouped_prompt = 0;
  double expert_router_wait_ms = 0;
  // Next-layer prefetch (ExpertRing.prefetch, ExecutorOptions::expert_prefetch): experts copied before their router
  // chose, of which it chose (their computations count in expert_copied), and the bytes of the others (in
  // expert_copied_bytes too). With ExecutorOptions::record_trace, the copy stream's busy time over the routed
  // layers of each forward and the gaps between its spans (the copy engine waiting for routers), GPU clock.
  uint64_t expert_prefetched = 0, expert_prefetch_hits = 0, expert_prefetch_wasted_bytes = 0;
  double expert_copy_busy_ms = 0, expert_copy_idle_ms = 0;
  // Decode forwards with host experts: the GPU's polling for the host's sums, the host's job time, and the host
  // share in effect after the last forward (the plan's, or where ExecutorOptions::adapt_expert_share moved it).
  double expert_host_wait_ms = 0, expert_host_busy_ms = 0;
  double expert_host_copy_ms = 0;  // with adapt_expert_share: the copies' time in the layers the host computed in
  double expert_share = 0;
  // Decode steps replayed from a CUDA graph (ExecutorOptions::cuda_graphs), and why graphs turned off when a
  // capture failed ("" otherwise): those steps, and every later one, ran eagerly.
  uint64_t graph_steps = 0;
  std::string graph_capture_error;
  // Prefills replayed from CUDA graphs: one-GPU passes of a padded shape that ran before (ExecutorOptions::
  // prefill_graph_shapes), and pipelined prefills (ExecutorOptions::micro_batch_rows): a pass from an empty cache of a
  // shape (rows, tokens per row, rows per micro-batch, last-position logits) that ran before replays one graph per
  // micro-batch and GPU segment, captured after the shape's first (eager) pass; one shape's graphs are kept.
  uint64_t graph_prefills = 0;
  // The last forward pass.
  uint32_t last_micro_batches = 0;  // pipelined micro-batches (ExecutorOptions::micro_batch_rows); 0: not pipelined
  // Host time spent issuing the last pass's work, from its start until it waits for the results (GPU mode; close to
  // last_forward_ms when the pass is bound by the host's kernel launches, not by the GPU). For a decode step replayed
  // from CUDA graphs: until every graph was launched (the first step of a batch size includes its capture).
  double last_issue_ms = 0;
  uint32_t last_batch = 0;
  uint32_t last_seq = 0;
  double last_forward_ms = 0;
  uint64_t last_streamed_bytes = 0;  // cpu + disk bytes moved for that pass
  std::vector<StepTiming> last_steps;
  std::vector<CopyTiming> last_copies;
};

// What the loaded plan describes.
struct ModelInfo {
  std::string architecture;
  std::string model_name;
  std::string plan_path;
  std::string exec_dtype;     // "BF16", "F32", ...
  std::string weights;        // the plan's weight format (plan --weights): "bf16" (none), "fp8", "int8", "int4"
  int quantized_weights = 0;  // weights stored row-quantized
  int64_t vocab_size = 0;
  uint32_t max_batch = 0;
  uint32_t max_seq_len = 0;
  std::vector<int64_t> eos_token_ids;
  bool cpu_mode = false;      // every block runs on the CPU
  int blocks = 0;
  int gpu_tier_blocks = 0;
  int cpu_tier_blocks = 0;
  int disk_tier_blocks = 0;
  int partially_resident_blocks = 0;  // blocks with some weights resident and the rest streamed
  int stream_units = 0;               // units streamed per forward pass (all devices)
  int chunk_units = 0;                // of which row chunks of weights larger than the chunk size
  // Host compute: forwards of at most this many tokens multiply the plan's host units on the host (0: none, or
  // ExecutorOptions::host_compute off, or CPU mode), with host_threads threads; host_bytes of weight rows per
  // such forward.
  uint32_t host_max_tokens = 0;
  int host_threads = 0;
  uint64_t host_bytes = 0;
  uint64_t device_arena_bytes = 0;  // all device arenas
  uint64_t pinned_pool_bytes = 0;
  // How disk-tier shards are read: "o_direct", "pread+dontneed" (the filesystem refused O_DIRECT), "mmap"
  // (disk_direct_io off), or "" (no disk-tier blocks). Mixed filesystems: the first shard's.
  std::string disk_read_mode;
  // Disk-tier blocks computed on a GPU whose direct reads do not fit their staging buffer (read from the mapping).
  int disk_direct_fallback_blocks = 0;
};

class Executor {
 public:
  // Loads `plan_path`, verified, for the checkpoint at `checkpoint_dir` (see formats/checkpoint.h for accepted
  // layouts). Errors:
  //   kNotFound / kCorrupt / kIncompatible: the plan or checkpoint files (named);
  //   kMismatch: the checkpoint is not the one the plan was made for (names the plan and the differing shard), a
  //              plan tensor differs from the checkpoint's (names the tensor), or the plan was made from a model
  //              description without weights (synthetic fingerprint), or the checkpoint directory's config.json
  //              is missing or changed since the plan was made (plans that record its sha256);
  //   kUnsupported: no kernels for the architecture, or a plan feature this executor does not run;
  //   kDevice: CUDA allocation or device failures; kIo: mapping or reading shards.
  static Result<std::unique_ptr<Executor>> Load(const std::string& plan_path, const std::string& checkpoint_dir,
                                                const ExecutorOptions& options = {});

  ~Executor();
  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;

  // One forward pass over `token_ids`, row-major [batch][seq] (token_ids.size() == batch * seq), continuing the
  // KV cache (or, with `reset`, starting a new sequence: Reset() and the pass as one call). Returns float logits
  // [batch, seq, vocab]. kInvalidArgument (with the numbers) for a token id outside [0, vocab), batch > the plan's
  // max_batch, cached + new tokens > max_seq_len, an empty or ragged input, or a batch size different from the
  // cached sequence's. A pass that fails after it started (device or I/O error) resets the cache. Every position's
  // logits of more than arch::kLogitsTokens tokens (arch/temporaries.h) come from consecutive passes over the rows'
  // positions, at most that many tokens each (at least one position per row), as the plan's activation reserve
  // assumes; within the execution dtype's rounding the logits are those of one pass (products over fewer rows may
  // take other kernels). A failure in a later pass resets the cache as above.
  //
  // Shards that change under a loaded executor: a shard truncated (or rewritten shorter) after Load is never a
  // dead process. Reads that copy from a shard (disk staging, casts) stop with kIo naming the shard at the first
  // missing byte; weights used in place from the mapping read zeros for the lost pages, and the pass then returns
  // kIo naming the shard ("the file shrank while it was in use ...") instead of its logits (formats/
  // guarded_copy.h). In both cases the pass's results are discarded and the KV cache is reset; the executor stays
  // loaded (its memory is intact and it can be destroyed normally), but every later pass that reads the damaged
  // shard fails the same way: destroy it and Load again once the checkpoint is whole.
  Result<Logits> Forward(const std::vector<int64_t>& token_ids, int batch, bool reset = false);
  // The same with options: with last_position_only the logits are [batch, 1, vocab] (the last position of each
  // row), equal to the last row of the full logits.
  Result<Logits> Forward(const std::vector<int64_t>& token_ids, int batch, const ForwardOptions& options);
  // The same with one vector per row (all rows the same length).
  Result<Logits> Forward(const std::vector<std::vector<int64_t>>& rows, bool reset = false);
  Result<Logits> Forward(const std::vector<std::vector<int64_t>>& rows, const ForwardOptions& options);

  // Tokens in the KV cache (0 after Reset()). Takes the call mutex, so it waits for a call in progress.
  int64_t cached_tokens() const;

  // Resets the KV cache, then feeds the prompts (one per row, all the same length) and generates up to
  // options.max_new_tokens per row. kInvalidArgument as Forward, and when prompt length + max_new_tokens exceeds
  // max_seq_len. Every forward pass computes and copies only the last position's logits.
  Result<GenerateResult> Generate(const std::vector<std::vector<int64_t>>& prompts, const GenerateOptions& options);

  // Continuous batching: one pass over the plan's blocks for several independent sequences, each in its own
  // KV-cache row at its own position (e.g. requests that joined a server at different times). Returns the logits
  // of each row's last new token, [rows.size(), 1, vocab] in the order of `rows`. Every block's weights are
  // fetched once for all rows (a streamed block is copied once per call, whatever the number of rows). Rows with
  // one new token are computed together as one batch (Llama family, mixture-of-experts layers included: per-row
  // positions, ForwardContext::rows; ModelKernels::RowSteps);
  // prompts, and one-token rows of other architectures, are computed one row after the other inside each block.
  // A row with start_pos 0 starts a new sequence: its cache row is cleared first. StepRows and Forward/Generate
  // share the KV cache: after StepRows, Forward starts a new sequence (cached_tokens() is 0), and Forward or
  // Generate overwrite the rows StepRows uses. Always eager (no CUDA graphs). Weights streamed in row chunks are held
  // until their block's step ends (every row group reads them); a plan whose chunks reuse each other's ring bytes
  // within a block (the "chunks" ring of layers larger than the GPU) is refused with kUnsupported. A pass of at most
  // the plan's host_max_tokens tokens in all computes the host units on the host (plan --cpu-share).
  // kInvalidArgument (with the numbers) for no rows, a row outside [0, max_batch) or given twice, a row without
  // tokens, start_pos + tokens > max_seq_len, or a token id outside [0, vocab). A pass that fails after it
  // started (device or I/O error) leaves the rows' caches undefined: start those sequences again.
  Result<Logits> StepRows(const std::vector<RowStep>& rows);

  // Ranks other than 0 (ExecutorOptions::world_size): computes this rank's blocks for every pass rank 0 runs, until
  // rank 0's executor is destroyed (then Ok). kIo when rank 0 goes away; a pass that fails here returns its error
  // (rank 0's pass then fails when its wait for this rank times out). kInvalidArgument on rank 0 or without ranks.
  Status ServeRank();

  // Forgets the cached tokens.
  Status Reset();

  Stats stats() const;
  const ModelInfo& info() const;

  // Writes the recorded timeline (ExecutorOptions::record_trace) as a Chrome/Perfetto trace:
  // {"traceEvents": [...]} with "X" events on a "compute" track, a "copy" track and one "disk worker N" track
  // per disk worker. kIo naming the file; kInvalidArgument if tracing was not enabled.
  Status WriteTrace(const std::string& path) const;

  class Impl;

 private:
  explicit Executor(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace bigplan
