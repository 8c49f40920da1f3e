#!/usr/bin/env bash
# Wheels for a GPU machine that has CUDA PyTorch (Python 3.12) but no package index: what the
# worker path needs beyond it, saved into .whl/ (git-ignored) to be carried there and installed
# with `pip install --no-index --no-deps --target DIR .whl/*.whl`. Run from the repo root, with
# the project's .venv present (DeepSpeed is an sdist: its wheel is the one pip built for .venv).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
mkdir -p .git/info && touch .git/info/exclude
grep -qx '/.whl/' .git/info/exclude || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
.venv/bin/pip wheel -q --no-deps -w .whl "deepspeed==$(.venv/bin/python -c 'from importlib.metadata import version; print(version("deepspeed"))')"
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
.venv/bin/pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
  -d .whl transformers==5.24.0 peft==0.21.2 hjson==3.1.0 pydantic==2.14.4 pydantic_core==2.50.5 \
  annotated-types==0.8.0 typing-inspection==0.4.5 typing_extensions
ls -la .whl
