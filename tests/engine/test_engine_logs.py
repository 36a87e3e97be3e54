from __future__ import annotations

import io
import logging
import sys
import threading
import time
from typing import Any, cast

import pytest

from baton.client import Client
from baton.engine import logs as logs_module
from baton.engine.logs import ApiLogHandler, LogShipper, StreamTee, console_logging, ship_output
from baton.exceptions import ClientError, ServerUnavailableError
from baton.sdk.context import inside_task_run
from engine.fakes import FakeApi, flow_read
from support import wait_for


@pytest.fixture
def api() -> FakeApi:
    return FakeApi(flow_read("", "unused"))


def shipper_for(api: FakeApi, **kwargs: Any) -> LogShipper:
    return LogShipper(cast(Client, api), "run-1", **kwargs)


def messages(api: FakeApi) -> list[str]:
    return [entry["message"] for entry in api.logs]


def test_a_full_batch_is_sent_at_once_without_waiting_for_the_interval(api: FakeApi) -> None:
    with shipper_for(api, batch_interval=30, batch_size=3) as shipper:
        for number in range(3):
            shipper.emit(20, "test", f"line {number}")
        wait_for(lambda: api.logs, timeout=5, what="the full batch")
        assert messages(api) == ["line 0", "line 1", "line 2"]
        assert api.calls == ["write_logs"]


def test_lines_are_sent_after_the_interval_when_the_batch_is_not_full(api: FakeApi) -> None:
    with shipper_for(api, batch_interval=0.1, batch_size=100) as shipper:
        shipper.emit(20, "test", "alone")
        wait_for(lambda: api.logs, timeout=5, what="the interval's batch")
    assert messages(api) == ["alone"]


def test_close_flushes_what_is_left_and_later_lines_are_ignored(api: FakeApi) -> None:
    shipper = shipper_for(api, batch_interval=30, batch_size=5000)
    for number in range(2500):
        shipper.emit(20, "test", str(number))
    shipper.start()
    shipper.close()
    shipper.emit(20, "test", "after close")

    assert messages(api) == [str(number) for number in range(2500)]
    assert api.batch_sizes == [1000, 1000, 500]  # batches are capped at the API's limit


def test_entries_carry_key_timestamp_level_name_and_task_run(api: FakeApi) -> None:
    with shipper_for(api) as shipper:
        shipper.emit(40, "flow.logger", "boom", "task-run-9")
    (entry,) = api.logs
    assert set(entry) == {"key", "timestamp", "level", "name", "message", "task_run_id"}
    assert len(entry["key"]) == 32
    assert entry["timestamp"].endswith("+00:00")
    assert (entry["level"], entry["name"], entry["message"], entry["task_run_id"]) == (
        40,
        "flow.logger",
        "boom",
        "task-run-9",
    )


def test_a_batch_is_retried_with_the_same_keys_while_the_api_is_unavailable(api: FakeApi) -> None:
    api.fail["write_logs"] = [ServerUnavailableError("down"), ServerUnavailableError("still down")]
    with shipper_for(api, batch_interval=0.05) as shipper:
        shipper.emit(20, "test", "survives")
        wait_for(lambda: api.logs, timeout=10, what="the retried batch")
    assert messages(api) == ["survives"]
    assert api.calls == ["write_logs"] * 3


def test_a_refused_batch_is_dropped_and_reported_on_stderr(api: FakeApi, capfd: pytest.CaptureFixture[str]) -> None:
    api.fail["write_logs"] = [ClientError(422, "message too long")]
    with shipper_for(api, batch_interval=0.05) as shipper:
        shipper.emit(20, "test", "refused")
        wait_for(lambda: api.calls, timeout=5, what="the refused call")
        shipper.emit(20, "test", "accepted")
    assert messages(api) == ["accepted"]
    assert "the API refused 1 log lines: message too long (HTTP 422)" in capfd.readouterr().err


