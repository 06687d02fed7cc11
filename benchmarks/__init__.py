"""Benchmarks for ferry, and `bench`, the tool that measures a serving endpoint the way `vllm bench serve` does."""

from pathlib import Path


def emit_report(report: str, out: Path | None) -> None:
    """Prints a benchmark's Markdown report, and writes it to ``out`` too when given."""
    print(report)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(report)
