"""The Python client of Baton's REST API.

Usage::

    from baton import Client
    client = Client.from_settings(load_settings())
    run = client.create_flow_run(flow_name="hello", parameters={"name": "Ada"})
"""

from baton.client.http import Client

__all__ = ["Client"]
