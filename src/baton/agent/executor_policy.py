"""Which executors a run config may ask of an agent's host (issue 14): the operator's ``--allow-executor`` and
``--max-executor-processes``.

A run config's ``executor`` (``baton run --executor``, ``POST /api/flow_runs {"executor"}``) is chosen per run by
whoever creates the run, and the flow-run process obeys it. Two of its choices reach beyond the flow's own process:

- ``dask:tcp://HOST:PORT`` sends the flow's code and arguments to that scheduler and unpickles what its workers send
  back, inside the flow-run process that holds the run token and the agent's ``--env``. A user key that can create
  runs but whose flows were reviewed (registered from CI, say) could otherwise point a reviewed flow at a cluster
  of its own. So no address is allowed unless the operator names it.
- ``process:N`` and ``dask:N`` start N processes on the agent's host (the local agent) or in the run's container:
  up to 9,999 by the spec's syntax, far past what ``--limit`` sized the host for.

The policy is checked before the run is deployed; a refused run ends Failed with a message naming the flag that
would allow it. It covers the run config only: a flow's code (``@flow(executor=DaskExecutor(...))``) is trusted as
much as any code the flow runs, which can open any connection it likes.

Usage::

    policy = ExecutorPolicy.parse(["local", "dask:tcp://10.0.0.5:8786"], max_processes=16)
    policy.refusal("dask:tcp://10.9.9.9:8786")  # "... (start the agent with --allow-executor ... to allow it)"
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from baton.agent.capacity import usable_cpus
from baton.exceptions import ConfigurationError
from baton.schemas.core import EXECUTOR_SPEC

# What "local" names, and the default when no --allow-executor is given: every executor that stays in the run's
# own process or host, sized by the run config within --max-executor-processes; no cluster by address.
LOCAL = "local"
LOCAL_PATTERNS = ("sequential", "thread", "thread:*", "process", "process:*", "dask", "dask:*")  # * spans no ":"
# Processes a run may start per usable CPU of the agent's host when the operator sets no maximum: as --limit's
# default (agent/capacity.py), four per CPU.
PROCESSES_PER_CPU = 4
MAX_PATTERN_CHARS = 256
_PROCESS_KINDS = frozenset({"process", "dask"})
_SIZED = re.compile(r"^(?P<kind>[a-z]+)(?::(?P<size>[0-9]+))?$")


@dataclass(frozen=True)
class ExecutorPolicy:
    """The executors run configs may ask for.

    Args:
        patterns: patterns over the spec as written (``dask:tcp://10.0.0.*:8786``), ``local`` standing for
            :data:`LOCAL_PATTERNS`; empty: :data:`LOCAL_PATTERNS`. ``sequential`` is always allowed. See
            :func:`matches` for what ``*`` stands for.
        max_processes: the most processes ``process[:N]`` and ``dask[:N]`` may ask for; None: four per usable CPU
            of this host (as ``--limit``); 0: no limit. A spec without N counts as the CPUs (what it then starts).
        cpus: this host's usable CPUs (injected by tests).
    """

    patterns: tuple[str, ...] = LOCAL_PATTERNS
    max_processes: int | None = None
    cpus: int = field(default_factory=usable_cpus)

    @classmethod
    def parse(cls, patterns: Sequence[str] | None, max_processes: int | None = None) -> ExecutorPolicy:
        """A policy from the agent's settings.

        Raises:
            ConfigurationError: an empty or overlong pattern, or a negative maximum.
        """
        expanded: list[str] = []
        for raw in patterns or ():
            pattern = raw.strip().lower()
            if not pattern or len(pattern) > MAX_PATTERN_CHARS or any(not c.isprintable() for c in pattern):
                shown = raw[:40] + ("…" if len(raw) > 40 else "")
                raise ConfigurationError(
                    f"--allow-executor {shown!r}: give a pattern of 1 to {MAX_PATTERN_CHARS} printable characters "
                    "over an executor spec (local, thread:*, process:*, dask:tcp://HOST:PORT)"
                )
            expanded += LOCAL_PATTERNS if pattern == LOCAL else [pattern]
        if max_processes is not None and max_processes < 0:
            raise ConfigurationError("--max-executor-processes must be 0 (no limit) or more")
        return cls(tuple(dict.fromkeys(expanded)) or LOCAL_PATTERNS, max_processes)

    @property
    def process_limit(self) -> int | None:
        """The most processes a run config may ask for; None: no limit."""
        if self.max_processes is None:
            return PROCESSES_PER_CPU * self.cpus
        return self.max_processes or None

    def refusal(self, spec: str | None) -> str | None:
        """Why a run config's executor ``spec`` is refused here, or None when it is allowed (None asks nothing:
        the flow's own executor runs)."""
        if spec is None or spec == "sequential":
            return None
        if re.fullmatch(EXECUTOR_SPEC, spec) is None:  # the API checked it; a claim from an older server may not
            return f"the run config's executor {spec[:80]!r} is not an executor spec"
        written = spec.lower()  # host names ignore case
        if not any(matches(written, pattern) for pattern in self.patterns):
            why = (
                ": it would send the flow's code and arguments to that scheduler and take results from it"
                if written.startswith(("dask:tcp:", "dask:tls:"))
                else ""
            )
            return f"the run config's executor {spec!r} is not allowed on this agent{why} " + (
                f"(start the agent with --allow-executor {_quoted(written)} to allow it)"
            )
        return self._size_refusal(written)

    def _size_refusal(self, spec: str) -> str | None:
        sized = _SIZED.match(spec)
        limit = self.process_limit
        if sized is None or sized["kind"] not in _PROCESS_KINDS or limit is None:
            return None
        asked = int(sized["size"]) if sized["size"] else self.cpus
        if asked <= limit:
            return None
        return (
            f"the run config's executor {spec!r} would start {asked} processes; this agent allows at most {limit} "
            "(start it with a higher --max-executor-processes, or 0 for no limit)"
        )


def matches(spec: str, pattern: str) -> bool:
    """Whether ``spec`` matches ``pattern``, both lower case. ``*`` stands for any run of characters within one part
    of the spec: not ``.``, ``:``, ``/``, ``[`` or ``]``. Every other character, ``?`` and ``[`` included, stands for
    itself. So ``dask:tcp://10.0.0.*:8786`` allows ``10.0.0.7`` and not ``10.0.0.evil.example.com``, ``dask:*``
    allows ``dask:4`` and no address, and ``dask:tcp://[::1]:8786`` is the address it reads as (fnmatch would take
    its brackets for a set of characters)."""
    return _compiled(pattern).fullmatch(spec) is not None


@functools.lru_cache(maxsize=256)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile("[^.:/\\[\\]]*".join(re.escape(part) for part in pattern.split("*")))


def _quoted(text: str) -> str:
    """``text`` as a shell word: the patterns hold ``:`` and ``/``, which need no quotes; ``*`` and ``[`` do."""
    return text if re.fullmatch(r"[A-Za-z0-9_.:/@%+=,-]+", text) else "'" + text.replace("'", "'\\''") + "'"
