#!/usr/bin/env python3
"""Load generator for `serve` (standard library only, so it runs on the GPU machine's plain Python).

    serve_bench_client.py --port N --streams S --requests-per-stream R --max-tokens T --prompt-words W --out F.json

S threads each send R streamed /v1/completions requests one after another ("ignore_eos": true, so every request
generates exactly T tokens; greedy). Measures per request the time to first token (first SSE chunk with text or
the first token event) and the generated tokens (usage.completion_tokens); reports aggregate tokens/s over the
wall time, per-stream tokens/s, and TTFT mean/p50/p90/max.
"""
import argparse
import http.client
import json
import statistics
import threading
import time


def one_request(port, prompt, max_tokens):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3600)
    body = json.dumps({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
                       "ignore_eos": True})
    t0 = time.time()
    conn.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:200]!r}")
    ttft = None
    tokens = 0
    while True:
        line = resp.fp.readline()
        if not line:
            break
        line = line.strip()
        if not line.startswith(b"data: "):
            continue
        data = line[6:]
        if data == b"[DONE]":
            break
        ev = json.loads(data)
        if ttft is None:
            ttft = time.time() - t0
        if "usage" in ev:
            tokens = ev["usage"]["completion_tokens"]
    conn.close()
    return {"ttft_s": ttft, "tokens": tokens, "seconds": time.time() - t0}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--streams", type=int, default=1)
    ap.add_argument("--requests-per-stream", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--prompt-words", type=int, default=32)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    words = "the quick brown fox jumps over the lazy dog".split()
    results, errors = [], []
    lock = threading.Lock()

    def stream(k):
        prompt = " ".join(words[(k + i) % len(words)] for i in range(args.prompt_words))
        for _ in range(args.requests_per_stream):
            try:
                r = one_request(args.port, prompt, args.max_tokens)
                r["stream"] = k
                with lock:
                    results.append(r)
            except Exception as e:  # noqa: BLE001
                with lock:
                    errors.append(repr(e))

    t0 = time.time()
    threads = [threading.Thread(target=stream, args=(k,)) for k in range(args.streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.time() - t0
    tokens = sum(r["tokens"] for r in results)
    ttfts = sorted(r["ttft_s"] for r in results if r["ttft_s"] is not None)
    per_stream = [sum(r["tokens"] for r in results if r["stream"] == k) /
                  max(1e-9, sum(r["seconds"] for r in results if r["stream"] == k)) for k in range(args.streams)]
    out = {
        "streams": args.streams, "requests": len(results), "errors": errors, "max_tokens": args.max_tokens,
        "wall_s": wall, "generated_tokens": tokens, "aggregate_tokens_per_s": tokens / wall if wall > 0 else 0,
        "per_stream_tokens_per_s_mean": statistics.mean(per_stream) if per_stream else 0,
        "ttft_s": {"mean": statistics.mean(ttfts) if ttfts else None,
                   "p50": ttfts[len(ttfts) // 2] if ttfts else None,
                   "p90": ttfts[int(len(ttfts) * 0.9)] if ttfts else None,
                   "max": ttfts[-1] if ttfts else None},
    }
    json.dump(out, open(args.out, "w"), indent=2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
