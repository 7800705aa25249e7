"""The artifacts runs saved: one row per artifact (name, size, sha256, content type, the
workspace path it came from, when); the contents live in the artifact store
(PYFLUE_ARTIFACTS_DIR, see docs/artifacts.md).

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "artifacts",
        sa.Column("run_id", sa.String(200),
                  sa.ForeignKey("runs.run_id", ondelete="CASCADE"), primary_key=True),
        sa.Column("name", sa.String(1000), primary_key=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("content_type", sa.String(200), nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("saved_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("artifacts")
