"""The engine as a real process against a real API server, started the way an agent starts it."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from engine.conftest import Launcher
from support import wait_for

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_hello_example_succeeds_with_task_runs_and_logs(launcher: Launcher) -> None:
    # Given the newcomer's example registered with api storage and a claimed run
    launcher.register(EXAMPLES / "hello.py")
    engine = launcher.start(launcher.claim("hello", {"name": "Ada"}))

    # When the engine runs it
    exit_code = engine.wait()

    # Then the run succeeded, each task is recorded and print and logging output reached the API
    assert exit_code == 0, engine.stderr
    run = engine.run()
    assert run.state == "Success"
    assert [state.name for state in run.states][-3:] == ["Submitted", "Running", "Success"]
    task_runs = engine.task_runs()
    assert [(t.task_name, t.state, t.attempt) for t in task_runs] == [
        ("make_greeting", "Success", 1),
        ("shout", "Success", 1),
        ("show", "Success", 1),
    ]
    by_task = {t.task_name: t.id for t in task_runs}
    logs = engine.logs()
    printed = [log for log in logs if log.name == "stdout"]
    assert [(log.message, log.task_run_id, log.level) for log in printed] == [("HELLO, ADA!", by_task["show"], 20)]
    greeting = [log for log in logs if log.message == "Making a greeting for Ada"]
    assert len(greeting) == 1
    assert greeting[0].task_run_id == by_task["make_greeting"]
    assert any(log.name == "baton.engine" and "Success" in log.message for log in logs)
    # The real stdout still gets the prints (what `--show-flow-logs` shows)
    assert "HELLO, ADA!" in engine.stdout


def test_failing_flow_ends_failed_with_the_error_and_its_traceback_in_the_logs(launcher: Launcher) -> None:
    launcher.register(EXAMPLES / "failing.py")
    engine = launcher.start(launcher.claim("failing"))

    assert engine.wait() == 1
    run = engine.run()
    assert run.state == "Failed"
    assert run.state_message == "ValueError: something went wrong with 41"
    assert [(t.task_name, t.state, t.attempt, t.message) for t in engine.task_runs()] == [
        ("prepare", "Success", 1, None),
        ("explode", "Failed", 2, "ValueError: something went wrong with 41"),
    ]
    tracebacks = [log.message for log in engine.logs() if "Traceback (most recent call last)" in log.message]
    assert len(tracebacks) == 1
    # The source is kept by the API: the traceback still shows the flow file's lines.
    assert 'raise ValueError(f"something went wrong with {value}")' in tracebacks[0]


def test_parameters_are_validated_against_the_type_hints(launcher: Launcher) -> None:
    # The server checks only JSON types; the engine checks the hints fully: -1 is an integer, but not > 0.
    source = """
        from typing import Annotated
        from pydantic import Field
        from baton import flow

        @flow
        def typed_params(count: Annotated[int, Field(gt=0)], ratio: float = 0.5) -> None:
            print(count * ratio)
    """
    engine = launcher.run_flow(source, "typed_params", {"count": -1})

    assert engine.process.returncode == 1
    run = engine.run()
    assert (run.state, run.state_message) == (
        "Failed",
        "ParameterValidationError: invalid parameters for flow 'typed_params': "
        "count: Input should be greater than 0 (got -1)",
    )
    assert "Running" in [state.name for state in run.states]


def test_parameters_are_converted_before_the_flow_gets_them(launcher: Launcher) -> None:
    source = """
        import datetime
        from baton import flow

        @flow
        def converted(day: datetime.date, ratio: float = 0.5) -> None:
            print(f"{day!r} {ratio!r}")
    """
    engine = launcher.run_flow(source, "converted", {"day": "2026-01-02"})

    assert engine.process.returncode == 0, engine.stderr
    assert [log.message for log in engine.logs() if log.name == "stdout"] == ["datetime.date(2026, 1, 2) 0.5"]


def test_flow_that_cannot_be_loaded_ends_failed_with_a_clear_message(launcher: Launcher) -> None:
    source = """
        from baton import flow
        import baton_module_that_does_not_exist

        @flow
        def unloadable() -> None:
            pass
    """
    path = launcher.write_flow("unloadable", source)
    # Registration imports the file too: send the payload of a loadable copy, then run with the broken source.
    launcher.write_flow("unloadable_ok", source.replace("import baton_module_that_does_not_exist", ""))
    from baton.sdk.registration import build_flow_payload, load_flows

    (flow,) = load_flows(path.with_name("unloadable_ok.py"))
    payload = build_flow_payload(flow, path.with_name("unloadable_ok.py"))
    payload["source"] = path.read_text()
    launcher.admin.register_flow(payload)
    engine = launcher.start(launcher.claim("unloadable"))

    assert engine.wait() == 1
    run = engine.run()
    assert run.state == "Failed"
    assert run.state_message is not None
    assert run.state_message.startswith("FlowLoadError: ")
    assert "line 3: ModuleNotFoundError: No module named 'baton_module_that_does_not_exist'" in run.state_message
    # The process starts the run (Running, and its flow's source, in one request), then loads it.
    assert [state.name for state in run.states][-2:] == ["Running", "Failed"]
    assert launcher.admin.list_task_runs(run.id) == []


def test_local_storage_loads_the_file_from_its_path(launcher: Launcher) -> None:
    path = launcher.write_flow(
        "kept_locally",
        """
        from pathlib import Path
        from baton import flow

        @flow
        def kept_locally() -> None:
            print(Path(__file__).name)
        """,
    )
    launcher.register(path, storage="local")
    engine = launcher.start(launcher.claim("kept_locally"))

    assert engine.wait() == 0, engine.stderr
    assert engine.admin.get_flow(engine.claimed.flow.id).storage.path == str(path)
    assert [log.message for log in engine.logs() if log.name == "stdout"] == ["kept_locally.py"]


@pytest.mark.parametrize(
    ("statement", "message"),
    [("raise KeyboardInterrupt", "KeyboardInterrupt"), ("raise SystemExit(3)", "SystemExit: 3")],
)
def test_keyboard_interrupt_and_system_exit_in_a_flow_end_it_failed(
    launcher: Launcher, statement: str, message: str
) -> None:
    name = f"exits_{'kbd' if 'Keyboard' in statement else 'sys'}"
    source = f"""
        from baton import flow

        @flow
        def {name}() -> None:
            {statement}
    """
    engine = launcher.run_flow(source, name)

    assert engine.process.returncode == 1
    run = engine.run()
    assert (run.state, run.state_message) == ("Failed", message)


def test_run_still_pending_when_the_engine_starts_is_waited_for(launcher: Launcher) -> None:
    launcher.register(EXAMPLES / "hello.py")
    # The agent posts Submitted only after the process started: here, a second later.
    engine = launcher.start(launcher.claim("hello"), submit_delay=1.0)

    assert engine.wait() == 0, engine.stderr
    assert [state.name for state in engine.run().states][-4:] == ["Pending", "Submitted", "Running", "Success"]


def test_run_cancelling_before_the_engine_starts_is_not_run_and_ends_cancelled(launcher: Launcher) -> None:
    launcher.register(EXAMPLES / "hello.py")
    claimed = launcher.claim("hello")
    launcher.runner.set_flow_run_state(claimed.flow_run.id, "Submitted", "PID: 1")
    launcher.admin.cancel_flow_run(claimed.flow_run.id)  # deployed: Cancelling, the deployment must stop

    engine = launcher.start(claimed, submit=False)

    assert engine.wait() == 0, engine.stderr
    run = engine.run()
    assert run.state == "Cancelled"
    assert "Running" not in [state.name for state in run.states]
    assert engine.task_runs() == []


def test_run_that_ended_before_the_engine_starts_is_not_run(launcher: Launcher) -> None:
    launcher.register(EXAMPLES / "hello.py")
    claimed = launcher.claim("hello")
    launcher.admin.cancel_flow_run(claimed.flow_run.id)  # Pending: Cancelled at once, the run token revoked

    engine = launcher.start(claimed, submit=False)

    assert engine.wait() == 1
    assert "has ended" in engine.stderr
    assert engine.run().state == "Cancelled"
    assert engine.task_runs() == []


SLEEPY = """
    import time
    from baton import flow, task

    @task
    def nap() -> None:
        print("napping", flush=True)
        time.sleep(60)

    @flow
    def {name}() -> None:
        nap()
