"""``POST /graphql``: the Prefect-1-compatible GraphQL API (docs/design.md, "GraphQL: Prefect 1").

Prefect 1's client expects Prefect Cloud's conventions, which differ from the REST API's:

* a refused credential is an answer of HTTP 200 whose ``errors`` say ``UNAUTHENTICATED`` (the client turns that text
  into its ``AuthorizationError``); too many failed attempts from one address is still a 429 with Retry-After, which
  the client waits out. ``authentication.AuthenticateFirst`` checks the credential from the headers, as for the REST
  API, before any of the body is read, and tells its refusals so;
* ``variables`` may be an object or a JSON string (the client sends ``json.dumps(variables)``, ``"null"`` included);
* errors of the operation come back with HTTP 200 and an ``extensions.code`` (``core.format_error``); a request that
  is not a GraphQL request at all (not JSON, no query) is a 400 with an ``errors`` list.

The whole operation runs in one worker thread: its resolvers are plain functions that read and write the database.
"""

from __future__ import annotations

import json
import logging
from functools import cache
from typing import Any

from ariadne import graphql_sync
from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse, Response
from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLSchema,
    InlineFragmentNode,
    OperationDefinitionNode,
    OperationType,
    parse,
)

from baton.server.graphql.core import Context, format_error
from baton.server.graphql.schema import build_schema
from baton.server.json_body import parse_json_body
from baton.server.models.tenants import Principal
from baton.server.worker_threads import run_in_worker

# Prefect 1's largest operations are a few hundred tokens: this bounds the parser's work on a hostile query.
MAX_TOKENS = 5000
# Root fields per operation: Prefect 1's client sends one mutation at a time and a query or two. Aliases would
# otherwise repeat a costly field (a registration, a thousand flows) many times over in one small request.
MAX_MUTATION_FIELDS = 1
MAX_QUERY_FIELDS = 10
# ariadne logs every error a resolver raises, with its traceback: refusals (FORBIDDEN, BAD_USER_INPUT) are answers,
# not server faults, and ``core.format_error`` logs the unexpected ones itself.
# A level above every record, not ``disabled``: uvicorn's dictConfig (disable_existing_loggers=False) clears that flag
# on loggers that exist when it runs.
_QUIET = logging.getLogger("baton.graphql.ariadne")
_QUIET.setLevel(logging.CRITICAL + 1)
_QUIET.propagate = False


@cache
def schema() -> GraphQLSchema:
    return build_schema()


def _error(message: str, code: str) -> dict[str, Any]:
    return {"message": message, "extensions": {"code": code}}


def _bad_request(message: str) -> JSONResponse:
    return JSONResponse({"errors": [_error(message, "BAD_REQUEST")]}, status_code=400)


def _operation(payload: Any) -> dict[str, Any] | str:
    """The request's query, variables and operation name, or why they are not a GraphQL request."""
    if not isinstance(payload, dict):
        return "the body must be a JSON object with a 'query'"
    query, variables, name = payload.get("query"), payload.get("variables"), payload.get("operationName")
    if not isinstance(query, str) or not query.strip():
        return "'query' must be a non-empty string"
    if isinstance(variables, str):
        try:
            variables = parse_json_body(variables.encode())
        except (HTTPException, ValueError):
            return "'variables' is a string that is not a JSON object"
    if variables is not None and not isinstance(variables, dict):
        return "'variables' must be an object (or a JSON string of one)"
    if name is not None and not isinstance(name, str):
        return "'operationName' must be a string"
    return {"query": query, "variables": variables, "operationName": name}


def _root_fields(selections: Any, fragments: dict[str, FragmentDefinitionNode], depth: int = 0) -> int:
    count = 0
    for selection in selections:
        if isinstance(selection, FieldNode):
            count += 1
        elif depth < 10 and isinstance(selection, InlineFragmentNode):
            count += _root_fields(selection.selection_set.selections, fragments, depth + 1)
        elif depth < 10 and isinstance(selection, FragmentSpreadNode) and selection.name.value in fragments:
            count += _root_fields(fragments[selection.name.value].selection_set.selections, fragments, depth + 1)
    return count


def _parse(_: Any, data: dict[str, Any]) -> DocumentNode:
    document = parse(data["query"], max_tokens=MAX_TOKENS)
    fragments = {node.name.value: node for node in document.definitions if isinstance(node, FragmentDefinitionNode)}
    for node in document.definitions:
        if isinstance(node, OperationDefinitionNode):
            mutation = node.operation == OperationType.MUTATION
            limit = MAX_MUTATION_FIELDS if mutation else MAX_QUERY_FIELDS
            if _root_fields(node.selection_set.selections, fragments) > limit:
                kind = "a mutation" if mutation else "an operation"
                raise GraphQLError(f"{kind} may have at most {limit} root field(s) here: send them apart")
    return document


def _execute(operation: dict[str, Any], context: Context) -> dict[str, Any]:
    try:
        _, result = graphql_sync(
            schema(),
            operation,
            context_value=context,
            query_parser=_parse,
            error_formatter=format_error,
            logger=_QUIET,
        )
    except RecursionError:  # a selection nested thousands deep, within the token bound
        return {"data": None, "errors": [_error("the query is nested too deeply", "BAD_USER_INPUT")]}
    answer: dict[str, Any] = result
    return answer


async def serve(request: Request) -> Response:
    state = request.app.state
    principal: Principal = request.state.principal  # authentication.AuthenticateFirst refused everyone else
    try:
        payload = parse_json_body(await request.body())
    except json.JSONDecodeError as exc:
        return _bad_request(f"the body is not JSON: {exc.msg} at position {exc.pos}")
    except HTTPException as exc:
        return _bad_request(str(exc.detail))
    operation = _operation(payload)
    if isinstance(operation, str):
        return _bad_request(operation)
    agent_id = request.headers.get("x-prefect-agent-id")
    context = Context(
        principal,
        read_sessions=state.read_session_factory,
        sessions=state.session_factory,
        server=state.settings.server,
        agent_id=agent_id if agent_id and len(agent_id) <= 64 else None,
    )
    return JSONResponse(await run_in_worker(_execute, operation, context))
