#!/usr/bin/env python3
"""Tiny random-weight Hugging Face models and transformers' own outputs for them: the correctness oracle of
bigplan's executor kernels.

For a family, writes into --out:
  config.json, model-0000X-of-0000N.safetensors (>= 2 shards), model.safetensors.index.json  (save_pretrained)
  reference.safetensors:
    input_ids   [batch, prompt_len] int64       the prompt (same length for every sequence)
    logits_0    [batch, prompt_len, vocab] f32  transformers' logits for the prefill (start_pos 0)
    tokens_K    [batch, 1] int64                the input of decode step K (K = 1..steps): greedy token of step K-1
    logits_K    [batch, 1, vocab] f32           logits of decode step K (start_pos = prompt_len + K - 1)
    generated   [batch, steps + 1] int64        greedy tokens after the prefill and after each decode step
  and in its __metadata__:
    family, architecture, steps, prompt_len, batch
    spec         JSON of bigplan's ModelSpec fields (executor/kernels.h), taken from the transformers config
    transformers, torch   versions

transformers runs in float32 with eager attention and a DynamicCache (use_cache=True), one forward per step.

Usage:
  make_tiny_models.py --out DIR --family FAMILY
  make_tiny_models.py --out-root DIR --families all|F1,F2,...      (writes DIR/FAMILY for each)
  make_tiny_models.py --list
Families: see FAMILIES below (llama, llama_gqa, llama_linear, llama_dynamic, mistral, mistral_sliding, qwen2,
qwen2_sliding, qwen2_yarn, phi3, phi3_longrope, gpt2, gpt2_scaled, gptj, and the mixture-of-experts mixtral, qwen2_moe,
qwen2_moe_sparse_step, qwen3_moe).

Mixture-of-experts families are saved in the Hub's per-expert layout (transformers 5 splits its fused 3-D expert
parameters back into one tensor per expert and projection on save_pretrained), and transformers runs them with the
eager experts implementation. Their reference run keeps every routed token's k-th and (k+1)-th router
probabilities at least ROUTER_MIN_GAP apart (else an executor's rounding could legitimately pick another expert),
drawing the prompt again until they are, and records the smallest gap in the metadata as min_router_gap (and the
prompt's seed as prompt_seed).
"""

import argparse
import json
import math
import os
import sys

BATCH = 2
PROMPT_LEN = 7
DECODE_STEPS = 3
SEED = 1234

# Each family: (model_type, config kwargs). Sizes are tiny; vocab/layers chosen so save_pretrained makes >= 2 shards
# with MAX_SHARD_SIZE.
MAX_SHARD_SIZE = "150KB"
# Smallest allowed gap between a token's k-th and (k+1)-th router probabilities in the reference run: bf16 rounding
# moves a tiny model's router probabilities by up to about 0.01 (transformers in bf16 against float32), and a
# tensor-parallel plan's partial sums round once more.
ROUTER_MIN_GAP = 1.5e-2
# Prompts drawn (seeds SEED + 2, + 3, ...) until one keeps every gap.
ROUTER_PROMPT_ATTEMPTS = 400

