#!/usr/bin/env python3
"""Plots mixture-of-experts decode runs of e2e_bench (one-GPU plans with routed experts): per run, the measured decode
step beside the planner's prediction and the floor of its path mix; and the median phases of a sparse layer from the
run's trace (benchmarks/gpu/moe_layer_phases.py): the host's path (router to job, job, pickup of its sum) against the
copies' (router to the copies' end, their tail), then the next attention half and router.

  plot_moe_phases.py --out moe_phases.png LABEL=BIGPLAN_JSON[:TRACE_JSON] ...
"""
import argparse
import json
import os
import statistics
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpu"))
from moe_layer_phases import phases  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("runs", nargs="+", help="LABEL=BIGPLAN_JSON[:TRACE_JSON]")
    args = ap.parse_args()
    labels, measured, predicted, floors, med = [], [], [], [], []
    for spec in args.runs:
        label, paths = spec.split("=", 1)
        bench, _, trace = paths.partition(":")
        b = json.load(open(bench))
        m = next(c["moe"] for c in b["configs"] if c.get("moe"))
        labels.append(label)
        measured.append(m["decode_step_s"] * 1e3)
        predicted.append(m["decode_step_s"] * 1e3 * (1 + m["prediction_error_decode"]))  # (predicted - measured) / measured
        floors.append(m["decode_floor_s"] * 1e3)
        rows = phases(trace) if trace else []
        med.append({k: statistics.median([r[k] for r in rows if k in r]) if any(k in r for r in rows) else 0
                    for k in ("start", "host", "sumlag", "copy_end", "tail", "post")})
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 4.8))
    x = range(len(labels))
    w = 0.27
    a1.bar([i - w for i in x], measured, w, label="measured")
    a1.bar(list(x), predicted, w, label="predicted")
    a1.bar([i + w for i in x], floors, w, label="floor of the path mix")
    a1.set_xticks(list(x), labels, rotation=20, ha="right", fontsize=8)
    a1.set_ylabel("decode step (ms)")
    a1.set_title("decode: measured, predicted, floor")
    a1.legend(fontsize=8)
    for i in x:
        a1.text(i, predicted[i], f"{predicted[i] / measured[i] - 1:+.0%}", ha="center", va="bottom", fontsize=7)
    bottom = [0.0] * len(labels)
    for key, name in (("start", "router to host job"), ("host", "host job"), ("sumlag", "job end to GPU resumes"),
                      ("post", "next attention half and router")):
        vals = [m[key] for m in med]
        a2.bar([i - 0.2 for i in x], vals, 0.38, bottom=bottom, label=name)
        bottom = [b + v for b, v in zip(bottom, vals)]
    copies = [m["copy_end"] for m in med]
    a2.bar([i + 0.2 for i in x], copies, 0.38, color="0.6", label="router to copies' end")
    a2.bar([i + 0.2 for i in x], [m["tail"] for m in med], 0.38, bottom=copies, color="0.8",
           label="copies' end to GPU resumes")
    a2.set_xticks(list(x), labels, rotation=20, ha="right", fontsize=8)
    a2.set_ylabel("median per sparse layer (us)")
    a2.set_title("a sparse layer's phases (left: host path, right: copies)")
    a2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)


if __name__ == "__main__":
    main()
