"""operations: agent deregistration and staleness (issue 9)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # When the agent deregistered (a warm stop): kept, not deleted, so its runs keep naming it and a restart under
    # the same identity gets the same id back. Any later sign of life (register, claim, heartbeat) clears it.
    with op.batch_alter_table("agents") as batch:
        batch.add_column(sa.Column("deregistered_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("agents") as batch:
        batch.drop_column("deregistered_at")
