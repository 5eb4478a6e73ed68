#!/usr/bin/env bash
# The GPU machine's checks in one call, most important first, each with its own timeout and its JSON written
# under $OUT as soon as it ends (at most 8 files come back):
#   (i)   throughput.json   benchmarks/gpu_throughput.py over the four paper sizes, largest first: the trainer as the
#                           paper preset sets it (compiled) and the compiled plain-torch reference, then the
#                           uncompiled trainer and the eager reference as the budget allows
#   (ii)  smoke.json        the GPU smoke study through Snakemake (presets/smoke.yaml + presets/gpu-smoke.yaml, in
#                           results/smoke-gpu/), with transfer_fit.json, answer.rst and report.html
#   (iii) determinism.json  a small bf16 run uninterrupted twice, and stopped at a checkpoint then resumed,
#                           deterministic on and off (runs beside (ii): neither is a timing)
#   then  search.json       the micro-batch search, with whatever time is left
#   and   logs.tar.gz       every log, refreshed after each part
# Build .device/ here first (bash benchmarks/device/prepare.sh); the device tool then runs, from the repository
# root, `bash benchmarks/device/run.sh` with carry [".device"] (timeout_s 600). About 8.5 minutes with the defaults
# below; THROUGHPUT_S, SMOKE_S, DETERMINISM_S and TOTAL_S (the search gets what is left of it) change them.
# DEVICE_SMOKE=cpu runs the same plumbing on a CPU in reduced form (tiny sizes, CPU smoke study in results/smoke/);
# PYTHON picks the interpreter (default python3, which on the device holds torch).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$PWD
MODE=${DEVICE_SMOKE:-gpu}
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/device-out}
WORK=${DEVICE_WORK:-/tmp/device-work}
LOGS=$WORK/logs
SITE=$WORK/site
if [[ $MODE == cpu ]]; then
  THROUGHPUT_S=${THROUGHPUT_S:-120} SMOKE_S=${SMOKE_S:-600} DETERMINISM_S=${DETERMINISM_S:-180}
  TOTAL_S=${TOTAL_S:-900} CORES=${CORES:-$(nproc)}
else
  THROUGHPUT_S=${THROUGHPUT_S:-300} SMOKE_S=${SMOKE_S:-180} DETERMINISM_S=${DETERMINISM_S:-150}
  TOTAL_S=${TOTAL_S:-510} CORES=${CORES:-16}
fi
STARTED=$SECONDS
rm -rf "$WORK"
mkdir -p "$OUT" "$LOGS"
exec > >(tee -a "$LOGS/run.log") 2>&1

say() { printf '[%4ds] %s\n' $((SECONDS - STARTED)) "$*"; }
pack_logs() { tar -C "$WORK" -czf "$OUT/logs.tar.gz" logs 2>/dev/null; }
# A part's JSON even when it died before writing its own.
ensure_json() { [[ -s $1 ]] || printf '{"status": "%s", "exit_code": %s}\n' "$2" "$3" >"$1"; }

say "mode $MODE; out $OUT; budgets: throughput ${THROUGHPUT_S}s, smoke ${SMOKE_S}s, determinism ${DETERMINISM_S}s"
# ---------------------------------------------------------------- environment
if [[ -f .device/manifest.json ]]; then
  "$PY" benchmarks/device/deps.py install --carried .device --target "$SITE" || say "warning: install failed"
else
  say "warning: no .device/ (bash benchmarks/device/prepare.sh, then carry it): using $PY's packages as they are"
fi
export PYTHONPATH="$ROOT/src:$SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export PATH="$(dirname "$(command -v "$PY")"):$PATH"  # Snakemake's jobs run `python` from PATH
"$PY" - <<'EOF'
import importlib.metadata as m, sys
import torch
print("python", sys.version.split()[0], "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")
for name in ("deepspeed", "snakemake", "datasets", "pyarrow", "huggingface-hub", "pandas", "numpy", "pydantic",
             "jsonschema", "matplotlib"):
    try:
        print(f"  {name} {m.version(name)}")
    except m.PackageNotFoundError:
        print(f"  {name} MISSING")
import deepspeed, snakemake, datasets  # noqa: E401,F401  a missing package shows here, before the parts
EOF
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv
pack_logs

# ---------------------------------------------------------------- (i) throughput
say "(i) throughput"
if [[ $MODE == cpu ]]; then
  sizes=(--device cpu --sizes tiny)
else
  sizes=(--device cuda)
fi
timeout -k 15 "$THROUGHPUT_S" "$PY" benchmarks/gpu_throughput.py "${sizes[@]}" --out "$OUT/throughput.json" \
  --logs "$LOGS/throughput" --workdir "$WORK/throughput" --budget-s $((THROUGHPUT_S - 10))
rc=$?
ensure_json "$OUT/throughput.json" failed "$rc"
rm -rf "$WORK/throughput"
say "(i) done, exit $rc"
pack_logs

# ---------------------------------------------------------------- (iii) determinism, beside (ii)
say "(iii) determinism (in the background)"
if [[ $MODE == cpu ]]; then
  reduced=(--device cpu --context 64 --batch-size 8 --threads 1 --jobs 1)
