"""The UI's static files and the Swagger page work with no internet: everything is served by Baton itself."""

from __future__ import annotations

import asyncio
import hashlib
import re
import shutil
import warnings
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fastapi import FastAPI
from starlette.responses import HTMLResponse
from starlette.types import Message

from baton.server.ui import assets
from baton.server.ui.assets import STATIC_DIR, STATIC_PREFIX, asset_url, static_files, swagger_page

with warnings.catch_warnings():
    # Starlette asks for the httpx2 package instead of httpx (a UserWarning, which pyproject's DeprecationWarning
    # filter does not cover); the client works the same with either.
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`", UserWarning)
    from starlette.testclient import TestClient

VENDOR_DIR = STATIC_DIR / "vendor"
JAVASCRIPT = ("text/javascript", "application/javascript")
# Files with no extension have no known type: browsers offer them as downloads (nosniff stops any guessing).
UNTYPED = ("application/octet-stream",)

# Every file the UI and the docs page load, with the content types a browser accepts for it under nosniff.
VENDORED = [
    ("vendor/htmx/htmx.min.js", JAVASCRIPT),
    ("vendor/swagger-ui/swagger-ui-bundle.js", JAVASCRIPT),
    ("vendor/swagger-ui/swagger-ui.css", ("text/css",)),
    ("vendor/swagger-ui/favicon-32x32.png", ("image/png",)),
    ("vendor/swagger-ui/swagger-ui-bundle.js.LICENSE.txt", ("text/plain",)),
    ("vendor/htmx/LICENSE", UNTYPED),
    ("vendor/swagger-ui/LICENSE", UNTYPED),
    ("vendor/swagger-ui/NOTICE", UNTYPED),
]


def build_app() -> FastAPI:
    app = FastAPI(title="Baton API", openapi_url="/api/openapi.json", docs_url=None, redoc_url=None)
    app.mount(STATIC_PREFIX, static_files())

    @app.get("/api/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return swagger_page("/api/openapi.json", "Baton API")

    return app


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(build_app())


def media_type(content_type: str) -> str:
    return content_type.split(";", maxsplit=1)[0].strip()


@pytest.mark.parametrize(("relative", "types"), VENDORED)
def test_vendored_file_is_served_with_its_type_and_cache_headers(
    client: TestClient, relative: str, types: tuple[str, ...]
) -> None:
    response = client.get(f"{STATIC_PREFIX}/{relative}")

    assert response.status_code == 200
    assert media_type(response.headers["content-type"]) in types
    assert response.headers["cache-control"] == "public, max-age=3600"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.content == (STATIC_DIR / relative).read_bytes()


def test_cache_busted_url_is_served_too(client: TestClient) -> None:
    response = client.get(asset_url("vendor/htmx/htmx.min.js"))

    assert response.status_code == 200
    assert response.content == (VENDOR_DIR / "htmx" / "htmx.min.js").read_bytes()


@pytest.mark.parametrize("path", [f"{STATIC_PREFIX}/", f"{STATIC_PREFIX}/vendor", f"{STATIC_PREFIX}/vendor/htmx/"])
def test_directory_is_not_listed(client: TestClient, path: str) -> None:
    response = client.get(path)

    assert response.status_code == 404
    assert "htmx.min.js" not in response.text


def raw_get(path: str, raw_path: bytes) -> int:
    """The status of a GET sent to the app as an ASGI server hands it over: ``path`` decoded, ``raw_path`` as sent.

    HTTP clients (httpx, browsers) remove ``..`` segments before sending, so a traversal attempt has to bypass them.
    """
    app = build_app()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": raw_path,
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 1234),
        "server": ("testserver", 80),
    }
    messages: list[Message] = []
    requests = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> Message:
        # The request once; then, like a server, nothing until the client leaves (file responses listen for it).
        if requests:
            return requests.pop()
        while not messages or messages[-1].get("more_body", False) or messages[-1]["type"] != "http.response.body":
            await asyncio.sleep(0.01)
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        messages.append(message)

    asyncio.run(asyncio.wait_for(app(scope, receive, send), timeout=10))
    return int(next(m["status"] for m in messages if m["type"] == "http.response.start"))


@pytest.mark.parametrize(
    ("path", "raw_path"),
    [
        (f"{STATIC_PREFIX}/../assets.py", f"{STATIC_PREFIX}/../assets.py"),
        (f"{STATIC_PREFIX}/vendor/../../assets.py", f"{STATIC_PREFIX}/vendor/../../assets.py"),
        (f"{STATIC_PREFIX}/../assets.py", f"{STATIC_PREFIX}/%2e%2e/assets.py"),
        (f"{STATIC_PREFIX}/../assets.py", f"{STATIC_PREFIX}/..%2fassets.py"),
        (f"{STATIC_PREFIX}/../assets.py", f"{STATIC_PREFIX}/%2E%2E%2Fassets.py"),
        (f"{STATIC_PREFIX}/vendor/{'../' * 9}etc/passwd", f"{STATIC_PREFIX}/vendor/{'%2e%2e/' * 9}etc/passwd"),
        (f"{STATIC_PREFIX}/..\\assets.py", f"{STATIC_PREFIX}/..%5cassets.py"),
    ],
)
def test_path_leading_outside_static_dir_is_refused(path: str, raw_path: str) -> None:
    # The file the request aims at exists: a 404 means it was refused, not missed.
    assert (STATIC_DIR.parent / "assets.py").is_file()

    assert raw_get(path, raw_path.encode()) == 404


def test_raw_request_for_a_file_inside_is_served() -> None:
    # The control for the test above: the same request path, without leaving the directory, is served.
    path = f"{STATIC_PREFIX}/vendor/htmx/../htmx/htmx.min.js"

    assert raw_get(path, path.encode()) == 200


class AssetReferences(HTMLParser):
    """The URLs a page makes the browser load: scripts, style sheets, icons, images."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        url = values.get("src") if tag in {"script", "img"} else values.get("href") if tag == "link" else None
        if url is not None:
            self.urls.append(url)


def test_docs_page_loads_only_same_origin_assets_that_answer(client: TestClient) -> None:
    page = client.get("/api/docs")
    assert page.status_code == 200
    references = AssetReferences()
    references.feed(page.text)

    # Given the page's script, style sheet and icon
    assert len(references.urls) == 3
    for url in references.urls:
        # Then each is a path on this server (no scheme, no //cdn host) that answers
        assert url.startswith(f"{STATIC_PREFIX}/vendor/swagger-ui/"), url
        assert client.get(url).status_code == 200, url
    # And nothing else on the page points off the server (the validator badge would call validator.swagger.io)
    assert "://" not in page.text
    assert '"validatorUrl": null' in page.text
    assert "url: '/api/openapi.json'" in page.text
    assert client.get("/api/openapi.json").status_code == 200


def test_docs_page_escapes_its_title() -> None:
    page = bytes(swagger_page("/api/openapi.json", "<b>Baton</b>").body).decode()

    assert "<title>&lt;b&gt;Baton&lt;/b&gt;</title>" in page


def test_asset_url_carries_the_start_of_the_files_sha256() -> None:
    digest = hashlib.sha256((VENDOR_DIR / "htmx" / "htmx.min.js").read_bytes()).hexdigest()

    assert asset_url("vendor/htmx/htmx.min.js") == f"{STATIC_PREFIX}/vendor/htmx/htmx.min.js?v={digest[:12]}"


def test_asset_url_changes_when_the_content_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    static = tmp_path / "static"
    shutil.copytree(VENDOR_DIR / "htmx", static / "vendor" / "htmx")
    monkeypatch.setattr(assets, "STATIC_DIR", static)
    before = asset_url("vendor/htmx/htmx.min.js")

    # When the file is replaced by a new version (a new process: the version is read once per file)
    (static / "vendor" / "htmx" / "htmx.min.js").write_bytes(b"/* htmx, next version */")
    assets._content_version.cache_clear()
    after = asset_url("vendor/htmx/htmx.min.js")

    assert before.split("?")[0] == after.split("?")[0]
    assert before != after


def test_asset_url_refuses_paths_outside_the_static_dir_and_missing_files() -> None:
    with pytest.raises(ValueError, match="outside"):
        asset_url("../assets.py")
    with pytest.raises(FileNotFoundError):
        asset_url("vendor/htmx/htmx.js")
    with pytest.raises(FileNotFoundError):
        asset_url("vendor/htmx")


ROW = re.compile(r"^\| `(?P<file>[^`]+)` \|.*\| `(?P<sha256>[0-9a-f]{64})` \|$", re.MULTILINE)


def test_every_vendored_file_is_listed_in_the_vendor_notes_with_its_sha256() -> None:
    notes = (VENDOR_DIR / "README.md").read_text(encoding="utf-8")
    listed = {match["file"]: match["sha256"] for match in ROW.finditer(notes)}
    present = {
        path.relative_to(VENDOR_DIR).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in VENDOR_DIR.rglob("*")
        if path.is_file() and path.name != "README.md"
    }

    # A file updated, added or removed without the notes following fails here.
    assert listed == present
