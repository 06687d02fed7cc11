"""The safety admin command's reading of a policy file: a bad file is an exit that names the fault, not a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.safety.admin import read_policy
from services.safety.policy import DEFAULT_POLICY


def test_a_policy_file_is_read_as_the_policy_it_holds(tmp_path: Path) -> None:
    path = tmp_path / "policy.json"
    path.write_text(DEFAULT_POLICY.model_dump_json())
    assert read_policy(path) == DEFAULT_POLICY


def test_a_file_that_is_no_policy_names_each_fault(tmp_path: Path) -> None:
    path = tmp_path / "policy.json"
    path.write_text('{"prompt": {"violence": {"block_at": 2}}}')
    with pytest.raises(SystemExit) as exited:
        read_policy(path)
    assert str(exited.value) == (
        f"{path} is not a policy: prompt.violence.block_at: Input should be less than or equal to 1; "
        "output: Field required"
    )


def test_a_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="cannot read .*missing.json: No such file or directory"):
        read_policy(tmp_path / "missing.json")
