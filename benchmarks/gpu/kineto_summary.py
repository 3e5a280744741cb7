#!/usr/bin/env python3
"""Summarizes a Kineto Chrome trace of KV-cached decode steps (e2e_bench --kineto DIR).

Prints, from the device's own timestamps:
  - per stream: kernels, copies, busy time, and each decode step's span;
  - the kernels of the steps by name: count, total and mean time;
  - for mixture-of-experts steps, the "tail" of each sparse layer: from the moment the GPU sees the host's experts
    (the end of a WaitFlag kernel) to the end of the next router (RouterTopK), with the kernels between and the time
    the compute stream sat idle there; and the "head": from a router's end to the first expert copy the host issues;
  - with --dump, every device event of the middle step in order.

  kineto_summary.py TRACE.json [--dump] [--step N]
"""
import argparse
import collections
import json
import statistics
import sys


def load(path):
    with open(path) as f:
        data = json.load(f)
    events = data["traceEvents"] if isinstance(data, dict) else data
    dev = []
    runtime = []
    for e in events:
        if e.get("ph") != "X":
            continue
        cat = e.get("cat", "")
        if cat in ("kernel", "gpu_memcpy", "gpu_memset"):
            dev.append(e)
        elif cat == "cuda_runtime" or cat == "cuda_driver":
            runtime.append(e)
    dev.sort(key=lambda e: e["ts"])
    runtime.sort(key=lambda e: e["ts"])
    return dev, runtime


def short(name, n=70):
    name = name.replace("void ", "").replace("(anonymous namespace)::", "")
    if "<" in name:
        name = name[: name.index("<")] + "<...>"
    if "(" in name:
        name = name[: name.index("(")]
    return name[:n]


def stream_of(e):
    a = e.get("args", {})
    return a.get("stream", a.get("stream id", "?"))


def steps_of(dev):
    """Decode steps, split where the device sat idle for over 1 ms (the host reads the logits between steps)."""
    steps = []
    cur = []
    last_end = None
    for e in dev:
        if last_end is not None and e["ts"] - last_end > 1000 and cur:
            steps.append(cur)
            cur = []
        cur.append(e)
        end = e["ts"] + e.get("dur", 0)
        last_end = end if last_end is None else max(last_end, end)
    if cur:
        steps.append(cur)
    return steps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("trace")
    ap.add_argument("--dump", action="store_true")
    ap.add_argument("--step", type=int, default=-1, help="the step to dump (default: the middle one)")
    a = ap.parse_args()
    dev, runtime = load(a.trace)
    if not dev:
        print("no device events in", a.trace)
        return 1
    steps = steps_of(dev)
    print(f"{len(dev)} device events, {len(steps)} steps (split at >1 ms of device idle)")
    for i, s in enumerate(steps):
        t0 = s[0]["ts"]
        t1 = max(e["ts"] + e.get("dur", 0) for e in s)
        by_stream = collections.defaultdict(lambda: [0, 0, 0.0])
        for e in s:
            st = by_stream[stream_of(e)]
            if e["cat"] == "kernel":
                st[0] += 1
            else:
                st[1] += 1
            st[2] += e.get("dur", 0)
        desc = ", ".join(f"stream {k}: {v[0]} kernels, {v[1]} copies, busy {v[2] / 1e3:.2f} ms"
                         for k, v in sorted(by_stream.items(), key=lambda kv: -kv[1][2]))
        print(f"step {i}: {(t1 - t0) / 1e3:.3f} ms; {desc}")

    # Kernels by name over all steps.
    agg = collections.defaultdict(lambda: [0, 0.0])
    for e in dev:
        k = short(e["name"]) if e["cat"] == "kernel" else e["name"][:70]
        agg[k][0] += 1
        agg[k][1] += e.get("dur", 0)
    n = max(1, len(steps))
    print(f"\nby name, per step (of {n}):")
    print(f"{'count':>7} {'total us':>10} {'mean us':>8}  name")
    for k, (c, d) in sorted(agg.items(), key=lambda kv: -kv[1][1])[:40]:
        print(f"{c / n:7.1f} {d / n:10.1f} {d / c:8.2f}  {k}")

    # The host's launch call of each device event (same correlation id): a device event whose launch call ended
    # after the stream's previous event ended waited for the host.
    launch_end = {}
    for r in runtime:
        c = r.get("args", {}).get("correlation")
        if c is not None:
            launch_end[c] = r["ts"] + r.get("dur", 0)

    def launched(e):
        return launch_end.get(e.get("args", {}).get("correlation"))

    # MoE tails: WaitFlag end -> next RouterTopK end, on the stream of the WaitFlag.
    tails = []
    heads = []
    for s in steps:
        ks = [e for e in s if e["cat"] == "kernel"]
        copies = [e for e in s if e["cat"] == "gpu_memcpy" and "HtoD" in e["name"]]
        for i, e in enumerate(ks):
            if "WaitFlag" not in e["name"]:
                continue
            st = stream_of(e)
            start = e["ts"] + e.get("dur", 0)
            busy = 0.0
            host_wait = 0.0  # idle time on the stream spent waiting for a kernel's launch call
            prev_end = start
            names = []
            end = None
            for f in ks[i + 1:]:
                if stream_of(f) != st:
                    continue
                busy += f.get("dur", 0)
                names.append(short(f["name"], 30))
                le = launched(f)
                if le is not None and le > prev_end:
                    host_wait += min(f["ts"], le) - prev_end
                prev_end = f["ts"] + f.get("dur", 0)
                if "RouterTopK" in f["name"]:
                    end = f["ts"] + f.get("dur", 0)
                    break
            if end is None:
                continue
            tails.append((end - start, busy, names, host_wait))
        for e in ks:
            if "RouterTopK" not in e["name"]:
                continue
            end = e["ts"] + e.get("dur", 0)
            nxt = [c for c in copies if c["ts"] >= end]
            if nxt:
                heads.append(nxt[0]["ts"] - end)
    if tails:
        spans = [t[0] for t in tails]
        busy = [t[1] for t in tails]
        print(f"\nMoE tails (the host's experts seen by the GPU -> the next router done): {len(tails)}; span median "
              f"{statistics.median(spans):.1f} us (min {min(spans):.1f}, max {max(spans):.1f}); kernels busy median "
              f"{statistics.median(busy):.1f} us, {statistics.median([len(t[2]) for t in tails]):.0f} kernels")
        print(f"  of the idle time, waiting for the host's launch calls: median "
              f"{statistics.median([t[3] for t in tails]):.1f} us a tail")
        mid = tails[len(tails) // 2]
        print("  one tail:", " | ".join(mid[2]))
    if heads:
        print(f"MoE heads (a router done -> the next expert copy starts): {len(heads)}; median "
              f"{statistics.median(heads):.1f} us (min {min(heads):.1f}, max {max(heads):.1f})")

    if a.dump:
        s = steps[a.step if a.step >= 0 else len(steps) // 2]
        t0 = s[0]["ts"]
        print("\nstart us   dur us  stream  launch call ended (us)  name")
        for e in s:
            le = launched(e)
            lc = f"{le - t0:9.1f}" if le is not None else "        -"
            print(f"{e['ts'] - t0:9.1f} {e.get('dur', 0):8.1f}  {str(stream_of(e)):>6}  {lc:>22}  "
                  f"{short(e['name'], 90)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
