#!/usr/bin/env python3
"""Writes the seed corpus of flux's fuzz targets (fuzz/corpus/<target>/), deterministically.

Sources: the repo's test fixtures (flux-models/tests/fixtures: the GGUF fixture, the tiny HF
models, the tokenizer configs), prefixes of the real model files that scripts/fetch-models.sh
caches in ~/.cache/flux-models (SmolLM2-135M GGUF: its first 600 tokens and the merges among
them; the safetensors headers), the committed router file, and small files built here. Each seed
also gets truncated copies. Standard library only.

    python3 fuzz/make-corpus.py        # rewrites fuzz/corpus/
"""

import hashlib
import json
import os
import random
import shutil
import struct

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fuzz", "corpus")
FIXTURES = os.path.join(ROOT, "flux-models", "tests", "fixtures")
CACHE = os.path.expanduser("~/.cache/flux-models")
SEP = b"\n#flux-fuzz-next-file#\n"  # fuzz/src/lib.rs FILE_SEPARATOR

rng = random.Random(14)
shutil.rmtree(OUT, ignore_errors=True)


def put(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def put_truncated(target, name, data, cuts):
    put(target, name, data)
    for c in cuts:
        if c < len(data):
            put(target, f"{name}.cut{c}", data[:c])


def read(*parts):
    with open(os.path.join(*parts), "rb") as f:
        return f.read()


def read_prefix(path, n):
    with open(path, "rb") as f:
        return f.read(n)


# --- GGUF writing and reading (little-endian, version 3) -------------------------------------

U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
SCALAR = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f",
          BOOL: "<?", U64: "<Q", I64: "<q", F64: "<d"}


