"""concurrency limits per flow and per label (issue 9)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # @flow(max_concurrent_runs=N): the latest version's value limits all runs of the flow's name.
    with op.batch_alter_table("flows") as batch:
        batch.add_column(sa.Column("max_concurrent_runs", sa.Integer(), nullable=True))
    # `baton limits set LABEL N`: one row per limited label of a tenant.
    op.create_table(
        "label_limits",
        sa.Column("tenant_id", sa.String(36), sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
        sa.Column("label", sa.String(128), nullable=False),
        sa.Column("max_concurrent_runs", sa.Integer(), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "label"),
    )


def downgrade() -> None:
    op.drop_table("label_limits")
    with op.batch_alter_table("flows") as batch:
        batch.drop_column("max_concurrent_runs")
