#!/bin/bash
# Session 20: the before code (a worktree of 3f5e62a at /work/base, compiled) beside this one.
cd /work/main; ulimit -n 20000
out=benchmarks/session-20
PYTHONPATH=src .venv/bin/python tools/side_by_side.py sqlite single64 hot "PYTHONPATH=/work/base/src,/work/main/src" 3 > $out/hot-single64-sqlite.txt 2>&1
echo "$(date +%T) side-by-side sqlite done"
tools/tail_ab.sh $out/ab-sqlite sqlite pending-hot:11840 pending-10k:7176 gateway:6792
tools/tail_ab.sh $out/ab-mariadb mariadb pending-hot:9532 pending-10k:8452 gateway:9452
PYTHONPATH=src .venv/bin/python tools/side_by_side.py mariadb single64 hot "PYTHONPATH=/work/base/src,/work/main/src" 3 > $out/hot-single64-mariadb.txt 2>&1
PYTHONPATH=src .venv/bin/python tools/side_by_side.py sqlite batch100 hot "PYTHONPATH=/work/base/src,/work/main/src" 3 > $out/hot-batch100-sqlite.txt 2>&1
echo "$(date +%T) all done"
