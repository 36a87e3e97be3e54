"""Query modules, one per resource: the only code that talks to the database. Handlers stay thin."""
