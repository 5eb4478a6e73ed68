#!/usr/bin/env bash
# Set up .venv if needed, then run the study described by config.yaml (extra arguments go to snakemake,
# e.g. --configfile presets/smoke.yaml, -n for a dry run, --profile profiles/slurm).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
export SNAKEMAKE_OUTPUT_CACHE="${SNAKEMAKE_OUTPUT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/transfer-scaling/output-cache}"
mkdir -p "$SNAKEMAKE_OUTPUT_CACHE"
profile=(--profile profiles/default)
for arg in "$@"; do [[ "$arg" == --profile* || "$arg" == --executor* ]] && profile=(); done
exec .venv/bin/snakemake "${profile[@]}" "$@" --cache
