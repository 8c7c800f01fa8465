"""JWT authentication for the WebSocket gateway (and the demo's HTTP endpoints).

A client proves who it is with a JWT, either in the ``token`` query parameter (browsers cannot set
headers on a WebSocket) or in an ``Authorization: Bearer <token>`` header. The gateway checks it
once, at the upgrade, with :meth:`JwtAuthenticator.authenticate_request`; a refusal is an
:class:`~streaming_module.errors.AuthenticationError` (HTTP 401 before the upgrade, close code
``UNAUTHORIZED`` after it).

What a token must be to pass:

- signed with one of ``authentication.algorithms`` (a fixed allow-list; ``none`` is never
  accepted, whatever the token's header says) and the configured key;
- not expired (``exp``, required unless ``require_exp=False``), not used before ``nbf`` or ``iat``,
  each with ``leeway`` seconds of tolerated clock skew, measured on the injected clock;
- from ``issuer`` and for ``audience`` (one name or a list; the token must name one of them)
  when those are configured; a token that names an audience when none is configured is refused;
- with, optionally, an ``executions`` claim: a list of execution ids the client may subscribe to.
  Without it the client may subscribe to any execution.

Each verified token's expiry is kept (:attr:`Claims.expires_at`) and
:meth:`JwtAuthenticator.seconds_left` says how long a connection it opened may stay open: until
``exp`` plus ``leeway``, on the injected clock.

Secrets and tokens are never logged nor put in error messages, not even in part: messages quote
no client-supplied text that could be a token, and an enabled authenticator installs
:class:`TokenRedactingFilter` on aiohttp's server loggers, whose "Error handling request" lines
would otherwise quote the first 100 bytes of an oversized request line or header (where a token
travels).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import web

from streaming_module.config import AuthenticationOptions, parse_duration
from streaming_module.core.clock import Clock, SystemClock
from streaming_module.errors import AuthenticationError, StreamingConfigError, shorten

_log = logging.getLogger("streaming_module.gateway.auth")

EXECUTIONS_CLAIM = "executions"
"""The claim that lists the execution ids a token may subscribe to."""

MIN_HMAC_SECRET_BYTES = 32
"""RFC 7518 §3.2: an HMAC key should be at least as long as the hash output (32 bytes for
HS256, 48 for HS384, 64 for HS512); shorter secrets are accepted with a warning."""

MAX_TOKEN_LENGTH = 8192
"""Longer tokens are refused before any decoding (no legitimate token is that big)."""

_HMAC_MIN_BYTES = {"HS256": MIN_HMAC_SECRET_BYTES, "HS384": 48, "HS512": 64}
_KNOWN_ALGORITHMS = frozenset(
    {
        "none", "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES256K",
        "ES384", "ES512", "PS256", "PS384", "PS512", "EdDSA", "Ed25519", "Ed448",
    }
)  # fmt: skip
"""Algorithm names a refusal may quote back; anything else in a token's header is not echoed."""
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,15}")
"""What an ``Authorization`` scheme name looks like (``Basic``, ``Digest``, ``Negotiate`` ...)."""
_HMAC_ALGORITHMS = frozenset(_HMAC_MIN_BYTES)
_MANAGED_CLAIMS = frozenset({"sub", "iat", "exp", "iss", "aud", EXECUTIONS_CLAIM})


@dataclass(frozen=True, slots=True)
class Claims:
    """What a verified token says about its bearer.

    ``subject`` is the ``sub`` claim (``None`` when the token has none); ``executions`` is the set
    of execution ids the bearer may subscribe to, or ``None`` for any; ``expires_at`` is the
    ``exp`` claim in seconds since the epoch (``None`` when the token has none, which
    ``require_exp=False`` allows); ``raw`` is the whole verified payload.
    """

    subject: str | None
    executions: frozenset[str] | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    expires_at: float | None = field(default=None, compare=False)

    def may_subscribe(self, execution_id: str) -> bool:
        """True when the bearer may subscribe to ``execution_id``: always without an
        ``executions`` claim, else only to the ids it lists."""
        return self.executions is None or execution_id in self.executions


