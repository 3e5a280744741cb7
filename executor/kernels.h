// Model kernels: the math of each block kind for each architecture, as LibTorch ops on tensors that view
// executor-owned memory. Kernels allocate only activations/intermediates (through LibTorch's allocator on the
// current stream); weights and KV caches are views handed in by the runtime. LibTorch exceptions are caught at
// this boundary (RunBlock returns a Status).
#pragma once

#include <ATen/ATen.h>

#include <climits>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "arch/registry.h"
#include "arch/rope.h"
#include "formats/quant.h"
#include "support/result.h"

namespace bigplan {

// Hyperparameters (a copy of the plan's ModelConfig; see schema/plan.fbs for meanings).
struct ModelSpec {
  std::string architecture;  // a registry family or model_type (arch/registry.h): "llama", "gpt2", "gptj", "phi3"
  int64_t hidden_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t intermediate_size = 0;
  int64_t vocab_size = 0;
  int64_t max_position_embeddings = 0;
  double norm_eps = 1e-5;
  int64_t rotary_dim = 0;
  bool attention_bias = false;
  bool mlp_bias = false;
  bool tie_word_embeddings = false;
  std::string activation;        // "silu", "gelu_new", ...
  // The RoPE the Llama-family kernels compute (the plan's config.rope, resolved by the planner with
  // arch::ResolveRope; no JSON is read here). rope.rotary_dim 0 means rotary_dim above (head_dim when 0); otherwise
  // the two must agree. GPT-J's rotary uses rotary_dim above (its table's base is fixed at 10000); GPT-2 has none.
  arch::RopeParams rope;
  // Attention variants (schema/plan.fbs ModelConfig):
  int64_t sliding_window = 0;               // Llama family: > 0 on the layers flagged below: a query at position q
                                            // attends to keys q - sliding_window < k <= q (prefill, decode and static
                                            // decode steps; the KV cache keeps every position, older ones are masked)
  std::vector<bool> sliding_window_layers;  // per decoder layer; missing flags: full attention
  bool scale_attn_weights = true;           // gpt2: scores x 1/sqrt(head_dim)
  bool scale_attn_by_inverse_layer_idx = false;  // gpt2: scores / (layer + 1)
  bool reorder_and_upcast_attn = false;     // gpt2: scores and softmax in float32 (transformers' eager path)
  // Mixture of experts (mixtral, qwen2_moe, qwen3_moe; arch::ModelConfig says what each means). num_experts 0:
  // dense.
  int64_t num_experts = 0;
  int64_t num_experts_per_tok = 0;
  int64_t moe_intermediate_size = 0;
  int64_t shared_expert_intermediate_size = 0;
  bool norm_topk_prob = false;
  std::vector<bool> sparse_layers;
  bool qk_norm = false;
  // Not from the plan: run the fused CUDA kernels (executor/fused_ops.h) where they apply (bf16/fp16 on a GPU);
  // false keeps every op on LibTorch (ExecutorOptions::fused_kernels).
  bool fused_kernels = true;
  bool grouped_prompt_experts = true;  // ExecutorOptions::grouped_prompt_experts
};

// How a weight is stored when it is row-quantized (formats/quant.h, plan --weights): its tensor (Find, or each
// chunk) is then uint8 [rows, quant::RowBytes(format, cols, group)], each row the quantized values of `cols`
// columns and one scale record per group; the kernels dequantize it (or multiply in the compressed form).
struct WeightQuant {
  quant::Format format = quant::Format::kNone;
  int64_t group = 0;
  int64_t cols = 0;  // the logical matrix's columns (Shape(slot)[1])
  // int4 only: the same bytes arranged as two blocks instead of rows: every row's values ([rows, cols / 2], so a
  // product reads them without gathering them out of the rows), then the records transposed to [groups, rows, 2]
  // bf16 (the scale/zero layout PyTorch's tinygemm kernel takes). The executor stores GPU-resident int4 weights so;
  // rows of such a weight are never handed out in chunks.
  bool split = false;
  // Act-order GPTQ: int64 [cols] on the weight's device; the stored column i multiplies x[..., perm[i]] (LinearW
  // applies it). Undefined otherwise.
  at::Tensor perm;
  bool quantized() const { return format != quant::Format::kNone; }
};

// The weights of one block, by the typed slot of its kernel (arch::Slot: kQ, kGateUp, kLmHead, ...), already at the
// execution dtype on the compute device. The executor binds each block's tensors to slots once, at load
// (arch/binding.h: unknown, mis-shaped or missing tensors fail there); a tied weight fills the reader's slot
// (lm_head's kLmHead holds the token embedding).
//
// Streamed weights (plan version 2) are either whole (on the device for the whole step: Find returns them like
// resident ones) or streamed in row chunks: then Find returns an undefined tensor and the kernel reads the weight
// chunk by chunk, in row order, with AcquireChunk / ReleaseChunk around the one operation that reads each chunk
// (the chunk's memory is reused for later units once released). Kernels consume chunked weights in the order the
// planner streams them (planner/placement.cc ConsumptionRank): attention input projections (q, k, v), attention
// output, MLP input projections (gate, up), MLP output; kernels_internal's LinearW / Conv1DW / EmbeddingW do this.
class BlockWeights {
 public:
  virtual ~BlockWeights() = default;
  // The whole tensor in `slot`, or an undefined at::Tensor if the block has none there or streams it in chunks.
  virtual at::Tensor Find(arch::Slot slot) const = 0;
  // The tensor; kNotFound naming the slot if absent (or chunked).
  Result<at::Tensor> Get(arch::Slot slot) const;
  // Whether the block has a tensor in `slot` (whole or chunked).
  bool Has(arch::Slot slot) const { return Find(slot).defined() || NumChunks(slot) > 0; }
  // Row chunks of a chunk-streamed weight; 0 for whole, resident or absent weights.
  virtual int NumChunks(arch::Slot /*slot*/) const { return 0; }
  // The full shape of a weight (also of a chunked one); empty if absent. For a quantized weight: the logical
  // [rows, cols] matrix (its tensors are uint8 rows, see WeightQuant).
  virtual std::vector<int64_t> Shape(arch::Slot slot) const;
  // How the weight in `slot` is stored: not quantized (the default) or row-quantized.
  virtual WeightQuant Quant(arch::Slot /*slot*/) const { return {}; }
  // The checkpoint name of the tensor in `slot`, for messages (the slot's name when unknown).
  virtual std::string Name(arch::Slot slot) const;
  // Chunk i (0 <= i < NumChunks, in increasing order): makes the current stream wait for its copy and returns its
  // rows as a tensor [rows, ...] with *row_begin set to its first row.
  virtual Result<at::Tensor> AcquireChunk(arch::Slot slot, int i, int64_t* row_begin) const;
  // Marks chunk i consumed once the operation reading it has been issued on the current stream.
  virtual Status ReleaseChunk(arch::Slot slot, int i) const;
  // Host compute (a decode forward of a plan whose stream units include `host` ones, schema/plan.fbs): the first row
  // of the chunked matrix in `slot` whose product the host computes in this forward; INT64_MAX when it computes none
  // (the default). Chunks from that row on are still acquired and released in order, but hold no bytes.
  virtual int64_t HostRowBegin(arch::Slot /*slot*/) const { return INT64_MAX; }
  // Starts copying x ([..., cols], at most Plan.host_max_tokens rows of cols) to the host on the current stream,
  // for the HostProduct calls that follow; a no-op when x is the tensor given last in this step (x must not be
  // changed in place in between).
  virtual Status HostBegin(const at::Tensor& x) const;
  // x (of the last HostBegin) times rows [HostRowBegin(slot), rows) of the matrix in `slot`, computed by the host
  // CPU: [tokens, rows - HostRowBegin(slot)] in x's dtype on x's device, ready in stream order on the current
  // stream.
  virtual Result<at::Tensor> HostProduct(arch::Slot slot) const;

