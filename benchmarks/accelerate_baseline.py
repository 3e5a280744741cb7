#!/usr/bin/env python3
"""Baseline for bigplan's end-to-end benchmark: Hugging Face Accelerate big-model inference on the same checkpoint
and budgets (and transformers eager when everything is resident).

For each GPU budget it builds an empty model, calls `load_checkpoint_and_dispatch(device_map="auto",
max_memory={0: budget, "cpu": cpu_budget}, no_split_module_classes=[...])`, and times one forward of 1 token and
one of `--prefill` tokens (no KV cache, as bigplan's forward benchmark), after a warm-up. With `--resident` it
also loads the whole model on the GPU and times a KV-cached decode step at `--prefill` context and a prefill.

Mixture-of-experts checkpoints (mixtral, qwen2_moe, qwen3_moe) are loaded with
`AutoModelForCausalLM.from_pretrained(checkpoint, device_map="auto", max_memory=...)` instead (`--loader auto`):
transformers 5 holds a layer's experts as fused 3-D parameters and converts the Hub's per-expert tensors only in
from_pretrained; load_checkpoint_and_dispatch would find no tensor for the fused parameters and fail on meta tensors.

`--decode-steps K` (K > 0) also times a KV-cached greedy decode per budget: a prefill of `--decode-prefill` tokens,
then K single-token steps; decode_token_s is the median step time (Accelerate moves every offloaded layer's weights
each step, so a few steps suffice). `--skip-forward` leaves out the uncached forward timings.

Without CUDA everything runs on the CPU (max_memory {"cpu": ...}); only for checking the code path on tiny models.

Writes JSON: {"device", "torch", "transformers", "accelerate", "configs": [{"gpu_budget_gib", "loader", "load_s",
"forward_1_s", "forward_prefill_s", "decode_token_s", "hf_device_map_summary"}], "resident": {...}}.
"""
import argparse
import json
import os
import time

T0 = time.time()

import torch  # noqa: E402
import transformers  # noqa: E402
import accelerate  # noqa: E402
from accelerate import init_empty_weights, load_checkpoint_and_dispatch  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402

NO_SPLIT = {"llama": ["LlamaDecoderLayer"], "mistral": ["MistralDecoderLayer"], "qwen2": ["Qwen2DecoderLayer"],
            "gpt2": ["GPT2Block"], "gptj": ["GPTJBlock"], "mixtral": ["MixtralDecoderLayer"],
            "qwen2_moe": ["Qwen2MoeDecoderLayer"], "qwen3_moe": ["Qwen3MoeDecoderLayer"]}
# Checkpoints in the Hub's per-expert layout, which only from_pretrained converts to transformers 5's fused experts.
MOE_TYPES = ("mixtral", "qwen2_moe", "qwen3_moe")
CUDA = torch.cuda.is_available()
DEVICE = 0 if CUDA else "cpu"


def sync():
    if CUDA:
        torch.cuda.synchronize()


def timed(fn, repeat):
    fn()  # warm-up
    sync()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return min(times), times


def decode_times(model, ids, steps):
    """A KV-cached greedy decode: prefill `ids`, then `steps` single-token steps; returns (prefill_s, [step_s])."""
    sync()
    t = time.perf_counter()
    out = model(ids.to(DEVICE), use_cache=True)
    sync()
    prefill_s = time.perf_counter() - t
    past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
    steps_s = []
    for _ in range(steps):
        t = time.perf_counter()
        out = model(nxt.to(DEVICE), past_key_values=past, use_cache=True)
        nxt = out.logits[:, -1:].argmax(-1)
        sync()
        steps_s.append(time.perf_counter() - t)
        past = out.past_key_values
    return prefill_s, steps_s


def load_offloaded(args, config, budget, no_split, loader, dtype):
    # budget: GiB on cuda:0, or a list of GiB for cuda:0, cuda:1, ... ("8+8" on the command line).
    gpus = budget if isinstance(budget, list) else [budget]
    max_memory = {**{i: f"{b}GiB" for i, b in enumerate(gpus)}, "cpu": f"{args.cpu_budget_gib}GiB"} if CUDA else \
        {"cpu": f"{args.cpu_budget_gib}GiB"}
    if loader == "from_pretrained":
        return AutoModelForCausalLM.from_pretrained(args.checkpoint, dtype=dtype, device_map="auto",
                                                    max_memory=max_memory)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.tie_weights()
    return load_checkpoint_and_dispatch(model, args.checkpoint, device_map="auto", max_memory=max_memory,
                                        no_split_module_classes=no_split, dtype=dtype)


