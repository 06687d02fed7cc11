"""600 sequential GET /v1/models against a running platform (after 50 unmeasured): a route that does little beyond
the dependencies every route resolves (the service's state, the caller's key). Prints median, p90 and p99."""

import statistics
import time
from pathlib import Path

import httpx

key = Path(".state/dev-api-key").read_text().strip()
with httpx.Client(base_url="http://127.0.0.1:8000/v1", headers={"authorization": f"Bearer {key}"}) as client:
    for _ in range(50):
        client.get("/models")
    took = []
    for _ in range(600):
        started = time.perf_counter()
        client.get("/models").raise_for_status()
        took.append((time.perf_counter() - started) * 1000)
    took.sort()
    print(f"GET /v1/models median {statistics.median(took):.3f} ms p90 {took[540]:.3f} p99 {took[594]:.3f}")
