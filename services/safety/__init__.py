"""Safety: screens every prompt and output and escalates flagged items to a human review queue.

Not built yet (issue 6); the platform runs without it. Nothing here is started by infra/platform up."""
