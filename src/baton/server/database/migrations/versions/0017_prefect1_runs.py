"""runs of Prefect 1 flows (issue 13): a kind on every flow run, and what Prefect 1's runners keep beside runs

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-05 21:20:00

A run of a Prefect 1 flow is a Baton flow run (its name, parameters, labels, Baton state and history, its task
runs and logs) of kind ``prefect1``: Prefect 1's agents take it from the queue, never Baton's. Beside it,
``prefect1_flow_runs`` keeps Prefect 1's view: the serialized state its runners last set, the version that
locks their state changes, its context and run config, and the time its state starts; ``prefect1_task_runs`` the
same per task run, with the task's id and map index (one task run per (flow run, task, map index)).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A constant default: neither SQLite nor PostgreSQL (11 and later) rewrites the table to add it.
    with op.batch_alter_table("flow_runs") as batch:
        batch.add_column(sa.Column("kind", sa.String(16), nullable=False, server_default="baton"))
    op.create_table(
        "prefect1_flow_runs",
        sa.Column("flow_run_id", sa.String(36), sa.ForeignKey("flow_runs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("tenant_id", sa.String(36), sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("state_version", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("serialized_state", sa.JSON(), nullable=False),
        sa.Column("state_start_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("context", sa.JSON(), nullable=False),
        sa.Column("run_config", sa.JSON(), nullable=True),
    )
    op.create_table(
        "prefect1_task_runs",
        sa.Column("task_run_id", sa.String(36), sa.ForeignKey("task_runs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("tenant_id", sa.String(36), sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
        sa.Column("flow_run_id", sa.String(36), sa.ForeignKey("flow_runs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("task_id", sa.String(36), nullable=False),
        sa.Column("task_slug", sa.String(500), nullable=False),
        sa.Column("map_index", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("serialized_state", sa.JSON(), nullable=False),
        sa.Column("state_start_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("heartbeat", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("flow_run_id", "task_id", "map_index", name="uq_prefect1_task_runs_identity"),
    )


def downgrade() -> None:
    op.drop_table("prefect1_task_runs")
    op.drop_table("prefect1_flow_runs")
    with op.batch_alter_table("flow_runs") as batch:
        batch.drop_column("kind")
