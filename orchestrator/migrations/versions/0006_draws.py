"""draws: the commitment, comments and payments coming in, and each draw with its proof

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('drawseed',
    sa.Column('event_id', sa.String(length=64), nullable=False),
    sa.Column('seed', sa.String(length=64), nullable=False),
    sa.Column('rules', sa.String(), nullable=False),
    sa.Column('rules_hash', sa.String(length=64), nullable=False),
    sa.Column('commitment', sa.String(length=64), nullable=False),
    sa.Column('beacon', sa.String(length=200), nullable=True),
    sa.Column('live_ended_at', sa.DateTime(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['event_id'], ['event.id'], ),
    sa.PrimaryKeyConstraint('event_id')
    )
    op.create_table('comment',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('event_id', sa.String(length=64), nullable=False),
    sa.Column('source', sa.String(length=32), nullable=False),
    sa.Column('message_id', sa.String(length=128), nullable=False),
    sa.Column('platform', sa.String(length=32), nullable=False),
    sa.Column('room', sa.String(length=128), nullable=False),
    sa.Column('user_id', sa.String(length=128), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('text', sa.String(), nullable=False),
    sa.Column('at', sa.DateTime(), nullable=False),
    sa.Column('received_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['event_id'], ['event.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('source', 'message_id', name='uq_comment_once')
    )
    op.create_index('ix_comment_screen', 'comment', ['event_id', 'at', 'id'], unique=False)
    op.create_table('payment',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('event_id', sa.String(length=64), nullable=False),
    sa.Column('source', sa.String(length=32), nullable=False),
    sa.Column('payment_id', sa.String(length=128), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('order_id', sa.String(length=128), nullable=False),
    sa.Column('person', sa.String(length=128), nullable=False),
    sa.Column('product', sa.String(length=64), nullable=True),
    sa.Column('amount_fen', sa.Integer(), nullable=False),
    sa.Column('at', sa.DateTime(), nullable=False),
    sa.Column('received_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['event_id'], ['event.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('source', 'payment_id', name='uq_payment_once')
    )
    op.create_index('ix_payment_draw', 'payment', ['event_id', 'kind', 'person', 'order_id', 'at', 'product'], unique=False)
    op.create_table('draw',
    sa.Column('event_id', sa.String(length=64), nullable=False),
    sa.Column('draw_id', sa.String(length=80), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('state', sa.String(length=8), nullable=False),
    sa.Column('reason', sa.String(), nullable=True),
    sa.Column('k', sa.Integer(), nullable=False),
    sa.Column('freeze_at', sa.DateTime(), nullable=True),
    sa.Column('freeze_offset_ms', sa.Integer(), nullable=True),
    sa.Column('entrants', sa.String(), nullable=False),
    sa.Column('entrant_hash', sa.String(length=64), nullable=False),
    sa.Column('winners', sa.String(), nullable=False),
    sa.Column('screen', sa.String(), nullable=True),
    sa.Column('beacon', sa.String(length=200), nullable=True),
    sa.Column('redraw_of', sa.String(length=80), nullable=True),
    sa.Column('made_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['event_id'], ['event.id'], ),
    sa.PrimaryKeyConstraint('event_id', 'draw_id')
    )


def downgrade() -> None:
    op.drop_table('draw')
    op.drop_index('ix_payment_draw', table_name='payment')
    op.drop_table('payment')
    op.drop_index('ix_comment_screen', table_name='comment')
    op.drop_table('comment')
    op.drop_table('drawseed')
