"""WeCom join ways: one group live code per guide of an event, found again by its state

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('joinway',
    sa.Column('event_id', sa.String(length=64), nullable=False),
    sa.Column('guide_id', sa.String(length=64), nullable=False),
    sa.Column('state', sa.String(length=30), nullable=False),
    sa.Column('config_id', sa.String(length=64), nullable=False),
    sa.Column('qr_url', sa.String(), nullable=False),
    sa.Column('made_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['event_id'], ['event.id'], ),
    sa.PrimaryKeyConstraint('event_id', 'guide_id')
    )
    op.create_index(op.f('ix_joinway_state'), 'joinway', ['state'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_joinway_state'), table_name='joinway')
    op.drop_table('joinway')
