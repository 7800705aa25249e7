"""Runs remember the Idempotency-Key they were created with.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("idempotency_key", sa.String(300), nullable=True))
        batch.create_index("ix_runs_idempotency", ["workflow", "idempotency_key"], unique=True)
    op.create_index("ix_runs_status_created", "runs", ["status", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_runs_status_created", "runs")
    with op.batch_alter_table("runs") as batch:
        batch.drop_index("ix_runs_idempotency")
        batch.drop_column("idempotency_key")
