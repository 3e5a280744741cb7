// Shared kernel building blocks, the block-kind boundary (argument checks, exception capture) and the factory.
#include "executor/kernels.h"

#include <ATen/ATen.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstring>
#include <exception>
#include <functional>
#include <limits>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "arch/registry.h"
#include "arch/temporaries.h"
#include <map>

#include "executor/fused_ops.h"
#include "executor/kernels_internal.h"

namespace bigplan {

Result<at::Tensor> BlockWeights::Get(arch::Slot slot) const {
  at::Tensor t = Find(slot);
  if (!t.defined()) return MakeError(ErrorCode::kNotFound, std::string("no weight in slot ") + arch::SlotName(slot));
  return t;
}

std::vector<int64_t> BlockWeights::Shape(arch::Slot slot) const {
  at::Tensor t = Find(slot);
  if (!t.defined()) return {};
  return std::vector<int64_t>(t.sizes().begin(), t.sizes().end());
}

std::string BlockWeights::Name(arch::Slot slot) const { return std::string("slot ") + arch::SlotName(slot); }

Result<at::Tensor> BlockWeights::AcquireChunk(arch::Slot slot, int /*i*/, int64_t* /*row_begin*/) const {
  return MakeError(ErrorCode::kNotFound, "weight '" + Name(slot) + "' is not streamed in chunks");
}

Status BlockWeights::ReleaseChunk(arch::Slot slot, int /*i*/) const {
  return MakeError(ErrorCode::kNotFound, "weight '" + Name(slot) + "' is not streamed in chunks");
}

Status BlockWeights::HostBegin(const at::Tensor& /*x*/) const {
  return MakeError(ErrorCode::kInternal, "these weights have no host compute");
}

Result<at::Tensor> BlockWeights::HostProduct(arch::Slot slot) const {
  return MakeError(ErrorCode::kInternal, "weight '" + Name(slot) + "' has no rows the host computes");
}

Result<BlockWeights::ExpertWork> BlockWeights::BeginExperts(const at::Tensor& x, const at::Tensor& topi,
                                                             const at::Tensor& topw, int64_t num_experts,
                                                             bool /*written*/) const {
  if (topi.dim() != 2 || topw.sizes() != topi.sizes() || x.dim() != 2 || x.size(0) != topi.size(0)) {
    return MakeError(ErrorCode::kInvalidArgument, "routed experts: x, topi and topw disagree on their shapes");
  }
  const int64_t tokens = topi.size(0), k = topi.size(1);
  const at::Tensor ids = topi.to(at::kCPU, at::kLong).contiguous();
  const int64_t* p = ids.data_ptr<int64_t>();
  std::map<int32_t, std::vector<int64_t>> rows, picks;  // expert -> token rows, flat (t * k + j) picks
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t j = 0; j < k; ++j) {
      const int64_t e = p[t * k + j];
      if (e < 0 || e >= num_experts) return MakeError(ErrorCode::kInvalidArgument, "routed experts: bad expert index");
      rows[static_cast<int32_t>(e)].push_back(t);
      picks[static_cast<int32_t>(e)].push_back(t * k + j);
    }
  }
  // Experts streamed in chunks are consumed in order even without rows.
  for (int64_t e = 0; e < num_experts; ++e) {
    if (NumChunks(arch::ExpertSlot(arch::Slot::kExpertGate, static_cast<uint32_t>(e))) > 0) rows[static_cast<int32_t>(e)];
  }
  // Every expert's rows, then its picks, in one host buffer (pinned for a GPU) that reaches the device in one copy
  // issued without waiting: a copy from pageable memory would wait for the stream's work before each expert.
  const int64_t picked = tokens * k;
  const at::Tensor host =
      at::empty({2 * picked}, at::TensorOptions().dtype(at::kLong).pinned_memory(x.is_cuda()));
  int64_t* h = host.data_ptr<int64_t>();
  std::vector<std::pair<int64_t, int64_t>> spans;  // (offset, count) per expert, in rows' order
  int64_t offset = 0;
  for (const auto& [e, r] : rows) {
    const std::vector<int64_t>& pk = picks[e];
    std::copy(r.begin(), r.end(), h + offset);
    std::copy(pk.begin(), pk.end(), h + picked + offset);
    spans.emplace_back(offset, static_cast<int64_t>(r.size()));
    offset += static_cast<int64_t>(r.size());
  }
  const at::Tensor dev = x.is_cuda() ? host.to(x.device(), /*non_blocking=*/true) : host;
  ExpertWork work;
  std::vector<ExpertTask>& tasks = work.tasks;
  size_t i = 0;
  for (const auto& entry : rows) {
    const auto [off, count] = spans[i++];
    ExpertTask t;
    t.expert = entry.first;
    t.rows = dev.narrow(0, off, count);
    t.picks = dev.narrow(0, picked + off, count);
    t.first_pick = count > 0 ? h[picked + off] : -1;
    tasks.push_back(std::move(t));
  }
  return work;
}

at::Tensor BlockWeights::TaskWeights(const ExpertTask& t, const at::Tensor& topw) {
  const at::Tensor flat_w = topw.reshape({-1});
  if (t.picks.numel() == 1 && t.first_pick >= 0) return flat_w.narrow(0, t.first_pick, 1).view({1, 1});
  return flat_w.index_select(0, t.picks).unsqueeze(1);
}

namespace kernels_internal {
namespace {

std::string Lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char ch) { return static_cast<char>(std::tolower(ch)); });
  return s;
}

