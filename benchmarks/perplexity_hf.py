#!/usr/bin/env python3
"""Perplexity of a Hugging Face checkpoint over a text file with transformers: the oracle for //tools:perplexity.

The protocol is the tool's (text/perplexity.h):
  - the text is encoded with AutoTokenizer as tokenizer(text, add_special_tokens=True): only the special tokens the
    tokenizer's post-processor adds (none for SmolLM2, BOS for Llama-2), as bigplan's Tokenizer::Encode(text, true);
  - truncated to --max-tokens, cut into consecutive, non-overlapping windows of --window tokens (a last, partial
    window of at least 2 tokens is kept), each run as one fresh sequence (no cache, positions from 0);
  - tokens 1..len-1 of each window are scored by log_softmax (in float64) of the float logits before them;
    perplexity = exp(total NLL / tokens scored); argmax ties go to the lowest id.

    python3 benchmarks/perplexity_hf.py --model ~/.cache/bigplan/models/smollm2-135m-instruct \\
        --text /usr/share/common-licenses/GPL-3 --window 1024 --dtype float32

--argmax-out writes the argmax ids in the tool's argmax file format, so the tool's --reference-argmax can compare
a plan's greedy predictions with transformers'. Run it with the venv's Python (~/.cache/bigplan/venv/bin/python3).
"""

import argparse
import hashlib
import json
import math
import os
import struct
import sys
import time

DEFAULT_TEXT = "/usr/share/common-licenses/GPL-3"


def split_windows(num_tokens, window):
    out = []
    for begin in range(0, num_tokens, window):
        length = min(window, num_tokens - begin)
        if length >= 2:
            out.append((begin, length))
    return out


def tokens_sha256(ids):
    return hashlib.sha256(struct.pack("<%dq" % len(ids), *ids)).hexdigest()


def write_argmax(path, tokens, window, sha, source, ids):
    with open(path, "w") as f:
        f.write("bigplan-argmax 1\n")
        f.write(f"tokens {tokens}\nwindow {window}\ntokens_sha256 {sha}\npositions {len(ids)}\n")
        f.write("source " + source.replace("\n", " ") + "\nids\n")
        for i in range(0, len(ids), 32):
            f.write(" ".join(str(x) for x in ids[i:i + 32]) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="Hugging Face checkpoint directory")
    ap.add_argument("--text", default=DEFAULT_TEXT, help="UTF-8 text file (default: %(default)s)")
    ap.add_argument("--window", type=int, default=1024, help="tokens per window (default: %(default)s)")
    ap.add_argument("--max-tokens", type=int, help="score only the first N tokens")
    ap.add_argument("--dtype", choices=["bfloat16", "float32"], default="float32")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--threads", type=int, help="torch CPU threads")
    ap.add_argument("--argmax-out", help="write the argmax ids (the tool's argmax file format)")
    ap.add_argument("--json", help="also write the numbers as JSON")
    ap.add_argument("--quiet", action="store_true", help="no per-window progress on stderr")
    args = ap.parse_args()
    if args.window < 2:
        sys.exit(f"perplexity_hf: --window {args.window}: a window needs at least 2 tokens (one to score)")
    if args.max_tokens is not None and args.max_tokens < 2:
        sys.exit(f"perplexity_hf: --max-tokens {args.max_tokens}: at least 2")
    try:
        with open(args.text, "rb") as f:
            raw = f.read()
    except OSError as e:
        sys.exit(f"perplexity_hf: {args.text}: cannot read the text file: {e.strerror}")
    if not raw:
        sys.exit(f"perplexity_hf: {args.text}: the text file is empty")
    text = raw.decode("utf-8")

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(args.model)
    ids = tok(text, add_special_tokens=True)["input_ids"]
    if args.max_tokens is not None:
        ids = ids[:args.max_tokens]
    if len(ids) < 2:
        sys.exit(f"perplexity_hf: {args.text}: the text encodes to {len(ids)} token(s); at least 2 are needed")
    windows = split_windows(len(ids), args.window)
    dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[args.dtype]
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).to(args.device).eval()
    print(f"model: {args.model} ({args.dtype}, {args.device})")
    print(f"text: {args.text}: {len(ids)} tokens, {len(windows)} windows of up to {args.window}", flush=True)

    total_nll = 0.0
    scored = 0
    argmax = []
    start = time.perf_counter()
    with torch.inference_mode():
        for w, (begin, length) in enumerate(windows):
            t0 = time.perf_counter()
            window_ids = torch.tensor([ids[begin:begin + length]], device=args.device)
            logits = model(window_ids, use_cache=False).logits[0, :-1].float()
            targets = window_ids[0, 1:]
            logp = torch.log_softmax(logits.double(), dim=-1)
            total_nll += float(-logp.gather(1, targets[:, None]).sum())
            scored += length - 1
            argmax.extend(int(x) for x in logits.argmax(dim=-1).tolist())  # first maximum: the lowest id
            if not args.quiet:
                print(f"window {w + 1}/{len(windows)}: {length} tokens in {time.perf_counter() - t0:.2f} s; "
                      f"running perplexity {math.exp(total_nll / scored):.4f}", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - start
    nll = total_nll / scored
    ppl = math.exp(nll)

    print(f"tokens scored: {scored} ({len(windows)} windows)")
    print(f"mean nll: {nll:.6f}")
    print(f"perplexity: {ppl:.4f}")
    print(f"time: {seconds:.3f} s ({scored / seconds:.1f} tokens/s)")
    if args.argmax_out:
        write_argmax(args.argmax_out, len(ids), args.window, tokens_sha256(ids),
                     f"transformers {os.path.abspath(args.model)} {args.dtype} {args.device}", argmax)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "dtype": args.dtype, "device": args.device, "text": args.text,
                       "window": args.window, "max_tokens": args.max_tokens, "text_tokens": len(ids),
                       "tokens": scored, "windows": len(windows), "nll": nll, "ppl": ppl, "seconds": seconds},
                      f, indent=2, sort_keys=True)
            f.write("\n")


if __name__ == "__main__":
    main()
