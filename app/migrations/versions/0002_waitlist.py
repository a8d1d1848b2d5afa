"""waitlist

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('waitlist_entries',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('user_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('event_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('quantity', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('offer_booking_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint('quantity > 0', name=op.f('ck_waitlist_entries_quantity_positive')),
    sa.ForeignKeyConstraint(['event_id'], ['events.id'], name=op.f('fk_waitlist_entries_event_id_events')),
    sa.ForeignKeyConstraint(['offer_booking_id'], ['bookings.id'], name=op.f('fk_waitlist_entries_offer_booking_id_bookings')),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_waitlist_entries_user_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_waitlist_entries'))
    )
    with op.batch_alter_table('waitlist_entries', schema=None) as batch_op:
        batch_op.create_index('ix_waitlist_entries_event_status', ['event_id', 'status', 'id'], unique=False)
        batch_op.create_index('ix_waitlist_entries_offer', ['offer_booking_id'], unique=False)
        batch_op.create_index('uq_waitlist_entries_active', ['user_id', 'event_id'], unique=True, postgresql_where=sa.text("status IN ('WAITING', 'OFFERED')"), sqlite_where=sa.text("status IN ('WAITING', 'OFFERED')"))

    with op.batch_alter_table('bookings', schema=None) as batch_op:
        batch_op.add_column(sa.Column('waitlist_offer', sa.Boolean(), server_default=sa.false(), nullable=False))



def downgrade() -> None:
    with op.batch_alter_table('bookings', schema=None) as batch_op:
        batch_op.drop_column('waitlist_offer')

    with op.batch_alter_table('waitlist_entries', schema=None) as batch_op:
        batch_op.drop_index('uq_waitlist_entries_active', postgresql_where=sa.text("status IN ('WAITING', 'OFFERED')"), sqlite_where=sa.text("status IN ('WAITING', 'OFFERED')"))
        batch_op.drop_index('ix_waitlist_entries_offer')
        batch_op.drop_index('ix_waitlist_entries_event_status')

    op.drop_table('waitlist_entries')
