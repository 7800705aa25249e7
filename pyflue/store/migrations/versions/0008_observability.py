"""Observability: a run's trace id and the traceparent it continues, its resource summary, and
its resource samples in a table of their own (see docs/observability.md).

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("trace_id", sa.String(32), nullable=True))
        batch.add_column(sa.Column("traceparent", sa.String(100), nullable=True))
        batch.add_column(sa.Column("resources", sa.JSON, nullable=True))
    op.create_table(
        "run_samples",
        sa.Column("run_id", sa.String(200), sa.ForeignKey("runs.run_id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("samples", sa.JSON, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("run_samples")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("resources")
        batch.drop_column("traceparent")
        batch.drop_column("trace_id")
