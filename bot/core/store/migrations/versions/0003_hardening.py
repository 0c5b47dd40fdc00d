"""hardening: index contents digest, message heartbeats, server-side admin sessions, login throttle

Revision ID: 0003
Revises: 0002
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # What the last published index snapshot holds (a digest of its chunk ids and embedding
    # models): a start or an ingest that finds the database's chunks differ republishes.
    with op.batch_alter_table('index_versions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('contents', sa.String(length=64), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('chunks', sa.Integer(), nullable=False, server_default='0'))
    # The producer of an answer writes its progress here as it goes (a heartbeat).
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('updated_at', sa.DateTime(), nullable=True))
    op.create_table('admin_sessions',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('expires_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('admin_sessions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_admin_sessions_user_id'), ['user_id'], unique=False)
    op.create_table('login_throttle',
    sa.Column('account', sa.String(length=64), nullable=False),
    sa.Column('failures', sa.Integer(), nullable=False),
    sa.Column('first_failure_at', sa.DateTime(), nullable=False),
    sa.Column('locked_until', sa.DateTime(), nullable=True),
    sa.PrimaryKeyConstraint('account')
    )


def downgrade() -> None:
    op.drop_table('login_throttle')
    with op.batch_alter_table('admin_sessions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_admin_sessions_user_id'))
    op.drop_table('admin_sessions')
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_column('updated_at')
    with op.batch_alter_table('index_versions', schema=None) as batch_op:
        batch_op.drop_column('chunks')
        batch_op.drop_column('contents')