FAMILIES = {
    # Llama, MHA, default RoPE, no biases, untied.
    "llama": ("llama", dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
        vocab_size=256, max_position_embeddings=128, rms_norm_eps=1e-5, rope_theta=10000.0,
        tie_word_embeddings=False, hidden_act="silu")),
    # Llama 3.1 style: GQA (4 q heads, 2 kv heads), llama3 rope scaling with all three frequency bands present
    # (head_dim 16, theta 10000: wavelengths 6.3 .. 19869 vs original_max_position_embeddings 64 -> bands at 16 / 64),
    # attention_bias (q/k/v/o biases) and mlp_bias, 3 layers.
    "llama_gqa": ("llama", dict(
        hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=200, max_position_embeddings=256, rms_norm_eps=1e-6,
        rope_parameters=dict(rope_type="llama3", rope_theta=10000.0, factor=8.0, low_freq_factor=1.0,
                             high_freq_factor=4.0, original_max_position_embeddings=64),
        attention_bias=True, mlp_bias=True, tie_word_embeddings=False, hidden_act="silu")),
    # Linear RoPE scaling (factor 2), theta 500000.
    "llama_linear": ("llama", dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=160, max_position_embeddings=64, rms_norm_eps=1e-5,
        rope_parameters=dict(rope_type="linear", rope_theta=500000.0, factor=2.0),
        tie_word_embeddings=False, hidden_act="silu")),
    # Dynamic NTK RoPE with max_position_embeddings 8: the prefill (7 tokens) and the first decode step (8) use the
    # base frequencies, the later decode steps (9, 10 tokens) the NTK-scaled ones.
    "llama_dynamic": ("llama", dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=160, max_position_embeddings=8, rms_norm_eps=1e-5,
        rope_parameters=dict(rope_type="dynamic", rope_theta=10000.0, factor=3.0),
        tie_word_embeddings=False, hidden_act="silu")),
    # Mistral: GQA, explicit head_dim (32) != hidden_size / num_heads (16).
    "mistral": ("mistral", dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=32, vocab_size=160, max_position_embeddings=128, rms_norm_eps=1e-5, rope_theta=1000000.0,
        sliding_window=None, tie_word_embeddings=False, hidden_act="silu")),
    # Qwen2: q/k/v biases (no o_proj bias), GQA, tied embeddings.
    "qwen2": ("qwen2", dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=300, max_position_embeddings=128, rms_norm_eps=1e-6, rope_theta=1000000.0,
        tie_word_embeddings=True, use_sliding_window=False, hidden_act="silu")),
    # Qwen2.5 long-context style: YaRN scaling (factor 4, original 64: ramp over rotary dims 0..3, mscale 1.139).
    "qwen2_yarn": ("qwen2", dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=160, max_position_embeddings=256, rms_norm_eps=1e-6,
        rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=64),
        tie_word_embeddings=False, use_sliding_window=False, hidden_act="silu")),
    # Phi-3: fused qkv_proj ([q; k; v] rows) and gate_up_proj ([gate; up] rows), GQA, default RoPE, untied.
    "phi3": ("phi3", dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=160, max_position_embeddings=128, rms_norm_eps=1e-5, rope_theta=10000.0,
        tie_word_embeddings=False, hidden_act="silu", bos_token_id=1, eos_token_id=2, pad_token_id=0)),
    # Phi-3-128k / Phi-4-mini style: longrope with original_max_position_embeddings 8 (the prefill (7) and the first
    # decode step (8) use short_factor, the later steps (9, 10) long_factor; attention factor sqrt(1 + ln 4 / ln 8)),
    # partial rotary (8 of head_dim 16), tied embeddings.
    "phi3_longrope": ("phi3", dict(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=160, max_position_embeddings=32, original_max_position_embeddings=8, rms_norm_eps=1e-5,
        partial_rotary_factor=0.5,
        rope_parameters=dict(rope_type="longrope", rope_theta=10000.0, short_factor=[1.0, 1.25, 1.5, 2.0],
                             long_factor=[2.0, 3.0, 5.0, 8.0], original_max_position_embeddings=8),
        tie_word_embeddings=True, hidden_act="silu", bos_token_id=1, eos_token_id=2, pad_token_id=0)),
    # Mistral with a sliding window of 4 tokens: the 7-token prefill and every KV-cached decode step (positions 7..9)
    # reach past it, in every layer.
    "mistral_sliding": ("mistral", dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=160, max_position_embeddings=128, rms_norm_eps=1e-5, rope_theta=10000.0,
        sliding_window=4, tie_word_embeddings=False, hidden_act="silu")),
    # Qwen2 with use_sliding_window, a window of 3 and max_window_layers 1: layer 0 attends to everything, layers 1
    # and 2 to the last 3 positions only.
    "qwen2_sliding": ("qwen2", dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=160, max_position_embeddings=128, rms_norm_eps=1e-6, rope_theta=10000.0,
        tie_word_embeddings=False, use_sliding_window=True, sliding_window=3, max_window_layers=1,
        hidden_act="silu")),
    # GPT-2 with scale_attn_by_inverse_layer_idx (layer i's scores divided by i + 1) and reorder_and_upcast_attn
    # (float32 scores and softmax in transformers' eager attention), 3 layers.
    "gpt2_scaled": ("gpt2", dict(
        n_embd=64, n_layer=3, n_head=4, vocab_size=256, n_positions=64, activation_function="gelu_new",
        layer_norm_epsilon=1e-5, bos_token_id=255, eos_token_id=255, scale_attn_by_inverse_layer_idx=True,
        reorder_and_upcast_attn=True)),
    # GPT-2: learned positions, Conv1D weights, gelu_new, tied lm_head.
    "gpt2": ("gpt2", dict(
        n_embd=64, n_layer=2, n_head=4, vocab_size=256, n_positions=64, activation_function="gelu_new",
        layer_norm_epsilon=1e-5, bos_token_id=255, eos_token_id=255)),
    # GPT-J: partial interleaved rotary (8 of head_dim 16), parallel attention + MLP, lm_head with bias.
    "gptj": ("gptj", dict(
        n_embd=64, n_layer=2, n_head=4, rotary_dim=8, vocab_size=256, n_positions=64, activation_function="gelu_new",
        layer_norm_epsilon=1e-5, tie_word_embeddings=False, bos_token_id=255, eos_token_id=255)),
    # Mixtral: 4 experts, top-2 (softmax over all experts, top-k renormalized), GQA, no biases, 2 layers.
    # Hub layout: block_sparse_moe.gate.weight [E, hidden], block_sparse_moe.experts.E.w1/w3 [inter, hidden] (gate /
    # up), w2 [hidden, inter] (down).
    "mixtral": ("mixtral", dict(
        hidden_size=64, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        num_local_experts=4, num_experts_per_tok=2, vocab_size=160, max_position_embeddings=128, rms_norm_eps=1e-5,
        rope_theta=1000000.0, sliding_window=None, tie_word_embeddings=False, hidden_act="silu")),
    # Qwen1.5-MoE / Qwen2-MoE: 4 experts top-2 without renormalization (norm_topk_prob False), a shared expert of
    # another width (48 vs 32) scaled by sigmoid(shared_expert_gate), q/k/v biases; 3 layers, layer 1 listed in
    # mlp_only_layers, so it is a dense MLP of intermediate_size (96).
    "qwen2_moe": ("qwen2_moe", dict(
        hidden_size=64, intermediate_size=96, moe_intermediate_size=32, shared_expert_intermediate_size=48,
        num_experts=4, num_experts_per_tok=2, norm_topk_prob=False, decoder_sparse_step=1, mlp_only_layers=[1],
        num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, qkv_bias=True, vocab_size=160,
        max_position_embeddings=128, rms_norm_eps=1e-6, rope_theta=1000000.0, use_sliding_window=False,
        tie_word_embeddings=False, hidden_act="silu")),
    # Qwen2-MoE with decoder_sparse_step 2: layer i is sparse iff (i + 1) % 2 == 0, so layers 1 and 3 are MoE and 0
    # and 2 dense; norm_topk_prob True.
    "qwen2_moe_sparse_step": ("qwen2_moe", dict(
        hidden_size=64, intermediate_size=96, moe_intermediate_size=32, shared_expert_intermediate_size=48,
        num_experts=4, num_experts_per_tok=2, norm_topk_prob=True, decoder_sparse_step=2, mlp_only_layers=[],
        num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, qkv_bias=True, vocab_size=192,
        max_position_embeddings=128, rms_norm_eps=1e-6, rope_theta=1000000.0, use_sliding_window=False,
        tie_word_embeddings=False, hidden_act="silu")),
    # Qwen3-MoE (Qwen3-30B-A3B style): 8 experts top-2, norm_topk_prob True, no shared expert, RMSNorm over each q / k
    # head (q_norm, k_norm), no biases, explicit head_dim (32) != hidden_size / num_heads (16), untied.
    "qwen3_moe": ("qwen3_moe", dict(
        hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_experts=8, num_experts_per_tok=2,
        norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[], num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, attention_bias=False, vocab_size=160, max_position_embeddings=128,
        rms_norm_eps=1e-6, rope_theta=1000000.0, use_sliding_window=False, tie_word_embeddings=False,
        hidden_act="silu")),
}

