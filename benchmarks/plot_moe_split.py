#!/usr/bin/env python3
"""Plots an e2e_bench share sweep of a mixture-of-experts model run with --expert-split 64,0: decode ms per token by
host share, experts split at the share against whole experts, beside the floor of each plan's path mix and the floor
of the bytes each run actually moved.

  plot_moe_split.py --out moe_split.png --title TITLE BIGPLAN_JSON
"""
import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--title", default="")
    ap.add_argument("bench")
    args = ap.parse_args()
    b = json.load(open(args.bench))
    series = {}  # split option -> [(share, decode ms, floor ms, floor moved ms, auto?)]
    for c in b["configs"]:
        m, mv = c.get("moe"), c.get("moe_moved")
        if not m or not mv:
            continue
        auto = c["name"].split("_host_")[1].startswith("auto")
        series.setdefault(mv["split_option"], []).append(
            (m["cpu_share"], m["decode_step_s"] * 1e3, m["decode_floor_s"] * 1e3, mv["floor_s"] * 1e3, auto))
    fig, ax = plt.subplots(figsize=(7, 4.4))
    styles = {64: ("experts split at the share", "tab:blue"), 0: ("whole experts", "tab:orange")}
    floors = {}
    for split, pts in sorted(series.items(), reverse=True):
        label, color = styles.get(split, (f"split rows {split}", "tab:gray"))
        fixed = sorted(p for p in pts if not p[4])
        ax.plot([p[0] for p in fixed], [p[1] for p in fixed], "o-", color=color, label=label)
        ax.plot([p[0] for p in fixed], [p[3] for p in fixed], "x:", color=color, alpha=0.7,
                label=f"floor of the bytes moved ({label})")
        for p in pts:
            floors[p[0]] = p[2]
            if p[4]:
                ax.plot([p[0]], [p[1]], "*", color=color, markersize=14)
    xs = sorted(floors)
    ax.plot(xs, [floors[x] for x in xs], "k--", label="floor of the plan's path mix")
    ax.set_xlabel("host share of the non-resident experts' bytes (star: the planner's choice)")
    ax.set_ylabel("decode ms per token")
    ax.set_title(args.title or b.get("device", ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)


if __name__ == "__main__":
    main()
