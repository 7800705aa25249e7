"""Uploads: archives sent with an invocation, stored in chunks so that any worker sharing the
store can unpack them; deleted with their run (retention walks runs by the existing
``ix_runs_created`` index, so it needs no table of its own).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "uploads",
        sa.Column("run_id", sa.String(200), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("info", sa.JSON, nullable=False),
        sa.PrimaryKeyConstraint("run_id", "position", name="pk_uploads"),
    )
    op.create_table(
        "upload_chunks",
        sa.Column("run_id", sa.String(200), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("run_id", "position", "seq", name="pk_upload_chunks"),
    )


def downgrade() -> None:
    op.drop_table("upload_chunks")
    op.drop_table("uploads")
