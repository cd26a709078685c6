"""Fixtures for the end-to-end tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from talkwire.server.app import Application
from tests.conftest import make_config


@pytest.fixture
async def demo_app(make_app: Any, tmp_path: Path) -> Application:
    config = make_config(tmp_path, demo=True, server={"handler": "auto", "data_dir": str(tmp_path)})
    app: Application = await make_app(config)
    return app
