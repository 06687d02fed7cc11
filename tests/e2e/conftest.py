from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.platform import MODELS_DIR, Platform, start_platform, stop_platform


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/e2e/" in str(item.path):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    running = start_platform(tmp_path_factory.mktemp("platform"), MODELS_DIR)
    try:
        yield running
    finally:
        stop_platform(running)
