#!/usr/bin/env python3
"""Training curves of a router run: LM loss, sparsity per category (with targets), multipliers.

Usage: scripts/plot-training.py RUN_DIR OUT.png [--title TEXT]
Reads RUN_DIR/metrics.jsonl written by train_router (one line per micro-batch, one per
validation; a data-parallel run writes one line per device and micro-batch, averaged here); a
resumed run may repeat micro-batches after its last checkpoint: the last lines of each
micro-batch / epoch win. Needs matplotlib.
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CATS = ["code", "in_context_learning", "summarization", "single_doc_qa", "multi_hop_qa"]
TARGET = {"code": 1.0, "in_context_learning": 1.0, "summarization": 1.0,
          "single_doc_qa": 0.45, "multi_hop_qa": 0.45}


def smooth(xs, ys, k=8):
    out_x, out_y = [], []
    for i in range(len(ys)):
        window = ys[max(0, i - k + 1): i + 1]
        out_x.append(xs[i])
        out_y.append(sum(window) / len(window))
    return out_x, out_y


def mean_row(rows):
    """One line per micro-batch: the devices' numbers averaged (tokens/s summed)."""
    out = dict(rows[0])
    for key, value in rows[0].items():
        if isinstance(value, float):
            vals = [r[key] for r in rows if isinstance(r.get(key), float)]
            out[key] = sum(vals) if key == "tokens_per_second" else sum(vals) / len(vals)
    return out


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    run, out = sys.argv[1], sys.argv[2]
    title = sys.argv[4] if len(sys.argv) > 4 and sys.argv[3] == "--title" else run
    try:
        with open(f"{run}/run.json") as f:
            devices = json.load(f)["config"].get("devices", 1)
    except (OSError, KeyError, ValueError):
        devices = 1
    train, valid = {}, {}
    with open(f"{run}/metrics.jsonl") as f:
        for line in f:
            row = json.loads(line)
            if row["split"] == "train":
                rows = train.setdefault(row["micro_batch"], [])
                if len(rows) == devices:  # a resumed run repeats this micro-batch
                    rows.clear()
                rows.append(row)
            else:
                valid[row["epoch"]] = row
    train = [mean_row(train[k]) for k in sorted(train)]
    valid = [valid[k] for k in sorted(valid)]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    ax = axes[0]
    pts = [(r["step"], r["lm_loss"]) for r in train if "lm_loss" in r]
    if pts:
        ax.plot(*smooth([p[0] for p in pts], [p[1] for p in pts]), label="train (smoothed)")
    pts = [(r["step"], r["lm_loss"]) for r in valid if "lm_loss" in r]
    if pts:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label="validation (hard routing)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("answer-token loss")
    ax.set_title("LM loss")
    ax.legend()
    ax = axes[1]
    for i, c in enumerate(CATS):
        color = f"C{i}"
        pts = [(r["step"], r[f"sparsity_{c}"]) for r in train if f"sparsity_{c}" in r]
        if pts:
            ax.plot(*smooth([p[0] for p in pts], [p[1] for p in pts], 16), color=color, alpha=0.6,
                    label=f"{c} (train, Gumbel)")
        pts = [(r["step"], r[f"sparsity_{c}"]) for r in valid if f"sparsity_{c}" in r]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o--", color=color)
        ax.axhline(TARGET[c], color=color, linestyle=":", linewidth=0.8)
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("share of sparse layers")
    ax.set_title("sparsity per category (dots: validation, argmax)")
    ax.legend(fontsize=7)
    ax = axes[2]
    for i, c in enumerate(CATS):
        for key, style in [("lambda1", "-"), ("lambda2", "--")]:
            pts = [(r["step"], r[f"{key}_{c}"]) for r in train if f"{key}_{c}" in r]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, color=f"C{i}",
                        label=f"{key} {c}" if key == "lambda1" else None)
    ax.set_xlabel("optimizer step")
    ax.set_title("multipliers (solid: lambda1, dashed: lambda2)")
    ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
