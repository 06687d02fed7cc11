"""Times, per model, a request without logprobs, then three with, against a running platform (run.sh)."""

import sys
import time

import openai

key = open(sys.argv[1]).read().strip()
client = openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key=key, timeout=120)
with_top = {"logprobs": True, "top_logprobs": 2}
for model in ["smollm2-135m-instruct", "tiny-random"]:
    seconds = []
    for options in [{}, with_top, with_top, {"logprobs": True}]:
        started = time.time()
        client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Count to three."}],
            temperature=0,
            max_tokens=4,
            **options,
        )
        seconds.append(round(time.time() - started, 2))
    print(model, "plain, first logprobs, second, third:", seconds, flush=True)
