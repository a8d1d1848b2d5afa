"""signed tickets and check-in

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30

Ticket codes become JWS (longer than the 43 characters of the random codes they replace;
codes already issued stay valid as they are). Tickets record their first scan and when
they were voided; ticket_keys holds the signing keys, checkin_scans the scanners' nonces;
venues get the timezone their tickets show times in.
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
ACTIVE_KEY = sa.text("status = 'ACTIVE'")


def upgrade() -> None:
    with op.batch_alter_table('tickets', schema=None) as batch_op:
        batch_op.alter_column('code', type_=sa.String(length=512), existing_type=sa.String(length=43),
                              existing_nullable=False)
        batch_op.add_column(sa.Column('checked_in_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('checked_in_gate', sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column('voided_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index('ix_tickets_voided_at', ['voided_at'], unique=False)

    with op.batch_alter_table('venues', schema=None) as batch_op:
        batch_op.add_column(sa.Column('timezone', sa.String(length=64), server_default='UTC', nullable=False))

    op.create_table('ticket_keys',
    sa.Column('id', BIG_ID, nullable=False),
    sa.Column('kid', sa.String(length=32), nullable=False),
    sa.Column('private_key', sa.Text(), nullable=False),
    sa.Column('public_key', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('retired_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ticket_keys')),
    sa.UniqueConstraint('kid', name=op.f('uq_ticket_keys_kid'))
    )
    op.create_index('uq_ticket_keys_active', 'ticket_keys', ['status'], unique=True,
                    postgresql_where=ACTIVE_KEY, sqlite_where=ACTIVE_KEY)

    op.create_table('checkin_scans',
    sa.Column('id', BIG_ID, nullable=False),
    sa.Column('ticket_id', BIG_ID, nullable=False),
    sa.Column('nonce', sa.String(length=100), nullable=False),
    sa.Column('result', sa.String(length=32), nullable=True),
    sa.Column('checked_in_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('gate', sa.String(length=100), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['ticket_id'], ['tickets.id'], name=op.f('fk_checkin_scans_ticket_id_tickets')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_checkin_scans')),
    sa.UniqueConstraint('ticket_id', 'nonce', name='uq_checkin_scans_ticket_nonce')
    )


def downgrade() -> None:
    op.drop_table('checkin_scans')
    op.drop_index('uq_ticket_keys_active', table_name='ticket_keys', postgresql_where=ACTIVE_KEY,
                  sqlite_where=ACTIVE_KEY)
    op.drop_table('ticket_keys')
    with op.batch_alter_table('venues', schema=None) as batch_op:
        batch_op.drop_column('timezone')
    with op.batch_alter_table('tickets', schema=None) as batch_op:
        batch_op.drop_index('ix_tickets_voided_at')
        batch_op.drop_column('voided_at')
        batch_op.drop_column('checked_in_gate')
        batch_op.drop_column('checked_in_at')
        batch_op.alter_column('code', type_=sa.String(length=43), existing_type=sa.String(length=512),
                              existing_nullable=False)
