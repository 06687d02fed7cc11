"""Cache: response and intermediate caches in Redis, with invalidation.

Not built yet (issue 8); the platform runs without it. Nothing here is started by infra/platform up."""
