#!/usr/bin/env bash
# The worker alone (Kafka in, Kafka out; no ingress, no batcher) against the same engine called in-process, at the same
# concurrency, plus cold-start and warm-reload times of both models. Needs Kafka and PostgreSQL running
# (./infra/platform infra). Starts its own tiny-random worker on its own topic prefix and database, and removes them.
#   benchmarks/worker-vs-engine.sh [OUT_DIR]      (default benchmarks/reports/worker)
# ROUNDS (default 3): how many times each pair runs, the order swapped each round (bench --rounds); the report gives
# each round's ratio and their median.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:-$root/benchmarks/reports/worker}
py=${FERRY_HOME:-$HOME/.cache/ferry}/venv/bin/python
run_id=$(date +%s)
base_dsn=${FERRY_POSTGRES_DSN:-postgresql://ferry:ferry@127.0.0.1:55432/ferry}
export PYTHONPATH=$root FERRY_TOPIC_PREFIX="ferrybench-$run_id." FERRY_OTEL_EXPORTER=none
export FERRY_POSTGRES_DSN="${base_dsn%/*}/ferry_bench_$run_id"
export FERRY_WORKER_MODELS_DIR=${FERRY_WORKER_MODELS_DIR:-${FERRY_HOME:-$HOME/.cache/ferry}/models}
mkdir -p "$out"
cd "$root"

db() { "$py" -c "import asyncio, asyncpg, sys
async def main():
    c = await asyncpg.connect('$base_dsn'); await c.execute(sys.argv[1]); await c.close()
asyncio.run(main())" "$1"; }

worker_pid=
cleanup() {
  [[ -n $worker_pid ]] && kill -TERM "$worker_pid" 2>/dev/null && sleep 3 && kill -KILL -- "-$worker_pid" 2>/dev/null
  db "DROP DATABASE IF EXISTS ferry_bench_$run_id WITH (FORCE)" || true
  "$py" -c "import asyncio
from shared.settings import CommonSettings
from shared.kafka import delete_topics
asyncio.run(delete_topics(CommonSettings()))" || true
}
trap cleanup EXIT

db "CREATE DATABASE ferry_bench_$run_id"
"$py" -m shared.prepare >/dev/null
# bench MODEL CONCURRENCY PROMPTS [NAME_SUFFIX WORKER_ENV...]: a worker of MODEL over Kafka, then the engine in this
# process, on the same load. WORKER_ENV (VAR=value) changes the worker's settings only, never the engine's.
bench() {
  local model=$1 c=$2 n=$3 suffix=${4:-} port name="vs-engine-$1-c$2${4:+-$4}"
  shift $(($# < 4 ? $# : 4))
  port=$("$py" -c "from tests.e2e.platform import free_port; print(free_port())")
  setsid env FERRY_WORKER_MODEL="$model" FERRY_WORKER_PORT="$port" "$@" "$py" -m services.worker.main \
    >"$out/worker-$model${suffix:+-$suffix}.log" 2>&1 &
  worker_pid=$!
  for _ in $(seq 240); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.5; done
  "$py" -m benchmarks.bench --model "$model" --through-worker --compare-engine --rounds "${ROUNDS:-3}" \
    --concurrency "$c" --num-prompts "$n" --output-tokens 64:64 --input-words 32:128 --quiet --out "$out/$name" >/dev/null
  echo "$name: $(grep -m1 'output throughput' "$out/$name/report.md") $(grep -m1 '^Median ratio' "$out/$name/report.md")"
  kill -TERM "$worker_pid"; wait "$worker_pid" 2>/dev/null || true
  kill -KILL -- "-$worker_pid" 2>/dev/null || true; worker_pid=
}

bench tiny-random 1 32
bench tiny-random 16 512
# The same without the output screening's final embedding check (rules still screen): the worker's own overhead. The
# tiny model's random text fills the classifier's 256 word pieces, about 26 ms of CPU per completion.
bench tiny-random 16 512 no-final-embedding FERRY_SAFETY_OUTPUT_EMBEDDING_FINAL=false
bench smollm2-135m-instruct 16 48
# Both sides with the model on one OpenMP thread, the other core left to everything else, as vLLM sets up its own CPU
# worker on two cores (FERRY_WORKER_ENGINE_CPU_THREADS reaches the worker and the engine in-process alike).
FERRY_WORKER_ENGINE_CPU_THREADS=1 bench tiny-random 16 512 one-thread
FERRY_WORKER_ENGINE_CPU_THREADS=1 bench smollm2-135m-instruct 16 48 one-thread
for model in tiny-random smollm2-135m-instruct; do
  "$py" -m benchmarks.bench --model "$model" --start-times --out "$out/start-$model" 2>/dev/null | tail -n +1
done
