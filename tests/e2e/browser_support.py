"""Marks of the browser tests: Debian's Chromium through Playwright for Python, never a
downloaded browser; without /usr/bin/chromium the tests skip and say why."""

from __future__ import annotations

from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")

BROWSER_MARKS = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="needs Debian's chromium at /usr/bin/chromium (apt-get install -y chromium); "
        "never a browser downloaded by `playwright install`",
    ),
]
