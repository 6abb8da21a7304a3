"""Joins the JSON rows of flux's `e2e --json` and `torch_e2e.py --json` into one markdown table
per model: prefill seconds and decode ms/token of every flux plan beside transformers, the
ratios, flux's routing cost and transformers' peak memory.

    python3 benches/e2e_table.py flux.jsonl torch.jsonl
"""
import json
import sys
from collections import defaultdict


def main():
    rows = [json.loads(line) for path in sys.argv[1:] for line in open(path) if line.strip()]
    flux = [r for r in rows if r.get("impl") == "flux"]
    torch = {(r["model"], r["prompt_tokens"]): r for r in rows if r.get("impl", "").startswith("transformers")}
    by_model = defaultdict(list)
    for r in flux:
        by_model[r["model"]].append(r)
    for model, rs in by_model.items():
        print(f"\n### {model}\n")
        print("| prompt tokens | plan | flux prefill s | transformers prefill s | prefill ratio (flux / tf) "
              "| flux decode ms/token | tf decode ms/token | decode ratio | routing cost | tf peak GiB |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in sorted(rs, key=lambda r: (r["prompt_tokens"], r["plan"])):
            t = torch.get((model, r["prompt_tokens"]))
            tp = f"{t['prefill_s']:.3f}" if t else "-"
            td = f"{t['decode_ms_per_token']:.2f}" if t else "-"
            pr = f"{r['prefill_s'] / t['prefill_s']:.2f}x" if t else "-"
            dr = f"{r['decode_ms_per_token'] / t['decode_ms_per_token']:.2f}x" if t else "-"
            cost = "-" if r.get("routing_cost") is None else f"{100 * r['routing_cost']:.2f} %"
            peak = f"{t['peak_gib']:.1f}" if t else "-"
            print(f"| {r['prompt_tokens']} | {r['plan']} ({r['layers']}) | {r['prefill_s']:.3f} | {tp} | {pr} "
                  f"| {r['decode_ms_per_token']:.2f} | {td} | {dr} | {cost} | {peak} |")


if __name__ == "__main__":
    main()
