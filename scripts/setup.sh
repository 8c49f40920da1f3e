# Sourced by quickstart.sh and test.sh: create or reuse .venv and install the project into it.
# Idempotent: a second run finds the install stamp for this pyproject.toml and does nothing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  python -m pip install -q --upgrade pip
  # torch first, pinned: left to the resolver, `torch` becomes a multi-GB CUDA wheel on a CPU box.
  python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0"
  python -m pip install -q -e ".[dev]"
  touch "$stamp"
fi
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"  # one auth mode for ray start, job submit and the driver
