"""The run's container and when it was removed: a warm container is removed in the background
after its run's end, and the record says when that was done (see docs/sandbox.md).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("container_id", sa.String(100), nullable=True))
        batch.add_column(sa.Column("container_removed_at", sa.DateTime(timezone=True),
                                   nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("container_removed_at")
        batch.drop_column("container_id")
