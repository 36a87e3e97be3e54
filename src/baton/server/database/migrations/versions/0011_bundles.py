"""bundles: flows' folders, uploaded once per tenant and named by their digest (issue 11)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-09 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The key leads with the tenant: every read is (tenant, digest), and it serves the tenant's foreign key too.
    op.create_table(
        "bundles",
        sa.Column("tenant_id", sa.String(36), sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("compressed_size", sa.Integer(), nullable=False),
        sa.Column("file_count", sa.Integer(), nullable=False),
        # {path: sha256 of the file}: what registration compares a flow's source with, without inflating the bundle
        sa.Column("manifest", sa.JSON(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "digest"),
    )


def downgrade() -> None:
    op.drop_table("bundles")
