"""A flow that fails on purpose: its run ends Failed, with the error in its message and the traceback in its logs.

Usage::

    baton register examples/failing.py
    baton run failing --watch      # exits 1
"""

from __future__ import annotations

from baton import flow, task


@task
def prepare() -> int:
    print("preparing")
    return 41


@task(retries=1)
def explode(value: int) -> None:
    raise ValueError(f"something went wrong with {value}")


@flow
def failing() -> None:
    """Always fails, in its second task."""
    explode(prepare())


if __name__ == "__main__":
    failing()
