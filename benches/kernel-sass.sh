#!/usr/bin/env bash
# Evidence for RESULTS.md on a CUDA machine: the CUDA source cubecl generates for flux's kernels,
# compiled with nvcc for sm_90a (resource usage: registers, spills, shared memory) and
# disassembled (instruction mix from cuobjdump), plus per-kernel device times from cubecl's
# profiling log and a timing variant without the matrix units.
#
#   BIN=path/to/attention_kernels benches/kernel-sass.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/attention_kernels}
OUT_DIR=${1:-sass-out}
mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/cubecl.log"
rm -f "$LOG"
CUBECL_DEBUG_LOG="$LOG" "$BIN" --check-dtypes "" --lengths 16384 --burn-up-to 0 --xattention-up-to 16384 \
  --seconds 0.3 --json "$OUT_DIR/logged.jsonl" > "$OUT_DIR/logged.out" 2> "$OUT_DIR/logged.err"
FLUX_NO_CMMA=1 "$BIN" --check-dtypes "" --lengths 16384 --burn-up-to 0 --xattention-up-to 0 \
  --seconds 0.5 --json "$OUT_DIR/no-cmma.jsonl" > "$OUT_DIR/no-cmma.out" 2>> "$OUT_DIR/logged.err"
python3 - "$LOG" "$OUT_DIR" <<'PY'
import re, subprocess, sys, collections, os
log, out = sys.argv[1], sys.argv[2]
text = open(log, errors="replace").read()
blocks = re.findall(r"\[START_KERNEL_COMPILATION\]\nname: (.*?)\n.*?source:\n```\w*\n(.*?)\n```\n\[END_KERNEL_COMPILATION\]", text, re.S)
seen = {}
for name, src in blocks:
    short = re.sub(r"[^A-Za-z0-9_]", "", name.split("<")[0].split("::")[-1])[:40] or "kernel"
    if short in seen:
        continue
    seen[short] = src
print(f"{len(blocks)} kernels compiled, {len(seen)} distinct names: {', '.join(seen)}")
print("\n| kernel | registers | spill stores / loads (bytes) | shared memory | HMMA | LDSM | LDS | STS | LDG | BAR | MUFU | LDL/STL |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for short, src in seen.items():
    if not any(k in short.lower() for k in ("flash", "combine", "xattention")):
        continue
    cu = os.path.join(out, short + ".cu")
    open(cu, "w").write(src)
    cubin = cu[:-3] + ".cubin"
    r = subprocess.run(["nvcc", "-arch=sm_90a", "-cubin", "-O3", "-Xptxas", "-v", "-lineinfo", "-o", cubin, cu],
                       capture_output=True, text=True)
    info = r.stderr
    if r.returncode != 0:
        print(f"| {short} | nvcc failed: {info[:200]!r} |")
        continue
    regs = re.search(r"Used (\d+) registers", info)
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", info)
    smem = re.search(r"(\d+) bytes smem", info)
    sass = subprocess.run(["cuobjdump", "-sass", cubin], capture_output=True, text=True).stdout
    open(cubin[:-6] + ".sass", "w").write(sass)
    ops = collections.Counter(re.findall(r"^\s+/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_]+)", sass, re.M))
    c = lambda *names: sum(v for k, v in ops.items() if any(k.startswith(n) for n in names))
    print(f"| {short} | {regs.group(1) if regs else '?'} | {spill.group(1) + ' / ' + spill.group(2) if spill else '?'} | "
          f"{smem.group(1) if smem else '?'} B static | {c('HMMA')} | {c('LDSM')} | {c('LDS')} | {c('STS')} | {c('LDG')} | "
          f"{c('BAR')} | {c('MUFU')} | {c('LDL') + c('STL')} |")
# Device-side durations from cubecl's profiling log.
durations = collections.defaultdict(list)
for m in re.finditer(r"\| *([A-Za-z_:<>0-9, ]*?(?:flash|combine|xattention)[^|]*?) *\|[^\n]*?([0-9.]+) *(ms|µs|us|ns)", text):
    pass
lines = [l for l in text.splitlines() if "flash_attention" in l or "combine_splits" in l or "xattention" in l]
prof = [l for l in lines if "ms" in l or "µs" in l][:40]
open(os.path.join(out, "profile-lines.txt"), "w").write("\n".join(prof))
print(f"\n{len(prof)} profiling lines kept in profile-lines.txt")
PY
grep -h '"op"' "$OUT_DIR/logged.jsonl" "$OUT_DIR/no-cmma.jsonl" | sed 's/^/timing: /'
