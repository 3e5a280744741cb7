#!/usr/bin/env python3
"""Summarizes the host side of a Kineto Chrome trace (e2e_bench --kineto DIR): where the issuing thread's time went.

For each host thread with at least 50 events, prints its span, the time inside top-level ATen ops and CUDA runtime
calls and the time outside both (the executor's own C++ between ops), then the top-level ops by total time (count,
total ms, mean us; runtime calls marked [rt]) and every CUDA runtime call by total time. Pairs with
kineto_summary.py, which reads the device's side of the same trace.

  kineto_host_ops.py TRACE.json
"""
import collections, json, sys

path = sys.argv[1]
data = json.load(open(path))
ev = data["traceEvents"] if isinstance(data, dict) else data
by_tid = collections.defaultdict(list)
for e in ev:
    if e.get("ph") != "X": continue
    cat = e.get("cat", "")
    if cat in ("cpu_op", "cuda_runtime", "cuda_driver", "user_annotation"):
        by_tid[e.get("tid")].append(e)
for tid, es in by_tid.items():
    es.sort(key=lambda e: (e["ts"], -e.get("dur", 0)))
    if len(es) < 50: continue
    t0 = es[0]["ts"]; t1 = max(e["ts"] + e.get("dur", 0) for e in es)
    top = collections.defaultdict(lambda: [0, 0.0])
    rt = collections.defaultdict(lambda: [0, 0.0])
    covered = 0.0; end = -1e18
    for e in es:
        cat = e["cat"]; d = e.get("dur", 0)
        if cat == "user_annotation": continue
        if cat in ("cuda_runtime", "cuda_driver"):
            rt[e["name"]][0] += 1; rt[e["name"]][1] += d
        if e["ts"] >= end:  # top level
            if cat == "cpu_op":
                top[e["name"]][0] += 1; top[e["name"]][1] += d
            else:
                top["[rt] " + e["name"]][0] += 1; top["[rt] " + e["name"]][1] += d
            covered += d; end = e["ts"] + d
        elif e["ts"] + d > end:
            covered += e["ts"] + d - end; end = e["ts"] + d
    span = t1 - t0
    print(f"== tid {tid}: span {span/1000:.2f} ms, in top-level ops/runtime {covered/1000:.2f} ms, outside {(span-covered)/1000:.2f} ms, {len(es)} events")
    print("  top-level (count, total ms, mean us):")
    for n, (c, d) in sorted(top.items(), key=lambda kv: -kv[1][1])[:30]:
        print(f"    {c:7d} {d/1000:9.3f} {d/max(c,1):8.2f}  {n[:90]}")
    print("  runtime calls anywhere:")
    for n, (c, d) in sorted(rt.items(), key=lambda kv: -kv[1][1])[:12]:
        print(f"    {c:7d} {d/1000:9.3f} {d/max(c,1):8.2f}  {n[:90]}")
