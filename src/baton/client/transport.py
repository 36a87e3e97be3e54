"""HTTP/1.1 for the API client, on the standard library's ``http.client``: keep-alive connections pooled per client
(thread-safe), timeouts, and the environment's proxies and CA certificates, as httpx gave before.

Why not httpx: every CLI call, agent and flow-run process paid for it. Importing it cost ~60-130 ms of CPU (its
transport, h11, anyio, certifi, and its CLI's click and rich), and each request ~0.6 ms of the client's CPU against
~0.2 ms here (2 cores, the same loopback server; issue 12). The client needs one plain exchange at a time per
connection, which ``http.client`` does.

What the transport promises its caller (``baton.client.http``):

- An answer of any status is a :class:`Response`; only a missing answer raises, as a :class:`TransportError`.
- :class:`ConnectFailed` means the request was never sent: a caller may retry anything after it. Every other
  failure may follow a request the server carried out (:class:`ConnectionLost`, :class:`TimedOut`).
- Each answer is logged at DEBUG by the ``baton.client`` logger: method, path (no query, headers or body), status
  and time. The flow-run process does not ship these records (they would feed themselves).
- An idle connection the server has closed (its keep-alive timeout) is noticed before it is used, and one idle for
  longer than ``MAX_IDLE_SECONDS`` is not used at all (the server could be closing it as the request goes out);
  a new one is made. A request is never sent twice by the transport itself.
- A path is sent percent-encoded where it must be (a space, a control character); the client's own path segments
  are encoded already (``quote``).
- Proxies come from ``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY`` and ``NO_PROXY`` (either case), as the standard
  library reads them; only ``http://`` proxies are supported (https through them with ``CONNECT``). The CA
  certificates of an https API are ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` when set, else certifi's bundle when
  installed, else the system's.
"""

from __future__ import annotations

import base64
import functools
import http.client
import json as jsonlib
import logging
import os
import select
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import Message
from typing import Any
from urllib.parse import quote, unquote, urlencode, urlsplit

from baton.api_urls import split_api_url

logger = logging.getLogger("baton.client")

# Idle connections kept per client: an agent's loops (claims, heartbeats, state changes) use a few at once.
MAX_IDLE_CONNECTIONS = 8
# An idle connection older than this is closed rather than used: under the server's own keep-alive (20 s,
# ``server.keep_alive_seconds``) and most proxies', so that a request does not race their close of it. A close
# that crosses a request on its way loses that request (ConnectionLost), which a check before sending cannot see.
MAX_IDLE_SECONDS = 15.0


class TransportError(Exception):
    """No answer came: the connection could not be made, broke, or timed out."""


class ConnectFailed(TransportError):
    """The connection to the API (or its proxy) could not be made: the request was never sent."""


class TimedOut(TransportError):
    """No answer within the timeout."""


class ConnectTimedOut(ConnectFailed, TimedOut):
    """The connection could not be made within the timeout: the request was never sent."""


class ConnectionLost(TransportError):
    """The connection broke after the request was (perhaps partly) sent, before the whole answer came."""


@dataclass(frozen=True, slots=True)
class Response:
    """One answer, read whole."""

    status_code: int
    reason_phrase: str
    headers: Message  # case-insensitive ``get``
    content: bytes

    def json(self) -> Any:
        return jsonlib.loads(self.content)

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")


@dataclass(frozen=True, slots=True)
class _Proxy:
    host: str
    port: int
    authorization: str | None  # the Proxy-Authorization header, from the proxy URL's user and password


def _environment_proxy(scheme: str, host: str, port: int) -> _Proxy | None:
    """The proxy the environment sets for ``scheme://host:port``, if any."""
    # Most processes have no proxy variable at all: then urllib.request (~10 ms to import) is not needed.
    if not any(name.lower().endswith("_proxy") for name in os.environ):
        return None
    import urllib.request

    proxies = urllib.request.getproxies_environment()
    # Documented only by its docstring, and absent from typeshed: NO_PROXY as urllib applies it.
    bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
    if bypass(f"{host}:{port}", proxies):
        return None
    url = proxies.get(scheme) or proxies.get("all")
    if not url:
        return None
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme != "http" or not parts.hostname:
        shown = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"  # never its password
        raise ValueError(f"unsupported proxy {shown!r} (from the environment): only http:// proxies are supported")
    authorization = None
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        authorization = "Basic " + base64.b64encode(credentials).decode("ascii")
    return _Proxy(parts.hostname, parts.port or 80, authorization)


