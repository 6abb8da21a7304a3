"""HF transformers beside flux's `e2e`: prefill time, decode ms/token and peak GPU memory of a
model built from a config.json with random weights (the speed does not depend on the values).

    python3 benches/torch_e2e.py --config flux-models/configs/llama-3.1-8b.json \
        --prompt-tokens 4096,32768 --decode-tokens 32 --json out.jsonl

Prefill keeps only the last position's logits (as flux's e2e does); decode feeds the greedy token
back through the KV cache one step at a time. Times are medians over --repeats runs after one
warm-up, with the GPU synchronised around each timed region.
"""
import argparse
import inspect
import json
import statistics
import time

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="config.json of the model")
    p.add_argument("--name", default=None, help="name in the output (default: the config path)")
    p.add_argument("--prompt-tokens", default="4096,32768")
    p.add_argument("--decode-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dtype", default="bf16", choices=["bf16", "f16", "f32"])
    p.add_argument("--attn", default="sdpa", help="attn_implementation (sdpa, flash_attention_2, eager)")
    p.add_argument("--json", default=None, help="append one JSON object per row to this file")
    return p.parse_args()


DTYPES = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}


def build(args):
    config = AutoConfig.from_pretrained(args.config)
    # A prompt as long as the longest asked for must fit.
    longest = max(int(n) for n in args.prompt_tokens.split(",")) + args.decode_tokens
    config.max_position_embeddings = max(config.max_position_embeddings, longest)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(
            config, torch_dtype=DTYPES[args.dtype], attn_implementation=args.attn
        )
    return model.eval(), config


def timed(fn):
    torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start, out


@torch.inference_mode()
def run_once(model, config, n, decode_tokens, keep_kwarg):
    ids = torch.randint(0, config.vocab_size, (1, n), device="cuda")
    kwargs = {keep_kwarg: 1} if keep_kwarg else {}
    prefill_s, out = timed(lambda: model(ids, use_cache=True, **kwargs))
    cache = out.past_key_values
    token = out.logits[:, -1:].argmax(-1)
    steps = []
    for _ in range(decode_tokens):
        s, out = timed(lambda: model(token, past_key_values=cache, use_cache=True))
        cache = out.past_key_values
        token = out.logits[:, -1:].argmax(-1)
        steps.append(s)
    if not torch.isfinite(out.logits).all():
        raise SystemExit(f"torch_e2e: non-finite logits at {n} tokens")
    return prefill_s, statistics.median(steps) if steps else float("nan")


def main():
    args = parse_args()
    model, config = build(args)
    params = inspect.signature(model.forward).parameters
    keep_kwarg = next((k for k in ("logits_to_keep", "num_logits_to_keep") if k in params), None)
    name = args.name or args.config
    print(f"# torch {torch.__version__}, transformers {transformers.__version__}, {args.attn}, "
          f"{args.dtype}, {name}, {torch.cuda.get_device_name()}")
    print("| prompt tokens | prefill s | prefill tokens/s | decode ms/token | peak GiB |")
    print("|---|---|---|---|---|")
    run_once(model, config, 256, 4, keep_kwarg)  # warm-up: kernels and allocator
    for n in (int(x) for x in args.prompt_tokens.split(",")):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        try:
            runs = [run_once(model, config, n, args.decode_tokens, keep_kwarg) for _ in range(args.repeats)]
        except torch.OutOfMemoryError:
            print(f"| {n} | out of memory | | | |")
            continue
        prefill = statistics.median(r[0] for r in runs)
        decode = statistics.median(r[1] for r in runs)
        peak = torch.cuda.max_memory_allocated() / 2**30
        print(f"| {n} | {prefill:.4f} | {n / prefill:.0f} | {decode * 1e3:.2f} | {peak:.1f} |", flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps({
                    "impl": f"transformers-{args.attn}", "model": name, "dtype": args.dtype,
                    "prompt_tokens": n, "prefill_s": prefill, "decode_ms_per_token": decode * 1e3,
                    "peak_gib": peak, "repeats": args.repeats,
                }) + "\n")


if __name__ == "__main__":
    main()