std::string ShapeString(const at::Tensor& t) {
  std::string s = "[";
  for (int64_t i = 0; i < t.dim(); ++i) s += (i ? ", " : "") + std::to_string(t.size(i));
  return s + "]";
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// Dense layers

at::Tensor Linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  return b.defined() ? at::linear(x, w, b) : at::linear(x, w);
}

at::Tensor Conv1D(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = w.size(1);
  at::Tensor x2 = x.reshape({-1, x.size(-1)});
  at::Tensor y = b.defined() ? at::addmm(b, x2, w) : at::mm(x2, w);
  return y.view(out_shape);
}

at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& w, double eps) {
  const at::ScalarType input_dtype = x.scalar_type();
  if (x.is_cuda()) {
    // One fused kernel for x * rsqrt(mean(x^2) + eps) in float32 (LibTorch's _fused_rms_norm, no weight), then the
    // cast and the weight as transformers applies them: 4 launches instead of 8 (2 to 4 norms per layer in decode).
    at::Tensor h = std::get<0>(at::_fused_rms_norm(x.to(at::kFloat), {x.size(-1)}, std::nullopt, eps));
    return w * h.to(input_dtype);
  }
  at::Tensor h = x.to(at::kFloat);
  at::Tensor variance = h.pow(2).mean(-1, /*keepdim=*/true);
  h = h * at::rsqrt(variance + eps);
  return w * h.to(input_dtype);
}

at::Tensor LayerNorm(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, double eps) {
  return at::layer_norm(x, {x.size(-1)}, w, b, eps);
}

Result<Activation> ParseActivation(const std::string& name) {
  const std::string n = Lower(name);
  if (n == "silu" || n == "swish") return Activation::kSilu;
  if (n == "gelu_new" || n == "gelu_pytorch_tanh" || n == "gelu_fast") return Activation::kGeluTanh;
  if (n == "gelu") return Activation::kGelu;
  if (n == "relu") return Activation::kRelu;
  return MakeError(ErrorCode::kUnsupported, "activation '" + name +
                                                "' is not supported (supported: silu, gelu_new, gelu_pytorch_tanh, "
                                                "gelu_fast, gelu, relu)");
}

at::Tensor Activate(Activation act, const at::Tensor& x) {
  switch (act) {
    case Activation::kSilu: return at::silu(x);
    case Activation::kGeluTanh: return at::gelu(x, "tanh");
    case Activation::kGelu: return at::gelu(x);
    case Activation::kRelu: return at::relu(x);
  }
  return x;
}

// ---------------------------------------------------------------------------------------------------------------
// Rotary position embeddings

Result<RopeConfig> RopeFromSpec(const ModelSpec& spec) {
  const arch::RopeParams& p = spec.rope;
  const int64_t dim = spec.rotary_dim > 0 ? spec.rotary_dim : spec.head_dim;
  if (p.rotary_dim != 0 && static_cast<int64_t>(p.rotary_dim) != dim) {
    return MakeError(ErrorCode::kInvalidArgument, "model spec: rope.rotary_dim " + std::to_string(p.rotary_dim) +
                                                      " disagrees with rotary_dim " + std::to_string(dim));
  }
  if (dim < 0 || dim > std::numeric_limits<uint32_t>::max() || spec.head_dim > std::numeric_limits<uint32_t>::max()) {
    return MakeError(ErrorCode::kInvalidArgument, "model spec: rotary_dim " + std::to_string(dim) + " out of range");
  }
  arch::RopeParams checked = p;
  checked.rotary_dim = static_cast<uint32_t>(dim);
  if (Status st = arch::CheckRopeParams(checked, static_cast<uint32_t>(spec.head_dim)); !st.ok()) {
    return MakeError(ErrorCode::kInvalidArgument, "model spec: " + st.error().message);
  }
  if (p.type == arch::RopeType::kDynamic && spec.max_position_embeddings <= 0) {
    return MakeError(ErrorCode::kInvalidArgument, "model spec: dynamic rope needs max_position_embeddings > 0");
  }
  if (spec.max_position_embeddings < 0 || spec.max_position_embeddings > std::numeric_limits<uint32_t>::max()) {
    return MakeError(ErrorCode::kInvalidArgument, "model spec: max_position_embeddings " +
                                                      std::to_string(spec.max_position_embeddings) + " out of range");
  }
  RopeConfig rope;
  static_cast<arch::RopeParams&>(rope) = checked;
  rope.max_position_embeddings = spec.max_position_embeddings;
  // The resolved parameters carry max_position_embeddings here for the types without their own; a spec built by
  // hand may leave it 0.
  if (rope.original_max_position_embeddings == 0) {
    rope.original_max_position_embeddings = static_cast<uint32_t>(spec.max_position_embeddings);
  }
  return rope;
}

