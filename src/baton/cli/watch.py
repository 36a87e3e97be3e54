"""Follow a flow run: print its state changes and log lines as they arrive, until it reaches a final state.

Used by ``baton run --watch`` and ``baton runs logs --follow``. Each poll reads the run (with its state
history, so no transition is missed between polls) and the log lines after the last offset, and prints both
in time order.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from rich.console import Console
from rich.live import Live
from rich.spinner import Spinner
from rich.text import Text

from baton.cli.output import format_time, level_name, stderr_console, stdout_console
from baton.exceptions import ServerUnavailableError
from baton.schemas.states import is_final

if TYPE_CHECKING:
    from datetime import datetime

    from baton.client.http import Client
    from baton.schemas.responses import FlowRunRead, LogRead, StateRead

LOG_PAGE_SIZE = 1000
# A server restart or a network blip should not end a watch: give up after this many failed polls in a row.
MAX_FAILED_POLLS = 30

_STATE_STYLES = {"Success": "bold green", "Failed": "bold red", "Cancelled": "bold yellow"}


def state_line(state: StateRead) -> Text:
    text = Text(f"{format_time(state.timestamp)}  ")
    text.append(f"state {state.name}", style=_STATE_STYLES.get(state.name, "bold"))
    if state.message:
        text.append(f": {state.message}")
    return text


def log_line(log: LogRead) -> Text:
    text = Text(f"{format_time(log.timestamp)}  ")
    text.append(f"{level_name(log.level):<8}", style="red" if log.level >= 40 else "dim")
    text.append(f" {log.name}: {log.message}")
    return text


class RunFollower:
    """Prints what is new in one flow run at each :meth:`poll`."""

    def __init__(
        self,
        client: Client,
        flow_run_id: str,
        *,
        show_states: bool = True,
        poll_interval: float = 1.0,
        console: Console | None = None,
    ) -> None:
        self.client = client
        self.flow_run_id = flow_run_id
        self.show_states = show_states
        self.poll_interval = poll_interval
        self.console = console or stdout_console()
        self._states_seen = 0
        self._log_offset = 0

    def fetch_logs(self) -> list[LogRead]:
        """The log lines written since the last call, all pages of them."""
        lines: list[LogRead] = []
        while True:
            page = self.client.get_logs(self.flow_run_id, offset=self._log_offset, limit=LOG_PAGE_SIZE)
            lines.extend(page.logs)
            advanced = page.next_offset != self._log_offset
            self._log_offset = page.next_offset
            if len(page.logs) < LOG_PAGE_SIZE or not advanced:
                return lines

    def poll(self) -> FlowRunRead:
        """Print the state changes and log lines that are new since the last poll; return the run."""
        run = self.client.get_flow_run(self.flow_run_id)
        events: list[tuple[datetime, Text]] = []
        if self.show_states:
            events.extend((state.timestamp, state_line(state)) for state in run.states[self._states_seen :])
        self._states_seen = len(run.states)
        events.extend((log.timestamp, log_line(log)) for log in self.fetch_logs())
        for _, text in sorted(events, key=lambda event: event[0]):
            self.console.print(text)
        return run

    def follow(self, on_poll: Callable[[FlowRunRead], None] | None = None) -> FlowRunRead:
        """Poll until the run is final; return it.

        Raises:
            ServerUnavailableError: the API could not be reached for ``MAX_FAILED_POLLS`` polls in a row.
        """
        failed_polls = 0
        while True:
            try:
                run = self.poll()
            except ServerUnavailableError:
                failed_polls += 1
                if failed_polls >= MAX_FAILED_POLLS:
                    raise
                time.sleep(self.poll_interval)
                continue
            failed_polls = 0
            if on_poll is not None:
                on_poll(run)
            if is_final(run.state):
                return run
            time.sleep(self.poll_interval)


@contextmanager
def spinner(initial: str, output: Console) -> Iterator[tuple[Callable[[str], None], Console]]:
    """A status line with a spinner on stderr while waiting.

    Yields a function that changes the status text, and the console to print on while the spinner turns:
    ``output``, or, when ``output`` is the terminal too, the spinner's own console, which keeps the spinner
    below the printed lines (rich's stdout redirection cannot: consoles bypass it). Nothing is drawn when
    stderr is not a terminal, so logs and pipes stay clean.
    """
    console = stderr_console()
    if not console.is_terminal:
        yield (lambda _text: None), output
        return
    status = Spinner("dots", text=Text(initial))
    live = Live(
        status, console=console, transient=True, refresh_per_second=12.5, redirect_stdout=False, redirect_stderr=False
    )
    with live:
        yield (lambda text: status.update(text=Text(text))), (console if output.is_terminal else output)
