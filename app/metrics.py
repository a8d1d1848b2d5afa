"""Prometheus metrics, served at GET /metrics. Each worker process serves its own numbers
(scrape every worker, or sum them in the dashboard)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import Response

OPERATIONS = Counter(
    "bookmyevent_mutations_total", "Mutations by name and outcome (ok, or the error code)",
    ["mutation", "outcome"])
OPERATION_SECONDS = Histogram(
    "bookmyevent_operation_seconds", "GraphQL operation latency by root field",
    ["operation"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
ACTIVE_HOLDS = Gauge("bookmyevent_active_holds", "PENDING bookings not yet lapsed (at the last sweep)")
HELD_PLACES = Gauge("bookmyevent_held_places", "Places in PENDING bookings not yet lapsed (at the last sweep)")
WEBSOCKETS = Gauge("bookmyevent_websocket_connections", "Open websocket connections")
SUBSCRIPTION_MESSAGES = Counter("bookmyevent_subscription_messages_total",
                                "Subscription messages sent, by subscription", ["subscription"])
COALESCED_MESSAGES = Counter("bookmyevent_subscription_messages_coalesced_total",
                             "Messages folded into a later one because a subscriber was behind")
SWEEPS = Counter("bookmyevent_sweeper_runs_total", "Expiry sweeper runs")
EXPIRED_HOLDS = Counter("bookmyevent_expired_holds_total", "Holds expired by the sweeper")


async def metrics_endpoint(request: Request) -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
