"""vLLM's engine in process on one model folder (as the worker builds it on CPU): time to the first token back to
back and after 1 s of idleness (medians of 10 and 5), and tokens/s of 16 concurrent requests of 64 tokens. Prints one
RESULT line; run.sh runs it under each allocator."""

import asyncio
import json
import os
import statistics
import sys
import time

from vllm import SamplingParams
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.v1.engine.async_llm import AsyncLLM

PROMPT = "Tell me about the rivers of Europe and the mountains of Asia. " * 3


async def main(path: str, label: str) -> None:
    args = AsyncEngineArgs(
        model=path,
        max_model_len=2048,
        enforce_eager=True,
        dtype="float32",
        kv_cache_memory_bytes=1 << 30,
        enable_prefix_caching=True,
        disable_log_stats=True,
        generation_config="vllm",
        scheduling_policy="priority",
    )
    llm = AsyncLLM.from_engine_args(args)
    tokenizer = llm.get_tokenizer()
    sent = 0

    async def one(max_tokens: int = 4) -> float:
        """Milliseconds to the first token of a new prompt (numbered, so no prefix is cached whole)."""
        nonlocal sent
        sent += 1
        ids = tokenizer.encode(f"{sent} {PROMPT}")
        params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
        started, first = time.perf_counter(), None
        async for _ in llm.generate({"prompt_token_ids": ids}, params, f"r{sent}"):
            first = first or time.perf_counter() - started
        return first * 1000

    for _ in range(3):
        await one()
    back_to_back = [await one() for _ in range(10)]
    after_idle = []
    for _ in range(5):
        await asyncio.sleep(1)
        after_idle.append(await one())
    started = time.perf_counter()
    await asyncio.gather(*(one(64) for _ in range(16)))
    result = {
        "label": label,
        "model": os.path.basename(path),
        "ttft_b2b": round(statistics.median(back_to_back), 1),
        "ttft_after_1s_idle": round(statistics.median(after_idle), 1),
        "tok_s_16": round(16 * 64 / (time.perf_counter() - started), 1),
    }
    print("RESULT", json.dumps(result), flush=True)
    llm.shutdown()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