at::Tensor RopeInvFreq(const RopeConfig& rope, int64_t seq_len, const at::Device& device) {
  const auto i64 = at::TensorOptions().dtype(at::kLong).device(device);
  const int64_t rotary = rope.rotary_dim;
  const double dim = static_cast<double>(rotary);
  // torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
  at::Tensor exponents = at::arange(0, rotary, 2, i64).to(at::kFloat) / dim;

  if (rope.type == RopeConfig::Type::kDynamic && seq_len > rope.max_position_embeddings) {
    // transformers' dynamic update passes seq_len as a tensor, so this is float32 tensor arithmetic:
    // base = base * ((factor * seq_len / max_pos) - (factor - 1)) ** (dim / (dim - 2))
    at::Tensor s = at::scalar_tensor(seq_len, i64);
    at::Tensor scaled = at::pow(s * rope.factor / static_cast<double>(rope.max_position_embeddings) -
                                    (rope.factor - 1.0),
                                dim / (dim - 2.0));
    at::Tensor base = scaled * rope.theta;
    return at::reciprocal(at::pow(base, exponents));
  }

  if (rope.type == RopeConfig::Type::kLongrope) {
    // inv_freq = 1.0 / (ext_factors * base ** (arange(0, dim, 2).float() / dim)), ext float32.
    const std::vector<float>& f =
        seq_len > rope.original_max_position_embeddings ? rope.long_factor : rope.short_factor;
    // From pinned memory without blocking: no host synchronization (the step may be captured or replayed).
    const bool cuda = device.is_cuda();
    at::Tensor host = at::empty({static_cast<int64_t>(f.size())},
                                at::TensorOptions().dtype(at::kFloat).pinned_memory(cuda));
    std::memcpy(host.data_ptr<float>(), f.data(), f.size() * sizeof(float));
    at::Tensor ext = cuda ? host.to(device, /*non_blocking=*/true) : host;
    return at::reciprocal(ext * at::pow(at::Scalar(rope.theta), exponents));
  }
  at::Tensor inv_freq = at::reciprocal(at::pow(at::Scalar(rope.theta), exponents));
  switch (rope.type) {
    case RopeConfig::Type::kLongrope:
    case RopeConfig::Type::kDefault:
    case RopeConfig::Type::kDynamic:
      return inv_freq;
    case RopeConfig::Type::kLinear:
      return inv_freq / rope.factor;
    case RopeConfig::Type::kLlama3: {
      const double old_context_len = static_cast<double>(rope.original_max_position_embeddings);
      const double low_freq_wavelen = old_context_len / rope.low_freq_factor;
      const double high_freq_wavelen = old_context_len / rope.high_freq_factor;
      at::Tensor wavelen = at::reciprocal(inv_freq) * (2.0 * M_PI);
      at::Tensor inv_freq_llama = at::where(wavelen > low_freq_wavelen, inv_freq / rope.factor, inv_freq);
      at::Tensor smooth_factor = (at::reciprocal(wavelen) * old_context_len - rope.low_freq_factor) /
                                 (rope.high_freq_factor - rope.low_freq_factor);
      at::Tensor smoothed = (1.0 - smooth_factor) * inv_freq_llama / rope.factor + smooth_factor * inv_freq_llama;
      at::Tensor is_medium = at::logical_and(at::logical_not(wavelen < high_freq_wavelen),
                                             at::logical_not(wavelen > low_freq_wavelen));
      return at::where(is_medium, smoothed, inv_freq_llama);
    }
    case RopeConfig::Type::kYarn: {
      // pos_freqs = base ** (arange(0, dim, 2).float() / dim); the ramp is over dim // 2 entries.
      at::Tensor pos_freqs = at::pow(at::Scalar(rope.theta), exponents);
      at::Tensor inv_freq_extrapolation = at::reciprocal(pos_freqs);
      at::Tensor inv_freq_interpolation = at::reciprocal(pos_freqs * rope.factor);
      at::Tensor ramp = at::clamp((at::arange(rotary / 2, i64.dtype(at::kFloat)) - rope.ramp_low) /
                                      (rope.ramp_high - rope.ramp_low),
                                  0, 1);
      at::Tensor extrapolation_factor = 1.0 - ramp;
      return inv_freq_interpolation * (1.0 - extrapolation_factor) + inv_freq_extrapolation * extrapolation_factor;
    }
  }
  return inv_freq;
}

void RopeCosSin(const RopeConfig& rope, int64_t start_pos, int64_t seq, at::ScalarType dtype,
                const at::Device& device, at::Tensor* cos, at::Tensor* sin) {
  at::Tensor inv_freq = RopeInvFreq(rope, start_pos + seq, device);
  at::Tensor positions =
      at::arange(start_pos, start_pos + seq, at::TensorOptions().dtype(at::kLong).device(device)).to(at::kFloat);
  at::Tensor freqs = at::outer(positions, inv_freq);  // [seq, dim / 2], float32
  at::Tensor emb = at::cat({freqs, freqs}, -1);
  if (rope.attention_factor != 1.0) {
    *cos = (emb.cos() * rope.attention_factor).to(dtype);
    *sin = (emb.sin() * rope.attention_factor).to(dtype);
  } else {
    *cos = emb.cos().to(dtype);
    *sin = emb.sin().to(dtype);
  }
}

RopeConfig RopeConfig::ShortForm() const {
  RopeConfig r = *this;
  if (r.type == Type::kDynamic) r.type = Type::kDefault;
  if (r.type == Type::kLongrope) r.long_factor = r.short_factor;
  return r;
}

at::Tensor ApplyRopeHalf(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t rotary = cos.size(-1);
  if (rotary < x.size(-1)) {
    // Partial rotary: rotate the first `rotary` dims, pass the rest through.
    at::Tensor rotated = ApplyRopeHalf(x.narrow(-1, 0, rotary), cos, sin);
    return at::cat({rotated, x.narrow(-1, rotary, x.size(-1) - rotary)}, -1);
  }
  const int64_t half = x.size(-1) / 2;
  at::Tensor x1 = x.narrow(-1, 0, half);
  at::Tensor x2 = x.narrow(-1, half, x.size(-1) - half);
  at::Tensor rotated = at::cat({-x2, x1}, -1);
  return x * cos + rotated * sin;
}