def summarize(device_map):
    counts = {}
    for _, d in device_map.items():
        counts[str(d)] = counts.get(str(d), 0) + 1
    return counts


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="HF model directory (config.json + safetensors + index)")
    ap.add_argument("--gpu-budgets-gib", default="4",
                    help="comma-separated GPU max_memory values in GiB; '8+8' gives cuda:0 and cuda:1 8 GiB each")
    ap.add_argument("--cpu-budget-gib", type=float, default=100.0)
    ap.add_argument("--prefill", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--resident", action="store_true", help="also time transformers eager, all on the GPU")
    ap.add_argument("--loader", choices=["auto", "dispatch", "from_pretrained"], default="auto",
                    help="dispatch: init_empty_weights + load_checkpoint_and_dispatch; from_pretrained: "
                         "from_pretrained(device_map='auto'); auto: from_pretrained for MoE types, else dispatch")
    ap.add_argument("--decode-steps", type=int, default=0, help="also time this many KV-cached decode steps")
    ap.add_argument("--decode-prefill", type=int, default=16, help="prompt tokens before the timed decode steps")
    ap.add_argument("--skip-forward", action="store_true", help="leave out the uncached forward timings")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    config = AutoConfig.from_pretrained(args.checkpoint)
    dtype = torch.bfloat16
    no_split = NO_SPLIT[config.model_type]
    loader = args.loader
    if loader == "auto":
        loader = "from_pretrained" if config.model_type in MOE_TYPES else "dispatch"
    vocab = config.vocab_size
    g = torch.Generator().manual_seed(0)
    ids_1 = torch.randint(0, vocab, (1, 1), generator=g)
    ids_p = torch.randint(0, vocab, (1, args.prefill), generator=g)
    ids_d = torch.randint(0, vocab, (1, args.decode_prefill), generator=g)
    result = {"device": torch.cuda.get_device_name(0) if CUDA else "cpu", "torch": torch.__version__,
              "transformers": transformers.__version__, "accelerate": accelerate.__version__,
              "prefill_tokens": args.prefill, "configs": []}

    def parse_budget(x):
        parts = [float(v) for v in x.split("+")]
        return parts[0] if len(parts) == 1 else parts

    for budget in [parse_budget(x) for x in args.gpu_budgets_gib.split(",") if x]:
        t_load = time.time()
        model = load_offloaded(args, config, budget, no_split, loader, dtype)
        model.eval()
        entry = {"gpu_budget_gib": budget, "loader": loader}
        with torch.no_grad():
            t_first = time.time()
            model(ids_1.to(DEVICE), use_cache=False)
            sync()
            entry["first_forward_s"] = time.time() - t_first
            entry["load_s"] = t_first - t_load
            if "process_to_first_logits_s" not in result:
                result["process_to_first_logits_s"] = time.time() - T0
            if not args.skip_forward:
                entry["forward_1_s"], entry["forward_1_all"] = timed(
                    lambda: model(ids_1.to(DEVICE), use_cache=False), args.repeat)
                entry["forward_prefill_s"], entry["forward_prefill_all"] = timed(
                    lambda: model(ids_p.to(DEVICE), use_cache=False), args.repeat)
            if args.decode_steps > 0:
                prefill_s, steps_s = decode_times(model, ids_d, args.decode_steps)
                entry.update(decode_prefill_tokens=args.decode_prefill, decode_prefill_s=prefill_s,
                             decode_token_s=sorted(steps_s)[len(steps_s) // 2], decode_all=steps_s)
        entry["hf_device_map_summary"] = summarize(getattr(model, "hf_device_map", None) or {"": DEVICE})
        if CUDA:
            entry["max_memory_allocated_gib"] = torch.cuda.max_memory_allocated(0) / 2**30
        print(json.dumps(entry), flush=True)
        result["configs"].append(entry)
        del model
        if CUDA:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(0)

    if args.resident:
        t_load = time.time()
        model = AutoModelForCausalLM.from_pretrained(args.checkpoint, dtype=dtype, device_map={"": DEVICE},
                                                     attn_implementation="eager")
        model.eval()
        with torch.no_grad():
            load_s = time.time() - t_load
            fp, _ = timed(lambda: model(ids_p.to(DEVICE), use_cache=False), args.repeat)
            out = model(ids_p.to(DEVICE), use_cache=True)
            past = out.past_key_values
            # Decode steps at `prefill` context: each step appends one token to the same cache; the cache growth
            # over `repeat`+1 steps is negligible against the context.
            nxt = out.logits[:, -1:].argmax(-1)

            def step():
                nonlocal past, nxt
                o = model(nxt, past_key_values=past, use_cache=True)
                past = o.past_key_values
                nxt = o.logits[:, -1:].argmax(-1)
            dec, dec_all = timed(step, args.repeat * 3)
        result["resident"] = {"engine": "transformers eager", "load_s": load_s, "prefill_s": fp,
                              "decode_step_s": dec, "decode_all": dec_all}
        print(json.dumps(result["resident"]), flush=True)
        del model
    result["process_s"] = time.time() - T0
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
