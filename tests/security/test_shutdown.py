"""Item 11: SIGTERM while agents long-poll ends their polls at once with an empty answer, and the server exits
cleanly: no "timeout graceful shutdown exceeded", no ASGI traceback."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest

from baton.client import Client
from baton.schemas.responses import ClaimResponse
from support import ServerProcess, wait_for


def test_sigterm_ends_long_polls_and_the_server_exits_cleanly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Spawned, not forked from the tests' zygote: the whole life of `python -m baton.server`, exit code included
    monkeypatch.setattr(ServerProcess, "zygote", None)
    server = ServerProcess(tmp_path).start()
    try:
        admin = server.client()
        runner_key = admin.create_api_key("runner", name="agents").key
        answers: list[ClaimResponse | BaseException] = []

        def poll(agent_id: str) -> None:
            with Client(server.url, runner_key, timeout=90) as runner:
                try:
                    answers.append(runner.claim(agent_id, wait_seconds=60))
                except BaseException as exc:
                    answers.append(exc)

        with Client(server.url, runner_key) as runner:
            agent_ids = [runner.register_agent(f"poller-{i}", "local", [f"nothing-{i}"]).id for i in range(3)]
        polls = [threading.Thread(target=poll, args=(agent_id,)) for agent_id in agent_ids]
        for thread in polls:
            thread.start()
        time.sleep(0.5)  # the polls are waiting on the server (a claim answers at once only when a run is due)
        assert server.process is not None
        # When the server is told to stop
        server.process.send_signal(signal.SIGTERM)
        exit_code = server.process.wait(15)
        for thread in polls:
            thread.join(15)
        # Then every poll got an empty answer, and the server exited 0 without error lines
        assert [a for a in answers if not isinstance(a, ClaimResponse)] == []
        assert [a.runs for a in answers if isinstance(a, ClaimResponse)] == [[], [], []]
        assert exit_code == 0
        log = wait_for(server.log, what="server log")
        for bad in ("Traceback", "timeout graceful shutdown exceeded", "ERROR", "Exception in ASGI"):
            assert bad not in log, log
    finally:
        server.stop()
