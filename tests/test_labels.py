"""The label rule (DESIGN.md §4), label normalisation and validation."""

from __future__ import annotations

import socket

import pytest

from baton.exceptions import InvalidLabelError
from baton.labels import (
    MAX_LABEL_LENGTH,
    MAX_LABELS,
    agent_can_take,
    hostname_label,
    missing_labels,
    normalize_labels,
    validate_label,
)


@pytest.mark.parametrize(
    ("run_labels", "agent_labels", "expected"),
    [
        pytest.param([], [], True, id="unlabelled-run-unlabelled-agent"),
        pytest.param([], ["dev"], False, id="unlabelled-run-labelled-agent"),
        pytest.param(["dev"], [], False, id="labelled-run-unlabelled-agent"),
        pytest.param(["dev"], ["dev", "staging"], True, id="run-labels-subset-of-agent"),
        pytest.param(["dev", "gpu"], ["dev"], False, id="run-labels-superset-of-agent"),
        pytest.param(["dev", "staging"], ["staging", "dev"], True, id="equal-labels-any-order"),
        pytest.param(["dev"], ["prod"], False, id="disjoint-labels"),
        pytest.param(["a", "b"], ["b", "c"], False, id="overlapping-but-not-subset"),
    ],
)
def test_agent_can_take_follows_the_prefect_rule(
    run_labels: list[str], agent_labels: list[str], expected: bool
) -> None:
    assert agent_can_take(run_labels, agent_labels) is expected


def test_agent_can_take_accepts_any_iterables() -> None:
    assert agent_can_take(iter(["dev"]), ("dev", "x")) is True
    assert agent_can_take((), frozenset()) is True


@pytest.mark.parametrize(
    ("run_labels", "agent_labels", "expected"),
    [
        (["gpu", "dev", "big"], ["dev"], ["big", "gpu"]),
        (["dev"], ["dev", "x"], []),
        ([], ["dev"], []),  # blocked by the agent's extra labels only: nothing is missing
        (["dev"], [], ["dev"]),
    ],
)
def test_missing_labels_names_run_labels_the_agent_lacks_sorted(
    run_labels: list[str], agent_labels: list[str], expected: list[str]
) -> None:
    assert missing_labels(run_labels, agent_labels) == expected


def test_normalize_labels_sorts_and_deduplicates() -> None:
    assert normalize_labels(["staging", "dev", "staging", " dev "]) == ["dev", "staging"]


@pytest.mark.parametrize(("given", "expected"), [(None, []), ([], []), ("dev", ["dev"]), (("b", "a"), ["a", "b"])])
def test_normalize_labels_accepts_none_a_single_string_and_iterables(given: object, expected: list[str]) -> None:
    assert normalize_labels(given) == expected  # type: ignore[arg-type]


def test_normalize_labels_keeps_every_allowed_character() -> None:
    label = "Aa0_.:/@+=-"
    assert normalize_labels([label]) == [label]


def test_normalize_labels_allows_exactly_max_labels() -> None:
    labels = [f"l{i:03d}" for i in range(MAX_LABELS)]
    assert normalize_labels(reversed(labels)) == labels


def test_normalize_labels_counts_after_deduplication() -> None:
    labels = [f"l{i}" for i in range(MAX_LABELS)] * 2
    assert len(normalize_labels(labels)) == MAX_LABELS


def test_too_many_labels_are_rejected() -> None:
    with pytest.raises(InvalidLabelError, match=f"at most {MAX_LABELS} labels are allowed, got {MAX_LABELS + 1}"):
        normalize_labels([f"l{i}" for i in range(MAX_LABELS + 1)])


@pytest.mark.parametrize(
    ("label", "message"),
    [
        ("", "a label may not be empty"),
        ("   ", "a label may not be empty"),
        ("has space", "invalid label 'has space'"),
        ("a,b", "invalid label 'a,b'"),
        ("tab\there", "invalid label"),
        ("quote'", "invalid label"),
        ("ünïcode", "invalid label"),
        ("x" * (MAX_LABEL_LENGTH + 1), f"longer than {MAX_LABEL_LENGTH} characters"),
    ],
)
def test_invalid_label_is_rejected_with_a_clear_message(label: str, message: str) -> None:
    with pytest.raises(InvalidLabelError, match=message):
        validate_label(label)
    with pytest.raises(InvalidLabelError, match=message):
        normalize_labels(["ok", label])


def test_invalid_label_message_says_what_is_allowed() -> None:
    with pytest.raises(InvalidLabelError) as excinfo:
        validate_label("a b")
    assert "use letters, digits and _ . : / @ + = - (no spaces or commas)" in str(excinfo.value)


@pytest.mark.parametrize("label", [5, None, ["dev"]])
def test_non_string_label_is_rejected(label: object) -> None:
    with pytest.raises(InvalidLabelError, match=f"a label must be a string, not {type(label).__name__}"):
        validate_label(label)  # type: ignore[arg-type]


def test_invalid_label_error_is_a_value_error() -> None:
    # Pydantic turns ValueErrors raised in validators into 422s: the API relies on this.
    assert issubclass(InvalidLabelError, ValueError)


def test_label_of_max_length_is_accepted_and_stripped() -> None:
    label = "x" * MAX_LABEL_LENGTH
    assert validate_label(f"  {label}\n") == label


def test_hostname_label_is_this_hosts_name() -> None:
    assert hostname_label() == socket.gethostname()
