"""run counts: runs by (tenant, creation hour, flow version, state), kept by triggers (issue 10's dashboard)

Counting a day of runs row by row cost the dashboard ~280 ms at 100k runs. Triggers on ``flow_runs`` append a
+1/-1 row to ``flow_run_count_deltas`` for every insert, delete, and change of state or flow version, whichever
code path (or hand-written statement) made it; the run-counts service folds them into ``flow_run_counts`` and,
summed over flows, ``flow_run_hour_counts`` (the dashboard's chart).
Existing runs are counted here, once.

The runs list filtered by state gets ``(tenant_id, state, created)``; the dashboard's covering index from 0009 is
no longer read and is dropped (each index on ``state`` costs every transition a write).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 20:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

# A run's creation hour as whole hours since 1970-01-01 UTC (``models/run_counts.hour_number``) from a row
# reference (NEW or OLD), per database. SQLite stores times as UTC text 'YYYY-MM-DD HH:MM:SS.ffffff'
# (orm.UTCDateTime), which its strftime reads, from the seconds only: given the fraction it rounds to milliseconds,
# and 12:59:59.9996 would land in 13:00. Integer division floors (the times are after 1970).
_SQLITE_HOUR = "(CAST(strftime('%s', substr({row}.created, 1, 19)) AS INTEGER) / 3600)"
_POSTGRES_HOUR = "CAST(floor(extract(epoch FROM {row}.created) / 3600) AS INTEGER)"
_DELTA = "INSERT INTO flow_run_count_deltas (tenant_id, hour, flow_id, state, delta) VALUES ({values})"
# What a count is keyed by; Baton itself only ever changes state and flow_id (re-registration moves scheduled runs
# to the new version), but a hand-written UPDATE of the others must keep the counts right too.
_KEYED = ("state", "flow_id", "created", "tenant_id")
_CHANGED = " OR ".join(f"OLD.{column} IS DISTINCT FROM NEW.{column}" for column in _KEYED)


def _delta(hour: str, row: str, sign: str) -> str:
    values = f"{row}.tenant_id, {hour.format(row=row)}, {row}.flow_id, {row}.state, {sign}1"
    return _DELTA.format(values=values)


def _sqlite_triggers() -> list[str]:
    hour = _SQLITE_HOUR
    changed = _CHANGED.replace("IS DISTINCT FROM", "IS NOT")
    return [
        f"CREATE TRIGGER trg_flow_runs_count_insert AFTER INSERT ON flow_runs BEGIN {_delta(hour, 'NEW', '+')}; END",
        f"CREATE TRIGGER trg_flow_runs_count_delete AFTER DELETE ON flow_runs BEGIN {_delta(hour, 'OLD', '-')}; END",
        f"CREATE TRIGGER trg_flow_runs_count_update AFTER UPDATE OF {', '.join(_KEYED)} ON flow_runs WHEN {changed} "
        f"BEGIN {_delta(hour, 'OLD', '-')}; {_delta(hour, 'NEW', '+')}; END",
    ]


def _postgres_triggers() -> list[str]:
    hour = _POSTGRES_HOUR
    function = f"""
        CREATE FUNCTION baton_count_flow_run() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP IN ('UPDATE', 'DELETE') THEN
                {_delta(hour, "OLD", "-")};
            END IF;
            IF TG_OP IN ('UPDATE', 'INSERT') THEN
                {_delta(hour, "NEW", "+")};
            END IF;
            RETURN NULL;
        END
        $$"""
    return [
        function,
        "CREATE TRIGGER trg_flow_runs_count_insert_delete AFTER INSERT OR DELETE ON flow_runs "
        "FOR EACH ROW EXECUTE FUNCTION baton_count_flow_run()",
        f"CREATE TRIGGER trg_flow_runs_count_update AFTER UPDATE OF {', '.join(_KEYED)} ON flow_runs "
        f"FOR EACH ROW WHEN ({_CHANGED}) EXECUTE FUNCTION baton_count_flow_run()",
    ]


def upgrade() -> None:
    op.create_table(
        "flow_run_counts",
        sa.Column("tenant_id", sa.String(36), primary_key=True),
        sa.Column("flow_id", sa.String(36), primary_key=True),
        sa.Column("hour", sa.Integer(), primary_key=True),
        sa.Column("state", sa.String(20), primary_key=True),
        sa.Column("count", sa.Integer(), nullable=False),
        sqlite_with_rowid=False,  # rows in key order: a flow's hours are one contiguous read
    )
    op.create_index("ix_flow_run_counts_state", "flow_run_counts", ["tenant_id", "state", "hour"])
    op.create_table(
        "flow_run_hour_counts",
        sa.Column("tenant_id", sa.String(36), primary_key=True),
        sa.Column("hour", sa.Integer(), primary_key=True),
        sa.Column("state", sa.String(20), primary_key=True),
        sa.Column("count", sa.Integer(), nullable=False),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "flow_run_count_deltas",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("tenant_id", sa.String(36), nullable=False),
        sa.Column("hour", sa.Integer(), nullable=False),
        sa.Column("flow_id", sa.String(36), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("delta", sa.Integer(), nullable=False),
    )
    op.create_index("ix_flow_run_count_deltas_tenant_hour", "flow_run_count_deltas", ["tenant_id", "hour"])
    postgres = op.get_bind().dialect.name == "postgresql"
    hour = (_POSTGRES_HOUR if postgres else _SQLITE_HOUR).format(row="flow_runs")
    # No run may change between this count and the triggers: on PostgreSQL the lock (held to the migration's
    # commit) keeps writers out; on SQLite the migration's transaction is the only writer already.
    if postgres:
        op.execute("LOCK TABLE flow_runs IN SHARE ROW EXCLUSIVE MODE")
    grouped = f"tenant_id, {hour}, flow_id, state"  # {hour}: one of the two constant expressions above
    count = f"SELECT {grouped}, count(*) FROM flow_runs GROUP BY {grouped}"  # noqa: S608
    op.execute(f"INSERT INTO flow_run_counts (tenant_id, hour, flow_id, state, count) {count}")  # by name
    op.execute(
        "INSERT INTO flow_run_hour_counts (tenant_id, hour, state, count) "
        "SELECT tenant_id, hour, state, sum(count) FROM flow_run_counts GROUP BY tenant_id, hour, state"
    )
    for statement in _postgres_triggers() if postgres else _sqlite_triggers():
        op.execute(statement)
    op.drop_index("ix_flow_runs_tenant_created_state", "flow_runs")
    op.create_index("ix_flow_runs_tenant_state_created", "flow_runs", ["tenant_id", "state", "created"])


def downgrade() -> None:
    op.drop_index("ix_flow_runs_tenant_state_created", "flow_runs")
    op.create_index("ix_flow_runs_tenant_created_state", "flow_runs", ["tenant_id", "created", "state", "flow_id"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER trg_flow_runs_count_update ON flow_runs")
        op.execute("DROP TRIGGER trg_flow_runs_count_insert_delete ON flow_runs")
        op.execute("DROP FUNCTION baton_count_flow_run()")
    else:
        for name in ("insert", "delete", "update"):
            op.execute(f"DROP TRIGGER trg_flow_runs_count_{name}")
    op.drop_table("flow_run_count_deltas")
    op.drop_table("flow_run_hour_counts")
    op.drop_table("flow_run_counts")
