"""Concurrency limits: per flow (``@flow(max_concurrent_runs=N)``) and per label of a tenant (`baton limits set`).

A run *holds a slot* while it is Pending, Submitted, Running or Cancelling: claimed and not ended. Slots are counted
from the runs' states, never kept in a counter, so every way a run ends (Success, Failed, Cancelled, a crashed
process, a lost agent, an expired lease) frees its slot by ending the state, and nothing can leak.

A flow's limit covers every version of its name in the tenant; the latest version's value rules. A label's limit
covers every run that carries the label; a run with several limited labels (and a limited flow) needs a free slot
in each.

Claims (``claims.claim_runs``) ask a :class:`ClaimGate` before moving a run to Pending. The gate leaves out of the
candidate query the runs whose limit it already knows is full (so a full flow never blocks other flows behind it),
and re-counts the slots of each limited candidate before admitting it. Two claims must never both take the last
slot: on PostgreSQL the gate first takes a transaction-scoped advisory lock per limit key (tenant, flow name) /
(tenant, label), so claims touching one key count one after the other; on SQLite the claim's transaction already
holds the database's single write lock (its first statement updates the agent's ``last_seen``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    ColumnElement,
    CompoundSelect,
    and_,
    bindparam,
    exists,
    func,
    literal,
    null,
    select,
    union_all,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from baton.labels import validate_label
from baton.schemas.actions import LabelLimitSet
from baton.schemas.responses import LabelLimitRead
from baton.schemas.states import StateName
from baton.server.database.orm import Flow, FlowRun, FlowRunLabel, LabelLimit, utcnow
from baton.server.models import flows
from baton.server.models.errors import Conflict, ObjectNotFound

# The states in which a run holds a slot of its flow's and its labels' limits.
SLOT_STATES = (StateName.PENDING, StateName.SUBMITTED, StateName.RUNNING, StateName.CANCELLING)
_SLOT_STATES = [state.value for state in SLOT_STATES]
# Every claim reads the tenant's label limits: their number is bounded (409 past it).
MAX_LABEL_LIMITS_PER_TENANT = 1000
# How many of the runs holding a full limit's slots `explain` names.
_SHOWN_IDS = 5

FLOW = "flow"
LABEL = "label"


@dataclass(frozen=True, order=True)
class LimitKey:
    """One limit of a tenant: a flow name or a label."""

    kind: str  # FLOW or LABEL
    name: str

    def lock_id(self, tenant_id: str) -> int:
        """A signed 64-bit id for ``pg_advisory_xact_lock`` (a collision only makes two keys share a lock)."""
        digest = hashlib.sha256(f"baton-limit\0{tenant_id}\0{self.kind}\0{self.name}".encode()).digest()
        return int.from_bytes(digest[:8], "big", signed=True)

    def describe(self, limit: int, active: list[str]) -> str:
        ids = ", ".join(active[:_SHOWN_IDS]) + (", …" if len(active) > _SHOWN_IDS else "")
        if self.kind == FLOW:
            return f"flow {self.name!r} allows {limit} concurrent run(s), {len(active)} running ({ids})"
        return f"label {self.name!r} limit {limit} is full ({len(active)} running: {ids})"


# --- counting ------------------------------------------------------------------------------------------------


def _holding(tenant_id: str, key: LimitKey) -> ColumnElement[bool]:
    """SQL: runs of ``tenant_id`` that hold a slot of ``key``."""
    of_key: ColumnElement[bool]
    if key.kind == FLOW:
        of_key = FlowRun.flow_id.in_(select(Flow.id).where(Flow.tenant_id == tenant_id, Flow.name == key.name))
    else:
        of_key = exists().where(FlowRunLabel.flow_run_id == FlowRun.id, FlowRunLabel.label == key.name)
    return and_(FlowRun.tenant_id == tenant_id, FlowRun.state.in_(_SLOT_STATES), of_key)


def count_active(session: Session, tenant_id: str, key: LimitKey) -> int:
    return session.scalar(select(func.count()).select_from(FlowRun).where(_holding(tenant_id, key))) or 0


def active_runs(session: Session, tenant_id: str, key: LimitKey) -> list[str]:
    """Ids of the runs holding ``key``'s slots, oldest claim first."""
    query = select(FlowRun.id).where(_holding(tenant_id, key)).order_by(FlowRun.updated, FlowRun.id)
    return list(session.scalars(query))


