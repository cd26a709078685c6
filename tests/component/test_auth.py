"""Authentication at the edge: JWT (HS256 and RS256/JWKS), static tokens, the admin role."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from talkwire.server.app import Application
from talkwire.v1 import admin_pb2, admin_pb2_grpc
from tests.conftest import make_config
from tests.support.grpcx import Stream, message, open_frame

SECRET = "s3cret-for-tests-only-32-bytes-long!"


def _token(**claims: Any) -> str:
    base = {
        "sub": "alice",
        "iss": "https://id.example",
        "aud": "talkwire",
        "exp": int(time.time()) + 300,
        "customer_id": "c-100",
    }
    base.update(claims)
    return jwt.encode({k: v for k, v in base.items() if v is not None}, SECRET, algorithm="HS256")


@pytest.fixture
async def jwt_app(make_app: Any, tmp_path: Path) -> Application:
    auth = {
        "kind": "jwt",
        "algorithms": ["HS256"],
        "key": SECRET,
        "issuer": "https://id.example",
        "audience": "talkwire",
        "leeway": 0,
    }
    app: Application = await make_app(make_config(tmp_path, auth=auth))
    return app


async def _status(app: Application, token: str | None) -> grpc.StatusCode:
    async with grpc.aio.insecure_channel(app.target) as channel:
        s = Stream(channel, token)
        await s.send(open_frame())
        try:
            first = await s.call.read()
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        if first is not grpc.aio.EOF and first.WhichOneof("frame") == "opened":
            s.cancel()
            return grpc.StatusCode.OK
        return await s.status()


async def test_valid_jwt_opens_and_claims_are_stored(jwt_app: Application) -> None:
    async with grpc.aio.insecure_channel(jwt_app.target) as channel:
        s = Stream(channel, _token())
        opened = await s.open()
        record = await jwt_app.store.get_session(opened.session_id)
        assert record is not None
        assert record.subject == "alice"
        assert record.identity.claims["customer_id"] == "c-100"
        s.cancel()


@pytest.mark.parametrize(
    ("token", "why"),
    [
        (None, "missing"),
        ("garbage", "malformed"),
        (_token(exp=int(time.time()) - 60), "expired"),
        (_token(aud="someone-else"), "wrong audience"),
        (_token(iss="https://evil.example"), "wrong issuer"),
        (
            jwt.encode(
                {"sub": "alice", "exp": int(time.time()) + 300},
                "other-key-32-bytes-long-xxxxxxxx",
                algorithm="HS256",
            ),
            "wrong key",
        ),
        (
            jwt.encode(
                {
                    "sub": "alice",
                    "aud": "talkwire",
                    "iss": "https://id.example",
                    "exp": int(time.time()) + 300,
                },
                None,
                algorithm="none",
            ),
            "alg=none",
        ),
    ],
)
async def test_bad_tokens_are_unauthenticated(
    jwt_app: Application, token: str | None, why: str
) -> None:
    assert await _status(jwt_app, token) == grpc.StatusCode.UNAUTHENTICATED, why
    assert await _status(jwt_app, _token()) == grpc.StatusCode.OK  # still serving


async def test_rs256_with_jwks_file(make_app: Any, tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="k1", use="sig", alg="RS256")
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [jwk]}))
    auth = {"kind": "jwt", "algorithms": ["RS256"], "jwks_file": str(jwks)}
    app = await make_app(make_config(tmp_path, auth=auth))
    good = jwt.encode(
        {"sub": "carol", "exp": int(time.time()) + 60},
        key,
        algorithm="RS256",
        headers={"kid": "k1"},
    )
    assert await _status(app, good) == grpc.StatusCode.OK
    forged = jwt.encode(
        {"sub": "carol", "exp": int(time.time()) + 60},
        SECRET,
        algorithm="HS256",
        headers={"kid": "k1"},
    )
    assert await _status(app, forged) == grpc.StatusCode.UNAUTHENTICATED


async def test_admin_rpcs_need_the_admin_role(app: Application) -> None:
    async with grpc.aio.insecure_channel(app.target) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await admin.ListSessions(
                admin_pb2.ListSessionsRequest(), metadata=(("authorization", "Bearer alice-token"),)
            )
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as anonymous:
            await admin.ListSessions(admin_pb2.ListSessionsRequest())
        assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
        s = Stream(channel, "alice-token")
        opened = await s.open()
        await s.send(message("hi"))
        await s.recv()
        listed = await admin.ListSessions(
            admin_pb2.ListSessionsRequest(), metadata=(("authorization", "Bearer admin-token"),)
        )
        assert [x.session_id for x in listed.sessions] == [opened.session_id]
        assert listed.sessions[0].head_seq == 1
        assert listed.sessions[0].attached
        s.cancel()


async def _list_sessions(app: Application, token: str) -> grpc.StatusCode:
    async with grpc.aio.insecure_channel(app.target) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        try:
            await admin.ListSessions(
                admin_pb2.ListSessionsRequest(), metadata=(("authorization", f"Bearer {token}"),)
            )
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK


@pytest.mark.parametrize(
    "roles",
    [
        {"admin": False},
        {"admin": True},
        {"roles": ["admin"]},
        ["admin", 1],
        ["admin", {"x": 1}],
        7,
        True,
    ],
    ids=["map-false", "map-true", "nested-map", "mixed-list", "list-with-map", "number", "bool"],
)
async def test_a_roles_claim_of_the_wrong_shape_grants_nothing(
    jwt_app: Application, roles: Any, caplog: pytest.LogCaptureFixture
) -> None:
    token = _token(roles=roles)
    assert await _list_sessions(jwt_app, token) == grpc.StatusCode.PERMISSION_DENIED
    logged = [r.getMessage() for r in caplog.records if "grants no roles" in r.getMessage()]
    assert logged and "'roles'" in logged[0]
    assert all(token not in r.getMessage() for r in caplog.records)
    # the server keeps serving, and a well-formed admin token still works
    assert await _list_sessions(jwt_app, _token(roles=["admin"])) == grpc.StatusCode.OK


@pytest.mark.parametrize(
    ("roles", "expected"),
    [
        (["admin"], grpc.StatusCode.OK),
        (["support", "admin"], grpc.StatusCode.OK),
        ("support admin", grpc.StatusCode.OK),
        ("admin", grpc.StatusCode.OK),
        (["support"], grpc.StatusCode.PERMISSION_DENIED),
        ("administrator", grpc.StatusCode.PERMISSION_DENIED),
        ([], grpc.StatusCode.PERMISSION_DENIED),
        (None, grpc.StatusCode.PERMISSION_DENIED),
    ],
)
async def test_roles_as_a_list_or_a_space_separated_string(
    jwt_app: Application, roles: Any, expected: grpc.StatusCode
) -> None:
    assert await _list_sessions(jwt_app, _token(roles=roles)) == expected
