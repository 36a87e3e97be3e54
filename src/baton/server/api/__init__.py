"""Thin routers: parse, authorise, delegate to ``server.models``, convert to response schemas."""
