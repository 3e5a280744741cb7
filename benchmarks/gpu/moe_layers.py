#!/usr/bin/env python3
"""Where a mixture-of-experts decode layer's time goes, from e2e_bench's Chrome trace (--trace-dir: NAME.trace.json).

For each sparse layer whose router gave the host experts (from its router on the GPU to the next layer's), prints
the median and mean over the trace of:
  layer span                 router (GPU) to the next router (GPU)
  router->host start         the router's choices on the GPU to the host's expert job starting
  host job                   the host's experts
  host end->GPU has sum      the job's end to the GPU holding the host's sum ("expert waits (GPU)")
  GPU has sum->next router   the combine, the next attention and router on the GPU
  router->copies start       the router to the layer's first expert copy on the copy stream
  copies end (rel router)    the router to the layer's last expert copy's end
  copies end->GPU has sum    the copies' end to the GPU holding the host's sum
Layers longer than 5 ms (prefill layers) are left out.

  benchmarks/gpu/moe_layers.py TRACE.json [...]
"""
import collections
import json
import statistics
import sys


def summarize(path):
    events = json.load(open(path))["traceEvents"]
    tracks = {e["tid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e["name"] == "thread_name"}
    ev = sorted(((tracks.get(e.get("tid")), e["name"], e["ts"], e.get("dur", 0)) for e in events if e.get("ph") == "X"),
                key=lambda x: x[2])
    routers = [e for e in ev if e[0] == "router (GPU)"]
    hosts = collections.defaultdict(list)
    waits = collections.defaultdict(list)
    copies = collections.defaultdict(list)
    for e in ev:
        if e[0] == "host experts":
            hosts[e[1][len("host experts "):]].append(e)
        elif e[0] == "expert waits (GPU)":
            waits[e[1][len("host experts in "):]].append(e)
        elif e[0] == "expert copies (GPU)" and e[1].startswith("copies "):
            copies[e[1][len("copies "):]].append(e)
    stats = collections.defaultdict(list)
    for r, nxt in zip(routers, routers[1:]):
        layer = r[1][len("router "):]
        span = nxt[2] - r[2]
        within = lambda es: [e for e in es if r[2] - 1 <= e[2] <= nxt[2]]
        h, w, c = within(hosts[layer]), within(waits[layer]), within(copies[layer])
        if not h or not w or span > 5000:
            continue
        h, w = h[0], w[0]
        stats["layer span"].append(span)
        stats["router->host start"].append(h[2] - r[2])
        stats["host job"].append(h[3])
        stats["host end->GPU has sum"].append(w[2] - (h[2] + h[3]))
        stats["GPU has sum->next router"].append(nxt[2] - w[2])
        if c:
            end = c[-1][2] + c[-1][3]
            stats["router->copies start"].append(c[0][2] - r[2])
            stats["copies end (rel router)"].append(end - r[2])
            stats["copies end->GPU has sum"].append(w[2] - end)
    print(f"{path}: {len(stats['layer span'])} layers (us)")
    for k, v in stats.items():
        print(f"  {k:26s} median {statistics.median(v):7.1f}  mean {statistics.mean(v):7.1f}")


if __name__ == "__main__":
    for p in sys.argv[1:]:
        summarize(p)
