"""Contracts and plumbing shared by every ferry service: message models, topic names, settings, Kafka, telemetry,
logging and database set-up. No business logic lives here."""