"""


def test_cancel_through_the_api_stops_a_sleeping_task_and_ends_cancelled(launcher: Launcher) -> None:
    launcher.register(launcher.write_flow("sleepy_api", SLEEPY.format(name="sleepy_api")))
    engine = launcher.start(launcher.claim("sleepy_api"))
    wait_for(engine.task_runs, what="the task to start")

    started = time.monotonic()
    launcher.admin.cancel_flow_run(engine.run_id)
    exit_code = engine.wait(timeout=30)

    assert exit_code == 0, engine.stderr
    assert time.monotonic() - started < 10
    run = engine.run()
    assert run.state == "Cancelled"
    assert [state.name for state in run.states][-3:] == ["Running", "Cancelling", "Cancelled"]
    assert [(t.task_name, t.state) for t in engine.task_runs()] == [("nap", "Cancelled")]
    assert any(log.message == "napping" for log in engine.logs())


def test_sigterm_without_a_cancel_ends_the_run_failed(launcher: Launcher) -> None:
    # An agent's cold stop (or an operator) terminates the process of a run nobody cancelled: not a cancellation.
    launcher.register(launcher.write_flow("sleepy_term", SLEEPY.format(name="sleepy_term")))
    engine = launcher.start(launcher.claim("sleepy_term"))
    wait_for(engine.task_runs, what="the task to start")

    engine.process.send_signal(signal.SIGTERM)

    assert engine.wait(timeout=30) == 1, engine.stderr
    run = engine.run()
    assert (run.state, run.state_message) == ("Failed", "the flow-run process was terminated (SIGTERM)")
    assert [(t.task_name, t.state) for t in engine.task_runs()] == [("nap", "Cancelled")]


def test_sigterm_from_the_agent_killing_a_cancelled_run_ends_it_cancelled(launcher: Launcher) -> None:
    # A heartbeat too slow to see the cancel first: the SIGTERM the agent sends on cancel is what stops the flow.
    launcher.register(launcher.write_flow("sleepy_kill", SLEEPY.format(name="sleepy_kill")))
    engine = launcher.start(launcher.claim("sleepy_kill"), BATON__AGENT__HEARTBEAT_INTERVAL_SECONDS="60")
    wait_for(engine.task_runs, what="the task to start")

    launcher.admin.cancel_flow_run(engine.run_id)
    engine.process.send_signal(signal.SIGTERM)

    assert engine.wait(timeout=30) == 0, engine.stderr
    run = engine.run()
    assert (run.state, run.state_message) == (
        "Cancelled",
        "the run is Cancelling: the flow-run process was terminated (SIGTERM)",
    )
    assert [state.name for state in run.states][-3:] == ["Running", "Cancelling", "Cancelled"]
    assert [(t.task_name, t.state) for t in engine.task_runs()] == [("nap", "Cancelled")]


def test_no_cloud_logs_keeps_output_local(launcher: Launcher) -> None:
    launcher.register(EXAMPLES / "hello.py")
    engine = launcher.start(launcher.claim("hello", {"name": "Bo"}), "--no-cloud-logs")

    assert engine.wait() == 0, engine.stderr
    assert engine.logs() == []
    assert "HELLO, BO!" in engine.stdout
    assert "Making a greeting for Bo" in engine.stderr
    assert len(engine.task_runs()) == 3


def test_send_to_api_false_in_the_environment_keeps_output_local(launcher: Launcher) -> None:
    launcher.register(EXAMPLES / "hello.py")
    engine = launcher.start(launcher.claim("hello"), BATON__LOGGING__SEND_TO_API="false")

    assert engine.wait() == 0, engine.stderr
    assert engine.logs() == []
    assert "HELLO, WORLD!" in engine.stdout


def test_many_log_lines_arrive_complete_and_in_order(launcher: Launcher) -> None:
    source = """
        import logging
        from baton import flow

        @flow
        def chatty(lines: int = 1200) -> None:
            for number in range(lines):
                print(f"line {number}")
            logging.getLogger("chatty").warning("done")
    """
    engine = launcher.run_flow(source, "chatty")

    assert engine.process.returncode == 0, engine.stderr
    logs = []
    offset = 0
    while True:
        page = engine.admin.get_logs(engine.run_id, offset=offset)
        logs += page.logs
        if not page.logs:
            break
        offset = page.next_offset
    printed = [log.message for log in logs if log.name == "stdout"]
    assert printed == [f"line {number}" for number in range(1200)]
    assert [(log.level, log.message) for log in logs if log.name == "chatty"] == [(30, "done")]


CHATTY = """
import sys, time
from baton import flow

