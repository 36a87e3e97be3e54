"""projects: Prefect 1's grouping of flows (issue 13)

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-05 11:30:00

Prefect 1's client registers every flow into a project (``prefect create project``, ``flow.register(project_name=)``)
and finds projects by name. A project belongs to one tenant and its name is unique there.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "projects",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("tenant_id", sa.String(36), sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("tenant_id", "name", name="uq_projects_tenant_name"),
    )


def downgrade() -> None:
    op.drop_table("projects")
