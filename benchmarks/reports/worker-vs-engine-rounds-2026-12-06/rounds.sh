#!/usr/bin/env bash
# usage: MODEL=... PROMPTS=... COMPARE=1 ratio.sh OUT [WORKER_ENV...]  (root= is the checkout; infra must be up)
# One round: a worker of MODEL over Kafka, then the same engine in the bench process, on the same load.
set -euo pipefail
root=/work/main; out=$1; shift
py=$HOME/.cache/ferry/venv/bin/python
run_id=$(date +%s)
base_dsn=postgresql://ferry:ferry@127.0.0.1:55432/ferry
export PYTHONPATH=$root FERRY_TOPIC_PREFIX="ferrybench-$run_id." FERRY_OTEL_EXPORTER=none
export FERRY_POSTGRES_DSN="${base_dsn%/*}/ferry_bench_$run_id"
export FERRY_WORKER_MODELS_DIR=$HOME/.cache/ferry/models
mkdir -p "$out"; cd "$root"
db() { "$py" -c "import asyncio, asyncpg, sys
async def main():
    c = await asyncpg.connect('$base_dsn'); await c.execute(sys.argv[1]); await c.close()
asyncio.run(main())" "$1"; }
db "CREATE DATABASE ferry_bench_$run_id"
"$py" -m shared.prepare >/dev/null
port=$("$py" -c "from tests.e2e.platform import free_port; print(free_port())")
setsid env PYTHONPATH=$root FERRY_WORKER_MODEL=${MODEL:-tiny-random} FERRY_WORKER_PORT="$port" "$@" "$py" -m services.worker.main >"$out/worker.log" 2>&1 &
wpid=$!
for _ in $(seq 240); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.5; done
cpu() { for p in $(pgrep -s $wpid) $(pgrep -f kafka.Kafka); do awk -v p=$p '{printf "%s:%d ", p, $14+$15}' /proc/$p/stat; done; echo; }
echo "cpu before: $(cpu)" > "$out/cpu.txt"
( [[ -n ${SPY:-} ]] || exit 0; sleep 8; py-spy record -p $wpid -d 20 -r 200 -f raw -o "$out/worker.raw" --nonblocking >"$out/spy.log" 2>&1 ) &
spy_pid=$!
"$py" -m benchmarks.bench --model ${MODEL:-tiny-random} --through-worker ${COMPARE:+--compare-engine} --rounds ${ROUNDS:-5} --concurrency 16 --num-prompts ${PROMPTS:-768} \
    --output-tokens 64:64 --input-words 32:128 --quiet --out "$out/bench" >/dev/null
wait $spy_pid
echo "cpu after: $(cpu)" >> "$out/cpu.txt"; cat "$out/cpu.txt"
grep -E "output throughput|time per output token median|time to first token median" "$out/bench/report.md"
kill -TERM $wpid; sleep 5; kill -KILL -- -$wpid 2>/dev/null || true
db "DROP DATABASE IF EXISTS ferry_bench_$run_id WITH (FORCE)" || true
"$py" -c "import asyncio
from shared.settings import CommonSettings
from shared.kafka import delete_topics
asyncio.run(delete_topics(CommonSettings()))" || true
