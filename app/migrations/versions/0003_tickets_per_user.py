"""events.max_tickets_per_user: what one buyer may hold and have bought of an event

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('events') as batch:
        batch.add_column(sa.Column('max_tickets_per_user', sa.Integer(), nullable=True))
    # Existing events keep what they allowed per booking as the per-buyer cap.
    op.execute('UPDATE events SET max_tickets_per_user = max_tickets_per_booking')
    with op.batch_alter_table('events') as batch:
        batch.alter_column('max_tickets_per_user', nullable=False)


def downgrade() -> None:
    with op.batch_alter_table('events') as batch:
        batch.drop_column('max_tickets_per_user')
