"""Batcher: consumes each model's request topic and hands batches to the model's worker group."""
