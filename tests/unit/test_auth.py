"""JWT authentication: what a token must be to let a client in, and what the client is told."""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

import jwt
import pytest
from aiohttp.test_utils import make_mocked_request

from streaming_module.config import AuthenticationOptions
from streaming_module.core.clock import FakeClock
from streaming_module.errors import AuthenticationError, StreamingConfigError
from streaming_module.gateway.auth import Claims, JwtAuthenticator

SECRET = "a-test-secret-that-is-long-enough-for-hs256!"


def _b64(data: dict[str, Any] | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _auth(clock: FakeClock | None = None, **options: Any) -> JwtAuthenticator:
    opts = AuthenticationOptions(**{"enabled": True, "secret_key": SECRET, **options})
    return JwtAuthenticator(opts, clock or FakeClock())


def _reason(exc_info: pytest.ExceptionInfo[AuthenticationError]) -> Any:
    return exc_info.value.context["reason"]


@pytest.fixture(autouse=True)
def _no_env_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JWT_SECRET", raising=False)


# ------------------------------------------------------------------ configuration


def test_enabled_without_any_secret_refuses_to_start() -> None:
    with pytest.raises(StreamingConfigError, match="JWT_SECRET") as exc_info:
        JwtAuthenticator(AuthenticationOptions(enabled=True))
    assert "secret_key" in str(exc_info.value)


def test_secret_falls_back_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JWT_SECRET", SECRET)
    auth = JwtAuthenticator(AuthenticationOptions(enabled=True), FakeClock())
    token = jwt.encode({"sub": "u", "exp": 10**12}, SECRET, algorithm="HS256")
    assert auth.verify(token).subject == "u"


def test_disabled_without_secret_is_fine_and_lets_requests_through() -> None:
    auth = JwtAuthenticator(AuthenticationOptions(enabled=False))
    assert not auth.enabled
    assert auth.authenticate_request(make_mocked_request("GET", "/")) is None


def test_short_secret_warns_without_revealing_it(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="streaming_module.gateway.auth"):
        JwtAuthenticator(AuthenticationOptions(enabled=True, secret_key="hunter2"))
    assert "shorter than 32 bytes" in caplog.text
    assert "hunter2" not in caplog.text


def test_long_secret_does_not_warn(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="streaming_module.gateway.auth"):
        _auth()
    assert caplog.text == ""


def test_mixing_hmac_and_asymmetric_algorithms_is_refused() -> None:
    with pytest.raises(StreamingConfigError, match="mixes HMAC"):
        _auth(algorithms=["HS256", "RS256"])


# ------------------------------------------------------------------ verify


def test_valid_hs256_token_gives_its_claims() -> None:
    clock = FakeClock()
    now = int(clock.now().timestamp())
    token = jwt.encode({"sub": "alice", "exp": now + 60, "role": "x"}, SECRET, algorithm="HS256")
    claims = _auth(clock).verify(token)
    assert claims == Claims(subject="alice", executions=None)
    assert claims.raw["role"] == "x"
    assert claims.may_subscribe("anything")


def test_expired_token_is_refused_on_the_injected_clock() -> None:
    clock = FakeClock()
    auth = _auth(clock)
    token = auth.issue_token("alice", expires_in=60)
    assert auth.verify(token).subject == "alice"
    clock.advance(61)
    with pytest.raises(AuthenticationError, match="expired") as exc_info:
        auth.verify(token)
    assert _reason(exc_info) == "expired"
    assert exc_info.value.close_code == 4401


def test_leeway_tolerates_clock_skew() -> None:
    clock = FakeClock()
    strict, lenient = _auth(clock), _auth(clock, leeway=30)
    token = strict.issue_token("alice", expires_in=60)
    clock.advance(75)
    with pytest.raises(AuthenticationError):
        strict.verify(token)
    assert lenient.verify(token).subject == "alice"
    clock.advance(20)
    with pytest.raises(AuthenticationError):
        lenient.verify(token)


def test_token_from_the_future_is_not_yet_valid() -> None:
    clock = FakeClock()
    now = int(clock.now().timestamp())
    token = jwt.encode({"sub": "a", "exp": now + 600, "nbf": now + 300}, SECRET, "HS256")
    with pytest.raises(AuthenticationError) as exc_info:
        _auth(clock).verify(token)
    assert _reason(exc_info) == "not_yet_valid"
    assert _auth(clock, leeway=301).verify(token).subject == "a"


def test_forged_signature_is_refused() -> None:
    token = jwt.encode({"sub": "mallory", "exp": 10**12}, "another-secret" * 4, algorithm="HS256")
    with pytest.raises(AuthenticationError, match="signature") as exc_info:
        _auth().verify(token)
    assert _reason(exc_info) == "bad_signature"


def test_tampered_payload_is_refused() -> None:
    token = jwt.encode({"sub": "alice", "exp": 10**12}, SECRET, algorithm="HS256")
    header, _, signature = token.split(".")
    forged = f"{header}.{_b64({'sub': 'admin', 'exp': 10**12})}.{signature}"
    with pytest.raises(AuthenticationError) as exc_info:
        _auth().verify(forged)
    assert _reason(exc_info) == "bad_signature"


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none_token_is_refused(alg: str) -> None:
    unsigned = f"{_b64({'alg': alg, 'typ': 'JWT'})}.{_b64({'sub': 'admin', 'exp': 10**12})}."
    with pytest.raises(AuthenticationError, match="not allowed") as exc_info:
        _auth().verify(unsigned)
    assert _reason(exc_info) == "algorithm_not_allowed"
    assert "HS256" in str(exc_info.value)


def test_rs256_token_is_refused_when_only_hs256_is_allowed() -> None:
    # Hand-made: the algorithm is refused before any key is used, so no RSA key is needed.
    token = f"{_b64({'alg': 'RS256', 'typ': 'JWT'})}.{_b64({'sub': 'a', 'exp': 10**12})}.AAAA"
    with pytest.raises(AuthenticationError) as exc_info:
        _auth().verify(token)
    assert _reason(exc_info) == "algorithm_not_allowed"
    assert exc_info.value.context["algorithm"] == "RS256"


def test_hs512_token_is_refused_when_only_hs256_is_allowed() -> None:
    secret = SECRET * 2  # HS512 wants 64 bytes
    token = jwt.encode({"sub": "a", "exp": 10**12}, secret, algorithm="HS512")
    with pytest.raises(AuthenticationError) as exc_info:
        _auth(secret_key=secret).verify(token)
    assert _reason(exc_info) == "algorithm_not_allowed"
    assert _auth(secret_key=secret, algorithms=["HS256", "HS512"]).verify(token).subject == "a"


def test_secret_too_short_for_hs512_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="streaming_module.gateway.auth"):
        _auth(algorithms=["HS256", "HS512"])
    assert "shorter than 64 bytes, which makes HS512 tokens guessable" in caplog.text


