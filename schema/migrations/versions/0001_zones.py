"""zones

Revision ID: 0001
Revises: 
Create Date: 2026-11-26 22:36:16.474584
"""
from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table('zone',
    sa.Column('state', sa.String(length=32), nullable=False),
    sa.Column('uuid', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('description', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('owner_account_uuid', sa.String(length=32), nullable=True),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('uuid', name=op.f('pk_zone'))
    )
    op.create_index(op.f('ix_zone_name'), 'zone', ['name'], unique=False)
    op.create_index(op.f('ix_zone_owner_account_uuid'), 'zone', ['owner_account_uuid'], unique=False)



def downgrade() -> None:

    op.drop_index(op.f('ix_zone_owner_account_uuid'), table_name='zone')
    op.drop_index(op.f('ix_zone_name'), table_name='zone')
    op.drop_table('zone')

