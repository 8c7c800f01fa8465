"""Fixtures shared by the unit tests."""

from __future__ import annotations

from typing import Any

import pytest

from streaming_module.services.event_processor import EventStreamProcessorService
from streaming_module.services.progress_tracking import ProgressTrackingService
from streaming_module.services.token_streaming import TokenStreamingService


@pytest.fixture
def services() -> dict[str, Any]:
    """The three services a workflow takes, fresh for each test and without a container:
    ``Flow(**services)``."""
    return {
        "token_streaming": TokenStreamingService(),
        "event_processor": EventStreamProcessorService(),
        "progress_tracking": ProgressTrackingService(),
    }
