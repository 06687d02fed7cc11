"""Ingress: the OpenAI-compatible HTTP API; publishes requests to Kafka and streams replies back."""
