#!/usr/bin/env python3
"""Reference outputs of HF transformers for flux's parity tests.

Run where torch + transformers + gguf are installed (the H200 machine; see
scripts/make-reference-on-device.md). Writes into OUT_DIR:
  smollm2.json, qwen2.5.json   per text: token ids, per-token log-probs, 32-token greedy continuation
  tiny-models.tar              tiny random Llama (llama3 rope scaling, tied) and Qwen3 (sharded)
                               checkpoints with reference.json beside each

usage: make-reference.py SMOLLM2_GGUF QWEN25_GGUF OUT_DIR
       make-reference.py --bf16 GGUF OUT_FILE   the same cases of one GGUF model, run in bfloat16
                                                (flux-models/tests/gpu_bf16.rs compares against it)
"""
import json
import os
import sys
import tarfile

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

TEXTS = [
    "The capital of France is",
    "Once upon a time, in a small village by the sea, there lived an old fisherman who",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n    if n < 2:\n        return n\n",
    "In 1969, Apollo 11 landed on the Moon; 3.14159 is pi, and 2+2=4. Prices rose 12% in Q3.",
    "Les élèves étudient la physique à l'université. 東京は日本の首都です。",
]
GREEDY_STEPS = 32


@torch.no_grad()
def score(model, ids):
    x = torch.tensor([ids], device=DEVICE)
    logits = model(x).logits[0].double()
    lp = torch.log_softmax(logits, -1)
    return logits, [lp[i, ids[i + 1]].item() for i in range(len(ids) - 1)]


@torch.no_grad()
def greedy(model, ids, steps=GREEDY_STEPS):
    # Plain argmax each step, no EOS handling, no logit processors.
    cur = list(ids)
    out = []
    for _ in range(steps):
        logits = model(torch.tensor([cur], device=DEVICE)).logits[0, -1]
        t = int(torch.argmax(logits))
        out.append(t)
        cur.append(t)
    return out


def gguf_reference(path, out_file, dtype=torch.float32):
    d, f = os.path.split(path)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=dtype).to(DEVICE).eval()
    cases = []
    for text in TEXTS:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        _, logprobs = score(model, ids)
        gen = greedy(model, ids)
        cases.append({"text": text, "ids": ids, "logprobs": logprobs, "greedy": gen,
                      "greedy_text": tok.decode(gen)})
        print(f"{f}: {len(ids)} tokens, mean logprob {sum(logprobs) / len(logprobs):.4f}, "
              f"greedy: {tok.decode(gen)!r}", flush=True)
    messages = [{"role": "system", "content": "You are brief."}, {"role": "user", "content": "Name a colour."}]
    chat = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ref = {
        "source": f,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "tokenizer_class": type(tok).__name__,
        "chat_messages": messages,
        "chat_prompt": chat,
        "cases": cases,
    }
    with open(out_file, "w") as fh:
        json.dump(ref, fh, indent=1, ensure_ascii=False)


def randomise(model):
    # Default init (std 0.02) makes every logit nearly equal; larger weights make a test that can fail.
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.dim() == 1:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)


def tiny_reference(name, model, out_root, shard):
    model = randomise_and_eval(model)
    d = os.path.join(out_root, name)
    model.save_pretrained(d, safe_serialization=True, max_shard_size="100KB" if shard else "50GB")
    g = torch.Generator().manual_seed(1)
    vocab = model.config.vocab_size
    ids = torch.randint(3, vocab, (200,), generator=g).tolist()
    logits, logprobs = score(model.to(DEVICE), ids)
    rows = [0, 1, 99, 199]
    ref = {"transformers": transformers.__version__, "ids": ids, "logprobs": logprobs,
           "logit_rows": rows, "logits": [logits[r].tolist() for r in rows],
           "greedy": greedy(model, ids[:50])}
    with open(os.path.join(d, "reference.json"), "w") as fh:
        json.dump(ref, fh)
    print(f"{name}: files {sorted(os.listdir(d))}", flush=True)


def randomise_and_eval(model):
    randomise(model)
    return model.float().eval()


def tiny_models(out_dir):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM
    root = os.path.join(out_dir, "tiny")
    os.makedirs(root, exist_ok=True)
    llama3_rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 8192, "rope_theta": 500000.0}
    llama = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=131072,
                        rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
                        rope_parameters=llama3_rope)
    torch.manual_seed(0)
    tiny_reference("tiny-llama3", LlamaForCausalLM(llama), root, shard=False)
    qwen3 = Qwen3Config(vocab_size=512, hidden_size=96, intermediate_size=160, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=4096,
                        rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})
    torch.manual_seed(0)
    tiny_reference("tiny-qwen3", Qwen3ForCausalLM(qwen3), root, shard=True)
    with tarfile.open(os.path.join(out_dir, "tiny-models.tar"), "w") as tar:
        tar.add(root, arcname="tiny")


def main():
    if sys.argv[1] == "--bf16":
        gguf_reference(sys.argv[2], sys.argv[3], dtype=torch.bfloat16)
        return
    smol, qwen, out = sys.argv[1:4]
    os.makedirs(out, exist_ok=True)
    tiny_models(out)
    gguf_reference(smol, os.path.join(out, "smollm2.json"))
    gguf_reference(qwen, os.path.join(out, "qwen2.5.json"))


if __name__ == "__main__":
    main()