def test_token_without_exp_is_refused_unless_allowed() -> None:
    token = jwt.encode({"sub": "a"}, SECRET, algorithm="HS256")
    with pytest.raises(AuthenticationError, match="'exp'") as exc_info:
        _auth().verify(token)
    assert _reason(exc_info) == "missing_claim"
    assert exc_info.value.context["claim"] == "exp"
    assert _auth(require_exp=False).verify(token).subject == "a"


def test_non_numeric_exp_is_malformed() -> None:
    token = jwt.encode({"sub": "a", "exp": "tomorrow"}, SECRET, algorithm="HS256")
    with pytest.raises(AuthenticationError) as exc_info:
        _auth().verify(token)
    assert _reason(exc_info) == "malformed"


@pytest.mark.parametrize("garbage", ["garbage", "a.b.c", "....", "é.é.é", "x" * 9000])
def test_garbage_is_refused(garbage: str) -> None:
    with pytest.raises(AuthenticationError) as exc_info:
        _auth().verify(garbage)
    assert _reason(exc_info) in {"malformed", "too_long"}


def test_empty_token_is_missing() -> None:
    with pytest.raises(AuthenticationError) as exc_info:
        _auth().verify("")
    assert _reason(exc_info) == "missing"


def test_issuer_and_audience_are_checked_when_configured() -> None:
    auth = _auth(issuer="https://issuer.example", audience="streaming")
    good = auth.issue_token("a")
    assert auth.verify(good).subject == "a"
    claims = {"sub": "a", "exp": 10**12}
    wrong_iss = jwt.encode({**claims, "iss": "evil", "aud": "streaming"}, SECRET, "HS256")
    wrong_aud = jwt.encode({**claims, "iss": "https://issuer.example", "aud": "x"}, SECRET, "HS256")
    no_iss = jwt.encode({**claims, "aud": "streaming"}, SECRET, "HS256")
    reasons = []
    for token in (wrong_iss, wrong_aud, no_iss):
        with pytest.raises(AuthenticationError) as exc_info:
            auth.verify(token)
        reasons.append(_reason(exc_info))
    assert reasons == ["wrong_issuer", "wrong_audience", "missing_claim"]


def test_token_with_an_audience_is_refused_when_none_is_expected() -> None:
    token = jwt.encode({"sub": "a", "exp": 10**12, "aud": "other-service"}, SECRET, "HS256")
    with pytest.raises(AuthenticationError) as exc_info:
        _auth().verify(token)
    assert _reason(exc_info) == "wrong_audience"


def test_executions_claim_restricts_subscriptions() -> None:
    auth = _auth()
    claims = auth.verify(auth.issue_token("alice", ["exec-1", "exec-2"]))
    assert claims.executions == frozenset({"exec-1", "exec-2"})
    assert claims.may_subscribe("exec-1")
    assert not claims.may_subscribe("exec-3")
    nothing = auth.verify(auth.issue_token("bob", []))
    assert not nothing.may_subscribe("exec-1")


