#!/bin/bash
# As run on 5 December: /work/main at d0fc79a (after), /tmp/ab-before a git worktree of 1ca72e8 (before), with
# gclog_hook.py installed in the virtualenv (see README.md).
export PATH=/root/.cache/ferry/venv/bin:$PATH
for round in 1 2; do
  for side in before after; do
    root=/work/main; [ $side = before ] && root=/tmp/ab-before
    cd $root
    ./infra/platform infra >/dev/null 2>&1
    rm -f /tmp/gclog.txt
    ZZ_GCLOG=1 FERRY_MODELS=tiny-random timeout 600 ./infra/platform up > /tmp/ab-up-$side-$round.log 2>&1
    sleep 5
    start=$(date +%s.%N)
    ./infra/platform bench --model tiny-random --concurrency 16 --num-prompts 1200 --output-tokens 64:64 --input-words 32:128 --out /tmp/ab-$side-$round-c16 --quiet > /dev/null 2>&1
    ./infra/platform bench --model tiny-random --concurrency 1 --num-prompts 200 --output-tokens 64:64 --input-words 32:128 --out /tmp/ab-$side-$round-c1 --quiet > /dev/null 2>&1
    end=$(date +%s.%N)
    awk -v s=$start -v e=$end '$1>=s && $1<=e' /tmp/gclog.txt > /tmp/ab-gc-$side-$round.txt
    echo "$side $round $start $end" >> /tmp/ab-times.txt
    ./infra/platform stop > /dev/null 2>&1
    sleep 5
  done
done
echo done > /tmp/ab-done
