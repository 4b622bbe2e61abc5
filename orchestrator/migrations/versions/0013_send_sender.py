"""send.sender: who must confirm a created WeCom task, so a group's post counts for its owner's guide

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('send') as batch:
        batch.add_column(sa.Column('sender', sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('send') as batch:
        batch.drop_column('sender')
