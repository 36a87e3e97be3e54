"""Hostile executor specs and tasks in real flow runs (issue 14's review).

A run's executor spec enters by REST, the CLI, the Python client and a flow's registered run config: a bad one is a
422 (a non-zero exit and one line from the CLI), never a 500 or a traceback; one the pattern lets through but that
cannot work (a closed port, an unconfigured tls://) ends the run Failed at once, saying why. Tasks that return what
cannot travel, raise what cannot be shown or rebuilt, die, or raise BaseExceptions end their task runs Failed with
a message that says so, and the run ends with a state, never a hang or a crashed engine."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from baton.exceptions import ClientError
from baton.schemas.responses import LogRead
from cli_runner import run_cli
from engine.conftest import Launcher
from support import clean_env, free_port

ONE_TASK = """
from baton import flow, task


@task
def one():
    return 1


@flow
def {name}() -> int:
    return one.submit().result()
"""

# Each is refused by POST /api/flow_runs with 422 naming "executor".
BAD_SPECS: list[object] = [
    "",
    "process:0",
    "thread:0",
    "thread:99999",
    "thread:-1",
    "thread:1.5",
    "THREAD:8",
    "Sequential",
    " thread:8",
    "thread:8 ",
    "thread:8\n",
    "thread:\u0668",  # ARABIC-INDIC DIGIT EIGHT: a digit to str.isdigit, not to the spec
    "thread:\uff18",  # FULLWIDTH DIGIT EIGHT
    "thread\x00:8",
    "dask:",
    "dask:tcp://",
    "dask:tcp:// ",
    "dask:http://127.0.0.1:8786",
    "dask:inproc://x",
    "dask:tcp://127.0.0.1:8786/path",
    "dask:tcp://127.0.0.1",  # no port: dask's client needs one
    "dask:tcp://127.0.0.1:0",
    "dask:tcp://[",
    "dask:tcp://:8786",
    "dask:tcp://...:8786",
    "dask:tcp://[::1]",
    "dask:tcp://user@127.0.0.1:8786",
    "dask:tcp://" + "a" * 250,
    "thread:" + "9" * 10_000,
    8,
    True,
    0,  # falsy values must not slip past as "no executor"
    [],
    ["thread:8"],
    {"kind": "thread"},
]


def test_bad_executor_specs_are_422_naming_the_field_never_500(launcher: Launcher) -> None:
    launcher.register(launcher.write_flow("one_task", ONE_TASK.format(name="one_task")))
    headers = {"Authorization": f"Bearer {launcher.admin.create_api_key('user', 'hostile').key}"}
    with httpx.Client(base_url=launcher.server.url, headers=headers, timeout=30) as http:
        for spec in BAD_SPECS:
            answer = http.post("/api/flow_runs", json={"flow_name": "one_task", "executor": spec})
            assert answer.status_code == 422, (spec, answer.status_code, answer.text)
            assert "executor" in json.dumps(answer.json()), (spec, answer.text)

        nul = http.post(  # a NUL in raw JSON text, as an attacker sends it
            "/api/flow_runs",
            content=b'{"flow_name": "one_task", "executor": "thread:8\\u0000"}',
            headers={"Content-Type": "application/json"},
        )
        assert nul.status_code == 422, nul.text
    for spec in ("process:0", "dask:tcp://", "thread:99999"):
        with pytest.raises(ClientError) as refused:
            launcher.admin.create_flow_run(flow_name="one_task", executor=spec)
        assert refused.value.status_code == 422 and "executor" in str(refused.value)


@pytest.mark.parametrize(
    "spec", ["process:0", "thread:99999", "dask:tcp://", "dask:tcp://[", "THREAD", "thread:\u0668", "x" * 5000]
)
def test_baton_run_with_a_bad_executor_exits_non_zero_with_one_line_naming_it(
    launcher: Launcher, tmp_path: Path, spec: str
) -> None:
    launcher.register(launcher.write_flow("one_task", ONE_TASK.format(name="one_task")))
    key = launcher.admin.create_api_key("user", "cli").key
    env = clean_env(tmp_path, BATON__API__URL=launcher.server.url, BATON__API__KEY=key)

    result = run_cli(["run", "one_task", "--executor", spec], env)

    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "executor" in lines[0], result.stderr
    assert launcher.admin.list_flow_runs(flow_name="one_task") == []


def test_a_run_config_registered_with_a_bad_executor_is_422_and_a_good_one_is_the_runs(launcher: Launcher) -> None:
    from baton.sdk.registration import build_flow_payload, load_flows

    path = launcher.write_flow("configured", ONE_TASK.format(name="configured"))
    payload = build_flow_payload(load_flows(path)[0], path, storage="api")
    for spec in ("process:0", "dask:tcp://", "thread:8\n", 8):
        payload["run_config"]["executor"] = spec
        with pytest.raises(ClientError) as refused:
            launcher.admin.register_flow(payload)
        assert refused.value.status_code == 422 and "executor" in str(refused.value)

    payload["run_config"]["executor"] = "thread:2"
    launcher.admin.register_flow(payload)
    engine = launcher.start(launcher.claim("configured"))

    assert engine.wait() == 0, engine.stderr
    run = engine.run()
    assert (run.state, run.run_config.executor) == ("Success", "thread:2")


def test_specs_the_pattern_allows_but_that_cannot_work_fail_the_run_at_once_saying_why(launcher: Launcher) -> None:
    pytest.importorskip("distributed", reason="dask.distributed is not installed (pip install 'baton[dask]')")
    launcher.register(launcher.write_flow("one_task", ONE_TASK.format(name="one_task")))
    closed = free_port()  # nothing listens there: refused at once, not after dask's 30 s of retries
    expected = {
        f"dask:tcp://127.0.0.1:{closed}": f"cannot reach the dask scheduler at tcp://127.0.0.1:{closed}: Connection "
        "refused",
        "dask:tcp://127.0.0.1:99999": "the dask scheduler address 'tcp://127.0.0.1:99999' needs a host and a port "
        "from 1 to 65535",
        f"dask:tls://127.0.0.1:{closed}": f"the dask scheduler tls://127.0.0.1:{closed} is tls:// but the flow-run "
        "process has no dask TLS settings",
    }
    engines = {spec: launcher.start(launcher.claim("one_task", executor=spec)) for spec in expected}

    for spec, message in expected.items():
        engine = engines[spec]
        assert engine.wait() == 1, engine.stderr
        run = engine.run()
        assert run.state == "Failed"
        assert (run.state_message or "").startswith(f"ExecutorError: {message}"), (spec, run.state_message)
        assert engine.task_runs() == []  # the flow never started


PROCESS_HOSTILE = """
import logging
import os
import signal
import threading

