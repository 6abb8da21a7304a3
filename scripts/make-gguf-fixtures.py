#!/usr/bin/env python3
"""Writes the GGUF test fixtures of flux-models (flux-models/tests/fixtures/gguf/).

The expected values come from an independent reference: the `gguf` Python package
(llama.cpp's own numpy port of ggml-quants.c), `gguf.quants.dequantize`, applied to
the raw block bytes before they are written. Needs `python3 -m pip install gguf==0.19.0 numpy`.

Outputs:
  fixture.gguf      one tensor of each type plus metadata of every value type
  <tensor>.f32      expected dequantised values, little-endian f32, row-major
  manifest.json     tensor name -> type, row-major shape, expected file
Deterministic (fixed seed): rerunning gives the same bytes.

Second use, to check flux against a real model file (see the ignored tests in
flux-models/tests/gguf.rs):
  make-gguf-fixtures.py --dump MODEL.gguf OUTDIR [TENSOR...]
writes OUTDIR/<tensor>.f32 (reference dequantisation) for the named tensors, or by
default for the first tensor of each type in the file, and OUTDIR/tensors.txt listing them.
"""

import json
import os
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf import GGUFValueType as V


def dump(model, outdir, names):
    r = gguf.GGUFReader(model)
    if not names:
        seen = set()
        for t in r.tensors:
            if t.tensor_type not in seen:
                seen.add(t.tensor_type)
                names.append(t.name)
    os.makedirs(outdir, exist_ok=True)
    by_name = {t.name: t for t in r.tensors}
    with open(os.path.join(outdir, "tensors.txt"), "w") as f:
        for name in names:
            t = by_name[name]
            values = gguf.quants.dequantize(t.data, t.tensor_type).astype("<f4").reshape(-1)
            values.tofile(os.path.join(outdir, name + ".f32"))
            f.write(name + "\n")
            print(name, t.tensor_type.name, list(reversed(t.shape.tolist())))


if len(sys.argv) > 1 and sys.argv[1] == "--dump":
    dump(sys.argv[2], sys.argv[3], sys.argv[4:])
    sys.exit(0)

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "flux-models", "tests", "fixtures", "gguf"
)
ALIGNMENT = 64  # not the default 32, so the reader must honour general.alignment

rng = np.random.default_rng(20240611)

# Byte offsets of the f16 scale/min fields inside one block of each quant type.
F16_FIELDS = {
    T.Q4_0: [0],
    T.Q4_1: [0, 2],
    T.Q5_0: [0],
    T.Q5_1: [0, 2],
    T.Q8_0: [0],
    T.Q2_K: [80, 82],
    T.Q4_K: [0, 2],
    T.Q5_K: [0, 2],
    T.Q6_K: [208],
}


def random_blocks(qtype, n_blocks):
    """Random quant payload with finite, small f16 scales and mins."""
    _, type_size = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    for off in F16_FIELDS[qtype]:
        scales = rng.uniform(-2.0, 2.0, size=n_blocks).astype(np.float16)
        raw[:, off:off + 2] = scales.view(np.uint8).reshape(n_blocks, 2)
    return raw


def special_f16():
    # zeros, subnormals, the largest finite, infinities: exercise every f16 -> f32 path.
    return np.array([0.0, -0.0, 5.96e-8, -6.1e-5, 65504.0, -65504.0, np.inf, -np.inf],
                    dtype=np.float16)


tensors = []  # (name, qtype, row-major shape, raw uint8 bytes or typed array)

# Plain types.
f32 = rng.standard_normal((2, 3, 8)).astype(np.float32)
f32.flat[0] = np.float32(1e-42)  # subnormal
tensors.append(("t.f32", T.F32, [2, 3, 8], f32))
f16 = np.concatenate([special_f16(), rng.standard_normal(56).astype(np.float16)]).reshape(4, 16)
tensors.append(("t.f16", T.F16, [4, 16], f16))
bf16_bits = rng.integers(0, 1 << 16, size=64, dtype=np.uint16)
bf16_bits[(bf16_bits & 0x7F80) == 0x7F80] &= 0xBFFF  # no NaN/inf: clear an exponent bit
tensors.append(("t.bf16", T.BF16, [2, 32], bf16_bits.view(np.uint8).reshape(2, 64)))

