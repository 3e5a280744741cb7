// The cost model: predicted compute time per block, copy time per streamed block, and the time of a whole forward
// pass obtained by simulating the schedule.
//
// Compute time of a block, for a forward pass of T tokens (decode: T = max_batch, one new token per sequence, the
// KV cache at max_seq_len; prefill: T = max_batch x max_seq_len). The executor issues eager LibTorch ops from one host
// thread, so a block takes as long as the slower of the GPU running its kernels and the host dispatching them:
//
//   time        = max(device time, host time + device time / kernels)   (host-bound, the last kernel still runs
//                                                                         after its dispatch)
//   decode device time  = max(FLOPs / matmul rate, bytes touched / memory bandwidth) + kernels x kGpuKernelMicros
//   prefill device time = max(matmul FLOPs / (kPrefillMatmulEfficiency x matmul rate), weight bytes / bandwidth)
//                         + attention FLOPs / (kAttentionEfficiency x matmul rate)
//                         + (KV, activation, LibTorch ops' and unpacking bytes) / bandwidth
//                         + kernels x kPrefillKernelMicros
//   host time   = kernels x kHostOpMicros                                        (GPU blocks; 0 for CPU blocks)
//
//   FLOPs          = 2 x matmul_params x T                                      (every weight matrix, once per token)
//                  + 4 x attn_dim x max_batch x C                               (QK^T and AV, 2 FLOPs per MAC)
//                    with C = max_seq_len (decode: one query against the full cache) or
//                    max_seq_len x (max_seq_len + 1) / 2 (prefill: causal, summed over query positions)
//   bytes touched  = weight_bytes                                               (weights read once)
//                  + kv_bytes_per_token x max_batch x max_seq_len               (decode: the cache is read;
//                                                                                prefill: it is written)
//                  + act_bytes_per_token x T                                    (activations read and written)
//   GPU: matmul rate = matmul_tflops, bandwidth = device_mem_gbps (read + write).
//   CPU: matmul rate = cpu_gflops, bandwidth = cpu_mem_gbps, kCpuOpMicros = 2 us per op, no separate host term; the
//   decode form for both passes.
// A decode step is bound by reading the weights, and its other kernels are short (kGpuKernelMicros covers them). A
// prefill is compute-bound and its kernels run one after another on the stream: the products (reading their weights
// as they go) at the rate cuBLAS sustains at these shapes, then the attention, then the kernels that only move
// activations (norms, RoPE and the cache write, SiLU x up, the attention's transpose copy, residual copies), which
// the decode form's max() would hide behind the products; see the constants below for their calibration. Without
// the fused kernels (float32, quantized layers, --no-fused-kernels), LibTorch's extra ops each move about a float32
// activation in and out (BlockWork::op_bytes_per_token).
//
// Kernels per block: the CUDA kernels the executor's eager ops launch (executor/kernels*.cc; views, narrows and
// transposes launch none). The counts are the architecture registry's (arch::BlockKernels, arch/registry.cc):
//   Llama family decoder layer, kLlamaDecoderKernels = 33: 2 RMSNorms x 4 on a GPU (to float, LibTorch's fused
//     norm, to dtype, x weight; 8 separate ops on the CPU), q/k/v projections 3, rotary 2 x 5 (neg, cat, 2 mul, add), KV cache writes 2, SDPA 1,
//     transpose-reshape copy 1, o_proj 1, residual 1, MLP 5 (gate, act, up, mul, down), residual 1; Phi-3 the same
//     (its fused qkv_proj / gate_up_proj are sliced into narrow views: the same matmuls), +2 with partial rotary;
//   GPT-2 decoder layer, kGpt2DecoderKernels = 13: 2 LayerNorms, c_attn, KV writes 2, SDPA, reshape copy, c_proj,
//     residual, c_fc, act, c_proj, residual;
//   GPT-J decoder layer, kGptjDecoderKernels = 24 (+2 with partial rotary, the pass-through cat per q/k): LayerNorm,
//     q/k/v 3, rotary 2 x 5 (neg, stack, 2 mul, add), KV writes 2, SDPA, reshape copy, out_proj, fc_in, act,
//     fc_out, 2 adds;
//   mixture-of-experts families: their attention half (Mixtral, Qwen2-MoE 22; Qwen3-MoE 30 with its q/k norms)
//     plus arch/registry.cc's MlpKernels for the routed experts;
//   with the executor's fused CUDA kernels (bf16/fp16 on a GPU, unquantized weights, arch::FusedKernelsApply): a
//     Llama-family (and Phi-3) decoder layer 10 (RMSNorm, q/k/v product, RoPE + KV write, split-K attention 2,
//     o product + residual, RMSNorm, gate/up product, SiLU x up, down product + residual), a mixture-of-experts
//     family's attention half 8, the final norm 1 (BlockWork::kernels; cpu_kernels keeps LibTorch's counts);
//     a decode step of up to 2 rows fuses the norms into the products, RoPE + KV write into the q/k/v product and
//     SiLU x up into the gate/up product: a Llama-family layer 6, a mixture-of-experts attention half 6 (Qwen3-MoE
//     7: its q/k norms keep RoPE apart) (BlockWork::decode_kernels, arch::DecodeBlockKernels);
//   final norm: kRmsNormKernels = 4 (Llama family), kLayerNormKernels = 1 (GPT-2, GPT-J); embedding
//   kEmbeddingKernels = 2 (the token ids' copy to the device + the lookup); position embedding 1 (add); lm_head
//   kLmHeadKernels = 2 (matmul + cast of the logits to float).
//
// kHostOpMicros = 10.8 us: the host's cost per kernel-launching op, including LibTorch dispatch, the launch, and
// the op's share of the view ops and per-step event records around it. (The calibrations below date from when an
// RMSNorm launched 8 kernels on a GPU, 41 per Llama layer.) Calibrated on an H100 (LibTorch eager from
// C++, Llama-2-7B bf16, batch 1, weights resident): a KV-cached decode step (512 cached tokens) took 14.3 ms, and
// the GPU's own work for it is ~2.7 ms, so the step is host-bound: 14.3 ms over 32 x 41 + 2 + 8 + 2 = 1324 kernels
// = 10.8 us (0.44 ms per decoder layer).
// kGpuKernelMicros = 7 us: the GPU-side time per kernel of a decode step beyond the roofline term: the
// launch-to-launch gap plus the run time of the small non-matmul kernels (norms, rotary, residuals, copies), which the
// roofline's max() hides behind the matmuls. Calibrated from the same run's 512-token prefill (19.0 ms, device-bound:
// ~0.58 ms per layer, of which the matmuls at the measured 770.6 TFLOP/s are 0.27 ms): (0.58 - 0.27) ms / 41 =
// ~7.5 us. Predicted with the H100 profile of that run (h2d 53.0, device memory 2991 GB/s, matmul 770.6 TFLOP/s),
// Llama-2-7B bf16 batch 1 resident, 41 kernels per layer: decode at KV 512 14.8 ms (measured 14.3). Prefills have a
// form of their own (kPrefillMatmulEfficiency and the constants beside it).
// Not modelled: a forward without the KV cache (the planner plans cached decode; it measured 19.1 ms for 1 token).
//
// Copy time of a streamed block of B bytes: B / h2d_gbps (Cpu tier), B / disk_gbps + B / h2d_gbps (Disk tier: the
// disk read into pinned staging and the H2D copy are counted back to back on the copy stream, conservatively).
//
// Forward simulation (SimulateForward): one compute stream per device plus one copy stream per destination device,
// and the one host thread that dispatches every step, replaying the schedule exactly as the executor does:
//   * steps run in order; step i's compute starts when step i-1's compute ended (activations flow block to block,
//     across devices too) and, if block i is streamed, when its copy ended;
//   * the host dispatches the steps back to back without waiting for the GPU (host_free += host time per step), so
//     it runs ahead while the GPU is busy or waiting for copies; step i ends at max(start + compute time, the
//     host's end of dispatching it). Given per-step host times, the compute times are the device times alone;
//     without them (as the planner calls it) the compute times are the blocks' times above, which
//     count each host-bound block in full but not the host running ahead across blocks. Both agree when every block
//     is host-bound or every block is device-bound; they differ by at most the host time of the blocks after a
//     stall (under 1% of the copy-bound forwards of streamed plans);
//   * a copy starts when its copy stream is free (copies run in issue order), every step in wait_compute_steps
//     ended, and every block in wait_copy_blocks has finished its copy; the host issues asynchronously, so the issue
//     step itself adds no delay (the waits carry the memory-reuse constraints).
//
// Streams: see SimulateForward below and planner/streaming.h.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "formats/dtype.h"
#include "formats/quant.h"
#include "planner/device_profile.h"
#include "planner/model_desc.h"
#include "planner/schedule.h"
#include "planner/streaming.h"