def test_close_gives_up_after_the_flush_timeout_when_the_api_stays_down(
    api: FakeApi, capfd: pytest.CaptureFixture[str]
) -> None:
    api.fail["write_logs"] = [ServerUnavailableError("down")] * 1000
    shipper = shipper_for(api, batch_interval=30, flush_timeout=0.5)
    shipper.start()
    shipper.emit(20, "test", "lost")
    started = time.monotonic()
    shipper.close()
    assert time.monotonic() - started < 5
    assert api.logs == []
    assert "1 log lines could not be sent to the API (1 unsent: the API was unavailable" in capfd.readouterr().err
    assert shipper.dropped == 1


def test_a_full_buffer_makes_the_printing_thread_wait_and_drops_nothing(api: FakeApi) -> None:
    # Given a shipper whose API answers slowly and a buffer of 10 lines
    release = threading.Event()
    slow_write = api.write_logs

    def write_logs(flow_run_id: str, logs: list[dict[str, Any]]) -> Any:
        release.wait(5)
        return slow_write(flow_run_id, logs)

    api.write_logs = write_logs  # type: ignore[method-assign]
    shipper = shipper_for(api, batch_interval=0.01, batch_size=10, max_buffer=10)
    shipper.start()
    # When a thread prints far more lines than the buffer holds
    printer = threading.Thread(target=lambda: [shipper.emit(20, "test", str(n)) for n in range(100)])
    printer.start()
    printer.join(0.5)
    # Then it waits for room instead of dropping lines, and every line arrives once and in order
    assert printer.is_alive()
    release.set()
    printer.join(10)
    shipper.close()
    assert messages(api) == [str(number) for number in range(100)]
    assert shipper.dropped == 0
    assert shipper.drop_summary() is None


def test_lines_left_when_the_flush_deadline_passes_are_counted_with_the_reason(api: FakeApi) -> None:
    release = threading.Event()
    slow_write = api.write_logs

    def write_logs(flow_run_id: str, logs: list[dict[str, Any]]) -> Any:
        release.wait(2)
        return slow_write(flow_run_id, logs)

    api.write_logs = write_logs  # type: ignore[method-assign]
    shipper = shipper_for(api, batch_interval=30, batch_size=10, flush_timeout=0.2)
    for number in range(50):
        shipper.emit(20, "test", str(number))
    shipper.start()
    shipper.close()
    release.set()

    assert shipper.dropped + len(api.logs) == 50
    assert shipper.dropped >= 10
    assert f"{shipper.dropped} log lines could not be sent to the API" in (shipper.drop_summary() or "")
    assert "flush deadline" in (shipper.drop_summary() or "")


def test_long_messages_are_cut_to_the_api_limit(api: FakeApi) -> None:
    with shipper_for(api) as shipper:
        shipper.emit(20, "test", "x" * 200_000)
    assert len(api.logs[0]["message"]) == 100_000


def test_stream_tee_writes_through_and_ships_whole_lines_tagged_with_the_task_run(api: FakeApi) -> None:
    real = io.StringIO()
    with shipper_for(api) as shipper:
        tee = StreamTee(real, shipper, logging.INFO, "stdout")
        tee.write("partial ")
        with inside_task_run("task-run-1"):
            tee.write("line\nsecond line\r\nno newline")
        tee.finish()
    assert real.getvalue() == "partial line\nsecond line\r\nno newline"
    assert [(e["message"], e["task_run_id"], e["name"]) for e in api.logs] == [
        ("partial line", "task-run-1", "stdout"),
        ("second line", "task-run-1", "stdout"),
        ("no newline", None, "stdout"),
    ]


def test_stream_tee_keeps_partial_lines_of_threads_apart(api: FakeApi) -> None:
    real = io.StringIO()
    with shipper_for(api) as shipper:
        tee = StreamTee(real, shipper, logging.INFO, "stdout")
        tee.write("main ")
        thread = threading.Thread(target=lambda: tee.write("thread line\n"))
        thread.start()
        thread.join()
        tee.write("line\n")
    assert messages(api) == ["thread line", "main line"]


