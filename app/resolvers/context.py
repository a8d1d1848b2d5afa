"""What every resolver gets: the application's services, the caller, per-request loaders."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from strawberry.dataloader import DataLoader

from app.errors import DomainError, ErrorCode
from app.models import ApiScope, Booking, Event, Seat, Ticket, User, Venue, utcnow
from app.pubsub import Broker
from app.services import bookings, inventory, queue
from app.services.accounts import Identity
from app.services.batching import ReserveBatcher
from app.services.bookings import HoldTimes
from app.services.gate import Gate, LoopLag
from app.services.payments import PaymentGateway
from app.services.ratelimit import RateLimiter
from app.settings import Settings

T = TypeVar("T")


@dataclass
class AppServices:
    """Built once at startup and shared by every request."""

    settings: Settings
    sessionmaker: async_sessionmaker[AsyncSession]
    gateway: PaymentGateway
    broker: Broker
    limiter: RateLimiter

    def __post_init__(self) -> None:
        # One for the whole process, unlike the per-request Loaders: subscribers that ask at
        # the same moment (all of them at once, after a Redis reconnect) share one read. No
        # cache, and a batch is joined only until its read starts, so no one gets a state
        # older than their request.
        self.availability: DataLoader[int, dict[str, Any] | None] = DataLoader(self._availability, cache=False)
        self.batcher = ReserveBatcher(self.sessionmaker, holds=self.hold_times, publish=self.broker.publish_all)
        self.queue_orders = queue.WaitingOrders(self.sessionmaker,
                                                max_age_seconds=self.settings.queue_position_max_age_seconds)
        self.loop_lag = LoopLag()  # measured while the app runs (its lifespan starts it)
        self.queue_gate = Gate(self.settings.queue_concurrency, lag=self.loop_lag,
                               max_lag_seconds=self.settings.queue_max_loop_lag_ms / 1000,
                               wait_seconds=self.settings.queue_busy_seconds,
                               busy_message="The waiting room is very busy: try again in a moment")

    async def _availability(self, event_ids: Sequence[int]) -> list[dict[str, Any] | None]:
        async with self.sessionmaker() as session:
            found = await inventory.availability_now(session, sorted(set(event_ids)), utcnow())
        return [found.get(event_id) for event_id in event_ids]

    @property
    def hold_times(self) -> HoldTimes:
        return HoldTimes(reservation_seconds=self.settings.hold_ttl_seconds,
                         offer_seconds=self.settings.waitlist_offer_ttl_seconds)


class Loaders:
    """DataLoaders, new for every request, each batch in its own short read session."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self._sessionmaker = sessionmaker
        self.venue = DataLoader(self._by_id(Venue))
        self.event = DataLoader(self._by_id(Event))
        self.user = DataLoader(self._by_id(User))
        self.booking = DataLoader(self._by_id(Booking))
        self.public_places: DataLoader[inventory.EventCounter, int] = DataLoader(self._public_places)
        self.seat: DataLoader[int, tuple[Seat, str] | None] = DataLoader(self._seats)
        self.tickets: DataLoader[int, list[Ticket]] = DataLoader(self._tickets)

    async def _read(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        async with self._sessionmaker() as session:
            return await work(session)

    def _by_id(self, model: Any) -> Callable[[Sequence[int]], Awaitable[list[Any]]]:
        async def load(ids: Sequence[int]) -> list[Any]:
            async def work(session: AsyncSession) -> list[Any]:
                found = {row.id: row for row in await session.scalars(select(model).where(model.id.in_(ids)))}
                return [found.get(i) for i in ids]
            return await self._read(work)
        return load

    async def _public_places(self, events: Sequence[inventory.EventCounter]) -> list[int]:
        places = await self._read(lambda s: inventory.public_places(s, events, utcnow()))
        return [places[event.id] for event in events]

    async def _seats(self, seat_ids: Sequence[int]) -> list[tuple[Seat, str] | None]:
        seats = await self._read(lambda s: inventory.seats_by_ids(s, seat_ids, utcnow()))
        return [seats.get(i) for i in seat_ids]

    async def _tickets(self, booking_ids: Sequence[int]) -> list[list[Ticket]]:
        tickets = await self._read(lambda s: bookings.tickets_of(s, list(booking_ids)))
        return [tickets.get(i, []) for i in booking_ids]


class Context:
    """The strawberry context of one HTTP request or one websocket connection."""

    def __init__(self, services: AppServices, identity: Identity | None, *,
                 base_url: str | Callable[[], str] = "", client_ip: str = "unknown", response: Any = None) -> None:
        self.services = services
        self.response = response  # HTTP only: where a status code or header can be set
        self._base_url = base_url
        self.client_ip = client_ip
        self.settings = services.settings
        self.identity = identity  # a bad token never gets here: app/web.py answers 401
        self._loaders: Loaders | None = None
        self.connection_params: dict[str, Any] | None = None  # set by strawberry on websockets

    @property
    def base_url(self) -> str:
        """Where ticket links point; worked out on first use (few operations link to tickets)."""
        if callable(self._base_url):
            self._base_url = self._base_url()
        return self._base_url

    @property
    def loaders(self) -> Loaders:
        # Made on first use: most websocket connections never load anything, and objects
        # every connection keeps lengthen every full garbage collection.
        if self._loaders is None:
            self._loaders = Loaders(self.services.sessionmaker)
        return self._loaders

    def renew_loaders(self) -> None:
        """Forget what the loaders cached (subscriptions: once per message)."""
        self._loaders = None

    def read_session(self) -> AsyncSession:
        return self.services.sessionmaker()

    def require_user(self) -> Identity:
        """A signed-in person. API keys are refused here: a key may only do what an operation
        grants a scope for (`require_scope`), so a new operation is closed to keys by default."""
        identity = self._require_identity()
        if identity.key is not None:
            raise DomainError(ErrorCode.FORBIDDEN, "API keys cannot do this")
        return identity

    def require_scope(self, scope: str) -> Identity:
        """A signed-in person, or an API key holding `scope`."""
        identity = self._require_identity()
        self.check_scope(scope)
        return identity

    def require_admin_or_scope(self, scope: str) -> Identity:
        """An administrator, or an API key holding `scope` (acting on its own things only)."""
        identity = self._require_identity()
        if identity.key is None:
            return self.require_admin()
        self.check_scope(scope)
        return identity

    def check_scope(self, scope: str) -> None:
        """For what anyone may do: an API key must still hold `scope` for it (a key has exactly
        its scopes; a partner wanting less can always call without one)."""
        if self.identity is not None and self.identity.key is not None and scope not in self.identity.key.scopes:
            raise DomainError(ErrorCode.FORBIDDEN, f"This API key lacks the {scope} scope")

    def _require_identity(self) -> Identity:
        if self.identity is None:
            raise DomainError(ErrorCode.UNAUTHENTICATED, "Sign in first")
        # An HTTP request decodes its token each time; a websocket only at connection_init,
        # and may stay open long after the token (or the session) has ended.
        if self.identity.expired(utcnow()):
            raise DomainError(ErrorCode.UNAUTHENTICATED,
                              "Your access token has expired: connect again with a fresh one")
        return self.identity

    @property
    def caller_key(self) -> str:
        """Whom rate limits count: the user, or the client IP when anonymous."""
        return f"user:{self.identity.user_id}" if self.identity else f"ip:{self.client_ip}"

    def require_admin(self) -> Identity:
        identity = self.require_user()
        if not identity.is_admin:
            raise DomainError(ErrorCode.FORBIDDEN, "Only administrators can do this")
        return identity

    def require_checkin(self) -> Identity:
        """The door's permission: check-in and revoked tickets (STAFF, ADMIN, or an API key
        with the CHECKIN scope, for a venue's own scanners)."""
        identity = self._require_identity()
        if identity.key is not None:
            self.check_scope(ApiScope.CHECKIN)
            return identity
        if not identity.can_check_in:
            raise DomainError(ErrorCode.FORBIDDEN, "Only door staff and administrators can do this")
        return identity
