"""send: no index names a column a message's progress changes, so each change is a HOT update

The partial indexes on `state` (planned, sending, created) go: every change of a row's state wrote a
new entry in each of the table's indexes, which on PostgreSQL cost more than the rest of the ledger
(bench/fanout.py, 100,000 recipients: 96 µs of CPU a message for the ledger before, 40 after). A
step's rows are found in id order (`ix_send_step`); a worker that claimed sends is recorded in
`claimer`, so the orphan sweep knows whose rows to look for; a WeCom task awaiting its guide is
marked by `awaiting`, indexed, which nothing else changes. On PostgreSQL the table's new pages are
filled half full, so that the new versions of a row fit on its page.

Revision ID: 0017
Revises: 0016
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None

AWAITING = sa.text("awaiting IS NOT NULL")


def upgrade() -> None:
    op.create_table(
        'claimer',
        sa.Column('worker', sa.String(length=64), nullable=False),
        sa.Column('event_id', sa.String(length=64), nullable=False),
        sa.Column('step_id', sa.String(length=80), nullable=False),
        sa.Column('dirty', sa.Boolean(), nullable=False),
        sa.Column('last_at', sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint('worker', 'event_id', 'step_id'),
    )
    with op.batch_alter_table('send') as batch:
        batch.add_column(sa.Column('awaiting', sa.Boolean(), nullable=True))
    op.execute("UPDATE send SET awaiting = true WHERE state = 'created'")
    # rows in flight now were claimed by workers this revision has no record of: name them, so the
    # orphan sweep finds them if their worker is gone
    op.execute("INSERT INTO claimer (worker, event_id, step_id, dirty, last_at) "
               "SELECT claimed_by, event_id, step_id, true, max(claimed_at) FROM send "
               "WHERE state = 'sending' AND claimed_by IS NOT NULL AND claimed_at IS NOT NULL GROUP BY claimed_by, event_id, step_id")
    op.drop_index('ix_send_planned', table_name='send')
    op.drop_index('ix_send_sending', table_name='send')
    op.drop_index('ix_send_created', table_name='send')
    op.create_index('ix_send_step', 'send', ['event_id', 'step_id', 'id'], unique=False)
    op.create_index('ix_send_awaiting', 'send', ['event_id'], unique=False, sqlite_where=AWAITING, postgresql_where=AWAITING)
    if op.get_bind().dialect.name == 'postgresql':
        op.execute('ALTER TABLE send SET (fillfactor = 50)')


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute('ALTER TABLE send RESET (fillfactor)')
    op.drop_index('ix_send_awaiting', table_name='send')
    op.drop_index('ix_send_step', table_name='send')
    for name, state, columns in (('ix_send_planned', 'planned', ['event_id', 'step_id', 'id']), ('ix_send_sending', 'sending', ['event_id', 'step_id']),
                                 ('ix_send_created', 'created', ['event_id'])):
        where = sa.text(f"state = '{state}'")
        op.create_index(name, 'send', columns, unique=False, sqlite_where=where, postgresql_where=where)
    with op.batch_alter_table('send') as batch:
        batch.drop_column('awaiting')
    op.drop_table('claimer')
