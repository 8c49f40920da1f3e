#!/usr/bin/env bash
# A search on a simulated autoscaling Ray cluster on this machine (cluster/local-autoscaling.yaml):
# nodes added from 0, a node preempted mid-trial, the trial resumed, idle nodes removed. Prints a
# timeline and, last, one JSON line. Needs port 6379 free (no other Ray cluster running).
source "$(dirname "$0")/setup.sh"
exec python "$(dirname "$0")/simulated_cluster.py" "$@"