void RopeTableCache::Get(int64_t start, int64_t seq, at::ScalarType dtype, const at::Device& device,
                         at::Tensor* cos, at::Tensor* sin) const {
  int64_t stream = 0;
  if (device.type() != at::kCPU) stream = c10::impl::VirtualGuardImpl(device.type()).getStream(device).id();
  const int64_t need = start + seq;
  std::lock_guard<std::mutex> lock(mu_);
  Entry* entry = nullptr;
  for (Entry& e : entries_) {
    if (e.device == device && e.stream == stream && e.dtype == dtype) entry = &e;
  }
  if (entry == nullptr || entry->cos.size(0) < need) {
    int64_t length = 256;
    while (length < need) length *= 2;
    at::Tensor c, s;
    builder_(length, dtype, device, &c, &s);
    if (entry == nullptr) {
      entries_.push_back(Entry{device, stream, dtype, c, s});
      entry = &entries_.back();
    } else {
      entry->cos = c;
      entry->sin = s;
    }
  }
  *cos = entry->cos.narrow(0, start, seq);
  *sin = entry->sin.narrow(0, start, seq);
}

// ---------------------------------------------------------------------------------------------------------------
// Attention

Status CheckKvCache(const KvCache* kv, int64_t batch, int64_t kv_heads, int64_t start_pos, int64_t seq,
                    int64_t head_dim, const at::Device& device, const std::string& block) {
  if (kv == nullptr) {
    if (start_pos == 0) return Status::Ok();
    return MakeError(ErrorCode::kInvalidArgument,
                     block + ": no KV cache, but start_pos is " + std::to_string(start_pos));
  }
  for (const auto* t : {&kv->k, &kv->v}) {
    const char* which = t == &kv->k ? "k" : "v";
    if (!t->defined()) {
      return MakeError(ErrorCode::kInvalidArgument, block + ": KV cache " + which + " is undefined");
    }
    if (t->dim() != 4 || t->size(0) < batch || t->size(1) != kv_heads || t->size(2) < start_pos + seq ||
        t->size(3) != head_dim) {
      return MakeError(ErrorCode::kInvalidArgument,
                       block + ": KV cache " + which + " has shape " + ShapeString(*t) + ", need [>= " +
                           std::to_string(batch) + ", " + std::to_string(kv_heads) + ", >= " +
                           std::to_string(start_pos + seq) + ", " + std::to_string(head_dim) + "]");
    }
    if (t->device() != device) {
      return MakeError(ErrorCode::kInvalidArgument, block + ": KV cache " + which + " is on " +
                                                        t->device().str() + ", the block computes on " +
                                                        device.str());
    }
    if (t->stride(3) != 1) {
      return MakeError(ErrorCode::kInvalidArgument,
                       block + ": KV cache " + which + " must be contiguous in head_dim");
    }
  }
  return Status::Ok();
}

at::Tensor CachedAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, KvCache* kv,
                           int64_t start_pos, double scale, int64_t window, bool upcast) {
  const int64_t batch = q.size(0);
  const int64_t seq = q.size(2);
  const int64_t total = start_pos + seq;
  at::Tensor keys = k;
  at::Tensor values = v;
  if (kv != nullptr) {
    at::Tensor k_cache = kv->k.narrow(0, 0, batch);
    at::Tensor v_cache = kv->v.narrow(0, 0, batch);
    k_cache.narrow(2, start_pos, seq).copy_(k);
    v_cache.narrow(2, start_pos, seq).copy_(v);
    keys = k_cache.narrow(2, 0, total);
    values = v_cache.narrow(2, 0, total);
  }
  return AttendCache(q, keys, values, start_pos, scale, window, upcast);
}

namespace {

// AttendCache for queries whose scores LibTorch may hold whole.
at::Tensor AttendWhole(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values, int64_t start_pos,
                       double scale, int64_t window, bool upcast);

}  // namespace

at::Tensor AttendCache(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values, int64_t start_pos,
                       double scale, int64_t window, bool upcast) {
  const int64_t batch = q.size(0), heads = q.size(1), seq = q.size(2);
  const int64_t total = start_pos + seq;
  // A causal prompt from position 0 in half precision on a GPU is SDPA's fused (flash) kernel, which holds no scores.
  // Other prompts may take LibTorch's eager attention, whose scores are batch x heads x seq x total floats: the
  // queries are taken in chunks that keep those within arch::kAttentionScoreElements (arch/temporaries.h), each
  // chunk attending over the keys up to its last position (the same mask row by row).
  const bool fused = q.is_cuda() && (q.scalar_type() == at::kHalf || q.scalar_type() == at::kBFloat16) && !upcast &&
                     start_pos == 0 && !(window > 0 && total > window);
  const int64_t chunk = fused ? seq : arch::AttentionQueryChunk(batch, heads, total, seq);
  if (chunk >= seq) return AttendWhole(q, keys, values, start_pos, scale, window, upcast);
  std::vector<at::Tensor> parts;
  parts.reserve(static_cast<size_t>((seq + chunk - 1) / chunk));
  for (int64_t q0 = 0; q0 < seq; q0 += chunk) {
    const int64_t n = std::min(chunk, seq - q0);
    const int64_t end = start_pos + q0 + n;
    parts.push_back(AttendWhole(q.narrow(2, q0, n), keys.narrow(2, 0, end), values.narrow(2, 0, end), start_pos + q0,
                                scale, window, upcast));
  }
  return at::cat(parts, 2);
}

