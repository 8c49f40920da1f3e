#!/usr/bin/env bash
# Set up .venv, lint, then run the whole test suite (unit, then real Ray/DeepSpeed/Optuna integration).
source "$(dirname "$0")/setup.sh"
ruff check gpt4all_ray tests
exec python -m pytest "$@"
