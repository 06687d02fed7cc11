#!/usr/bin/env bash
out=${1:-/tmp/ab-nice}; mkdir -p $out
cd /work/main
for i in 1 2; do for v in 10 0; do
  ./infra/platform stop >/dev/null 2>&1
  FERRY_WORKER_ENGINE_NICE=$v ./infra/platform up > $out/up-$v-$i.log 2>&1
  sleep 5
  /root/.cache/ferry/venv/bin/python "$(dirname "$0")/../uvloop-ab/abloop.py" nice$v-$i $out
  ./infra/platform bench --model smollm2-135m-instruct --concurrency 16 --num-prompts 48 --output-tokens 64:64 --input-words 32:128 --quiet --out $out/smol-nice$v-$i > /dev/null 2>&1
  python3 -c "
import json; s=json.load(open('$out/smol-nice$v-$i/report.json'))['targets'][0]['summary']
print(json.dumps({'label': 'smol-nice$v-$i', 'tok_s': s['output_throughput'], 'ttft_p50': s['ttft']['median'], 'ttft_p99': s['ttft']['p99'], 'tpot_p50': s['tpot']['median']}))" | tee -a $out/smol.jsonl
done; done
./infra/platform stop >/dev/null 2>&1
