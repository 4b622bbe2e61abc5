"""send ledger: partial indexes on the open states; members keep their tags

Recording an outcome (sending -> sent) no longer rewrites an index entry; claiming reads the
planned rows of a step in id order straight from the index. `member.tags` lets a worker render
copy from the stored audience without loading the audience files.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

PLANNED = sa.text("state = 'planned'")
SENDING = sa.text("state = 'sending'")


def upgrade() -> None:
    with op.batch_alter_table('member', schema=None) as batch_op:
        batch_op.add_column(sa.Column('tags', sa.String(), nullable=True))
    with op.batch_alter_table('send', schema=None) as batch_op:
        batch_op.drop_index('ix_send_claim')
        batch_op.create_index('ix_send_planned', ['event_id', 'step_id', 'id'], unique=False, sqlite_where=PLANNED, postgresql_where=PLANNED)
        batch_op.create_index('ix_send_sending', ['event_id', 'step_id'], unique=False, sqlite_where=SENDING, postgresql_where=SENDING)


def downgrade() -> None:
    with op.batch_alter_table('send', schema=None) as batch_op:
        batch_op.drop_index('ix_send_sending')
        batch_op.drop_index('ix_send_planned')
        batch_op.create_index('ix_send_claim', ['event_id', 'step_id', 'state'], unique=False)
    with op.batch_alter_table('member', schema=None) as batch_op:
        batch_op.drop_column('tags')
