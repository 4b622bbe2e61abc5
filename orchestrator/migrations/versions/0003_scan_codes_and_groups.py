"""the path: scan codes (poster QR -> event, guide, variant), the group pool's groups, joins

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('scancode',
    sa.Column('code', sa.String(length=32), nullable=False),
    sa.Column('event_id', sa.String(length=64), nullable=False),
    sa.Column('guide_id', sa.String(length=64), nullable=False),
    sa.Column('variant', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['event_id'], ['event.id'], ),
    sa.PrimaryKeyConstraint('code'),
    sa.UniqueConstraint('event_id', 'guide_id', 'variant', name='uq_scancode_once')
    )
    op.create_table('chatgroup',
    sa.Column('event_id', sa.String(length=64), nullable=False),
    sa.Column('number', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(), nullable=False),
    sa.Column('kind', sa.String(length=24), nullable=False),
    sa.Column('capacity', sa.Integer(), nullable=False),
    sa.Column('margin', sa.Integer(), nullable=False),
    sa.Column('qr', sa.LargeBinary(), nullable=True),
    sa.Column('qr_type', sa.String(length=16), nullable=True),
    sa.Column('expires_at', sa.DateTime(), nullable=True),
    sa.Column('added_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['event_id'], ['event.id'], ),
    sa.PrimaryKeyConstraint('event_id', 'number')
    )
    op.create_table('join',
    sa.Column('event_id', sa.String(length=64), nullable=False),
    sa.Column('person', sa.String(length=64), nullable=False),
    sa.Column('group_number', sa.Integer(), nullable=True),
    sa.Column('guide_id', sa.String(length=64), nullable=True),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['event_id'], ['event.id'], ),
    sa.PrimaryKeyConstraint('event_id', 'person')
    )


def downgrade() -> None:
    op.drop_table('join')
    op.drop_table('chatgroup')
    op.drop_table('scancode')