from baton import ProcessExecutor, flow, task

log = logging.getLogger("hostile")


class NeedsArg(Exception):
    def __init__(self, code, text):
        super().__init__(text)
        self.code = code


class Unprintable(Exception):
    def __str__(self):
        raise ValueError("no text")


class BadReduce:
    def __reduce__(self):
        raise RuntimeError("no pickling for you")


class BadRepr:
    def __repr__(self):
        raise ValueError("no repr")

    __str__ = __repr__


@task
def returns_a_lambda():
    return lambda: 1


@task
def returns_a_generator():
    return (i for i in range(3))


@task
def returns_a_lock():
    return threading.Lock()


@task
def returns_bad_reduce():
    return BadReduce()


@task
def returns_bad_repr():
    return BadRepr()


@task
def raises_needs_arg():
    raise NeedsArg(3, "the disk is full")


@task
def raises_unprintable():
    raise Unprintable()


@task
def exits():
    os._exit(3)


@task
def kills_itself():
    os.kill(os.getpid(), signal.SIGKILL)


@task
def chatty():
    for _ in range(3000):
        print("y" * 999)  # 3 MB: more than an attempt keeps
    return "said"


@task
def after(value):
    return value


HOSTILE = [
    returns_a_lambda, returns_a_generator, returns_a_lock, returns_bad_reduce, raises_needs_arg,
    raises_unprintable, exits, kills_itself,
]


