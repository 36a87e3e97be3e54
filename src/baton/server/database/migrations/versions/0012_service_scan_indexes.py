"""service scans: the lease and recovery services find their runs by index, not by reading every run (issue 12)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03 15:45:00

Every second the lease service looks for Pending runs whose lease ran out, and the recovery service for Submitted,
Running and Cancelling runs not heard from. Neither filters by tenant, and every index holding ``state`` led with
the tenant, so both read the whole table: at 1,000,000 finished runs (``bench/scale.py``) each scan took ~0.5 s on
SQLite, inside the write lock, an idle server used 59% of a core, and creates and claims waited seconds at p90.
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_flow_runs_state_lease", "flow_runs", ["state", "lease_expires_at"])
    op.create_index("ix_flow_runs_state_heartbeat", "flow_runs", ["state", "heartbeat_at"])


def downgrade() -> None:
    op.drop_index("ix_flow_runs_state_heartbeat", table_name="flow_runs")
    op.drop_index("ix_flow_runs_state_lease", table_name="flow_runs")
