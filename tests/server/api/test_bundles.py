"""Bundles over the API: upload once (201, then 200), read back byte for byte, refuse what is not the bundle its
digest names or breaks the format's caps, and the access rules (tenant, role, a run token's own flow only)."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, func, select

from baton.bundles import MAX_COMPRESSED_BYTES, Bundle, build_bundle
from baton.client import Client
from baton.exceptions import ClientError, NotFoundError, PermissionDeniedError
from baton.server.database.connection import create_session_factory, transaction
from baton.server.database.orm import Bundle as BundleRow
from baton.server.models import bundles, tenants
from server.harness import TenantContext, unique
from support import HELLO_SOURCE, ServerProcess

GZIP = {"Content-Type": "application/gzip"}


def make_bundle(tmp_path: Path, text: str = "") -> Bundle:
    """A bundle of a flow folder: a flow file and a helper module whose content makes the digest unique."""
    folder = tmp_path / unique("folder")
    (folder / "helpers").mkdir(parents=True)
    (folder / "flow.py").write_text(HELLO_SOURCE)
    (folder / "helpers" / "text.py").write_text(f"TEXT = {text or unique('text')!r}\n")
    return build_bundle([(p.relative_to(folder).as_posix(), p) for p in sorted(folder.rglob("*.py"))])


def hand_made(member: tarfile.TarInfo, content: bytes = b"x") -> tuple[str, bytes]:
    """A gzipped tar of one member as given (``build_bundle`` refuses unsafe ones): its digest and bytes."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as archive:
        member.size = len(content) if member.isreg() else 0
        archive.addfile(member, io.BytesIO(content) if member.isreg() else None)
    tar = raw.getvalue()
    return hashlib.sha256(tar).hexdigest(), gzip.compress(tar, mtime=0)