def test_log_handler_ships_records_with_tracebacks_and_a_librarys_but_not_the_api_clients(api: FakeApi) -> None:
    # The engine's requests are logged by baton.client (shipping them would feed itself); httpx's records can only
    # be the flow's own.
    with shipper_for(api) as shipper:
        handler = ApiLogHandler(shipper)
        flow_logger = logging.getLogger("baton.tests.flow")
        flow_logger.addHandler(handler)
        try:
            try:
                raise ValueError("inner problem")
            except ValueError:
                flow_logger.exception("it failed")
            for name in ("httpx", "baton.client"):
                logging.getLogger(name).addHandler(handler)
                logging.getLogger(name).warning("HTTP Request: POST ...")
        finally:
            flow_logger.removeHandler(handler)
            for name in ("httpx", "baton.client"):
                logging.getLogger(name).removeHandler(handler)
    entry, library = api.logs
    assert (library["name"], library["message"]) == ("httpx", "HTTP Request: POST ...")
    assert entry["level"] == logging.ERROR
    assert entry["name"] == "baton.tests.flow"
    assert entry["message"].startswith("it failed\nTraceback (most recent call last):")
    assert "ValueError: inner problem" in entry["message"]


def test_ship_output_captures_print_and_logging_then_restores_everything(api: FakeApi) -> None:
    saved = sys.stdout, sys.stderr
    root_handlers = list(logging.getLogger().handlers)
    with shipper_for(api) as shipper, console_logging("INFO"), ship_output(shipper):
        print("printed")
        print("complained", file=sys.stderr)
        logging.getLogger("baton.tests.capture").info("logged")
        logging.getLogger("baton.tests.capture").debug("below the level")
    assert (sys.stdout, sys.stderr) == saved
    assert logging.getLogger().handlers == root_handlers
    assert [(e["name"], e["level"], e["message"]) for e in api.logs] == [
        ("stdout", logging.INFO, "printed"),
        ("stderr", logging.WARNING, "complained"),
        ("baton.tests.capture", logging.INFO, "logged"),
    ]


def test_text_the_api_refuses_is_replaced_not_sent_to_fail_its_batch() -> None:
    from baton.engine.logs import storable
    from baton.schemas.actions import LogEntry

    for text in ("a\x00b", "file-\udcff.csv", "plain"):
        LogEntry.model_validate({"timestamp": "2030-01-01T00:00:00Z", "message": storable(text)})
    assert storable("file-\udcff.csv") == "file-\\udcff.csv"
    assert storable("a\x00b") == "a\ufffdb"
    assert storable("plain ✓") == "plain ✓"


def test_closing_with_keep_returns_the_last_lines_unsent_after_every_line_sent(api: FakeApi) -> None:
    # Given a shipper whose buffer holds 7 lines, batches of 3, none sent yet
    shipper = shipper_for(api, batch_interval=30, batch_size=3)
    for number in range(7):
        shipper.emit(20, "test", f"line {number}")

    # When it starts and closes at once, keeping up to 5 lines (never more than a batch: 3)
    shipper.start()
    kept = shipper.close(keep=5)

    # Then the first lines were sent, in batches, and the last 3 or fewer come back, in order, after them: each
    # line once, in either
    sent = messages(api)
    assert sent + [entry["message"] for entry in kept] == [f"line {n}" for n in range(7)]
    assert 0 < len(kept) <= 3
    assert api.batch_sizes == [3] * (len(sent) // 3)
    assert shipper.dropped == 0


def test_closing_without_keep_sends_every_line(api: FakeApi) -> None:
    shipper = shipper_for(api, batch_interval=30, batch_size=3)
    shipper.start()
    shipper.emit(20, "test", "only")

    assert shipper.close() == []
    assert messages(api) == ["only"]


def test_closing_keeps_no_more_than_its_character_budget(api: FakeApi, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given lines that together pass the budget of what may go with the final state
    monkeypatch.setattr(logs_module, "KEEP_CHARACTERS", 1000)
    shipper = shipper_for(api, batch_interval=30, batch_size=100)
    for number in range(5):
        shipper.emit(20, "test", f"{number}" * 400)

    # When it closes, keeping up to 100 lines
    shipper.start()
    kept = shipper.close(keep=100)

    # Then they were sent rather than kept
    assert kept == []
    assert len(api.logs) == 5