@flow
def chatty_reader_gone():
    for n in range(20):
        print(f"line {n:02d}", flush=True)
        print(f"err {n:02d}", file=sys.stderr, flush=True)
        time.sleep(0.1)
"""


def test_a_flow_outlives_the_reader_of_its_output(launcher: Launcher) -> None:
    # Given a flow whose output an agent shows (-f: the agent reads the process's stdout and stderr)
    launcher.register(launcher.write_flow("chatty_reader_gone", CHATTY))
    engine = launcher.start(launcher.claim("chatty_reader_gone"))
    wait_for(lambda: any(log.message == "line 02" for log in engine.logs()), what="the flow to print")

    # When that agent goes away (its ends of the pipes close)
    assert engine.process.stdout is not None and engine.process.stderr is not None
    engine.process.stdout.close()
    engine.process.stderr.close()

    # Then the flow goes on to Success, every line still reaching the API, and the process exits 0 (not 120)
    assert engine.process.wait(timeout=30) == 0
    run = engine.run()
    assert run.state == "Success", run.state_message
    messages = [log.message for log in engine.logs()]
    assert [m for m in messages if m.startswith("line ")] == [f"line {n:02d}" for n in range(20)]
    assert [m for m in messages if m.startswith("err ")] == [f"err {n:02d}" for n in range(20)]
