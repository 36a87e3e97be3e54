"""``python -m baton.engine``: run one flow run in this process (agents start it; see DESIGN.md §6).

The environment gives the API (``BATON__API__URL``), the run token (``BATON__API__KEY``) and the run
(``BATON_FLOW_RUN_ID``; ``BATON_FLOW_ID`` and ``BATON_TENANT_ID`` are informative). Exit code: 0 when the run
ends Success (or was cancelled), 1 when it ends Failed, 2 when the process is misconfigured.
"""

from __future__ import annotations

import argparse
import os
import sys

EXIT_USAGE = 2


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m baton.engine",
        description="Run one Baton flow run in this process and report its states, task runs and logs to "
        "the API. Agents start it with BATON__API__URL, BATON__API__KEY (the run token) and "
        "BATON_FLOW_RUN_ID set.",
    )
    parser.add_argument(
        "--flow-run-id",
        default=os.environ.get("BATON_FLOW_RUN_ID"),
        help="the flow run to run (default: $BATON_FLOW_RUN_ID)",
    )
    parser.add_argument(
        "--no-cloud-logs",
        action="store_true",
        help="do not send logs to the API (also: BATON__LOGGING__SEND_TO_API=false)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the flow run named by the arguments and environment; return the exit code."""
    args = _parse_args(argv)
    if not args.flow_run_id:
        print("baton.engine: no flow run: set BATON_FLOW_RUN_ID or pass --flow-run-id", file=sys.stderr)
        return EXIT_USAGE

    from baton.client.http import Client
    from baton.engine.runner import FlowRunner
    from baton.exceptions import ConfigurationError
    from baton.settings import load_settings

    try:
        settings = load_settings(logging={"send_to_api": False} if args.no_cloud_logs else {})
        client = Client.from_settings(settings)
    except ConfigurationError as exc:
        print(f"baton.engine: {exc}", file=sys.stderr)
        return EXIT_USAGE
    with client:
        runner = FlowRunner(
            client,
            args.flow_run_id,
            settings,
            flow_id=os.environ.get("BATON_FLOW_ID"),
            tenant_id=os.environ.get("BATON_TENANT_ID"),
        )
        return runner.run()


if __name__ == "__main__":
    sys.exit(main())
