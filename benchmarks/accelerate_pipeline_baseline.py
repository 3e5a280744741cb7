#!/usr/bin/env python3
"""Baseline for bigplan's micro-batch pipelining over several GPUs: transformers + Accelerate on the same
checkpoint, a batched prefill (`--batch` fresh rows of `--prefill` tokens, logits of the last position only, no
KV cache kept), timed

  - with the model split by Accelerate's `device_map="balanced"` over the listed GPUs (`--max-memory`), which runs
    the layers of one GPU after the other's (one GPU computes at a time), and
  - with the whole model on GPU 0 (`device_map={"": 0}`), the one-GPU throughput.

Writes JSON: {"device", "torch", "transformers", "accelerate", "batch", "prefill", "runs": [{"name", "device_map",
"layers_per_device", "load_s", "prefill_s", "prefill_all_s", "tokens_per_s"}]}.
"""
import argparse
import collections
import json
import time

import torch
import transformers
import accelerate
from transformers import AutoModelForCausalLM


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


def run(args, name, device_map, max_memory):
    t = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(args.checkpoint, dtype=torch.bfloat16, device_map=device_map,
                                                 max_memory=max_memory)
    model.eval()
    load_s = time.perf_counter() - t
    placed = collections.Counter(str(d) for d in getattr(model, "hf_device_map", {"": 0}).values())
    gen = torch.Generator().manual_seed(7)
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.prefill), generator=gen).to("cuda:0")

    def prefill():
        with torch.inference_mode():
            model(input_ids=ids, use_cache=False, logits_to_keep=1)

    best, all_s = timed(prefill, args.repeat)
    out = {"name": name, "device_map": device_map if isinstance(device_map, str) else "one GPU",
           "max_memory": {str(k): v for k, v in (max_memory or {}).items()}, "modules_per_device": dict(placed),
           "load_s": load_s, "prefill_s": best, "prefill_all_s": all_s,
           "tokens_per_s": args.batch * args.prefill / best}
    print(f"{name}: batch-{args.batch} prefill {best * 1e3:.1f} ms, {out['tokens_per_s']:.0f} tokens/s "
          f"(modules per device {dict(placed)})", flush=True)
    del model
    torch.cuda.empty_cache()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="HF model directory (config.json + safetensors)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prefill", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--max-memory", default="0=10GiB,1=10GiB", help="GPU budgets for the balanced map")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if torch.cuda.device_count() < 2:
        raise SystemExit("needs two CUDA devices")
    budgets = {}
    for item in args.max_memory.split(","):
        k, v = item.split("=")
        budgets[int(k)] = v
    runs = [run(args, "accelerate_balanced", "balanced", budgets), run(args, "transformers_one_gpu", {"": 0}, None)]
    result = {"device": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
              "torch": torch.__version__, "transformers": transformers.__version__,
              "accelerate": accelerate.__version__, "batch": args.batch, "prefill": args.prefill, "runs": runs}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
