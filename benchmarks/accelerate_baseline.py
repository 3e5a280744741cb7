#!/usr/bin/env python3
"""Baseline for bigplan's end-to-end benchmark: Hugging Face Accelerate big-model inference on the same checkpoint
and budgets (and transformers eager when everything is resident).

For each GPU budget it builds an empty model, calls `load_checkpoint_and_dispatch(device_map="auto",
max_memory={0: budget, "cpu": cpu_budget}, no_split_module_classes=[...])`, and times one forward of 1 token and
one of `--prefill` tokens (no KV cache, as bigplan's forward benchmark), after a warm-up. With `--resident` it
also loads the whole model on the GPU and times a KV-cached decode step at `--prefill` context and a prefill.

Writes JSON: {"device", "torch", "transformers", "accelerate", "configs": [{"gpu_budget_gib", "load_s",
"forward_1_s", "forward_prefill_s", "hf_device_map_summary"}], "resident": {...}}.
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
            "gpt2": ["GPT2Block"], "gptj": ["GPTJBlock"]}


def timed(fn, repeat):
    fn()  # warm-up
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return min(times), times


def summarize(device_map):
    counts = {}
    for _, d in device_map.items():
        counts[str(d)] = counts.get(str(d), 0) + 1
    return counts


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="HF model directory (config.json + safetensors + index)")
    ap.add_argument("--gpu-budgets-gib", default="4", help="comma-separated GPU max_memory values in GiB")
    ap.add_argument("--cpu-budget-gib", type=float, default=100.0)
    ap.add_argument("--prefill", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--resident", action="store_true", help="also time transformers eager, all on the GPU")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    config = AutoConfig.from_pretrained(args.checkpoint)
    dtype = torch.bfloat16
    no_split = NO_SPLIT[config.model_type]
    vocab = config.vocab_size
    g = torch.Generator().manual_seed(0)
    ids_1 = torch.randint(0, vocab, (1, 1), generator=g)
    ids_p = torch.randint(0, vocab, (1, args.prefill), generator=g)
    result = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
              "transformers": transformers.__version__, "accelerate": accelerate.__version__,
              "prefill_tokens": args.prefill, "configs": []}

    for budget in [float(x) for x in args.gpu_budgets_gib.split(",") if x]:
        t_load = time.time()
        with init_empty_weights():
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        model.tie_weights()
        model = load_checkpoint_and_dispatch(
            model, args.checkpoint, device_map="auto",
            max_memory={0: f"{budget}GiB", "cpu": f"{args.cpu_budget_gib}GiB"},
            no_split_module_classes=no_split, dtype=dtype)
        model.eval()
        with torch.no_grad():
            t_first = time.time()
            model(ids_1.to(0), use_cache=False)
            torch.cuda.synchronize()
            first_logits_s = time.time() - t_first
            load_s = t_first - t_load
            if "process_to_first_logits_s" not in result:
                result["process_to_first_logits_s"] = time.time() - T0
            f1, f1_all = timed(lambda: model(ids_1.to(0), use_cache=False), args.repeat)
            fp, fp_all = timed(lambda: model(ids_p.to(0), use_cache=False), args.repeat)
        entry = {"gpu_budget_gib": budget, "load_s": load_s, "first_forward_s": first_logits_s,
                 "forward_1_s": f1, "forward_1_all": f1_all, "forward_prefill_s": fp, "forward_prefill_all": fp_all,
                 "hf_device_map_summary": summarize(model.hf_device_map),
                 "max_memory_allocated_gib": torch.cuda.max_memory_allocated(0) / 2**30}
        print(json.dumps(entry), flush=True)
        result["configs"].append(entry)
        del model
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(0)

    if args.resident:
        t_load = time.time()
        model = AutoModelForCausalLM.from_pretrained(args.checkpoint, dtype=dtype, device_map={"": 0},
                                                     attn_implementation="eager")
        model.eval()
        with torch.no_grad():
            load_s = time.time() - t_load
            fp, _ = timed(lambda: model(ids_p.to(0), use_cache=False), args.repeat)
            out = model(ids_p.to(0), use_cache=True)
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
