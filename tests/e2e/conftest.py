from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.platform import Platform, start_platform, stop_platform


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/e2e/" in str(item.path):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    models_dir = Path(os.environ.get("FERRY_MODELS_DIR", Path.home() / ".cache" / "ferry" / "models"))
    running = start_platform(tmp_path_factory.mktemp("platform"), models_dir)
    try:
        yield running
    finally:
        stop_platform(running)