# Every run's end asks for them (is_limited): built once.
_FLOW_LIMIT = (
    select(Flow.max_concurrent_runs)
    .where(Flow.tenant_id == bindparam("tenant_id"), Flow.name == bindparam("name"))
    .order_by(Flow.version.desc())
    .limit(1)
)
_LABEL_LIMITED = (
    select(LabelLimit.label)
    .where(LabelLimit.tenant_id == bindparam("tenant_id"), LabelLimit.label.in_(bindparam("labels", expanding=True)))
    .limit(1)
)


def flow_limit(session: Session, tenant_id: str, flow_name: str) -> int | None:
    """The limit of a flow name: its latest version's ``max_concurrent_runs``."""
    return session.scalar(_FLOW_LIMIT, {"tenant_id": tenant_id, "name": flow_name})


_LABEL_LIMITS_OF_TENANT = select(LabelLimit.label, LabelLimit.max_concurrent_runs).where(
    LabelLimit.tenant_id == bindparam("tenant_id")
)


def label_limits(session: Session, tenant_id: str) -> dict[str, int]:
    rows = session.execute(_LABEL_LIMITS_OF_TENANT, {"tenant_id": tenant_id})
    return {label: limit for label, limit in rows}


def run_limits(
    run: FlowRun, flow_name: str | None, limit_of_flow: int | None, labels: dict[str, int]
) -> list[tuple[LimitKey, int]]:
    """The limits ``run`` counts against, with their sizes: its flow name's (if limited), then its limited labels."""
    limits: list[tuple[LimitKey, int]] = []
    if flow_name is not None and limit_of_flow is not None:
        limits.append((LimitKey(FLOW, flow_name), limit_of_flow))
    limits.extend((LimitKey(LABEL, label), labels[label]) for label in sorted(set(run.labels)) if label in labels)
    return limits


def is_limited(session: Session, run: FlowRun) -> bool:
    """Whether ``run`` counts against any limit (its end frees a slot that other runs may be waiting for)."""
    if run.labels:
        limited = session.scalar(_LABEL_LIMITED, {"tenant_id": run.tenant_id, "labels": list(run.labels)})
        if limited is not None:
            return True
    flow_name = flows.name_of_run_flow(session, run)  # at every run's end: the run's copy, no query
    return flow_name is not None and flow_limit(session, run.tenant_id, flow_name) is not None


def waiting_for_slot(session: Session, run: FlowRun) -> str | None:
    """Why a claimable run waits for a slot (``explain``), or None when every limit it counts against has room."""
    flow_name = flows.name_of_run_flow(session, run)
    limit_of_flow = flow_limit(session, run.tenant_id, flow_name) if flow_name is not None else None
    full = []
    for key, limit in run_limits(run, flow_name, limit_of_flow, label_limits(session, run.tenant_id)):
        active = active_runs(session, run.tenant_id, key)
        if len(active) >= limit:
            full.append(key.describe(limit, active))
    return "waiting for a slot: " + "; ".join(full) if full else None


# --- claims ----------------------------------------------------------------------------------------------------


# Every claim asks: the tenant's label limits, and a row (NULL, 0) when any of its flows has a limit. One statement.
_LIMITS_OF_TENANT: CompoundSelect[Any] = union_all(
    _LABEL_LIMITS_OF_TENANT,
    select(null(), literal(0)).where(
        exists().where(Flow.tenant_id == bindparam("tenant_id"), Flow.max_concurrent_runs.is_not(None))
    ),
)


