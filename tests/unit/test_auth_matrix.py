"""The JWT matrix on the authenticator: every kind of bad token is refused with its reason, the
refusal never puts any part of the token in a log record, and a good token's expiry is known so
that its connection can be closed on time."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
from aiohttp.test_utils import make_mocked_request

from streaming_module.config import AuthenticationOptions
from streaming_module.core.clock import FakeClock
from streaming_module.errors import AuthenticationError, StreamingConfigError
from streaming_module.gateway.auth import (
    MAX_TOKEN_LENGTH,
    JwtAuthenticator,
    TokenRedactingFilter,
    install_token_redaction,
    redact_tokens,
)

SECRET = "the-matrix-secret-is-long-enough-for-hs256!!"
OTHER_SECRET = "another-secret-that-is-long-enough-for-hs256"
CLOCK_START = FakeClock().now().timestamp()
NOW = int(CLOCK_START)

# An RSA public key (generated once with `openssl genrsa 2048 | openssl rsa -pubout`). The
# algorithm-confusion attack signs an HS256 token with it as the HMAC secret, hoping a server
# that verifies RS256 with this key will use it as one.
RSA_PUBLIC_KEY = """-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA9Pb/7Bq9X61gCveMWKA7
Ts80Q9zj8GJoYxFdUds1hC0K00hu0ynXFDVX8fqRWw11ShIFMo1Z1/w5533sP7fF
61gSRZ48dkrNVSzCasyQ897rmxbaiHPqPUKEVnZ63PA1ig0GdRhnj4XEh/n5FLhV
Q7MwFUCKNjW0fqssuc+Ap89Hygiu3V1h3QhFH6JBKYdTttpZjgys04zXLuxKAxKz
NBpObiYOVvJ+mLr7qnnDUbVAQYoON2AVP0BimZQISXvbMl2IF1iue7YYEhWzrkd1
bRmKf0DOCZfweZ+xSOr5OdeZfi6fchNTctiCGr2nJv0wCQg9GKyigciJvAv4vD9S
uwIDAQAB
-----END PUBLIC KEY-----
"""


def _b64(data: dict[str, Any] | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _hs256_by_hand(payload: dict[str, Any] | bytes, key: bytes, alg: str = "HS256") -> str:
    """An HMAC-signed token made without PyJWT (which refuses a PEM key as an HMAC secret)."""
    signing_input = f"{_b64({'alg': alg, 'typ': 'JWT'})}.{_b64(payload)}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def _signed(claims: dict[str, Any], secret: str = SECRET, alg: str = "HS256") -> str:
    return jwt.encode({"sub": "mallory", **claims}, secret, algorithm=alg)


@pytest.fixture(autouse=True)
def _no_env_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JWT_SECRET", raising=False)


def _auth(clock: FakeClock | None = None, **options: Any) -> JwtAuthenticator:
    opts = AuthenticationOptions(**{"enabled": True, "secret_key": SECRET, **options})
    return JwtAuthenticator(opts, clock or FakeClock())


# ------------------------------------------------------------------ the matrix


@dataclass(frozen=True)
class Case:
    name: str
    token: Callable[[], str]
    reason: str
    options: tuple[tuple[str, Any], ...] = ()


def _oversized() -> str:
    return _signed({"exp": NOW + 60, "pad": "p" * MAX_TOKEN_LENGTH})


MATRIX = [
    Case("malformed: one segment", lambda: "not-a-jwt-at-all", "malformed"),
    Case("malformed: three empty segments", lambda: "..", "malformed"),
    Case("malformed: bad base64", lambda: "a$b.c$d.e$f", "malformed"),
    Case("malformed: header not JSON", lambda: f"{_b64(b'{nope')}.{_b64({})}.", "malformed"),
    Case(
        "malformed: payload not JSON, correctly signed",
        lambda: _hs256_by_hand(b"[1,2", SECRET.encode()),
        "malformed",
    ),
    Case(
        "malformed: payload a JSON list, correctly signed",
        lambda: _hs256_by_hand(b"[1,2]", SECRET.encode()),
        "malformed",
    ),
    Case(
        "alg none, empty signature",
        lambda: f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64({'sub': 'x', 'exp': NOW + 60})}.",
        "algorithm_not_allowed",
    ),
    Case(
        "alg none, with a signature",
        lambda: f"{_b64({'alg': 'none'})}.{_b64({'sub': 'x', 'exp': NOW + 60})}.c2ln",
        "algorithm_not_allowed",
    ),
    Case(
        "alg missing from the header",
        lambda: f"{_b64({'typ': 'JWT'})}.{_b64({'sub': 'x', 'exp': NOW + 60})}.c2ln",
        "algorithm_not_allowed",
    ),
    Case("wrong key", lambda: _signed({"exp": NOW + 60}, OTHER_SECRET), "bad_signature"),
    Case(
        "payload swapped under a valid signature",
        lambda: ".".join(
            [
                _signed({"exp": NOW + 60}).split(".")[0],
                _b64({"sub": "admin", "exp": NOW + 60}),
                _signed({"exp": NOW + 60}).split(".")[2],
            ]
        ),
        "bad_signature",
    ),
    Case(
        "HS512 when only HS256 is allowed",
        lambda: _signed({"exp": NOW + 60}, SECRET * 2, "HS512"),
        "algorithm_not_allowed",
    ),
    Case(
        "RS256 header when only HS256 is allowed",
        lambda: f"{_b64({'alg': 'RS256'})}.{_b64({'sub': 'x', 'exp': NOW + 60})}.AAAA",
        "algorithm_not_allowed",
    ),
    Case("expired", lambda: _signed({"exp": NOW - 1}), "expired"),
    Case("expired long ago", lambda: _signed({"exp": 1}), "expired"),
    Case("expires exactly now", lambda: _signed({"exp": NOW}), "expired"),
    Case(
        "not yet valid (nbf)",
        lambda: _signed({"exp": NOW + 60, "nbf": NOW + 30}),
        "not_yet_valid",
    ),
    Case(
        "issued in the future (iat)",
        lambda: _signed({"exp": NOW + 60, "iat": NOW + 30}),
        "not_yet_valid",
    ),
    Case("no exp", lambda: _signed({}), "missing_claim"),
    Case("exp is not a number", lambda: _signed({"exp": "soon"}), "malformed"),
    Case("nbf is not a number", lambda: _signed({"exp": NOW + 60, "nbf": [1]}), "malformed"),
    Case("oversized", _oversized, "too_long"),
    Case(
        "wrong audience",
        lambda: _signed({"exp": NOW + 60, "aud": "billing", "iss": "https://id.example"}),
        "wrong_audience",
        (("audience", "streaming"), ("issuer", "https://id.example")),
    ),
    Case(
        "no audience when one is required",
        lambda: _signed({"exp": NOW + 60, "iss": "https://id.example"}),
        "missing_claim",
        (("audience", "streaming"), ("issuer", "https://id.example")),
    ),
    Case(
        "an audience when none is expected",
        lambda: _signed({"exp": NOW + 60, "aud": "streaming"}),
        "wrong_audience",
    ),
    Case(
        "wrong issuer",
        lambda: _signed({"exp": NOW + 60, "aud": "streaming", "iss": "https://evil.example"}),
        "wrong_issuer",
        (("audience", "streaming"), ("issuer", "https://id.example")),
    ),
    Case(
        "no issuer when one is required",
        lambda: _signed({"exp": NOW + 60, "aud": "streaming"}),
        "missing_claim",
        (("audience", "streaming"), ("issuer", "https://id.example")),
    ),
    Case(
        "executions claim is not a list",
        lambda: _signed({"exp": NOW + 60, "executions": "exec-1"}),
        "bad_claim",
    ),
]


def _fragments(token: str, size: int = 10) -> Iterator[str]:
    """Every run of ``size`` characters of the token: none may appear in a log."""
    for start in range(0, max(1, len(token) - size + 1)):
        yield token[start : start + size]


def _assert_no_fragment(token: str, records: list[logging.LogRecord]) -> None:
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    texts = [formatter.format(record) for record in records]
    texts += [repr(record.__dict__) for record in records]
    blob = "\n".join(texts)
    leaked = next((f for f in _fragments(token) if f in blob), None)
    assert leaked is None, f"a token fragment {leaked!r} reached the log:\n{blob[:2000]}"


@pytest.mark.parametrize("case", MATRIX, ids=[c.name for c in MATRIX])
def test_every_bad_token_is_refused_with_its_reason(case: Case) -> None:
    auth = _auth(**dict(case.options))
    with pytest.raises(AuthenticationError) as exc_info:
        auth.verify(case.token())
    assert exc_info.value.context["reason"] == case.reason
    assert exc_info.value.close_code == 4401
    assert exc_info.value.code == "unauthorized"


@pytest.mark.parametrize("where", ["query", "header"])
@pytest.mark.parametrize("case", MATRIX, ids=[c.name for c in MATRIX])
def test_no_refusal_logs_any_part_of_the_token(
    case: Case, where: str, caplog: pytest.LogCaptureFixture
) -> None:
    auth = _auth(**dict(case.options))
    token = case.token()
    if where == "query":
        request = make_mocked_request("GET", f"/ws?token={token}")
    else:
        request = make_mocked_request("GET", "/ws", headers={"Authorization": f"Bearer {token}"})
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(AuthenticationError) as exc_info:
            auth.authenticate_request(request)
    assert exc_info.value.context["reason"] == case.reason
    # The refusal is logged (address, path, reason) ...
    assert any(case.reason in r.getMessage() for r in caplog.records)
    # ... and neither the log nor the message the client gets back quotes the token.
    _assert_no_fragment(token, caplog.records)
    assert not any(f in exc_info.value.message for f in _fragments(token))
    assert not any(f in repr(exc_info.value.context) for f in _fragments(token))


@pytest.mark.parametrize(
    "header",
    [
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl",  # a token with no scheme
        "Token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl",
        "Bearer eyJhbGciOiJIUzI1NiJ9 .eyJzdWIiOiJ4In0.c2lnbmF0dXJl",
        "bearer",
    ],
)
def test_a_malformed_authorization_header_quotes_no_part_of_it(
    header: str, caplog: pytest.LogCaptureFixture
) -> None:
    request = make_mocked_request("GET", "/ws", headers={"Authorization": header})
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(AuthenticationError) as exc_info:
            _auth().authenticate_request(request)
    assert exc_info.value.context["reason"] == "malformed_header"
    secret_part = header.split()[-1]
    for fragment in _fragments(secret_part, 8):
        assert fragment not in exc_info.value.message
    _assert_no_fragment(secret_part, caplog.records)


def test_an_unknown_algorithm_name_is_not_echoed() -> None:
    token = f"{_b64({'alg': 'eyJzdWIiOiJ4In0.evil'})}.{_b64({'exp': NOW + 60})}.AAAA"
    with pytest.raises(AuthenticationError) as exc_info:
        _auth().verify(token)
    assert exc_info.value.context["reason"] == "algorithm_not_allowed"
    assert exc_info.value.context["algorithm"] is None
    assert "evil" not in exc_info.value.message
    assert "not a known JWT algorithm" in exc_info.value.message


def test_a_known_algorithm_name_is_named_in_the_refusal() -> None:
    token = f"{_b64({'alg': 'none'})}.{_b64({'exp': NOW + 60})}."
    with pytest.raises(AuthenticationError) as exc_info:
        _auth().verify(token)
    assert exc_info.value.context["algorithm"] == "none"
    assert "'none' is not allowed" in exc_info.value.message


# ------------------------------------------------------------------ algorithm confusion


def test_hs256_signed_with_the_rsa_public_key_is_refused_by_an_rs256_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The server verifies RS256 with its public key. The attacker, who knows that public key,
    # signs an HS256 token with it as the HMAC secret. The allow-list refuses HS256 before any
    # key is used. (RS verification itself needs `cryptography`, which the dev environment does
    # not install; the allow-list check comes first and does not need it.)
    monkeypatch.setattr(jwt.algorithms, "has_crypto", True)
    server = JwtAuthenticator(
        AuthenticationOptions(enabled=True, algorithms=["RS256"], secret_key=RSA_PUBLIC_KEY),
        FakeClock(),
    )
    forged = _hs256_by_hand({"sub": "admin", "exp": NOW + 60}, RSA_PUBLIC_KEY.encode())
    with pytest.raises(AuthenticationError) as exc_info:
        server.verify(forged)
    assert exc_info.value.context["reason"] == "algorithm_not_allowed"
    assert exc_info.value.context["algorithm"] == "HS256"


def test_a_public_key_configured_as_an_hmac_secret_is_refused_at_start() -> None:
    # The other half of the confusion: a server told to verify HS256 with a PEM public key would
    # accept tokens signed by anyone who has the (public) key.
    with pytest.raises(StreamingConfigError, match="never double as an HMAC secret"):
        JwtAuthenticator(
            AuthenticationOptions(enabled=True, algorithms=["HS256"], secret_key=RSA_PUBLIC_KEY)
        )


def test_mixing_hmac_and_rsa_in_the_allow_list_is_refused_at_start() -> None:
    with pytest.raises(StreamingConfigError, match="mixes HMAC"):
        JwtAuthenticator(
            AuthenticationOptions(
                enabled=True, algorithms=["RS256", "HS256"], secret_key=RSA_PUBLIC_KEY
            )
        )


# ------------------------------------------------------------------ what the options allow


def test_a_token_without_exp_passes_only_when_the_options_say_so() -> None:
    token = _signed({})
    with pytest.raises(AuthenticationError):
        _auth().verify(token)
    claims = _auth(require_exp=False).verify(token)
    assert claims.subject == "mallory"
    assert claims.expires_at is None
    assert _auth(require_exp=False).seconds_left(claims) is None


def test_audience_may_be_a_list_of_accepted_audiences() -> None:
    auth = _auth(audience=["streaming", "dashboard"])
    assert auth.verify(_signed({"exp": NOW + 60, "aud": "dashboard"})).subject == "mallory"
    assert auth.verify(_signed({"exp": NOW + 60, "aud": ["x", "streaming"]})).subject == "mallory"
    with pytest.raises(AuthenticationError) as exc_info:
        auth.verify(_signed({"exp": NOW + 60, "aud": "billing"}))
    assert exc_info.value.context["reason"] == "wrong_audience"


@pytest.mark.parametrize("bad", ["", [], [""]])
def test_an_empty_audience_option_is_refused(bad: Any) -> None:
    with pytest.raises(ValueError, match="audience"):
        AuthenticationOptions(enabled=True, secret_key=SECRET, audience=bad)


def test_issued_tokens_carry_the_configured_issuer_and_audience() -> None:
    auth = _auth(issuer="https://id.example", audience=["streaming", "dashboard"])
    token = auth.issue_token("alice")
    payload = jwt.decode(
        token, SECRET, algorithms=["HS256"], audience="dashboard", options={"verify_exp": False}
    )
    assert payload["iss"] == "https://id.example"
    assert payload["aud"] == ["streaming", "dashboard"]
    assert auth.verify(token).subject == "alice"


def test_leeway_accepts_a_token_that_expired_within_it_and_no_later() -> None:
    clock = FakeClock()
    token = _signed({"exp": NOW + 10})
    lenient = _auth(clock, leeway=5)
    clock.advance(14)
    assert lenient.verify(token).subject == "mallory"
    clock.advance(1)
    with pytest.raises(AuthenticationError) as exc_info:
        lenient.verify(token)
    assert exc_info.value.context["reason"] == "expired"


# ------------------------------------------------------------------ expiry of open connections


def test_a_verified_token_exposes_its_expiry() -> None:
    claims = _auth().verify(_signed({"exp": NOW + 90}))
    assert claims.expires_at == NOW + 90


def test_seconds_left_counts_down_to_exp_plus_leeway_on_the_clock() -> None:
    clock = FakeClock()
    auth = _auth(clock, leeway=30)
    claims = auth.verify(auth.issue_token("alice", expires_in=60))
    expected = claims.expires_at + 30 - CLOCK_START  # type: ignore[operator]
    assert auth.seconds_left(claims) == pytest.approx(expected)
    clock.advance(50)
    assert auth.seconds_left(claims) == pytest.approx(expected - 50)
    clock.advance(expected - 50)
    assert auth.seconds_left(claims) == 0.0
    clock.advance(3600)
    assert auth.seconds_left(claims) == 0.0


def test_a_connection_may_stay_exactly_as_long_as_a_new_one_would_be_let_in() -> None:
    # The deadline seconds_left gives is the moment verify starts refusing the same token.
    clock = FakeClock()
    auth = _auth(clock, leeway=2)
    token = _signed({"exp": NOW + 20})
    claims = auth.verify(token)
    left = auth.seconds_left(claims)
    assert left is not None
    clock.advance(left - 0.001)
    auth.verify(token)
    clock.advance(0.001)
    with pytest.raises(AuthenticationError):
        auth.verify(token)


# ------------------------------------------------------------------ the redacting filter


def test_redact_tokens_removes_jwts_and_bearer_or_query_credentials() -> None:
    token = _signed({"exp": NOW + 60})
    text = (
        f"b'GET /ws?token={token} HTTP/1.1' Authorization: Bearer {token}; bare {token[:40]}; "
        "opaque ?token=not-a-jwt&x=1 Bearer opaque-credential"
    )
    redacted = redact_tokens(text)
    for fragment in _fragments(token):
        assert fragment not in redacted
    assert "not-a-jwt" not in redacted and "opaque-credential" not in redacted
    assert "&x=1" in redacted and "HTTP/1.1" in redacted


def test_the_filter_redacts_messages_arguments_and_tracebacks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    token = _signed({"exp": NOW + 60, "pad": "q" * 200})
    logger = logging.getLogger("test.redaction")
    logger.addFilter(TokenRedactingFilter())
    try:
        with caplog.at_level(logging.DEBUG, logger="test.redaction"):
            logger.info("request line %s", f"GET /?token={token[:100]}...")
            try:
                raise ValueError(f"Got more than 8190 bytes when reading: b'Bearer {token[:100]}'")
            except ValueError:
                logger.exception("Error handling request from %s", "127.0.0.1")
                logger.warning("with stack", stack_info=True, extra={"note": "x"})
    finally:
        logger.filters.clear()
    assert len(caplog.records) == 3
    assert "Error handling request from 127.0.0.1" in caplog.text
    assert "ValueError" in caplog.text  # the traceback is kept, without the token
    _assert_no_fragment(token[:100], caplog.records)
    assert all(record.exc_info is None for record in caplog.records)


def test_an_enabled_authenticator_installs_the_filter_on_aiohttp_loggers_once() -> None:
    names = ("aiohttp.server", "aiohttp.access")
    before = {n: list(logging.getLogger(n).filters) for n in names}
    try:
        for name in names:
            logging.getLogger(name).filters.clear()
        _auth()
        _auth()
        install_token_redaction()
        for name in names:
            filters = logging.getLogger(name).filters
            assert sum(isinstance(f, TokenRedactingFilter) for f in filters) == 1
    finally:
        for name, filters in before.items():
            logging.getLogger(name).filters[:] = filters


def test_the_matrix_covers_every_reason_verify_documents() -> None:
    documented = {
        "missing",
        "too_long",
        "malformed",
        "algorithm_not_allowed",
        "bad_signature",
        "missing_claim",
        "expired",
        "not_yet_valid",
        "wrong_issuer",
        "wrong_audience",
        "bad_claim",
    }
    covered = {case.reason for case in MATRIX}
    # "missing" has its own test below: an empty token is no token in a query or a header.
    assert documented - covered == {"missing"}


def test_a_missing_token_is_refused_and_logged_without_a_token(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(AuthenticationError) as exc_info:
            _auth().authenticate_request(make_mocked_request("GET", "/ws?other=1"))
    assert exc_info.value.context["reason"] == "missing"
    assert "missing" in caplog.text
