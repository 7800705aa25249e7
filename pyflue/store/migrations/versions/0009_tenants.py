"""Runs belong to a tenant and remember which token asked for them; an Idempotency-Key is
unique per tenant (see pyflue.tenants and docs/server.md).

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("tenant", sa.String(100), nullable=False,
                                   server_default="default"))
        batch.add_column(sa.Column("requested_by", sa.String(100), nullable=True))
        batch.drop_index("ix_runs_idempotency")
        batch.create_index("ix_runs_idempotency", ["tenant", "workflow", "idempotency_key"],
                           unique=True)
        batch.create_index("ix_runs_tenant_created", ["tenant", "created_at"])


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_index("ix_runs_tenant_created")
        batch.drop_index("ix_runs_idempotency")
        batch.create_index("ix_runs_idempotency", ["workflow", "idempotency_key"], unique=True)
        batch.drop_column("requested_by")
        batch.drop_column("tenant")
