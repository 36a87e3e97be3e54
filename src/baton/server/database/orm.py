"""The database schema as SQLAlchemy 2 ORM models (DESIGN.md §2). Migrations in ``migrations/`` create it.

Portable by design: string UUID keys, JSON columns, timezone-aware UTC timestamps, no SQLite-only constructs.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


def new_id() -> str:
    return str(uuid.uuid4())


def utcnow() -> datetime:
    return datetime.now(UTC)


def table_of(model: type[Base]) -> Table:
    """The table of a mapped class, typed as one: for the hot paths' prebuilt Core statements."""
    table = model.__table__
    if not isinstance(table, Table):
        raise TypeError(f"{model.__name__} is not mapped to a table")
    return table


class UTCDateTime(TypeDecorator[datetime]):
    """Stores UTC, always returns aware datetimes (SQLite drops the offset; PostgreSQL keeps it)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored: give a timezone")
        value = value.astimezone(UTC)
        # SQLite compares timestamps as text: store them in one format without offset so ordering is right.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, list[str]: JSON}


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str | None] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(20))
    # sha256 of the key: keys are 190+ bits of randomness, so a fast hash is enough and lookups stay indexed.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column()


class Flow(Base):
    __tablename__ = "flows"
    __table_args__ = (UniqueConstraint("tenant_id", "name", "version", name="uq_flows_tenant_name_version"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    version: Mapped[int] = mapped_column(Integer)
    entrypoint: Mapped[str] = mapped_column(String(200))
    source: Mapped[str | None] = mapped_column(Text)
    source_filename: Mapped[str | None] = mapped_column(String(4096))
    # Identifies the registered content: registering unchanged code again returns the same version.
    content_hash: Mapped[str] = mapped_column(String(64))
    storage: Mapped[dict[str, Any]] = mapped_column()
    run_config: Mapped[dict[str, Any]] = mapped_column()
    labels: Mapped[list[str]] = mapped_column()
    parameters_schema: Mapped[dict[str, Any]] = mapped_column()
    tasks: Mapped[list[str]] = mapped_column()
    schedule: Mapped[dict[str, Any] | None] = mapped_column()
    description: Mapped[str | None] = mapped_column(Text)
    # @flow(timeout_seconds=...): the agent kills a run of this flow that is still going after this long.
    timeout_seconds: Mapped[int | None] = mapped_column(Integer)
    # @flow(retries=, retry_delay_seconds=, max_lateness_seconds=): run policies (migration 0005).
    retries: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    retry_delay_seconds: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    max_lateness_seconds: Mapped[int | None] = mapped_column(Integer)
    # @flow(max_concurrent_runs=N): the latest version's value limits the runs of every version (migration 0006).
    max_concurrent_runs: Mapped[int | None] = mapped_column(Integer)
    # "baton", or "prefect1": registered by Prefect 1's client, run by its agents (migration 0016, Prefect1Flow).
    kind: Mapped[str] = mapped_column(String(16), server_default="baton")
    created: Mapped[datetime] = mapped_column(default=utcnow)


class Bundle(Base):
    """A flow's folder as uploaded (``baton.bundles``): the compressed bytes, named by the SHA-256 of the tar they
    hold (migration 0011). Per tenant: another tenant's bundle of the same digest is another row, so that nobody
    learns from an upload's answer what other tenants hold. Written once, never changed."""

    __tablename__ = "bundles"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(Integer)  # uncompressed bytes of the files
    compressed_size: Mapped[int] = mapped_column(Integer)
    file_count: Mapped[int] = mapped_column(Integer)
    # {path: sha256 hex of the file}: registration checks a flow's source against it without inflating the bundle
    manifest: Mapped[dict[str, str]] = mapped_column(JSON, deferred=True)
    # Up to baton.bundles.MAX_COMPRESSED_BYTES: loaded only by the read of the bundle itself.
    data: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)
    created: Mapped[datetime] = mapped_column(default=utcnow)


