#!/usr/bin/env bash
# Set up .venv, then run the search on the embedded default (extra arguments go to the search).
source "$(dirname "$0")/setup.sh"
exec python -m gpt4all_ray.tune "$@"
