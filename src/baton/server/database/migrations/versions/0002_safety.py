"""safe by default: idempotent run creation, per-run log accounting, flow timeouts

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 08:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # batch_alter_table: SQLite cannot add columns with constraints in place; on PostgreSQL it is plain ALTERs.
    with op.batch_alter_table("flow_runs") as batch:
        batch.add_column(sa.Column("idempotency_key", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("idempotency_hash", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("log_count", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("logs_dropped", sa.Integer(), nullable=False, server_default="0"))
    with op.batch_alter_table("flows") as batch:
        batch.add_column(sa.Column("timeout_seconds", sa.Integer(), nullable=True))
    op.create_index("uq_flow_runs_idempotency", "flow_runs", ["tenant_id", "idempotency_key"], unique=True)


def downgrade() -> None:
    op.drop_index("uq_flow_runs_idempotency", table_name="flow_runs")
    with op.batch_alter_table("flows") as batch:
        batch.drop_column("timeout_seconds")
    with op.batch_alter_table("flow_runs") as batch:
        batch.drop_column("logs_dropped")
        batch.drop_column("log_count")
        batch.drop_column("idempotency_hash")
        batch.drop_column("idempotency_key")