  // ---- routed experts (a sparse decoder layer of a mixture-of-experts model) ----
  // One expert the kernel computes: the rows of x routed to it (int64 [n] on x's device, ascending; n may be 0 for
  // an expert whose chunk-streamed weights must still be consumed in order) and where their choices lie among the
  // router's (`picks`, int64 [n] on x's device: positions in the flattened [T * k] `topw` given to BeginExperts;
  // `first_pick` the first of them, on the host, -1 when n is 0). TaskWeights gathers their routing weights, for a
  // kernel that needs them per expert (a grouped prompt combines every pair at once and gathers none).
  struct ExpertTask {
    int32_t expert = 0;
    at::Tensor rows;
    at::Tensor picks;
    int64_t first_pick = -1;
  };
  // Task t's routing weights [n, 1] in topw's dtype: topw [T, k] flattened, taken at t.picks (for one pick, a view of
  // topw).
  static at::Tensor TaskWeights(const ExpertTask& t, const at::Tensor& topw);
  // After the router: x [T, hidden] (the normed input), topi [T, k] int64 expert choices, topw [T, k] their
  // weights; the layer has num_experts experts. Returns the experts the kernel computes, in ascending order, each between AcquireExpert and
  // ReleaseExpert; the executor may compute others on the host (FinishExperts gives their sum). The default (every
  // expert's weights in its slots: resident, streamed, or used in place) reads the choices on the host (one
  // synchronization) and lists every expert with rows, and every expert whose weights stream in chunks.
  // Experts computed together: one grouped product per matrix over the group's experts, whose gate and up
  // matrices lie back to back ([gate; up], 2 x inter rows). The executor owns the arrays (device-readable, n
  // entries each) and the buffers they point into; x_ptrs name the x given to BeginExperts.
  struct ExpertGroup {
    int32_t index = 0;
    // kNone: the matrices are plain, in x's dtype; else row-quantized (formats/quant.h): kInt8 / kFp8E4M3 with one
    // float32 scale a row, kInt4 in groups of gate_up_group (of hidden) and down_group (of inter) columns; at most
    // fused::kGemvMaxRows tokens.
    quant::Format format = quant::Format::kNone;
    int64_t gate_up_group = 0, down_group = 0;
    // int4 matrices in the split layout (GPU-resident ones: fused::QuantGemvArgs::split_rows), gate and up each.
    bool split = false;
    int64_t n = 0, tokens = 0, inter = 0, hidden = 0;
    const void* const* gate_up = nullptr;  // [2 inter, hidden] matrices
    const void* const* x_ptrs = nullptr;   // x [tokens, hidden]
    void* const* gu_ptrs = nullptr;        // gu[i]
    const void* const* down = nullptr;     // [hidden, inter] matrices
    const void* const* h_ptrs = nullptr;   // h[i]
    void* const* y_ptrs = nullptr;         // y[i]
    at::Tensor gu, h, y;  // [n, tokens, 2 inter], [n, tokens, inter], [n, tokens, hidden] in x's dtype
    at::Tensor weights;   // [n, tokens, 1] in the router weights' dtype: token t's weight for expert i, 0 if not routed
  };
  struct ExpertWork {
    std::vector<ExpertTask> tasks;    // one by one, between AcquireExpert and ReleaseExpert
    std::vector<ExpertGroup> groups;  // grouped, between AcquireGroup and ReleaseGroup
  };
  // `written`: the router's kernel also wrote the choices to ChoicesForHost()'s buffers (which were not null).
  virtual Result<ExpertWork> BeginExperts(const at::Tensor& x, const at::Tensor& topi, const at::Tensor& topw,
                                          int64_t num_experts, bool written) const;
  // Where a router's kernel may also write one token's choices for BeginExperts to read on the host (memory the
  // GPU writes and the host reads, e.g. mapped pinned): ids [k] int64, weights [k] float32 (each stored weight's
  // value), x [hidden] float32 (the router's input; null when no expert runs on the host). All null (the default):
  // BeginExperts moves the choices itself.
  struct HostChoices {
    int64_t* ids = nullptr;
    float* weights = nullptr;
    float* x = nullptr;
  };
  virtual HostChoices ChoicesForHost() const { return {}; }
  // Makes the current stream wait for group `index`'s copies / marks its products issued.
  virtual Status AcquireGroup(int32_t /*index*/) const { return Status::Ok(); }
  virtual Status ReleaseGroup(int32_t /*index*/) const { return Status::Ok(); }
  // Makes expert e's weights available in its slots (ExpertSlot(kExpertGate/Up/Down, e)) on the current stream:
  // a routed expert's copy is waited for. The default does nothing.
  virtual Status AcquireExpert(int32_t /*expert*/) const { return Status::Ok(); }
  // Called after AcquireExpert and before the first use of expert e's down projection: where AcquireExpert waited
  // only for the gate and up weights (an expert whose down weights arrive after them), waits for the down weights
  // on the current stream, so that the gate/up product runs while they cross. The default does nothing.
  virtual Status AcquireExpertDown(int32_t /*expert*/) const { return Status::Ok(); }
  // Marks expert e's products issued on the current stream (its slot may be reused). The default does nothing.
  virtual Status ReleaseExpert(int32_t /*expert*/) const { return Status::Ok(); }
  // Whether expert e's weights reach the GPU for this pass through a slot of their own (a copy AcquireExpert waits
  // for): work reading them must then be issued before ReleaseExpert. False (the default): they rest where their
  // slots point for the whole pass, and work reading them may be issued after ReleaseExpert.
  virtual bool ExpertMoves(int32_t /*expert*/) const { return false; }
  // Adds the weighted sum of the experts the host computed to *out ([T, hidden] in x's dtype on x's device: out +
  // sum.to(out's dtype), in stream order); leaves it as it is when the host computed none (the default).
  virtual Status FinishExperts(at::Tensor* /*out*/) const { return Status::Ok(); }
  // A sparse layer whose routed experts all rest on the block's GPU where they stay (none moved or computed by the
  // host, streamed, chunked or quantized), each expert's gate and up rows back to back, in the execution dtype: per
  // expert (in index order) the device address of its [gate; up] rows ([2 inter, hidden]) and of its down matrix
  // ([hidden, inter]), fixed for the executor's life, so kernels may read the chosen experts on the device without
  // the host (fused_ops::MoeExperts). Null otherwise (the default).
  // Where the experts lie at equal distances (the planner lays a resident layer's experts out one after another),
  // gate_up_stride and down_stride give them in bytes (expert e's [gate; up] at gate_up[0] + e x gate_up_stride),
  // so that grouped products may read them as one [experts, ...] tensor; 0 otherwise.
  struct ResidentExpertTable {
    std::vector<uint64_t> gate_up, down;
    int64_t inter = 0, hidden = 0;
    int64_t gate_up_stride = 0, down_stride = 0;
  };
  virtual const ResidentExpertTable* ResidentExperts() const { return nullptr; }
};

// A decoder layer's KV cache: k and v each [max_batch, num_kv_heads, max_seq_len, head_dim], execution dtype,
// on the compute device (views of the plan's KvCache buffer). Positions [0, start_pos) hold earlier tokens.
struct KvCache {
  at::Tensor k;
  at::Tensor v;
};

// Per-forward inputs shared by all blocks.
struct ForwardContext {
  at::Tensor token_ids;   // [batch, seq] int64 on the compute device of the embedding block
  int64_t start_pos = 0;  // tokens already in the KV cache (same for every sequence of the batch)
  // When true, "lm_head" computes logits for the last position only: `*logits` is [batch, 1, vocab]
  // (what generation needs; saves seq x vocab floats per sequence in a prefill).
  bool logits_last_only = false;
  // Static single-token step (only where ModelKernels::StaticDecode says so): when defined, a one-element int64
  // tensor on the compute device holding the position of the token (start_pos is then used only for argument
  // checks). token_ids is [batch, 1]; a decoder layer writes its K/V at that position with index_copy_ and attends
  // over every position of the cache with a mask built on the device from it, so no shape, host value or
  // allocation size depends on the position and the step can be captured in a CUDA graph and replayed at any
  // position. Cache positions after it must hold finite values (zeros, or earlier tokens): they are masked out.
  at::Tensor position;
  // Per-row single-token step (continuous batching; honored where ModelKernels::StaticDecode is true, the Llama
  // family): when defined, an [n] int64 tensor on the compute device naming the KV-cache row of each of the n
  // rows of token_ids ([n, 1]); `position` is then [n], each row's position, and the KvCache given to RunBlock is
  // the whole cache. A decoder layer writes each row's K/V at its position of its row and attends over the first
  // `attend_len` positions (at least max(position) + 1) of its row, masked after its position. Cache positions
  // below attend_len that a row has not written must hold finite values.
  at::Tensor rows;
  int64_t attend_len = 0;
  // Tensor parallelism (schema Plan.tensor_parallel; arch/tensor_parallel.h): set when the block is one shard of a
  // block split over several GPUs; the kernels (built for arch::ShardConfig's heads and intermediate size) compute
  // the shard's part and combine the shards' parts through all_reduce. Null otherwise.
  struct Shards {
    int shard = 0;
    int64_t vocab_begin = 0, vocab_end = 0;  // this shard's rows of the embedding and lm_head
    int64_t vocab = 0;                       // the whole vocabulary
    // Replaces x (contiguous, on the shard's device) by the sum over the shards of their x, in shard order, in
    // stream order on the current stream. Every shard calls it at the same points with the same shapes.
    std::function<Status(const at::Tensor& x)> all_reduce;
  };
  const Shards* shards = nullptr;
};

// Block kinds (arch::BlockKind): embedding, decoder_layer, final_norm, lm_head, and position_embedding (GPT-2's
// transformer.wpe: adds rows [start_pos, start_pos + seq) of the table to `hidden`; kInvalidArgument past its end).
// `hidden` is [batch, seq, hidden_size] in the execution dtype; for "embedding" it is ignored and set; for
// "lm_head" the result `*logits` is set to [batch, seq, vocab] float32 and `hidden` is left unchanged.
// `block` names the block in messages, e.g. "model.layers.3".
class ModelKernels {
 public:
  virtual ~ModelKernels() = default;
  virtual Status RunBlock(arch::BlockKind kind, const std::string& block, int layer, const BlockWeights& weights,
                          const ForwardContext& ctx, KvCache* kv, at::Tensor* hidden, at::Tensor* logits) const = 0;
  // Whether RunBlock takes ForwardContext::position (static single-token steps) for KV caches of max_seq_len
  // positions: the Llama family and Phi-3, except dynamic NTK RoPE past max_position_embeddings and longrope past
  // original_max_position_embeddings (their frequencies depend on the length). False for the other architectures.
  // arch::GraphDecodeEligible gives the planner the same answer.
  virtual bool StaticDecode(int64_t /*max_seq_len*/) const { return false; }
  // Whether a decode step may be captured in a CUDA graph for KV caches of max_seq_len positions: a static step
  // (StaticDecode) in which nothing waits for the host. Mixture-of-experts layers: where the fused kernels read the
  // chosen experts on the device (fused_ops::MoeExperts), which they do only for a layer whose experts are all
  // resident (BlockWeights::ResidentExperts; the executor checks each block before it captures). The default:
  // StaticDecode.
  virtual bool GraphDecode(int64_t max_seq_len) const { return StaticDecode(max_seq_len); }
  // Whether RunBlock takes ForwardContext::rows (per-row positions: continuous batching's one-token rows as one
  // batch) for KV caches of max_seq_len positions. The Llama family (mixture-of-experts layers included: their
  // experts see tokens, not positions) and Phi-3, as StaticDecode for the rest. The default: StaticDecode.
  virtual bool RowSteps(int64_t max_seq_len) const { return StaticDecode(max_seq_len); }
  // Experts whose prompt products ran as grouped products over their dequantized matrices (quantized experts
  // dispatched from the host), since the kernels were made. The default: 0.
  virtual uint64_t GroupedPromptExperts() const { return 0; }
};

// kUnsupported naming the architecture if the architecture registry (arch/registry.h) has no such family or
// model_type ("llama", also accepted as "mistral" and "qwen2"; "gpt2"; "gptj"; "phi3"), an unknown activation /
// RoPE type (spec.rope.type) the family does not compute, or partial rotary for a family the registry does not mark
// partial_rotary; kInvalidArgument for inconsistent hyperparameters (e.g. num_heads not a multiple of num_kv_heads,
// spec.rope.rotary_dim disagreeing with spec.rotary_dim) or RoPE parameters arch::CheckRopeParams refuses.
//
// Slots each kernel reads (the registry's tensor tables say which tensor fills each):
//   llama  embedding kTokenEmbedding; decoder_layer kInputNorm, kQ/kK/kV/kO (+ biases when present), kPostNorm,
//          kGate/kUp/kDown (+ biases when present); final_norm kFinalNorm; lm_head kLmHead (+ kLmHeadBias if present).
//   phi3   as llama, with kQkv ([q; k; v] rows) instead of kQ/kK/kV and kGateUp ([gate; up] rows) instead of
//          kGate/kUp: one product each, split into narrow views (the llama kernel takes the fused form wherever the
//          block has it).
//   gpt2   embedding kTokenEmbedding; position_embedding kPositionEmbedding; decoder_layer kInputNorm(+Bias),
//          kQkv(+Bias) (Conv1D c_attn), kO(+Bias), kPostNorm(+Bias), kFcIn(+Bias), kDown(+Bias) (Conv1D, [in, out]);
//          final_norm kFinalNorm(+Bias); lm_head kLmHead.
//   gptj   embedding kTokenEmbedding; decoder_layer kInputNorm(+Bias), kQ, kK, kV, kO, kFcIn(+Bias), kDown(+Bias);
//          final_norm kFinalNorm(+Bias); lm_head kLmHead and kLmHeadBias.
// A missing slot the kernel needs is kNotFound naming the block and the slot (the executor's load-time binding
// refuses such blocks first).
// RoPE types (spec.rope.type): default, linear, dynamic, llama3, yarn, longrope (as
// transformers' ROPE_INIT_FUNCTIONS and its dynamic update: longrope's long factors for forwards longer than
// original_max_position_embeddings). Partial rotary (0 < rotary_dim < head_dim) rotates the first rotary_dim dims of
// a head (transformers' apply_rotary_pos_emb) for phi3; it is kUnsupported for the Llama family.
// RunBlock is thread-safe. It never synchronizes the host with the device (checked on CUDA with LibTorch's sync
// debug mode), so token ids are not range-checked: on CUDA an id >= vocab_size is a device-side assert, which
// poisons the context; callers check ids on the host. RoPE cos/sin tables are cached per (device, current
// stream, dtype), sized to the next power of two >= the positions used (>= 256 rows; [rows, head_dim] each).
// Side effect: disables LibTorch's cuDNN SDPA backend process-wide (at::globalContext().setSDPUseCuDNN(false)); it
// plans per shape, which costs ~75 ms of host time per decode step as the KV length grows.
Result<std::unique_ptr<ModelKernels>> MakeModelKernels(const ModelSpec& spec);

// The registry's view of a spec: the hyperparameters the tensor tables' shape and presence rules read, for binding
// a block's weights to the kernels' slots (arch::BindBlock).
arch::ModelConfig ShapeConfigOf(const ModelSpec& spec);

}  // namespace bigplan