@functools.cache
def _tls_context(cafile: str | None, capath: str | None) -> ssl.SSLContext:
    if cafile is None and capath is None:
        try:
            import certifi
        except ImportError:  # the system's certificates
            return ssl.create_default_context()
        cafile = certifi.where()
    return ssl.create_default_context(cafile=cafile, capath=capath)


def tls_context() -> ssl.SSLContext:
    """The context an https API is verified with (see the module's docstring)."""
    return _tls_context(os.environ.get("SSL_CERT_FILE") or None, os.environ.get("SSL_CERT_DIR") or None)


def _query(params: Mapping[str, Any]) -> str:
    pairs: list[tuple[str, str]] = []
    for name, value in params.items():
        for item in value if isinstance(value, list | tuple) else [value]:
            if item is not None:
                pairs.append((name, ("true" if item else "false") if isinstance(item, bool) else str(item)))
    return urlencode(pairs, quote_via=quote)


def _is_dead(connection: http.client.HTTPConnection) -> bool:
    """Whether an idle connection cannot carry a request: closed, or readable (the server closed it, or sent
    something nobody asked for)."""
    sock = connection.sock
    if sock is None:
        return True
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    try:
        if hasattr(select, "poll"):  # select() refuses descriptors past 1023, which a busy agent reaches
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            return bool(poller.poll(0))
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


def _ascii_host(host: str) -> str:
    """``host`` as it goes on the wire: an internationalised name in its IDNA (punycode) form."""
    try:
        host.encode("ascii")
    except UnicodeEncodeError:
        try:
            return host.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise ValueError(f"host {host!r} is not a valid internationalised domain name: {exc}") from exc
    return host


# What a path may hold as it is (RFC 3986 pchar and "/"; "%" keeps escapes the caller made): anything else, a space
# or a control character say, is percent-encoded, as httpx did, rather than refused by http.client.
_PATH_SAFE = "/:@!$&'()*+,;=-._~%"


