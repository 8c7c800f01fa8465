"""JSON for the wire, with orjson: :func:`dumps` never fails on a value JSON cannot hold.

:func:`json_default` makes such values (pydantic models such as LangChain messages, dataclasses,
datetimes, sets, bytes, enums) serialisable instead of failing a broadcast. Keys that are not
strings are written as strings.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from datetime import date, datetime, time, timedelta
from typing import Any, Final

import orjson
from pydantic import BaseModel

OPTIONS: Final = orjson.OPT_NON_STR_KEYS
"""The orjson options every encoder of this package uses."""

JSONDecodeError = orjson.JSONDecodeError
"""Raised by :func:`loads` for text that is not JSON (a ``ValueError``; ``msg`` and ``pos`` say
where)."""


def json_default(value: Any) -> Any:
    """orjson ``default``: turn a value JSON cannot hold into one it can.

    pydantic models (LangChain messages are) → ``model_dump(mode="json")``; objects with
    ``to_dict()`` → that; dataclasses → dict; sets → lists; bytes → text; enums → value;
    timedeltas → seconds; anything else → ``str(value)`` rather than failing the broadcast.
    """
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, Mapping):
        return dict(value)
    return str(value)


def dumps(value: Any) -> bytes:
    """JSON bytes of ``value`` (see :func:`json_default` for non-JSON values)."""
    return orjson.dumps(value, default=json_default, option=OPTIONS)


def loads(data: str | bytes | bytearray | memoryview) -> Any:
    """The value of JSON ``data``; raises :data:`JSONDecodeError` when it is not JSON."""
    return orjson.loads(data)


__all__ = ["OPTIONS", "JSONDecodeError", "dumps", "json_default", "loads"]
