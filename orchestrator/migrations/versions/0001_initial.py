"""initial store: events, frozen playbooks, steps, members, guides, consent, opt-outs, send ledger, counts, log

Revision ID: 0001
Revises: 
Create Date: 2026-11-30 19:26:10.233067
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op



revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table('consent',
    sa.Column('member_id', sa.String(length=64), nullable=False),
    sa.Column('channel', sa.String(length=24), nullable=False),
    sa.Column('granted', sa.Boolean(), nullable=False),
    sa.Column('source', sa.String(), nullable=True),
    sa.Column('at', sa.DateTime(), nullable=True),
    sa.PrimaryKeyConstraint('member_id', 'channel')
    )
    op.create_table('event',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('playbook_id', sa.String(length=64), nullable=False),
    sa.Column('title', sa.String(), nullable=False),
    sa.Column('entry', sa.String(), nullable=False),
    sa.Column('playbook_hash', sa.String(length=64), nullable=False),
    sa.Column('timezone', sa.String(length=64), nullable=False),
    sa.Column('live_start', sa.DateTime(), nullable=False),
    sa.Column('live_end', sa.DateTime(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('mode', sa.String(length=16), nullable=False),
    sa.Column('revision', sa.Integer(), nullable=False),
    sa.Column('speed', sa.Float(), nullable=False),
    sa.Column('real_origin', sa.Float(), nullable=False),
    sa.Column('virtual_origin', sa.Float(), nullable=False),
    sa.Column('audience', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('logentry',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('event_id', sa.String(length=64), nullable=False),
    sa.Column('at', sa.DateTime(), nullable=False),
    sa.Column('event_time', sa.DateTime(), nullable=True),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('step_id', sa.String(length=80), nullable=True),
    sa.Column('message', sa.Text(), nullable=False),
    sa.Column('data', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('logentry', schema=None) as batch_op:
        batch_op.create_index('ix_log_event', ['event_id', 'id'], unique=False)

    op.create_table('optout',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('member_id', sa.String(length=64), nullable=True),
    sa.Column('address', sa.String(length=255), nullable=True),
    sa.Column('channel', sa.String(length=24), nullable=False),
    sa.Column('source', sa.String(length=32), nullable=False),
    sa.Column('at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('optout', schema=None) as batch_op:
        batch_op.create_index('ix_optout_address', ['address'], unique=False)
        batch_op.create_index('ix_optout_member', ['member_id'], unique=False)

    op.create_table('sendcount',
    sa.Column('member_id', sa.String(length=64), nullable=False),
    sa.Column('period', sa.String(length=16), nullable=False),
    sa.Column('count', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('member_id', 'period')
    )
    op.create_table('frozen_playbook',
    sa.Column('event_id', sa.String(length=64), nullable=False),
    sa.Column('playbook_hash', sa.String(length=64), nullable=False),
    sa.Column('bundle', sa.LargeBinary(), nullable=False),
    sa.ForeignKeyConstraint(['event_id'], ['event.id'], ),
    sa.PrimaryKeyConstraint('event_id')
    )
    op.create_table('guide',
    sa.Column('event_id', sa.String(length=64), nullable=False),
    sa.Column('guide_id', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(), nullable=False),
    sa.Column('channel_code', sa.String(length=64), nullable=False),
    sa.Column('wecom_userid', sa.String(length=64), nullable=True),
    sa.Column('contact_code', sa.String(), nullable=True),
    sa.ForeignKeyConstraint(['event_id'], ['event.id'], ),
    sa.PrimaryKeyConstraint('event_id', 'guide_id')
    )
    op.create_table('member',
    sa.Column('event_id', sa.String(length=64), nullable=False),
    sa.Column('member_id', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(), nullable=False),
    sa.Column('segments', sa.String(), nullable=False),
    sa.Column('phone', sa.String(length=32), nullable=True),
    sa.Column('email', sa.String(), nullable=True),
    sa.Column('wecom_external_userid', sa.String(length=64), nullable=True),
    sa.Column('guide', sa.String(length=64), nullable=True),
    sa.Column('excluded', sa.String(length=16), nullable=True),
    sa.ForeignKeyConstraint(['event_id'], ['event.id'], ),
    sa.PrimaryKeyConstraint('event_id', 'member_id')
    )
    op.create_table('send',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('event_id', sa.String(length=64), nullable=False),
    sa.Column('step_id', sa.String(length=80), nullable=False),
    sa.Column('member_id', sa.String(length=64), nullable=False),
    sa.Column('channel', sa.String(length=24), nullable=False),
    sa.Column('transport', sa.String(length=24), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('retried', sa.Boolean(), nullable=False),
    sa.Column('idempotency_key', sa.String(length=200), nullable=False),
    sa.Column('provider_id', sa.String(length=128), nullable=True),
    sa.Column('error', sa.String(), nullable=True),
    sa.Column('claimed_by', sa.String(length=64), nullable=True),
    sa.Column('claimed_at', sa.DateTime(), nullable=True),
    sa.Column('not_before', sa.DateTime(), nullable=True),
    sa.Column('sent_at', sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(['event_id'], ['event.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('event_id', 'step_id', 'member_id', 'channel', name='uq_send_once')
    )
    with op.batch_alter_table('send', schema=None) as batch_op:
        batch_op.create_index('ix_send_claim', ['event_id', 'step_id', 'state'], unique=False)

    op.create_table('step',
    sa.Column('event_id', sa.String(length=64), nullable=False),
    sa.Column('step_id', sa.String(length=80), nullable=False),
    sa.Column('stage', sa.String(length=24), nullable=False),
    sa.Column('label', sa.String(), nullable=False),
    sa.Column('at', sa.DateTime(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('revision', sa.Integer(), nullable=False),
    sa.Column('audience', sa.Integer(), nullable=False),
    sa.Column('note', sa.String(), nullable=True),
    sa.Column('started_at', sa.DateTime(), nullable=True),
    sa.Column('finished_at', sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(['event_id'], ['event.id'], ),
    sa.PrimaryKeyConstraint('event_id', 'step_id')
    )



def downgrade() -> None:

    op.drop_table('step')
    with op.batch_alter_table('send', schema=None) as batch_op:
        batch_op.drop_index('ix_send_claim')

    op.drop_table('send')
    op.drop_table('member')
    op.drop_table('guide')
    op.drop_table('frozen_playbook')
    op.drop_table('sendcount')
    with op.batch_alter_table('optout', schema=None) as batch_op:
        batch_op.drop_index('ix_optout_member')
        batch_op.drop_index('ix_optout_address')

    op.drop_table('optout')
    with op.batch_alter_table('logentry', schema=None) as batch_op:
        batch_op.drop_index('ix_log_event')

    op.drop_table('logentry')
    op.drop_table('event')
    op.drop_table('consent')

