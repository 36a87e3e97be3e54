"""The label rule (DESIGN.md §4), shared by the server's claim query, `runs explain` and the agents.

A run may go to an agent iff the run's labels are a subset of the agent's labels, and a run with no labels goes
only to agents with no labels. This is Prefect 1's rule, kept exactly so that migrating teams keep their routing.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterable

MAX_LABEL_LENGTH = 128
MAX_LABELS = 64
# Labels end up in CLI arguments, env vars (JSON) and SQL parameters: printable, no whitespace, no commas.
_LABEL_RE = re.compile(r"^[A-Za-z0-9_.:/@+=-]+$")


def validate_label(label: str) -> str:
    """Return ``label`` stripped, or raise InvalidLabelError saying what is wrong with it."""
    from baton.exceptions import InvalidLabelError

    if not isinstance(label, str):
        raise InvalidLabelError(f"a label must be a string, not {type(label).__name__}")
    cleaned = label.strip()
    if not cleaned:
        raise InvalidLabelError("a label may not be empty")
    if len(cleaned) > MAX_LABEL_LENGTH:
        raise InvalidLabelError(f"label {cleaned[:20]!r}... is longer than {MAX_LABEL_LENGTH} characters")
    if not _LABEL_RE.match(cleaned):
        raise InvalidLabelError(
            f"invalid label {cleaned!r}: use letters, digits and _ . : / @ + = - (no spaces or commas)"
        )
    return cleaned


def normalize_labels(labels: Iterable[str] | None) -> list[str]:
    """Validate, de-duplicate and sort labels."""
    if labels is None:
        return []
    if isinstance(labels, str):
        labels = [labels]
    result = sorted({validate_label(label) for label in labels})
    if len(result) > MAX_LABELS:
        from baton.exceptions import InvalidLabelError

        raise InvalidLabelError(f"at most {MAX_LABELS} labels are allowed, got {len(result)}")
    return result


def agent_can_take(run_labels: Iterable[str], agent_labels: Iterable[str]) -> bool:
    """The label rule: run labels ⊆ agent labels; unlabelled runs only to unlabelled agents."""
    run_set, agent_set = set(run_labels), set(agent_labels)
    if not run_set:
        return not agent_set
    return run_set <= agent_set


def missing_labels(run_labels: Iterable[str], agent_labels: Iterable[str]) -> list[str]:
    """The run labels an agent lacks (sorted); empty when the agent can take the run or only extra labels block it."""
    return sorted(set(run_labels) - set(agent_labels))


def hostname_label() -> str:
    """The label the local agent and local storage add: this host's name."""
    return socket.gethostname()
