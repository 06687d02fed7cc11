"""The bench tool: load shapes, prompt sets and metrics defined exactly as `vllm bench serve` defines them."""
