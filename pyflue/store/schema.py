"""The run store's tables (SQLAlchemy Core). Changes go through an alembic migration."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

runs = Table(
    "runs",
    metadata,
    Column("run_id", String(200), primary_key=True),
    Column("workflow", String(200), nullable=False),
    Column("status", String(20), nullable=False),
    Column("payload", JSON, nullable=False),
    Column("result", JSON, nullable=True),
    Column("error", JSON, nullable=True),
    Column("reason", Text, nullable=True),
    Column("image", String(500), nullable=True),
    Column("source", String(50), nullable=False),
    Column("owner", String(200), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=True),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Column("duration_ms", Integer, nullable=True),
    Column("event_count", Integer, nullable=False, default=0),
    Column("idempotency_key", String(300), nullable=True),
    # A cancel asked of a run another worker runs; that worker acts on it (migration 0003).
    Column("cancel_requested", Text, nullable=True),
    Column("attempt", Integer, nullable=False, server_default="1"),
    # The run's container and when it was removed (migration 0005).
    Column("container_id", String(100), nullable=True),
    Column("container_removed_at", DateTime(timezone=True), nullable=True),
    # The run's trace, the traceparent it continues, its resource summary (migration 0008).
    Column("trace_id", String(32), nullable=True),
    Column("traceparent", String(100), nullable=True),
    Column("resources", JSON, nullable=True),
    # Whose run it is and which token asked (migration 0009): see pyflue.tenants.
    Column("tenant", String(100), nullable=False, server_default="default"),
    Column("requested_by", String(100), nullable=True),
    Index("ix_runs_created", "created_at", "run_id"),
    # An Idempotency-Key is the tenant's own: another tenant's same key is another run.
    Index("ix_runs_idempotency", "tenant", "workflow", "idempotency_key", unique=True),
    Index("ix_runs_tenant_created", "tenant", "created_at"),
    Index("ix_runs_status_created", "status", "created_at"),
    Index("ix_runs_status", "status"),
    Index("ix_runs_workflow", "workflow"),
)

events = Table(
    "events",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("run_id", String(200), ForeignKey("runs.run_id", ondelete="CASCADE"), nullable=False),
    Column("event_index", Integer, nullable=False),
    Column("type", String(50), nullable=False),
    Column("timestamp", DateTime(timezone=True), nullable=False),
    Column("data", JSON, nullable=False),
    UniqueConstraint("run_id", "event_index", name="uq_events_run_index"),
)

# The servers (schedulers) sharing this store, with their last heartbeat: another worker may
# take a run as lost once its owner's heartbeat is older than the lease.
workers = Table(
    "workers",
    metadata,
    Column("worker", String(200), primary_key=True),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("seen_at", DateTime(timezone=True), nullable=False),
)

# The artifacts a run saved (migration 0007): their contents are in the artifact store
# (pyflue.artifacts), by sha256; these rows are what lists and serves them.
artifacts = Table(
    "artifacts",
    metadata,
    Column("run_id", String(200), ForeignKey("runs.run_id", ondelete="CASCADE"),
           primary_key=True),
    Column("name", String(1000), primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("content_type", String(200), nullable=False),
    Column("path", Text, nullable=False),
    Column("saved_at", DateTime(timezone=True), nullable=False),
)

# Archives sent with an invocation (migration 0006): what each holds, and its bytes in chunks,
# so that any worker sharing the store can unpack them. Written before the run's record (so a
# worker that claims the run finds them) and deleted with it (RunStore.delete_run).
uploads = Table(
    "uploads",
    metadata,
    Column("run_id", String(200), nullable=False),
    Column("position", Integer, nullable=False),
    Column("info", JSON, nullable=False),
    PrimaryKeyConstraint("run_id", "position", name="pk_uploads"),
)

upload_chunks = Table(
    "upload_chunks",
    metadata,
    Column("run_id", String(200), nullable=False),
    Column("position", Integer, nullable=False),
    Column("seq", Integer, nullable=False),
    Column("data", LargeBinary, nullable=False),
    PrimaryKeyConstraint("run_id", "position", "seq", name="pk_upload_chunks"),
)

# A run's resource samples (pyflue.resources), kept apart from the record they would bloat
# (migration 0008).
run_samples = Table(
    "run_samples",
    metadata,
    Column("run_id", String(200), ForeignKey("runs.run_id", ondelete="CASCADE"),
           primary_key=True),
    Column("samples", JSON, nullable=False),
)
