"""The services of a controller over a real store in a temporary directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.services import Services, build_services
from controller.settings import Settings
from controller.store import open_store


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    store = open_store(tmp_path / "store")
    try:
        yield build_services(Settings(data_dir=str(tmp_path)), store)
    finally:
        store.close()