else
  reduced=(--device cuda --threads 1)
fi
timeout -k 15 "$DETERMINISM_S" "$PY" benchmarks/gpu_throughput.py --mode determinism "${reduced[@]}" \
  --out "$OUT/determinism.json" --logs "$LOGS/determinism" --workdir "$WORK/determinism" \
  --budget-s $((DETERMINISM_S - 10)) >"$LOGS/determinism.out" 2>&1 &
determinism_pid=$!

# ---------------------------------------------------------------- (ii) GPU smoke study
say "(ii) smoke study"
smoke_dir=$WORK/smoke  # a copy of the workflow, so that results/ and .snakemake/ of this tree stay as they are
mkdir -p "$smoke_dir"
tar --exclude=./.device --exclude=./.git --exclude=./results --exclude=./.snakemake --exclude=./.venv -cf - . |
  tar -C "$smoke_dir" -xf -
mkdir -p "$smoke_dir/results/downloads"
[[ -d .device/downloads ]] && cp -r .device/downloads/. "$smoke_dir/results/downloads/"
presets=(presets/smoke.yaml presets/gpu-smoke.yaml)
if [[ $MODE == cpu ]]; then  # the GPU preset only checked and planned here; the CPU smoke study runs
  (cd "$smoke_dir" && "$PY" -m snakemake -n --quiet --configfile "${presets[@]}") >"$LOGS/smoke-gpu-plan.log" 2>&1 ||
    say "warning: the GPU smoke preset does not plan (see smoke-gpu-plan.log)"
  presets=(presets/smoke.yaml)
fi
# The study's folder, results/<study>, as the last preset naming a study sets it (downloads stay in results/downloads).
study=results/$("$PY" -c 'import sys, yaml
study = None
for name in sys.argv[1:]:
    study = (yaml.safe_load(open(name)) or {}).get("study", study)
print(study)' config.yaml "${presets[@]}")
smoke_start=$SECONDS
# Every job asks for gpu: 1; the tiny models share the one GPU, so as many run at once as there are cores.
(cd "$smoke_dir" && timeout -k 15 "$SMOKE_S" "$PY" -m snakemake --configfile "${presets[@]}" --cores "$CORES" \
  --resources gpu="$CORES" --scheduler greedy --report-after-run --report "$smoke_dir/report.html") \
  >"$LOGS/smoke.log" 2>&1
rc=$?
smoke_s=$((SECONDS - smoke_start))
cp -r "$smoke_dir/$study/logs" "$LOGS/smoke-job-logs" 2>/dev/null
for file in "$study/fit/transfer_fit.json" "$study/fit/answer.rst" report.html; do
  [[ -f $smoke_dir/$file ]] && cp "$smoke_dir/$file" "$OUT/"
done
"$PY" - "$smoke_dir" "$rc" "$smoke_s" "${presets[*]}" "$study" >"$OUT/smoke.json" <<'EOF'
import json, re, sys
from pathlib import Path
root, rc, seconds, presets = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4].split()
results = root / sys.argv[5]  # the study's folder, results/<study>
log = (Path(sys.argv[1]).parents[0] / "logs" / "smoke.log")
text = log.read_text(errors="replace") if log.exists() else ""
done = re.findall(r"(\d+) of (\d+) steps \((\d+)%\) done", text)
summaries = [json.loads(p.read_text()) for p in results.glob("runs/**/summary.json")]
fit = results / "fit/transfer_fit.json"
print(json.dumps({
    "status": "ok" if rc == 0 else ("timeout" if rc == 124 else "failed"), "exit_code": rc, "seconds": seconds,
    "presets": presets, "steps_done": done[-1][:2] if done else None,
    "runs": len(summaries), "largest_peak_gpu_memory_gib": max(
        (s["peak_gpu_memory_gib"] for s in summaries if s.get("peak_gpu_memory_gib") is not None), default=None),
    "runs_table_lines": len((results / "runs.csv").read_text().splitlines())
    if (results / "runs.csv").exists() else None,
    "fit": "transfer_fit.json" if fit.exists() else None,
    "errors": [line for line in text.splitlines() if "Error" in line][-10:],
}, indent=1, default=str))
EOF
say "(ii) done in ${smoke_s}s, exit $rc"
pack_logs

wait "$determinism_pid"
rc=$?
ensure_json "$OUT/determinism.json" failed "$rc"
say "(iii) done, exit $rc"
pack_logs

# ---------------------------------------------------------------- micro-batch search with the time left
left=$((TOTAL_S - (SECONDS - STARTED) - 15))
if ((left >= 60)); then
  say "micro-batch search with ${left}s"
  timeout -k 15 "$left" "$PY" benchmarks/gpu_throughput.py --mode search "${sizes[@]}" --out "$OUT/search.json" \
    --logs "$LOGS/search" --workdir "$WORK/search" --budget-s $((left - 10))
  say "search done, exit $?"
else
  say "no time left for the micro-batch search (${left}s)"
fi
say "finished; files in $OUT:"
rm -f "$OUT"/*.tmp  # a JSON being rewritten when its part was stopped (its last complete version stays)
pack_logs
ls -la "$OUT"
