#!/usr/bin/env python3
"""Phases of a mixture-of-experts decode layer, from an e2e_bench trace (--trace-dir: NAME.trace.json), over every
sparse layer whose router gave the host experts (decode forwards; a prefill has no host job) and whose next layer
routes in the same forward:

  start    the router's choices on the GPU (its CUDA event) to the host's expert job's start
  host     the host's job
  sumlag   the job's end to the GPU's resumption after it ("expert waits (GPU)": it has the host's sum)
  copy_end the router to the end of the layer's expert copies (where it copied any)
  tail     the copies' end to the GPU's resumption
  post     the GPU's resumption to the next layer's router on the GPU
  period   router to next router

These are the terms of the planner's sparse-layer prediction (planner/cost_model.h, kRouteSyncMicros).

  benchmarks/gpu/moe_layer_phases.py TRACE.json [...]
"""
import json
import statistics
import sys


def layer_of(name):
    return name.split("model.layers.")[-1].split()[0]


def phases(path):
    events = json.load(open(path))["traceEvents"]
    tracks = {e["tid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "thread_name"}
    by = {}
    for e in events:
        if e.get("ph") == "X":
            by.setdefault(tracks.get(e["tid"]), []).append(e)
    routers = sorted(by.get("router (GPU)", []), key=lambda e: e["ts"])
    hosts = sorted(by.get("host experts", []), key=lambda e: e["ts"])
    copies = sorted((e for e in by.get("expert copies (GPU)", []) if e["name"].startswith("copies ")),
                    key=lambda e: e["ts"])
    waits = sorted(by.get("expert waits (GPU)", []), key=lambda e: e["ts"])
    rows = []
    for i, r in enumerate(routers[:-1]):
        layer, at, after = layer_of(r["name"]), r["ts"], routers[i + 1]["ts"]
        if not layer.isdigit() or layer_of(routers[i + 1]["name"]) != str(int(layer) + 1):
            continue  # the last sparse layer of a forward: its next router is the next forward's
        within = lambda e: layer_of(e["name"]) == layer and at - 5 <= e["ts"] < after
        h = next((e for e in hosts if within(e)), None)
        w = next((e for e in waits if within(e)), None)
        if h is None or w is None:
            continue
        c = next((e for e in copies if within(e)), None)
        row = {"start": h["ts"] - at, "host": h["dur"], "sumlag": w["ts"] - (h["ts"] + h["dur"]),
               "post": after - w["ts"], "period": after - at}
        if c is not None:
            row["copy_end"] = c["ts"] + c["dur"] - at
            row["tail"] = w["ts"] - (c["ts"] + c["dur"])
        rows.append(row)
    return rows


def main():
    for path in sys.argv[1:]:
        rows = phases(path)
        print(f"{path}: {len(rows)} sparse layers with host experts (us: median, mean, p10, p90)")
        for k in ("start", "host", "sumlag", "copy_end", "tail", "post", "period"):
            v = sorted(r[k] for r in rows if k in r)
            if v:
                print(f"  {k:9s} {statistics.median(v):8.1f} {statistics.mean(v):8.1f} {v[len(v) // 10]:8.1f} "
                      f"{v[9 * len(v) // 10]:8.1f}")


if __name__ == "__main__":
    main()
