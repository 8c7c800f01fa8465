"""Options, as pydantic v2 models.

Fields are snake_case; the NestJS manual's camelCase keys are accepted too (``bufferSize``,
``flushInterval``, ``includeETA``, ``windowMs`` ...), so a dict copied from a NestJS app validates
unchanged. Unknown keys are an error naming the key. Use :func:`parse_options` to turn a model, a
dict or ``None`` into a validated model with a :class:`StreamingConfigError` on failure.

Durations follow the manual: milliseconds for ``flush_interval``, ``interval``, ``window_ms``,
``heartbeat.interval``/``timeout``; ``expires_in`` takes ``"1h"``-style strings or seconds.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeVar, get_args
from urllib.parse import urlsplit, urlunsplit

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from streaming_module.errors import StreamingConfigError, describe_validation_error
from streaming_module.types import (
    DeliveryMode,
    EventPriority,
    Granularity,
    StreamEventType,
    TokenFormat,
)

M = TypeVar("M", bound=BaseModel)


class OptionsModel(BaseModel):
    """Base of every options model: snake_case or camelCase keys, unknown keys refused."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        arbitrary_types_allowed=True,
        validate_default=True,
    )


# --------------------------------------------------------------------------- decorator options


class TokenFilterOptions(OptionsModel):
    """Drops tokens before buffering. A token passes when it meets every rule given."""

    min_length: int | None = Field(default=None, ge=0, description="Shortest token kept.")
    max_length: int | None = Field(default=None, ge=1, description="Longest token kept.")
    exclude_whitespace: bool = Field(
        default=False, description="Drop tokens that are only whitespace."
    )
    pattern: re.Pattern[str] | None = Field(
        default=None,
        description="Keep only tokens matching this regex (``re.search``); a string is compiled.",
    )

    @field_validator("pattern", mode="before")
    @classmethod
    def _compile(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value

    @model_validator(mode="after")
    def _lengths(self) -> TokenFilterOptions:
        if (
            self.min_length is not None
            and self.max_length is not None
            and self.min_length > self.max_length
        ):
            raise ValueError(
                f"min_length ({self.min_length}) is greater than max_length ({self.max_length})"
            )
        return self


TokenProcessor = Callable[[str, dict[str, Any] | None], str]
EventTransformer = Callable[[Any], Any]
ProgressCalculator = Callable[[float, float, dict[str, Any] | None], float]


class StreamTokenOptions(OptionsModel):
    """``@stream_token`` options (the manual's ``StreamTokenDecoratorMetadata``)."""

    enabled: bool = True
    buffer_size: int | None = Field(
        default=None,
        ge=1,
        description="Tokens held before a flush; None uses the module's default_buffer_size.",
    )
    batch_size: int | None = Field(
        default=None,
        ge=1,
        description="Tokens per emitted update; None emits one update per flush.",
    )
    flush_interval: int = Field(
        default=100,
        ge=0,
        description="The buffer flushes at most this many milliseconds after the first "
        "buffered token (each stream's timer runs up to 10% early, drawn once per stream, so "
        "streams opened together do not flush together); 0 disables the timer (flush by size, "
        "flush_tokens and close only).",
    )
    format: TokenFormat = "text"
    include_metadata: bool = False
    processor: TokenProcessor | None = Field(
        default=None, description="Rewrites each token that passed the filter."
    )
    filter: TokenFilterOptions | None = None
    method_name: str | None = None


class EventFilterCriteria(OptionsModel):
    """Which events pass. Every rule given must hold."""

    event_types: list[StreamEventType] | None = None
    exclude_types: list[StreamEventType] | None = None
    min_priority: EventPriority | None = None
    include_debug: bool = True
    node_ids: list[str] | None = None
    execution_ids: list[str] | None = None
    start_time: Any = Field(
        default=None,
        validation_alias=AliasChoices("start_time", "startTime", "since", "from"),
        description="Keep events at or after this time (aware datetime or ISO string).",
    )
    end_time: Any = Field(
        default=None,
        validation_alias=AliasChoices("end_time", "endTime", "until", "to"),
        description="Keep events at or before this time (aware datetime or ISO string).",
    )

    @field_validator("start_time", "end_time", mode="before")
    @classmethod
    def _time(cls, value: Any) -> Any:
        from datetime import UTC, datetime

        if value is None:
            return None
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                raise ValueError(f"not an ISO-8601 time: {value!r}") from None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = datetime.fromtimestamp(value, UTC)
        if not isinstance(value, datetime):
            raise ValueError("expected a datetime, an ISO-8601 string or a POSIX timestamp")
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class StreamEventOptions(OptionsModel):
    """``@stream_event`` options."""

    enabled: bool = True
    events: list[StreamEventType] = Field(
        default_factory=lambda: [
            StreamEventType.NODE_START,
            StreamEventType.NODE_COMPLETE,
            StreamEventType.ERROR,
        ]
    )
    buffer_size: int | None = Field(default=None, ge=1)
    batch_size: int | None = Field(default=None, ge=1)
    delivery: DeliveryMode = "at-least-once"
    transformer: EventTransformer | None = None
    filter: EventFilterCriteria | None = None
    method_name: str | None = None


class ProgressFormatOptions(OptionsModel):
    """How a progress update's ``text`` reads, e.g. ``"42.0% (42/100, 12.3/s)"``."""

    show_percentage: bool = True
    show_current: bool = False
    show_total: bool = False
    show_rate: bool = False
    precision: int = Field(default=1, ge=0, le=10)


class StreamProgressOptions(OptionsModel):
    """``@stream_progress`` options."""

    enabled: bool = True
    interval: int = Field(
        default=1000, ge=0, description="Milliseconds between reports; 0 reports every update."
    )
    granularity: Granularity = "fine"
    include_eta: bool = Field(
        default=True,
        validation_alias=AliasChoices("include_eta", "includeETA", "includeEta"),
        serialization_alias="includeETA",
    )
    include_metrics: bool = False
    milestones: list[float] = Field(default_factory=list)
    calculator: ProgressCalculator | None = None
    format: ProgressFormatOptions = Field(default_factory=ProgressFormatOptions)
    method_name: str | None = None

    @field_validator("milestones")
    @classmethod
    def _milestones(cls, value: list[float]) -> list[float]:
        bad = [m for m in value if not 0 <= m <= 100]
        if bad:
            raise ValueError(f"milestones are percentages between 0 and 100; got {bad}")
        return sorted(set(value))


# --------------------------------------------------------------------------- gateway options


class CorsOptions(OptionsModel):
    """Allowed browser origins. ``origin`` is a list of origins, one origin, ``"*"`` or ``True``
    (any origin). A request without an ``Origin`` header (a non-browser client) is not refused."""

    origin: list[str] | str | bool = True
    credentials: bool = False

    def allows(self, origin: str | None) -> bool:
        if origin is None:
            return True
        if self.origin is True or self.origin == "*":
            return True
        if self.origin is False:
            return False
        allowed = [self.origin] if isinstance(self.origin, str) else self.origin
        return origin in allowed or "*" in allowed


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}


