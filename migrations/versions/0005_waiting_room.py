"""waiting room: scheduled on-sales, waiting rooms and queue tickets

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    with op.batch_alter_table('events') as batch:
        batch.add_column(sa.Column('sales_start_at', sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('waiting_room', sa.Boolean(), server_default=sa.false(), nullable=False))
    op.create_table(
        'waiting_rooms',
        sa.Column('event_id', BIG_ID, nullable=False),
        sa.Column('admit_per_minute', sa.Integer(), nullable=False),
        sa.Column('admission_seconds', sa.Integer(), nullable=False),
        sa.Column('paused', sa.Boolean(), nullable=False),
        sa.Column('admitted_through', sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint('admit_per_minute > 0', name=op.f('ck_waiting_rooms_rate_positive')),
        sa.CheckConstraint('admission_seconds > 0', name=op.f('ck_waiting_rooms_admission_positive')),
        sa.ForeignKeyConstraint(['event_id'], ['events.id'], name=op.f('fk_waiting_rooms_event_id_events'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('event_id', name=op.f('pk_waiting_rooms')),
    )
    op.create_table(
        'queue_tickets',
        sa.Column('id', BIG_ID, nullable=False),
        sa.Column('event_id', BIG_ID, nullable=False),
        sa.Column('user_id', BIG_ID, nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('rank', sa.BigInteger(), nullable=False),
        sa.Column('joined_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('admitted_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('admitted_until', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['event_id'], ['events.id'], name=op.f('fk_queue_tickets_event_id_events'),
                                ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_queue_tickets_user_id_users')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_queue_tickets')),
        sa.UniqueConstraint('event_id', 'user_id', name='uq_queue_tickets_event_user'),
    )
    op.create_index('ix_queue_tickets_order', 'queue_tickets', ['event_id', 'status', 'rank', 'id'])


def downgrade() -> None:
    op.drop_index('ix_queue_tickets_order', table_name='queue_tickets')
    op.drop_table('queue_tickets')
    op.drop_table('waiting_rooms')
    with op.batch_alter_table('events') as batch:
        batch.drop_column('waiting_room')
        batch.drop_column('sales_start_at')
