"""Fitting the GraphQL ecosystem: GraphQL over HTTP status codes and media types, CORS,
Relay ids, persisted queries, subscriptions over Server-Sent Events."""

from __future__ import annotations

import pytest

from tests.conftest import GraphQLClient

GRJ = "application/graphql-response+json"


@pytest.fixture
def backend() -> str:
    """Transport behaviour: the embedded database is enough (tests needing more say so)."""
    return "sqlite"


# --- errors clients can act on ---------------------------------------------------------------

@pytest.mark.parametrize(("document", "variables", "code"), [
    ("{ events { totalCount ", {}, "GRAPHQL_PARSE_FAILED"),
    ("{ nope }", {}, "GRAPHQL_VALIDATION_FAILED"),
    ("query($id: ID!) { event(id: $id) { id } }", {}, None),  # a variable missing: a request error too
])
async def test_graphql_response_media_type_gives_4xx_for_request_errors(
        gql: GraphQLClient, document: str, variables: dict[str, object], code: str | None) -> None:
    response = await gql.http.post("/graphql", json={"query": document, "variables": variables},
                                   headers={"Accept": f"{GRJ}, application/json;q=0.9"})
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith(GRJ)
    body = response.json()
    assert "data" not in body  # nothing ran
    assert body["errors"][0]["message"]
    if code:
        assert body["errors"][0]["extensions"]["code"] == code

    # Plain application/json keeps the long-standing answer: 200 with data null.
    legacy = await gql.http.post("/graphql", json={"query": document, "variables": variables})
    assert legacy.status_code == 200
    assert legacy.headers["content-type"].startswith("application/json")
    assert legacy.json()["data"] is None


async def test_graphql_response_media_type_gives_200_when_executed(gql: GraphQLClient) -> None:
    response = await gql.http.post("/graphql", json={"query": "{ events { totalCount } event(id: \"x\") { id } }"},
                                   headers={"Accept": GRJ})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(GRJ)
    assert response.json()["data"] == {"events": {"totalCount": 0}, "event": None}


@pytest.mark.parametrize(("method", "kwargs", "status"), [
    ("POST", {"content": b"{not json", "headers": {"Content-Type": "application/json"}}, 400),
    ("POST", {"content": b"query", "headers": {"Content-Type": "text/plain"}}, 400),
    ("PUT", {"json": {"query": "{ me { id } }"}}, 405),
    ("POST", {"json": {"query": "{ me { id } }"}, "headers": {"Authorization": "Bearer forged"}}, 401),
])
async def test_transport_errors_are_graphql_json(gql: GraphQLClient, method: str, kwargs: dict[str, object],
                                                 status: int) -> None:
    headers = {"Accept": GRJ, **kwargs.pop("headers", {})}  # type: ignore[dict-item]
    response = await gql.http.request(method, "/graphql", headers=headers, **kwargs)  # type: ignore[arg-type]
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(GRJ)
    assert response.json()["errors"][0]["extensions"]["code"]
