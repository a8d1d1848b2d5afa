"""CPU per request, measured in one process: the app driven over ASGI directly.

    .venv/bin/python -m bench.cpu [--requests N] [--in-flight C] [--profile FILE]

No uvicorn and no second process: the app (with PostgreSQL and Redis, as in production) and
the callers share one event loop, and the process's own CPU time is divided by the requests.
That takes out what makes bench.flash_sale's per-request CPU vary from run to run on a shared
machine (two server processes, the load generator and PostgreSQL on two cores), so the effect
of a change to the request path shows in a few percent: run it before and after. It measures
`{ __typename }` (the stack alone) and `reserveSeats` of 1 place by C buyers, C in flight (the
reserves batch as they would on one worker), and prints both and their ratio. The callers'
own share is small (building a scope, reading a body) and the same for both.

`--profile FILE` writes a cProfile of the reserves (it inflates call-heavy code: use it to
find where the calls go, and this command's own figures without it to weigh them).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import secrets
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from bench import harness
from bench.flash_sale import CREATE_EVENT, CREATE_VENUE, LOGIN, PUBLISH, REGISTER, RESERVE, TRIVIAL

App = Callable[..., Awaitable[None]]


async def post(app: App, query: str, variables: dict[str, Any] | None = None, token: str | None = None) -> Any:
    """One POST /graphql through the ASGI app; its JSON answer."""
    headers = [(b"content-type", b"application/json"), (b"host", b"127.0.0.1")]
    if token:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/graphql", "raw_path": b"/graphql", "query_string": b"",
             "root_path": "", "headers": headers, "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 80)}
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    sent = False
    chunks: list[bytes] = []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:  # the app only asks again to learn of a disconnect: none comes
            await asyncio.Event().wait()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return json.loads(b"".join(chunks))


async def set_up(app: App, buyers: int) -> tuple[str, list[str]]:
    """An event of a million places, and `buyers` buyers' tokens."""
    login = await post(app, LOGIN, {"input": {"email": harness.ADMIN_EMAIL, "password": harness.ADMIN_PASSWORD}})
    admin = login["data"]["login"]["accessToken"]
    venue = await post(app, CREATE_VENUE, {"input": {"name": "CPU Hall", "address": "1 Loopback Road",
                                                     "city": "Localhost", "country": "Nowhere",
                                                     "capacity": 1_000_000}}, admin)
    starts = datetime.now(UTC) + timedelta(days=30)
    created = await post(app, CREATE_EVENT, {"input": {
        "venueId": venue["data"]["createVenue"]["venue"]["id"], "name": "CPU event", "category": "concert",
        "startsAt": starts.isoformat(), "endsAt": (starts + timedelta(hours=3)).isoformat(),
        "capacity": 1_000_000, "priceCents": 4500, "maxTicketsPerBooking": 10,
        "maxTicketsPerUser": 1_000_000}}, admin)
    event_id = created["data"]["createEvent"]["event"]["id"]
    await post(app, PUBLISH, {"id": event_id}, admin)
    tag = secrets.token_hex(3)
    tokens = []
    for i in range(buyers):
        registered = await post(app, REGISTER, {"input": {"email": f"cpu{i}-{tag}@bench.example.com",
                                                          "password": "bench-password-1234", "name": "CPU"}})
        tokens.append(registered["data"]["register"]["accessToken"])
    return event_id, tokens


async def measure(app: App, tokens: list[str], requests: int, query: str, variables: dict[str, Any],
                  field: str, profile: cProfile.Profile | None = None) -> tuple[float, Counter[str]]:
    """CPU milliseconds of this process per request, `len(tokens)` in flight; the outcomes."""
    outcomes: Counter[str] = Counter()
    left = iter(range(requests))

    async def caller(token: str) -> None:
        for _ in left:
            answer = await post(app, query, variables, token)
            payload = (answer.get("data") or {}).get(field)
            errors = answer.get("errors") or (payload.get("errors") if isinstance(payload, dict) else None)
            outcomes[errors[0].get("code", "ERROR") if errors else "OK"] += 1

    started = time.process_time()
    if profile is not None:
        profile.enable()
    await asyncio.gather(*(caller(token) for token in tokens))
    if profile is not None:
        profile.disable()
    return (time.process_time() - started) * 1000 / requests, outcomes


async def run(args: argparse.Namespace) -> None:
    from app.web import create_app

    app = create_app()
    async with app.router.lifespan_context(app):
        event_id, tokens = await set_up(app, args.in_flight)
        reserve = {"input": {"eventId": event_id, "quantity": 1}}
        await measure(app, tokens, args.requests // 4, TRIVIAL, {}, "__typename")  # warm-up
        await measure(app, tokens, args.requests // 4, RESERVE, reserve, "reserveSeats")
        trivial, trivial_outcomes = await measure(app, tokens, args.requests, TRIVIAL, {}, "__typename")
        profile = cProfile.Profile() if args.profile else None
        reserves, reserve_outcomes = await measure(app, tokens, args.requests, RESERVE, reserve, "reserveSeats",
                                                   profile)
    if profile is not None:
        profile.dump_stats(args.profile)
    print(f"{{ __typename }}  {trivial:.3f} ms CPU per request  {dict(trivial_outcomes)}")
    print(f"reserveSeats    {reserves:.3f} ms CPU per request  {dict(reserve_outcomes)}"
          + ("  (profiled: inflated)" if profile else ""))
    print(f"ratio           {trivial / reserves:.2f}  ({args.requests} requests each, {args.in_flight} in flight, "
          "one process, no uvicorn)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=4000, help="measured requests of each kind")
    parser.add_argument("--in-flight", type=int, default=32, help="callers, each a buyer of its own")
    parser.add_argument("--profile", help="write a cProfile of the reserves here")
    args = parser.parse_args(argv)
    env = harness.server_env(harness.free_port(), 1)
    harness.prepare(env)
    os.environ.update(env)  # create_app reads its settings from the environment
    import uvloop  # as uvicorn runs the app

    uvloop.install()
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