def flow_payload(name: str, digest: str) -> dict[str, Any]:
    return {
        "name": name,
        "entrypoint": "hello",
        "source": HELLO_SOURCE,
        "source_filename": "flow.py",
        "storage": {"type": "api", "bundle": digest, "path": "flow.py"},
    }


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    """60 MB of zeros, gzipped (~60 KB): made once, in pieces."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(1024 * 1024)
    return b"".join(packer.compress(zeros) for _ in range(60)) + packer.flush()


@pytest.fixture
def bundle(tmp_path: Path) -> Bundle:
    return make_bundle(tmp_path)


# --- upload and read back ---------------------------------------------------------------------------------


def test_upload_is_201_then_200_and_reads_back_the_same_bytes(tenant: TenantContext, bundle: Bundle) -> None:
    http = tenant.raw(tenant.key("user"))

    first = http.put(f"/api/bundles/{bundle.digest}", content=bundle.data, headers=GZIP)
    again = http.put(f"/api/bundles/{bundle.digest}", content=bundle.data, headers=GZIP)
    got = http.get(f"/api/bundles/{bundle.digest}")
    head = http.head(f"/api/bundles/{bundle.digest}")

    assert (first.status_code, again.status_code) == (201, 200), first.text
    assert first.json() == again.json()
    assert first.json()["size"] == bundle.size and first.json()["file_count"] == len(bundle.files) == 2
    assert first.json()["compressed_size"] == len(bundle.data)
    assert (got.status_code, got.content, got.headers["content-type"]) == (200, bundle.data, "application/gzip")
    assert (head.status_code, head.content, head.headers["content-length"]) == (200, b"", str(len(bundle.data)))


def test_client_methods(tenant: TenantContext, user: Client, reader: Client, runner: Client, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path)

    assert user.has_bundle(bundle.digest) is False
    assert user.upload_bundle(bundle.digest, bundle.data) is True
    assert user.upload_bundle(bundle.digest, bundle.data) is False
    assert user.has_bundle(bundle.digest) and reader.has_bundle(bundle.digest)
    assert reader.get_bundle(bundle.digest) == runner.get_bundle(bundle.digest) == bundle.data
    with pytest.raises(NotFoundError):
        user.get_bundle(make_bundle(tmp_path).digest)


def test_a_read_key_or_a_runner_key_cannot_upload(reader: Client, runner: Client, bundle: Bundle) -> None:
    for client in (reader, runner):
        with pytest.raises(PermissionDeniedError, match=r"\(bundle\.upload\)"):
            client.upload_bundle(bundle.digest, bundle.data)


# --- what is refused ----------------------------------------------------------------------------------------


def test_content_that_is_not_the_digest_named_is_422(admin: Client, tmp_path: Path) -> None:
    one, other = make_bundle(tmp_path), make_bundle(tmp_path)

    with pytest.raises(ClientError, match="does not match its digest") as excinfo:
        admin.upload_bundle(other.digest, one.data)

    assert excinfo.value.status_code == 422
    assert not admin.has_bundle(other.digest) and not admin.has_bundle(one.digest)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not gzip at all", "not gzip"),
        (gzip.compress(b"gzip, but no tar", mtime=0), "does not match"),
        (b"", "gzip stream"),
    ],
    ids=["not gzip", "gzip of no tar", "empty"],
)
def test_a_body_that_is_no_bundle_is_422(tenant: TenantContext, body: bytes, message: str) -> None:
    digest = hashlib.sha256(body).hexdigest()

    response = tenant.raw(tenant.admin_key).put(f"/api/bundles/{digest}", content=body, headers=GZIP)

    assert response.status_code == 422 and message in response.json()["detail"], response.text


def _symlink() -> tarfile.TarInfo:
    link = tarfile.TarInfo("escape")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    return link


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (tarfile.TarInfo("../evil.py"), "not a plain relative path"),
        (tarfile.TarInfo("/abs.py"), "not a plain relative path"),
        (tarfile.TarInfo("a/../../evil.py"), "not a plain relative path"),
        (_symlink(), "not a regular file"),
    ],
    ids=["dot-dot", "absolute", "dot-dot-inside", "symlink"],
)
def test_an_unsafe_member_is_422_and_nothing_is_stored(admin: Client, member: tarfile.TarInfo, message: str) -> None:
    digest, data = hand_made(member)

    with pytest.raises(ClientError, match=message) as excinfo:
        admin.upload_bundle(digest, data)

    assert excinfo.value.status_code == 422
    assert not admin.has_bundle(digest)


def test_a_gzip_bomb_is_413(tenant: TenantContext, gzip_bomb: bytes) -> None:
    response = tenant.raw(tenant.admin_key).put(f"/api/bundles/{'0' * 64}", content=gzip_bomb, headers=GZIP)

    assert response.status_code == 413 and "the cap" in response.json()["detail"], response.text


@pytest.mark.parametrize("digest", ["0" * 63, "A" * 64, "g" * 64, "0" * 65])
def test_a_malformed_digest_is_422(tenant: TenantContext, digest: str) -> None:
    http = tenant.raw(tenant.admin_key)

    assert http.put(f"/api/bundles/{digest}", content=b"x", headers=GZIP).status_code == 422
    assert http.get(f"/api/bundles/{digest}").status_code == 422
    assert http.head(f"/api/bundles/{digest}").status_code == 422


def test_a_body_over_the_compressed_cap_is_413(tenant: TenantContext) -> None:
    # The server's own body limit (10 MiB by default) may answer first: 413 either way, nothing read past it.
    body = bytes(MAX_COMPRESSED_BYTES + 1)

    response = tenant.raw(tenant.admin_key).put(f"/api/bundles/{'0' * 64}", content=body, headers=GZIP)

    assert response.status_code == 413, response.text[:500]


def test_the_route_stops_reading_past_the_compressed_cap(start_server: Callable[..., ServerProcess]) -> None:
    """With a server body limit above the cap, the route's own limit answers: declared and streamed bodies."""
    server = start_server(BATON__SERVER__MAX_BODY_BYTES=str(4 * MAX_COMPRESSED_BYTES))
    path = f"/api/bundles/{'0' * 64}"

    def chunks() -> Iterator[bytes]:  # no Content-Length: sent chunked
        left = MAX_COMPRESSED_BYTES + 1
        while left:
            yield bytes(min(left, 1024 * 1024))
            left -= min(left, 1024 * 1024)

    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.admin_key}"}) as http:
        declared = http.put(path, content=bytes(MAX_COMPRESSED_BYTES + 1), headers=GZIP)
        streamed = http.put(path, content=chunks(), headers=GZIP)

    for response in (declared, streamed):
        assert response.status_code == 413, response.text[:500]
        assert response.json()["detail"] == f"a compressed bundle may be at most {MAX_COMPRESSED_BYTES} bytes"


# --- tenants and run tokens -----------------------------------------------------------------------------------


def test_another_tenants_bundle_is_404_and_its_upload_a_copy_of_its_own(
    admin: Client, other_tenant: TenantContext, bundle: Bundle
) -> None:
    admin.upload_bundle(bundle.digest, bundle.data)
    other = other_tenant.admin

    assert other.has_bundle(bundle.digest) is False
    with pytest.raises(NotFoundError):
        other.get_bundle(bundle.digest)
    with pytest.raises(ClientError, match="was not uploaded") as excinfo:
        other.register_flow(flow_payload("theirs", bundle.digest))
    assert excinfo.value.status_code == 422
    # Uploading the same bytes stores the other tenant's own copy (201: nothing tells it that this tenant has one).
    assert other.upload_bundle(bundle.digest, bundle.data) is True


