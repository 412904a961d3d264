"""A toxiproxy-compatible server for machines where the real toxiproxy binary cannot run.

``ToxiproxyServer`` serves the toxiproxy v2 HTTP API in-process; ``python -m
zart_conformance.toxiproxy`` (or ``zart-toxiproxy``) runs it as a command like the real one.
"""

from .proxy import STREAMS, TOXIC_ATTRIBUTES, ListenError, Proxy, Toxic
from .server import VERSION, ApiError, ToxiproxyServer

__all__ = [
    "STREAMS",
    "TOXIC_ATTRIBUTES",
    "VERSION",
    "ApiError",
    "ListenError",
    "Proxy",
    "Toxic",
    "ToxiproxyServer",
]