ARCHITECTURE = {"llama": "llama", "mistral": "llama", "qwen2": "llama", "gpt2": "gpt2", "gptj": "gptj", "phi3": "phi3",
                "mixtral": "mixtral", "qwen2_moe": "qwen2_moe", "qwen3_moe": "qwen3_moe"}
MOE_TYPES = ("mixtral", "qwen2_moe", "qwen3_moe")


def moe_spec_of(model_type, cfg):
    """The mixture-of-experts ModelSpec fields, as transformers' modeling code builds the layers: Mixtral routes every
    layer; Qwen2-MoE / Qwen3-MoE layer i uses the sparse block iff i is not in mlp_only_layers and num_experts > 0 and
    (i + 1) % decoder_sparse_step == 0 (Qwen2MoeDecoderLayer / Qwen3MoeDecoderLayer.__init__), else a dense MLP of
    intermediate_size."""
    layers = cfg.num_hidden_layers
    if model_type == "mixtral":
        return dict(num_experts=cfg.num_local_experts, num_experts_per_tok=cfg.num_experts_per_tok,
                    moe_intermediate_size=cfg.intermediate_size, shared_expert_intermediate_size=0,
                    norm_topk_prob=True, sparse_layers=[True] * layers, qk_norm=False)
    sparse = [(i not in cfg.mlp_only_layers) and (cfg.num_experts > 0 and (i + 1) % cfg.decoder_sparse_step == 0)
              for i in range(layers)]
    return dict(num_experts=cfg.num_experts, num_experts_per_tok=cfg.num_experts_per_tok,
                moe_intermediate_size=cfg.moe_intermediate_size,
                shared_expert_intermediate_size=cfg.shared_expert_intermediate_size if model_type == "qwen2_moe" else 0,
                norm_topk_prob=bool(cfg.norm_topk_prob), sparse_layers=sparse, qk_norm=(model_type == "qwen3_moe"))


