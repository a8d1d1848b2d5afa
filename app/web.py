"""The ASGI application: GraphQL over HTTP and websockets, health, tickets."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import html
import io
import json
import logging
import signal
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import segno
from cross_web import HTTPException
from redis import asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from sqlalchemy import text
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.http import GraphQLRequestData
from strawberry.subscriptions import GRAPHQL_SSE_PROTOCOL, GRAPHQL_TRANSPORT_WS_PROTOCOL, GRAPHQL_WS_PROTOCOL

from app import metrics
from app.db import create_engine, create_sessionmaker
from app.errors import DomainError
from app.fanout import TransportWSHandler
from app.jobs import admission, run_every
from app.jobs.webhooks import run_deliverer
from app.middleware import REQUEST_ID_HEADER, BodySizeLimitMiddleware, RequestIdMiddleware, error_response
from app.persisted import Manifest, PersistedQueries, PersistedQueryError
from app.pubsub import Broker
from app.resolvers.context import AppServices, Context
from app.schema.schema import create_schema
from app.services import apikeys, bookings, tickets
from app.services.accounts import Identity, identity_from_authorization
from app.services.payments import MockGateway
from app.services.ratelimit import MemoryRateLimiter, RedisRateLimiter
from app.settings import Settings, load_settings
from app.sweeper import run_sweeper
from app.wsprotocol import CheckedWSHandler

logger = logging.getLogger(__name__)

MAX_SUBSCRIPTIONS_PER_CONNECTION = 20
CONNECTION_INIT_TIMEOUT = timedelta(seconds=5)
MAX_BODY_BYTES = 256 * 1024  # a GraphQL document with variables; nothing legitimate is larger
# Variables nest a few levels (a seat map: input, sections, rows); deeper bodies are abuse,
# and Python's recursion would give out on them somewhere downstream.
MAX_JSON_DEPTH = 32
# What an HTTP-level refusal says in `extensions.code`, next to its status.
HTTP_ERROR_CODES = {400: "BAD_REQUEST", 401: "UNAUTHENTICATED", 404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}
# GraphQL over HTTP: a client that accepts this media type gets it, with 4xx for request errors.
GRAPHQL_RESPONSE_JSON = "application/graphql-response+json"
STATIC_DIR = Path(__file__).parent / "static"
YOUNG_OBJECTS_PER_COLLECTION = 20_000  # allocations between the garbage collector's young passes


class GraphQLApp(GraphQL[Context, None]):
    graphql_transport_ws_handler_class = TransportWSHandler  # sends availability updates itself
    graphql_ws_handler_class = CheckedWSHandler

    def __init__(self, services: AppServices, persisted: PersistedQueries) -> None:
        super().__init__(
            create_schema(services.settings,
                          allow_list=persisted.store if isinstance(persisted.store, Manifest) else None),
            graphql_ide="graphiql",
            # graphql-transport-ws first; the legacy protocol only for old clients. graphql-sse:
            # subscriptions over HTTP for clients that cannot open websockets (Accept: text/event-stream).
            subscription_protocols=(GRAPHQL_TRANSPORT_WS_PROTOCOL, GRAPHQL_WS_PROTOCOL, GRAPHQL_SSE_PROTOCOL),
            connection_init_wait_timeout=CONNECTION_INIT_TIMEOUT,
            max_subscriptions_per_connection=MAX_SUBSCRIPTIONS_PER_CONNECTION,
            # Browsers send Origin on every websocket: pages of other sites only when CORS allows them.
            allowed_origins=services.settings.cors_origin_list,
        )
        self.services = services
        self.persisted = persisted
        # Open websockets and event streams per client address, in this worker (each worker
        # counts its own): both hold a connection for as long as the client likes.
        self.streams_of: Counter[str] = Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        websocket = scope["type"] == "websocket"
        if not websocket and "text/event-stream" not in Headers(scope=scope).get("accept", ""):
            await self._handle_http(scope, receive, send)
            return
        address = scope["client"][0] if scope.get("client") else "unknown"
        if self.streams_of[address] >= self.services.settings.websockets_per_address:
            if websocket:
                # Closing before accepting refuses the upgrade: the client gets HTTP 403.
                await receive()  # websocket.connect
                await send({"type": "websocket.close", "code": 1013})
            else:
                await error_response(429, "Too many open event streams from this address",
                                     "RATE_LIMITED")(scope, receive, send)
            return
        self.streams_of[address] += 1
        try:
            if websocket:
                metrics.WEBSOCKETS.inc()
                try:
                    await super().__call__(scope, receive, send)
                finally:
                    metrics.WEBSOCKETS.dec()
            else:
                await self._handle_http(scope, receive, send)
        finally:
            self.streams_of[address] -= 1
            if not self.streams_of[address]:
                del self.streams_of[address]

    async def _handle_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        """strawberry's HTTP handling, with its refusals as GraphQL JSON errors (it answers them
        in plain text) and a client that hangs up mid-request treated as the normal event it is."""
        try:
            response: Response = await self.run(Request(scope, receive=receive))
        except PersistedQueryError as error:
            # 200 as Apollo Server answers it, unless the client asked for the spec's statuses;
            # never cached, or a CDN would go on answering "not found" once the text is known.
            response = error_response(400 if _wants_graphql_response(scope) else 200, error.message, error.code)
            response.headers["cache-control"] = "no-store"
        except HTTPException as error:
            response = error_response(error.status_code, error.reason,
                                      HTTP_ERROR_CODES.get(error.status_code, "BAD_REQUEST"))
            if error.status_code == 401:
                response.headers["www-authenticate"] = 'Bearer error="invalid_token"'
        except ClientDisconnect:
            logger.info("Client disconnected before sending the whole request")
            return
        if _wants_graphql_response(scope) and response.media_type == "application/json":
            response.headers["content-type"] = f"{GRAPHQL_RESPONSE_JSON}; charset=utf-8"
        await response(scope, receive, send)

    async def execute_single(self, request: Request, request_adapter: Any, sub_response: Response,
                             context: Context, root_value: None, request_data: Any) -> Any:
        result = await super().execute_single(request, request_adapter, sub_response, context, root_value,
                                              request_data)
        # A status already set (429) says more than 400.
        if _is_request_error(result) and _wants_graphql_response(request.scope) and not sub_response.status_code:
            sub_response.status_code = 400
        return result

    async def process_result(self, request: Request, result: Any) -> Any:
        response = await super().process_result(request, result)
        if _is_request_error(result) and _wants_graphql_response(request.scope):
            del response["data"]  # nothing was executed: the spec's request errors carry no data
        return response

    async def render_graphql_ide(self, request: Request) -> Response:
        return FileResponse(STATIC_DIR / "graphiql" / "index.html")  # assets served from here, not a CDN

    def should_render_graphql_ide(self, request: Any) -> bool:
        # A browser GET of a persisted query (no `query` either) wants its result, not GraphiQL.
        return super().should_render_graphql_ide(request) and "extensions" not in request.query_params

    async def parse_http_body(self, request: Any) -> Any:
        data = await super().parse_http_body(request)
        if isinstance(data, GraphQLRequestData):  # batches are refused before this
            data.query = await self.persisted.document(data.query, data.extensions)
        return data

    def parse_json(self, data: str | bytes) -> Any:
        """Request bodies are a JSON object (or a batch): anything else, bytes that are not
        UTF-8, or nesting deeper than any request needs, is the client's error (strawberry
        itself would fail on them with a 500)."""
        too_deep = HTTPException(400, f"The request body nests deeper than {MAX_JSON_DEPTH} levels")
        try:
            decoded = json.loads(data)
        except ValueError:  # JSONDecodeError and UnicodeDecodeError alike
            raise HTTPException(400, "Unable to parse request body as JSON") from None
        except RecursionError:
            raise too_deep from None
        if _nesting_exceeds(decoded, MAX_JSON_DEPTH):
            raise too_deep
        if not isinstance(decoded, dict | list):
            raise HTTPException(400, "The request body must be a JSON object")
        return decoded

    def decode_json(self, data: str | bytes) -> object:
        """A websocket frame (HTTP bodies go through parse_json). One nested too deeply to
        decode is refused as frames that are not JSON are, not raised from the handler."""
        try:
            return json.loads(data)
        except RecursionError:
            raise json.JSONDecodeError("Nested too deeply", data if isinstance(data, str) else "", 0) from None

    def _base_url(self, request: Request | WebSocket) -> str:
        if self.services.settings.public_url:
            return self.services.settings.public_url.rstrip("/")
        base = str(request.base_url).rstrip("/")
        return base.replace("ws://", "http://", 1).replace("wss://", "https://", 1)

    async def get_context(self, request: Request | WebSocket, response: Any) -> Context:
        identity = None
        if not isinstance(request, WebSocket):  # websockets authenticate in connection_init
            try:
                identity = await self._authenticate(request.headers.get("authorization"))
            except DomainError as error:
                # Refused outright, not read anonymously: the client learns to renew its token
                # (no token at all still reads anonymously).
                raise HTTPException(401, error.message) from None
        return Context(self.services, identity, base_url=functools.partial(self._base_url, request),
                       client_ip=request.client.host if request.client else "unknown",
                       response=None if isinstance(request, WebSocket) else response)

    async def _authenticate(self, header: str | None) -> Identity | None:
        """A person's access token, or a partner's API key (looked up in the database on every
        request, so that a revocation holds at once on every instance)."""
        scheme, _, token = (header or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not apikeys.is_api_key(token.strip()):
            return identity_from_authorization(header, self.services.settings)
        async with self.services.sessionmaker() as session:
            identity = await apikeys.authenticate(session, token.strip())
            await session.commit()  # last_used_at
        return identity

    async def on_ws_connect(self, context: Context) -> None:
        params = context.connection_params or {}
        header = next((value for key, value in params.items() if key.lower() == "authorization"), None)
        try:
            context.identity = identity_from_authorization(header if isinstance(header, str) else None,
                                                           self.services.settings)
        except DomainError:
            raise ConnectionRejectionError({"message": "Invalid or expired access token"}) from None


def _wants_graphql_response(scope: Scope) -> bool:
    return GRAPHQL_RESPONSE_JSON in Headers(scope=scope).get("accept", "")


def _is_request_error(result: Any) -> bool:
    """Refused before execution (parse, validation, variables, limits): errors with no path."""
    return result.data is None and bool(result.errors) and all(error.path is None for error in result.errors)


def _nesting_exceeds(value: Any, limit: int) -> bool:
    """Whether JSON containers nest deeper than `limit`, found level by level (no recursion)."""
    level = [value] if isinstance(value, dict | list) else []
    for _ in range(limit):
        level = [child for item in level for child in (item.values() if isinstance(item, dict) else item)
                 if isinstance(child, dict | list)]
        if not level:
            return False
    return True


async def index(request: Request) -> Response:
    return FileResponse(STATIC_DIR / "index.html")


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    if request.app.state.draining:  # stopping: balancers send new work elsewhere
        return JSONResponse({"status": "draining"}, status_code=503)
    services: AppServices = request.app.state.services
    checks: dict[str, str] = {}
    try:
        async with services.sessionmaker() as session:
            await asyncio.wait_for(session.execute(text("SELECT 1")), timeout=2)
        checks["database"] = "ok"
    except Exception as error:  # any failure means not ready; say which
        checks["database"] = f"unavailable: {type(error).__name__}"
    redis_client = request.app.state.redis
    if redis_client is not None:
        try:
            await asyncio.wait_for(redis_client.ping(), timeout=2)
            checks["redis"] = "ok"
        except Exception as error:
            checks["redis"] = f"unavailable: {type(error).__name__}"
        # Redis answering is not enough: until this process listens again, its subscribers
        # get no live updates.
        checks["pubsub"] = "ok" if services.broker.listening else "unavailable: reconnecting"
    ready = all(value == "ok" for value in checks.values())
    return JSONResponse({"status": "ready" if ready else "unavailable", "checks": checks},
                        status_code=200 if ready else 503)


TICKET_PAGE_CSS = """
body{font:16px/1.4 system-ui,sans-serif;margin:0 auto;max-width:40rem;padding:1rem;color:#111}
.ticket{border:2px dashed #555;border-radius:12px;padding:1rem;margin:1rem 0;display:flex;gap:1rem;flex-wrap:wrap}
.ticket svg{width:12rem;height:auto;flex:none}.VOID{opacity:.5}.status{font-weight:bold}
dl{display:grid;grid-template-columns:auto 1fr;gap:.2rem .8rem;margin:0}dt{color:#555}
@media print{body{max-width:none}.ticket{break-inside:avoid;border-color:#000}button{display:none}}
"""


def _qr(code: str) -> segno.QRCode:
    return segno.make(code, error="m")


def _money(cents: int, currency: str) -> str:
    return f"{cents / 100:,.2f} {currency}"


def _ticket_html(found: dict[str, Any]) -> str:
    e = html.escape
    starts = datetime.fromisoformat(found["startsAt"]).astimezone(ZoneInfo(found["timezone"]))
    when = f"{starts:%a %d %b %Y, %H:%M} {starts.tzname()}"
    cards = "".join(
        f'<section class="ticket {e(t["status"])}">'
        f'{_qr(t["code"]).svg_inline(scale=4, title="Ticket code")}'
        f"<dl><dt>Seat</dt><dd>{e(t['seat'] or 'General admission')}</dd>"
        f"<dt>Price</dt><dd>{e(_money(t['priceCents'], found['currency']))}</dd>"
        f'<dt>Status</dt><dd class="status">{e(t["status"].replace("_", " ").lower())}</dd></dl>'
        f"<details><summary>Code</summary><code style=\"word-break:break-all\">{e(t['code'])}</code></details>"
        "</section>" for t in found["tickets"])
    return (f'<!doctype html><html lang="en"><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>Ticket {e(found['reference'])}</title><style>{TICKET_PAGE_CSS}</style>"
            f"<h1>{e(found['event'])}</h1>"
            f"<p><strong>{e(when)}</strong> ({e(found['timezone'])})<br>{e(found['venue'] or '')}"
            f"<br>{e(found['address'] or '')}</p>"
            f"<p>Holder: <strong>{e(found['holder'] or '')}</strong><br>Booking {e(found['reference'])}</p>"
            f"{cards}<button onclick=\"print()\">Print</button></html>")


async def ticket(request: Request) -> Response:
    """A booking's or one ticket's page: QR codes of the signed codes, print-ready; JSON on
    `Accept: application/json`."""
    services: AppServices = request.app.state.services
    wants_json = "application/json" in request.headers.get("accept", "")
    async with services.sessionmaker() as session:
        found = await bookings.find_tickets(session, request.path_params["code"])
    if found is None:
        return JSONResponse({"error": "No valid ticket with this code"}, status_code=404) if wants_json \
            else HTMLResponse("<h1>No valid ticket with this code</h1>", status_code=404)
    return JSONResponse(found) if wants_json else HTMLResponse(_ticket_html(found))


async def ticket_qr(request: Request) -> Response:
    """A valid code's QR code as an SVG image (the buyer's page shows it)."""
    services: AppServices = request.app.state.services
    code = request.path_params["code"]
    async with services.sessionmaker() as session:
        found = await bookings.find_tickets(session, code)
    if found is None:
        return Response(status_code=404)
    image = io.BytesIO()
    _qr(code).save(image, kind="svg", scale=4, title="Ticket code")
    return Response(image.getvalue(), media_type="image/svg+xml", headers={"Cache-Control": "private, max-age=300"})


async def ticket_keys(request: Request) -> Response:
    """The public keys scanners verify ticket codes with (JWKS)."""
    services: AppServices = request.app.state.services
    async with services.sessionmaker() as session:
        jwks = await tickets.public_jwks(session, secret=services.settings.ticket_key_secret)
        await session.commit()  # the first key, when this made it
    # Short: a rotation reaches scanners within minutes; they refetch whenever online.
    return JSONResponse(jwks, headers={"Cache-Control": "public, max-age=300"})


async def checkin_page(request: Request) -> Response:
    return FileResponse(STATIC_DIR / "checkin.html")


def _drain_on_sigterm(app: Starlette, seconds: float) -> Callable[[], object]:
    """Put off the server's own SIGTERM handling by `seconds`: meanwhile /readyz answers 503
    "draining", so the balancer sends new work elsewhere, while requests and websockets here
    go on. Then the server stops as usual: it finishes the requests in flight and closes
    websockets with 1012 (service restart), so clients reconnect through the balancer. A second
    SIGTERM stops at once. Only where a server handles SIGTERM in this thread (uvicorn does, in
    every worker); returns what puts its handler back."""
    server_handler = signal.getsignal(signal.SIGTERM)
    if seconds <= 0 or not callable(server_handler) or threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop = asyncio.get_running_loop()

    def stop_later(signum: int) -> None:
        logger.warning("SIGTERM: draining for %.1f s, then stopping", seconds)
        loop.call_later(seconds, server_handler, signum, None)

    def on_sigterm(signum: int, frame: Any) -> None:
        if app.state.draining:
            server_handler(signum, frame)
            return
        app.state.draining = True
        loop.call_soon_threadsafe(stop_later, signum)  # a signal handler only schedules

    signal.signal(signal.SIGTERM, on_sigterm)
    return lambda: signal.signal(signal.SIGTERM, server_handler)


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or load_settings()
    settings.check()
    engine = create_engine(settings)
    services = AppServices(
        settings=settings,
        sessionmaker=create_sessionmaker(engine),
        gateway=MockGateway(),
        broker=Broker(settings.redis_url or "memory://", prefix=settings.redis_prefix, cluster=settings.redis_cluster),
        limiter=(RedisRateLimiter(settings.redis_url, prefix=settings.redis_prefix, cluster=settings.redis_cluster)
                 if settings.redis_url else MemoryRateLimiter()),
    )
    redis_client = (None if not settings.redis_url
                    else RedisCluster.from_url(settings.redis_url, socket_timeout=2) if settings.redis_cluster
                    else aioredis.Redis.from_url(settings.redis_url, socket_timeout=2))
    graphql = GraphQLApp(services, PersistedQueries.from_settings(settings, redis_client))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await services.broker.start()
        sweeper = asyncio.create_task(run_sweeper(services, settings.sweep_interval_seconds), name="sweeper")
        admitter = asyncio.create_task(run_every("Admission", settings.admission_interval_seconds,
                                                 lambda: admission.tick(services)), name="admission")
        deliverer = asyncio.create_task(run_deliverer(services), name="webhook-deliverer")
        loop_lag = asyncio.create_task(services.loop_lag.run(), name="loop-lag")
        # Everything loaded so far (modules, the schema, mappers: a quarter of the objects of a
        # worker holding 1,000 websockets) lives as long as the process. Freezing it takes it
        # out of every later full collection, whose pause is what subscribers wait through.
        gc.collect()
        gc.freeze()
        # A request allocates thousands of objects that live until it is answered. At
        # Python's default (a collection every 700 allocations), 1,000 reserves at once spent
        # a fifth of the worker's CPU in the collector, re-examining the same live requests
        # again and again; at this threshold about a tenth.
        gc.set_threshold(YOUNG_OBJECTS_PER_COLLECTION, *gc.get_threshold()[1:])
        metrics.worker_started()
        undo_drain = _drain_on_sigterm(app, settings.drain_seconds)
        try:
            yield
        finally:
            undo_drain()
            metrics.worker_stopped()
            sweeper.cancel()
            admitter.cancel()
            deliverer.cancel()
            loop_lag.cancel()
            await services.batcher.close()
            for job in (sweeper, admitter, deliverer, loop_lag):
                with contextlib.suppress(asyncio.CancelledError):
                    await job
            await services.broker.stop()
            if isinstance(services.limiter, RedisRateLimiter):
                await services.limiter.close()
            if app.state.redis is not None:
                await app.state.redis.aclose()
            await engine.dispose()

    app = Starlette(
        routes=[
            Route("/graphql", graphql),  # every method: GraphQLApp refuses the others as GraphQL JSON
            WebSocketRoute("/graphql", graphql),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/tickets/{code}", ticket),
            Route("/tickets/{code}/qr.svg", ticket_qr),
            Route("/.well-known/ticket-keys", ticket_keys),
            Route("/checkin", checkin_page),
            Route("/metrics", metrics.metrics_endpoint),
            Route("/", index),
            Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
        ],
        middleware=[Middleware(CORSMiddleware, allow_origins=settings.cors_origin_list, allow_credentials=False,
                               allow_methods=["GET", "POST"], allow_headers=["Authorization", "Content-Type"],
                               expose_headers=["Retry-After", REQUEST_ID_HEADER]),
                    Middleware(RequestIdMiddleware),
                    Middleware(BodySizeLimitMiddleware, max_bytes=MAX_BODY_BYTES)],
        lifespan=lifespan,
    )
    app.state.services = services
    app.state.draining = False
    app.state.redis = redis_client
    return app