def test_a_run_token_reads_its_own_flows_bundle_only(
    tenant: TenantContext, user: Client, runner: Client, tmp_path: Path
) -> None:
    own, other = make_bundle(tmp_path), make_bundle(tmp_path)
    user.upload_bundle(own.digest, own.data)
    user.upload_bundle(other.digest, other.data)
    user.register_flow(flow_payload("bundled", own.digest))
    label = unique("bundled")
    run = user.create_flow_run(flow_name="bundled", labels=[label])
    agent = runner.register_agent(unique("agent"), "local", [label])
    token = tenant.client(TenantContext.claim_one(runner, agent.id, run.id).run_token)

    assert token.has_bundle(own.digest) and token.get_bundle(own.digest) == own.data
    assert token.has_bundle(other.digest) is False
    with pytest.raises(NotFoundError, match=f"bundle {other.digest} not found"):
        token.get_bundle(other.digest)
    with pytest.raises(PermissionDeniedError):
        token.upload_bundle(other.digest, other.data)


# --- registration ---------------------------------------------------------------------------------------------


def test_a_flow_names_an_uploaded_bundle_and_reregistering_it_is_the_same_version(
    tenant: TenantContext, bundle: Bundle
) -> None:
    http = tenant.raw(tenant.key("user"))
    payload = flow_payload("bundled", bundle.digest)

    missing = http.post("/api/flows", json=payload)
    http.put(f"/api/bundles/{bundle.digest}", content=bundle.data, headers=GZIP)
    created = http.post("/api/flows", json=payload)
    same = http.post("/api/flows", json=payload)

    assert missing.status_code == 422
    expected = f"bundle {bundle.digest} was not uploaded: PUT /api/bundles/{bundle.digest} first"
    assert missing.json()["detail"] == expected
    assert (created.status_code, same.status_code) == (201, 200), created.text
    assert same.json()["id"] == created.json()["id"] and same.json()["version"] == 1
    storage = created.json()["storage"]
    assert (storage["type"], storage["bundle"], storage["path"]) == ("api", bundle.digest, "flow.py")


def test_the_source_shown_must_be_the_bundles_file_that_runs(tenant: TenantContext, bundle: Bundle) -> None:
    http = tenant.raw(tenant.key("user"))
    http.put(f"/api/bundles/{bundle.digest}", content=bundle.data, headers=GZIP)

    fake_source = http.post("/api/flows", json={**flow_payload("shown", bundle.digest), "source": "x = 1\n"})
    no_such_file = flow_payload("shown", bundle.digest)
    no_such_file["storage"]["path"] = "elsewhere.py"
    missing_file = http.post("/api/flows", json=no_such_file)

    assert fake_source.status_code == 422
    assert fake_source.json()["detail"] == "the source sent is not the file 'flow.py' of the bundle"
    assert missing_file.status_code == 422
    assert missing_file.json()["detail"] == f"bundle {bundle.digest} has no file 'elsewhere.py'"


def test_a_storage_bundle_that_is_no_digest_is_422(tenant: TenantContext) -> None:
    response = tenant.raw(tenant.admin_key).post("/api/flows", json=flow_payload("bundled", "0" * 63))

    assert response.status_code == 422 and "storage" in response.text


# --- the model, on both databases -----------------------------------------------------------------------------


def test_two_uploads_racing_store_one_row(
    migrated_engine: Engine, monkeypatch: pytest.MonkeyPatch, bundle: Bundle
) -> None:
    """The second upload's look found nothing (the first had not committed yet): its insert clashes, and it answers
    with the first one's row instead of failing."""
    factory = create_session_factory(migrated_engine)
    with transaction(factory) as session:
        tenant_id = tenants.create_tenant(session, unique("tenant")).id
    checked = bundles.verify(bundle.data, bundle.digest)
    with transaction(factory) as session:
        _first, created = bundles.store(session, tenant_id, checked)
    real_find, looks = bundles.find, []

    def find_late(*args: Any) -> Any:  # the first look happens before the other upload commits
        looks.append(args)
        return None if len(looks) == 1 else real_find(*args)

    monkeypatch.setattr(bundles, "find", find_late)
    with transaction(factory) as session:
        second, created_again = bundles.store(session, tenant_id, checked)

    assert (created, created_again) == (True, False)
    assert second.digest == checked.digest and second.compressed_size == len(checked.data)
    with transaction(factory) as session:
        assert session.scalar(select(func.count()).select_from(BundleRow)) == 1