@flow(executor=ProcessExecutor(4))
def {name}() -> str:
    failed = [hostile.submit() for hostile in HOSTILE]
    skipped = after.submit(failed[0])
    for future in [*failed, skipped]:
        assert future.exception() is not None
    assert isinstance(returns_bad_repr.submit().result(), BadRepr)
    return chatty.submit().result()
"""


def test_process_tasks_whose_outcome_cannot_travel_or_whose_process_dies_fail_saying_so(launcher: Launcher) -> None:
    launcher.register(launcher.write_flow("process_hostile", PROCESS_HOSTILE.format(name="process_hostile")))
    engine = launcher.start(launcher.claim("process_hostile"))

    assert engine.wait() == 0, engine.stderr

    assert engine.run().state == "Success"
    by_name = {t.task_name: t for t in engine.task_runs()}
    results = "TaskTransferError: the task's result ({}) cannot be sent back from its process: "
    expected = {
        "returns_a_lambda": results.format("a function") + "AttributeError: Can't pickle local object",
        "returns_a_generator": results.format("a generator") + "TypeError: cannot pickle 'generator' object",
        "returns_a_lock": results.format("a lock") + "TypeError: cannot pickle '_thread.lock' object",
        "returns_bad_reduce": results.format("a BadReduce") + "RuntimeError: no pickling for you",
        "raises_needs_arg": "TaskTransferError: the task raised NeedsArg: the disk is full, which cannot be sent back "
        "from its process: TypeError: NeedsArg.__init__() missing 1 required positional argument: 'text'",
        "raises_unprintable": "Unprintable: <its message cannot be shown: str() raised ValueError>",
        "exits": "TaskProcessDied: the process of task 'exits' ended (exit code 3) without an outcome",
        "kills_itself": "TaskProcessDied: the process of task 'kills_itself' was killed by signal SIGKILL without an "
        "outcome",
        "after": f"not run: upstream task 'returns_a_lambda' (task run {by_name['returns_a_lambda'].id}) did not "
        "succeed",
    }
    for name, message in expected.items():
        assert by_name[name].state == "Failed", (name, by_name[name].state, by_name[name].message)
        assert (by_name[name].message or "").startswith(message), (name, by_name[name].message)
    assert (by_name["returns_bad_repr"].state, by_name["chatty"].state) == ("Success", "Success")
    chatty = [log.message for log in _all_logs(launcher, engine.run_id) if log.task_run_id == by_name["chatty"].id]
    assert chatty[-1] == "[baton: 2000000 more characters were dropped: an attempt keeps 1000000]"
    assert len(chatty) == 1001  # the lines kept (a million characters) and the note


def _all_logs(launcher: Launcher, run_id: str) -> list[LogRead]:
    logs: list[LogRead] = []
    offset = 0
    while (page := launcher.admin.get_logs(run_id, offset=offset)).logs:
        logs.extend(page.logs)
        offset = page.next_offset  # the last line's id, not a count
    return logs


THREAD_BASE_EXCEPTIONS = """
from baton import ThreadExecutor, flow, task


@task
def interrupted():
    raise KeyboardInterrupt()


@task
def exits():
    raise SystemExit(4)


@task
def fine():
    return 1


@flow(executor=ThreadExecutor(4))
def {name}(read: bool = False) -> int:
    interrupted.submit()
    if read:
        exits.submit().result()  # raises SystemExit in the flow's thread
    return fine.submit().result()
"""


@pytest.mark.parametrize(
    ("read", "message"),
    [
        (
            False,
            "TaskFailed: 1 submitted task(s) failed and the flow did not read them: 'interrupted' (KeyboardInterrupt)",
        ),
        (True, "SystemExit: 4"),
    ],
    ids=["unread-KeyboardInterrupt", "read-SystemExit"],
)
def test_base_exceptions_raised_by_tasks_on_threads_end_the_run_failed(
    launcher: Launcher, read: bool, message: str
) -> None:
    launcher.register(launcher.write_flow("base_exceptions", THREAD_BASE_EXCEPTIONS.format(name="base_exceptions")))
    engine = launcher.start(launcher.claim("base_exceptions", {"read": read}))

    assert engine.wait() == 1, engine.stderr

    run = engine.run()
    assert (run.state, run.state_message) == ("Failed", message)
    by_name = {t.task_name: t for t in engine.task_runs()}
    assert (by_name["interrupted"].state, by_name["interrupted"].message) == ("Failed", "KeyboardInterrupt")
    if read:
        assert (by_name["exits"].state, by_name["exits"].message) == ("Failed", "SystemExit: 4")
    assert {t.state for t in by_name.values()} <= {"Failed", "Success"}


DASK_HOSTILE = """
import threading

