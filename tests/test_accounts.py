"""Accounts through the GraphQL API: register, login, refresh rotation, logout, me, bad input."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import jwt
import pytest

from app.models import utcnow
from app.services import accounts
from app.settings import Settings
from tests.conftest import JWT_SECRET, GraphQLClient

REGISTER = """mutation($input: RegisterInput!) { register(input: $input) {
  accessToken refreshToken user { id email name role } errors { code message field } } }"""
LOGIN = """mutation($input: LoginInput!) { login(input: $input) {
  accessToken refreshToken user { email } errors { code message field } } }"""
REFRESH = """mutation($t: String!) { refreshToken(refreshToken: $t) {
  accessToken refreshToken errors { code message } } }"""
LOGOUT = "mutation($t: String!) { logout(refreshToken: $t) { ok errors { code } } }"
ME = "{ me { email role } }"


async def register(gql: GraphQLClient, email: str = "ana@example.com", password: str = "correct horse",
                   name: str = "Ana") -> dict:
    return (await gql(REGISTER, {"input": {"email": email, "password": password, "name": name}}))["register"]


async def test_register_login_and_me(gql: GraphQLClient) -> None:
    registered = await register(gql, email="  Ana@Example.com ")
    assert registered["errors"] == []
    assert registered["user"]["email"] == "ana@example.com"
    assert registered["user"]["role"] == "USER"
    assert (await gql(ME, token=registered["accessToken"]))["me"] == {"email": "ana@example.com", "role": "USER"}

    logged_in = (await gql(LOGIN, {"input": {"email": "ANA@example.com", "password": "correct horse"}}))["login"]
    assert logged_in["errors"] == [] and logged_in["accessToken"]
    assert (await gql(ME))["me"] is None  # anonymous


@pytest.mark.parametrize(("field", "value", "message"), [
    ("email", "not-an-email", "valid email"),
    ("password", "short", "at least 8"),
    ("name", "x" * 201, "at most 200"),
    ("name", "   ", "required"),
])
async def test_register_rejects_bad_input(gql: GraphQLClient, field: str, value: str, message: str) -> None:
    fields = {"email": "bob@example.com", "password": "long enough", "name": "Bob", field: value}
    result = await register(gql, **fields)
    assert result["accessToken"] is None
    assert [(e["code"], e["field"]) for e in result["errors"]] == [("INVALID_INPUT", field)]
    assert message in result["errors"][0]["message"]


async def test_duplicate_email_is_taken(gql: GraphQLClient) -> None:
    await register(gql)
    again = await register(gql, email="ANA@example.com")
    assert [e["code"] for e in again["errors"]] == ["EMAIL_TAKEN"]


async def test_wrong_password_and_unknown_email_look_the_same(gql: GraphQLClient) -> None:
    await register(gql)
    wrong = (await gql(LOGIN, {"input": {"email": "ana@example.com", "password": "wrong password"}}))["login"]
    unknown = (await gql(LOGIN, {"input": {"email": "nobody@example.com", "password": "whatever1"}}))["login"]
    assert wrong["errors"] == unknown["errors"]
    assert wrong["errors"][0]["code"] == "INVALID_CREDENTIALS"
    assert wrong["accessToken"] is None


async def test_refresh_rotates_and_reuse_revokes_the_family(gql: GraphQLClient) -> None:
    first = (await register(gql))["refreshToken"]
    second = (await gql(REFRESH, {"t": first}))["refreshToken"]
    assert second["errors"] == [] and second["refreshToken"] != first
    # The old token is dead, and presenting it again ends the whole family...
    reused = (await gql(REFRESH, {"t": first}))["refreshToken"]
    assert [e["code"] for e in reused["errors"]] == ["INVALID_TOKEN"]
    # ...including the token that was issued in its place.
    after = (await gql(REFRESH, {"t": second["refreshToken"]}))["refreshToken"]
    assert [e["code"] for e in after["errors"]] == ["INVALID_TOKEN"]


async def test_logout_ends_the_refresh_token(gql: GraphQLClient) -> None:
    token = (await register(gql))["refreshToken"]
    assert (await gql(LOGOUT, {"t": token}))["logout"] == {"ok": True, "errors": []}
    refreshed = (await gql(REFRESH, {"t": token}))["refreshToken"]
    assert [e["code"] for e in refreshed["errors"]] == ["INVALID_TOKEN"]
    garbage = (await gql(REFRESH, {"t": "not-a-token"}))["refreshToken"]
    assert [e["code"] for e in garbage["errors"]] == ["INVALID_TOKEN"]


def _forged_tokens(user_id: str) -> dict[str, str]:
    now = utcnow()
    claims = {"sub": user_id, "role": "ADMIN", "typ": "access", "iat": now, "exp": now + timedelta(minutes=5)}
    return {
        "wrong key": jwt.encode(claims, "another-secret-that-is-long-enough-xx", algorithm="HS256"),
        "expired": jwt.encode({**claims, "exp": now - timedelta(seconds=1)}, JWT_SECRET, algorithm="HS256"),
        "alg none": jwt.encode(claims, None, algorithm="none"),
        "garbage": "abc.def.ghi",
    }


async def test_a_token_accepted_before_is_refused_once_it_expires(gql: GraphQLClient) -> None:
    """Verified tokens are remembered; their expiry is still checked at every use."""
    user_id = (await register(gql))["user"]["id"]
    now = utcnow()
    token = jwt.encode({"sub": user_id, "role": "USER", "typ": "access", "iat": now,
                        "exp": now + timedelta(seconds=1)}, JWT_SECRET, algorithm="HS256")
    assert (await gql(ME, token=token))["me"] is not None
    await asyncio.sleep(max(0.0, (now + timedelta(seconds=1.2) - utcnow()).total_seconds()))
    response = await gql.http.post("/graphql", json={"query": ME}, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401


def test_remembered_tokens_are_bounded_and_the_oldest_go_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """A full cache drops its oldest token, not everything: the buyers of a big sale would
    otherwise all pay the signature check again at the same moment."""
    monkeypatch.setattr(accounts, "VERIFIED_TOKENS_KEPT", 3)
    monkeypatch.setattr(accounts, "_verified", {})
    settings = Settings(jwt_secret=JWT_SECRET)
    now = utcnow()
    tokens = [jwt.encode({"sub": str(user_id), "role": "USER", "typ": "access", "iat": now,
                          "exp": now + timedelta(minutes=5)}, JWT_SECRET, algorithm="HS256") for user_id in range(5)]
    for token in tokens:
        assert accounts.decode_access_token(token, settings).user_id == tokens.index(token)
    assert [token for token, _ in accounts._verified] == tokens[2:]


async def test_forged_expired_and_unsigned_tokens_are_unauthenticated(gql: GraphQLClient) -> None:
    """Refused outright over HTTP (401, a top-level UNAUTHENTICATED), reads included: read
    anonymously, a client would never learn that its token needs renewing."""
    user_id = (await register(gql))["user"]["id"]
    for name, token in _forged_tokens(user_id).items():
        for query in (ME, """mutation { reserveSeats(input: {eventId: "1", quantity: 1}) { errors { code } } }"""):
            response = await gql.http.post("/graphql", json={"query": query},
                                           headers={"Authorization": f"Bearer {token}"})
            assert response.status_code == 401, name
            assert response.headers["www-authenticate"].startswith("Bearer"), name
            body = response.json()
            assert body["data"] is None and [e["extensions"]["code"] for e in body["errors"]] == \
                ["UNAUTHENTICATED"], (name, body)
    assert (await gql(ME))["me"] is None  # no token at all still reads anonymously