def gstr(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def gvalue(t, v):
    if t == STRING:
        return gstr(v)
    if t == ARRAY:
        et, items = v
        return struct.pack("<IQ", et, len(items)) + b"".join(gvalue(et, x) for x in items)
    return struct.pack(SCALAR[t], v)


def gguf_file(kvs, tensors, alignment=32):
    """kvs: [(key, type, value)]; tensors: [(name, dims (ne0 first), ggml type, data bytes)]."""
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs))
    for k, t, v in kvs:
        out += gstr(k) + struct.pack("<I", t) + gvalue(t, v)
    offset, blobs = 0, b""
    for name, dims, ty, data in tensors:
        out += gstr(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        out += struct.pack("<IQ", ty, offset)
        pad = (-len(data)) % alignment
        blobs += data + b"\0" * pad
        offset += len(data) + pad
    out += b"\0" * ((-len(out)) % alignment)
    return out + blobs


def gguf_metadata(path):
    """The metadata of a GGUF file, read from its start only."""
    with open(path, "rb") as f:
        def rd(n):
            return f.read(n)

        def val(t):
            if t == STRING:
                (n,) = struct.unpack("<Q", rd(8))
                return rd(n).decode("utf-8", "replace")
            if t == ARRAY:
                et, n = struct.unpack("<IQ", rd(12))
                return [val(et) for _ in range(n)]
            fmt = SCALAR[t]
            return struct.unpack(fmt, rd(struct.calcsize(fmt)))[0]

        assert rd(4) == b"GGUF"
        _, _, n_kv = struct.unpack("<IQQ", rd(20))
        md = {}
        for _ in range(n_kv):
            (n,) = struct.unpack("<Q", rd(8))
            key = rd(n).decode()
            (t,) = struct.unpack("<I", rd(4))
            md[key] = (t, val(t))
        return md


def f32s(values):
    return b"".join(struct.pack("<f", v) for v in values)


def f16(x):
    return struct.pack("<e", x)


# --- gguf / dequant ---------------------------------------------------------------------------

fixture = read(FIXTURES, "gguf", "fixture.gguf")
put_truncated("gguf", "fixture.gguf", fixture, [0, 3, 8, 16, 24, 100, 400, 1000, 3000, 5000])

def tiny_llama_gguf(arch="llama", vocab=8, hidden=8, layers=1, heads=2, kv=1, ff=16, extra=()):
    kvs = [
        ("general.architecture", STRING, arch),
        ("general.alignment", U32, 32),
        (f"{arch}.embedding_length", U32, hidden),
        (f"{arch}.attention.head_count", U32, heads),
        (f"{arch}.attention.head_count_kv", U32, kv),
        (f"{arch}.feed_forward_length", U32, ff),
        (f"{arch}.block_count", U32, layers),
        (f"{arch}.context_length", U32, 64),
        (f"{arch}.attention.layer_norm_rms_epsilon", F32, 1e-5),
        (f"{arch}.rope.freq_base", F32, 10000.0),
        ("tokenizer.ggml.bos_token_id", U32, 1),
        ("tokenizer.ggml.eos_token_id", U32, 2),
    ] + list(extra)
    hd = hidden // heads
    t = []
    def w(name, dims, ty=0):
        n = 1
        for d in dims:
            n *= d
        t.append((name, dims, ty, f32s([rng.uniform(-1, 1) for _ in range(n)])))
    w("token_embd.weight", [hidden, vocab])
    w("output_norm.weight", [hidden])
    for l in range(layers):
        w(f"blk.{l}.attn_norm.weight", [hidden])
        w(f"blk.{l}.attn_q.weight", [hidden, heads * hd])
        w(f"blk.{l}.attn_k.weight", [hidden, kv * hd])
        w(f"blk.{l}.attn_v.weight", [hidden, kv * hd])
        w(f"blk.{l}.attn_output.weight", [heads * hd, hidden])
        w(f"blk.{l}.ffn_norm.weight", [hidden])
        w(f"blk.{l}.ffn_gate.weight", [hidden, ff])
        w(f"blk.{l}.ffn_up.weight", [hidden, ff])
        w(f"blk.{l}.ffn_down.weight", [ff, hidden])
    return gguf_file(kvs, t)

model = tiny_llama_gguf()
put_truncated("gguf", "tiny-llama.gguf", model, [64, 512, 1500])
put("gguf", "tiny-qwen2.gguf", tiny_llama_gguf(arch="qwen2", hidden=8, heads=2, kv=2))
put("gguf", "tiny-qwen3.gguf", tiny_llama_gguf(arch="qwen3", extra=[("qwen3.attention.key_length", U32, 4)]))
put("gguf", "tiny-llama-linear-rope.gguf", tiny_llama_gguf(
    extra=[("llama.rope.scaling.type", STRING, "linear"), ("llama.rope.scaling.factor", F32, 2.0)]))

smol = os.path.join(CACHE, "smollm2-135m-instruct", "SmolLM2-135M-Instruct.Q4_1.gguf")
if os.path.exists(smol):
    put("gguf", "smollm2-q4_1.prefix4096", read_prefix(smol, 4096))

# Each type the dequantisers read: [type index of fuzz/src/lib.rs dequant, mode 0, blocks].
DEQUANT = [  # (index, name, block bytes, offset of the f16 scale(s))
    (0, "f32", 4, None), (1, "f16", 2, None), (2, "bf16", 2, None), (3, "q4_0", 18, [0]),
    (4, "q4_1", 20, [0, 2]), (5, "q5_0", 22, [0]), (6, "q5_1", 24, [0, 2]), (7, "q8_0", 34, [0]),
    (8, "q4_k", 144, [0, 2]), (9, "q5_k", 176, [0, 2]), (10, "q6_k", 210, [208]),
    (11, "q2_k", 84, None), (12, "iq4_xs", 136, None), (13, "unknown", 1, None),
]
for idx, name, size, scales in DEQUANT:
    blocks = b""
    for _ in range(2 if size > 4 else 16):
        b = bytearray(rng.getrandbits(8) for _ in range(size))
        for off in scales or []:
            b[off:off + 2] = f16(rng.uniform(-0.1, 0.1))
        if name == "f32":
            b = bytearray(struct.pack("<f", rng.uniform(-2, 2)))
        blocks += bytes(b)
    put("dequant", f"{name}", bytes([idx, 0]) + blocks)
    put("dequant", f"{name}.count-plus-one", bytes([idx, 1]) + blocks)
    put("dequant", f"{name}.count-given", bytes([idx, 3]) + struct.pack("<Q", 1 << 40) + blocks[8:])

# --- safetensors / safetensors_index ----------------------------------------------------------

def safetensors_file(tensors, metadata=None):
    """tensors: [(name, dtype, shape, data)]."""
    header, offset, blobs = {}, 0, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape, data in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs += data
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((-len(h)) % 8)
    return struct.pack("<Q", len(h)) + h + blobs


def st_tensor(name, dtype, shape):
    n = 1
    for d in shape:
        n *= d
    size = {"F32": 4, "F16": 2, "BF16": 2, "I64": 8, "U8": 1, "F64": 8}[dtype]
    return (name, dtype, shape, bytes(rng.getrandbits(8) for _ in range(n * size)))


small = safetensors_file([
    st_tensor("model.embed_tokens.weight", "F32", [4, 3]),
    st_tensor("model.norm.weight", "BF16", [3]),
    st_tensor("model.layers.0.self_attn.q_proj.weight", "F16", [3, 3]),
    st_tensor("position_ids", "I64", [2]),
    st_tensor("scalar", "F32", []),
    st_tensor("empty", "F32", [0, 5]),
], metadata={"format": "pt"})
put_truncated("safetensors", "small.safetensors", small, [0, 7, 8, 20, 100, 300])
tiny_llama = read(FIXTURES, "tiny-models", "tiny-llama3", "model.safetensors")
(hlen,) = struct.unpack("<Q", tiny_llama[:8])
put("safetensors", "tiny-llama3.header-and-4k", tiny_llama[: 8 + hlen + 4096])
smol_st = os.path.join(CACHE, "smollm2-135m-instruct", "hf", "model.safetensors")
if os.path.exists(smol_st):
    put("safetensors", "smollm2.prefix4096", read_prefix(smol_st, 4096))

shard1 = safetensors_file([st_tensor("model.embed_tokens.weight", "BF16", [4, 3]),
                           st_tensor("model.norm.weight", "F32", [3])])
shard2 = safetensors_file([st_tensor("lm_head.weight", "F16", [4, 3])])
index = {"metadata": {"total_size": 60}, "weight_map": {
    "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
    "model.norm.weight": "model-00001-of-00002.safetensors",
    "lm_head.weight": "model-00002-of-00002.safetensors"}}
ij = json.dumps(index, indent=2).encode()
put("safetensors_index", "two-shards", SEP.join([ij, shard1, shard2]))
put("safetensors_index", "two-shards.second-truncated", SEP.join([ij, shard1, shard2[:40]]))
put("safetensors_index", "two-shards.second-missing", SEP.join([ij, shard1]))
put("safetensors_index", "index-only", ij)
put("safetensors_index", "index-truncated", ij[:50])
qwen_index = read(FIXTURES, "tiny-models", "tiny-qwen3", "model.safetensors.index.json")
put("safetensors_index", "tiny-qwen3-index-only", qwen_index)
put("safetensors_index", "no-weight-map", b'{"metadata": {}}' + SEP + shard1)

# --- config -----------------------------------------------------------------------------------

configs = {
    "tiny-llama3.json": read(FIXTURES, "tiny-models", "tiny-llama3", "config.json"),
    "tiny-qwen3.json": read(FIXTURES, "tiny-models", "tiny-qwen3", "config.json"),
    "llama-3.1-8b.json": read(ROOT, "flux-models", "configs", "llama-3.1-8b.json"),
    "qwen3-8b.json": read(ROOT, "flux-models", "configs", "qwen3-8b.json"),
}
for m in ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"]:
    p = os.path.join(CACHE, m, "hf", "config.json")
    if os.path.exists(p):
        configs[m + ".json"] = read(p)
for name, data in configs.items():
    put_truncated("config", name, data, [1, len(data) // 2, len(data) - 2])

# --- gguf_tokenizer ---------------------------------------------------------------------------

def byte_chars():
    bs = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


template = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
            "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

def tokenizer_gguf(tokens, types, merges, pre="smollm", model="gpt2", extra=()):
    kvs = [("general.architecture", STRING, "llama"),
           ("tokenizer.ggml.model", STRING, model),
           ("tokenizer.ggml.pre", STRING, pre),
           ("tokenizer.ggml.tokens", ARRAY, (STRING, tokens)),
           ("tokenizer.ggml.token_type", ARRAY, (I32, types)),
           ("tokenizer.ggml.merges", ARRAY, (STRING, merges)),
           ("tokenizer.ggml.bos_token_id", U32, 1),
           ("tokenizer.ggml.eos_token_id", U32, 2),
           ("tokenizer.ggml.padding_token_id", U32, 2),
           ("tokenizer.ggml.add_bos_token", BOOL, False),
           ("tokenizer.chat_template", STRING, template)] + list(extra)
    return gguf_file(kvs, [])


specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
alphabet = byte_chars()
pairs = ["h e", "l l", "he ll", "o Ġ", "Ġ w", "Ġw o", "r l", "Ġwo rl", "ll o", "hell o", "1 2", "3 4"]
vocab = specials + alphabet
for p in pairs:
    a, b = p.split(" ")
    if a + b not in vocab:
        vocab.append(a + b)
types = [3] * len(specials) + [1] * (len(vocab) - len(specials))
put("gguf_tokenizer", "bytelevel-bpe.gguf", tokenizer_gguf(vocab, types, pairs))
for pre in ["llama-bpe", "qwen2", "default", "unknown-pre"]:
    put("gguf_tokenizer", f"bytelevel-bpe-{pre}.gguf", tokenizer_gguf(vocab, types, pairs, pre=pre))
put("gguf_tokenizer", "sentencepiece.gguf", tokenizer_gguf(vocab[:40], types[:40], [], model="llama"))
put("gguf_tokenizer", "add-bos-eos.gguf", tokenizer_gguf(vocab, types, pairs, extra=[
    ("tokenizer.ggml.add_bos_token", BOOL, True), ("tokenizer.ggml.add_eos_token", BOOL, True),
    ("tokenizer.ggml.eot_token_id", U32, 2)]))
if os.path.exists(smol):
    md = gguf_metadata(smol)
    toks = md["tokenizer.ggml.tokens"][1][:600]
    ttypes = md["tokenizer.ggml.token_type"][1][:600]
    kept = set(toks)
    merges = [m for m in md["tokenizer.ggml.merges"][1]
              if len(m.split(" ")) == 2 and all(x in kept for x in m.split(" ")) and m.replace(" ", "") in kept][:400]
    kvs = [("general.architecture", STRING, "llama")]
    for k, (t, v) in md.items():
        if k.startswith("tokenizer."):
            if k == "tokenizer.ggml.tokens":
                v = (STRING, toks)
            elif k == "tokenizer.ggml.token_type":
                v = (I32, ttypes)
            elif k == "tokenizer.ggml.merges":
                v = (STRING, merges)
            elif t == ARRAY:
                continue
            kvs.append((k, t, v))
    put_truncated("gguf_tokenizer", "smollm2-600-tokens.gguf", gguf_file(kvs, []), [2000, 6000])

# --- chat_template ----------------------------------------------------------------------------

def template_of(path):
    try:
        t = json.loads(read(path)).get("chat_template")
    except (OSError, ValueError):
        return None
    if isinstance(t, list):
        t = t[0].get("template")
    return t

for name, path in [
    ("llama3", os.path.join(FIXTURES, "tokenizer", "llama3", "tokenizer_config.json")),
    ("qwen3", os.path.join(FIXTURES, "tokenizer", "qwen3", "tokenizer_config.json")),
    ("smollm2", os.path.join(CACHE, "smollm2-135m-instruct", "hf", "tokenizer_config.json")),
]:
    t = template_of(path)
    if t:
        put_truncated("chat_template", f"{name}.jinja", t, [len(t) // 3, 2 * len(t) // 3])
put("chat_template", "chatml.jinja", template)
put("chat_template", "tojson-strftime.jinja",
    "{{ bos_token }}{{ strftime_now('%Y-%m-%d %A %B %H:%M:%S %%') }}{{ messages | tojson(indent=2) }}"
    "{{ messages[0] | tojson(sort_keys=true) }}{% if messages|length > 9 %}{{ raise_exception('too many') }}{% endif %}"
    "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{{ m.content.strip().split(' ')|join('-') }}"
    "{{ m['role'].upper() }}{{ loop.index }}{% endfor %}{{ ns.n }}{{ eos_token }}")
put("chat_template", "raise.jinja", "{{ raise_exception('Conversation roles must alternate') }}\0user content")
put("chat_template", "macro-recursion.jinja",
    "{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{% endif %}{{ n }}{% endmacro %}{{ f(20) }}")

# --- router -----------------------------------------------------------------------------------

def router_file(meta, layers=2, d=4, dtype="F32", drop=None, shape_bug=None):
    tensors = []
    for l in range(layers):
        for name, (inp, out) in zip(["encoder_in", "encoder_out", "head_in", "head_mid", "head_out"],
                                    [(d, 8 * d), (8 * d, 2 * d), (2 * d, 4 * d), (4 * d, d), (d, 2)]):
            for part, shape in [("weight", [out, inp]), ("bias", [out])]:
                full = f"layers.{l}.{name}.{part}"
                if full == drop:
                    continue
                if full == shape_bug:
                    shape = shape[::-1] + [1]
                tensors.append(st_tensor(full, dtype, shape))
    return safetensors_file(tensors, metadata={"flux_router": json.dumps(meta)})


meta = {"architecture": "LlamaForCausalLM", "num_layers": 2, "num_heads": 2, "head_dim": 4,
        "pool_tokens": 2, "sparse_mode": {"kind": "streaming", "sink": 4, "window": 16}}
put_truncated("router", "routers-f32.safetensors", router_file(meta), [8, 200, 1000])
put("router", "routers-bf16.safetensors", router_file(meta, dtype="BF16"))
put("router", "routers-f16-xattention.safetensors",
    router_file(dict(meta, sparse_mode={"kind": "xattention", "block": 8, "stride": 4, "threshold": 0.9}), dtype="F16"))
put("router", "routers-triangle.safetensors",
    router_file(dict(meta, sparse_mode={"kind": "triangle", "sink": 4, "window": 16, "last_queries": 8})))
put("router", "routers-other-model.safetensors", router_file(dict(meta, num_layers=3), layers=3))
put("router", "routers-missing-tensor.safetensors", router_file(meta, drop="layers.1.head_out.bias"))
put("router", "routers-bad-shape.safetensors", router_file(meta, shape_bug="layers.0.head_mid.weight"))
put("router", "routers-pool-0.safetensors", router_file(dict(meta, pool_tokens=0)))
put("router", "routers-no-meta.safetensors", safetensors_file([st_tensor("x", "F32", [2])]))
real = os.path.join(ROOT, "routers", "smollm2-135m-instruct", "routers.safetensors")
if os.path.exists(real):
    put("router", "smollm2-routers.prefix4096", read_prefix(real, 4096))

# --- task_file --------------------------------------------------------------------------------

def task(i, **kw):
    t = {"id": f"t-{i}", "task": "niah_single", "context": "The key is 8160734. " * 3,
         "question": "What is the key?", "answers": ["8160734"], "max_new_tokens": 32, "chat": True}
    t.update(kw)
    return json.dumps(t)

lines = [task(0), task(1, chat=False, answers=["a", "B"]),
         task(2, scoring="last_number", answers=["-12.5"], question="1 + 2 = ? The answer is 3"),
         task(3, context="", question="Only a question", max_new_tokens=4096)]
put("task_file", "good.jsonl", "\n".join(lines) + "\n")
put("task_file", "blank-lines-crlf.jsonl", "\r\n\r\n".join(lines) + "\r\n")
bad = [task(4, answers=[]), task(5, max_new_tokens=0), task(6, extra=1), task(0), "{not json",
       task(7, scoring="last_number", answers=["none"]), task(8, id=" "), task(9, answers=["1e400"], scoring="last_number")]
put("task_file", "malformed-lines.jsonl", "\n".join([lines[0]] + bad) + "\n")
put_truncated("task_file", "good-truncated.jsonl", "\n".join(lines), [1, 60, 300])
put("task_file", "empty.jsonl", "")

total = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(OUT) for f in fs)
count = sum(len(fs) for _, _, fs in os.walk(OUT))
print(f"{OUT}: {count} files, {total} bytes")