def _refuse(reason: str, message: str, **context: Any) -> AuthenticationError:
    return AuthenticationError(message, context={"reason": reason, **context})


def _short(value: object, limit: int = 40) -> str:
    """A value made short enough to quote in a message: repr'd, truncated. Never give it text
    from a client that could be (part of) a token."""
    return shorten(repr(value), limit)


_REDACTIONS = (
    # A JWT or any fragment of one: base64url of '{"' starts every header.
    (re.compile(r"eyJ[A-Za-z0-9_\-]*(?:\.[A-Za-z0-9_\-]*){0,2}"), "[redacted]"),
    # Whatever follows "Bearer" or "token=", even when it does not look like a JWT.
    (re.compile(r"(?i)(bearer\s+|token=)[^\s&'\"\\,;]+"), r"\1[redacted]"),
)

REDACTED_LOGGERS = ("aiohttp.server", "aiohttp.access", "aiohttp.web", "aiohttp.websocket")
"""The loggers an enabled authenticator puts a :class:`TokenRedactingFilter` on."""


def redact_tokens(text: str) -> str:
    """``text`` with every JWT-looking string, and whatever follows ``Bearer`` or ``token=``,
    replaced by ``[redacted]``."""
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


class TokenRedactingFilter(logging.Filter):
    """A :class:`logging.Filter` that removes tokens from a record before any handler sees it:
    its message (arguments merged in) and its traceback (formatted here, then kept as
    ``exc_text`` with ``exc_info`` cleared, so no formatter can print the raw exception).

    Added to a *logger* (not a handler), it applies to that logger's own records, whichever
    handlers they reach; :func:`install_token_redaction` adds it to aiohttp's server loggers.
    """

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact_tokens(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and record.exc_info[0] is not None:
            text = record.exc_text or self._formatter.formatException(record.exc_info)
            record.exc_text = redact_tokens(text)
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = redact_tokens(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_tokens(record.stack_info)
        return True


def install_token_redaction(loggers: Iterable[str] = REDACTED_LOGGERS) -> None:
    """Put one :class:`TokenRedactingFilter` on each named logger (once: calling it again adds
    none)."""
    for name in loggers:
        logger = logging.getLogger(name)
        if not any(isinstance(f, TokenRedactingFilter) for f in logger.filters):
            logger.addFilter(TokenRedactingFilter())


class JwtAuthenticator:
    """Verifies and issues JWTs as ``authentication`` options say.

    The secret is resolved once, here: ``secret_key``, else ``$JWT_SECRET``. Enabled without
    either, construction fails: the gateway never runs open by accident. For ``HS*`` algorithms
    the secret is the shared HMAC key; for asymmetric ones (``RS*``, ``ES*``, ``PS*``, ``EdDSA``,
    which need ``pip install 'pyjwt[crypto]'``) it is the PEM public key that verifies, and tokens
    are issued by whoever holds the private key. Mixing the two families is refused, since a
    public key must never double as an HMAC secret.

    Verification costs one HMAC (microseconds) per connection; nothing is cached.
    """

    def __init__(self, options: AuthenticationOptions, clock: Clock | None = None) -> None:
        self._options = options
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._algorithms = list(options.algorithms)
        self._secret = options.resolved_secret()
        self._check_configuration()
        if options.enabled:
            # aiohttp quotes the start of an oversized request line or header when it refuses
            # one; with authentication on, that is where a token travels.
            install_token_redaction()

    def _check_configuration(self) -> None:
        options = self._options
        hmac = [a for a in self._algorithms if a in _HMAC_ALGORITHMS]
        asymmetric = [a for a in self._algorithms if a not in _HMAC_ALGORITHMS]
        if hmac and asymmetric:
            raise StreamingConfigError(
                f"authentication.algorithms mixes HMAC {hmac} with asymmetric {asymmetric}: a "
                "public key must never double as an HMAC secret; allow one family only",
                errors=[("gateway.authentication.algorithms", "mixes HMAC and asymmetric")],
            )
        if asymmetric and not jwt.algorithms.has_crypto:
            raise StreamingConfigError(
                f"authentication.algorithms {asymmetric} need the 'cryptography' package: "
                "pip install 'pyjwt[crypto]'",
                errors=[("gateway.authentication.algorithms", "needs pyjwt[crypto]")],
            )
        if hmac and self._secret is not None:
            key = self._secret.encode()
            if jwt.utils.is_pem_format(key) or jwt.utils.is_ssh_key(key):
                raise StreamingConfigError(
                    f"authentication.secret_key is a PEM or SSH key but algorithms are {hmac}: "
                    "a public key must never double as an HMAC secret (anyone holding it could "
                    "sign tokens); use an asymmetric algorithm such as RS256 with it, or a "
                    "random secret with HS256",
                    errors=[("gateway.authentication.secret_key", "a key used as HMAC secret")],
                )
        if self._secret is None:
            if options.enabled:
                raise StreamingConfigError(
                    "authentication is enabled but no secret is set: give "
                    "gateway.authentication.secret_key (camelCase: secretKey) or set the "
                    "JWT_SECRET environment variable; the gateway never runs without one",
                    errors=[("gateway.authentication.secret_key", "required when enabled")],
                )
            return
        size = len(self._secret.encode())
        weak = [a for a in hmac if size < _HMAC_MIN_BYTES[a]]
        if weak:
            _log.warning(
                "the JWT secret is shorter than %d bytes, which makes %s tokens guessable; "
                "use a longer random secret (e.g. python -c 'import secrets; "
                "print(secrets.token_urlsafe(64))')",
                max(_HMAC_MIN_BYTES[a] for a in weak),
                "/".join(weak),
            )

    @property
    def enabled(self) -> bool:
        """Whether requests must carry a valid token."""
        return self._options.enabled

    @property
    def algorithms(self) -> tuple[str, ...]:
        """The allow-list tokens are verified against; the first one signs issued tokens."""
        return tuple(self._algorithms)

    # ------------------------------------------------------------------ requests

    def token_from_request(self, request: web.BaseRequest) -> str | None:
        """The token a request carries: the ``token`` query parameter first, then an
        ``Authorization: Bearer <token>`` header; ``None`` when it has neither.

        An ``Authorization`` header that is not ``Bearer <token>`` raises
        :class:`AuthenticationError` (reason ``malformed_header``) rather than being ignored.
        """
        token = request.query.get("token")
        if token:
            return token
        header = request.headers.get("Authorization")
        if header is None:
            return None
        scheme, _, rest = header.strip().partition(" ")
        credentials = rest.strip()
        if scheme.lower() != "bearer" or not credentials or " " in credentials:
            # Quote the scheme only when it is a scheme's name: a bare token is no scheme.
            got = (
                f"got scheme {scheme!r}"
                if _SCHEME.fullmatch(scheme) and scheme.lower() != "bearer"
                else "got something else"
            )
            raise _refuse(
                "malformed_header",
                f"the Authorization header must read 'Bearer <token>' ({got}); or pass the "
                "token as ?token=<token>",
            )
        return credentials

    def authenticate_request(self, request: web.BaseRequest) -> Claims | None:
        """The verified claims of a request's token; ``None`` when authentication is disabled.

        Enabled, a missing or invalid token raises :class:`AuthenticationError` (``UNAUTHORIZED``;
        answer HTTP 401 before an upgrade) with a ``reason`` in its context.
        """
        if not self.enabled:
            return None
        try:
            token = self.token_from_request(request)
            if token is None:
                raise _refuse(
                    "missing",
                    "authentication is required: pass a JWT as the 'token' query parameter "
                    "(?token=...) or in an 'Authorization: Bearer <token>' header",
                )
            return self.verify(token)
        except AuthenticationError as exc:
            _log.info(
                "refused a request from %s to %s: %s",
                request.remote,
                request.path,
                exc.context.get("reason"),
            )
            raise

    # ------------------------------------------------------------------ tokens

    def verify(self, token: str) -> Claims:
        """Verify ``token`` and return its claims, or raise :class:`AuthenticationError`.

        ``context['reason']`` is one of ``missing``, ``too_long``, ``malformed``,
        ``algorithm_not_allowed``, ``bad_signature``, ``missing_claim``, ``expired``,
        ``not_yet_valid``, ``wrong_issuer``, ``wrong_audience``, ``bad_claim``, ``no_secret``,
        ``invalid``.
        """
        if not isinstance(token, str) or not token:
            raise _refuse("missing", "no token given")
        if len(token) > MAX_TOKEN_LENGTH:
            raise _refuse(
                "too_long", f"the token is longer than {MAX_TOKEN_LENGTH} characters; refused"
            )
        if self._secret is None:
            raise _refuse(
                "no_secret",
                "no JWT secret is configured, so no token can be verified; set "
                "gateway.authentication.secret_key or $JWT_SECRET",
            )
        options = self._options
        require = ["exp"] if options.require_exp else []
        try:
            payload: dict[str, Any] = jwt.decode(
                token,
                self._secret,
                algorithms=self._algorithms,
                # Time claims are checked below against the injected clock, not PyJWT's.
                options={
                    "require": require,
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
                issuer=options.issuer,
                audience=options.audience,
            )
        except jwt.InvalidAlgorithmError:
            raise self._algorithm_refusal(token) from None
        except jwt.InvalidSignatureError:
            raise _refuse(
                "bad_signature",
                "the token's signature does not match: it was not signed with this server's "
                "key (forged, or issued for another server)",
            ) from None
        except jwt.MissingRequiredClaimError as exc:
            raise _refuse(
                "missing_claim",
                f"the token has no {exc.claim!r} claim, which this server requires"
                + ("; issue tokens with an expiry" if exc.claim == "exp" else ""),
                claim=exc.claim,
            ) from None
        except jwt.InvalidIssuerError:
            raise _refuse(
                "wrong_issuer",
                f"the token was not issued by {options.issuer!r}",
                expected=options.issuer,
            ) from None
        except jwt.InvalidAudienceError:
            raise _refuse(
                "wrong_audience",
                f"the token is not meant for audience {options.audience!r}"
                if options.audience
                else "the token names an audience ('aud') but this server expects none",
                expected=options.audience,
            ) from None
        except jwt.DecodeError:
            raise _refuse("malformed", "the token is not a well-formed JWT") from None
        except jwt.InvalidKeyError:
            _log.error("the configured JWT key cannot be used with %s", self._algorithms)
            raise _refuse("invalid", "the server could not verify the token") from None
        except jwt.InvalidTokenError as exc:
            raise _refuse("invalid", f"the token is invalid ({type(exc).__name__})") from None
        expires_at = self._check_times(payload)
        return self._claims(payload, expires_at)

    def seconds_left(self, claims: Claims) -> float | None:
        """How long, from now on the injected clock, a connection authenticated with ``claims``
        may stay open: until the token's ``exp`` plus ``leeway``, then it must be closed
        (``UNAUTHORIZED``). ``None`` for a token without ``exp``; 0.0 once that moment has
        passed. Schedule the close with ``clock.call_later(seconds_left, ...)``."""
        if claims.expires_at is None:
            return None
        deadline = claims.expires_at + self._options.leeway
        return max(0.0, deadline - self._clock.now().timestamp())

    def _algorithm_refusal(self, token: str) -> AuthenticationError:
        try:
            alg: object = jwt.get_unverified_header(token).get("alg")
        except jwt.InvalidTokenError:
            alg = None
        # Only a known algorithm's name is quoted back: the header is the client's text.
        known = alg if isinstance(alg, str) and alg in _KNOWN_ALGORITHMS else None
        allowed = ", ".join(self._algorithms)
        shown = repr(known) if known is not None else "(not a known JWT algorithm)"
        return _refuse(
            "algorithm_not_allowed",
            f"the token's algorithm {shown} is not allowed; this server accepts {allowed} only",
            algorithm=known,
            allowed=list(self._algorithms),
        )

    def _check_times(self, payload: Mapping[str, Any]) -> float | None:
        """Refuse a token out of its validity period; return its ``exp`` (``None``: none)."""
        now = self._clock.now().timestamp()
        leeway = self._options.leeway
        exp = self._numeric_date(payload, "exp")
        if exp is not None and exp <= now - leeway:
            raise _refuse(
                "expired",
                f"the token expired {now - exp:.0f} s ago; get a fresh one",
                expired_seconds_ago=now - exp,
            )
        for claim in ("nbf", "iat"):
            value = self._numeric_date(payload, claim)
            if value is not None and value > now + leeway:
                raise _refuse(
                    "not_yet_valid",
                    f"the token is not valid yet ({claim} is {value - now:.0f} s in the future; "
                    "check the clocks or raise authentication.leeway)",
                    claim=claim,
                )
        return exp

    @staticmethod
    def _numeric_date(payload: Mapping[str, Any], claim: str) -> float | None:
        value = payload.get(claim)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise _refuse(
                "malformed", f"the token's {claim!r} claim is not a number of seconds", claim=claim
            )
        return float(value)

    @staticmethod
    def _claims(payload: dict[str, Any], expires_at: float | None) -> Claims:
        executions: frozenset[str] | None = None
        if EXECUTIONS_CLAIM in payload:
            value = payload[EXECUTIONS_CLAIM]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise _refuse(
                    "bad_claim",
                    f"the token's {EXECUTIONS_CLAIM!r} claim must be a list of execution ids",
                    claim=EXECUTIONS_CLAIM,
                )
            executions = frozenset(value)
        subject = payload.get("sub")
        return Claims(
            subject=subject if isinstance(subject, str) else None,
            executions=executions,
            raw=payload,
            expires_at=expires_at,
        )

    def issue_token(
        self,
        subject: str,
        executions: Iterable[str] | None = None,
        *,
        expires_in: str | float | None = None,
        extra_claims: Mapping[str, Any] | None = None,
    ) -> str:
        """A signed token for ``subject``, valid for ``expires_in`` (default: the options'
        ``expires_in``, e.g. ``"1h"``) from the clock's now.

        ``executions`` restricts which executions the bearer may subscribe to (``None``: any).
        ``iss`` and ``aud`` are set from the options when configured. ``extra_claims`` adds
        claims; it may not set ``sub``, ``iat``, ``exp``, ``iss``, ``aud`` or ``executions``.
        Signs with the first allowed algorithm.
        """
        if self._secret is None:
            raise StreamingConfigError(
                "cannot issue a token: no secret is set; give "
                "gateway.authentication.secret_key or set $JWT_SECRET",
                errors=[("gateway.authentication.secret_key", "required to issue tokens")],
            )
        if isinstance(executions, str):
            raise TypeError(
                f"executions must be a list of execution ids, not a str; write [{executions!r}]"
            )
        extra = dict(extra_claims or {})
        clashing = sorted(_MANAGED_CLAIMS.intersection(extra))
        if clashing:
            raise ValueError(
                f"extra_claims may not set {clashing}; use the subject, executions and "
                "expires_in arguments or the issuer/audience options"
            )
        lifetime = parse_duration(self._options.expires_in if expires_in is None else expires_in)
        now = self._clock.now().timestamp()
        payload: dict[str, Any] = {
            **extra,
            "sub": subject,
            "iat": int(now),
            "exp": math.ceil(now + lifetime),
        }
        if executions is not None:
            payload[EXECUTIONS_CLAIM] = sorted(set(executions))
        if self._options.issuer is not None:
            payload["iss"] = self._options.issuer
        if self._options.audience is not None:
            payload["aud"] = self._options.audience
        try:
            return jwt.encode(payload, self._secret, algorithm=self._algorithms[0])
        except (jwt.InvalidKeyError, ValueError, TypeError) as exc:
            raise StreamingConfigError(
                f"cannot sign a {self._algorithms[0]} token with the configured key "
                f"({type(exc).__name__}); asymmetric tokens are signed with the private key",
                errors=[("gateway.authentication.secret_key", "cannot sign")],
            ) from None


__all__ = [
    "EXECUTIONS_CLAIM",
    "REDACTED_LOGGERS",
    "Claims",
    "JwtAuthenticator",
    "TokenRedactingFilter",
    "install_token_redaction",
    "redact_tokens",
]
