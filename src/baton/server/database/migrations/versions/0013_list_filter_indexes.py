"""list filters: the runs list by flow name and by label walks an index of its own, newest first (issue 12)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04 10:00:00

``GET /api/flow_runs`` lists newest first. Filtered by flow name, it walked the tenant's runs newest first
(``ix_flow_runs_tenant_created``) and joined ``flows`` to test each run's name; filtered by label, it tested each
run with an EXISTS on ``flow_run_labels``, whose only index is its key (flow_run_id, label). For a flow or a label
that few runs have, that is every run of the tenant: at 1,000,000 runs (``bench/scale.py``) the list of a rare flow
was 220x slower than on an empty database on SQLite and 84x on PostgreSQL, the list of a rare label 412x and 10x.

The fix copies what the ordered walk needs next to what it filters on:

* ``flow_runs.flow_name``, the flow's name (names never change; a scheduled run moved to a newer version keeps its
  name), indexed (tenant_id, flow_name, created);
* ``flow_run_labels.tenant_id`` and ``flow_run_labels.created``, the run's (neither ever changes), indexed
  (tenant_id, label, created): the list by label is driven from the labels, in that index's order.

Existing rows are filled by one set-based UPDATE per table, before the indexes are built (building an index once
is cheaper than updating it 3,000,000 times). Neither UPDATE touches a column the run-count triggers (0010) watch.
At 200,000 runs and 400,000 label rows on 2 busy cores: 5 s on SQLite (rows rewritten in place), 30-40 s on
PostgreSQL (a new version of every row, with an entry in each of flow_runs' 12 indexes); about 5x that at 1M runs.
After it, at 300,000 runs (``bench/scale.py``), both lists were within 1.21x of an empty database on both databases.

The new columns are nullable, in the ORM as here. SQLite adds a NOT NULL column only with a non-NULL default, or by
rebuilding the table (alembic's batch mode: a copy of every row and every index at 1,000,000 runs, and a rebuild
drops the run-count triggers). A default would be no safer than NULL: a writer that forgot the column would store
the default, not fail, and a run would still be missing from the filtered lists. Every writer sets the columns
(``create_flow_run``, the scheduler, the move of a scheduled run to a new version), and tests check each of them;
the schema stays one schema on both databases (``tests/server/test_migrations.py``).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

# PostgreSQL joins once (UPDATE ... FROM: a hash or merge join); SQLite looks each row's run up by its key, which
# also runs on SQLite older than 3.33 (no UPDATE ... FROM there).
_BACKFILL = {
    "postgresql": [
        "UPDATE flow_runs SET flow_name = flows.name FROM flows WHERE flows.id = flow_runs.flow_id",
        "UPDATE flow_run_labels SET tenant_id = flow_runs.tenant_id, created = flow_runs.created "
        "FROM flow_runs WHERE flow_runs.id = flow_run_labels.flow_run_id",
    ],
    "sqlite": [
        "UPDATE flow_runs SET flow_name = (SELECT flows.name FROM flows WHERE flows.id = flow_runs.flow_id)",
        "UPDATE flow_run_labels SET (tenant_id, created) = "
        "(SELECT flow_runs.tenant_id, flow_runs.created FROM flow_runs WHERE flow_runs.id = flow_run_labels.flow_run_id)",
    ],
}


def upgrade() -> None:
    op.add_column("flow_runs", sa.Column("flow_name", sa.String(length=200), nullable=True))
    op.add_column("flow_run_labels", sa.Column("tenant_id", sa.String(length=36), nullable=True))
    op.add_column("flow_run_labels", sa.Column("created", sa.DateTime(timezone=True), nullable=True))
    for statement in _BACKFILL[op.get_bind().dialect.name]:
        op.execute(statement)
    op.create_index("ix_flow_runs_tenant_flow_name_created", "flow_runs", ["tenant_id", "flow_name", "created"])
    op.create_index("ix_flow_run_labels_tenant_label_created", "flow_run_labels", ["tenant_id", "label", "created"])


def downgrade() -> None:
    op.drop_index("ix_flow_run_labels_tenant_label_created", table_name="flow_run_labels")
    op.drop_index("ix_flow_runs_tenant_flow_name_created", table_name="flow_runs")
    # Plain ALTER TABLE ... DROP COLUMN (SQLite 3.35+): batch mode would rebuild flow_runs and lose its triggers.
    op.drop_column("flow_run_labels", "created")
    op.drop_column("flow_run_labels", "tenant_id")
    op.drop_column("flow_runs", "flow_name")
