"""Hasura-style ``where`` and ``order_by`` arguments, as Prefect 1's client sends them, turned into SQL.

Prefect Server 1 served its queries through Hasura, and the 1.4.1 client relies on Hasura's reading of them:

* ``{field: {_eq: null}}`` filters nothing (Hasura's null-collapse: ``prefect get flow-runs`` sends ``_eq: null``
  for every option left out);
* ``_and``, ``_or`` and ``_not`` nest; an empty ``_and`` filters nothing and an empty ``_or`` matches nothing;
* ``_in: []`` matches nothing and ``_nin: []`` everything; ``_is_null: true`` matches a NULL column;
* ``order_by`` is an object or a list of objects, each ``{field: asc|desc|asc_nulls_first|...}``.

Which fields and operators exist is the schema's business (``schema.graphql``: graphql-core refuses any other key
before a resolver runs); this module maps each field to a column given by the resolver. Timestamps arrive as aware
datetimes (the ``timestamptz`` scalar), so they compare as times whatever offset the client wrote.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, UnaryExpression, and_, false, not_, or_, true
from sqlalchemy.orm import QueryableAttribute


@dataclass(frozen=True)
class Related:
    """A relationship's filter (``{project: {name: {_eq: "etl"}}}``): the inner expression is read over ``columns``,
    and ``link`` makes of its condition one on the outer row (e.g. ``Flow.project_id IN (SELECT ...)``)."""

    columns: Columns
    link: Callable[[ColumnElement[bool]], ColumnElement[bool]]


# A GraphQL field's column (or relationship), by the field's name.
Columns = Mapping[str, ColumnElement[Any] | QueryableAttribute[Any] | Related]

_COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    "_eq": operator.eq,
    "_neq": operator.ne,
    "_gt": operator.gt,
    "_gte": operator.ge,
    "_lt": operator.lt,
    "_lte": operator.le,
}


class UnsupportedFilter(ValueError):
    """A ``where`` key this server does not map to a column (the schema and the resolver disagree)."""


def where_clause(expression: Mapping[str, Any] | None, columns: Columns) -> ColumnElement[bool]:
    """The SQL condition of a Hasura boolean expression over ``columns``."""
    if not expression:
        return true()
    parts: list[ColumnElement[bool]] = []
    for key, value in expression.items():
        if value is None:  # null-collapse: an operand left out
            continue
        if key == "_and":
            parts.extend(where_clause(item, columns) for item in value)
        elif key == "_or":  # an empty _or matches nothing (Hasura's reading: no alternative holds)
            parts.append(or_(*(where_clause(item, columns) for item in value)) if value else false())
        elif key == "_not":
            parts.append(not_(where_clause(value, columns)))
        elif isinstance(related := columns.get(key), Related):
            parts.append(related.link(where_clause(value, related.columns)))
        elif key in columns:
            parts.extend(_comparisons(columns[key], value))  # type: ignore[arg-type]  # not Related: checked above
        else:
            raise UnsupportedFilter(f"filtering on {key!r} is not supported")
    return and_(true(), *parts)


def _comparisons(
    column: ColumnElement[Any] | QueryableAttribute[Any], comparison: Mapping[str, Any]
) -> list[ColumnElement[bool]]:
    parts: list[ColumnElement[bool]] = []
    for name, operand in comparison.items():
        if operand is None:
            continue
        if name in _COMPARE:
            parts.append(_COMPARE[name](column, operand))
        elif name == "_in":
            parts.append(column.in_(operand))
        elif name == "_nin":
            parts.append(column.not_in(operand))
        elif name == "_is_null":
            parts.append(column.is_(None) if operand else column.is_not(None))
        else:
            raise UnsupportedFilter(f"the operator {name!r} is not supported")
    return parts


_DIRECTIONS = {
    "asc": lambda column: column.asc(),
    "desc": lambda column: column.desc(),
    "asc_nulls_first": lambda column: column.asc().nulls_first(),
    "asc_nulls_last": lambda column: column.asc().nulls_last(),
    "desc_nulls_first": lambda column: column.desc().nulls_first(),
    "desc_nulls_last": lambda column: column.desc().nulls_last(),
}


def order_clauses(
    order_by: Mapping[str, str | None] | Sequence[Mapping[str, str | None]] | None, columns: Columns
) -> list[UnaryExpression[Any]]:
    """The SQL ordering of a Hasura ``order_by`` (an object, or a list of them applied in turn)."""
    if not order_by:
        return []
    items = [order_by] if isinstance(order_by, Mapping) else list(order_by)
    clauses: list[UnaryExpression[Any]] = []
    for item in items:
        for key, direction in item.items():
            if direction is None:
                continue
            column = columns.get(key)
            if column is None or isinstance(column, Related):
                raise UnsupportedFilter(f"ordering by {key!r} is not supported")
            clauses.append(_DIRECTIONS[direction](column))
    return clauses
