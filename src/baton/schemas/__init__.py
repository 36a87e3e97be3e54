"""Pydantic models shared by the server and the client: actions (input), core, responses."""
