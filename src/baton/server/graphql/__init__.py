"""The Prefect-1-compatible GraphQL API (issue 13): ``POST /graphql``. See ``endpoint`` and docs/design.md."""

from baton.server.graphql.endpoint import PATH, graphql_endpoint

__all__ = ["PATH", "graphql_endpoint"]
