"""Issue 8, item 7: the credential is checked before a byte of the body is read.

Before, FastAPI received and parsed a request's whole body before its key was looked at: a stranger could make the
server buffer and parse megabytes per request. Now an unauthenticated request is answered from its headers alone.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from security.access_support import start_server
from support import ServerProcess

DECLARED = 1_000_000  # under the body limit: only the missing credential can refuse it


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = start_server(tmp_path_factory.mktemp("auth-before-body"))
    yield process
    process.stop()


def headers_only(
    server: ServerProcess, path: str, authorization: str | None, timeout: float = 5.0
) -> tuple[bytes, float]:
    """Send a POST's headers, declaring a body that never comes; return the answer and how long it took."""
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: 127.0.0.1:{server.port}",
        "Content-Type: application/json",
        f"Content-Length: {DECLARED}",
    ]
    if authorization is not None:
        lines.append(f"Authorization: {authorization}")
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        answer = b""
        try:
            while b"\r\n\r\n" not in answer:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                answer += chunk
        except TimeoutError:
            pass  # no answer: the server is waiting for the body
    return answer, time.monotonic() - started


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer bat_" + "x" * 43, "Basic dXNlcjpwdw=="],
    ids=["no-key", "unknown-key", "not-bearer"],
)
@pytest.mark.parametrize("path", ["/api/flow_runs", "/api/flows", "/api/agents"])
def test_an_unauthenticated_post_is_refused_before_its_body_arrives(
    server: ServerProcess, path: str, authorization: str | None
) -> None:
    answer, seconds = headers_only(server, path, authorization)

    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert seconds < 3


def test_an_authenticated_post_waits_for_its_body(server: ServerProcess) -> None:
    # The same request with a valid key is read as usual: the server waits for the body it was promised.
    answer, seconds = headers_only(server, "/api/flow_runs", f"Bearer {server.admin_key}", timeout=1.0)

    assert answer == b""
    assert seconds >= 0.9


def test_health_needs_no_key(server: ServerProcess) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(f"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode())
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")


def test_a_claim_body_is_small_whoever_sends_it(server: ServerProcess) -> None:
    # Claims are not counted among the requests in flight (they wait), so any credential's big body there would
    # be parsed unbounded: a read key's 1 MB claim is refused from its headers (413), never parsed.
    admin = server.client()
    read_key = admin.create_api_key("read", name="big claims").key
    answer, _took = headers_only(server, "/api/agents/0b6d0f0e-9b35-4d59-9f4e-0d9c2f1f3a11/claim", f"Bearer {read_key}")
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_a_body_sent_too_slowly_is_408_and_frees_its_slot(tmp_path_factory: pytest.TempPathFactory) -> None:
    # A valid credential (a flow's run token, say) sending bodies slowly must not hold the server's request slots:
    # with one slot and a 1 s body timeout, a request that never sends its body is answered 408, and the next
    # request is served.
    process = start_server(
        tmp_path_factory.mktemp("slow-bodies"),
        BATON__SERVER__MAX_REQUESTS_IN_FLIGHT="1",
        BATON__SERVER__BODY_TIMEOUT_SECONDS="1",
    )
    try:
        key = process.admin_key
        answer, _took = headers_only(process, "/api/flow_runs", f"Bearer {key}", timeout=30)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert process.client().whoami().role == "admin"
    finally:
        process.stop()
