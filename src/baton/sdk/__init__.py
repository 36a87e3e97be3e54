"""The Python SDK: ``@flow``, ``@task``, run configs, storage and flow registration.

Import the public names from ``baton`` (``from baton import flow, task, LocalRun``); this package stays
empty so that importing one of its modules costs only that module.
"""