class HttpTransport:
    """Requests to one API base URL, with default headers and a timeout, on pooled connections.

    Args:
        base_url: ``http://`` or ``https://`` host, port and an optional path prefix (paths are appended to it).
        headers: sent with every request (a request's own headers win).
        timeout: seconds for connecting and for each read of the answer; a request may give its own.
        max_idle_seconds: an idle connection older than this is closed instead of used.

    Raises:
        ValueError: ``base_url`` is not an API URL (``baton.api_urls``), or the environment's proxy for it is not
            an ``http://`` one.
    """

    def __init__(
        self,
        base_url: str,
        headers: Mapping[str, str] | None = None,
        timeout: float = 30.0,
        max_idle_seconds: float = MAX_IDLE_SECONDS,
    ) -> None:
        parts = split_api_url(base_url)  # so it has a host, a valid port, and no user or password
        self._https = parts.scheme == "https"
        self._host = _ascii_host(parts.hostname or "")
        self._port = parts.port or (443 if self._https else 80)
        self._prefix = quote(parts.path.rstrip("/"), safe=_PATH_SAFE)
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self._headers = {"Accept": "application/json", **(headers or {})}
        self.timeout = timeout
        self._proxy = _environment_proxy(parts.scheme, self._host, self._port)
        self._max_idle_seconds = max_idle_seconds
        self._idle: list[tuple[http.client.HTTPConnection, float]] = []  # each with the time it became idle
        self._lock = threading.Lock()
        self._closed = False

    @property
    def is_closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Close every idle connection; requests after this raise RuntimeError."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for connection, _ in idle:
            connection.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Response:
        """Send one request and read its whole answer.

        Raises:
            ConnectFailed: no connection (the request was not sent).
            ConnectionLost, TimedOut: no (whole) answer; the server may have carried the request out.
            RuntimeError: the transport is closed.
        """
        target, send_headers, body = self._prepare(path, params, json, content, headers)
        seconds = self.timeout if timeout is None else timeout
        started = time.monotonic()
        connection = self._checkout(seconds)
        sending: OSError | None = None
        try:
            try:
                connection.request(method, target, body=body, headers=send_headers)
            except (BrokenPipeError, ConnectionResetError) as exc:
                # A server may answer before it has read the whole body (a 413) and close: read that answer.
                sending = exc
            answer = connection.getresponse()
            data = answer.read()
        except TimeoutError as exc:
            connection.close()
            raise TimedOut(f"no answer in {seconds:g} s") from exc
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            cause = sending or exc
            raise ConnectionLost(str(cause) or type(cause).__name__) from cause
        except BaseException:
            connection.close()
            raise
        if answer.will_close:
            connection.close()
        else:
            self._checkin(connection)
        if logger.isEnabledFor(logging.DEBUG):
            elapsed = 1000 * (time.monotonic() - started)
            logger.debug("%s %s -> %d in %.1f ms", method, path, answer.status, elapsed)
        return Response(answer.status, answer.reason, answer.msg, data)

    def _prepare(
        self,
        path: str,
        params: Mapping[str, Any] | None,
        json: Any,
        content: bytes | None,
        headers: Mapping[str, str] | None,
    ) -> tuple[str, dict[str, str], bytes | None]:
        """The request's target, headers and body."""
        target = self._prefix + quote(path, safe=_PATH_SAFE)
        query = _query(params) if params else ""
        if query:
            target += f"?{query}"
        send_headers = dict(self._headers)
        body = content
        if json is not None:
            body = jsonlib.dumps(json, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
            send_headers["Content-Type"] = "application/json"
        for name, value in (headers or {}).items():  # a caller's header replaces the client's, whatever its case
            for same in [other for other in send_headers if other.lower() == name.lower()]:
                del send_headers[same]
            send_headers[name] = value
        if self._proxy is not None and not self._https:  # a forward proxy takes the whole URL
            target = self._origin + target
            if self._proxy.authorization:
                send_headers["Proxy-Authorization"] = self._proxy.authorization
        return target, send_headers, body

    def _checkout(self, timeout: float) -> http.client.HTTPConnection:
        while True:
            with self._lock:
                if self._closed:
                    raise RuntimeError("the client is closed: no request can be sent with it")
                connection, since = self._idle.pop() if self._idle else (None, 0.0)
            if connection is None:
                return self._connect(timeout)
            if time.monotonic() - since > self._max_idle_seconds or _is_dead(connection):
                connection.close()
                continue
            assert connection.sock is not None  # not dead
            connection.sock.settimeout(timeout)
            return connection

    def _checkin(self, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < MAX_IDLE_CONNECTIONS:
                self._idle.append((connection, time.monotonic()))
                return
        connection.close()

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        proxy = self._proxy
        host, port = (proxy.host, proxy.port) if proxy is not None else (self._host, self._port)
        connection: http.client.HTTPConnection | None = None
        try:
            if self._https:
                connection = http.client.HTTPSConnection(host, port, timeout=timeout, context=tls_context())
                if proxy is not None:
                    tunnel = {"Proxy-Authorization": proxy.authorization} if proxy.authorization else None
                    connection.set_tunnel(self._host, self._port, headers=tunnel)
            else:
                connection = http.client.HTTPConnection(host, port, timeout=timeout)
            connection.connect()
        except TimeoutError as exc:
            if connection is not None:
                connection.close()
            raise ConnectTimedOut(f"no connection to {host}:{port} in {timeout:g} s") from exc
        # Refused, no route, a name that does not resolve, TLS (SSL_CERT_FILE unreadable, the certificate refused),
        # a proxy's refusal of the tunnel or an answer to CONNECT that is not HTTP: no byte of the request was sent.
        except (OSError, http.client.HTTPException) as exc:
            if connection is not None:
                connection.close()
            raise ConnectFailed(str(exc) or type(exc).__name__) from exc
        return connection
