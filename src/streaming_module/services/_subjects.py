"""Subjects that keep delivering when one subscriber fails.

A plain reactivex ``Subject`` stops the fan-out at the first subscriber whose ``on_next`` raises,
and the exception reaches the publisher. :class:`SafeSubject` catches and logs it per subscriber
instead, so one broken subscriber never starves the others nor breaks the code that publishes.
"""

from __future__ import annotations

import logging
from typing import TypeVar

from reactivex.subject import Subject

T = TypeVar("T")


class SafeSubject(Subject[T]):
    """A ``Subject`` whose fan-out survives a raising subscriber (logged on ``logger``).

    Costs one ``try`` per subscriber per value (~free when nothing raises).
    """

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__()
        self._logger = logger

    def _on_next_core(self, value: T) -> None:
        with self.lock:
            observers = self.observers.copy()
        for observer in observers:
            try:
                observer.on_next(value)
            except Exception:
                self._logger.exception("a stream subscriber raised; it keeps its subscription")

    def _on_completed_core(self) -> None:
        with self.lock:
            observers = self.observers.copy()
            self.observers.clear()
        for observer in observers:
            try:
                observer.on_completed()
            except Exception:
                self._logger.exception("a stream subscriber raised on completion")

    def _on_error_core(self, error: Exception) -> None:
        with self.lock:
            observers = self.observers.copy()
            self.observers.clear()
            self.exception = error
        for observer in observers:
            try:
                observer.on_error(error)
            except Exception:
                self._logger.exception("a stream subscriber raised on error")


__all__ = ["SafeSubject"]
