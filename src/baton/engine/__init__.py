"""The flow-run process: ``python -m baton.engine`` runs one flow run and reports it to the API.

Agents start it with the environment of DESIGN.md §6. Its imports are kept small, because every flow run pays
for them: no rich, FastAPI or SQLAlchemy here.
"""
