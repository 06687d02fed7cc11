"""Scaler: forecasts demand and scales worker groups from Kafka lag.

Not built yet (issue 7); the platform runs without it. Nothing here is started by infra/platform up."""
