"""The one check every service applies to the ids it is given."""

from __future__ import annotations

from streaming_module.errors import StreamingError


def require_id(value: object, what: str, error: type[StreamingError], code: str) -> str:
    """``value`` if it is a non-blank string, else ``error`` (with ``code``) saying what was
    wrong with ``what``."""
    if not isinstance(value, str):
        raise error(
            f"{what} must be a str, got {type(value).__name__} ({value!r})",
            code=code,
            context={what: repr(value)},
        )
    if not value.strip():
        raise error(
            f"{what} must be a non-empty string, got {value!r}", code=code, context={what: value}
        )
    return value
