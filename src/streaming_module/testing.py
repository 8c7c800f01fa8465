"""Helpers for testing code that uses streaming_module.

``FakeClock`` replaces the system clock in a service or a container, so flush intervals,
heartbeats, rate windows and ETA are tested without sleeping: time moves only when
``advance(seconds)`` is called, and the timers due by then fire in order, synchronously::

    from streaming_module import StreamingModule, TokenStreamingService
    from streaming_module.testing import FakeClock

    clock = FakeClock()
    tokens = TokenStreamingService(clock=clock)
    # ... stream tokens, then clock.advance(0.1) to pass a 100 ms flush interval

    container = StreamingModule.for_root(websocket={"enabled": False})
    container.clock.override(clock)          # before anything is built from the container

Overriding any other provider works the same way (see README, "Testing your code").
"""

from __future__ import annotations

from streaming_module.core.clock import FakeClock

__all__ = ["FakeClock"]
