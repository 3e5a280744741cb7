#!/usr/bin/env python3
"""Plots benchmarks/gpu/moe_check.sh results: decode ms per token by configuration against its floor (the path mix
the plan chose) and Accelerate's (annotated: off scale).

  plot_moe.py --out moe_decode.png MODEL=BIGPLAN_JSON:ACCELERATE_JSON [...]
"""
import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("runs", nargs="+", help="MODEL=bigplan.json:accelerate.json")
    args = ap.parse_args()
    fig, axes = plt.subplots(1, len(args.runs), figsize=(6 * len(args.runs), 4.2), squeeze=False)
    for ax, run in zip(axes[0], args.runs):
        model, files = run.split("=", 1)
        bp, acc = files.split(":")
        b = json.load(open(bp))
        a = json.load(open(acc))
        acc_ms = a["configs"][0]["decode_token_s"] * 1e3
        labels, measured, floors = [], [], []
        for c in b["configs"]:
            m = c.get("moe")
            if not m:
                continue
            labels.append(f"share {m['cpu_share']:.2f}" + (" (off)" if c["cpu_share_asked"] == "off" else ""))
            measured.append(m["decode_step_s"] * 1e3)
            floors.append(m["decode_floor_s"] * 1e3)
        x = range(len(labels))
        ax.bar([i - 0.2 for i in x], measured, 0.4, label="bigplan decode step")
        ax.bar([i + 0.2 for i in x], floors, 0.4, label="floor of its path mix")
        for i, v in enumerate(measured):
            ax.text(i - 0.2, v, f"{v:.1f}", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(list(x))
        ax.set_xticklabels(labels)
        ax.set_ylabel("ms per token")
        ax.set_title(f"{model}\n{b['device']}; Accelerate {acc_ms:.0f} ms/token", fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)


if __name__ == "__main__":
    main()
