"""payment.guide_id: the guide a deposit, order or refund counts for on the board's per-guide table

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('payment') as batch:
        batch.add_column(sa.Column('guide_id', sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('payment') as batch:
        batch.drop_column('guide_id')
