"""agent configurations of Prefect 1 (issue 13): what `prefect agent ... --agent-config-id ID` reads

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-05 22:05:00

Prefect Server 1 kept named agent configurations (a JSON object of settings per tenant) that an agent reads at its
start when given ``--agent-config-id``. ``prefect1_agent_configs`` keeps them, per tenant.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "prefect1_agent_configs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("tenant_id", sa.String(36), sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.String(200), nullable=True),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_prefect1_agent_configs_tenant", "prefect1_agent_configs", ["tenant_id"])


def downgrade() -> None:
    op.drop_index("ix_prefect1_agent_configs_tenant", table_name="prefect1_agent_configs")
    op.drop_table("prefect1_agent_configs")
