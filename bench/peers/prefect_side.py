"""Prefect 3's setup for bench/peers.py, run by it with the Prefect virtual environment's Python (not Baton's).

For each name given: a ``process`` work pool of that name and a deployment ``hello/<name>`` in it of ``flow.py``
from ``--flow-dir``, a local directory (no image, no remote storage: Prefect's pull step just enters the directory).
A pool per workload keeps one workload's leftovers away from the next one's worker. Writes ``{"prefect":
version, "deployments": {name: id}}`` as JSON to ``--out`` (stdout carries Prefect's own tables).

Everything else (runs, states, processes) bench/peers.py does over Prefect's REST API, from Baton's environment,
where it can read /proc with bench/throughput.py's helpers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import prefect
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.workers.process import ProcessWorker


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flow-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("names", nargs="+")
    args = parser.parse_args()
    deployments = {}
    hello = flow.from_source(source=str(args.flow_dir.resolve()), entrypoint="flow.py:hello")
    with get_client(sync_client=True) as client:
        for name in args.names:
            # What `prefect work-pool create --type process` does, in this process: each `prefect` command costs
            # seconds of imports.
            template = ProcessWorker.get_default_base_job_template()
            client.create_work_pool(WorkPoolCreate(name=name, type="process", base_job_template=template))
            deployment_id = hello.deploy(
                name=name,
                work_pool_name=name,
                build=False,
                push=False,
                print_next_steps=False,
                ignore_warnings=True,
            )
            deployments[name] = str(deployment_id)
    args.out.write_text(json.dumps({"prefect": prefect.__version__, "deployments": deployments}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
