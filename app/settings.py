"""Settings, read once from the environment (and a `.env` file in the working directory).

The defaults make the embedded mode work with no configuration: SQLite file, in-process
pub/sub and limits, a development JWT secret. Setting DATABASE_URL or REDIS_URL switches
to production mode, where the development secret is refused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEV_JWT_SECRET = "bookmyevent-development-secret-do-not-use-in-production"


def _load_dotenv(path: Path = Path(".env")) -> dict[str, str]:
    if not path.is_file():
        return {}
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip().strip("'\"")
    return values


def boolean(raw: str) -> bool:
    """1/true/yes/on or 0/false/no/off, in any case."""
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


class ConfigurationError(RuntimeError):
    """The environment asks for something the service refuses to run with."""


@dataclass(frozen=True)
class Settings:
    database_url: str = "sqlite+aiosqlite:///./bookmyevent.db"
    redis_url: str | None = None
    # Put before every Redis key and channel: deployments (or test runs) sharing one Redis
    # never see each other's messages or counters.
    redis_prefix: str = ""
    # REDIS_URL names one node of a Redis Cluster: sharded pub/sub, keys spread over shards.
    redis_cluster: bool = False
    jwt_secret: str = DEV_JWT_SECRET
    jwt_algorithm: str = "HS256"
    access_token_ttl_seconds: int = 900
    refresh_token_ttl_seconds: int = 30 * 24 * 3600
    hold_ttl_seconds: int = 300
    waitlist_offer_ttl_seconds: int = 600
    reserve_rate_limit_per_minute: int = 10
    mutation_rate_limit_per_minute: int = 120  # every mutation, per user (per IP when anonymous)
    checkin_rate_limit_per_minute: int = 3000  # checkIn per staff account or key (instead of the one above)
    login_rate_limit_per_minute: int = 10  # login attempts per email from one client address
    login_ip_rate_limit_per_minute: int = 30  # login attempts per client address, any email
    # Per email from every address: stops guessing spread over many addresses. Addresses the
    # account signed in from are spared, so strangers cannot lock the owner out with it.
    login_account_rate_limit_per_minute: int = 100
    sweep_interval_seconds: float = 5.0
    admission_interval_seconds: float = 1.0  # scheduled on-sales and waiting-room admission
    queue_join_rate_limit_per_minute: int = 10  # joinQueue per user
    queue_join_ip_rate_limit_per_minute: int = 60  # joinQueue per client IP (several buyers behind one NAT)
    queue_status_interval_seconds: float = 5.0  # queueStatus: position pushes per subscriber at most this often
    queue_position_max_age_seconds: float = 1.0  # queue positions: each instance reads an event's order this often
    queue_concurrency: int = 2  # waiting-room requests one worker serves at once (the rest wait at a gate)
    queue_max_loop_lag_ms: float = 50.0  # ... and none goes in while the worker's event loop runs this late
    queue_busy_seconds: float = 5.0  # a waiting-room request that waited this long at the gate: RATE_LIMITED
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    public_url: str = ""
    # argon2 cost; tests lower it, production keeps the library's defaults.
    argon2_time_cost: int = 3
    argon2_memory_cost: int = 65536
    max_query_depth: int = 12
    max_aliases: int = 30
    # Points a document may cost (app/schema/cost.py): every field 1, lists times their size.
    max_query_cost: int = 50_000
    # Queries per minute per caller: per user when signed in, else per client IP.
    query_rate_limit_per_minute: int = 300
    db_pool_size: int = 20
    db_max_overflow: int = 20
    # DATABASE_URL points at PgBouncer in transaction pooling: no named prepared statements,
    # which live on one server connection while the next transaction may get another.
    db_pgbouncer: bool = False
    # Off in production to hide the schema from strangers (clients ship their documents).
    graphql_introspection: bool = True
    # Addresses or CIDRs (comma-separated) of the proxies whose X-Forwarded-For names the
    # client; empty: the header is ignored, since any client could write it.
    trusted_proxies: str = ""
    websockets_per_address: int = 50  # open websockets per client address, in each worker
    # A request's line and headers, and then its body, must arrive within these (slow clients
    # otherwise hold a connection as long as they like).
    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 20.0
    # Partners: a key's operations per minute unless its creator gave it another limit.
    api_key_rate_limit_per_minute: int = 600
    # Webhook delivery (app/jobs/webhooks.py): targets on private or loopback addresses are
    # refused unless allowed (development, tests); seconds to wait after each failed attempt
    # (about a day in all, then the delivery is FAILED); an endpoint failing this long is disabled.
    webhook_allow_private_targets: bool = False
    webhook_retry_seconds: str = "5,30,120,600,3600,10800,10800,10800,10800,10800,10800,10800"
    webhook_disable_after_seconds: int = 24 * 3600
    webhook_timeout_seconds: float = 10.0
    webhook_poll_interval_seconds: float = 1.0
    webhook_concurrency: int = 32  # deliveries in flight per process
    # Encrypts the ticket signing keys stored in the database (empty: stored unencrypted).
    ticket_key_secret: str = ""
    # Exact origins (comma-separated) of the browser pages on other sites that may call the API
    # (CORS) and open its websockets; empty: same origin only.
    cors_origins: str = ""
    # Automatic persisted queries (app/persisted.py): on, off, or only (the manifest's documents).
    persisted_queries: str = "on"
    persisted_queries_manifest: str = ""
    persisted_query_ttl_seconds: int = 7 * 24 * 3600  # in Redis; a forgotten one is sent again
    # On SIGTERM, /readyz fails this long before the server stops (longer than the balancer
    # takes to notice: HAProxy's checks in deploy/haproxy.cfg need 2-3 s).
    drain_seconds: float = 5.0

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def cors_origin_list(self) -> list[str]:
        return [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]

    @property
    def production(self) -> bool:
        return not self.is_sqlite or self.redis_url is not None

    @property
    def webhook_retry_delays(self) -> tuple[float, ...]:
        return tuple(float(part) for part in self.webhook_retry_seconds.split(",") if part.strip())

    def check(self) -> None:
        """Refuse configurations that would be unsafe in production."""
        try:
            if any(delay < 0 for delay in self.webhook_retry_delays):
                raise ValueError(self.webhook_retry_seconds)
        except ValueError:
            raise ConfigurationError("WEBHOOK_RETRY_SECONDS must be seconds separated by commas") from None
        if self.production and self.jwt_secret == DEV_JWT_SECRET:
            raise ConfigurationError(
                "JWT_SECRET must be set when DATABASE_URL or REDIS_URL select production mode"
            )
        if len(self.jwt_secret) < 32 and self.production:
            raise ConfigurationError("JWT_SECRET must be at least 32 characters long")
        if self.queue_concurrency < 1:
            raise ConfigurationError("QUEUE_CONCURRENCY must be at least 1")


_FIELDS = {
    "DATABASE_URL": ("database_url", str),
    "REDIS_URL": ("redis_url", str),
    "REDIS_PREFIX": ("redis_prefix", str),
    "REDIS_CLUSTER": ("redis_cluster", boolean),
    "JWT_SECRET": ("jwt_secret", str),
    "ACCESS_TOKEN_TTL_SECONDS": ("access_token_ttl_seconds", int),
    "REFRESH_TOKEN_TTL_SECONDS": ("refresh_token_ttl_seconds", int),
    "HOLD_TTL_SECONDS": ("hold_ttl_seconds", int),
    "WAITLIST_OFFER_TTL_SECONDS": ("waitlist_offer_ttl_seconds", int),
    "RESERVE_RATE_LIMIT_PER_MINUTE": ("reserve_rate_limit_per_minute", int),
    "MUTATION_RATE_LIMIT_PER_MINUTE": ("mutation_rate_limit_per_minute", int),
    "CHECKIN_RATE_LIMIT_PER_MINUTE": ("checkin_rate_limit_per_minute", int),
    "LOGIN_RATE_LIMIT_PER_MINUTE": ("login_rate_limit_per_minute", int),
    "LOGIN_IP_RATE_LIMIT_PER_MINUTE": ("login_ip_rate_limit_per_minute", int),
    "LOGIN_ACCOUNT_RATE_LIMIT_PER_MINUTE": ("login_account_rate_limit_per_minute", int),
    "SWEEP_INTERVAL_SECONDS": ("sweep_interval_seconds", float),
    "ADMISSION_INTERVAL_SECONDS": ("admission_interval_seconds", float),
    "QUEUE_JOIN_RATE_LIMIT_PER_MINUTE": ("queue_join_rate_limit_per_minute", int),
    "QUEUE_JOIN_IP_RATE_LIMIT_PER_MINUTE": ("queue_join_ip_rate_limit_per_minute", int),
    "QUEUE_STATUS_INTERVAL_SECONDS": ("queue_status_interval_seconds", float),
    "QUEUE_POSITION_MAX_AGE_SECONDS": ("queue_position_max_age_seconds", float),
    "QUEUE_CONCURRENCY": ("queue_concurrency", int),
    "QUEUE_MAX_LOOP_LAG_MS": ("queue_max_loop_lag_ms", float),
    "QUEUE_BUSY_SECONDS": ("queue_busy_seconds", float),
    "HOST": ("host", str),
    "PORT": ("port", int),
    "WORKERS": ("workers", int),
    "PUBLIC_URL": ("public_url", str),
    "ARGON2_TIME_COST": ("argon2_time_cost", int),
    "ARGON2_MEMORY_COST": ("argon2_memory_cost", int),
    "MAX_QUERY_DEPTH": ("max_query_depth", int),
    "MAX_ALIASES": ("max_aliases", int),
    "MAX_QUERY_COST": ("max_query_cost", int),
    "QUERY_RATE_LIMIT_PER_MINUTE": ("query_rate_limit_per_minute", int),
    "DB_POOL_SIZE": ("db_pool_size", int),
    "DB_MAX_OVERFLOW": ("db_max_overflow", int),
    "DB_PGBOUNCER": ("db_pgbouncer", boolean),
    "GRAPHQL_INTROSPECTION": ("graphql_introspection", boolean),
    "TRUSTED_PROXIES": ("trusted_proxies", str),
    "WEBSOCKETS_PER_ADDRESS": ("websockets_per_address", int),
    "HEADER_TIMEOUT_SECONDS": ("header_timeout_seconds", float),
    "BODY_TIMEOUT_SECONDS": ("body_timeout_seconds", float),
    "API_KEY_RATE_LIMIT_PER_MINUTE": ("api_key_rate_limit_per_minute", int),
    "WEBHOOK_ALLOW_PRIVATE_TARGETS": ("webhook_allow_private_targets", boolean),
    "WEBHOOK_RETRY_SECONDS": ("webhook_retry_seconds", str),
    "WEBHOOK_DISABLE_AFTER_SECONDS": ("webhook_disable_after_seconds", int),
    "WEBHOOK_TIMEOUT_SECONDS": ("webhook_timeout_seconds", float),
    "WEBHOOK_POLL_INTERVAL_SECONDS": ("webhook_poll_interval_seconds", float),
    "WEBHOOK_CONCURRENCY": ("webhook_concurrency", int),
    "TICKET_KEY_SECRET": ("ticket_key_secret", str),
    "CORS_ORIGINS": ("cors_origins", str),
    "PERSISTED_QUERIES": ("persisted_queries", str),
    "PERSISTED_QUERIES_MANIFEST": ("persisted_queries_manifest", str),
    "PERSISTED_QUERY_TTL_SECONDS": ("persisted_query_ttl_seconds", int),
    "DRAIN_SECONDS": ("drain_seconds", float),
}


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    """Build settings from `.env` overlaid with the process environment."""
    source = {**_load_dotenv(), **(os.environ if environ is None else environ)}
    values: dict[str, object] = {}
    for env_name, (attr, kind) in _FIELDS.items():
        raw = source.get(env_name)
        if raw is None or raw == "":
            continue
        try:
            values[attr] = kind(raw)
        except ValueError as exc:
            raise ConfigurationError(f"{env_name}={raw!r} is not a valid {kind.__name__}") from exc
    url = values.get("database_url")
    if isinstance(url, str) and url.startswith(("postgres://", "postgresql://")):
        values["database_url"] = "postgresql+asyncpg://" + url.split("://", 1)[1]
    return Settings(**values)  # type: ignore[arg-type]
