#!/usr/bin/env bash
# Where the paper preset's MFU goes on one GPU: n302m at its preset micro-batch (64 x 4), compiled, with the chunked
# loss and deterministic kernels each switched off in turn, and the compiled plain-PyTorch reference without the
# chunked loss (the 46.5% of ../shared/notes/gpu-device.md held full logits). One JSON per setting under $OUT.
# DEVICE=cpu SIZE=tiny MICRO=8 runs its plumbing on a CPU. Built for one device call after benchmarks/device/prepare.sh here:
#   run: bash benchmarks/device/ablation.sh   carry [".device"]   timeout_s 600   (about 8 minutes)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/device-out}
WORK=${DEVICE_WORK:-/tmp/device-ablation}
SIZE=${SIZE:-n302m}
MICRO=${MICRO:-64}
PER_SETTING_S=${PER_SETTING_S:-130}
rm -rf "$WORK"
mkdir -p "$OUT" "$WORK/logs"
"$PY" benchmarks/device/deps.py install --carried .device --target "$WORK/site" >"$WORK/logs/install.log" 2>&1 ||
  echo "warning: install failed (see install.log)"
export PYTHONPATH="$PWD/src:$WORK/site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

measure() {  # name, then gpu_throughput.py options
  local name=$1
  shift
  echo "== $name: $*"
  timeout -k 10 "$PER_SETTING_S" "$PY" benchmarks/gpu_throughput.py --device "${DEVICE:-cuda}" --sizes "$SIZE" \
    --micro-batch "$SIZE=$MICRO" --trainer-compile on --out "$OUT/ablation-$name.json" \
    --logs "$WORK/logs/$name" --workdir "$WORK/$name" --budget-s $((PER_SETTING_S - 10)) "$@"
  rm -rf "${WORK:?}/$name"
}

measure preset --references none
measure plain-loss --loss-chunk-tokens 0 --references compiled
measure nondeterministic --no-deterministic --references none
measure plain-loss-nondeterministic --loss-chunk-tokens 0 --no-deterministic --references none
tar -C "$WORK" -czf "$OUT/ablation-logs.tar.gz" logs
ls -la "$OUT"
