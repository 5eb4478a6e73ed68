#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv with every pinned dependency.
# Idempotent: reinstalls only when pyproject.toml changed since the last successful install.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The Python versions every pin installs on (requires-python in pyproject.toml; tests/test_envs.py keeps
# the two in step). Without PYTHON, the first of python3.11, python3.12, python3.13 on PATH, else python3.
SUPPORTED_PYTHONS=(3.11 3.12 3.13)
if [[ -z "${PYTHON:-}" ]]; then
  for version in "${SUPPORTED_PYTHONS[@]}"; do
    if command -v "python$version" >/dev/null 2>&1; then PYTHON="python$version"; break; fi
  done
  PYTHON="${PYTHON:-python3}"
fi
found="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true)"
if [[ " ${SUPPORTED_PYTHONS[*]} " != *" $found "* ]]; then
  echo "error: Python ${SUPPORTED_PYTHONS[*]} supported, but $PYTHON is ${found:-not a working Python};" \
    "set PYTHON to one of: ${SUPPORTED_PYTHONS[*]/#/python}" >&2
  exit 1
fi
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
