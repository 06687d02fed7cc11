"""On CPU the worker's engine processes fork from a server process that has imported torch and vLLM already
(services/worker/engine_processes.py, FERRY_WORKER_ENGINE_PROCESS_SERVER) instead of vLLM's spawn, which imports them
again for every model. An engine started either way answers the same (logprobs too, whose ranks a kernel compiled in
the server counts), is named as vLLM names it, runs at the priority it is given and is gone once shut down. Real vLLM,
tiny model, in this process. (That its thread setting reaches it: test_engine_threads.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from services.worker.engine import Engine, EngineConfig
from shared.contracts import ChatMessage, SamplingParams, TokenLogprob
from shared.registry import read_seed
from tests.e2e.platform import MODELS_DIR, ROOT, TINY_MODEL


@dataclass
class Started:
    answer: str
    logprobs: list[TokenLogprob]  # of each token of the answer, with the 3 most likely at its position
    process_name: str
    parent_command: str  # the command line of the EngineCore process's parent
    parent_is_this_process: bool
    gone_after_shutdown: bool


async def start_and_ask(process_server: bool) -> Started:
    record = next(m for m in read_seed() if m.id == TINY_MODEL)
    me = psutil.Process()
    before = {c.pid for c in me.children(recursive=True)}
    engine = await Engine.start(
        EngineConfig(TINY_MODEL, MODELS_DIR / TINY_MODEL, record.max_model_len, 0.25, 4, process_server=process_server)
    )
    try:
        # the process that runs the model: the new one with threads (vLLM's I/O and OpenMP threads); the server and
        # multiprocessing's resource tracker run one each
        (core,) = [c for c in me.children(recursive=True) if c.pid not in before and c.num_threads() > 4]
        name, parent = core.name(), core.parent()
        assert parent is not None
        prompt = engine.render_prompt([ChatMessage(role="user", content="Name three colours.")])
        answer, logprobs = "", []
        sampling = SamplingParams(max_tokens=24, temperature=0, logprobs=3)
        async for step in engine.generate(uuid.uuid4().hex, prompt, sampling):
            answer += step.text
            logprobs += step.logprobs
    finally:
        await engine.shutdown()
    _, alive = await asyncio.to_thread(psutil.wait_procs, [core], timeout=30)
    return Started(answer, logprobs, name, " ".join(parent.cmdline()), parent.pid == me.pid, not alive)


def test_an_engine_forked_from_the_server_answers_as_one_vllm_spawns() -> None:
    forked = asyncio.run(start_and_ask(process_server=True))
    spawned = asyncio.run(start_and_ask(process_server=False))

    assert forked.answer and forked.answer == spawned.answer  # greedy: the same model gives the same tokens
    # the most likely tokens at each position, picked by their ranks, which the kernel compiled ahead counts
    assert forked.logprobs and all(len(token.top_logprobs) == 3 for token in forked.logprobs)
    assert forked.logprobs == spawned.logprobs
    assert forked.process_name == spawned.process_name == "VLLM::EngineCore"
    assert "multiprocessing.forkserver" in forked.parent_command and not forked.parent_is_this_process
    assert spawned.parent_is_this_process
    assert forked.gone_after_shutdown and spawned.gone_after_shutdown


HOLD_AN_ENGINE = """
import asyncio
from pathlib import Path
from services.worker.engine import Engine, EngineConfig

async def main():
    await Engine.start(EngineConfig({model!r}, Path({path!r}), 2048, 0.25, 4, process_server={process_server}))
    print("ready", flush=True)
    await asyncio.sleep(600)

if __name__ == "__main__":  # a spawned process imports this module again
    asyncio.run(main())