from baton import DaskExecutor, flow, task


class NeedsArg(Exception):
    def __init__(self, code, text):
        super().__init__(text)
        self.code = code


@task
def returns_a_generator():
    return (i for i in range(3))


@task
def returns_a_lock():
    return threading.Lock()


@task
def raises_needs_arg():
    raise NeedsArg(3, "the disk is full")


@task
def after(value):
    return value


@task
def takes(value):
    return 1


@task
def says(word):
    print(word)
    return word


@flow(executor=DaskExecutor(cluster_kwargs={{"n_workers": 2, "threads_per_worker": 2}}))
def {name}() -> list:
    failed = [returns_a_generator.submit(), returns_a_lock.submit(), raises_needs_arg.submit()]
    assert takes.submit(threading.Lock()).exception() is not None  # an argument that cannot reach the cluster
    skipped = [after.submit(future) for future in failed]  # would wait for ever for a result no worker can send
    for future in [*failed, *skipped]:
        assert future.exception() is not None
    return [future.result() for future in says.map(["one", "two", "three", "four"])]
"""


def test_dask_tasks_whose_outcome_cannot_leave_the_worker_fail_saying_so_and_prints_stay_apart(
    launcher: Launcher,
) -> None:
    pytest.importorskip("distributed", reason="dask.distributed is not installed (pip install 'baton[dask]')")
    launcher.register(launcher.write_flow("dask_hostile", DASK_HOSTILE.format(name="dask_hostile")))
    engine = launcher.start(launcher.claim("dask_hostile"))

    assert engine.wait(timeout=120) == 0, engine.stderr

    assert engine.run().state == "Success"
    task_runs = engine.task_runs()
    by_name = {t.task_name: t for t in task_runs}
    results = "TaskTransferError: the task's result ({}) cannot be sent back from the dask worker: TypeError: "
    expected = {
        "returns_a_generator": results.format("a generator"),
        "returns_a_lock": results.format("a lock"),
        "raises_needs_arg": "TaskTransferError: the task raised NeedsArg: the disk is full, which cannot be sent back "
        "from the dask worker: TypeError: NeedsArg.__init__() missing 1 required positional argument: 'text'",
        "takes": "TaskTransferError: task 'takes' cannot be sent to the dask cluster: argument 1 (a lock): "
        "TypeError: cannot pickle '_thread.lock' object",
    }
    for name, message in expected.items():
        assert by_name[name].state == "Failed", (name, by_name[name].state)
        assert (by_name[name].message or "").startswith(message), (name, by_name[name].message)
    skipped = [t for t in task_runs if t.task_name == "after"]
    assert [t.state for t in skipped] == ["Failed"] * 3
    assert all("not run: upstream task" in (t.message or "") for t in skipped)
    by_id = {t.id: t.task_name for t in task_runs}
    printed = {(by_id[log.task_run_id], log.message) for log in engine.logs() if log.name == "stdout"}
    assert printed == {(f"says[{i}]", word) for i, word in enumerate(["one", "two", "three", "four"])}


UNPRINTABLE = """
from baton import flow


class Unprintable(Exception):
    def __str__(self):
        raise ValueError("no text")


@flow
def {name}() -> None:
    raise Unprintable()
"""


def test_a_flow_raising_an_error_whose_text_raises_ends_failed_not_running(launcher: Launcher) -> None:
    launcher.register(launcher.write_flow("unprintable", UNPRINTABLE.format(name="unprintable")))
    engine = launcher.start(launcher.claim("unprintable"))

    assert engine.wait() == 1, engine.stderr

    run = engine.run()
    assert (run.state, run.state_message) == (
        "Failed",
        "Unprintable: <its message cannot be shown: str() raised ValueError>",
    )
