"""send.count_day: caps are counted from the ledger's own rows; the sendcount table goes

A message to a person that counts toward caps (a preview or reminder) carries its step's day in the
event's timezone; `ledger.counts_of` counts a person's rows by that day and their state. Nothing is
written per message beyond its outcome, and the counts cannot drift from the outcomes.

Revision ID: 0016
Revises: 0015
"""

from __future__ import annotations

from collections import Counter
from datetime import timezone
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from alembic import op

revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None

COUNTED = ('sent', 'created', 'unknown')
event = sa.table('event', sa.column('id', sa.String), sa.column('timezone', sa.String))
step = sa.table('step', sa.column('event_id', sa.String), sa.column('step_id', sa.String), sa.column('stage', sa.String),
                sa.column('at', sa.DateTime))
send = sa.table('send', sa.column('event_id', sa.String), sa.column('step_id', sa.String), sa.column('member_id', sa.String),
                sa.column('channel', sa.String), sa.column('state', sa.String), sa.column('count_day', sa.String))
sendcount = sa.table('sendcount', sa.column('member_id', sa.String), sa.column('period', sa.String), sa.column('count', sa.Integer))


def upgrade() -> None:
    with op.batch_alter_table('send') as batch:
        batch.add_column(sa.Column('count_day', sa.String(length=10), nullable=True))
    conn = op.get_bind()
    steps = conn.execute(sa.select(step.c.event_id, step.c.step_id, step.c.at, event.c.timezone)
                         .join(event, event.c.id == step.c.event_id).where(step.c.stage.in_(('preview', 'reminder')))).all()
    for event_id, step_id, at, tz in steps:  # what ledger.counts_of reads: the step's day, messages to people only
        day = f"{at.replace(tzinfo=timezone.utc).astimezone(ZoneInfo(tz)):%Y-%m-%d}"
        conn.execute(sa.update(send).where(send.c.event_id == event_id, send.c.step_id == step_id, send.c.channel != 'wecom_group')
                     .values(count_day=day))
    with op.batch_alter_table('send') as batch:
        batch.create_index('ix_send_counted', ['member_id', 'count_day'], unique=False,
                           sqlite_where=sa.text('count_day IS NOT NULL'), postgresql_where=sa.text('count_day IS NOT NULL'))
    op.drop_table('sendcount')


def downgrade() -> None:
    op.create_table('sendcount',
                    sa.Column('member_id', sa.String(length=64), nullable=False),
                    sa.Column('period', sa.String(length=16), nullable=False),
                    sa.Column('count', sa.Integer(), nullable=False),
                    sa.PrimaryKeyConstraint('member_id', 'period'))
    conn = op.get_bind()
    counts: Counter[tuple[str, str]] = Counter()
    for member_id, day, n in conn.execute(sa.select(send.c.member_id, send.c.count_day, sa.func.count())
                                          .where(send.c.count_day.is_not(None), send.c.state.in_(COUNTED))
                                          .group_by(send.c.member_id, send.c.count_day)):
        counts[(member_id, f"d:{day}")] += n
        counts[(member_id, f"m:{day[:7]}")] += n
    rows = [{'member_id': m, 'period': p, 'count': n} for (m, p), n in sorted(counts.items())]
    for i in range(0, len(rows), 1000):
        conn.execute(sa.insert(sendcount), rows[i:i + 1000])
    with op.batch_alter_table('send') as batch:
        batch.drop_index('ix_send_counted')
        batch.drop_column('count_day')