class Project(Base):
    """Prefect 1's grouping of flows (issue 13, migration 0015): its GraphQL API creates and finds them by name."""

    __tablename__ = "projects"
    __table_args__ = (UniqueConstraint("tenant_id", "name", name="uq_projects_tenant_name"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    created: Mapped[datetime] = mapped_column(default=utcnow)


class Prefect1Flow(Base):
    """What Prefect 1's registration keeps beside a flow version of kind ``prefect1`` (issue 13, migration 0016)."""

    __tablename__ = "prefect1_flows"
    __table_args__ = (
        Index("ix_prefect1_flows_tenant_group", "tenant_id", "version_group_id"),
        Index("ix_prefect1_flows_project", "project_id"),
    )

    flow_id: Mapped[str] = mapped_column(ForeignKey("flows.id", ondelete="CASCADE"), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"))
    # Prefect 1's version group (the client may name it; else the flow's name in its project has one) and the flow
    # group of the same versions (flow_group_id: what its UI linked to).
    version_group_id: Mapped[str] = mapped_column(String(200))
    flow_group_id: Mapped[str] = mapped_column(String(36))
    core_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    archived: Mapped[bool] = mapped_column(Boolean, default=False)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # The flow as Prefect 1 serialized it, its tasks carrying the ids given at registration.
    serialized_flow: Mapped[dict[str, Any]] = mapped_column()


class Agent(Base):
    __tablename__ = "agents"
    __table_args__ = (UniqueConstraint("tenant_id", "name", "type", "labels_key", name="uq_agents_identity"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    type: Mapped[str] = mapped_column(String(50))
    labels: Mapped[list[str]] = mapped_column()
    labels_key: Mapped[str] = mapped_column(Text)  # sorted labels joined by ',': part of the agent's identity
    agent_config_id: Mapped[str | None] = mapped_column(String(200))
    # The key that registered it: a runner key may act only on runs its own agents claimed.
    api_key_id: Mapped[str | None] = mapped_column(String(36))
    version: Mapped[str | None] = mapped_column(String(50))
    created: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen: Mapped[datetime | None] = mapped_column()
    # Set by a warm stop (DELETE /api/agents/{id}); cleared by any later sign of life (migration 0008).
    deregistered_at: Mapped[datetime | None] = mapped_column()
    # The agent process that deregistered it (its ``instance``; None from an agent that does not name it): a claim
    # from that process after its stop claims nothing, a claim from any other undoes the mark (migration 0014).
    deregistered_by: Mapped[str | None] = mapped_column(String(64))


class FlowRun(Base):
    __tablename__ = "flow_runs"
    __table_args__ = (
        # The claim query: claimable runs of a tenant in start-time order.
        Index("ix_flow_runs_claim", "tenant_id", "state", "scheduled_start_time"),
        Index("ix_flow_runs_tenant_created", "tenant_id", "created"),
        # A retried create with the same key finds the first run instead of making a second one.
        Index("uq_flow_runs_idempotency", "tenant_id", "idempotency_key", unique=True),
        # A schedule's occurrence (flow, clock, time) becomes one run, whoever creates it (migration 0004).
        Index("uq_flow_runs_schedule_key", "tenant_id", "schedule_key", unique=True),
        # The web UI: a flow's newest runs are one index lookup per flow version (migration 0009), and the runs
        # list filtered by state walks its state's runs newest first (migration 0010).
        Index("ix_flow_runs_flow_created", "flow_id", "created"),
        Index("ix_flow_runs_tenant_state_created", "tenant_id", "state", "created"),
        # The lease and recovery services' scans, across tenants, every second (migration 0012).
        Index("ix_flow_runs_state_lease", "state", "lease_expires_at"),
        Index("ix_flow_runs_state_heartbeat", "state", "heartbeat_at"),
        # The runs list filtered by flow name walks that flow's runs newest first (migration 0013).
        Index("ix_flow_runs_tenant_flow_name_created", "tenant_id", "flow_name", "created"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    flow_id: Mapped[str] = mapped_column(ForeignKey("flows.id", ondelete="CASCADE"), index=True)
    # The flow's name, copied so that a list by flow name needs no join to ``flows`` (migration 0013): names never
    # change, and a scheduled run moved to a newer version keeps its name. Every writer sets it; nullable only
    # because SQLite cannot add a NOT NULL column to a large table without rebuilding it (see the migration).
    flow_name: Mapped[str | None] = mapped_column(String(200))
    name: Mapped[str] = mapped_column(String(200))
    parameters: Mapped[dict[str, Any]] = mapped_column()
    labels: Mapped[list[str]] = mapped_column()
    label_count: Mapped[int] = mapped_column(Integer, default=0)
    run_config: Mapped[dict[str, Any]] = mapped_column()
    scheduled_start_time: Mapped[datetime] = mapped_column()
    state: Mapped[str] = mapped_column(String(20))
    state_message: Mapped[str | None] = mapped_column(Text)
    # Bumped by every transition: updates are compare-and-set on it, so two writers can never both win.
    state_version: Mapped[int] = mapped_column(Integer, default=0)
    agent_id: Mapped[str | None] = mapped_column(ForeignKey("agents.id", ondelete="SET NULL"), index=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column()
    lease_returns: Mapped[int] = mapped_column(Integer, default=0)
    run_token_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    deployment: Mapped[dict[str, Any] | None] = mapped_column()
    heartbeat_at: Mapped[datetime | None] = mapped_column()
    start_time: Mapped[datetime | None] = mapped_column()
    end_time: Mapped[datetime | None] = mapped_column()
    created: Mapped[datetime] = mapped_column(default=utcnow)
    updated: Mapped[datetime] = mapped_column(default=utcnow)
    # The client's key for one logical create, and a hash of what was asked with it (a reuse must ask the same).
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    idempotency_hash: Mapped[str | None] = mapped_column(String(64))
    # Log lines stored for this run, and lines refused past the per-run quota (counted, never silently lost).
    log_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    logs_dropped: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Bytes of the stored lines (message and logger name, UTF-8): the quota bounds these too (migration 0003).
    log_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # Which attempt this is (flow-level retries), and the run that `runs retry` re-ran (migration 0005).
    attempt: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    retried_from: Mapped[str | None] = mapped_column(String(36))
    # Set on runs the scheduler (or a backfill) created: "<flow>/<clock>/<time>" (server/models/schedules.py).
    schedule_key: Mapped[str | None] = mapped_column(String(100))
    # "baton", or "prefect1": a run of a Prefect 1 flow, which Prefect 1's agents take, never Baton's (migration 0017).
    kind: Mapped[str] = mapped_column(String(16), server_default="baton")


class LabelLimit(Base):
    """`baton limits set LABEL N`: at most N runs carrying LABEL hold a slot at once in the tenant (migration 0006)."""

    __tablename__ = "label_limits"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    label: Mapped[str] = mapped_column(String(128), primary_key=True)
    max_concurrent_runs: Mapped[int] = mapped_column(Integer)
    created: Mapped[datetime] = mapped_column(default=utcnow)
    updated: Mapped[datetime] = mapped_column(default=utcnow)


class FlowScheduleState(Base):
    """Whether a flow's schedule is paused (no row: active). Per flow name, so it outlives versions."""

    __tablename__ = "flow_schedule_states"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    flow_name: Mapped[str] = mapped_column(String(200), primary_key=True)
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    updated: Mapped[datetime] = mapped_column(default=utcnow)


class ScheduleMark(Base):
    """Per clock, the time up to which the scheduler has created runs: the next window starts there (within the
    catch-up grace), so a restart neither skips recent times nor replays old ones."""

    __tablename__ = "schedule_marks"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    flow_name: Mapped[str] = mapped_column(String(200), primary_key=True)
    clock_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    mark: Mapped[datetime] = mapped_column()


class FlowRunLabel(Base):
    """One row per run label, so the label rule is a portable NOT EXISTS in the claim query.

    ``tenant_id`` and ``created`` are copies of the run's (neither ever changes), so that the runs list filtered
    by a label walks (tenant, label, created) newest first instead of testing every run of the tenant (migration
    0013). Every writer sets them; nullable for the same reason as ``FlowRun.flow_name``.
    """

    __tablename__ = "flow_run_labels"
    __table_args__ = (Index("ix_flow_run_labels_tenant_label_created", "tenant_id", "label", "created"),)

    flow_run_id: Mapped[str] = mapped_column(ForeignKey("flow_runs.id", ondelete="CASCADE"), primary_key=True)
    label: Mapped[str] = mapped_column(String(128), primary_key=True)
    tenant_id: Mapped[str | None] = mapped_column(String(36))
    created: Mapped[datetime | None] = mapped_column()


class FlowRunState(Base):
    __tablename__ = "flow_run_states"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    flow_run_id: Mapped[str] = mapped_column(ForeignKey("flow_runs.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(20))
    message: Mapped[str | None] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None] = mapped_column()
    timestamp: Mapped[datetime] = mapped_column(default=utcnow)


class TaskRun(Base):
    __tablename__ = "task_runs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    flow_run_id: Mapped[str] = mapped_column(ForeignKey("flow_runs.id", ondelete="CASCADE"), index=True)
    task_name: Mapped[str] = mapped_column(String(500))
    state: Mapped[str] = mapped_column(String(20))
    message: Mapped[str | None] = mapped_column(Text)
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    start_time: Mapped[datetime | None] = mapped_column()
    end_time: Mapped[datetime | None] = mapped_column()
    created: Mapped[datetime] = mapped_column(default=utcnow)


class Prefect1FlowRun(Base):
    """Prefect 1's view of a run of kind ``prefect1`` (issue 13, migration 0017); see ``models.prefect1_runs``."""

    __tablename__ = "prefect1_flow_runs"

    flow_run_id: Mapped[str] = mapped_column(ForeignKey("flow_runs.id", ondelete="CASCADE"), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    # Prefect 1's version of the run, bumped by each state its runners set: their version lock compares with it.
    version: Mapped[int] = mapped_column(Integer)
    # The run's ``state_version`` when ``serialized_state`` was set: a Baton change since (recovery, a cancel
    # through REST) makes the state served Baton's, not this one.
    state_version: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(32))  # the serialized state's type, for filters
    serialized_state: Mapped[dict[str, Any]] = mapped_column()
    state_start_time: Mapped[datetime | None] = mapped_column()
    context: Mapped[dict[str, Any]] = mapped_column()
    run_config: Mapped[dict[str, Any] | None] = mapped_column()


class Prefect1TaskRun(Base):
    """Prefect 1's view of a task run of a ``prefect1`` run (migration 0017): its task, map index and state."""

    __tablename__ = "prefect1_task_runs"
    __table_args__ = (UniqueConstraint("flow_run_id", "task_id", "map_index", name="uq_prefect1_task_runs_identity"),)

    task_run_id: Mapped[str] = mapped_column(ForeignKey("task_runs.id", ondelete="CASCADE"), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    flow_run_id: Mapped[str] = mapped_column(ForeignKey("flow_runs.id", ondelete="CASCADE"))
    task_id: Mapped[str] = mapped_column(String(36))
    task_slug: Mapped[str] = mapped_column(String(500))
    map_index: Mapped[int] = mapped_column(Integer)
    version: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(32))  # the serialized state's type, for filters
    serialized_state: Mapped[dict[str, Any]] = mapped_column()
    state_start_time: Mapped[datetime | None] = mapped_column()
    heartbeat: Mapped[datetime | None] = mapped_column()


class Prefect1AgentConfig(Base):
    """A Prefect 1 agent configuration (migration 0018): settings an agent started with its id reads."""

    __tablename__ = "prefect1_agent_configs"
    __table_args__ = (Index("ix_prefect1_agent_configs_tenant", "tenant_id"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str | None] = mapped_column(String(200))
    settings: Mapped[dict[str, Any]] = mapped_column()
    created: Mapped[datetime] = mapped_column(default=utcnow)


class Log(Base):
    __tablename__ = "logs"
    __table_args__ = (
        # A retried batch carries the same keys: the second copy is ignored, never stored twice.
        UniqueConstraint("flow_run_id", "key", name="uq_logs_run_key"),
        Index("ix_logs_run_id", "flow_run_id", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    flow_run_id: Mapped[str] = mapped_column(ForeignKey("flow_runs.id", ondelete="CASCADE"))
    task_run_id: Mapped[str | None] = mapped_column(String(36))
    key: Mapped[str] = mapped_column(String(64))
    timestamp: Mapped[datetime] = mapped_column()
    level: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(500))
    message: Mapped[str] = mapped_column(Text)


class NotificationRule(Base):
    """A tenant's rule: POST these events to this webhook (docs/design.md, Notifications)."""

    __tablename__ = "notification_rules"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str | None] = mapped_column(String(200))
    events: Mapped[list[str]] = mapped_column()
    # The events joined as ",a,b,": the periodic service finds rules on `late` / `agent-lost` with a portable LIKE.
    events_key: Mapped[str] = mapped_column(String(1000))
    # A secret (Slack's URLs are credentials): never answered back in full (shaping redacts it).
    webhook_url: Mapped[str] = mapped_column(String(2048))
    flow_name: Mapped[str | None] = mapped_column(String(200))
    late_after_seconds: Mapped[int] = mapped_column(Integer, default=60)
    created: Mapped[datetime] = mapped_column(default=utcnow)


class NotificationDelivery(Base):
    """The outbox: one event for one rule, written in the transaction that caused it, then sent by the service."""

    __tablename__ = "notification_deliveries"
    __table_args__ = (
        # An event that must fire once (a run late, an agent lost since a given last_seen) has a key: a second
        # detection (another replica, the next tick) cannot insert it again.
        UniqueConstraint("rule_id", "once_key", name="uq_notification_deliveries_once"),
        # The sender's query: pending deliveries that are due.
        Index("ix_notification_deliveries_due", "status", "next_attempt_at"),
        Index("ix_notification_deliveries_rule", "rule_id", "created"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    rule_id: Mapped[str] = mapped_column(ForeignKey("notification_rules.id", ondelete="CASCADE"))
    event: Mapped[str] = mapped_column(String(40))
    once_key: Mapped[str | None] = mapped_column(String(200))
    payload: Mapped[dict[str, Any]] = mapped_column()
    status: Mapped[str] = mapped_column(String(20))  # pending | delivered | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column()
    # A lease: the replica whose conditional UPDATE set these sends it; nobody else until the lease runs out.
    claimed_until: Mapped[datetime | None] = mapped_column()
    claimed_by: Mapped[str | None] = mapped_column(String(36))
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(String(500))
    delivered_at: Mapped[datetime | None] = mapped_column()
    created: Mapped[datetime] = mapped_column(default=utcnow)


class NotificationAttempt(Base):
    """One POST of a delivery: its answer's status code or the error, and how long it took."""

    __tablename__ = "notification_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(ForeignKey("notification_deliveries.id", ondelete="CASCADE"), index=True)
    started: Mapped[datetime] = mapped_column()
    duration_ms: Mapped[int] = mapped_column(Integer)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(String(500))
    # At most a short excerpt of the answer, for the operator reading `baton notify list`.
    response_excerpt: Mapped[str | None] = mapped_column(String(200))


class UiSession(Base):
    """A signed-in browser (the web UI): the cookie's secret is stored as its sha256, like API keys.

    It acts with its API key's role and tenant, and only while that key is not revoked (``ui_sessions.resolve``
    joins the key), so revoking a key ends its sessions on every replica at once.
    """

    __tablename__ = "ui_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    api_key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"), index=True)
    # The synchronizer token every form and htmx request of this session must send back (CSRF).
    csrf_token: Mapped[str] = mapped_column(String(64))
    created: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)
    last_seen: Mapped[datetime] = mapped_column(default=utcnow)


class FlowRunCount(Base):
    """How many runs of a flow version, created in an hour (UTC), are in a state now: the dashboard's figures
    without counting rows (``models/run_counts.py``).

    Database triggers on ``flow_runs`` (migration 0010) write every change as rows of ``FlowRunCountDelta``, whatever
    path made it (the API, the scheduler, recovery, a bulk update, a hand-written statement); the run-counts
    service folds them in here. Readers add the deltas not folded yet, so a figure is never behind.
    """

    __tablename__ = "flow_run_counts"
    # The key leads with the flow (a flow's day is one range); the index finds a state's flows (the failing ones).
    # SQLite: rows stored in key order (no lookup per row).
    __table_args__ = (
        Index("ix_flow_run_counts_state", "tenant_id", "state", "hour"),
        {"sqlite_with_rowid": False},
    )

    tenant_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    flow_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    # Whole hours since 1970-01-01 UTC (``run_counts.hour_number``): the same number on both databases.
    hour: Mapped[int] = mapped_column(Integer, primary_key=True)
    state: Mapped[str] = mapped_column(String(20), primary_key=True)
    count: Mapped[int] = mapped_column()


class FlowRunHourCount(Base):
    """``FlowRunCount`` summed over flows: the dashboard's chart reads a few rows an hour, not one per flow."""

    __tablename__ = "flow_run_hour_counts"
    __table_args__ = {"sqlite_with_rowid": False}

    tenant_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    hour: Mapped[int] = mapped_column(Integer, primary_key=True)
    state: Mapped[str] = mapped_column(String(20), primary_key=True)
    count: Mapped[int] = mapped_column()


class FlowRunCountDelta(Base):
    """One change to a ``FlowRunCount`` (+1 or -1), appended by the triggers: inserting never waits on another
    transaction's lock, where updating shared counter rows from every transition would serialise them (and
    deadlock on PostgreSQL when two bulk updates meet the counters in different orders)."""

    __tablename__ = "flow_run_count_deltas"
    # Readers look up a tenant's pending deltas by hour: with rows inserted and deleted all day, a scan would read
    # every page not yet vacuumed on PostgreSQL (~6 ms after a burst, with the table empty).
    __table_args__ = (Index("ix_flow_run_count_deltas_tenant_hour", "tenant_id", "hour"),)

    # 64-bit on PostgreSQL (every transition appends two rows); SQLite's INTEGER PRIMARY KEY is its 64-bit rowid.
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(String(36))
    hour: Mapped[int] = mapped_column(Integer)
    flow_id: Mapped[str] = mapped_column(String(36))
    state: Mapped[str] = mapped_column(String(20))
    delta: Mapped[int] = mapped_column()
