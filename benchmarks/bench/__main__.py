"""The bench command: ``./infra/platform bench [options]`` (or ``python -m benchmarks.bench``).

Drives an OpenAI-compatible endpoint with a chosen load shape and prompt set, prints a summary and writes a report
(JSON, markdown, PNG plots). With --compare-vllm or --compare, a second target runs right after on the same prompts and
arrivals, and the report adds the ratios (first / second). --compare-engine runs the engine in this process instead."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Coroutine
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.bench import cache, load, prompts, report, start_times
from benchmarks.bench.metrics import RequestResult, parse_slos, summarize
from benchmarks.bench.runner import Load, Target, run
from benchmarks.bench.targets import run_in_process, run_through_worker, vllm_server
from shared.registry import read_seed
from shared.runtime import run as run_event_loop

ROOT = Path(__file__).resolve().parents[2]


def _range(text: str) -> tuple[int, int]:
    low, _, high = text.partition(":")
    return int(low), int(high or low)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-url", default="http://127.0.0.1:8000/v1", help="the endpoint to measure (ends in /v1)")
    p.add_argument("--name", default="ferry", help="label of that target in the report")
    p.add_argument(
        "--api-key",
        default=os.environ.get("FERRY_API_KEY", "bench"),
        help="key sent to --base-url and --compare (default $FERRY_API_KEY; `platform bench` sets the local dev key)",
    )
    p.add_argument("--model", default="tiny-random", help="model id to request")
    p.add_argument("--compare", metavar="NAME=URL", help="a second OpenAI-compatible target to run on the same load")
    p.add_argument(
        "--compare-vllm",
        action="store_true",
        help="start vLLM's own OpenAI server on the same model folder and run it as the second target",
    )
    p.add_argument(
        "--compare-engine",
        action="store_true",
        help="run ferry's engine adapter in this process (no HTTP, no Kafka) as the second target",
    )
    p.add_argument(
        "--compare-cache",
        action="store_true",
        help="send the same requests twice to the target (misses, then response cache hits) and compare latency; "
        "the target must cache them: temperature 0 and the key of a tenant that retains text (--api-key)",
    )
    p.add_argument(
        "--through-worker",
        action="store_true",
        help="measure the running worker of --model through Kafka alone (batches in, replies out), not --base-url",
    )
    p.add_argument(
        "--start-times",
        action="store_true",
        help="only measure --model's cold start (registry to first token) and warm reload, with its engine process "
        "forked from the preloaded server and spawned, side by side (see bench/start_times.py)",
    )
    p.add_argument(
        "--start-rounds", type=int, default=3, help="--start-times: rounds, each measuring both ways (default 3)"
    )
    p.add_argument(
        "--compare-batching",
        action="store_true",
        help="no batching vs each batcher profile, each on a private platform started here (see bench/batching.py)",
    )
    p.add_argument(
        "--overhead",
        action="store_true",
        help="the time ferry adds to TTFT and TPOT vs vLLM's own server on the same model, at each --concurrencies, "
        "on a private platform started from this checkout (see bench/overhead.py)",
    )
    p.add_argument(
        "--concurrencies",
        type=lambda text: [int(c) for c in text.split(",")],
        default=[1, 16, 64],
        help="with --overhead: concurrent streams of each step, comma-separated",
    )
    p.add_argument(
        "--paced",
        type=float,
        metavar="SECONDS",
        help="with --overhead: first a step of single requests sent every SECONDS (open loop, the same instants for "
        "every target), so that every target's engine is idle before each request, as a closed loop at one stream "
        "leaves only ferry's (see bench/overhead.py)",
    )
    p.add_argument(
        "--low-load-prompts",
        type=int,
        default=20,
        help="with --compare-batching: requests sent one at a time to measure the wait the batcher adds",
    )
    p.add_argument(
        "--baseline-first",
        action="store_true",
        help="run the second target first (ratios stay first / second), to rule out an order effect",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="with a second target: run the pair this many times, the order swapped each round, and report each "
        "round's throughput ratio and their median besides the pooled tables (a shared machine's speed drifts); "
        "with --overhead: every load this many times, and each round's added time and their median",
    )
    p.add_argument("--prompts", choices=["synthetic", "conversations", "trace"], default="synthetic")
    p.add_argument("--input-words", type=_range, default=(32, 128), help="synthetic prompt length range, LOW:HIGH")
    p.add_argument("--output-tokens", type=_range, default=(64, 64), help="max_tokens range, LOW:HIGH")
    p.add_argument("--trace", type=Path, help="JSONL trace to replay (offset_s, prompt_tokens, output_tokens)")
    p.add_argument(
        "--shape",
        choices=["burst", "poisson", "gamma", "ramp"],
        default="burst",
        help="arrivals: burst (all at once, use --concurrency), poisson, gamma (--burstiness), ramp",
    )
    p.add_argument("--rate", type=float, help="requests per second (poisson, gamma, ramp start)")
    p.add_argument("--ramp-to", type=float, help="requests per second at the end of a ramp")
    p.add_argument("--burstiness", type=float, default=1.0, help="gamma shape: <1 burstier, 1 = poisson")
    p.add_argument("--concurrency", type=int, help="most requests in flight at once")
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--slo",
        action="append",
        default=[],
        metavar="METRIC:MS",
        help="goodput SLO, repeatable: ttft:500 tpot:50 e2el:5000",
    )
    p.add_argument("--timeout", type=float, default=300, help="seconds before one request counts as failed")
    p.add_argument("--out", type=Path, help="report folder (default benchmarks/results/<time>)")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    return p.parse_args(argv)


def build_load(args: argparse.Namespace) -> tuple[list[prompts.BenchRequest], list[float]]:
    if args.prompts == "trace" or args.trace:
        if not args.trace:
            raise SystemExit("--prompts trace needs --trace FILE")
        entries = load.read_trace(args.trace)
        return prompts.from_trace(entries, seed=args.seed), [e.offset_s for e in entries]
    if args.prompts == "conversations":
        requests = prompts.conversations(args.num_prompts, seed=args.seed, output_tokens=args.output_tokens)
    else:
        requests = prompts.synthetic(args.num_prompts, args.input_words, args.output_tokens, seed=args.seed)
    offsets = load.arrival_offsets(
        len(requests), args.shape, rate=args.rate, burstiness=args.burstiness, ramp_to=args.ramp_to, seed=args.seed
    )
    return requests, offsets


@dataclass(frozen=True)
class Job:
    """One target's run: its label, where it is, and how to start it (in a fresh event loop)."""

    name: str
    where: str
    start: Callable[[], Coroutine[Any, Any, tuple[list[RequestResult], float, float]]]


