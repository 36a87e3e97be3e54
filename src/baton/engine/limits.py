"""The API's size limits that the engine keeps to, so that the server never refuses what it sends.

They mirror the server's limits in ``baton.schemas.actions`` (``MAX_MESSAGE_LENGTH``, ``MAX_LOGS_PER_BATCH``,
``LogEntry.name``, ``MAX_TASK_RUN_STATES``,
``MAX_TASK_RUNS_PER_CREATE``, ``MAX_BATCH_MESSAGE_LENGTH``). The engine keeps its own copy because importing
``baton.schemas.actions`` (every request model of the API) costs each flow-run process 10-15 ms at start, for six
numbers. A test (``test_the_engines_limits_are_the_servers``) fails when a copy drifts from the server's value.
"""

MAX_MESSAGE_LENGTH = 100_000  # characters of a state message or a log line
MAX_LOGS_PER_BATCH = 1000  # log lines in one POST /api/flow_runs/{id}/logs
MAX_LOG_NAME_LENGTH = 500  # characters of a log line's logger name
MAX_TASK_RUN_STATES = 1000  # task-run states in one POST /api/flow_runs/{id}/task_runs/states
MAX_TASK_RUNS_PER_CREATE = 1000  # task runs in one POST /api/flow_runs/{id}/task_runs/batch
MAX_BATCH_MESSAGE_LENGTH = 1000  # characters of a message in a batch; a longer one goes on its own
