#!/bin/bash
# interleaved before/after pairs at fixed rates: $1 = backend, rest = scenario:maxrate
cd /work/main; ulimit -n 20000
backend=$1; shift; extra=""
[ "$backend" = mariadb ] && extra="--private-mariadb deploy/mariadb/balance.cnf"
out=benchmarks/session-20/ab-$backend; mkdir -p $out
for round in 1 2 3; do
  for spec in "$@"; do
    scen=${spec%%:*}; max=${spec##*:}
    .venv/bin/balance-service bench --scenario $scen --backend $backend $extra --modes single --rates 0.5,0.9 --max-rate $max --duration 10 \
      --before-python /work/base/.venv/bin/python --json $out/r$round-$scen.json > $out/r$round-$scen.txt 2>&1
    echo "$(date +%T) round $round $scen rc=$?"
  done
done