@dataclass
class ClaimGate:
    """Decides, within one claim's transaction, which candidate runs may take a slot.

    Usage (``claims.claim_runs``)::

        gate = ClaimGate.open(session, tenant_id)
        query = query.where(*gate.excluded())    # runs whose limit is known to be full are not even read
        if gate.admit(run):                      # locks and re-counts its limits
            ...move it to Pending...
    """

    session: Session
    tenant_id: str
    labels: dict[str, int]  # the tenant's label limits
    active: bool  # False: the tenant has no limit at all, and the gate admits everything for free
    locking: bool  # PostgreSQL: advisory locks serialize the claims that touch one limit
    full: set[LimitKey] = field(default_factory=set)
    skipped: set[str] = field(default_factory=set)  # runs refused by this claim: never read again by it
    _held: set[int] = field(default_factory=set)
    _flow_names: dict[str, str | None] = field(default_factory=dict)
    _flow_limits: dict[str, int | None] = field(default_factory=dict)

    @classmethod
    def open(cls, session: Session, tenant_id: str) -> ClaimGate:
        labels: dict[str, int] = {}
        flows_limited = False
        for label, limit in session.connection().execute(_LIMITS_OF_TENANT, {"tenant_id": tenant_id}):
            if label is None:
                flows_limited = True
            else:
                labels[label] = limit
        locking = session.get_bind().dialect.name == "postgresql"
        gate = cls(session, tenant_id, labels, bool(labels) or bool(flows_limited), locking)
        if gate.active:
            if session.get_bind().dialect.name == "sqlite":
                _check_sqlite_write_lock(session)
            gate.full = gate._known_full()
        return gate

    def _known_full(self) -> set[LimitKey]:
        """Limits full as of now, read without locks: only to leave their runs out of the candidate query (a slot
        freed meanwhile is found by the next claim; a slot taken meanwhile is caught by ``admit``'s re-count)."""
        held = and_(FlowRun.tenant_id == self.tenant_id, FlowRun.state.in_(_SLOT_STATES))
        full: set[LimitKey] = set()
        if self.labels:
            rows = self.session.execute(
                select(FlowRunLabel.label, func.count())
                .join(FlowRun, FlowRun.id == FlowRunLabel.flow_run_id)
                .where(held, FlowRunLabel.label.in_(list(self.labels)))
                .group_by(FlowRunLabel.label)
            )
            full |= {LimitKey(LABEL, label) for label, count in rows if count >= self.labels[label]}
        rows = self.session.execute(
            select(Flow.name, func.count()).join(FlowRun, FlowRun.flow_id == Flow.id).where(held).group_by(Flow.name)
        )
        for name, count in rows:
            limit = self._flow_limit(name)
            if limit is not None and count >= limit:
                full.add(LimitKey(FLOW, name))
        return full

    def excluded(self) -> list[ColumnElement[bool]]:
        """SQL for the claim query: leave out runs this claim refused and runs of limits known to be full. Usually
        none: the claim then runs its prebuilt statement as it is."""
        conditions: list[ColumnElement[bool]] = []
        if self.skipped:
            conditions.append(FlowRun.id.not_in(sorted(self.skipped)))
        full_flows = sorted(key.name for key in self.full if key.kind == FLOW)
        if full_flows:
            names = select(Flow.id).where(Flow.tenant_id == self.tenant_id, Flow.name.in_(full_flows))
            conditions.append(FlowRun.flow_id.not_in(names))
        labels = sorted(key.name for key in self.full if key.kind == LABEL)
        if labels:
            conditions.append(~exists().where(FlowRunLabel.flow_run_id == FlowRun.id, FlowRunLabel.label.in_(labels)))
        return conditions

    def admit(self, run: FlowRun) -> bool:
        """Whether ``run`` may take a slot of each limit it counts against, counted under those limits' locks.

        A refused run is remembered (``skipped``), and so is its full limit (``full``), so the claim goes on to
        the runs behind it.
        """
        if not self.active:
            return True
        flow_name = self._flow_name(run.flow_id)
        limit_of_flow = self._flow_limit(flow_name) if flow_name is not None else None
        limits = run_limits(run, flow_name, limit_of_flow, self.labels)
        if not limits:
            return True
        if self.locking and not self._lock([key.lock_id(self.tenant_id) for key, _limit in limits]):
            self.skipped.add(run.id)  # another claim is counting that limit: the next claim takes the run
            return False
        for key, limit in limits:
            if count_active(self.session, self.tenant_id, key) >= limit:
                self.full.add(key)
                self.skipped.add(run.id)
                return False
        return True

    def _flow_name(self, flow_id: str) -> str | None:
        if flow_id not in self._flow_names:
            self._flow_names[flow_id] = self.session.scalar(select(Flow.name).where(Flow.id == flow_id))
        return self._flow_names[flow_id]

    def _flow_limit(self, flow_name: str) -> int | None:
        if flow_name not in self._flow_limits:
            self._flow_limits[flow_name] = flow_limit(self.session, self.tenant_id, flow_name)
        return self._flow_limits[flow_name]

    def _lock(self, lock_ids: Iterable[int]) -> bool:
        """Take the advisory locks of ``lock_ids`` until the transaction ends. Returns False if one is busy.

        Deadlock-free: this claim waits only for locks above every lock it already holds (so all waits go up one
        order and cannot form a cycle); a lock below one it holds is only tried, and a busy one skips the run.
        """
        wanted = sorted(set(lock_ids) - self._held)
        if not wanted:
            return True
        if not self._held or wanted[0] > max(self._held):
            for lock_id in wanted:
                self.session.execute(select(func.pg_advisory_xact_lock(lock_id)))
                self._held.add(lock_id)
            return True
        for lock_id in wanted:
            if not self.session.scalar(select(func.pg_try_advisory_xact_lock(lock_id))):
                return False
            self._held.add(lock_id)
        return True