namespace {

at::Tensor AttendWhole(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values, int64_t start_pos,
                       double scale, int64_t window, bool upcast) {
  const int64_t heads = q.size(1);
  const int64_t seq = q.size(2);
  const int64_t kv_heads = keys.size(1);
  const int64_t total = start_pos + seq;
  const at::Tensor& v = values;
  // Sliding window: some token sees a key older than its window only once the keys outnumber the window.
  const bool windowed = window > 0 && total > window;
  upcast = upcast && q.scalar_type() != at::kFloat;
  std::optional<at::Tensor> mask;
  bool is_causal = false;
  if (seq > 1 || windowed || upcast) {
    if (start_pos == 0 && !windowed && !upcast) {
      is_causal = true;
    } else {
      // New token i (absolute position start_pos + i) sees keys 0..start_pos + i; with a window, only keys
      // > start_pos + i - window.
      at::Tensor allowed = at::ones({seq, total}, at::TensorOptions().dtype(at::kBool).device(q.device())).tril(start_pos);
      if (windowed) allowed = allowed.triu(start_pos - window + 1);
      mask = allowed;
    }
  }
  if (upcast) {
    // transformers' GPT2Attention._upcast_and_reordered_attn.
    at::Tensor kf = keys.to(at::kFloat), vv = values;
    if (heads != kv_heads) {
      kf = kf.repeat_interleave(heads / kv_heads, 1);
      vv = vv.repeat_interleave(heads / kv_heads, 1);
    }
    at::Tensor scores = at::matmul(q.to(at::kFloat), kf.transpose(-1, -2)) * scale;
    scores = scores.masked_fill(mask->logical_not(), -std::numeric_limits<float>::infinity());
    at::Tensor probs = at::softmax(scores, -1).to(v.scalar_type());
    return at::matmul(probs, vv);
  }
  return at::scaled_dot_product_attention(q, keys, values, mask, /*dropout_p=*/0.0, is_causal, scale,
                                          /*enable_gqa=*/heads != kv_heads);
}

}  // namespace

at::Tensor StaticDecodeAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, KvCache* kv,
                                 const at::Tensor& position, double scale, int64_t window) {
  const int64_t batch = q.size(0);
  const int64_t heads = q.size(1);
  const int64_t head_dim = q.size(3);
  const int64_t kv_heads = k.size(1);
  at::Tensor k_cache = kv->k.narrow(0, 0, batch);
  at::Tensor v_cache = kv->v.narrow(0, 0, batch);
  k_cache.index_copy_(2, position, k);
  v_cache.index_copy_(2, position, v);
  const int64_t max_seq = k_cache.size(2);
  // Head h attends with kv head h / (heads / kv_heads) (repeat_interleave), so q regroups as [batch, kv_heads,
  // group, head_dim] against the cache without expanding it.
  at::Tensor qg = q.reshape({batch, kv_heads, heads / kv_heads, head_dim});
  at::Tensor scores = at::matmul(qg, k_cache.transpose(2, 3)) * scale;  // [batch, kv_heads, group, max_seq]
  const at::Tensor positions = at::arange(max_seq, position.options());
  at::Tensor hidden_keys = positions > position;
  if (window > 0) hidden_keys = hidden_keys.logical_or(positions <= position - window);  // outside the window
  at::Tensor mask = at::zeros({max_seq}, q.options().dtype(at::kFloat))
                        .masked_fill_(hidden_keys, -std::numeric_limits<float>::infinity());
  at::Tensor probs = at::softmax(scores.to(at::kFloat) + mask, -1).to(q.scalar_type());
  return at::matmul(probs, v_cache).reshape({batch, heads, 1, head_dim});
}

at::Tensor RowsDecodeAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, KvCache* kv,
                               const at::Tensor& rows, const at::Tensor& positions, int64_t attend_len,
                               double scale) {
  const int64_t n = q.size(0);
  const int64_t heads = q.size(1);
  const int64_t head_dim = q.size(3);
  const int64_t kv_heads = k.size(1);
  // cache[rows[b], :, positions[b], :] = k[b, :, 0, :] (advanced indices on dims 0 and 2 -> [n, kv_heads, hd]).
  const c10::List<std::optional<at::Tensor>> where({rows, std::nullopt, positions});
  kv->k.index_put_(where, k.select(2, 0));
  kv->v.index_put_(where, v.select(2, 0));
  const at::Tensor keys = kv->k.narrow(2, 0, attend_len).index_select(0, rows);  // [n, kv_heads, L, hd]
  const at::Tensor values = kv->v.narrow(2, 0, attend_len).index_select(0, rows);
  at::Tensor qg = q.reshape({n, kv_heads, heads / kv_heads, head_dim});
  at::Tensor scores = at::matmul(qg, keys.transpose(2, 3)) * scale;  // [n, kv_heads, group, L]
  at::Tensor mask = at::zeros({n, 1, 1, attend_len}, q.options().dtype(at::kFloat))
                        .masked_fill_(at::arange(attend_len, positions.options()).view({1, 1, 1, attend_len}) >
                                          positions.view({n, 1, 1, 1}),
                                      -std::numeric_limits<float>::infinity());
  at::Tensor probs = at::softmax(scores.to(at::kFloat) + mask, -1).to(q.scalar_type());
  return at::matmul(probs, values).reshape({n, heads, 1, head_dim});
}

