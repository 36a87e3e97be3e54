"""Background services of the API server, one small module each, run by ``services.runner``."""