namespace bigplan {

inline constexpr double kGpuKernelMicros = 7.0;
inline constexpr double kHostOpMicros = 10.8;
// kHostPrefillOpMicros = 17.2 us: the host's cost per kernel-launching op of an eager prefill (prompts of many
// tokens: SDPA's dispatch, the narrows of the KV cache and of the rows, the larger tensors' allocations), used for the
// host side of the unpipelined batched prefills of PredictBatchedPrefill (planner/planner.h). Calibrated on 2x H200
// (Llama-3-8B shape, bf16, one GPU, 1 row x 512 tokens): the host issued the pass's 325 kernels (2 + 32 x 10 + 1 + 2,
// fused) in 5.4-5.8 ms, i.e. 16.6-17.8 us each.
inline constexpr double kHostPrefillOpMicros = 17.2;
// kPrefillMatmulEfficiency = 0.92: the share of the profile's matmul rate (an 8192^3 bf16 product) that a prefill's
// products sustain. Kineto traces of 512-token prefills on an H100 (benchmarks/results/h100-2026-11-27-graphs/) put
// cuBLAS's products back to back at 0.96-0.97 of the 8192^3 rate measured in the same process (Llama-2-7B: 8.68 ms
// of products for 8.38 ms at 792 TFLOP/s; Llama-3-8B: 9.21 for 8.97 at 797), and gemm_algos_bench found no cublasLt
// algorithm faster than cuBLAS's default at those shapes (M = 512: 0.86-0.95 one product at a time). Fitted with
// kPrefillKernelMicros to the resident prefills the executor now runs (fused RoPE with token-major q, residuals
// accumulated in place, one-GPU passes replayed from CUDA graphs; bf16, random weights, last position's logits;
// planner_test ResidentPrefillAndDecodeOnAnH100 prints them):
//   H100, default profile (770 TFLOP/s, 3030 GB/s), 1 x 512 tokens: Llama-3-8B shape 11.65-12.58 ms (best, median),
//     predicted 12.16; Llama-2-7B shape 10.85-10.95 ms, predicted 11.26.
// The two-GPU rows of planner_test (BatchedPrefillPipelinedOverTwoGpus) were measured on 2x H200 with the build before
// these kernels (0.83 and 2 us were fitted to them); they are predicted 4-14% below those older times.
// The 8192^3 rate is a burst of one shape; the narrower products (o, q/k/v at M = 512: 64-96 thread blocks) fill the
// 132 multiprocessors less evenly.
inline constexpr double kPrefillMatmulEfficiency = 0.92;
// kAttentionEfficiency = 0.4: a prefill's attention (SDPA, flash attention over the cache's first positions, causal)
// as a share of the matmul rate, counting the causal FLOPs (4 x attn_dim x rows x T (T + 1) / 2). Measured on the
// H200 at 8 rows x 512 tokens, 32 query heads over 8 KV heads of 128: 56 us, 305 TFLOP/s = 0.39 of 789.
inline constexpr double kAttentionEfficiency = 0.4;
// kPrefillKernelMicros = 1.5 us: the GPU-side time per kernel of a prefill beyond its products, attention and bytes:
// the host issues ahead of the GPU (or a graph replays), so the GPU's queue never empties and only the
// launch-to-launch gap remains. Fitted with kPrefillMatmulEfficiency (above).
inline constexpr double kPrefillKernelMicros = 1.5;
// kUnpackEfficiency = 0.72: the share of device_mem_gbps (the floors' device-to-device copy) that the unpacking of
// quantized weights for a prompt (executor fused::Dequantize) keeps: fused_ops_bench on an H200, a 14336 x 4096 int4
// matrix (148 MB read and written) in 48.7 us, int8 176 MB in 57.1 us, 3.05-3.08 TB/s against the copy's 4.04 TB/s
// and the floors' 4.2 TB/s.
inline constexpr double kUnpackEfficiency = 0.72;
// kPrefillReadEfficiency = 0.65: the share of device_mem_gbps at which a prompt's products read their weights where
// the reads bound them (few rows a product, as a prompt's experts), in blocks with quantized matrices (their
// products read the unpacked copies): Kineto, H200, the Mixtral shape's 512-token int4 prompt, 192 expert products
// of about 128 rows, 44 us each on average for 117 MB of unpacked weights (2.7 TB/s). (Plain blocks' prompts were
// fitted without it; the resident bf16 Qwen3 shape's grouped expert products read at 98% of the HBM rate.)
inline constexpr double kPrefillReadEfficiency = 0.65;
// kExpertWindowReadEfficiency = 0.94: the same for a prompt's quantized experts run in the unpacking scratch's
// windows (executor GroupedQuantizedPrompt: two grouped products over up to 16 experts' unpacked copies, a few dozen
// rows each): Kineto, H200, the Qwen3-30B-A3B shape's 512-token int4 prompt, 374 grouped products in 7.1 ms for
// about 29 GB of unpacked bf16 experts (4.1 TB/s against the floors' 4.2 TB/s), and the prompt measured at 33.6-34.8
// ms with every expert unpacked so (benchmarks/RESULTS.md, 2026-11-28 prompt batches).
inline constexpr double kExpertWindowReadEfficiency = 0.94;
// A per-row fp8/int8 product's output scaling in a prompt (QuantLinear: to float32, times the scales, back):
// bytes moved per output element.
inline constexpr double kRescaleBytesPerElement = 20.0;
// The ops of an expert the GPU computes by itself in a decode step (gate, up, the activation and product, down, the
// weighted add: kExpertTaskMicros below), and in a prompt, which also gathers its rows.
inline constexpr uint32_t kExpertTaskOps = 8;
inline constexpr uint32_t kExpertPromptTaskOps = kExpertTaskOps + 1;
// kExpertWindowOps = 9.5: a prompt's window of quantized experts in the unpacking scratch, in host ops (kHostOpMicros):
// its two grouped products (about three ops' host time each), the offsets' shift, the activation, the copy out and
// the views: 103 us a window on the issuing thread of the Qwen3-30B-A3B shape's int4 prompt (Kineto, H200 x2 host,
// benchmarks/RESULTS.md 2026-11-28 prompt batches: 374 grouped products at 33 us, 187 shifts at 14 us, 235 copies at
// 9.6 us). Its experts' unpacking takes 3 / arch::kMoeDequantBatchMatrices launches each.
inline constexpr double kExpertWindowOps = 9.5;
// kLibTorchOpBytesPerHidden = 8: a GPU block without the fused kernels runs LibTorch's ops instead (more kernels:
// 33 per Llama layer against 10); each op beyond the fused path's count reads and writes about one float32
// activation, 8 x hidden bytes per token (the norms' upcast and its steps, rotary's and SiLU's elementwise ops).
// Checked on an H100 (benchmarks/RESULTS.md, --no-fused-kernels, 1 x 512 tokens, default profile): Llama-3-8B shape
// 18.39 ms, predicted 18.9; Llama-2-7B shape 18.20 ms, predicted 18.0 (23 such ops per layer: ~5.5 us each there).
inline constexpr double kLibTorchOpBytesPerHidden = 8.0;
// kHostGraphTaskMicros = 30 us: the host's cost per task of a pipelined pass replayed from CUDA graphs (a task: one
// micro-batch's segment on one GPU: the wait for the GPU's previous task, the input's copy, the graph's replay, an
// event record; SimulatePipelinedPass below). On 2x H200 the executor issued passes of 16-128 such tasks in about
// 1-4 ms, the pass's own copies of the token ids and its streams' joins included.
inline constexpr double kHostGraphTaskMicros = 30.0;
// kGraphKernelMicros = 3.8 us: the GPU-side time per kernel when the executor replays a decode step from a CUDA
// graph (all-resident Llama-family plans; see executor/executor.h ExecutorOptions::cuda_graphs): no host
// dispatch, and a shorter launch-to-launch gap. Calibrated on an H100 where the Llama-2-7B-shaped decode step
// replayed in 9.13 ms (32 layers x 41 kernels; 0.129 ms of weight reads per layer at 2991 GB/s).
inline constexpr double kGraphKernelMicros = 3.8;
// kMoeDeviceChoiceMicros = 0.7 us: what each of a token's chosen experts adds to each of the two expert products of a
// decode step that reads them on the device (executor fused::MoeExperts), beyond kGraphKernelMicros and their bytes
// at the HBM rate: a choice's gate/up rows run as blocks of their own, and the down products sum the choices in turn.
// Kineto on 2x H200 (2026-11-28, benchmarks/results/h200x2-2026-11-28-moe-decode-kernels, calls 3 and 6): the
// Qwen3-30B-A3B shape (8 choices) ran its gate/up and down products 8.5 and 11.6 us over their bytes' time on one
// GPU, 8.3 and 9.6 us on a tensor-parallel shard (about 0.7 us a choice each past kGraphKernelMicros); Mixtral's (2
// choices) -0.9 to 6.9 us, within a kernel's spread.
inline constexpr double kMoeDeviceChoiceMicros = 0.7;
// kDeviceHopMicros = 25 us: a step whose block computes on another GPU than the step before it waits for the
// hidden state's copy between the GPUs (peer, in stream order) and, in a graph-replayed decode step, for the next
// device segment's replay to start. Calibrated on 2x H200, Llama-3-8B all resident, graph-replayed decode steps
// in one process: split contiguously (1 hop) 5.05 ms, layers dealt in groups of 8 / 4 / 2 (3 / 7 / 15 hops) 5.13 /
// 5.19 / 5.38 ms: about 23 us per hop (one GPU: 4.96-5.05 ms in the same sessions); the copy's bytes are added at
// kPeerGbps.
inline constexpr double kDeviceHopMicros = 25.0;
// kDeviceHopEagerMicros = 20 us: the same hop between eagerly dispatched steps (prefills, streamed plans): the peer
// copy of the hidden state and the two devices' event waits; an estimate, not yet measured on its own.
inline constexpr double kDeviceHopEagerMicros = 20.0;
inline constexpr double kPeerGbps = 200.0;
// kRankHopExtraMicros: what one crossing of the hidden state between ranks (one process per GPU; NCCL point-to-point
// send and receive, the receiving rank's graph replay waiting on it) adds over an in-process hop, and
// kRankHopExtraEagerMicros the same between eagerly dispatched steps. Calibrated on 2x H200, Llama-3-8B with layers
// in groups of 8 over the two GPUs (3 hops and the logits' return: 4 crossings a step), batch-1 decode: graphs 4.988
// ms as ranks against 4.880 ms in one process, eager 5.785 against 5.582 ms (27 and 51 us a crossing).
inline constexpr double kRankHopExtraMicros = 27.0;
inline constexpr double kRankHopExtraEagerMicros = 51.0;
// kRankAllReduceExtraMicros: what one all-reduce of a tensor-parallel plan run as ranks (an NCCL all-reduce, in the
// decode graph of each rank) adds over the in-process one over peer memory (kAllReduceMicros), and
// kRankAllReduceExtraEagerMicros the same between eagerly dispatched steps. Calibrated on 2x H200, Llama-3-8B, batch-1
// decode over 32 tokens (66 all-reduces a step), medians: graphs 3.993 ms as two ranks against 3.136 ms in one process,
// eager 5.374 against 3.803 ms (13 and 24 us an all-reduce).
inline constexpr double kRankAllReduceExtraMicros = 13.0;
inline constexpr double kRankAllReduceExtraEagerMicros = 24.0;
// A decode step's sparse layer whose experts are copied or computed by the host (executor/expert_engine.h) goes:
// the router's choices reach the host (kRouteSyncMicros); then the host computes its experts while the copy engine
// moves the others and the GPU multiplies the resident and copied ones as they land; the GPU waits for the later of
// the host's sum (kHostSumMicros after the host's job ends) and its own last copied expert (kExpertCopyTailMicros
// after the copy ends); then it adds the sum and runs the next layer's attention half and router
// (SparseLayerDenseMicros). Measured from the decode traces of one H100 machine (e2e_bench --trace-dir; medians over
// every sparse layer of the timed steps): Qwen3-30B-A3B shape at cuda:0=8GiB (host-bound), router to host start
// 14 us, host job 471 us, its end to the GPU's resumption 26 us, resumption to the next router 71 us, a layer 589
// us; Mixtral-8x7B shape at cuda:0=16GiB (copy-bound), router to host start 22 us, last copy to the GPU's
// resumption 54 us, resumption to the next router 64 us.
inline constexpr double kRouteSyncMicros = 30.0;
inline constexpr double kHostSumMicros = 40.0;
inline constexpr double kExpertCopyTailMicros = 50.0;
// The host's time for a decode token's routed experts in one layer (a job of executor/cpu_experts.h, beside the
// thread that dispatches the GPU's work and the copy engine's reads of host memory): its experts' bytes at the
// profile's cpu_gemv_gbps (the rate the host keeps while copies run), plus kHostExpertJobMicros a job and
// kHostExpertEachMicros an expert (a split expert counts as one). Fitted to the same traces: Qwen3 jobs of about 4
// experts of 9.4 MB took 471 us against 334 us at the profile's 112.5 GB/s (136 us more); Mixtral jobs of one
// expert or two split ones (332 MB a layer on average) ran at 100.7 against 104.0 GB/s (about 100 us more).
inline constexpr double kHostExpertJobMicros = 80.0;
inline constexpr double kHostExpertEachMicros = 14.0;
// A chosen expert the GPU computes as a task of its own (quantized experts the grouped products do not take,
// planner/experts.h ExpertsGrouped): about 8 ops issued by the host (gate, up, the activation and product, down,
// the weighted add), each kHostOpMicros.
inline constexpr double kExpertTaskMicros = kExpertTaskOps * kHostOpMicros;
// The share of next-layer prefetches (ExpertRing.prefetch) whose expert the next router chooses: the top
// predictions of the next router run on this layer's MoE input. Measured on an H100, Qwen3-30B-A3B shape with random
// weights (24 layers, 8 of 128 experts per token): 88% of single prefetches and 84% of pairs were chosen; trained
// models' routers are reported as predictable from the previous layer's input too (pre-gating).
inline constexpr double kExpertPrefetchHitRate = 0.85;
inline constexpr double kCpuOpMicros = 2.0;
// kHostProductMicros: the fixed cost of one matrix whose last rows the host computes in a decode forward (planner/
// host_compute.h), beyond reading those rows: the activation's copy to the host and the wait for it, waking the
// host's threads, the partial result's copy back and the join on the GPU.
// Calibrated on an H100 host (16 cores; Llama-3-8B shape, cuda:0=6GiB, 60% of each streamed MLP matrix on the
// host): products of 70 MB took 690-840 us against 680 us at the measured 103 GB/s, 75 us more on average.
inline constexpr double kHostProductMicros = 75.0;

// What one block computes, independent of placement.
struct BlockWork {
  uint64_t weight_bytes = 0;         // weights read per forward at the execution dtype
  double matmul_params = 0;          // weight elements used in matmuls (embedding lookups are not matmuls)
  uint64_t attn_dim = 0;             // num_heads x head_dim for decoder layers, else 0
  uint64_t kv_bytes_per_token = 0;   // K + V bytes per token of context per sequence (decoder layers)
  uint64_t act_bytes_per_token = 0;  // activation bytes read + written per token
  // Embedding tables: a forward reads one row of this many bytes per token, not the whole table (0: it reads all of
  // weight_bytes).
  uint64_t lookup_row_bytes = 0;
  // Kernels on a GPU: with the executor's fused kernels where they apply (bf16/fp16, unquantized weights;
  // arch::BlockKernels), else LibTorch's ops. cpu_kernels: LibTorch's ops, for blocks the CPU computes.
  uint32_t kernels = 1;
  uint32_t cpu_kernels = 1;
  // A decode step's kernels on a GPU for batches of up to arch::kFusedDecodeMaxRows rows, where the fused products
  // take their neighbours in (arch::DecodeBlockKernels); 0: the same as kernels.
  uint32_t decode_kernels = 0;
  // A sparse layer whose chosen experts are read on the device in a decode step (the planner's graph-decode path):
  // the choices per token, each adding kMoeDeviceChoiceMicros to each of the two expert products there. 0 elsewhere.
  uint32_t device_expert_choices = 0;
  // On a GPU without the fused kernels (cpu_kernels == kernels for such blocks): the bytes per token that LibTorch's
  // ops beyond the fused path's move (kLibTorchOpBytesPerHidden x hidden each); the prefill form adds them.
  uint64_t op_bytes_per_token = 0;
  // Device-memory traffic of unpacking row-quantized weights per decode forward (beyond reading them once), on a
  // GPU: int4 is repacked for the tinygemm kernel (0.5 B written + 0.5 B read again per element), fp8/int8 are
  // widened to the execution dtype (written, then read by the product: 2 x e per element). 0 without quantized
  // weights. (The prefill form: prefill_dequant_bytes.)
  uint64_t dequant_bytes = 0;
  // Of dequant_bytes, what a decode step of up to arch::kFusedDecodeMaxRows rows does not move: per-row-scaled fp8 and
  // int8 products, and int4 ones in groups of a multiple of 8 columns, read their stored values in one kernel there
  // (executor fused::QuantGemv), and their three unpacking kernels (counted in `kernels`) are fused_quantized of
  // them.
  uint64_t fused_dequant_bytes = 0;
  uint32_t fused_quantized = 0;
  // A prompt (the prefill form), for the matrices other than a sparse layer's routed experts: the unpacking
  // kernels' traffic (each quantized matrix's stored bytes read and its copy in the execution dtype written) and the
  // bytes its products read beyond the stored ones (the copies). 0 without quantized weights.
  uint64_t prefill_unpack_bytes = 0;
  uint64_t prefill_unpacked_extra_bytes = 0;
  // A prompt's kernels on a GPU in bf16/fp16 where the block has quantized matrices (0: `kernels`): the fused
  // kernels around the products, one unpacking kernel a quantized matrix and three more a per-row fp8/int8 one (its
  // output's scaling, which moves prefill_rescale_bytes_per_token a token in place of op_bytes_per_token).
  uint32_t prefill_kernels = 0;
  uint64_t prefill_rescale_bytes_per_token = 0;
  // A sparse layer (0 elsewhere): the share of its routed experts one token picks (num_experts_per_tok /
  // num_experts), all its routed experts' stored bytes, and their prompt terms as above. weight_bytes,
  // matmul_params and dequant_bytes hold one token's picks; the prefill form reads and unpacks the experts its
  // tokens hit, 1 - (1 - share)^tokens of them, each adding expert_prompt_kernels kernels (a share of its window's
  // and batch's where they run in the unpacking scratch's windows).
  double expert_pick_share = 0;
  uint32_t num_experts = 0;
  uint64_t expert_bytes = 0;
  uint64_t expert_prefill_unpack_bytes = 0;
  uint64_t expert_prefill_unpacked_extra_bytes = 0;
  double expert_prompt_kernels = 0;
  // Whether a prompt runs the quantized experts in the unpacking scratch's windows (their copies read at
  // kExpertWindowReadEfficiency; else one by one, at kPrefillReadEfficiency).
  bool expert_prompt_windows = false;
};

// The work of block `index` of `model` at `exec_dtype` (weight_bytes = the block's weight-buffer bytes, as
// planner/accounting.h's BlockWeightBytes; a quantized matrix adds dequant_bytes and 3 kernels: for fp8/int8 and
// streamed int4 the unpacking copy, the pack or widen, and the scale or transpose; a GPU-resident int4 matrix,
// stored split, launches only the pack, and the 3 stand for its slower-than-bandwidth repack, which they matched
// within 1% on an H100: Llama-3-8B shape, all int4 resident, a graph-replayed decode step measured 11.9 ms against
// 11.8 ms predicted). Activation traffic per token, e = DTypeBytes(exec):
//   decoder layer: (8 x hidden + 2 x (num_heads + 2 x num_kv_heads) x head_dim + 3 x intermediate) x e
//   norm: 2 x hidden x e;  embedding: hidden x e + 8;  lm_head: hidden x e + vocab x 4.
BlockWork DescribeBlockWork(const ModelDescription& model, size_t index, DType exec_dtype);

struct RunSize {
  uint32_t max_batch = 1;
  uint32_t max_seq_len = 1;
};

struct BlockCost {
  double decode_us = 0;          // max(decode_device_us, host_us + decode_device_us / kernels)
  double prefill_us = 0;         // the same with prefill_device_us
  double decode_device_us = 0;   // the GPU's (or, on the CPU, the host's) own time
  double prefill_device_us = 0;
  double host_us = 0;            // a decode step's host dispatch time (GPU blocks; 0 on the CPU, where it is in the
                                 // device time)
  double prefill_host_us = 0;    // the same for a prefill
  uint32_t decode_kernels = 0;   // the kernels the decode form counted (BlockWork::decode_kernels for small batches)
};

// Compute time of a block on `device` (-1 = CPU) for the run size.
BlockCost EstimateBlockCost(const BlockWork& work, const RunSize& run, int32_t device, const DeviceProfile& profile);
// A GPU block's decode time when the step is replayed from a CUDA graph: its device time with kGraphKernelMicros per
// kernel (cost.decode_kernels of them) instead of kGpuKernelMicros, and no host dispatch term.
double GraphDecodeMicros(const BlockCost& cost);

// Host time to dispatch a GPU block's ops: kernels x kHostOpMicros.
double HostDispatchMicros(uint32_t kernels);

// The decode-step device time of sparse layer `index`'s part outside its routed experts, on GPU: the attention half
// (the family's fused decode kernels, or its unfused ones), the router's product and top-k and the add of the
// experts' sum (3 kernels), a shared expert's 8; every non-routed weight of the block read once (as stored), and the
// KV cache at run.max_seq_len positions. Where the non-routed matrices are quantized their products run unfused
// (the fused layer's kernels one by one). The time between a sparse layer's resumption after its experts and the next
// router's choices.
double SparseLayerDenseMicros(const ModelDescription& model, size_t index, DType exec_dtype, const RunSize& run,
                              const DeviceProfile& profile);
// The kernels of that part (SparseLayerDenseMicros), `quantized` of its matrices quantized.
uint32_t SparseLayerDenseKernels(const ModelDescription& model, size_t index, uint32_t quantized);
// The host's time to issue a sparse layer's decode work from one router's choices to the next (the layer's routed
// experts are dispatched from the host, so these steps are eager): its dense part's kernels, one more op per
// quantized product (QuantLinear's calls around its kernel) and kExpertIssueOps for the experts, each kHostOpMicros.
// A layer takes at least kRouteSyncMicros plus this, however short its paths. Fitted to one run: int4 experts
// mostly resident, Qwen3-30B-A3B shape at 8 GiB on an H100, 7.99 ms a token against 3.97 ms predicted from the
// GPU's side alone (7.8 ms with this bound).
double SparseLayerIssueMicros(const ModelDescription& model, size_t index);
inline constexpr uint32_t kExpertIssueOps = 8;  // two groups' products, activation and sum; the host sum's wait
// Copy time of `bytes` of a streamed block from `source` (Cpu or Disk) to `device`: B / h2d (+ B / disk for Disk).
double CopyMicros(uint64_t bytes, schema::Tier source, const DeviceProfile& profile);
// The host's product over `bytes` of weight rows for a forward of `tokens` tokens: bytes / cpu_gemv_gbps x
// max(1, tokens / 4) (reading the weights bounds it for a few tokens; past that the multiply-adds grow with the
// tokens). Without a measured cpu_gemv_gbps, half of cpu_mem_gbps stands in.
double HostProductMicros(uint64_t bytes, uint32_t tokens, const DeviceProfile& profile,
                         quant::Format format = quant::Format::kNone);
// The host's product rate over `format` rows, GB/s of their bytes: the profile's measured rate for the format, else
// cpu_gemv_gbps x kHostFormatFactor (else half of cpu_mem_gbps for bf16).
double HostGemvGbps(const DeviceProfile& profile, quant::Format format);
// Rates of the host kernels over fp8, int8 and int4 rows relative to bf16 rows, in bytes read per second (decoding
// costs instructions; fewer bytes per weight): measured on the H100 machine's 16-core host with H2D copies running,
// fp8 30 vs 90 GB/s, int8 ~0.6x, int4 ~0.3x (executor/cpu_matvec.h, benchmarks/cpu_matvec_bench.cc).
inline constexpr double kHostFormatFactor[] = {1.0, 0.33, 0.6, 0.3};  // kNone, kFp8E4M3, kInt8, kInt4
// The rate the host keeps over a decode step's quantized experts, GB/s: HostGemvGbps x kHostQuantizedExpertShare for
// fp8/int8/int4 rows (bf16 rows: HostGemvGbps). A profile's quantized rates come from one product over a GB of rows
// (benchmarks/gpu/floors.cc); a step's jobs are a layer's experts, tens of MB in two phases (gate and up, then down).
// Measured on 2026-11-28's H200 hosts (Mixtral shape, 8 layers, e2e_bench "host jobs" less kHostExpertJobMicros and
// kHostExpertEachMicros a layer): int4 25.9 GB/s against 34.5 (0.75) and int8 61 against 76.9 (0.79) in one call,
// int4 24.5 against 32 (0.77) in another; bf16 experts keep about 0.97 of theirs (their rate is measured in pieces of
// a layer's size), which kHostExpertJobMicros covers.
inline constexpr double kHostQuantizedExpertShare = 0.77;
double HostExpertGbps(const DeviceProfile& profile, quant::Format format);

// A stream unit's H2D copy (bytes / h2d_gbps) and its disk read (file bytes / disk_gbps).
// The pinned H2D rate, GB/s: h2d_busy_gbps while the host computes beside the copies (they share host memory) when
// the profile has it, else h2d_gbps.
double H2dGbps(const DeviceProfile& profile, bool beside_host);
// The least time, in microseconds, to copy `copy_bytes` over H2D while the host reads `host_bytes` (its products)
// when both draw on host memory, from three measured operating points: copies alone at h2d_gbps, the host alone at
// cpu_gemv_alone_gbps (0: cpu_gemv_gbps), and both at once at h2d_busy_gbps and cpu_gemv_gbps (0: h2d_gbps). The
// minimum over time-sharing between the points (a linear program over three modes; at most two are used):
// max(C / a, H / b) when both run at their solo rates together (a profile without busy rates), else the better of
// one after the other and both at once until one finishes, the rest alone. 0 bytes on one side: the other alone.
// `format`: the host's bytes are rows of that format, read at HostGemvGbps(format) in place of the bf16 rate (the
// alone and beside-copies rates scaled alike).
double MixFloorMicros(double copy_bytes, double host_bytes, const DeviceProfile& profile,
                      quant::Format format = quant::Format::kNone);
double UnitCopyMicros(uint64_t bytes, const DeviceProfile& profile);
double UnitReadMicros(uint64_t file_bytes, const DeviceProfile& profile);

struct ForwardPrediction {
  double total_us = 0;            // end of the last step's compute
  double compute_us = 0;          // sum of the steps' durations (start to end)
  double host_us = 0;             // sum of host dispatch times (0 without per-step host times)
  double copy_us = 0;             // sum of H2D copy times
  double compute_stall_us = 0;    // time compute waited for copies
  std::vector<double> step_start, step_end;  // per step
  std::vector<double> copy_start, copy_end;  // per stream unit (streams in order, units in order)
};

// Replays `schedule` with the given per-step compute times (see the header comment for the stream model):
//   * steps run in order; a step starts when the previous one ended and its block's whole units are copied;
//   * each device's copy stream copies its units in order, each once its wait_unit was released (a chunk is
//     released when the compute share it feeds ends, a whole unit when its step ends) and, for disk units, once
//     its read finished; reads run in order on the disk, each once the H2D copy of the unit whose disk slot it
//     reuses finished;
//   * a block with chunks runs half of its compute before its chunks and spreads the other half over them by bytes.
//   * with `host_tokens` > 0 (a decode forward of that many tokens that computes the `host` units on the host), host
//     units are not copied: the compute thread spends HostProductMicros on each in its place among the chunks (plus
//     kHostProductMicros per matrix), and releases it after; the other units copy at h2d_busy_gbps when the profile
//     has it (host memory serves both). The planner gives such blocks host dispatch + device time as their compute
//     (each product waits for the GPU, so the host cannot dispatch ahead): on an H100 host this predicted a bf16
//     Llama-3-8B-shaped decode at cuda:0=6GiB with 60% of the MLP rows on the host within 10%, and an fp8 one with
//     20% on the host (many small products) slower than streaming everything, as measured.
// `devices`: each block's compute device. `host_us`: per-step host dispatch times (empty = folded into compute_us).
ForwardPrediction SimulateForward(const Schedule& schedule, const std::vector<double>& compute_us,
                                  const std::vector<int32_t>& devices, const DeviceProfile& profile,
                                  const std::vector<double>& host_us = {}, uint32_t host_tokens = 0);

// A batched pass pipelined in micro-batches over several GPUs as the executor replays it from CUDA graphs
// (ExecutorOptions::micro_batch_rows, Executor::Impl::RunPipelined): the pass of B rows is cut into `micro_batches`
// micro-batches of r rows; a task is one micro-batch's segment (a run of consecutive steps on one GPU), replayed from
// a graph of its own. The executor captures those graphs after a shape's first pass, which runs eagerly; this is the
// replayed steady state (the first pass is issued op by op, kHostPrefillOpMicros per kernel, and is not predicted
// here). Replayed:
//   * order: the tasks are issued, and each GPU runs its own, in one order: micro-batches in groups of `group_size`
//     (0: one group of all m; ExecutorOptions::micro_batch_group); within a group, segment after segment, and for
//     each segment the group's micro-batches in order (key (k / group, j, k)). Each GPU runs one task at a time, in
//     that order, even where a later task is ready before the next one in order;
//   * host: one thread issues the tasks in that order, kHostGraphTaskMicros (`host_task_us`) each; a task starts no
//     earlier than its issue ends;
//   * chain: segment j of micro-batch k follows the task its GPU ran before and the hidden state's copy from the
//     previous GPU (hop_us of the segment's first step), which follows segment j - 1 of micro-batch k (the executor
//     issues it before the wait for the GPU's previous task, so it runs while that task computes).
// Returns the end of the last task. With one device the micro-batches run back to back on it (no overlap); with two
// devices of stage time s each, a free host and hops of h, m micro-batches take (m + 1) x s + h. Every
// micro-batch costs the same (the executor's last micro-batch may have fewer rows: it is charged in full).
// Per-step values describe ONE micro-batch, steps in execution order; hop_us[i] = 0 where step i's device equals step
// i - 1's (hop_us may be empty: no hops).
//
// Calibration (2x H200, Llama-3-8B shape, bf16, random weights, B = 8 rows x T = 512 tokens, logits of the last
// position only; the executor replaying graphs, every micro-batch in flight), measured medians of 7 against predicted
// by PredictBatchedPrefill (planner/planner.h; the step costs of EstimateBlockCost's prefill form with the default GPU
// profile at 780 TFLOP/s and 4230 GB/s; planner_test's BatchedPrefillPipelinedOverTwoGpus prints this table):
//   one GPU, unpipelined (graph-replayed)       94.6-97.8 ms          predicted 87.8 ms (-9%)
//   split contiguous (embedding + layers 0-15 on cuda:0, the rest on cuda:1):
//     unpipelined (eager)                       83.5 ms               predicted 88.0 ms (+5%)
//     8 micro-batches of 1 row                  59.8 ms               predicted 53.2 ms (-11%)
//     4 micro-batches of 2 rows                 61.1 ms               predicted 56.7 ms (-7%)
//   layers dealt to the GPUs in groups of 8:  8 x 1 row 55.3, predicted 50.4 (-9%); 4 x 2 rows 53.0, predicted 51.2 (-3%)
//   groups of 4:                              8 x 1 row 54.9, predicted 49.0 (-11%); 4 x 2 rows 50.8-51.3, predicted
//                                             48.4 (-5%); two micro-batches in flight 51.8-52.0, predicted 49.1 (-5%)
//   groups of 2:                              8 x 1 row 54.4, predicted 48.3 (-11%); 4 x 2 rows 50.0-53.1, predicted
//                                             47.0 (-9%)
// Repetitions after an idle moment run fastest; the medians are the sustained rate (identical configurations' medians
// spread by up to 3 ms in one process). What the model lacks: larger micro-batches run their products faster (cuBLAS
// at M = 1024 sustains more of the rate than at M = 512), so 4 x 2 rows measure below 8 x 1 where the model puts them
// close; and two GPUs running at once measured faster than one GPU running the same steps (the unpipelined split
// below the one-GPU pass), which one efficiency cannot say.
double SimulatePipelinedPass(const std::vector<double>& step_device_us, const std::vector<int32_t>& step_devices,
                             const std::vector<double>& hop_us, uint32_t micro_batches,
                             double host_task_us = kHostGraphTaskMicros, uint32_t group_size = 0);

// The lower bound for the streamed part of a forward: over devices, the larger of the summed H2D copy times and
// the summed disk read times of its units (`skip_host`: without the `host` units, as a decode forward that computes
// them on the host).
double CopyFloorMicros(const Schedule& schedule, const DeviceProfile& profile, bool skip_host = false);

}  // namespace bigplan