// ---------------------------------------------------------------------------------------------------------------
// Weights streamed in row chunks

WeightRef FindRef(const BlockWeights& weights, arch::Slot slot) {
  WeightRef r;
  r.weights = &weights;
  r.slot = slot;
  r.whole = weights.Find(slot);
  if (!r.whole.defined()) r.chunks = weights.NumChunks(slot);
  r.quant = weights.Quant(slot);
  return r;
}

namespace {

// Runs `use` on each chunk of `w` in order, acquiring and releasing it around the call.
Status ForEachChunk(const WeightRef& w, const std::function<void(const at::Tensor&, int64_t)>& use) {
  for (int i = 0; i < w.chunks; ++i) {
    int64_t row_begin = 0;
    BIGPLAN_ASSIGN_OR_RETURN(at::Tensor chunk, w.weights->AcquireChunk(w.slot, i, &row_begin));
    use(chunk, row_begin);
    BIGPLAN_RETURN_IF_ERROR(w.weights->ReleaseChunk(w.slot, i));
  }
  return Status::Ok();
}

}  // namespace

Result<at::Tensor> LinearW(const WeightRef& w, const at::Tensor& x_in, const at::Tensor& b) {
  // Act-order GPTQ: the stored columns are a permutation of the checkpoint's; so are the activations'.
  const at::Tensor x = w.quant.perm.defined() ? x_in.index_select(-1, w.quant.perm) : x_in;
  if (w.quant.quantized()) {
    if (w.whole.defined()) return QuantLinear(x, w.whole, w.quant, b);
  } else if (w.whole.defined()) {
    return Linear(x, w.whole, b);
  }
  const std::vector<int64_t> shape = w.weights->Shape(w.slot);
  if (shape.size() != 2) {
    return MakeError(ErrorCode::kInvalidArgument, "weight '" + w.weights->Name(w.slot) + "' is not a matrix");
  }
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = shape[0];
  at::Tensor out = at::empty(out_shape, x.options());
  // In a decode forward the host may compute the last rows: x goes to the host first, so the host can start as soon
  // as the GPU reaches this point, while the GPU's chunks are multiplied as their copies land.
  const int64_t host_begin = std::min(w.weights->HostRowBegin(w.slot), shape[0]);
  if (host_begin < shape[0]) BIGPLAN_RETURN_IF_ERROR(w.weights->HostBegin(x));
  BIGPLAN_RETURN_IF_ERROR(ForEachChunk(w, [&](const at::Tensor& chunk, int64_t row_begin) {
    if (row_begin >= host_begin) return;  // the host's rows (not copied in this forward)
    out.narrow(-1, row_begin, chunk.size(0))
        .copy_(w.quant.quantized() ? QuantLinear(x, chunk, w.quant, {}) : at::linear(x, chunk));
  }));
  if (host_begin < shape[0]) {
    BIGPLAN_ASSIGN_OR_RETURN(at::Tensor y, w.weights->HostProduct(w.slot));
    std::vector<int64_t> y_shape = out_shape;
    y_shape.back() = shape[0] - host_begin;
    out.narrow(-1, host_begin, shape[0] - host_begin).copy_(y.view(y_shape));
  }
  if (b.defined()) out.add_(b);
  return out;
}

Result<at::Tensor> Conv1DW(const WeightRef& w, const at::Tensor& x, const at::Tensor& b) {
  if (w.whole.defined()) return Conv1D(x, w.whole, b);
  const std::vector<int64_t> shape = w.weights->Shape(w.slot);
  if (shape.size() != 2) {
    return MakeError(ErrorCode::kInvalidArgument, "weight '" + w.weights->Name(w.slot) + "' is not a matrix");
  }
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = shape[1];
  // The partial products are summed in float32 and rounded once, as one whole product would be.
  at::Tensor x2 = x.reshape({-1, x.size(-1)}).to(at::kFloat);
  at::Tensor out = b.defined() ? b.to(at::kFloat).expand({x2.size(0), shape[1]}).contiguous()
                               : at::zeros({x2.size(0), shape[1]}, x.options().dtype(at::kFloat));
  BIGPLAN_RETURN_IF_ERROR(ForEachChunk(w, [&](const at::Tensor& chunk, int64_t row_begin) {
    out.addmm_(x2.narrow(1, row_begin, chunk.size(0)), chunk.to(at::kFloat));
  }));
  out = out.to(x.scalar_type());
  return out.view(out_shape);
}