def spec_of(model_type, cfg):
    """bigplan's ModelSpec fields (executor/kernels.h) for a transformers config object."""
    if model_type in ("gpt2", "gptj"):
        hidden = cfg.n_embd
        heads = cfg.n_head
        head_dim = hidden // heads
        spec = dict(
            architecture=ARCHITECTURE[model_type], hidden_size=hidden, num_layers=cfg.n_layer, num_heads=heads,
            num_kv_heads=heads, head_dim=head_dim,
            intermediate_size=cfg.n_inner if cfg.n_inner is not None else 4 * hidden,
            vocab_size=cfg.vocab_size, max_position_embeddings=cfg.n_positions, norm_eps=cfg.layer_norm_epsilon,
            rope_theta=10000.0, rotary_dim=(cfg.rotary_dim or head_dim) if model_type == "gptj" else 0,
            attention_bias=(model_type == "gpt2"), mlp_bias=True, tie_word_embeddings=bool(cfg.tie_word_embeddings),
            activation=cfg.activation_function, rope_scaling_json="")
        if model_type == "gpt2":
            spec.update(scale_attn_weights=bool(cfg.scale_attn_weights),
                        scale_attn_by_inverse_layer_idx=bool(cfg.scale_attn_by_inverse_layer_idx),
                        reorder_and_upcast_attn=bool(cfg.reorder_and_upcast_attn))
        return spec
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    rope = dict(cfg.rope_parameters or {})
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    rotary_dim = int(head_dim * rope.get("partial_rotary_factor", 1.0))
    # Qwen2 and Qwen2-MoE: q/k/v biases (Qwen2-MoE: config.qkv_bias), never an o_proj bias. Qwen3-MoE:
    # attention_bias puts biases on q/k/v and o_proj. Mixtral: none.
    if model_type == "qwen2_moe":
        attention_bias = bool(cfg.qkv_bias)
    else:
        attention_bias = bool(getattr(cfg, "attention_bias", False)) or model_type == "qwen2"
    # Sliding-window layers as the modeling code decides them: MistralModel, MixtralModel and Qwen3MoeModel slide
    # every layer when config.sliding_window is set (Qwen3-MoE: None unless use_sliding_window); Qwen2 and Qwen2-MoE
    # slide the layers their config.layer_types marks (Qwen2: sliding_window None unless use_sliding_window;
    # Qwen2-MoE: 0 unless use_sliding_window, and its default layer_types marks the even layers below
    # max_window_layers).
    window = (getattr(cfg, "sliding_window", None)
              if model_type in ("mistral", "qwen2", "mixtral", "qwen2_moe", "qwen3_moe") else None)
    if not window:
        sliding_layers = []
    elif model_type in ("mistral", "mixtral", "qwen3_moe"):
        sliding_layers = [True] * cfg.num_hidden_layers
    else:
        sliding_layers = [t == "sliding_attention" for t in cfg.layer_types]
    if not any(sliding_layers):
        window, sliding_layers = None, []
    spec = dict(
        sliding_window=window or 0, sliding_window_layers=sliding_layers,
        architecture=ARCHITECTURE[model_type], hidden_size=cfg.hidden_size, num_layers=cfg.num_hidden_layers,
        num_heads=cfg.num_attention_heads, num_kv_heads=cfg.num_key_value_heads, head_dim=head_dim,
        intermediate_size=cfg.intermediate_size, vocab_size=cfg.vocab_size,
        max_position_embeddings=cfg.max_position_embeddings, norm_eps=cfg.rms_norm_eps,
        rope_theta=float(rope.get("rope_theta", 10000.0)), rotary_dim=rotary_dim, attention_bias=attention_bias,
        mlp_bias=bool(getattr(cfg, "mlp_bias", False)), tie_word_embeddings=bool(cfg.tie_word_embeddings),
        activation=cfg.hidden_act, rope_scaling_json=json.dumps(rope, sort_keys=True) if rope_type != "default" else "")
    if model_type in MOE_TYPES:
        spec.update(moe_spec_of(model_type, cfg))
    return spec


