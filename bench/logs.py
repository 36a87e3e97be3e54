"""Issue 8, item 8: how many of a flow's printed lines reach the API, how fast, and what a quota leaves behind.

Starts a real API server (SQLite in a temporary $BATON_HOME, or ``--database-url``), runs a real flow-run process
(``python -m baton.engine``) of a flow that prints ``--lines`` lines, and prints: lines stored, lines in order,
the time the run took, the marker line and the final state message. Twice: with the server's quota above the
line count, then with ``--quota`` lines. Run with::

    .venv/bin/python bench/logs.py                       # 1,000,000 lines; quota 100,000 for the second run
    .venv/bin/python bench/logs.py --lines 50000 --quota 10000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from security.input_support import run_chatty_flow
from support import ServerProcess


def measure(lines: int, quota: int, database_url: str | None) -> None:
    env = {"BATON__SERVER__MAX_LOG_LINES_PER_RUN": str(quota)}
    if database_url:
        env["BATON__SERVER__DATABASE_URL"] = database_url
    with tempfile.TemporaryDirectory(prefix="baton-bench-logs-") as home:
        server = ServerProcess(Path(home), **env).start()
        try:
            chatty = run_chatty_flow(server, server.client(), lines, timeout=3600)
        finally:
            server.stop()
    stdout = [log.message for log in chatty.logs if log.name == "stdout"]
    in_order = stdout == [f"line {number}" for number in range(len(stdout))]
    markers = [log.message for log in chatty.logs if log.name == "baton.server"]
    print(f"printed {lines:,} lines, server quota {quota:,} lines per run")
    print(f"  run: {chatty.run.state} in {chatty.seconds:.1f} s (exit code {chatty.exit_code})")
    rate = len(stdout) / chatty.seconds
    print(f"  stored: {len(stdout):,} printed lines ({rate:,.0f} lines/s), in order: {in_order}")
    print(f"  marker line: {markers[0] if markers else '(none)'}")
    print(f"  final state message: {chatty.run.state_message!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--quota", type=int, default=100_000, help="the quota of the second run (lines)")
    parser.add_argument("--database-url", default=None, help="e.g. postgresql://... (default: SQLite)")
    args = parser.parse_args()
    measure(args.lines, args.lines + 10_000, args.database_url)
    measure(args.lines, args.quota, args.database_url)


if __name__ == "__main__":
    main()
