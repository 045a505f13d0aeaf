#!/bin/bash
# usage: evf-watch.sh SBS_PID  -> relay CPU per row published during a 5 s window of the first "on" run
SBS=$1
for i in $(seq 1 120); do
  for p in $(pgrep -f "balance relay"); do
    pp=$(ps -o ppid= -p $p | tr -d ' '); gp=$(ps -o ppid= -p $pp | tr -d ' '); ggp=$(ps -o ppid= -p $gp | tr -d ' ')
    if [ "$gp" = "$SBS" ] || [ "$ggp" = "$SBS" ]; then
      sleep 2
      db=$(ls -l /proc/$p/fd 2>/dev/null | grep -o "/tmp/[^ ]*shard-0.db$" | head -1)
      hz=$(getconf CLK_TCK)
      read_cpu() { awk '{print $14+$15}' /proc/$1/stat; }
      seq() { sqlite3 "$db" "SELECT value FROM meta WHERE name='events_amqp_seq'" 2>/dev/null || python3 -c "import sqlite3;print(sqlite3.connect('$db').execute(\"SELECT value FROM meta WHERE name='events_amqp_seq'\").fetchone()[0])"; }
      rab=$(pgrep -f beam.smp | head -1)
      c0=$(read_cpu $p); s0=$(seq); r0=$(read_cpu $rab); srv0=$(read_cpu $pp)
      sleep 5
      c1=$(read_cpu $p); s1=$(seq); r1=$(read_cpu $rab); srv1=$(read_cpu $pp)
      python3 -c "
hz=$hz; rows=$s1-$s0
print(f'rows {rows} in 5 s ({rows/5:.0f}/s); relay CPU {($c1-$c0)/hz/5:.2f} core = {($c1-$c0)/hz/max(rows,1)*1e6:.1f} us/row; rabbit {($r1-$r0)/hz/5:.2f} core = {($r1-$r0)/hz/max(rows,1)*1e6:.1f} us/row; server {($srv1-$srv0)/hz/5:.2f} core')"
      exit 0
    fi
  done
  sleep 0.5
done