def randomize(model, torch):
    """O(1)-scale random weights (transformers' init is std 0.02, which makes near-uniform logits and fragile greedy
    choices): matrices ~ N(0, 1/fan_in), norm weights 1 + N(0, 0.1^2), biases N(0, 0.05^2)."""
    gen = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                # Linear: [out, in]; Conv1D (GPT-2): [in, out]; embeddings: [vocab, hidden] (fan = hidden); fused
                # experts (transformers 5): gate_up_proj [E, 2 * inter, hidden], down_proj [E, hidden, inter]; MoE
                # routers: [E, hidden] (O(1) logits, well-separated top-k choices).
                fan_in = p.shape[0] if ".c_" in name else p.shape[-1]
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
            else:  # norm weights
                p.copy_(1.0 + torch.randn(p.shape, generator=gen) * 0.1)


def watch_routers(model, torch):
    """Hooks every MoE router (transformers 5: mlp.gate, a *TopKRouter returning (router_logits, scores, indices));
    returns a list that each router call extends with the smallest gap, over its tokens, between the k-th and
    (k+1)-th largest softmax probabilities (the float32 softmax transformers routes with)."""
    gaps = []

    def hook(module, _inputs, output):
        probs = torch.softmax(output[0].float(), dim=-1)
        top = probs.topk(module.top_k + 1, dim=-1).values
        gaps.append(float((top[:, module.top_k - 1] - top[:, module.top_k]).min()))

    for name, module in model.named_modules():
        if type(module).__name__.endswith("TopKRouter"):
            module.register_forward_hook(hook)
    return gaps


