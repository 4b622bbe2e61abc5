"""posters: each scan code's poster PNG, and the key of the event's poster page

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('scancode', sa.Column('poster', sa.LargeBinary(), nullable=True))
    op.add_column('scancode', sa.Column('poster_at', sa.DateTime(), nullable=True))
    op.add_column('event', sa.Column('poster_key', sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('event') as batch:
        batch.drop_column('poster_key')
    with op.batch_alter_table('scancode') as batch:
        batch.drop_column('poster_at')
        batch.drop_column('poster')
