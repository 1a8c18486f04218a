#!/usr/bin/env bash
# Create .venv at the repository root and install the project with its server
# and test extras. Safe to run again: it only installs what is missing.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null 2>&1 || python=python3
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    # torch first and pinned, so nothing below can pull a CUDA build.
    .venv/bin/python -m pip install --quiet "torch==2.13.0"
    # The constraints file keeps torch pinned while the baselines extra
    # (traker, kronfluence) resolves its dependencies.
    .venv/bin/python -m pip install --quiet -e ".[server,test,baselines]" \
        -c scripts/constraints.txt
    rm -f .venv/.installed-*
    touch "$stamp"
fi
