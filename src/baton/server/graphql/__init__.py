"""The Prefect-1-compatible GraphQL API (issue 13): ``POST /graphql``. See ``endpoint`` and docs/design.md §11."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import Response

PATH = "/graphql"


async def graphql_endpoint(request: Request) -> Response:
    # Imported at the first GraphQL request, not at every server start: ariadne, graphql-core and the schema cost
    # ~0.1 s of CPU that servers nobody sends GraphQL to need not pay.
    from baton.server.graphql.endpoint import serve

    return await serve(request)


__all__ = ["PATH", "graphql_endpoint"]
