#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv with every pinned dependency.
# Idempotent: reinstalls only when pyproject.toml changed since the last successful install.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
"$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
  || { echo "error: Python 3.11 is required (found $("$PYTHON" --version 2>&1))" >&2; exit 1; }
command -v g++ >/dev/null 2>&1 || echo "warning: no g++ found; DeepSpeed may need it for some ops" >&2
command -v npm >/dev/null 2>&1 || echo "warning: no npm found; the default 'code' corpus is fetched with npm pack" >&2

stamp=.venv/.installed-pyproject-sha256
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [[ -x .venv/bin/python && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi
[[ -x .venv/bin/python ]] || "$PYTHON" -m venv .venv
echo "setting up .venv (pinned dependencies; torch==2.13.0) ..." >&2
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test]'
.venv/bin/python -m pip check
echo "$want" > "$stamp"