# Block types: several rows of several blocks; K-quants have 2 super-blocks per row.
for qtype, shape in [
    (T.Q4_0, [3, 64]),
    (T.Q4_1, [3, 64]),
    (T.Q5_0, [3, 64]),
    (T.Q5_1, [3, 64]),
    (T.Q8_0, [3, 64]),
    (T.Q4_K, [2, 512]),
    (T.Q5_K, [2, 512]),
    (T.Q6_K, [2, 512]),
    (T.Q2_K, [1, 256]),  # not supported by flux: reading it must be an error
]:
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    rows, cols = shape
    raw = random_blocks(qtype, rows * cols // block_size).reshape(rows, cols // block_size * type_size)
    tensors.append((f"t.{qtype.name.lower()}", qtype, shape, raw))

os.makedirs(OUT, exist_ok=True)
manifest = []
for name, qtype, shape, data in tensors:
    entry = {"name": name, "type": qtype.name, "shape": shape}
    if qtype != T.Q2_K:
        raw = data.view(np.uint8).reshape(-1) if data.dtype != np.uint8 else data.reshape(-1)
        expected = gguf.quants.dequantize(raw, qtype).astype("<f4").reshape(-1)
        assert expected.size == int(np.prod(shape)), name
        assert np.all(np.isfinite(expected) | np.isinf(expected)), name
        fname = name[2:] + ".f32"
        expected.tofile(os.path.join(OUT, fname))
        entry["expected"] = fname
    manifest.append(entry)

w = gguf.GGUFWriter(os.path.join(OUT, "fixture.gguf"), arch="llama")  # adds general.architecture
w.add_custom_alignment(ALIGNMENT)  # general.alignment (u32)
w.add_name("flux gguf fixture")
w.add_uint8("test.u8", 200)
w.add_int8("test.i8", -100)
w.add_uint16("test.u16", 60000)
w.add_int16("test.i16", -30000)
w.add_uint32("test.u32", 4_000_000_000)
w.add_int32("test.i32", -2_000_000_000)
w.add_float32("test.f32", 1.5)
w.add_bool("test.bool_true", True)
w.add_bool("test.bool_false", False)
w.add_string("test.string", "héllo wörld ✓")
w.add_uint64("test.u64", 2**63 + 5)
w.add_int64("test.i64", -(2**62))
w.add_float64("test.f64", 3.141592653589793)
w.add_array("test.array.string", ["a", "bc", "", "ünï ✓"])
w.add_key_value("test.array.i32", [1, -2, 3], V.ARRAY, sub_type=V.INT32)
w.add_key_value("test.array.u8", [0, 255, 7], V.ARRAY, sub_type=V.UINT8)
w.add_key_value("test.array.u64", [0, 2**64 - 1], V.ARRAY, sub_type=V.UINT64)
w.add_key_value("test.array.f32", [0.5, -0.25], V.ARRAY, sub_type=V.FLOAT32)
w.add_key_value("test.array.f64", [0.1], V.ARRAY, sub_type=V.FLOAT64)
w.add_key_value("test.array.bool", [True, False, True], V.ARRAY, sub_type=V.BOOL)
w.add_array("test.array.nested", [[1, 2], [3], [4, 5, 6]])  # array of arrays of i32
w.add_array("test.array.nested_str", [["x", "y"], ["z"]])  # array of arrays of strings
for name, qtype, shape, data in tensors:
    if qtype in (T.F32, T.F16):
        w.add_tensor(name, data)
    else:
        w.add_tensor(name, data, raw_dtype=qtype)  # uint8 bytes: shape converted from bytes
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()

with open(os.path.join(OUT, "manifest.json"), "w") as f:
    # One tensor per line keeps the file readable and diffs small.
    lines = ",\n  ".join(json.dumps(e, ensure_ascii=False) for e in manifest)
    f.write(f'{{"alignment": {ALIGNMENT}, "tensors": [\n  {lines}\n]}}\n')

# Self-check with the package's own reader: shapes and types as intended.
r = gguf.GGUFReader(os.path.join(OUT, "fixture.gguf"))
for (name, qtype, shape, _), t in zip(tensors, r.tensors):
    assert t.name == name and t.tensor_type == qtype, (t.name, t.tensor_type)
    assert list(reversed(t.shape.tolist())) == shape, (name, t.shape)
total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
print(f"wrote {len(os.listdir(OUT))} files, {total} bytes, to {OUT}")
