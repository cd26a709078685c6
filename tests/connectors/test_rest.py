"""The rest connector against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import base64
import random
from pathlib import Path
from typing import Any

import httpcore
import pytest

from talkwire.connectors.base import CallContext
from talkwire.connectors.errors import (
    BackendError,
    CircuitOpenError,
    ConnectorConfigError,
    ConnectorTimeoutError,
    ConnectorUnavailableError,
    RejectedInputError,
    ResultNotFoundError,
)
from talkwire.connectors.rest import RestConnector
from tests.connectors.conftest import FakeClock
from tests.connectors.httpserver import MiniHttpServer, Request, Response


def rest(base_url: str, operations: dict[str, Any], **extra: Any) -> RestConnector:
    config: dict[str, Any] = {
        "type": "rest",
        "base_url": base_url,
        "allow_private": True,
        "timeout": 5,
        "retries": {"attempts": 3, "base_delay": 0.001, "max_delay": 0.005},
        "operations": operations,
    }
    config.update(extra)
    return RestConnector("api", config)


GET_ORDER = {
    "get_order": {
        "path": "/orders/{order_id}",
        "params": {"order_id": {"type": "integer"}},
        "result": "object",
    }
}


async def test_get_with_path_query_and_mapping(http: MiniHttpServer) -> None:
    @http.route("GET", "/orders/1001")
    async def order(req: Request) -> Response:
        return Response(json={"data": {"items": [{"status": "shipped", "eta": "2025-06-03"}]}})

    ops = {
        "status": {
            "path": "/orders/{order_id}",
            "query": {"verbose": "{verbose}", "who": "{user.sub}", "skip": "{missing}"},
            "params": {
                "order_id": {"type": "integer"},
                "verbose": {"type": "boolean", "default": False},
                "missing": {"type": "string", "required": False},
            },
            "select": "data.items[0]",
            "fields": {"state": "status", "when": "eta"},
            "result": "object",
        }
    }
    async with rest(http.base_url, ops) as conn:
        got = await conn.invoke(
            "status", {"order_id": "1001"}, CallContext(subject="c-100", claims={})
        )
    assert got == {"state": "shipped", "when": "2025-06-03"}
    assert http.requests[0].query == {"verbose": "false", "who": "c-100"}


async def test_both_subject_spellings_send_the_subject(http: MiniHttpServer) -> None:
    ops = {
        "who": {
            "path": "/who/{user.subject}",
            "query": {"sub": "{user.sub}", "subject": "{user.subject}"},
            "result": "value",
        }
    }
    async with rest(http.base_url, ops) as conn:
        with pytest.raises(ResultNotFoundError):
            await conn.invoke("who", {}, CallContext(subject="c-100", claims={"sub": "jwt"}))
    assert http.requests[0].target.split("?")[0] == "/who/c-100"
    assert http.requests[0].query == {"sub": "c-100", "subject": "c-100"}


async def test_path_params_are_quoted(http: MiniHttpServer) -> None:
    ops = {"get": {"path": "/things/{name}", "params": ["name"], "result": "value"}}
    async with rest(http.base_url, ops) as conn:
        with pytest.raises(ResultNotFoundError):
            await conn.invoke("get", {"name": "../admin?x=1#y"})
        with pytest.raises(RejectedInputError):
            await conn.invoke("get", {"name": ".."})
    assert http.requests[0].target == "/things/..%2Fadmin%3Fx%3D1%23y"
    assert len(http.requests) == 1


async def test_status_mapping(http: MiniHttpServer) -> None:
    @http.route("GET", "/bad")
    async def bad(req: Request) -> Response:
        return Response(400, json={"message": "order_id malformed"})

    @http.route("GET", "/denied")
    async def denied(req: Request) -> Response:
        return Response(403, json={})

    ops = {"bad": {"path": "/bad"}, "denied": {"path": "/denied"}, "missing": {"path": "/x"}}
    async with rest(http.base_url, ops) as conn:
        with pytest.raises(BackendError, match="order_id malformed"):
            await conn.invoke("bad", {})
        with pytest.raises(BackendError, match="credentials"):
            await conn.invoke("denied", {})
        with pytest.raises(ResultNotFoundError):
            await conn.invoke("missing", {})
    # 4xx are not retried
    assert http.hits("/bad") == 1


@pytest.mark.parametrize("kind", ["bearer", "api_key_header", "api_key_query", "basic"])
async def test_static_auth_kinds(http: MiniHttpServer, kind: str) -> None:
    expected = {
        "bearer": ("authorization", "Bearer s3cret"),
        "api_key_header": ("x-api-key", "k3y"),
        "api_key_query": ("query:api_key", "k3y"),
        "basic": ("authorization", "Basic " + base64.b64encode(b"bot:pw").decode()),
    }[kind]
    auth = {
        "bearer": {"type": "bearer", "token": "s3cret"},
        "api_key_header": {"type": "api_key", "name": "X-API-Key", "value": "k3y"},
        "api_key_query": {"type": "api_key", "in": "query", "name": "api_key", "value": "k3y"},
        "basic": {"type": "basic", "username": "bot", "password": "pw"},
    }[kind]

    @http.route("GET", "/me")
    async def me(req: Request) -> Response:
        name, value = expected
        got = req.query.get(name[6:]) if name.startswith("query:") else req.headers.get(name)
        return Response(json={"ok": True}) if got == value else Response(401, json={})

    async with rest(http.base_url, {"me": {"path": "/me", "result": "object"}}, auth=auth) as c:
        assert await c.invoke("me", {}) == {"ok": True}
    async with rest(http.base_url, {"me": {"path": "/me", "result": "object"}}) as c:
        with pytest.raises(BackendError, match="401"):
            await c.invoke("me", {})


async def test_bearer_token_from_env(http: MiniHttpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TW_TEST_TOKEN", "from-env")

    @http.route("GET", "/me")
    async def me(req: Request) -> Response:
        return Response(json={"auth": req.headers.get("authorization")})

    auth = {"type": "bearer", "token": "env:TW_TEST_TOKEN"}
    async with rest(http.base_url, {"me": {"path": "/me", "result": "object"}}, auth=auth) as c:
        assert await c.invoke("me", {}) == {"auth": "Bearer from-env"}


async def test_connector_secrets_follow_the_one_rule(
    http: MiniHttpServer,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    @http.route("GET", "/me")
    async def me(req: Request) -> Response:
        return Response(json={"auth": req.headers.get("authorization")})

    ops = {"me": {"path": "/me", "result": "object"}}
    (tmp_path / "token").write_text("from-file\n")
    auth = {"type": "bearer", "token": f"file:{tmp_path / 'token'}"}
    async with rest(http.base_url, ops, auth=auth) as c:
        assert await c.invoke("me", {}) == {"auth": "Bearer from-file"}
    # The old spelling still works, and says what to write instead.
    monkeypatch.setenv("TW_TEST_TOKEN", "old-env")
    with caplog.at_level("WARNING", logger="talkwire.connectors.spec"):
        async with rest(
            http.base_url, ops, auth={"type": "bearer", "token_env": "TW_TEST_TOKEN"}
        ) as c:
            assert await c.invoke("me", {}) == {"auth": "Bearer old-env"}
    assert [r.getMessage() for r in caplog.records] == [
        "connectors.api.auth.token_env is deprecated: write token: env:TW_TEST_TOKEN"
    ]
    # An empty variable is an error naming the key, as everywhere else.
    monkeypatch.setenv("TW_TEST_TOKEN", "")
    with pytest.raises(ConnectorConfigError) as err:
        rest(http.base_url, ops, auth={"type": "bearer", "token": "env:TW_TEST_TOKEN"})
    assert err.value.message == (
        "connectors.api.auth.token: environment variable TW_TEST_TOKEN is empty"
    )


class OAuthBackend:
    def __init__(self, http: MiniHttpServer) -> None:
        self.issued: list[str] = []
        self.valid: set[str] = set()
        self.refuse_all = False

        @http.route("POST", "/oauth/token")
        async def token(req: Request) -> Response:
            creds = base64.b64encode(b"talkwire:cs").decode()
            if req.headers.get("authorization") != f"Basic {creds}":
                return Response(401, json={"error": "invalid_client"})
            assert b"grant_type=client_credentials" in req.body
            tok = f"tok-{len(self.issued) + 1}"
            self.issued.append(tok)
            self.valid = {tok}
            return Response(json={"access_token": tok, "expires_in": 3600, "token_type": "Bearer"})

        @http.route("GET", "/data")
        async def data(req: Request) -> Response:
            auth = req.headers.get("authorization", "")
            if auth.removeprefix("Bearer ") in self.valid and not self.refuse_all:
                return Response(json={"token": auth.removeprefix("Bearer ")})
            return Response(401, json={"error": "invalid_token"})


def oauth_connector(http: MiniHttpServer) -> RestConnector:
    auth = {
        "type": "oauth2",
        "token_url": f"{http.base_url}/oauth/token",
        "client_id": "talkwire",
        "client_secret": "cs",
        "scope": "read",
        "refresh_margin": 60,
    }
    return rest(http.base_url, {"data": {"path": "/data", "result": "object"}}, auth=auth)


async def test_oauth2_token_cached_and_refreshed_before_expiry(
    http: MiniHttpServer, clock: FakeClock
) -> None:
    backend = OAuthBackend(http)
    async with oauth_connector(http) as conn:
        conn.auth.clock = clock  # type: ignore[attr-defined]
        assert await conn.invoke("data", {}) == {"token": "tok-1"}
        assert await conn.invoke("data", {}) == {"token": "tok-1"}
        assert backend.issued == ["tok-1"]
        clock.advance(3600 - 59)  # inside the refresh margin: refreshed before it expires
        assert await conn.invoke("data", {}) == {"token": "tok-2"}
    assert backend.issued == ["tok-1", "tok-2"]
    assert http.hits("/data") == 3


async def test_oauth2_refreshed_once_on_401(http: MiniHttpServer) -> None:
    backend = OAuthBackend(http)
    async with oauth_connector(http) as conn:
        assert await conn.invoke("data", {}) == {"token": "tok-1"}
        backend.valid = set()  # the backend revoked / expired the token early
        assert await conn.invoke("data", {}) == {"token": "tok-2"}
        assert backend.issued == ["tok-1", "tok-2"]
        # a backend that keeps refusing: exactly one refresh, then a clear error
        backend.refuse_all = True
        with pytest.raises(BackendError, match="401"):
            await conn.invoke("data", {})
    assert backend.issued == ["tok-1", "tok-2", "tok-3"]


class RecordingRandom(random.Random):
    def __init__(self) -> None:
        super().__init__(7)
        self.calls: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.calls.append((a, b))
        return super().uniform(a, b)


async def test_503_retried_with_jitter_then_breaker_opens_and_recovers(
    http: MiniHttpServer, clock: FakeClock
) -> None:
    healthy = False

    @http.route("GET", "/flaky")
    async def flaky(req: Request) -> Response:
        return Response(json={"ok": True}) if healthy else Response(503, json={})

    conn = rest(
        http.base_url,
        {"flaky": {"path": "/flaky", "result": "object"}},
        retries={"attempts": 3, "base_delay": 0.001, "max_delay": 0.004},
        breaker={"failures": 6, "reset_after": 30},
    )
    assert conn.breaker is not None
    conn.breaker.clock = clock
    rng = RecordingRandom()
    conn.retry.rng = rng
    async with conn:
        with pytest.raises(ConnectorUnavailableError, match="503"):
            await conn.invoke("flaky", {})
        assert http.hits("/flaky") == 3
        # full jitter: uniform(0, min(cap, base * 2**n)) between attempts
        assert rng.calls == [(0.0, 0.001), (0.0, 0.002)]
        with pytest.raises(ConnectorUnavailableError):
            await conn.invoke("flaky", {})
        assert http.hits("/flaky") == 6
        assert conn.breaker.state == "open"
        # open: fail fast, nothing reaches the backend
        for _ in range(3):
            with pytest.raises(CircuitOpenError):
                await conn.invoke("flaky", {})
        assert http.hits("/flaky") == 6
        # half-open probe fails -> open again
        clock.advance(30)
        assert conn.breaker.state == "half_open"
        with pytest.raises(ConnectorUnavailableError):
            await conn.invoke("flaky", {})
        assert http.hits("/flaky") == 7
        with pytest.raises(CircuitOpenError):
            await conn.invoke("flaky", {})
        # the backend recovers: the next probe closes the circuit
        healthy = True
        clock.advance(30)
        assert await conn.invoke("flaky", {}) == {"ok": True}
        assert conn.breaker.state == "closed"
        assert await conn.invoke("flaky", {}) == {"ok": True}
    assert http.hits("/flaky") == 9


async def test_non_idempotent_post_is_not_retried(http: MiniHttpServer) -> None:
    @http.route("POST", "/search")
    async def search(req: Request) -> Response:
        return Response(503, json={})

    ops = {"search": {"method": "POST", "path": "/search", "write": False, "body": {"q": "x"}}}
    async with rest(http.base_url, ops) as conn:
        with pytest.raises(ConnectorUnavailableError):
            await conn.invoke("search", {})
    assert http.hits("/search") == 1
    assert "idempotency-key" not in http.requests[0].headers


async def test_slow_drip_response_cut_at_total_deadline(http: MiniHttpServer) -> None:
    @http.route("GET", "/drip")
    async def drip(req: Request) -> Response:
        return Response(json={}, drip=True)

    async with rest(http.base_url, {"drip": {"path": "/drip"}}, timeout=0.3) as conn:
        with pytest.raises(ConnectorTimeoutError):
            await conn.invoke("drip", {})
        # the caller's own deadline is honoured as well
        import time

        ctx = CallContext(deadline=time.monotonic() + 0.2)
        conn.timeout = 30
        with pytest.raises(ConnectorTimeoutError):
            await conn.invoke("drip", {}, ctx)


async def test_idempotent_write_after_dropped_connection_creates_one_record(
    http: MiniHttpServer,
) -> None:
    records: dict[str, dict[str, Any]] = {}

    @http.route("POST", "/payments")
    async def pay(req: Request) -> Response:
        key = req.headers["idempotency-key"]
        if key in records:
            return Response(200, json=records[key])
        records[key] = {"id": len(records) + 1, **req.json()}
        return Response(drop=True)  # recorded, but the answer never arrives

    ops = {
        "pay": {
            "method": "POST",
            "path": "/payments",
            "params": {"customer_id": "string", "amount": "number"},
            "body": {"customer_id": "{customer_id}", "amount": "{amount}"},
            "write": True,
            "result": "object",
        }
    }
    async with rest(http.base_url, ops) as conn:
        got = await conn.invoke("pay", {"customer_id": "c-100", "amount": "12.5"})
        assert got == {"id": 1, "customer_id": "c-100", "amount": 12.5}
        assert len(records) == 1
        keys = [r.headers["idempotency-key"] for r in http.requests]
        assert len(keys) == 2
        assert keys[0] == keys[1]
        # a caller-supplied key is used as is
        got = await conn.invoke(
            "pay", {"customer_id": "c-100", "amount": 1}, CallContext(idempotency_key="k-42")
        )
        assert got["id"] == 2
        assert list(records) == [keys[0], "k-42"]


class ConnectRecorder:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.hosts: list[str] = []
        original = httpcore.AnyIOBackend.connect_tcp

        async def connect_tcp(backend: Any, host: str, *args: Any, **kwargs: Any) -> Any:
            self.hosts.append(host)
            return await original(backend, host, *args, **kwargs)

        monkeypatch.setattr(httpcore.AnyIOBackend, "connect_tcp", connect_tcp)


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "169.254.169.254", "10.0.0.1", "[::1]", "192.168.1.1", "[fe80::1]"]
)
async def test_ssrf_guard_refuses_private_addresses_before_connecting(
    http: MiniHttpServer, monkeypatch: pytest.MonkeyPatch, host: str
) -> None:
    recorder = ConnectRecorder(monkeypatch)
    port = http.port if host == "127.0.0.1" else 80
    conn = rest(f"http://{host}:{port}", GET_ORDER, allow_private=False)
    async with conn:
        with pytest.raises(RejectedInputError, match="refused to connect"):
            await conn.invoke("get_order", {"order_id": 1})
    assert recorder.hosts == []
    assert http.connections == 0


async def test_ssrf_guard_refuses_redirects_to_private_addresses(
    http: MiniHttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    @http.route("GET", "/orders/1")
    async def redirect(req: Request) -> Response:
        target = req.query["to"]
        return Response(302, headers={"location": target}, json={})

    @http.route("GET", "/secret")
    async def secret(req: Request) -> Response:
        return Response(json={"secret": True})

    ops = {
        "get_order": {
            "path": "/orders/{order_id}",
            "query": {"to": "{to}"},
            "params": {"order_id": "integer", "to": "string"},
            "result": "object",
        }
    }
    recorder = ConnectRecorder(monkeypatch)
    base = f"http://localhost:{http.port}"
    async with rest(
        base, ops, allow_private=False, allow_hosts=["localhost"], follow_redirects=True
    ) as conn:
        for target in (
            f"http://127.0.0.1:{http.port}/secret",
            "http://169.254.169.254/latest/meta-data/",
            "http://10.0.0.1/",
            "http://[::1]/",
        ):
            with pytest.raises(RejectedInputError, match="refused to connect"):
                await conn.invoke("get_order", {"order_id": 1, "to": target})
    assert http.hits("/secret") == 0
    assert set(recorder.hosts) == {"127.0.0.1"}  # only the allowed localhost connection
    assert http.hits("/orders/1") == 4
    # redirects are not followed at all by default: a 3xx is a backend error
    async with rest(base, ops, allow_hosts=["localhost"], allow_private=False) as conn:
        with pytest.raises(BackendError, match="redirect"):
            await conn.invoke("get_order", {"order_id": 1, "to": f"{http.base_url}/secret"})
    assert http.hits("/secret") == 0


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ConnectorConfigError, match=r"connectors\.api\.operations\.x\.path"):
        rest("http://example.com", {"x": {"path": "/a/{nope}"}})
    with pytest.raises(ConnectorConfigError, match=r"connectors\.api\.operations\.x\.metod"):
        rest("http://example.com", {"x": {"metod": "GET", "path": "/"}})
    with pytest.raises(ConnectorConfigError, match=r"connectors\.api\.auth\.type"):
        rest("http://example.com", {"x": {"path": "/"}}, auth={"type": "magic"})
