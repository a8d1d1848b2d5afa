"""money columns 64-bit

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30

Amounts in minor units outgrow 32 bits (a total of 100 places at 250,000.00, an event's
revenue). PostgreSQL's INTEGER is 32-bit: widen to BIGINT. SQLite's INTEGER already holds
64-bit values whatever the declared type, so there is nothing to rewrite there (a batch
rewrite of these tables would copy every row for no change in what they can store).
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MONEY_COLUMNS = [('events', 'price_cents'), ('seats', 'price_cents'), ('bookings', 'total_cents'),
                 ('payments', 'amount_cents')]


def upgrade() -> None:
    if op.get_bind().dialect.name == 'sqlite':
        return
    for table, column in MONEY_COLUMNS:
        op.alter_column(table, column, type_=sa.BigInteger(), existing_type=sa.Integer(), existing_nullable=False)


def downgrade() -> None:
    if op.get_bind().dialect.name == 'sqlite':
        return
    for table, column in MONEY_COLUMNS:
        op.alter_column(table, column, type_=sa.Integer(), existing_type=sa.BigInteger(), existing_nullable=False)
