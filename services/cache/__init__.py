"""Cache: the response cache in Redis that the ingress consults before a request enters Kafka (policy.py holds the
rules, store.py the Redis layout, service.py what the ingress calls), its ops command (ops.py), and the model cache view
from worker heartbeats (model_view.py). vLLM's prefix cache runs in the workers, salted per tenant."""
