"""send.claim: the token of the claim that last took a row, so a claim reads its rows back as one document

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('send') as batch:
        batch.add_column(sa.Column('claim', sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('send') as batch:
        batch.drop_column('claim')