def _local_model(model_id: str) -> tuple[Path, int]:
    """The built model folder and context length of a registry model, for targets that load it themselves."""
    record = next((m for m in read_seed() if m.id == model_id), None)
    if record is None:
        raise SystemExit(f"{model_id} is not in infra/models/models.yaml")
    models_dir = Path(os.environ.get("FERRY_WORKER_MODELS_DIR", Path.home() / ".cache" / "ferry" / "models"))
    return models_dir / model_id, record.max_model_len


def _redacted(argv: list[str]) -> list[str]:
    """The command line as written to reports: API keys replaced by ***."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] == "--api-key":
            arg = "***"
        elif arg.startswith("--api-key="):
            arg = "--api-key=***"
        out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.start_times:
        result = start_times.compare(args.model, args.start_rounds)
        comparison = start_times.format_comparison(result)
        print(comparison)
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            summary = {"machine": f"{os.cpu_count()} cores", **result}
            (args.out / "start-times.json").write_text(json.dumps(summary, indent=2) + "\n")
            (args.out / "report.md").write_text(comparison + "\n")
        return 0
    if args.overhead:
        return _overhead(args, argv)
    slos = parse_slos(args.slo)
    requests, offsets = build_load(args)
    if args.rounds < 1 or args.rounds > 1 and not (args.compare or args.compare_vllm or args.compare_engine):
        raise SystemExit("--rounds repeats a comparison of two targets: add --compare, --compare-vllm or "
                         "--compare-engine")  # fmt: skip
    if args.compare_cache:
        if args.baseline_first or args.compare or args.compare_vllm or args.compare_engine or args.through_worker:
            raise SystemExit("--compare-cache runs misses then hits on one target; it takes no other comparison")
        requests = cache.unique_to_run(requests)
    load = Load(requests, offsets, args.concurrency, args.timeout, show_progress=not args.quiet)
    out = args.out or ROOT / "benchmarks" / "results" / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)

    if args.compare_batching:
        return _compare_batching(args, load, out, slos, len(requests))

    def over_http(target: Target) -> Job:
        return Job(target.name, target.base_url, lambda: run(target, load))

    if args.through_worker:
        jobs = [Job("worker-over-kafka", "kafka", lambda: run_through_worker(args.model, load))]
    else:
        jobs = [over_http(Target(args.name, args.base_url.rstrip("/"), args.model, args.api_key))]
    with ExitStack() as stack:
        if args.compare_cache:
            jobs = [
                over_http(Target(name, args.base_url.rstrip("/"), args.model, args.api_key)) for name in ("miss", "hit")
            ]
        elif args.compare:
            name, _, url = args.compare.partition("=")
            jobs.append(over_http(Target(name, url.rstrip("/"), args.model, args.api_key)))
        elif args.compare_vllm:
            path, max_model_len = _local_model(args.model)
            print(f"starting vLLM's OpenAI server on {path} ...", file=sys.stderr)
            jobs.append(
                over_http(stack.enter_context(vllm_server(args.model, path, max_model_len, out / "vllm-server.log")))
            )
        elif args.compare_engine:
            path, max_model_len = _local_model(args.model)
            jobs.append(
                Job(
                    "engine-in-process",
                    f"in-process:{path}",
                    lambda: run_in_process(args.model, path, max_model_len, load),
                )
            )
        order = list(reversed(jobs)) if args.baseline_first else jobs
        rounds: list[report.Round] = []
        wall_start = time.time()
        for index in range(args.rounds):
            played = report.Round([], {})
            for job in order if index % 2 == 0 else reversed(order):
                results, started_at, duration = run_event_loop(job.start())
                played.order.append(job.name)
                played.runs[job.name] = report.TargetRun(
                    job.name, job.where, summarize(results, duration, slos), results, started_at
                )
            rounds.append(played)
        runs = rounds[0].runs if args.rounds == 1 else {job.name: report.pooled(job.name, rounds, slos) for job in jobs}
    config = {
        "command": ["bench", *_redacted(argv if argv is not None else sys.argv[1:])],
        "model": args.model,
        "prompts": args.prompts,
        "num_prompts": len(requests),
        "shape": args.shape,
        "rate": args.rate,
        "ramp_to": args.ramp_to,
        "burstiness": args.burstiness,
        "concurrency": args.concurrency,
        "input_words": list(args.input_words),
        "output_tokens": list(args.output_tokens),
        "seed": args.seed,
        "order": [job.name for job in order],
        "rounds": args.rounds,
        "slos_ms": slos,
        "machine": f"{os.cpu_count()} cores",
        # wall-clock window of the run, to find its spans in the services' trace files (benchmarks.bench.hops)
        "wall_clock": [wall_start, time.time()],
    }
    paths = report.write(out, config, [runs[job.name] for job in jobs])
    if args.compare_cache:
        figures = cache.cache_comparison(runs["miss"].results, runs["hit"].results)
        data = json.loads(paths["json"].read_text())
        paths["json"].write_text(json.dumps(data | {"cache": figures}, indent=2))
        with paths["markdown"].open("a") as md:
            md.write(cache.markdown(figures))
    if args.rounds > 1:
        first, second = (job.name for job in jobs)
        figures = report.round_ratios(rounds, first, second)
        data = json.loads(paths["json"].read_text())
        paths["json"].write_text(json.dumps(data | {"rounds": figures}, indent=2))
        with paths["markdown"].open("a") as md:
            md.write(report.rounds_markdown(figures, first, second))
    print(paths["markdown"].read_text())
    print(f"report: {out}", file=sys.stderr)
    return 0 if all(r.summary.completed for r in runs.values()) else 1


def _overhead(args: argparse.Namespace, argv: list[str] | None) -> int:
    from benchmarks.bench import overhead

    out = args.out or ROOT / "benchmarks" / "results" / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    path, max_model_len = _local_model(args.model)
    models_dir = Path(os.environ.get("FERRY_WORKER_MODELS_DIR", Path.home() / ".cache" / "ferry" / "models"))
    steps = overhead.run_overhead(
        args.model,
        path,
        max_model_len,
        args.concurrencies,
        args.input_words,
        args.output_tokens,
        models_dir,
        out,
        paced_s=args.paced,
        rounds=args.rounds,
    )
    command = " ".join(["bench", *_redacted(argv if argv is not None else sys.argv[1:])])
    print(overhead.write(out, steps, command).read_text())
    print(f"report: {out}", file=sys.stderr)
    return 0 if all(all(r.completed for r in s.summaries.values()) for s in steps) else 1


def _compare_batching(args: argparse.Namespace, load: Load, out: Path, slos: dict[str, float], count: int) -> int:
    from benchmarks.bench import batching

    models_dir = Path(os.environ.get("FERRY_WORKER_MODELS_DIR", Path.home() / ".cache" / "ferry" / "models"))
    wall_start = time.time()
    runs = batching.run_all(args.model, load, args.low_load_prompts, models_dir, slos, reverse=args.baseline_first)
    config = {
        "command": ["bench", *sys.argv[1:]],
        "model": args.model,
        "num_prompts": count,
        "shape": args.shape,
        "rate": args.rate,
        "concurrency": args.concurrency,
        "input_words": list(args.input_words),
        "output_tokens": list(args.output_tokens),
        "low_load_prompts": args.low_load_prompts,
        "seed": args.seed,
        "order": [r.name for r in runs],
        "machine": f"{os.cpu_count()} cores",
        "wall_clock": [wall_start, time.time()],
    }
    runs.sort(key=lambda r: list(batching.CONFIGS).index(r.name))
    paths = report.write(out, config, [r.run for r in runs])
    with paths["markdown"].open("a") as md:
        md.write("\n" + batching.markdown(runs))
    print(paths["markdown"].read_text())
    print(f"report: {out}", file=sys.stderr)
    return 0 if all(r.run.summary.completed for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
