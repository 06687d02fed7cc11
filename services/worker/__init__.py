"""Worker: runs vLLM for one model, takes batches from Kafka and streams tokens back."""
