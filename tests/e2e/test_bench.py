"""A short benchmark run against the real platform produces a complete report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks.bench.__main__ import main
from tests.e2e.platform import ROOT, TINY_MODEL, Platform


def test_short_run_in_comparison_mode_fills_every_field(platform: Platform, tmp_path: Path) -> None:
    url = f"{platform.base_url}/v1"
    status = main(
        [
            "--base-url",
            url,
            "--api-key",
            platform.api_key,
            "--name",
            "ferry",
            "--compare",
            f"again={url}",
            "--model",
            TINY_MODEL,
            "--num-prompts",
            "8",
            "--concurrency",
            "4",
            "--output-tokens",
            "16:24",
            "--input-words",
            "8:32",
            "--slo",
            "ttft:60000",
            "--slo",
            "e2el:60000",
            "--out",
            str(tmp_path),
            "--quiet",
        ]
    )
    assert status == 0

    data = json.loads((tmp_path / "report.json").read_text())
    assert [t["name"] for t in data["targets"]] == ["ferry", "again"]
    for target in data["targets"]:
        summary = target["summary"]
        assert summary["completed"] == 8 and summary["failed"] == 0, summary["failures"]
        assert summary["total_output_tokens"] >= 8 and summary["total_input_tokens"] > 0
        for field in ("request_throughput", "output_throughput", "total_token_throughput"):
            assert summary[field] > 0, field
        assert summary["goodput"] == summary["request_throughput"]  # SLOs generous enough for every request
        for metric in ("ttft", "tpot", "itl", "e2el"):
            dist = summary[metric]
            assert dist is not None, metric
            assert 0 < dist["median"] <= dist["p99"], (metric, dist)
        assert len(target["requests"]) == 8
        assert all(r["ok"] and r["chunk_times"] for r in target["requests"])
    assert {"output_throughput", "ttft.p99", "e2el.median"} <= set(data["ratios"])

    markdown = (tmp_path / "report.md").read_text()
    assert "| time to first token p99 (ms) |" in markdown and "ratio" in markdown
    for plot in ("latency_cdf.png", "throughput.png"):
        assert (tmp_path / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", plot


def test_bench_command_compares_with_the_engine_in_process(platform: Platform, tmp_path: Path) -> None:
    # as users run it: its own process, since it loads a vLLM engine
    command = [
        sys.executable,
        "-m",
        "benchmarks.bench",
        "--base-url",
        f"{platform.base_url}/v1",
        "--api-key",
        platform.api_key,
        "--model",
        TINY_MODEL,
        "--compare-engine",
        "--num-prompts",
        "6",
        "--concurrency",
        "3",
        "--output-tokens",
        "16:16",
        "--out",
        str(tmp_path),
        "--quiet",
    ]
    env = os.environ | {"PYTHONPATH": str(ROOT), "FERRY_WORKER_MODELS_DIR": str(platform.models_dir)}
    finished = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]

    data = json.loads((tmp_path / "report.json").read_text())
    assert [t["name"] for t in data["targets"]] == ["ferry", "engine-in-process"]
    engine = data["targets"][1]["summary"]
    assert engine["completed"] == 6 and engine["failed"] == 0
    assert engine["ttft"]["median"] > 0 and engine["output_throughput"] > 0
    assert data["ratios"]["output_throughput"] > 0
