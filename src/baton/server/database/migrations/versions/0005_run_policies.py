"""run policies: flow retries, attempts, late-run policy (issue 9)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("flows") as batch:
        batch.add_column(sa.Column("retries", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("retry_delay_seconds", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("max_lateness_seconds", sa.Integer(), nullable=True))
    with op.batch_alter_table("flow_runs") as batch:
        batch.add_column(sa.Column("attempt", sa.Integer(), nullable=False, server_default="1"))
        batch.add_column(sa.Column("retried_from", sa.String(length=36), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("flow_runs") as batch:
        batch.drop_column("retried_from")
        batch.drop_column("attempt")
    with op.batch_alter_table("flows") as batch:
        batch.drop_column("max_lateness_seconds")
        batch.drop_column("retry_delay_seconds")
        batch.drop_column("retries")
