#!/bin/bash
cd /work/main; ulimit -n 20000
out=benchmarks/session-19/ab-mariadb-gateway50; mkdir -p $out
for round in 1 2 3 4; do
  .venv/bin/balance-service bench --scenario gateway --backend mariadb --private-mariadb deploy/mariadb/balance.cnf --modes single --rates 0.5 --max-rate 9451 --duration 10 \
      --before-python /work/base/.venv/bin/python --json $out/r$round-gateway.json > $out/r$round-gateway.txt 2>&1
  echo "$(date +%T) round $round rc=$?"
done