def run_reference(model, config, gen, torch, DynamicCache):
    """The reference run: a random prompt of BATCH x PROMPT_LEN tokens from `gen`, then DECODE_STEPS greedy steps;
    the tensors saved (input ids, each step's logits and input tokens) and the generated tokens."""
    input_ids = torch.randint(0, config.vocab_size, (BATCH, PROMPT_LEN), generator=gen, dtype=torch.int64)
    tensors = {"input_ids": input_ids.clone()}
    generated = []
    with torch.no_grad():
        cache = DynamicCache(config=config)
        out = model(input_ids=input_ids, past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        tensors["logits_0"] = out.logits.float().contiguous()
        token = out.logits[:, -1, :].argmax(-1, keepdim=True)
        generated.append(token)
        for step in range(1, DECODE_STEPS + 1):
            tensors[f"tokens_{step}"] = token.clone()
            out = model(input_ids=token, past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            tensors[f"logits_{step}"] = out.logits.float().contiguous()
            token = out.logits[:, -1, :].argmax(-1, keepdim=True)
            generated.append(token)
    return tensors, generated


def make(family, out_dir):
    import torch
    import transformers
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache

    model_type, kwargs = FAMILIES[family]
    torch.manual_seed(SEED)
    config = AutoConfig.for_model(model_type, **kwargs)
    extra = dict(experts_implementation="eager") if model_type in MOE_TYPES else {}
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32, **extra)
    model.eval()
    randomize(model, torch)
    router_gaps = watch_routers(model, torch)
    if getattr(config, "tie_word_embeddings", False):
        emb = model.get_input_embeddings().weight
        assert model.get_output_embeddings().weight.data_ptr() == emb.data_ptr(), "lm_head is not tied"

    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir, max_shard_size=MAX_SHARD_SIZE)
    shards = [f for f in os.listdir(out_dir) if f.endswith(".safetensors") and f != "reference.safetensors"]
    assert len(shards) >= 2, f"{family}: expected >= 2 shards, got {shards}"

    # A mixture-of-experts family's prompt is drawn again (the next seed) until every routed token's k-th and
    # (k+1)-th router probabilities are ROUTER_MIN_GAP apart: a near-tie would let an executor's rounding pick
    # another expert and change the logits legitimately.
    # (None keeps it: the prompt with the widest smallest gap is kept, with a warning.)
    best = None
    for attempt in range(ROUTER_PROMPT_ATTEMPTS if model_type in MOE_TYPES else 1):
        router_gaps.clear()
        gen = torch.Generator().manual_seed(SEED + 2 + attempt)
        run = run_reference(model, config, gen, torch, DynamicCache)
        gap = min(router_gaps) if model_type in MOE_TYPES else 0.0
        if model_type in MOE_TYPES:
            assert router_gaps, f"{family}: no router ran"
        if best is None or gap > best[0]:
            best = (gap, attempt, run)
        if model_type not in MOE_TYPES or gap >= ROUTER_MIN_GAP:
            break
    min_gap, attempt, (tensors, generated) = best
    tensors["generated"] = torch.cat(generated, dim=1).contiguous()
    if model_type in MOE_TYPES:
        if min_gap < ROUTER_MIN_GAP:
            print(f"WARNING: {family}: a token's k-th and (k+1)-th router probabilities are only {min_gap:.2e} apart "
                  f"(< {ROUTER_MIN_GAP}) after {ROUTER_PROMPT_ATTEMPTS} prompts; an executor may route it differently",
                  file=sys.stderr)

    metadata = {
        "family": family,
        "model_type": model_type,
        "architecture": ARCHITECTURE[model_type],
        "steps": str(DECODE_STEPS),
        "prompt_len": str(PROMPT_LEN),
        "batch": str(BATCH),
        "spec": json.dumps(spec_of(model_type, config), sort_keys=True),
        "transformers": transformers.__version__,
        "torch": torch.__version__,
    }
    if model_type in MOE_TYPES:
        metadata["min_router_gap"] = repr(min_gap)
        metadata["prompt_seed"] = str(SEED + 2 + attempt)
    save_file(tensors, os.path.join(out_dir, "reference.safetensors"), metadata=metadata)


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="output directory for one --family")
    ap.add_argument("--family", choices=sorted(FAMILIES))
    ap.add_argument("--out-root", help="parent directory for --families (writes OUT_ROOT/FAMILY)")
    ap.add_argument("--families", help="'all' or a comma-separated list")
    ap.add_argument("--list", action="store_true", help="print the families and exit")
    args = ap.parse_args(argv)
    if args.list:
        print("\n".join(sorted(FAMILIES)))
        return 0
    jobs = []
    if args.family or args.out:
        if not (args.family and args.out):
            ap.error("--out and --family go together")
        jobs.append((args.family, args.out))
    if args.families or args.out_root:
        if not (args.families and args.out_root):
            ap.error("--out-root and --families go together")
        names = sorted(FAMILIES) if args.families == "all" else [f for f in args.families.split(",") if f]
        for f in names:
            if f not in FAMILIES:
                ap.error(f"unknown family {f!r} (known: {', '.join(sorted(FAMILIES))})")
            jobs.append((f, os.path.join(args.out_root, f)))
    if not jobs:
        ap.error("nothing to do: give --out/--family or --out-root/--families")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for family, out in jobs:
        make(family, out)
        print(f"{family}: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
