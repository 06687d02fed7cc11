#!/usr/bin/env bash
# A/B: the safety stage's embedding model on 1 or 2 ONNX Runtime threads, the engine at nice 10 (the default now)
out=${1:-/tmp/ab-threads}; mkdir -p $out
cd /work/main
for i in 1 2; do for t in 2 1; do
  ./infra/platform stop >/dev/null 2>&1
  FERRY_MODELS=tiny-random FERRY_SAFETY_TORCH_THREADS=$t ./infra/platform up > $out/up-$t-$i.log 2>&1
  sleep 5
  /root/.cache/ferry/venv/bin/python benchmarks/reports/uvloop-ab/abloop.py threads$t-$i $out
done; done
./infra/platform stop >/dev/null 2>&1
