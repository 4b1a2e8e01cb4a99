"""Time spent per judgment (``judgments.duration_ms``) and deactivatable labelers (``labelers.active``).

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # plain ADD COLUMN (not a batch table copy): SQLite does it in place, foreign keys stay valid
    op.add_column("judgments", sa.Column("duration_ms", sa.Integer, nullable=True))
    op.add_column("labelers", sa.Column("active", sa.Boolean, nullable=False, server_default=sa.true()))


def downgrade() -> None:
    with op.batch_alter_table("labelers") as batch:
        batch.drop_column("active")
    with op.batch_alter_table("judgments") as batch:
        batch.drop_column("duration_ms")
