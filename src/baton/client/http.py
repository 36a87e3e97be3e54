"""A small synchronous API client: one method per route, errors mapped to Baton's specific exceptions.

It is thread-safe (its transport, :mod:`baton.client.transport`, pools connections under a lock), which the agent
relies on: its loops call it through ``asyncio.to_thread``.

Transient failures (no connection, a timeout, a 5xx, a 429) raise :class:`ServerUnavailableError`; callers retry
them. Whether the failed request may still have been carried out matters to a retry (a claim, a state change whose
answer was lost): :func:`may_have_reached_the_server` tells (``answers.py``: how answers become exceptions).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

from pydantic import BaseModel

from baton import __version__
from baton.backoff import Backoff
from baton.client.answers import checked, is_unreachable, may_have_reached_the_server, unavailable
from baton.client.transport import HttpTransport, Response, TransportError
from baton.exceptions import (
    ConfigurationError,
    NotFoundError,
    ServerUnavailableError,
)
from baton.schemas import responses as r

if TYPE_CHECKING:
    from baton.schemas.notifications import NotificationDeliveryRead, NotificationRuleRead
    from baton.settings import BatonSettings

__all__ = ["Client", "is_unreachable", "may_have_reached_the_server"]

M = TypeVar("M", bound=BaseModel)

# Retries of a create: short, since a person (or a script) is waiting on the answer.
_CREATE_BACKOFF = Backoff(base_seconds=0.5, max_seconds=4.0)


def _segment(value: str) -> str:
    """``value`` as one path segment: a flow name may hold spaces and dots, never a slash that changes the route."""
    return quote(value, safe="")


class Client:
    """Talks to one Baton API server with one key (an API key or a run token).

    ``Client()`` finds the server and key as the CLI does: ``BATON__API__URL`` / ``BATON__API__KEY``, then
    ``$BATON_HOME/config.toml``, then the default URL. ``Client(api_url, api_key)`` uses exactly what it is given.

    Usage::

        with Client() as client:
            client.create_flow_run(flow_name="hello", parameters={"name": "Ada"})

    ``transport`` replaces the HTTP transport (tests put faults in it); ``api_key`` and ``timeout`` are then its own.

    Raises:
        ConfigurationError: the settings (``Client()``) or the URL are malformed.
    """

    def __init__(
        self,
        api_url: str | None = None,
        api_key: str | None = None,
        timeout: float | None = None,
        *,
        transport: HttpTransport | None = None,
    ) -> None:
        if api_url is None:
            from baton.settings import load_settings

            settings = load_settings()
            api_url = settings.api.url
            if api_key is None and settings.api.key is not None:
                api_key = settings.api.key.get_secret_value()
            timeout = settings.api.timeout_seconds if timeout is None else timeout
        timeout = 30.0 if timeout is None else timeout
        self.api_url = api_url.rstrip("/")
        headers = {"User-Agent": f"baton/{__version__}"}
        if api_key:
            if not (api_key.isascii() and api_key.isprintable()):
                # It would fail every request (HTTP headers cannot carry it), where the cause is the configuration.
                raise ConfigurationError(
                    "the API key holds a character an HTTP header cannot carry (a newline, a control or non-ASCII "
                    "character): check the key you passed, BATON__API__KEY or $BATON_HOME/config.toml"
                )
            headers["Authorization"] = f"Bearer {api_key}"
        try:
            self._http = transport or HttpTransport(self.api_url, headers, timeout)
        except ValueError as exc:  # the URL, or the environment's proxy for it
            raise ConfigurationError(str(exc)) from exc

    @classmethod
    def from_settings(cls, settings: BatonSettings, require_key: bool = True) -> Client:
        key = settings.api.key.get_secret_value() if settings.api.key else None
        if require_key and not key:
            raise ConfigurationError(
                "no API key: pass --key, set BATON__API__KEY, or start a local server once to write one "
                "into $BATON_HOME/config.toml"
            )
        return cls(settings.api.url, key, timeout=settings.api.timeout_seconds)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- transport -------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        timeout: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """Send one request; return the decoded JSON body.

        Raises:
            ServerUnavailableError: connection failed, timed out, or the server answered 5xx (transient).
            ClientError: a 4xx answer, as its specific subclass where there is one.
        """
        response = self._send(method, path, json=json, params=params, timeout=timeout, headers=headers)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    def _send(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        timeout: float | None = None,
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
    ) -> Response:
        """:meth:`request`, returning the whole 2xx response (its headers too); ``content``: a raw body instead of
        ``json``."""
        kwargs: dict[str, Any] = {}
        if timeout is not None:
            kwargs["timeout"] = timeout
        if headers:
            kwargs["headers"] = headers
        if content is not None:
            kwargs["content"] = content
        if params:
            params = {k: v for k, v in params.items() if v is not None}
        try:
            response = self._http.request(method, path, json=json, params=params, **kwargs)
        except TransportError as exc:
            raise unavailable(self.api_url, exc) from exc
        return checked(self.api_url, response)

    def _all_pages(self, model: type[M], path: str, params: dict[str, Any] | None = None) -> list[M]:
        """Every item of a paged list: the server stops a page at its byte budget and names the next one in the
        ``X-Next-Cursor`` header."""
        found: list[M] = []
        cursor: str | None = None
        for _page in range(100_000):  # bounded: each page holds at least one item
            response = self._send("GET", path, params={**(params or {}), "cursor": cursor})
            found.extend(model.model_validate(item) for item in response.json())
            cursor = response.headers.get(r.NEXT_CURSOR_HEADER)
            if cursor is None:
                break
        return found

    def _model(self, model: type[M], method: str, path: str, **kwargs: Any) -> M:
        return model.model_validate(self.request(method, path, **kwargs))

    def _models(self, model: type[M], method: str, path: str, **kwargs: Any) -> list[M]:
        return [model.model_validate(item) for item in self.request(method, path, **kwargs)]

    # --- identity and keys -----------------------------------------------------------------------

    def health(self) -> r.Health:
        return self._model(r.Health, "GET", "/api/health")

    def whoami(self) -> r.WhoAmI:
        return self._model(r.WhoAmI, "GET", "/api/whoami")

    def create_api_key(self, role: str, name: str | None = None) -> r.ApiKeyCreated:
        return self._model(r.ApiKeyCreated, "POST", "/api/keys", json={"role": role, "name": name})

    def revoke_api_key(self, key_id: str) -> r.ApiKeyRead:
        return self._model(r.ApiKeyRead, "DELETE", f"/api/keys/{key_id}")

    def list_api_keys(self) -> list[r.ApiKeyRead]:
        return self._models(r.ApiKeyRead, "GET", "/api/keys")

    # --- concurrency limits of labels ------------------------------------------------------------

    def set_label_limit(self, label: str, max_concurrent_runs: int) -> r.LabelLimitRead:
        body = {"label": label, "max_concurrent_runs": max_concurrent_runs}
        return self._model(r.LabelLimitRead, "POST", "/api/limits", json=body)

    def list_label_limits(self) -> list[r.LabelLimitRead]:
        return self._models(r.LabelLimitRead, "GET", "/api/limits")

    def delete_label_limit(self, label: str) -> r.LabelLimitRead:
        return self._model(r.LabelLimitRead, "DELETE", f"/api/limits/{quote(label, safe='')}")

    # --- flows -----------------------------------------------------------------------------------

    def register_flow(self, payload: dict[str, Any]) -> r.FlowRead:
        return self._model(r.FlowRead, "POST", "/api/flows", json=payload)

    def list_flows(self, name: str | None = None, all_versions: bool = False) -> list[r.FlowRead]:
        """The flows (newest versions, or ``all_versions``), following the server's cursor across pages."""
        params = {"name": name, "all_versions": "true" if all_versions else None}
        return self._all_pages(r.FlowRead, "/api/flows", params)

    def get_flow(self, flow_id: str, include_source: bool = False) -> r.FlowRead:
        params = {"include_source": "true"} if include_source else None
        return self._model(r.FlowRead, "GET", f"/api/flows/{flow_id}", params=params)

    # --- bundles (a flow's folder, ``baton.bundles``) ---------------------------------------------

    def has_bundle(self, digest: str) -> bool:
        """Whether the tenant has bundle ``digest`` already (then there is nothing to upload)."""
        try:
            self._send("HEAD", f"/api/bundles/{_segment(digest)}")
        except NotFoundError:
            return False
        return True

    def upload_bundle(self, digest: str, data: bytes) -> bool:
        """Upload the compressed bundle ``data`` named ``digest``; True when the server stored it now, False when it
        had it already.

        Raises:
            ClientError: 422 ``data`` is not the bundle ``digest`` names, or not a valid one; 413 over a cap.
        """
        headers = {"Content-Type": "application/gzip"}
        response = self._send("PUT", f"/api/bundles/{_segment(digest)}", content=data, headers=headers)
        return response.status_code == 201

    def get_bundle(self, digest: str) -> bytes:
        """The compressed bytes of bundle ``digest`` (check them with ``baton.bundles.read_bundle``: the digest
        names the content, so nobody needs to trust the server for it).

        Raises:
            NotFoundError: the tenant has no such bundle, or (a run token) it is not its own flow's.
        """
        return self._send("GET", f"/api/bundles/{_segment(digest)}").content

    # --- schedules -------------------------------------------------------------------------------

    def list_schedules(self) -> list[r.ScheduleRead]:
        """The schedules of the tenant's flows (newest versions that have one, paused ones too)."""
        return self._models(r.ScheduleRead, "GET", "/api/schedules")

    def get_schedule(self, flow_name: str) -> r.ScheduleRead:
        return self._model(r.ScheduleRead, "GET", f"/api/schedules/{_segment(flow_name)}")

    def pause_schedule(self, flow_name: str) -> r.ScheduleRead:
        return self._model(r.ScheduleRead, "POST", f"/api/schedules/{_segment(flow_name)}/pause")

    def resume_schedule(self, flow_name: str) -> r.ScheduleRead:
        return self._model(r.ScheduleRead, "POST", f"/api/schedules/{_segment(flow_name)}/resume")

    def backfill(self, flow_name: str, start: datetime, end: datetime, max_runs: int | None = None) -> r.BackfillResult:
        """Create the runs of the flow's schedule for the past times in [start, end], each at most once ever."""
        body = {"start": start.isoformat(), "end": end.isoformat(), "max_runs": max_runs}
        return self._model(r.BackfillResult, "POST", f"/api/schedules/{_segment(flow_name)}/backfill", json=body)

    # --- flow runs -------------------------------------------------------------------------------

    def create_flow_run(
        self,
        *,
        flow_name: str | None = None,
        flow_id: str | None = None,
        flow_version: int | None = None,
        parameters: dict[str, Any] | None = None,
        labels: list[str] | None = None,
        scheduled_start_time: datetime | None = None,
        name: str | None = None,
        idempotency_key: str | None = None,
        retries: int = 0,
        executor: str | None = None,
    ) -> r.FlowRunRead:
        """Create a flow run.

        Args:
            idempotency_key: this logical create's key; a new random one when None. Pass the same key to a retry
                made by hand, so a create whose answer was lost returns the first run instead of a second one.
            retries: how many times to retry, with the same key, when the answer was lost or the server failed
                (never when the connection was refused: then it cannot have acted).
            executor: where the run's submitted tasks run (``thread:8``, ``process``, ``dask:tcp://host:8786``...),
                over the flow's executor.

        Raises:
            ServerUnavailableError: still unavailable after ``retries`` retries.
            ClientError: refused (e.g. 404 unknown flow, 409 the key was used for another request).
        """
        key = idempotency_key or uuid.uuid4().hex
        body: dict[str, Any] = {
            "flow_name": flow_name,
            "flow_id": flow_id,
            "flow_version": flow_version,
            "parameters": parameters or {},
            "labels": labels,
            "name": name,
            "scheduled_start_time": scheduled_start_time.isoformat() if scheduled_start_time else None,
        }
        if executor is not None:
            body["executor"] = executor
        attempt = 0
        while True:
            try:
                return self._model(r.FlowRunRead, "POST", "/api/flow_runs", json=body, headers={"Idempotency-Key": key})
            except ServerUnavailableError as exc:
                attempt += 1
                if attempt > retries or not may_have_reached_the_server(exc):
                    raise
                time.sleep(_CREATE_BACKOFF.delay(attempt))

    def get_flow_run(self, flow_run_id: str) -> r.FlowRunRead:
        return self._model(r.FlowRunRead, "GET", f"/api/flow_runs/{flow_run_id}")

    def get_flow_run_with_flow(self, flow_run_id: str) -> r.FlowRunWithFlow:
        """The run and its flow with the flow's source, in one request (404 from a server older than the route)."""
        return self._model(r.FlowRunWithFlow, "GET", f"/api/flow_runs/{flow_run_id}/with_flow")

    def start_flow_run(self, flow_run_id: str, wait_seconds: float = 0.0) -> r.FlowRunWithFlow:
        """Set the run Running (a run token's call) and read it with its flow and the flow's source, in one request.

        ``wait_seconds``: as :meth:`change_flow_run_state`'s, the wait for the agent's Submitted.

        Raises:
            ConflictError: the run cannot start (its ``current_state``: Pending still, Cancelling, final, Running).
            NotFoundError: no such run, or a server older than the route.
        """
        headers = {"Prefer": f"wait={wait_seconds:g}"} if wait_seconds > 0 else None
        timeout = self._http.timeout + max(wait_seconds, 0.0)  # the server may take the wait
        path = f"/api/flow_runs/{flow_run_id}/start"
        return self._model(r.FlowRunWithFlow, "POST", path, headers=headers, timeout=timeout)

    def list_flow_runs(
        self,
        state: str | None = None,
        flow_name: str | None = None,
        limit: int = 50,
        offset: int = 0,
        include: Sequence[str] = (),
        late: bool = False,
    ) -> list[r.FlowRunRead]:
        """Up to ``limit`` runs, newest first, following the server's cursor across pages.

        Items leave out the heavy fields (``parameters``, ``states``) unless ``include`` names them; ``late``: only
        runs still waiting for an agent past their start time (the server's ``late_after_seconds``).
        """
        found: list[r.FlowRunRead] = []
        cursor: str | None = None
        while len(found) < limit:
            page, cursor = self.list_flow_runs_page(
                state, flow_name, limit - len(found), offset if not found else 0, include, cursor, late=late
            )
            found.extend(page)
            if cursor is None or not page:
                break
        return found

    def list_flow_runs_page(
        self,
        state: str | None = None,
        flow_name: str | None = None,
        limit: int = 50,
        offset: int = 0,
        include: Sequence[str] = (),
        cursor: str | None = None,
        late: bool = False,
    ) -> tuple[list[r.FlowRunRead], str | None]:
        """One page of runs and the cursor of the next one (None after the last page)."""
        params = {
            "late": "true" if late else None,
            "state": state,
            "flow_name": flow_name,
            "limit": limit,
            "offset": offset or None,
            "include": ",".join(include) or None,
            "cursor": cursor,
        }
        response = self._send("GET", "/api/flow_runs", params=params)
        runs = [r.FlowRunRead.model_validate(item) for item in response.json()]
        return runs, response.headers.get(r.NEXT_CURSOR_HEADER)

    def set_flow_run_state(
        self, flow_run_id: str, name: str, message: str | None = None, data: dict[str, Any] | None = None
    ) -> r.FlowRunRead:
        body = {"name": name, "message": message, "data": data}
        return self._model(r.FlowRunRead, "POST", f"/api/flow_runs/{flow_run_id}/state", json=body)

    def change_flow_run_state(
        self,
        flow_run_id: str,
        name: str,
        message: str | None = None,
        data: dict[str, Any] | None = None,
        wait_seconds: float = 0.0,
        logs: list[dict[str, Any]] | None = None,
    ) -> r.StateChanged:
        """:meth:`set_flow_run_state`, answered with the run's new state only (``Prefer: return=minimal``): cheaper
        for the server, for callers that need no more (the flow-run process).

        ``wait_seconds``: a run token's Running on a run still Pending waits that long (at most the server's
        ``max_state_wait_seconds``) for its agent's Submitted before the 409 (``Prefer: wait``; an older server
        refuses at once).

        ``logs``: log lines (as :meth:`write_logs` sends them) stored with the change, in its transaction; refused
        with it. A server older than that field answers 422.
        """
        body: dict[str, Any] = {"name": name, "message": message, "data": data}
        if logs:
            body["logs"] = logs
        prefer = r.PREFER_MINIMAL + (f", wait={wait_seconds:g}" if wait_seconds > 0 else "")
        headers = {"Prefer": prefer}
        path = f"/api/flow_runs/{flow_run_id}/state"
        timeout = self._http.timeout + max(wait_seconds, 0.0)  # the server may take the wait
        return self._model(r.StateChanged, "POST", path, json=body, headers=headers, timeout=timeout)

    def retry_flow_run(self, flow_run_id: str, idempotency_key: str | None = None) -> r.FlowRunRead:
        """Run a Failed or Cancelled run again as a new run (same flow version, parameters and labels) whose
        ``retried_from`` names it; the new run.

        Raises:
            ClientError: 409 the run is not Failed or Cancelled; 404 no such run.
        """
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return self._model(r.FlowRunRead, "POST", f"/api/flow_runs/{flow_run_id}/retry", headers=headers)

    def cancel_flow_run(self, flow_run_id: str) -> r.FlowRunRead:
        return self._model(r.FlowRunRead, "POST", f"/api/flow_runs/{flow_run_id}/cancel")

    def explain_flow_run(self, flow_run_id: str) -> r.RunExplanation:
        return self._model(r.RunExplanation, "GET", f"/api/flow_runs/{flow_run_id}/explain")

    def flow_run_heartbeat(self, flow_run_id: str) -> r.FlowRunHeartbeatResponse:
        return self._model(r.FlowRunHeartbeatResponse, "POST", f"/api/flow_runs/{flow_run_id}/heartbeat")

    # --- logs ------------------------------------------------------------------------------------

    def write_logs(self, flow_run_id: str, logs: list[dict[str, Any]]) -> r.LogsWritten:
        return self._model(r.LogsWritten, "POST", f"/api/flow_runs/{flow_run_id}/logs", json={"logs": logs})

    def get_logs(self, flow_run_id: str, offset: int = 0, limit: int = 1000) -> r.LogsPage:
        params = {"offset": offset, "limit": limit}
        return self._model(r.LogsPage, "GET", f"/api/flow_runs/{flow_run_id}/logs", params=params)

    # --- task runs -------------------------------------------------------------------------------

    def create_task_run(
        self, flow_run_id: str, task_name: str, state: str = "Pending", message: str | None = None
    ) -> r.TaskRunRead:
        body = {"task_name": task_name, "state": state, "message": message}
        return self._model(r.TaskRunRead, "POST", f"/api/flow_runs/{flow_run_id}/task_runs", json=body)

    def create_task_runs(self, flow_run_id: str, task_runs: list[dict[str, Any]]) -> list[r.TaskRunRead]:
        """Several task runs at once (each ``{"task_name", "state", "message"}``), all or none, in order."""
        path = f"/api/flow_runs/{flow_run_id}/task_runs/batch"
        return self._models(r.TaskRunRead, "POST", path, json={"task_runs": task_runs})

    def set_task_run_state(
        self, task_run_id: str, state: str, message: str | None = None, attempt: int | None = None
    ) -> r.TaskRunRead:
        body = {"state": state, "message": message, "attempt": attempt}
        return self._model(r.TaskRunRead, "POST", f"/api/task_runs/{task_run_id}/state", json=body)

    def set_task_run_states(self, flow_run_id: str, states: list[dict[str, Any]]) -> r.TaskRunStatesSet:
        """Several states of ``flow_run_id``'s task runs, in order: each ``{"task_run_id", "state", "message",
        "attempt", "at"}`` (``at``: when it was entered, ISO 8601 with a zone)."""
        path = f"/api/flow_runs/{flow_run_id}/task_runs/states"
        return self._model(r.TaskRunStatesSet, "POST", path, json={"states": states})

    def list_task_runs(self, flow_run_id: str) -> list[r.TaskRunRead]:
        return self._all_pages(r.TaskRunRead, f"/api/flow_runs/{flow_run_id}/task_runs")

    # --- agents ----------------------------------------------------------------------------------

    def register_agent(
        self,
        name: str,
        agent_type: str,
        labels: list[str],
        agent_config_id: str | None = None,
        version: str | None = None,
    ) -> r.AgentRead:
        body = {
            "name": name,
            "type": agent_type,
            "labels": labels,
            "agent_config_id": agent_config_id,
            "version": version,
        }
        return self._model(r.AgentRead, "POST", "/api/agents", json=body)

    def list_agents(self) -> list[r.AgentRead]:
        """Every agent of the tenant, oldest first, with its liveness and the runs it holds."""
        return self._all_pages(r.AgentRead, "/api/agents")

    def deregister_agent(self, agent_id: str, instance: str | None = None) -> r.AgentRead:
        """Deregister an agent (its warm stop): only the key that registered it may. ``instance``: the stopping
        agent process, as on its claims (a later claim of that process then claims nothing)."""
        params = {} if instance is None else {"instance": instance}
        return self._model(r.AgentRead, "DELETE", f"/api/agents/{agent_id}", params=params)

    def prune_agents(
        self, older_than_seconds: float | None = None, dry_run: bool = False, agent_ids: Sequence[str] | None = None
    ) -> r.AgentsPruned:
        """Delete stale agents holding no run (``dry_run``: only list them; ``agent_ids``: of these only)."""
        body: dict[str, Any] = {"dry_run": dry_run}
        if older_than_seconds is not None:
            body["older_than_seconds"] = older_than_seconds
        if agent_ids is not None:
            body["agent_ids"] = list(agent_ids)
        return self._model(r.AgentsPruned, "POST", "/api/agents/prune", json=body)

    def claim(
        self,
        agent_id: str,
        limit: int = 1,
        wait_seconds: float = 0.0,
        prefetch_seconds: float = 0.0,
        instance: str | None = None,
    ) -> r.ClaimResponse:
        """Claim due runs, waiting up to ``wait_seconds``. ``instance``: the agent process asking (a random id per
        start), so that a call still on its way when that process deregistered claims nothing."""
        body: dict[str, Any] = {"limit": limit, "wait_seconds": wait_seconds, "prefetch_seconds": prefetch_seconds}
        if instance is not None:
            body["instance"] = instance
        # The long poll may legitimately take wait_seconds: give the read timeout that much more.
        timeout = self._http.timeout
        return self._model(
            r.ClaimResponse,
            "POST",
            f"/api/agents/{agent_id}/claim",
            json=body,
            timeout=timeout + wait_seconds,
        )

    def agent_heartbeat(
        self,
        agent_id: str,
        deployments: list[dict[str, Any]],
        claims: list[str] | None = None,
        instance: str | None = None,
    ) -> r.HeartbeatResponse:
        """Report deployments; ``claims`` names the runs held claimed and not yet Submitted (their leases are
        extended; None extends every claim of the agent). ``instance``: the agent process, as on its claims (a
        heartbeat of a process that has deregistered then leaves the agent deregistered)."""
        body: dict[str, Any] = {"deployments": deployments}
        if claims is not None:
            body["claims"] = claims
        if instance is not None:
            body["instance"] = instance
        return self._model(r.HeartbeatResponse, "POST", f"/api/agents/{agent_id}/heartbeat", json=body)

    # --- notifications ---------------------------------------------------------------------------
    # Their models are imported in each method: they pull in every request model (baton.schemas.actions), which
    # the flow-run process, a user of this client, must not load at start-up (tests/engine: no heavy modules).

    def add_notification_rule(
        self,
        on: Sequence[str],
        webhook: str,
        name: str | None = None,
        flow: str | None = None,
        late_after_seconds: int | None = None,
    ) -> NotificationRuleRead:
        """Add a rule: POST events ``on`` (state names, ``late``, ``agent-lost``) to ``webhook``."""
        body: dict[str, Any] = {"on": list(on), "webhook": webhook, "name": name, "flow": flow}
        if late_after_seconds is not None:
            body["late_after_seconds"] = late_after_seconds
        from baton.schemas.notifications import NotificationRuleRead

        return self._model(NotificationRuleRead, "POST", "/api/notifications", json=body)

    def list_notification_rules(self) -> list[NotificationRuleRead]:
        from baton.schemas.notifications import NotificationRuleRead

        return self._models(NotificationRuleRead, "GET", "/api/notifications")

    def remove_notification_rule(self, rule_id: str) -> NotificationRuleRead:
        from baton.schemas.notifications import NotificationRuleRead

        return self._model(NotificationRuleRead, "DELETE", f"/api/notifications/{rule_id}")

    def test_notification_rule(self, rule_id: str) -> NotificationDeliveryRead:
        """Have the server send a test event to the rule's webhook now; the answer is the recorded delivery."""
        from baton.schemas.notifications import NotificationDeliveryRead

        return self._model(NotificationDeliveryRead, "POST", f"/api/notifications/{rule_id}/test")
