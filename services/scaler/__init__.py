"""Scaler: predictive autoscaling with a reactive fallback, driven by Kafka lag and token-weighted backlog; acts on
local worker processes (supervisor) and on Kubernetes through KEDA's external scaler gRPC interface."""
