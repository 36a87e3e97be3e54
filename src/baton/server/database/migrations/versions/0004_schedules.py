"""schedules: clocks, scheduled-run keys and schedule state (issue 9)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("flow_runs") as batch:
        batch.add_column(sa.Column("schedule_key", sa.String(length=100), nullable=True))
        batch.create_index("uq_flow_runs_schedule_key", ["tenant_id", "schedule_key"], unique=True)
    op.create_table(
        "flow_schedule_states",
        sa.Column("tenant_id", sa.String(length=36), sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
        sa.Column("flow_name", sa.String(length=200), nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("updated", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "flow_name"),
    )
    op.create_table(
        "schedule_marks",
        sa.Column("tenant_id", sa.String(length=36), sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
        sa.Column("flow_name", sa.String(length=200), nullable=False),
        sa.Column("clock_id", sa.String(length=32), nullable=False),
        sa.Column("mark", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "flow_name", "clock_id"),
    )


def downgrade() -> None:
    op.drop_table("schedule_marks")
    op.drop_table("flow_schedule_states")
    with op.batch_alter_table("flow_runs") as batch:
        batch.drop_index("uq_flow_runs_schedule_key")
        batch.drop_column("schedule_key")
