#!/usr/bin/env bash
# Build .device/ (ignored), what the GPU machine lacks for benchmarks/device/run.sh, within the 64 MiB that may
# travel: the project's dependencies it does not have (pure-Python ones copied from .venv, compiled ones as cp312
# wheels: benchmarks/device/deps.py) and the smoke study's pinned corpus files (it has no network). Run here:
#   bash benchmarks/device/prepare.sh
# then on the device, with carry [".device"]: bash benchmarks/device/run.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
LIMIT_MIB=64
DEST=.device
PY=.venv/bin/python
[[ -x $PY ]] || bash scripts/setup.sh

"$PY" benchmarks/device/deps.py collect --out "$DEST"
# The download cache of the workflow (results/downloads) is reused when it holds the pinned files.
mkdir -p "$DEST/downloads"
[[ -d results/downloads ]] && cp -rn results/downloads/. "$DEST/downloads/"
"$PY" benchmarks/device/deps.py downloads --out "$DEST/downloads" \
  --configfile presets/smoke.yaml presets/gpu-smoke.yaml

du -sh "$DEST"/* | sed 's/^/  /'
carried=$(du -sb "$DEST" | cut -f1)
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 -r du -cb 2>/dev/null | tail -1 | cut -f1)
total=$((carried + tree))
printf '%s: %.1f MiB; with the working tree (%.1f MiB): %.1f MiB of %d MiB\n' "$DEST" \
  "$(echo "$carried / 1048576" | bc -l)" "$(echo "$tree / 1048576" | bc -l)" "$(echo "$total / 1048576" | bc -l)" \
  "$LIMIT_MIB"
if ((total > LIMIT_MIB * 1048576)); then
  echo "error: over the $LIMIT_MIB MiB that may travel to the device" >&2
  exit 1
fi
