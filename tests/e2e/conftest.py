"""The ``browser`` fixture of the browser tests (marks: ``browser_support.BROWSER_MARKS``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from browser_support import CHROMIUM


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """A headless Debian Chromium (we run as root, hence --no-sandbox)."""
    playwright_api = pytest.importorskip("playwright.async_api", reason="needs playwright")
    async with playwright_api.async_playwright() as p:
        instance = await p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            yield instance
        finally:
            await instance.close()