@pytest.mark.parametrize("bad", ["exec-1", {"exec-1": True}, [1, 2], None])
def test_executions_claim_that_is_not_a_list_of_ids_is_refused(bad: Any) -> None:
    token = jwt.encode({"sub": "a", "exp": 10**12, "executions": bad}, SECRET, "HS256")
    with pytest.raises(AuthenticationError, match="list of execution ids") as exc_info:
        _auth().verify(token)
    assert _reason(exc_info) == "bad_claim"


def test_errors_never_contain_the_token() -> None:
    token = jwt.encode({"sub": "a", "exp": 1}, SECRET, algorithm="HS256")
    with pytest.raises(AuthenticationError) as exc_info:
        _auth().verify(token)
    assert token not in str(exc_info.value)
    assert token not in repr(exc_info.value.context)


# ------------------------------------------------------------------ requests


def test_token_from_query_parameter() -> None:
    request = make_mocked_request("GET", "/ws?token=abc.def.ghi")
    assert _auth().token_from_request(request) == "abc.def.ghi"


def test_token_from_bearer_header() -> None:
    request = make_mocked_request("GET", "/ws", headers={"Authorization": "Bearer abc.def.ghi"})
    assert _auth().token_from_request(request) == "abc.def.ghi"
    lower = make_mocked_request("GET", "/ws", headers={"Authorization": "bearer  abc.def.ghi "})
    assert _auth().token_from_request(lower) == "abc.def.ghi"


def test_query_parameter_wins_over_header() -> None:
    request = make_mocked_request(
        "GET", "/ws?token=from-query", headers={"Authorization": "Bearer from-header"}
    )
    assert _auth().token_from_request(request) == "from-query"


def test_no_token_anywhere_is_none() -> None:
    assert _auth().token_from_request(make_mocked_request("GET", "/ws")) is None


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer ", "Bearer a b", "abc"])
def test_malformed_authorization_header_is_refused(header: str) -> None:
    request = make_mocked_request("GET", "/ws", headers={"Authorization": header})
    with pytest.raises(AuthenticationError, match="Bearer <token>") as exc_info:
        _auth().token_from_request(request)
    assert _reason(exc_info) == "malformed_header"
    assert "dXNlcjpwYXNz" not in str(exc_info.value)


def test_authenticate_request_accepts_a_valid_token_and_refuses_a_missing_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    auth = _auth()
    token = auth.issue_token("alice", ["exec-1"])
    request = make_mocked_request("GET", f"/ws?token={token}")
    claims = auth.authenticate_request(request)
    assert claims is not None and claims.subject == "alice"

    with caplog.at_level(logging.INFO, logger="streaming_module.gateway.auth"):
        with pytest.raises(AuthenticationError, match="authentication is required") as exc_info:
            auth.authenticate_request(make_mocked_request("GET", "/ws"))
        assert _reason(exc_info) == "missing"
        forged = make_mocked_request("GET", f"/ws?token={token[:-4]}AAAA")
        with pytest.raises(AuthenticationError):
            auth.authenticate_request(forged)
    assert "missing" in caplog.text
    assert token[:-4] not in caplog.text


# ------------------------------------------------------------------ issue_token


def test_issue_token_honours_the_configured_expires_in() -> None:
    clock = FakeClock()
    auth = _auth(clock, expires_in="30m")
    payload = jwt.decode(
        auth.issue_token("alice"), SECRET, algorithms=["HS256"], options={"verify_exp": False}
    )
    now = clock.now().timestamp()
    assert payload["iat"] == int(now)
    assert payload["exp"] - payload["iat"] == 1800
    assert payload["sub"] == "alice"
    assert "executions" not in payload
    clock.advance(1799)
    assert auth.verify(auth.issue_token("x")).subject == "x"


def test_issue_token_expires_in_argument_overrides_the_option() -> None:
    clock = FakeClock()
    auth = _auth(clock, expires_in="1h")
    token = auth.issue_token("alice", expires_in="10s")
    clock.advance(9)
    auth.verify(token)
    clock.advance(2)
    with pytest.raises(AuthenticationError):
        auth.verify(token)


def test_issue_token_adds_extra_claims_but_not_managed_ones() -> None:
    auth = _auth()
    claims = auth.verify(auth.issue_token("a", extra_claims={"role": "viewer"}))
    assert claims.raw["role"] == "viewer"
    with pytest.raises(ValueError, match="exp"):
        auth.issue_token("a", extra_claims={"exp": 1})
    with pytest.raises(TypeError, match="list of execution ids"):
        auth.issue_token("a", "exec-1")


def test_issue_token_without_a_secret_says_how_to_set_one() -> None:
    auth = JwtAuthenticator(AuthenticationOptions(enabled=False))
    with pytest.raises(StreamingConfigError, match="JWT_SECRET"):
        auth.issue_token("a")
