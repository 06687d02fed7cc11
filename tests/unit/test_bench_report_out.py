from pathlib import Path

from benchmarks import emit_report


def test_a_report_goes_into_report_md_of_a_folder_or_to_the_file_named(tmp_path: Path) -> None:
    existing = tmp_path / "existing"
    existing.mkdir()
    assert emit_report("# a", existing) == existing / "report.md"
    assert emit_report("# b", tmp_path / "new" / "run") == tmp_path / "new" / "run" / "report.md"
    assert emit_report("# c", tmp_path / "named.md") == tmp_path / "named.md"
    assert [(p.relative_to(tmp_path).as_posix(), p.read_text()) for p in sorted(tmp_path.rglob("*.md"))] == [
        ("existing/report.md", "# a"),
        ("named.md", "# c"),
        ("new/run/report.md", "# b"),
    ]
    assert emit_report("# d", None) is None
