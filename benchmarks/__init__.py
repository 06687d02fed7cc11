"""Benchmarks for ferry, and `bench`, the tool that measures a serving endpoint the way `vllm bench serve` does."""

from pathlib import Path

OUT_HELP = "also write the Markdown report here: a file, or a folder (then report.md in it, as for bench --out)"


def emit_report(report: str, out: Path | None) -> Path | None:
    """Prints a benchmark's Markdown report and, when ``out`` is given, writes it there too: into report.md when
    ``out`` is a folder or has no extension (made if missing, as for `bench --out DIR`), else to that file. Returns
    the file written."""
    print(report)
    if not out:
        return None
    path = out / "report.md" if out.is_dir() or not out.suffix else out
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report)
    return path