"""


@pytest.mark.parametrize("process_server", [True, False], ids=["forked-from-the-server", "spawned"])
def test_a_killed_workers_engine_process_ends_with_it(process_server: bool, tmp_path: Path) -> None:
    """kill -9 of the worker's process alone (not its process group), as when the kernel's OOM killer picks it: its
    engine process, and the server it was forked from, end too."""
    script = tmp_path / "hold_an_engine.py"
    script.write_text(
        HOLD_AN_ENGINE.format(model=TINY_MODEL, path=str(MODELS_DIR / TINY_MODEL), process_server=process_server)
    )
    worker = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=ROOT,
        env=os.environ | {"PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert worker.stdout is not None
        assert any(line.strip() == "ready" for line in iter(worker.stdout.readline, ""))  # vLLM logs there too
        left = psutil.Process(worker.pid).children(recursive=True)
        names = {p.name() for p in left}
        assert "VLLM::EngineCore" in names
        worker.kill()
        worker.wait()
        _, alive = psutil.wait_procs(left, timeout=60)
        assert not alive, f"still running after the worker was killed: {[p.name() for p in alive]}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGKILL)


async def engine_thread_priorities(process_server: bool, nice: int) -> tuple[int, list[int]]:
    """The nice value of a started engine's process, and of each of its threads that computed for a few requests."""
    record = next(m for m in read_seed() if m.id == TINY_MODEL)
    me = psutil.Process()
    before = {c.pid for c in me.children(recursive=True)}
    config = EngineConfig(TINY_MODEL, MODELS_DIR / TINY_MODEL, record.max_model_len, 0.25, 4)
    engine = await Engine.start(dataclasses.replace(config, process_server=process_server, cpu_nice=nice))
    try:
        (core,) = [c for c in me.children(recursive=True) if c.pid not in before and c.num_threads() > 4]
        prompt = engine.render_prompt([ChatMessage(role="user", content="Name three colours.")])
        start = {t.id: t.user_time + t.system_time for t in core.threads()}

        async def ask() -> None:
            async for _ in engine.generate(uuid.uuid4().hex, prompt, SamplingParams(max_tokens=64, temperature=0)):
                pass

        await asyncio.gather(*[ask() for _ in range(8)])
        busy = [t.id for t in core.threads() if t.user_time + t.system_time - start.get(t.id, 0.0) > 0.01]

        def nice_of(thread: int) -> int:  # field 19 of its stat, after the command, which may hold spaces
            stat = Path(f"/proc/{core.pid}/task/{thread}/stat").read_text()
            return int(stat[stat.rindex(")") + 2 :].split()[16])

        return core.nice(), [nice_of(thread) for thread in busy]
    finally:
        await engine.shutdown()


@pytest.mark.parametrize("process_server", [True, False], ids=["forked-from-the-server", "spawned"])
def test_an_engine_process_and_the_threads_that_compute_run_at_the_priority_it_is_given(process_server: bool) -> None:
    """FERRY_WORKER_ENGINE_NICE: on cores shared with the services, the model's threads yield to them. (A spawned
    process has a few idle threads from before the setting applies.)"""
    assert psutil.Process().nice() == 0
    process, computing = asyncio.run(engine_thread_priorities(process_server, nice=7))
    assert process == 7 and computing and set(computing) == {7}
    process, computing = asyncio.run(engine_thread_priorities(process_server, nice=0))
    assert process == 0 and set(computing) == {0}


SERVER_COMPILES = """
import os
import torch
from torch._dynamo.utils import counters
import vllm.v1.engine.core, vllm.v1.worker.cpu_worker  # imported before, as the server does
threads, tasks = torch.get_num_threads(), len(os.listdir("/proc/self/task"))
import services.worker.sampler_kernels
print(counters["stats"]["unique_graphs"], len(os.listdir("/proc/self/task")) - tasks, torch.get_num_threads() - threads)
"""


def test_the_server_compiles_the_sampler_kernel_and_keeps_no_thread_from_it() -> None:
    """The engine process server's last import compiles vLLM's token rank kernel, so an engine forked from it does not
    wait for Inductor on its first request for logprobs. A process that forks must not be left with threads (tqdm's
    monitor, OpenMP's pool) or another thread count."""
    done = subprocess.run(
        [sys.executable, "-c", SERVER_COMPILES],
        cwd=ROOT,
        env=os.environ | {"PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    graphs, threads_added, thread_count_change = map(int, done.stdout.split()[-3:])
    assert graphs == 1
    assert threads_added == 0
    assert thread_count_change == 0
