#!/bin/bash
# Interleaved before/after pairs of tail rows at fixed rates (issue 18):
#
#   tools/tail_ab.sh OUT_DIR BACKEND SCENARIO:MAX_RATE ...
#
# Each round runs every scenario once with the bench's --before-python (the code before, then
# this code, in the same run), at the fractions RATES (default 0.5,0.9) of MAX_RATE, for
# ROUNDS rounds (default 3); the code before is the Python at BEFORE (default: a worktree's,
# /work/base/.venv/bin/python). MariaDB rows run on a private server with the project's
# settings. Each row's JSON and text go to OUT_DIR/r<round>-<scenario>.*;
# tools/tail_ab_summary.py OUT_DIR prints the medians.
set -u
out=$1 backend=$2; shift 2
rates=${RATES:-0.5,0.9} rounds=${ROUNDS:-3} before=${BEFORE:-/work/base/.venv/bin/python}
extra=()
[ "$backend" = mariadb ] && extra=(--private-mariadb deploy/mariadb/balance.cnf)
cd "$(dirname "$0")/.." && ulimit -n 20000 && mkdir -p "$out"
for round in $(seq "$rounds"); do
  for spec in "$@"; do
    scenario=${spec%%:*} max=${spec##*:}
    .venv/bin/balance-service bench --scenario "$scenario" --backend "$backend" "${extra[@]}" --modes single \
      --rates "$rates" --max-rate "$max" --duration 10 --before-python "$before" \
      --json "$out/r$round-$scenario.json" > "$out/r$round-$scenario.txt" 2>&1
    echo "$(date +%T) round $round $scenario rc=$?"
  done
done
