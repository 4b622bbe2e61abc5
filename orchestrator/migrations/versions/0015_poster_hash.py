"""scancode.poster_hash: what the stored poster was drawn from, so a poster step that continues
in a later job (or runs again) draws only the posters not stored as they should be

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('scancode') as batch:
        batch.add_column(sa.Column('poster_hash', sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('scancode') as batch:
        batch.drop_column('poster_hash')
