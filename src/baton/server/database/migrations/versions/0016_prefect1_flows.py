"""flows of Prefect 1 (issue 13): a kind on every flow, and what Prefect 1's registration keeps beside a flow

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-05 11:40:00

A flow registered through the GraphQL API by Prefect 1's client is a Baton flow (its name and versions, its
parameters and labels) of kind ``prefect1``: its code is run by Prefect 1's agents and flow runner, never by
Baton's. ``prefect1_flows`` keeps, per version, the project, Prefect 1's version group and flow group, the core
version, whether the version is archived, the registration's idempotency key and the serialized flow (its tasks
with their ids, and its edges).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("flows") as batch:
        batch.add_column(sa.Column("kind", sa.String(16), nullable=False, server_default="baton"))
    op.create_table(
        "prefect1_flows",
        sa.Column("flow_id", sa.String(36), sa.ForeignKey("flows.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("tenant_id", sa.String(36), sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
        sa.Column("project_id", sa.String(36), sa.ForeignKey("projects.id"), nullable=False),
        sa.Column("version_group_id", sa.String(200), nullable=False),
        sa.Column("flow_group_id", sa.String(36), nullable=False),
        sa.Column("core_version", sa.String(64), nullable=True),
        sa.Column("archived", sa.Boolean(), nullable=False),
        sa.Column("idempotency_key", sa.String(200), nullable=True),
        sa.Column("serialized_flow", sa.JSON(), nullable=False),
    )
    op.create_index("ix_prefect1_flows_tenant_group", "prefect1_flows", ["tenant_id", "version_group_id"])
    op.create_index("ix_prefect1_flows_project", "prefect1_flows", ["project_id"])


def downgrade() -> None:
    op.drop_index("ix_prefect1_flows_project", table_name="prefect1_flows")
    op.drop_index("ix_prefect1_flows_tenant_group", table_name="prefect1_flows")
    op.drop_table("prefect1_flows")
    with op.batch_alter_table("flows") as batch:
        batch.drop_column("kind")
