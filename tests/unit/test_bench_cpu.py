from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.bench.cpu import CpuMeter, infra_pids, tree_cpu_seconds
from benchmarks.bench.metrics import RequestResult, Summary, summarize
from benchmarks.bench.overhead import Step, cpu_table, markdown

BURN = "import time\nend = time.process_time() + {seconds}\nwhile time.process_time() < end: pass\n"


def burn(seconds: float) -> subprocess.Popen[bytes]:
    """A child of this process that uses ``seconds`` of CPU, then exits."""
    return subprocess.Popen([sys.executable, "-c", BURN.format(seconds=seconds)])


def test_a_component_counts_the_cpu_of_its_children_alive_and_reaped() -> None:
    meter = CpuMeter({"this process": os.getpid()})
    meter.start()
    child = burn(0.5)
    child.wait()  # reaped: its time moves to this process's children's time
    reaped = meter.stop()["this process"]
    assert reaped >= 0.45

    meter.start()
    child = burn(0.5)
    try:
        while tree_cpu_seconds({"child": child.pid}).get("child", 0.0) < 0.3:
            time.sleep(0.01)
        alive = meter.stop()["this process"]  # the child still runs: counted as a live descendant
    finally:
        child.wait()
    assert alive >= 0.3


def test_an_idle_component_costs_next_to_nothing() -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    try:
        tree_cpu_seconds({})  # the interpreter's start-up is done before the meter starts
        meter = CpuMeter({"sleeper": sleeper.pid})
        meter.start()
        burn(0.3).wait()  # CPU used by another process is not the sleeper's
        assert meter.stop()["sleeper"] < 0.05
    finally:
        sleeper.kill()
        sleeper.wait()


def test_infra_pids_keeps_running_processes_and_skips_stale_or_missing_pid_files(tmp_path: Path) -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    try:
        (tmp_path / "kafka.pid").write_text(f"{sleeper.pid}\n")
        (tmp_path / "redis.pid").write_text(f"{gone.pid}\n")
        assert infra_pids(tmp_path) == {"kafka": sleeper.pid}
    finally:
        sleeper.kill()
        sleeper.wait()


def _summary(completed: int) -> Summary:
    results = [RequestResult(True, 0.0, 1.0, [0.1, 0.5], 10, 2) for _ in range(completed)]
    return summarize(results, 1.0)


def test_cpu_table_gives_milliseconds_per_completed_request_by_component_and_against_vllm() -> None:
    step = Step(
        concurrency=16,
        summaries={"ferry": _summary(4), "vllm-direct": _summary(2), "engine-in-process": _summary(4)},
        hops="",
        order=["ferry", "vllm-direct", "engine-in-process"],
        load_average=1.0,
        cpu_seconds={
            "ferry": {"worker-tiny": 0.8, "kafka": 0.04, "ingress": 0.12, "safety": 0.2, "batcher": 0.04},
            "vllm-direct": {"vLLM server": 0.5},
        },
    )
    lines = cpu_table([step])
    header = next(line for line in lines if line.startswith("| load"))
    assert header.split(" | ")[2:7] == ["ingress", "safety", "batcher", "worker-tiny", "kafka"]
    row = lines[-2].strip("| ").split(" | ")
    # per request: ferry 1.2 s / 4 = 300 ms; vLLM 0.5 s / 2 = 250 ms
    assert row == ["16 streams", "300.0", "30.0", "50.0", "10.0", "200.0", "10.0", "100.0", "250.0", "1.20"]


def test_a_paced_step_is_named_by_its_interval_in_every_table() -> None:
    summaries = {"ferry": _summary(2), "vllm-direct": _summary(2), "engine-in-process": _summary(2)}
    order = ["ferry", "vllm-direct", "engine-in-process"]
    seconds = {"ferry": {"ingress": 0.1}, "vllm-direct": {"vLLM server": 0.1}}
    paced = Step(1, summaries, "hops of the paced step", order, 1.0, seconds, paced_s=0.5)
    closed = Step(1, summaries, "hops of the closed loop", order, 1.0, seconds)
    text = markdown([paced, closed], "bench --overhead --paced 0.5 --concurrencies 1")
    rows = [line.split(" | ")[0].strip("| ") for line in text.splitlines() if line.startswith("| ")]
    assert rows.count("one request every 0.5 s") == 3  # two baselines, then the CPU table
    assert rows.count("1 streams") == 3
    assert "## Hops at one request every 0.5 s (ferry run, from the services' spans)\n\nhops of the paced step" in text


def test_no_cpu_table_without_figures() -> None:
    step = Step(16, {"ferry": _summary(1)}, "", ["ferry"], 1.0, {})
    assert cpu_table([step]) == []


def _summary_ttft(ttft_s: float) -> Summary:
    return summarize([RequestResult(True, 0.0, 1.0, [ttft_s, 0.9], 10, 2)], 1.0)


def test_rounds_of_the_same_load_give_each_round_s_added_ttft_and_their_median() -> None:
    order = ["ferry", "vllm-direct", "engine-in-process"]
    steps = [
        Step(
            16,
            {"ferry": _summary_ttft(f), "vllm-direct": _summary_ttft(v), "engine-in-process": _summary_ttft(e)},
            "",
            order,
            1.0,
            {},
            round=r,
        )  # fmt: skip
        for r, (f, v, e) in enumerate([(0.30, 0.10, 0.05), (0.50, 0.10, 0.10), (0.40, 0.20, 0.10)], start=1)
    ]
    text = markdown(steps, "bench --overhead --rounds 3 --concurrencies 16")
    assert "| 16 streams | engine-in-process | +250.0, +400.0, +300.0 | +300.0 |" in text
    assert "| 16 streams | vllm-direct | +200.0, +400.0, +200.0 | +200.0 |" in text
    rows = [line.split(" | ")[0].strip("| ") for line in text.splitlines() if line.startswith("| 16 streams, round")]
    assert rows == ["16 streams, round 1"] * 2 + ["16 streams, round 2"] * 2 + ["16 streams, round 3"] * 2
