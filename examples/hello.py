"""The first flow to run: three tasks, one that logs with ``logging`` and one that prints.

Run it here and now, without a server::

    python examples/hello.py

Or register it and let an agent run it::

    baton server start &
    baton agent local start --no-hostname-label &
    baton register examples/hello.py
    baton run hello --param name=Ada --watch

The run has no labels, and an agent with labels never takes unlabelled runs (Prefect 1's rule); the local agent
labels itself with its hostname unless told ``--no-hostname-label``. ``baton runs explain ID`` says why a run waits.
"""

from __future__ import annotations

import logging

from baton import flow, task

logger = logging.getLogger(__name__)


@task
def make_greeting(name: str) -> str:
    """Build the greeting; logs what it does."""
    logger.info("Making a greeting for %s", name)
    return f"Hello, {name}!"


@task(retries=2, retry_delay_seconds=1)
def shout(greeting: str) -> str:
    return greeting.upper()


@task
def show(text: str) -> None:
    """Print the result: print output ends up in the run's logs too."""
    print(text)


@flow
def hello(name: str = "world") -> str:
    """Say hello to someone."""
    greeting = make_greeting(name)
    loud = shout(greeting)
    show(loud)
    return loud


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    hello()
