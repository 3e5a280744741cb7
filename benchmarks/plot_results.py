#!/usr/bin/env python3
"""Draws the GPU-budget sweep: time per forward vs GPU budget for bigplan, Accelerate and the PCIe floor.

  plot_results.py --bigplan bigplan.json --accelerate accelerate.json --out sweep.png

bigplan.json is written by //benchmarks/gpu:e2e_bench, accelerate.json by benchmarks/accelerate_baseline.py.
Also prints the table (markdown) that benchmarks/RESULTS.md carries.
"""
import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bigplan", required=True)
    ap.add_argument("--accelerate", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    ours = json.load(open(args.bigplan))
    acc = json.load(open(args.accelerate))
    acc_by_budget = {c["gpu_budget_gib"]: c for c in acc["configs"]}
    rows = []
    for c in ours["configs"]:
        if c.get("tier") not in (None, "cpu"):
            continue
        b = c["gpu_budget_gib"]
        a = acc_by_budget.get(b, {})
        rows.append((b, c["forward_1_s"], c["forward_prefill_s"], c["floor_s"], a.get("forward_1_s"),
                     a.get("forward_prefill_s"), c.get("predicted_1_s")))
    rows.sort()
    print("| GPU budget (GiB) | bigplan 1 tok (s) | bigplan prefill (s) | floor (s) | Accelerate 1 tok (s) |"
          " Accelerate prefill (s) | speed-up (1 tok) | bigplan / floor (1 tok) | predicted 1 tok (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for b, o1, op, fl, a1, ap_, pr in rows:
        sp = f"{a1 / o1:.1f}x" if a1 else "n/a"
        ratio = f"{o1 / fl:.3f}" if fl > 0 else "resident"
        a1s = f"{a1:.3f}" if a1 else "n/a"
        aps = f"{ap_:.3f}" if ap_ else "n/a"
        prs = f"{pr:.3f}" if pr else "n/a"
        print(f"| {b:g} | {o1:.4f} | {op:.4f} | {fl:.4f} | {a1s} | {aps} | {sp} | {ratio} | {prs} |")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = [r[0] for r in rows]
    ax.plot(xs, [r[1] for r in rows], "o-", label="bigplan, 1 token")
    ax.plot(xs, [r[2] for r in rows], "s-", label=f"bigplan, {ours.get('prefill_tokens', 512)}-token prefill")
    streamed = [r for r in rows if r[3] > 0]  # all-resident budgets stream nothing: no PCIe floor
    ax.plot([r[0] for r in streamed], [r[3] for r in streamed], "k--", label="floor: streamed bytes / pinned H2D")
    if any(r[4] for r in rows):
        ax.plot([r[0] for r in rows if r[4]], [r[4] for r in rows if r[4]], "^-", label="Accelerate, 1 token")
        ax.plot([r[0] for r in rows if r[5]], [r[5] for r in rows if r[5]], "v-", label="Accelerate, prefill")
    ax.set_xlabel("GPU budget (GiB)")
    ax.set_ylabel("time per forward (s)")
    ax.set_yscale("log")
    ax.set_title(f"{ours.get('model', 'model')} on {ours.get('device', 'GPU')}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)


if __name__ == "__main__":
    main()