def _check_sqlite_write_lock(session: Session) -> None:
    """On SQLite the counts are race-free only if this transaction holds SQLite's single write lock. Every SQLite
    transaction begins IMMEDIATE (``database.connection``), so an open one holds it; an engine made without that
    rule (the driver's own deferred transactions) would count unlocked, which is a bug: refuse it."""
    driver: Any = session.connection().connection.driver_connection
    if driver.isolation_level is not None or not getattr(driver, "in_transaction", True):
        raise RuntimeError("a limited claim must hold the write lock: begin SQLite transactions IMMEDIATE")


# --- label limits: `baton limits` ------------------------------------------------------------------------------


def set_label_limit(session: Session, tenant_id: str, payload: LabelLimitSet) -> LabelLimitRead:
    """Create or change the limit of a label (409 past ``MAX_LABEL_LIMITS_PER_TENANT`` labels)."""
    for _attempt in range(3):
        row = session.get(LabelLimit, (tenant_id, payload.label))
        if row is not None:
            row.max_concurrent_runs = payload.max_concurrent_runs
            row.updated = utcnow()
            session.flush()
            return _read(session, row)
        count = session.scalar(select(func.count()).select_from(LabelLimit).where(LabelLimit.tenant_id == tenant_id))
        if (count or 0) >= MAX_LABEL_LIMITS_PER_TENANT:
            raise Conflict(f"this tenant has {count} label limits, the most allowed: delete one first")
        row = LabelLimit(tenant_id=tenant_id, label=payload.label, max_concurrent_runs=payload.max_concurrent_runs)
        try:
            with session.begin_nested():
                session.add(row)
        except IntegrityError:
            continue  # set at the same moment by another request: change that row instead
        return _read(session, row)
    raise Conflict(f"the limit of label {payload.label!r} kept changing; try again")


def list_label_limits(session: Session, tenant_id: str) -> list[LabelLimitRead]:
    rows = session.scalars(select(LabelLimit).where(LabelLimit.tenant_id == tenant_id).order_by(LabelLimit.label))
    return [_read(session, row) for row in rows]


def delete_label_limit(session: Session, tenant_id: str, label: str) -> LabelLimitRead:
    label = validate_label(label)
    row = session.get(LabelLimit, (tenant_id, label))
    if row is None:
        raise ObjectNotFound(f"label {label!r} has no limit")
    read = _read(session, row)
    session.delete(row)
    session.flush()
    return read


def _read(session: Session, row: LabelLimit) -> LabelLimitRead:
    return LabelLimitRead(
        label=row.label,
        max_concurrent_runs=row.max_concurrent_runs,
        active=count_active(session, row.tenant_id, LimitKey(LABEL, row.label)),
        created=row.created,
        updated=row.updated,
    )
