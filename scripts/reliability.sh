#!/usr/bin/env bash
# The reliability battery: bad inputs and injected faults (worker kills, driver kill and resume),
# each test recording what it tried in a ledger, summed into results/reliability.md.
# Extra arguments go to pytest (e.g. -k bad_input for the fast part alone).
source "$(dirname "$0")/setup.sh"
ledger="$(mktemp)"
commit="$(git describe --always --dirty)"  # the tree the battery runs on, before it writes its report
GPT4ALL_RAY_LEDGER="$ledger" python -m pytest tests/reliability \
    tests/integration/test_worker_restart.py tests/integration/test_resume_experiment.py \
    tests/integration/test_storage.py "$@"
python -m tests.reliability.summary "$ledger" "bash scripts/reliability.sh $*" "$commit" > results/reliability.md
cat results/reliability.md
