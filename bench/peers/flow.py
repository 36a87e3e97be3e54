"""The peers' trivial flow for Prefect 3: the same work as Baton's bench flow (tests/support.py's HELLO_SOURCE),
a task that prints a greeting with the run's parameter; ``log_prints`` ships the line to the API as Baton's engine
ships a run's prints."""

from prefect import flow, task


@task
def greet(name: str) -> str:
    print(f"hello {name}")
    return name


@flow(log_prints=True)
def hello(name: str = "world") -> str:
    return greet(name)
