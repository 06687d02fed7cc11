"""Compiles vLLM's sampler kernel in the engine process server when the server imports this module
(engine_processes.PRELOAD; nothing else imports it).

vLLM counts the rank of each token it reports a logprob for with a kernel built by torch.compile (Inductor: C++ built
by the system's compiler) on the first request that asks for logprobs. In an engine process nothing had compiled before,
that request waited 16 s on a machine's first use (Inductor checks the CPU and builds its headers with the compiler)
and about 3 s after it, once Inductor's disk cache held those. Compiled once in the server, every engine forked from it
finds Inductor imported and its caches warm. It still compiles the kernel for its own thread count (Dynamo's guards
hold the count), in a fraction of a second.

The server compiles on one thread, so that the kernel runs without starting OpenMP's thread pool: a fork copies only
the thread that forks, and a child would inherit a pool whose threads it does not have. Its thread count is then put
back for the processes it forks.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def compile_sampler_kernels() -> None:
    """Compiles vLLM's token rank kernel in this process, on one thread, leaving no thread behind."""
    import torch
    import torch._inductor.config as inductor_config
    import tqdm
    from vllm.v1.sample.ops.logprobs import batched_count_greater_than

    threads = torch.get_num_threads()
    monitor_interval = tqdm.tqdm.monitor_interval
    # Inductor's progress bars would start tqdm's monitor thread, and its pool of compile processes more children of the
    # server: neither is wanted in a process that forks.
    tqdm.tqdm.monitor_interval = 0
    inductor_config.compile_threads = 1
    torch.set_num_threads(1)
    try:
        logprobs = torch.zeros(2, 64)
        batched_count_greater_than(logprobs, logprobs[:, :1])
    except Exception:  # the engines still work: each compiles the kernel itself on its first logprobs
        logger.warning("vLLM's sampler kernel could not be compiled ahead", exc_info=True)
    finally:
        torch.set_num_threads(threads)
        tqdm.tqdm.monitor_interval = monitor_interval


compile_sampler_kernels()
