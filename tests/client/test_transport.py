"""The API client's HTTP transport (``baton.client.transport``) against real sockets on 127.0.0.1: keep-alive and
stale connections, what each failure proves about a request, timeouts, proxies from the environment (a forward
proxy, and CONNECT to an https server verified through SSL_CERT_FILE), and many threads on one client."""

from __future__ import annotations

import json
import os
import resource
import select
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from baton.client import Client
from baton.client.http import is_unreachable, may_have_reached_the_server
from baton.client.transport import (
    MAX_IDLE_CONNECTIONS,
    ConnectFailed,
    ConnectionLost,
    HttpTransport,
    TimedOut,
    _tls_context,
)
from baton.exceptions import ClientError, ConfigurationError, ServerUnavailableError
from baton.settings import load_settings
from support import free_port

PROXY_VARIABLES = [f"{name}{suffix}" for name in ("http", "https", "all", "no") for suffix in ("_proxy", "_PROXY")]


@pytest.fixture(autouse=True)
def no_proxy_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@dataclass
class Seen:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    connection: int  # which TCP connection carried it (1, 2, ...)
    authorizations: list[str] = field(default_factory=list)


class _Quiet(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class _Served:
    """An HTTP server on 127.0.0.1, serving from a daemon thread until :meth:`stop`."""

    _server: ThreadingHTTPServer | None = field(default=None, init=False)

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.server_address[1]

    def _serve(self, handler: type[BaseHTTPRequestHandler], tls: ssl.SSLContext | None = None) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


@dataclass
class EchoServer(_Served):
    """Answers every request with 200 and a JSON echo of it; ``close_after_each`` closes every connection after its
    answer without saying so (as a server whose keep-alive timeout passed); ``tls`` serves https."""

    close_after_each: bool = False
    tls: ssl.SSLContext | None = None
    seen: list[Seen] = field(default_factory=list)
    connections: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> EchoServer:
        echo = self

        class Handler(_Quiet):
            def setup(self) -> None:
                super().setup()
                with echo._lock:
                    echo.connections += 1
                    self.number = echo.connections

            def _answer(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                seen = Seen(self.command, self.path, headers, body, self.number, self.headers.get_all("Authorization"))
                with echo._lock:
                    echo.seen.append(seen)
                answer = json.dumps({"target": self.path, "connection": self.number}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.send_header("X-Next-Cursor", "abc")
                self.end_headers()
                self.wfile.write(answer)
                self.wfile.flush()
                if echo.close_after_each:
                    self.close_connection = True

            do_GET = do_POST = do_PUT = do_DELETE = _answer

        self._serve(Handler, self.tls)
        return self


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer().start()
    yield server
    server.stop()


def test_requests_share_one_keep_alive_connection_and_carry_the_clients_headers(echo: EchoServer) -> None:
    with Client(f"http://127.0.0.1:{echo.port}/prefix/", "bat_key") as client:
        first = client.request("POST", "/api/x", json={"name": "Ada ✓", "n": 1})
        client.request("GET", "/api/y", params={"flag": True, "off": False, "tags": ["a b", "c/d"], "none": None})
        client.request("GET", "/api/z", headers={"authorization": "Bearer other"})
        client.request("GET", "/api/flow_runs/a b\n")  # an id from outside: encoded, as httpx did, not refused
    assert first == {"target": "/prefix/api/x", "connection": 1}
    post, get, own, spaced = echo.seen
    assert [seen.connection for seen in echo.seen] == [1, 1, 1, 1]
    assert json.loads(post.body) == {"name": "Ada ✓", "n": 1}
    assert post.headers["content-type"] == "application/json"
    assert post.headers["authorization"] == "Bearer bat_key" and post.headers["user-agent"].startswith("baton/")
    assert get.target == "/prefix/api/y?flag=true&off=false&tags=a%20b&tags=c%2Fd"
    assert own.authorizations == ["Bearer other"]  # replaced, whatever the case, not sent twice
    assert spaced.target == "/prefix/api/flow_runs/a%20b%0A"


def test_a_connection_the_server_closed_while_idle_is_replaced_and_the_request_sent_once() -> None:
    server = EchoServer(close_after_each=True).start()
    try:
        with Client(f"http://127.0.0.1:{server.port}", "k") as client:
            for _ in range(3):
                client.request("POST", "/api/state", json={})
                time.sleep(0.05)  # the server's close reaches the idle connection
        assert [seen.connection for seen in server.seen] == [1, 2, 3]
        assert len(server.seen) == 3  # nothing sent twice
    finally:
        server.stop()


def test_a_connection_idle_past_the_limit_is_not_used(echo: EchoServer) -> None:
    # The server could be closing it as the request goes out: a crossing close loses the request
    transport = HttpTransport(f"http://127.0.0.1:{echo.port}", max_idle_seconds=0.2)
    transport.request("GET", "/a")
    transport.request("GET", "/b")  # at once: the same connection
    time.sleep(0.3)
    transport.request("GET", "/c")
    transport.close()
    assert [seen.connection for seen in echo.seen] == [1, 1, 2]


def test_headers_of_the_answer_are_read_whatever_their_case(echo: EchoServer) -> None:
    transport = HttpTransport(f"http://127.0.0.1:{echo.port}")
    answer = transport.request("GET", "/")
    assert answer.headers.get("x-next-cursor") == answer.headers.get("X-Next-Cursor") == "abc"
    transport.close()
    assert transport.is_closed
    with pytest.raises(RuntimeError, match="closed"):
        transport.request("GET", "/")


# --- what each failure proves ------------------------------------------------------------------


def _listener(behaviour: Callable[[socket.socket], None]) -> Iterator[int]:
    """A TCP server on 127.0.0.1 that hands each accepted connection to ``behaviour``; yields its port."""
    sock = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        sock.settimeout(0.1)
        while not stop.is_set():
            try:
                connection, _ = sock.accept()
            except TimeoutError:
                continue
            threading.Thread(target=behaviour, args=(connection,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield sock.getsockname()[1]
    stop.set()
    thread.join()
    sock.close()


def _read_request(connection: socket.socket) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        if not chunk:
            return
        data += chunk


@pytest.fixture
def hangs_up() -> Iterator[int]:
    def behaviour(connection: socket.socket) -> None:
        _read_request(connection)
        connection.close()

    yield from _listener(behaviour)


@pytest.fixture
def never_answers() -> Iterator[int]:
    def behaviour(connection: socket.socket) -> None:
        _read_request(connection)
        select.select([connection], [], [], 5)
        connection.close()

    yield from _listener(behaviour)


def test_a_refused_connection_proves_the_request_never_left() -> None:
    with Client(f"http://127.0.0.1:{free_port()}", "k") as client, pytest.raises(ServerUnavailableError) as caught:
        client.request("POST", "/api/flow_runs", json={})
    assert isinstance(caught.value.__cause__, ConnectFailed)
    assert not may_have_reached_the_server(caught.value) and is_unreachable(caught.value)
    assert "cannot reach the API" in str(caught.value)


def test_a_connection_closed_after_the_request_may_have_reached_the_server(hangs_up: int) -> None:
    with Client(f"http://127.0.0.1:{hangs_up}", "k") as client, pytest.raises(ServerUnavailableError) as caught:
        client.request("POST", "/api/flow_runs", json={})
    assert isinstance(caught.value.__cause__, ConnectionLost)
    assert may_have_reached_the_server(caught.value) and is_unreachable(caught.value)


def test_no_answer_within_the_timeout_is_a_timeout_that_may_have_reached_the_server(never_answers: int) -> None:
    started = time.monotonic()
    with Client(f"http://127.0.0.1:{never_answers}", "k", timeout=0.3) as client:
        with pytest.raises(ServerUnavailableError, match="did not answer in time") as caught:
            client.request("GET", "/api/health")
        assert isinstance(caught.value.__cause__, TimedOut)
        assert may_have_reached_the_server(caught.value)
        # A request's own timeout wins (a long poll's)
        with pytest.raises(ServerUnavailableError, match=r"no answer in 0\.5 s"):
            client.request("GET", "/api/health", timeout=0.5)
    assert time.monotonic() - started < 4


@pytest.mark.parametrize(
    "url",
    [
        "ftp://127.0.0.1:1",
        "http://",
        "127.0.0.1:4200",
        "http://[::1",
        "http://127.0.0.1:42\n00",  # urlsplit drops the newline: it would reach port 4200
        "http://agent:s3cret@127.0.0.1:4200",
        "http://127.0.0.1:4200?x=1",
    ],
)
def test_a_malformed_url_is_a_configuration_error_that_shows_no_password(url: str) -> None:
    with pytest.raises(ConfigurationError, match="invalid API URL") as caught:
        Client(url, "k")
    assert "s3cret" not in str(caught.value)
    with pytest.raises(ConfigurationError, match=r"invalid API URL|must start with") as caught:
        load_settings(api={"url": url})
    assert "s3cret" not in str(caught.value)


def test_a_key_no_header_can_carry_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="character an HTTP header cannot carry"):
        Client("http://127.0.0.1:4200", "bat_abc\nInjected: 1")


def test_an_internationalised_host_goes_on_the_wire_in_its_idna_form() -> None:
    assert HttpTransport("https://bücher.example:4200")._host == "xn--bcher-kva.example"


def test_an_answer_sent_before_the_whole_body_was_read_is_the_answer() -> None:
    # A server (or a proxy with a body limit) that answers 413 after the headers and closes without reading on
    def behaviour(connection: socket.socket) -> None:
        _read_request(connection)
        connection.sendall(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\nConnection: close\r\n\r\ntoo large")
        connection.close()

    for port in _listener(behaviour):
        with Client(f"http://127.0.0.1:{port}", "k") as client, pytest.raises(ClientError) as caught:
            client.upload_bundle("a" * 64, b"x" * (16 * 1024 * 1024))
        assert caught.value.status_code == 413


def test_keep_alive_holds_in_a_process_with_more_than_1024_descriptors(echo: EchoServer) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"this process may open only {hard} files")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    pipes = [os.pipe() for _ in range(550)]  # the client's sockets get descriptors past 1023
    try:
        with Client(f"http://127.0.0.1:{echo.port}", "k") as client:
            for _ in range(5):
                client.request("GET", "/api/health")
        assert {seen.connection for seen in echo.seen} == {1}
    finally:
        for read, write in pipes:
            os.close(read)
            os.close(write)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# --- many threads on one client (the agent's loops) ---------------------------------------------


def test_threads_sharing_a_client_each_get_their_own_answer_on_a_bounded_pool(echo: EchoServer) -> None:
    answers: dict[int, list[str]] = {}
    with Client(f"http://127.0.0.1:{echo.port}", "k") as client:

        def work(number: int) -> None:
            answers[number] = [client.request("GET", f"/t{number}/{i}")["target"] for i in range(40)]

        threads = [threading.Thread(target=work, args=(n,)) for n in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        idle = len(client._http._idle)  # type: ignore[attr-defined]
    assert answers == {n: [f"/t{n}/{i}" for i in range(40)] for n in range(12)}
    assert 1 <= idle <= MAX_IDLE_CONNECTIONS
    assert echo.connections <= 12  # connections are reused, at most one per thread at a time


# --- proxies from the environment ---------------------------------------------------------------


@dataclass
class Proxy(_Served):
    """A forward proxy (absolute-URI requests) and CONNECT tunnel, recording what it was asked."""

    asked: list[tuple[str, str, str | None]] = field(default_factory=list)  # method, target, Proxy-Authorization

    def start(self) -> Proxy:
        proxy = self

        class Handler(_Quiet):
            def _forward(self) -> None:
                proxy.asked.append((self.command, self.path, self.headers.get("Proxy-Authorization")))
                from urllib.parse import urlsplit

                parts = urlsplit(self.path)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with socket.create_connection((parts.hostname, parts.port or 80)) as upstream:
                    target = parts.path + (f"?{parts.query}" if parts.query else "")
                    headers = "".join(
                        f"{k}: {v}\r\n" for k, v in self.headers.items() if k.lower() != "proxy-authorization"
                    )
                    upstream.sendall(f"{self.command} {target} HTTP/1.1\r\n{headers}\r\n".encode() + body)
                    answer = b""
                    while True:
                        chunk = upstream.recv(65536)
                        answer += chunk
                        head, _, rest = answer.partition(b"\r\n\r\n")
                        length = [
                            int(line.split(b":")[1])
                            for line in head.split(b"\r\n")
                            if line.lower().startswith(b"content-length")
                        ]
                        if not chunk or (length and len(rest) >= length[0]):
                            break
                self.wfile.write(answer)
                self.close_connection = True

            def do_CONNECT(self) -> None:
                proxy.asked.append(("CONNECT", self.path, self.headers.get("Proxy-Authorization")))
                host, port = self.path.rsplit(":", 1)
                upstream = socket.create_connection((host, int(port)))
                self.send_response(200, "Connection established")
                self.end_headers()
                sockets = [self.connection, upstream]
                while True:
                    readable, _, _ = select.select(sockets, [], [], 5)
                    if not readable:
                        break
                    for sock in readable:
                        data = sock.recv(65536)
                        if not data:
                            upstream.close()
                            self.close_connection = True
                            return
                        (upstream if sock is self.connection else self.connection).sendall(data)

            do_GET = do_POST = _forward

        self._serve(Handler)
        return self


@pytest.fixture
def proxy() -> Iterator[Proxy]:
    started = Proxy().start()
    yield started
    started.stop()


def test_http_goes_through_the_environments_proxy_with_its_credentials(
    echo: EchoServer, proxy: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", f"http://agent:s%40cret@127.0.0.1:{proxy.port}")
    with Client(f"http://127.0.0.1:{echo.port}", "k") as client:
        assert client.request("GET", "/api/health", params={"a": "1"})["target"] == "/api/health?a=1"
    assert proxy.asked == [("GET", f"http://127.0.0.1:{echo.port}/api/health?a=1", "Basic YWdlbnQ6c0BjcmV0")]
    assert "proxy-authorization" not in echo.seen[0].headers


def test_no_proxy_sends_straight_to_the_api(echo: EchoServer, proxy: Proxy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{proxy.port}")
    monkeypatch.setenv("no_proxy", "localhost,127.0.0.1")
    with Client(f"http://127.0.0.1:{echo.port}", "k") as client:
        client.request("GET", "/api/health")
    assert proxy.asked == [] and len(echo.seen) == 1


def test_a_proxy_of_another_scheme_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALL_PROXY", "socks5://agent:s3cret@127.0.0.1:1080")
    with pytest.raises(ConfigurationError, match=r"unsupported proxy 'socks5://127\.0\.0\.1:1080'.*only http://"):
        Client("http://127.0.0.1:4200", "k")


def test_a_proxy_that_does_not_answer_connect_in_http_proves_the_request_never_left(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def behaviour(connection: socket.socket) -> None:
        _read_request(connection)
        connection.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")
        connection.close()

    for port in _listener(behaviour):
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{port}")
        with Client("https://127.0.0.1:4200", "k") as client, pytest.raises(ServerUnavailableError) as caught:
            client.request("GET", "/api/health")
        assert isinstance(caught.value.__cause__, ConnectFailed)


@pytest.fixture
def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made by openssl."""
    if shutil.which("openssl") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("openssl is not installed")
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_https_through_a_connect_tunnel_is_verified_against_ssl_cert_file(
    self_signed: tuple[Path, Path], proxy: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = self_signed
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = EchoServer(tls=context).start()
    try:
        url = f"https://127.0.0.1:{server.port}"
        # Without the certificate trusted, the TLS handshake fails: no request was sent
        monkeypatch.setenv("SSL_CERT_FILE", str(key.parent / "none.pem"))
        _tls_context.cache_clear()
        with Client(url, "k") as client, pytest.raises(ServerUnavailableError) as caught:
            client.request("GET", "/api/health")
        assert isinstance(caught.value.__cause__, ConnectFailed)
        # Trusted through SSL_CERT_FILE, and through the proxy's tunnel
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.port}")
        _tls_context.cache_clear()
        with Client(url, "k") as client:
            assert client.request("GET", "/api/health")["target"] == "/api/health"
            client.request("GET", "/api/again")
        assert proxy.asked == [("CONNECT", f"127.0.0.1:{server.port}", None)]  # one tunnel for both requests
        assert [seen.target for seen in server.seen] == ["/api/health", "/api/again"]
        assert server.seen[0].connection == server.seen[1].connection
    finally:
        _tls_context.cache_clear()
        server.stop()
