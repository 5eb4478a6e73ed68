#!/usr/bin/env bash
# Set up .venv if needed, then run the study described by config.yaml. Extra arguments go to snakemake,
# e.g. `--configfile presets/smoke.yaml`, `-n` for a dry run, `--workflow-profile profiles/slurm` for SLURM.
# Without --workflow-profile, Snakemake applies profiles/default (local execution) by itself.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
export SNAKEMAKE_OUTPUT_CACHE="${SNAKEMAKE_OUTPUT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/transfer-scaling/output-cache}"
mkdir -p "$SNAKEMAKE_OUTPUT_CACHE"
exec .venv/bin/snakemake "$@" --cache
