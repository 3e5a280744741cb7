#!/usr/bin/env python3
"""Per sparse layer of a mixture-of-experts trace (e2e_bench --trace-dir: NAME.trace.json) whose router gave the host
experts, how long after the router's choices reached the host the host's expert job started ("host lag") and how long
the job ran; summarized over the decode steps (one-token forwards).

  benchmarks/gpu/host_lag.py TRACE.json [...]
"""
import json
import statistics
import sys


def summarize(path):
    events = json.load(open(path))["traceEvents"]
    tracks = {e["tid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e["name"] == "thread_name"}
    routers, hosts = [], {}
    for e in events:
        if e.get("ph") != "X":
            continue
        track = tracks.get(e["tid"], "")
        if (track == "experts" and e["name"].startswith("router ") and e["args"].get("tokens") == "1" and
                e["args"].get("host", "0") != "0"):
            routers.append((e["ts"] + e["dur"], e["name"][len("router "):]))
        elif track == "host experts":
            hosts.setdefault(e["name"][len("host experts "):], []).append((e["ts"], e["dur"]))
    lags, runs = [], []
    for end, layer in routers:
        # The host job of this layer that started first after the router's choices arrived (this router gave the
        # host experts, so its job is the next one of the layer).
        later = [h for h in hosts.get(layer, []) if h[0] >= end - 1]
        if not later:
            continue
        start, dur = min(later)
        lags.append(start - end)
        runs.append(dur)
    if not lags:
        print(f"{path}: no one-token routers with host jobs")
        return
    lags.sort()
    q = lambda p: lags[min(len(lags) - 1, int(p * len(lags)))]
    late = [x for x in lags if x > 200]
    print(f"{path}: {len(lags)} layers; host lag us median {statistics.median(lags):.0f}, p90 {q(0.9):.0f}, "
          f"max {lags[-1]:.0f}; over 200 us: {len(late)} ({100 * len(late) / len(lags):.0f}%, {sum(late) / 1e3:.2f} ms "
          f"in all); host job us median {statistics.median(runs):.0f}")


if __name__ == "__main__":
    for p in sys.argv[1:]:
        summarize(p)
