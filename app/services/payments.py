"""The payment gateway boundary, and the mock gateway used by default.

A real gateway is called with the booking reference as its idempotency key, so a retried
confirm can never charge twice at the gateway either. The mock follows the contract:
tokens starting with `tok_decline` are declined, every other token succeeds.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Protocol


class PaymentDeclined(Exception):
    """The gateway refused the charge; the message is safe to show to the buyer."""


@dataclass(frozen=True)
class Charge:
    transaction_id: str
    amount_cents: int
    currency: str


class PaymentGateway(Protocol):
    async def charge(self, *, amount_cents: int, currency: str, token: str, reference: str) -> Charge: ...

    async def refund(self, *, transaction_id: str, amount_cents: int, currency: str) -> Charge: ...


@dataclass
class MockGateway:
    """Accepts any token except `tok_decline…`. Keeps what it did, for tests and demos."""

    charges: list[Charge] = field(default_factory=list)
    refunds: list[Charge] = field(default_factory=list)

    async def charge(self, *, amount_cents: int, currency: str, token: str, reference: str) -> Charge:
        if token.startswith("tok_decline"):
            raise PaymentDeclined("The card was declined")
        charge = Charge(f"ch_{secrets.token_hex(12)}", amount_cents, currency)
        self.charges.append(charge)
        return charge

    async def refund(self, *, transaction_id: str, amount_cents: int, currency: str) -> Charge:
        refund = Charge(f"re_{secrets.token_hex(12)}", amount_cents, currency)
        self.refunds.append(refund)
        return refund