Result<at::Tensor> EmbeddingW(const WeightRef& w, const at::Tensor& ids) {
  if (w.whole.defined()) return at::embedding(w.whole, ids);
  const std::vector<int64_t> shape = w.weights->Shape(w.slot);
  if (shape.size() != 2) {
    return MakeError(ErrorCode::kInvalidArgument, "weight '" + w.weights->Name(w.slot) + "' is not a matrix");
  }
  at::Tensor out;
  BIGPLAN_RETURN_IF_ERROR(ForEachChunk(w, [&](const at::Tensor& chunk, int64_t row_begin) {
    const int64_t rows = chunk.size(0);
    at::Tensor local = ids - row_begin;
    at::Tensor inside = at::logical_and(local >= 0, local < rows);
    at::Tensor part = at::embedding(chunk, local.clamp(0, rows - 1)) * inside.unsqueeze(-1).to(chunk.scalar_type());
    if (out.defined()) {
      out.add_(part);
    } else {
      out = part;
    }
  }));
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// The block-kind boundary

Status ModelKernelsBase::PositionEmbedding(const Call& c, at::Tensor* /*hidden*/) const {
  return MakeError(ErrorCode::kUnsupported,
                   c.block + ": architecture '" + spec_.architecture + "' has no position_embedding block");
}

Status ModelKernelsBase::ShardEmbedding(const Call& c, at::Tensor* hidden) const {
  const ForwardContext::Shards* tp = c.ctx.shards;
  BIGPLAN_ASSIGN_OR_RETURN(at::Tensor table, Get(c, arch::Slot::kTokenEmbedding));
  const int64_t rows = table.size(0);
  const at::Tensor local = c.ctx.token_ids - tp->vocab_begin;
  const at::Tensor inside = at::logical_and(local >= 0, local < rows);
  *hidden =
      (at::embedding(table, local.clamp(0, rows - 1)) * inside.unsqueeze(-1).to(table.scalar_type())).contiguous();
  return tp->all_reduce(*hidden);
}

Result<at::Tensor> ModelKernelsBase::ShardLmHead(const Call& c, const at::Tensor& h, const at::Tensor& bias) const {
  const ForwardContext::Shards* tp = c.ctx.shards;
  BIGPLAN_ASSIGN_OR_RETURN(WeightRef w, Ref(c, arch::Slot::kLmHead));
  at::Tensor part = spec_.fused_kernels && w.whole.defined() && !w.quant.quantized()
                        ? fused_ops::Linear(h, w.whole, bias, at::Tensor())
                        : at::Tensor();
  if (!part.defined()) {
    BIGPLAN_ASSIGN_OR_RETURN(part, LinearW(w, h, bias));  // (quantized, or chunked when streamed)
  }
  std::vector<int64_t> shape(part.sizes().begin(), part.sizes().end());
  shape.back() = tp->vocab;
  at::Tensor full = at::zeros(shape, part.options());
  full.narrow(-1, tp->vocab_begin, tp->vocab_end - tp->vocab_begin).copy_(part);
  BIGPLAN_RETURN_IF_ERROR(tp->all_reduce(full));
  return full;
}

Result<at::Tensor> ModelKernelsBase::Get(const Call& c, arch::Slot slot) const {
  at::Tensor t = c.weights.Find(slot);
  if (!t.defined()) {
    return MakeError(ErrorCode::kNotFound, c.block + ": no weight in slot " + arch::SlotName(slot));
  }
  return t;
}

Result<WeightRef> ModelKernelsBase::Ref(const Call& c, arch::Slot slot, bool required) const {
  WeightRef r = FindRef(c.weights, slot);
  if (required && !r.present()) {
    return MakeError(ErrorCode::kNotFound, c.block + ": no weight in slot " + arch::SlotName(slot));
  }
  return r;
}

Status ModelKernelsBase::RunBlock(arch::BlockKind kind, const std::string& block_name, int layer,
                                  const BlockWeights& weights, const ForwardContext& ctx, KvCache* kv,
                                  at::Tensor* hidden, at::Tensor* logits) const {
  const std::string block = "block '" + block_name + "' (" + arch::BlockKindName(kind) + ")";
  try {
    Call c{kind, layer, weights, ctx, block};
    if (hidden == nullptr) return MakeError(ErrorCode::kInvalidArgument, block + ": hidden is null");
    if (ctx.start_pos < 0) {
      return MakeError(ErrorCode::kInvalidArgument, block + ": negative start_pos " + std::to_string(ctx.start_pos));
    }
    if (kind == arch::BlockKind::kEmbedding) {
      const at::Tensor& ids = ctx.token_ids;
      if (!ids.defined() || ids.dim() != 2 || ids.size(0) == 0 || ids.size(1) == 0) {
        return MakeError(ErrorCode::kInvalidArgument, block + ": token_ids must be a non-empty [batch, seq] tensor");
      }
      if (ids.scalar_type() != at::kLong && ids.scalar_type() != at::kInt) {
        return MakeError(ErrorCode::kInvalidArgument, block + ": token_ids must be int64 or int32");
      }
      return Embedding(c, hidden);
    }

    const at::Tensor& h = *hidden;
    if (!h.defined() || h.dim() != 3 || h.size(2) != spec_.hidden_size || h.size(0) == 0 || h.size(1) == 0) {
      return MakeError(ErrorCode::kInvalidArgument,
                       block + ": hidden must be [batch, seq, " + std::to_string(spec_.hidden_size) + "], got " +
                           (h.defined() ? ShapeString(h) : std::string("undefined")));
    }
    if (kind == arch::BlockKind::kDecoderLayer) return DecoderLayer(c, kv, hidden);
    if (kind == arch::BlockKind::kFinalNorm) return FinalNorm(c, hidden);
    if (kind == arch::BlockKind::kPositionEmbedding) return PositionEmbedding(c, hidden);
    if (kind == arch::BlockKind::kLmHead) {
      if (logits == nullptr) return MakeError(ErrorCode::kInvalidArgument, block + ": logits is null");
      at::Tensor last = ctx.logits_last_only ? h.narrow(1, h.size(1) - 1, 1) : h;
      BIGPLAN_ASSIGN_OR_RETURN(at::Tensor out, LmHead(c, last));
      *logits = out.to(at::kFloat);
      return Status::Ok();
    }
    return MakeError(ErrorCode::kUnsupported, block + ": unknown block kind for architecture '" +
                                                  spec_.architecture + "'");
  } catch (const c10::Error& e) {
    return MakeError(ErrorCode::kDevice, block + ": " + e.what_without_backtrace());
  } catch (const std::exception& e) {
    return MakeError(ErrorCode::kInternal, block + ": " + e.what());
  } catch (...) {
    return MakeError(ErrorCode::kInternal, block + ": unknown exception");
  }
}

}  // namespace kernels_internal

