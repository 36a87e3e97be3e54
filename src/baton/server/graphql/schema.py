"""The executable schema: ``schema.graphql`` bound to the scalars and the resolvers of each module."""

from __future__ import annotations

from importlib import resources

from ariadne import make_executable_schema
from graphql import GraphQLSchema

from baton.server.graphql import agents, core, flow_runs, flows, projects, run_logs, task_runs, tenants


def build_schema() -> GraphQLSchema:
    text = resources.files("baton.server.graphql").joinpath("schema.graphql").read_text(encoding="utf-8")
    return make_executable_schema(
        text,
        tenants.query,
        projects.query,
        projects.mutation,
        projects.project_type,
        flows.query,
        flows.mutation,
        flows.jsonb,
        flows.json_scalar,
        flow_runs.query,
        flow_runs.mutation,
        flow_runs.flow_run_type,
        task_runs.query,
        task_runs.mutation,
        task_runs.task_run_type,
        run_logs.mutation,
        agents.query,
        agents.mutation,
        core.uuid_scalar,
        core.uuid_upper_scalar,
        core.timestamptz,
    )
