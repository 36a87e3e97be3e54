"""ui sessions: signed-in browsers of the web UI, and the indexes of its pages (issue 10)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 16:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ui_sessions",
        sa.Column("id_hash", sa.String(64), primary_key=True),
        sa.Column("tenant_id", sa.String(36), sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
        sa.Column("api_key_id", sa.String(36), sa.ForeignKey("api_keys.id", ondelete="CASCADE"), nullable=False),
        sa.Column("csrf_token", sa.String(64), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_ui_sessions_tenant_id", "ui_sessions", ["tenant_id"])
    op.create_index("ix_ui_sessions_api_key_id", "ui_sessions", ["api_key_id"])
    op.create_index("ix_ui_sessions_expires_at", "ui_sessions", ["expires_at"])
    # The dashboard's counts over a day of runs (index only) and each flow's newest run.
    op.create_index("ix_flow_runs_tenant_created_state", "flow_runs", ["tenant_id", "created", "state", "flow_id"])
    op.create_index("ix_flow_runs_flow_created", "flow_runs", ["flow_id", "created"])


def downgrade() -> None:
    op.drop_index("ix_flow_runs_flow_created", "flow_runs")
    op.drop_index("ix_flow_runs_tenant_created_state", "flow_runs")
    op.drop_table("ui_sessions")
