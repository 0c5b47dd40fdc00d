"""support operations: live hand-off states, agent keys, webhooks, fixes, analytics indexes

Conversation states become ``bot`` -> ``waiting`` -> ``human`` -> ``resolved`` (was ``open`` |
``handed_off`` | ``resolved``); existing rows are mapped (``open`` -> ``bot``, ``handed_off`` ->
``waiting``).

Revision ID: 0004
Revises: 0003
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('conversations', schema=None) as batch_op:
        # Who has the conversation (an admin user name or an agent key's name); '' when nobody.
        batch_op.add_column(sa.Column('assigned_to', sa.String(length=128), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('waiting_since', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('resolved_at', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('reopened_at', sa.DateTime(), nullable=True))
        # Left by a visitor when no agent is online; never exported to training data or analytics.
        batch_op.add_column(sa.Column('visitor_email', sa.String(length=254), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('visitor_typing_at', sa.DateTime(), nullable=True))
        batch_op.create_index('ix_conversations_bot_created', ['bot_id', 'created_at'], unique=False)
        batch_op.create_index('ix_conversations_status', ['status'], unique=False)
    op.execute("UPDATE conversations SET status = 'bot' WHERE status = 'open'")
    op.execute("UPDATE conversations SET status = 'waiting' WHERE status = 'handed_off'")
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.create_index('ix_messages_created_at', ['created_at'], unique=False)
        # Partial indexes of the analytics page: conversations a person answered in, and the bot
        # replies' time to first token by time (covering: an index-only scan on PostgreSQL).
        batch_op.create_index('ix_messages_human_conversation', ['conversation_id'], unique=False,
                              postgresql_where=sa.text("role = 'human'"), sqlite_where=sa.text("role = 'human'"))
        batch_op.create_index('ix_messages_bot_ttft', ['created_at'], unique=False,
                              postgresql_include=['ttft_ms', 'conversation_id'],
                              postgresql_where=sa.text("role = 'bot' AND ttft_ms IS NOT NULL"),
                              sqlite_where=sa.text("role = 'bot' AND ttft_ms IS NOT NULL"))
    with op.batch_alter_table('feedback', schema=None) as batch_op:
        batch_op.create_index('ix_feedback_created_at', ['created_at'], unique=False)
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        # 'chat' (the OpenAI-compatible /v1 API) or 'agent' (/api/agent, for help-desk bridges).
        batch_op.add_column(sa.Column('scope', sa.String(length=16), nullable=False, server_default='chat'))
    with op.batch_alter_table('bots', schema=None) as batch_op:
        # Per-bot options set in the admin console (e.g. {"handoff_ask_bot_first": true}).
        batch_op.add_column(sa.Column('options', sa.JSON(), nullable=True))
    op.create_table('agent_presence',
    sa.Column('agent', sa.String(length=128), nullable=False),
    sa.Column('last_seen_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('agent')
    )
    op.create_table('webhooks',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('bot_id', sa.Integer(), nullable=False),
    sa.Column('url', sa.Text(), nullable=False),
    sa.Column('secret', sa.String(length=128), nullable=False),
    sa.Column('events', sa.JSON(), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['bot_id'], ['bots.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('webhooks', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_webhooks_bot_id'), ['bot_id'], unique=False)
    op.create_table('webhook_deliveries',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('webhook_id', sa.Integer(), nullable=False),
    sa.Column('event', sa.String(length=32), nullable=False),
    sa.Column('payload', sa.JSON(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),  # pending | delivered | failed
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('delivered_at', sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(['webhook_id'], ['webhooks.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('webhook_deliveries', schema=None) as batch_op:
        batch_op.create_index('ix_webhook_deliveries_due', ['status', 'next_attempt_at'], unique=False)
    op.create_table('fixes',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('bot_id', sa.Integer(), nullable=False),
    # rated_down | not_answered | asked_back | resolved (where the question came from)
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('conversation_id', sa.String(length=36), nullable=True),
    sa.Column('message_id', sa.Integer(), nullable=True),
    sa.Column('question', sa.Text(), nullable=False),
    sa.Column('answer', sa.Text(), nullable=False),
    # draft (proposed, waiting for approval) | approved | dismissed
    sa.Column('status', sa.String(length=16), nullable=False),
    # The curated FAQ entry an approved fix became.
    sa.Column('document_id', sa.Integer(), nullable=True),
    sa.Column('created_by', sa.String(length=128), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('approved_at', sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(['bot_id'], ['bots.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['conversation_id'], ['conversations.id'], ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['message_id'], ['messages.id'], ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['document_id'], ['documents.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('fixes', schema=None) as batch_op:
        batch_op.create_index('ix_fixes_bot_status', ['bot_id', 'status'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('fixes', schema=None) as batch_op:
        batch_op.drop_index('ix_fixes_bot_status')
    op.drop_table('fixes')
    with op.batch_alter_table('webhook_deliveries', schema=None) as batch_op:
        batch_op.drop_index('ix_webhook_deliveries_due')
    op.drop_table('webhook_deliveries')
    with op.batch_alter_table('webhooks', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_webhooks_bot_id'))
    op.drop_table('webhooks')
    op.drop_table('agent_presence')
    with op.batch_alter_table('bots', schema=None) as batch_op:
        batch_op.drop_column('options')
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.drop_column('scope')
    with op.batch_alter_table('feedback', schema=None) as batch_op:
        batch_op.drop_index('ix_feedback_created_at')
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_index('ix_messages_bot_ttft')
        batch_op.drop_index('ix_messages_human_conversation')
        batch_op.drop_index('ix_messages_created_at')
    op.execute("UPDATE conversations SET status = 'open' WHERE status = 'bot'")
    op.execute("UPDATE conversations SET status = 'handed_off' WHERE status IN ('waiting', 'human')")
    with op.batch_alter_table('conversations', schema=None) as batch_op:
        batch_op.drop_index('ix_conversations_status')
        batch_op.drop_index('ix_conversations_bot_created')
        batch_op.drop_column('visitor_typing_at')
        batch_op.drop_column('visitor_email')
        batch_op.drop_column('reopened_at')
        batch_op.drop_column('resolved_at')
        batch_op.drop_column('waiting_since')
        batch_op.drop_column('assigned_to')
