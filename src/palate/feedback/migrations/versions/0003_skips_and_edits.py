"""Skipped assignments (``assignments.skipped_at``, ``skip_reason``) and changed answers
(``judgments.edited_at`` and the ``judgment_edits`` audit table: every earlier answer is kept).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # plain ADD COLUMN (not a batch table copy): SQLite does it in place, foreign keys stay valid
    op.add_column("assignments", sa.Column("skipped_at", sa.DateTime, nullable=True))
    op.add_column("assignments", sa.Column("skip_reason", sa.Text, nullable=True))
    op.add_column("judgments", sa.Column("edited_at", sa.DateTime, nullable=True))
    op.create_table(
        "judgment_edits",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("judgment_id", sa.Integer, sa.ForeignKey("judgments.id"), nullable=False),
        sa.Column("previous_answer", sa.JSON, nullable=False),
        sa.Column("previous_reason", sa.Text, nullable=True),
        sa.Column("edited_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_judgment_edits_judgment_id", "judgment_edits", ["judgment_id"])


def downgrade() -> None:
    op.drop_index("ix_judgment_edits_judgment_id", table_name="judgment_edits")
    op.drop_table("judgment_edits")
    with op.batch_alter_table("judgments") as batch:
        batch.drop_column("edited_at")
    with op.batch_alter_table("assignments") as batch:
        batch.drop_column("skip_reason")
        batch.drop_column("skipped_at")