arch::ModelConfig ShapeConfigOf(const ModelSpec& s) {
  arch::ModelConfig c;
  c.hidden_size = static_cast<uint32_t>(s.hidden_size);
  c.num_layers = static_cast<uint32_t>(s.num_layers);
  c.num_heads = static_cast<uint32_t>(s.num_heads);
  c.num_kv_heads = static_cast<uint32_t>(s.num_kv_heads);
  c.head_dim = static_cast<uint32_t>(s.head_dim);
  c.intermediate_size = static_cast<uint32_t>(s.intermediate_size);
  c.vocab_size = static_cast<uint32_t>(s.vocab_size);
  c.max_position_embeddings = static_cast<uint32_t>(s.max_position_embeddings);
  c.rotary_dim = static_cast<uint32_t>(s.rotary_dim);
  c.attention_bias = s.attention_bias;
  c.mlp_bias = s.mlp_bias;
  c.num_experts = static_cast<uint32_t>(s.num_experts);
  c.num_experts_per_tok = static_cast<uint32_t>(s.num_experts_per_tok);
  c.moe_intermediate_size = static_cast<uint32_t>(s.moe_intermediate_size);
  c.shared_expert_intermediate_size = static_cast<uint32_t>(s.shared_expert_intermediate_size);
  c.norm_topk_prob = s.norm_topk_prob;
  c.sparse_layers = s.sparse_layers;
  c.qk_norm = s.qk_norm;
  return c;
}

Result<std::unique_ptr<ModelKernels>> MakeModelKernels(const ModelSpec& spec_in) {
  ModelSpec spec = spec_in;
  auto invalid = [&](const std::string& what) {
    return MakeError(ErrorCode::kInvalidArgument, "model spec (" + spec.architecture + "): " + what);
  };
  // The registry's families (and their model_type aliases, e.g. "mistral" for llama).
  Result<const arch::FamilyInfo*> family = arch::LookupFamily(spec.architecture);
  if (!family.ok()) {
    return MakeError(ErrorCode::kUnsupported, "no kernels for architecture '" + spec.architecture + "' (" +
                                                  family.error().message + ")");
  }
  if (spec.hidden_size <= 0) return invalid("hidden_size must be positive");
  if (spec.num_heads <= 0) return invalid("num_heads must be positive");
  if (spec.vocab_size <= 0) return invalid("vocab_size must be positive");
  if (spec.num_kv_heads == 0) spec.num_kv_heads = spec.num_heads;
  if (spec.num_kv_heads < 0 || spec.num_heads % spec.num_kv_heads != 0) {
    return invalid("num_heads " + std::to_string(spec.num_heads) + " is not a multiple of num_kv_heads " +
                   std::to_string(spec.num_kv_heads));
  }
  if (spec.head_dim == 0) spec.head_dim = spec.hidden_size / spec.num_heads;
  if (spec.head_dim <= 0) return invalid("head_dim must be positive");
  if (spec.norm_eps < 0) return invalid("norm_eps must not be negative");
  // cuDNN's SDPA builds an execution plan for every new (q length, kv length): ~75 ms of host time per decode step
  // on an H100 with LibTorch 2.11, as the KV length grows by one each step. Flash (half precision) and the
  // memory-efficient kernels have no per-shape setup. This is process-wide LibTorch state.
  at::globalContext().setSDPUseCuDNN(false);
  if (spec.rotary_dim > 0 && spec.rotary_dim < spec.head_dim && !(*family)->partial_rotary) {
    return MakeError(ErrorCode::kUnsupported, "model spec: partial rotary (rotary_dim " +
                                                  std::to_string(spec.rotary_dim) + " of head_dim " +
                                                  std::to_string(spec.head_dim) + ") is not supported for " +
                                                  spec.architecture);
  }
  // The RoPE types the family computes (the planner's arch::ResolveRope refuses the others at plan time).
  const auto& types = (*family)->rope_types;
  if (types.empty() ? spec.rope.type != arch::RopeType::kDefault
                    : std::find(types.begin(), types.end(), spec.rope.type) == types.end()) {
    return MakeError(ErrorCode::kUnsupported, "model spec: rope type \"" +
                                                  std::string(arch::RopeTypeName(spec.rope.type)) +
                                                  "\" is not supported for " + spec.architecture);
  }
  switch ((*family)->family) {
    case arch::Family::kGpt2: return kernels_internal::MakeGpt2Kernels(spec);
    case arch::Family::kGptj: return kernels_internal::MakeGptjKernels(spec);
    case arch::Family::kLlama:
    case arch::Family::kPhi3:
    case arch::Family::kMixtral:
    case arch::Family::kQwen2Moe:
    case arch::Family::kQwen3Moe: return kernels_internal::MakeLlamaKernels(spec);
  }
  return MakeError(ErrorCode::kInternal, "no kernel factory for family " + std::string((*family)->name));
}

}  // namespace bigplan
