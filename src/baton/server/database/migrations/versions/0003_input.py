"""per-run log bytes: the log quota bounds bytes as well as lines (issue 8, item 7)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 08:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("flow_runs") as batch:
        batch.add_column(sa.Column("log_bytes", sa.BigInteger(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("flow_runs") as batch:
        batch.drop_column("log_bytes")
