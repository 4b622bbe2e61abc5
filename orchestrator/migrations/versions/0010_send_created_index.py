"""send: a partial index of WeCom tasks not yet confirmed (state 'created'), which every upkeep follows

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_send_created', 'send', ['event_id'], unique=False,
                    sqlite_where=sa.text("state = 'created'"), postgresql_where=sa.text("state = 'created'"))


def downgrade() -> None:
    op.drop_index('ix_send_created', table_name='send')