def parse_duration(value: str | float) -> float:
    """``"1h"``, ``"30m"``, ``"45s"``, ``"2d"``, ``"500ms"`` or a number of seconds → seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like '1h' or a number of seconds")
    if isinstance(value, (int, float)):
        if value <= 0:
            raise ValueError("a duration must be positive")
        return float(value)
    match = _DURATION.match(value)
    if not match:
        raise ValueError(
            f"not a duration: {value!r}; write a number of seconds or e.g. '500ms', '30s', "
            "'15m', '1h', '7d'"
        )
    seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    return seconds


class AuthenticationOptions(OptionsModel):
    """JWT authentication at the WebSocket upgrade (and for the demo's HTTP endpoints).

    When ``enabled`` and ``secret_key`` is not given, the ``JWT_SECRET`` environment variable is
    used when the gateway starts; with neither, starting the gateway fails (it never runs open).
    """

    enabled: bool = False
    strategy: Literal["jwt"] = "jwt"
    secret_key: SecretStr | None = None
    expires_in: str | float = Field(
        default="1h", description="Lifetime of tokens the module issues: '1h', '30m' or seconds."
    )
    algorithms: list[str] = Field(default_factory=lambda: ["HS256"], min_length=1)
    leeway: float = Field(default=0, ge=0, description="Seconds of clock skew tolerated.")
    require_exp: bool = Field(default=True, description="Refuse tokens without an 'exp' claim.")
    issuer: str | None = Field(
        default=None, description="When set, a token's 'iss' must equal it (and be present)."
    )
    audience: str | list[str] | None = Field(
        default=None,
        description="When set, a token's 'aud' must name this audience (or one of these); when "
        "unset, a token that names any audience is refused.",
    )

    @field_validator("audience")
    @classmethod
    def _audience(cls, value: str | list[str] | None) -> str | list[str] | None:
        if value is None:
            return None
        names = [value] if isinstance(value, str) else value
        if not names or any(not name for name in names):
            raise ValueError("audience must be a non-empty string or a list of them")
        return value

    @field_validator("expires_in")
    @classmethod
    def _expires(cls, value: str | float) -> str | float:
        parse_duration(value)
        return value

    @field_validator("algorithms")
    @classmethod
    def _algorithms(cls, value: list[str]) -> list[str]:
        allowed = {
            "HS256", "HS384", "HS512", "RS256", "RS384", "RS512",
            "ES256", "ES384", "ES512", "PS256", "PS384", "PS512", "EdDSA",
        }  # fmt: skip
        bad = [a for a in value if a not in allowed]
        if bad:
            raise ValueError(
                f"unsupported JWT algorithm(s) {bad}; use some of {sorted(allowed)} "
                "('none' is never accepted)"
            )
        return value

    @property
    def expires_in_seconds(self) -> float:
        return parse_duration(self.expires_in)

    def resolved_secret(self) -> str | None:
        """The secret to sign and verify with: ``secret_key``, else ``$JWT_SECRET``."""
        if self.secret_key is not None:
            return self.secret_key.get_secret_value()
        return os.environ.get("JWT_SECRET") or None


class RateLimitOptions(OptionsModel):
    """Connection and request limits, counted over any span of ``window_ms`` (sliding windows).

    ``max_connections`` counts new connections per window, per client address and overall;
    ``max_requests_per_connection`` counts client frames per window on one connection (over it,
    the connection is closed with ``RATE_LIMITED``); ``max_open_connections_per_address`` caps the
    connections one address holds open at once.
    """

    window_ms: int = Field(default=60000, ge=1)
    max_connections: int = Field(default=100, ge=1)
    max_requests_per_connection: int = Field(default=1000, ge=1)
    max_open_connections_per_address: int = Field(
        default=100,
        ge=1,
        description="Connections one client address may hold open at once; over it an upgrade "
        "is refused with 429. Behind a reverse proxy every client shares the proxy's address.",
    )


class CompressionOptions(OptionsModel):
    """permessage-deflate for WebSocket frames; frames under ``threshold`` bytes go uncompressed.
    ``algorithm`` 'gzip' and 'deflate' both mean deflate (the only WebSocket compression)."""

    enabled: bool = False
    algorithm: Literal["gzip", "deflate"] = "deflate"
    threshold: int = Field(default=1024, ge=0)


class HeartbeatOptions(OptionsModel):
    """Server pings every ``interval`` ms; a peer silent for ``timeout`` ms after a ping is
    closed."""

    enabled: bool = True
    interval: int = Field(default=30000, ge=1)
    timeout: int = Field(default=5000, ge=1)


class GatewayOptions(OptionsModel):
    """The manual's ``WebSocketGatewayConfig``."""

    enabled: bool = True
    cors: bool | CorsOptions = False
    authentication: AuthenticationOptions = Field(default_factory=AuthenticationOptions)
    rate_limit: RateLimitOptions | None = None
    compression: CompressionOptions = Field(default_factory=CompressionOptions)
    heartbeat: HeartbeatOptions = Field(default_factory=HeartbeatOptions)

    @property
    def cors_options(self) -> CorsOptions | None:
        """The CORS policy, or ``None`` when CORS is off (then cross-origin browsers are
        refused: only same-origin and non-browser clients connect)."""
        if self.cors is True:
            return CorsOptions(origin=True)
        if self.cors is False:
            return None
        return self.cors


class WebSocketOptions(OptionsModel):
    """Where the server listens, and per-connection limits."""

    enabled: bool = False
    port: int = Field(default=8080, ge=0, le=65535, description="0 picks a free port.")
    host: str = "127.0.0.1"
    max_message_size: int = Field(
        default=65536,
        ge=256,
        description="Largest client frame in bytes; over it the connection is closed with "
        "MESSAGE_TOO_BIG.",
    )
    send_queue_size: int = Field(
        default=4096,
        ge=16,
        description="Frames queued per client before the slow-client policy applies.",
    )
    send_queue_bytes: int = Field(
        default=1024 * 1024,
        ge=1024,
        description="Bytes one client may be owed (its queue plus its socket's unsent bytes, "
        "replies included) before the slow-client policy applies; the most a client that stops "
        "reading makes the process hold, whatever the frame sizes.",
    )
    request_timeout_ms: int = Field(
        default=15000,
        ge=100,
        description="An HTTP request (WebSocket upgrades included) must arrive whole, headers and "
        "body, within this many milliseconds of its connection opening or of the previous "
        "response; idle keep-alive connections close after it too. Half-open and slow "
        "('slowloris') connections are closed when it passes.",
    )
    slow_client_policy: Literal["disconnect", "coalesce"] = Field(
        default="disconnect",
        description="'disconnect' closes a client that falls behind with SLOW_CONSUMER (it "
        "resumes from its last sequence); 'coalesce' merges its queued token frames instead.",
    )
    max_open_connections: int | None = Field(
        default=None,
        ge=1,
        description="WebSocket connections held open at once, all clients together; over it an "
        "upgrade is refused with 429. None (the default) derives it from the process's "
        "file-descriptor limit: the soft RLIMIT_NOFILE less a tenth (at least 64) kept for "
        "files, Redis and the listening socket.",
    )


_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def mask_url(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``, safe to log and show."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparsable url>"
    if password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


class BrokerOptions(OptionsModel):
    """Where frames for an execution are kept (replay log) and fanned out."""

    backend: Literal["memory", "redis"] = "memory"
    redis_url: str | list[str] | None = Field(
        default=None,
        description="One Redis URL, or a list of them: executions are spread over the servers "
        "by a stable hash of their id (every process must list the same URLs in the same order).",
    )
    replay_max_frames: int = Field(
        default=10000, ge=1, description="Frames kept per execution for resume."
    )
    replay_max_age_ms: int = Field(
        default=600000, ge=1, description="Frames older than this are evicted from the log."
    )
    retention_after_end_ms: int = Field(
        default=60000, ge=0, description="How long an ended execution's log is kept."
    )
    max_executions: int = Field(
        default=10000, ge=1, description="Executions kept in memory; oldest ended evicted first."
    )
    key_prefix: str = "streaming_module"
    producer_lease_ms: int = Field(
        default=10000,
        ge=200,
        description="Redis: a process running a run renews a lease on it; when the lease expires "
        "without a final status, one process publishes 'failed' with code 'producer_lost'.",
    )
    max_pending_frames: int = Field(
        default=100_000,
        ge=1,
        description="Redis: frames a process may hold waiting for Redis; past it publish() "
        "raises BrokerError and the frame's place becomes a gap (status frames always pass).",
    )

    @field_validator("redis_url")
    @classmethod
    def _urls(cls, value: str | list[str] | None) -> str | list[str] | None:
        if value is None:
            return None
        urls = [value] if isinstance(value, str) else value
        if isinstance(value, list) and not value:
            raise ValueError("give at least one Redis URL, e.g. 'redis://127.0.0.1:6379/0'")
        for url in urls:
            if not url.startswith(_REDIS_SCHEMES):
                raise ValueError(
                    f"{mask_url(url)!r} is not a Redis URL: expected "
                    "redis://[[user]:password@]host[:port][/db], rediss:// or unix://"
                )
        if len(set(urls)) != len(urls):
            raise ValueError("the same Redis URL is listed twice")
        return value

    @field_validator("key_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if "{" in value or "}" in value:
            raise ValueError("key_prefix may not contain '{' or '}' (keys use {execution id} tags)")
        return value

    @model_validator(mode="after")
    def _redis(self) -> BrokerOptions:
        if self.backend == "redis" and not self.redis_url:
            raise ValueError("backend 'redis' needs redis_url, e.g. 'redis://127.0.0.1:6379/0'")
        return self

    @property
    def redis_urls(self) -> list[str]:
        """``redis_url`` as a list (empty when unset)."""
        if self.redis_url is None:
            return []
        return [self.redis_url] if isinstance(self.redis_url, str) else list(self.redis_url)


class StreamingModuleOptions(OptionsModel):
    """Everything ``StreamingModule.for_root`` takes."""

    websocket: WebSocketOptions = Field(default_factory=WebSocketOptions)
    default_buffer_size: int = Field(default=50, ge=1)
    gateway: GatewayOptions = Field(default_factory=GatewayOptions)
    broker: BrokerOptions = Field(default_factory=BrokerOptions)
    default_flush_interval: int = Field(
        default=100, ge=0, description="flush_interval (ms) for streams initialised without one."
    )
    stream_idle_timeout_ms: int = Field(
        default=300000,
        ge=0,
        description="Token streams idle this long are flushed and closed; 0 keeps them.",
    )
    max_token_length: int = Field(
        default=65536, ge=1, description="Longest single token accepted by stream_token."
    )


def _masked(value: Any) -> Any:
    """A rejected input as it may be shown: passwords in URLs masked."""
    if isinstance(value, str) and "://" in value:
        return mask_url(value)
    if isinstance(value, (list, tuple)):
        return [_masked(item) for item in value]
    if isinstance(value, Mapping):
        return {key: _masked(item) for key, item in value.items()}
    return value


def parse_options(model: type[M], value: M | Mapping[str, Any] | None, *, what: str) -> M:
    """Validate ``value`` as ``model``: a model instance passes through, a mapping (snake_case or
    camelCase keys) is validated, ``None`` gives the defaults. Raises :class:`StreamingConfigError`
    listing every bad field."""
    if isinstance(value, model):
        return value
    if value is None:
        value = {}
    if isinstance(value, BaseModel):
        value = value.model_dump(by_alias=False, exclude_unset=True)
    if not isinstance(value, Mapping):
        raise StreamingConfigError(
            f"invalid {what}: expected a {model.__name__} or a dict, got {type(value).__name__}",
            errors=[("(root)", f"expected a dict, got {type(value).__name__}")],
        )
    try:
        return model.model_validate(dict(value))
    except ValidationError as exc:
        errors = describe_validation_error(exc, show=_masked)
        lines = "\n".join(f"  - {path}: {msg}" for path, msg in errors)
        raise StreamingConfigError(
            f"invalid {what} ({len(errors)} problem{'s' if len(errors) != 1 else ''}):\n{lines}",
            errors=errors,
            context={"fields": [p for p, _ in errors]},
        ) from None


def _spellings(model: type[BaseModel]) -> dict[str, str]:
    """Every key that sets a field of ``model`` (its name, alias, validation aliases) → the
    field's name."""
    keys: dict[str, str] = {}
    for name, info in model.model_fields.items():
        keys[name] = name
        if info.alias:
            keys[info.alias] = name
        alias = info.validation_alias
        if isinstance(alias, str):
            keys[alias] = name
        elif isinstance(alias, AliasChoices):
            keys.update({c: name for c in alias.choices if isinstance(c, str)})
    return keys


def _nested_model(model: type[BaseModel], field: str) -> type[BaseModel] | None:
    """The options model a field holds (``X``, ``X | None``, ``bool | X``), if any."""
    annotation = model.model_fields[field].annotation
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _canonical(model: type[BaseModel], value: Mapping[str, Any]) -> dict[str, Any]:
    """``value`` with every key spelled as its field name, nested options included. Unknown keys
    are kept as given, so validation still names them."""
    spellings = _spellings(model)
    out: dict[str, Any] = {}
    for key, item in value.items():
        name = spellings.get(key, key) if isinstance(key, str) else key
        if name in model.model_fields and isinstance(item, Mapping):
            nested = _nested_model(model, name)
            if nested is not None:
                item = _canonical(nested, item)
        out[name] = item
    return out


def _deep_merge(
    model: type[BaseModel], base: dict[str, Any], over: Mapping[str, Any]
) -> dict[str, Any]:
    merged = dict(base)
    for name, item in over.items():
        nested = _nested_model(model, name) if name in model.model_fields else None
        if (
            nested is not None
            and isinstance(item, Mapping)
            and isinstance(merged.get(name), Mapping)
        ):
            merged[name] = _deep_merge(nested, merged[name], item)
        else:
            merged[name] = item
    return merged


def merge_options(
    model: type[M],
    base: M | Mapping[str, Any] | None,
    overrides: Mapping[str, Any],
    *,
    what: str = "options",
) -> dict[str, Any]:
    """``overrides`` merged over ``base`` as one dict ready for :func:`parse_options`.

    Either side may spell a key in snake_case or camelCase (``for_root({"defaultBufferSize": 5},
    default_buffer_size=9)`` gives 9); nested options merge key by key
    (``for_root({"websocket": {"enabled": True}}, websocket={"port": 0})`` keeps ``enabled``);
    anything else in ``overrides`` replaces the base's value. A model ``base`` contributes only
    the fields it was given. Raises :class:`StreamingConfigError` when ``base`` is not a model,
    a mapping or ``None``."""
    if base is None:
        base_dict: dict[str, Any] = {}
    elif isinstance(base, BaseModel):
        base_dict = _canonical(model, base.model_dump(by_alias=False, exclude_unset=True))
    elif isinstance(base, Mapping):
        base_dict = _canonical(model, base)
    else:
        raise StreamingConfigError(
            f"invalid {what}: expected a {model.__name__} or a dict, got {type(base).__name__}",
            errors=[("(root)", f"expected a dict, got {type(base).__name__}")],
        )
    return _deep_merge(model, base_dict, _canonical(model, overrides))


__all__ = [
    "AuthenticationOptions",
    "BrokerOptions",
    "CompressionOptions",
    "CorsOptions",
    "EventFilterCriteria",
    "EventTransformer",
    "GatewayOptions",
    "HeartbeatOptions",
    "ProgressCalculator",
    "ProgressFormatOptions",
    "RateLimitOptions",
    "StreamEventOptions",
    "StreamProgressOptions",
    "StreamTokenOptions",
    "StreamingModuleOptions",
    "TokenFilterOptions",
    "TokenProcessor",
    "WebSocketOptions",
    "mask_url",
    "merge_options",
    "parse_duration",
    "parse_options",
]
