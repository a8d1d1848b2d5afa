"""Prometheus metrics, served at GET /metrics.

With several workers, `bookmyevent serve` gives them a directory in PROMETHEUS_MULTIPROC_DIR
(prometheus_client's multiprocess mode): each worker writes its numbers there, and the
worker that answers a scrape adds them all up, so a dashboard sees the whole instance
rather than one worker picked at random. A worker that crashes leaves its last gauge values
in the sums until the server restarts (a clean shutdown removes them).
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from starlette.requests import Request
from starlette.responses import Response

OPERATIONS = Counter(
    "bookmyevent_mutations_total", "Mutations by name and outcome (ok, or the error code)",
    ["mutation", "outcome"])
OPERATION_SECONDS = Histogram(
    "bookmyevent_operation_seconds", "GraphQL operation latency by root field",
    ["operation"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
# Every worker's sweeper counts the same holds: report the latest count, not their sum.
ACTIVE_HOLDS = Gauge("bookmyevent_active_holds", "PENDING bookings not yet lapsed (at the last sweep)",
                     multiprocess_mode="mostrecent")
HELD_PLACES = Gauge("bookmyevent_held_places", "Places in PENDING bookings not yet lapsed (at the last sweep)",
                    multiprocess_mode="mostrecent")
WEBSOCKETS = Gauge("bookmyevent_websocket_connections", "Open websocket connections", multiprocess_mode="livesum")
WORKERS = Gauge("bookmyevent_workers", "Worker processes serving", multiprocess_mode="livesum")
EVENT_LOOP_LAG = Gauge("bookmyevent_event_loop_lag_seconds",
                       "How late the event loop runs what is due (the latest sample of the worst worker)",
                       multiprocess_mode="livemax")
SUBSCRIPTION_MESSAGES = Counter("bookmyevent_subscription_messages_total",
                                "Subscription messages sent, by subscription", ["subscription"])
COALESCED_MESSAGES = Counter("bookmyevent_subscription_messages_coalesced_total",
                             "Messages folded into a later one because a subscriber was behind")
RESERVE_BATCH_SIZE = Histogram("bookmyevent_reserve_batch_size",
                               "General-admission reserves served together in one transaction",
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128, 200))
RATE_LIMIT_UNCOUNTED = Counter("bookmyevent_rate_limit_uncounted_total",
                               "Calls let through uncounted because Redis was unreachable")
# Waiting rooms, per event (only events with a waiting room appear). Admission rate: the
# rate() of the admitted counter.
QUEUE_WAITING = Gauge("bookmyevent_queue_waiting", "Queue tickets WAITING (at the last admission round)",
                      ["event"], multiprocess_mode="mostrecent")
QUEUE_ADMITTED = Counter("bookmyevent_queue_admitted_total", "Buyers admitted from the queue", ["event"])
QUEUE_LAPSED = Counter("bookmyevent_queue_lapsed_total", "Admissions that lapsed unused", ["event"])
QUEUE_SOLD_OUT = Counter("bookmyevent_queue_sold_out_total", "Waiting buyers told the event sold out", ["event"])
# Labelled by key prefix: bounded by the keys an admin creates, and not secret.
API_KEY_REQUESTS = Counter("bookmyevent_api_key_requests_total", "GraphQL operations per partner API key",
                           ["prefix"])
WEBHOOK_ATTEMPTS = Counter("bookmyevent_webhook_attempts_total", "Webhook delivery attempts by outcome",
                           ["outcome"])
SWEEPS = Counter("bookmyevent_sweeper_runs_total", "Expiry sweeper runs")
EXPIRED_HOLDS = Counter("bookmyevent_expired_holds_total", "Holds expired by the sweeper")


def worker_started() -> None:
    WORKERS.inc()


def worker_stopped() -> None:
    WORKERS.dec()
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        multiprocess.mark_process_dead(os.getpid())  # its live gauges leave the sums


async def metrics_endpoint(request: Request) -> Response:
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
