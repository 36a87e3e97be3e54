"""Bundles: a flow's folder, uploaded once before the flows that name it are registered (``PUT``), checked for by the
client before uploading (``HEAD``), and downloaded by the flow-run process (``GET``).

The body of a ``PUT`` is the compressed bundle itself (``application/gzip``), not JSON: it is read as a stream and
refused (413) as soon as it passes :data:`baton.bundles.MAX_COMPRESSED_BYTES`, then checked against its digest
and the format's caps (``models.bundles.verify``) before anything is stored.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import anyio
import anyio.to_thread
from fastapi import APIRouter, HTTPException, Request, Response
from fastapi import Path as PathParam
from pydantic import BaseModel
from sqlalchemy.orm import Session, sessionmaker

from baton.bundles import DIGEST_PATTERN, MAX_COMPRESSED_BYTES, BundleError, BundleTooBigError
from baton.server.access import Action, allow
from baton.server.api.deps import Db, transaction
from baton.server.json_body import JsonRoute
from baton.server.models import bundles
from baton.server.models.tenants import Principal
from baton.server.worker_threads import run_in_worker

# JsonRoute only changes how JSON bodies parse; these routes read none, so the raw body is untouched.
router = APIRouter(prefix="/bundles", tags=["bundles"], route_class=JsonRoute)

GZIP = "application/gzip"
_BINARY: dict[str, Any] = {"schema": {"type": "string", "format": "binary"}}

Digest = Annotated[
    str,
    PathParam(
        pattern=DIGEST_PATTERN.pattern,
        description="SHA-256 of the bundle's uncompressed tar, 64 lowercase hexadecimal characters",
    ),
]


class BundleRead(BaseModel):
    """A stored bundle, its bytes aside."""

    digest: str
    size: int  # uncompressed bytes of the files
    compressed_size: int
    file_count: int
    created: datetime


@router.put(
    "/{digest}",
    response_model=BundleRead,
    status_code=201,
    responses={200: {"model": BundleRead, "description": "The tenant had this bundle already: nothing changed."}},
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": f"The compressed bundle (gzip of the canonical tar), at most {MAX_COMPRESSED_BYTES} bytes.",
            "content": {GZIP: _BINARY},
        }
    },
)
async def upload_bundle(
    digest: Digest,
    principal: Annotated[Principal, allow(Action.BUNDLE_UPLOAD)],
    db: Db,
    request: Request,
    response: Response,
) -> BundleRead:
    """Store a bundle under its digest (201), or nothing when the tenant has it already (200).

    422: not gzip, not a tar of regular files with plain relative paths, or not the content ``digest`` names.
    413: over a cap (compressed body, files' total size, number of files).
    """
    data = await _read_body(request)
    # Content-addressed: a digest the tenant has names its bytes already. Not checking the body again keeps a
    # re-upload from costing the check's CPU over and over.
    known = await run_in_worker(_find, db, principal.tenant_id, digest)
    if known is not None:
        response.status_code = 200
        return _read(known)
    try:
        checked = await anyio.to_thread.run_sync(bundles.verify, data, digest, limiter=_verifier(request))
    except BundleTooBigError as exc:
        raise HTTPException(413, str(exc)) from None
    except BundleError as exc:
        raise HTTPException(422, str(exc)) from None
    del data  # ``checked`` holds the bytes now
    info, created = await run_in_worker(_store, db, principal.tenant_id, checked)
    if not created:
        response.status_code = 200
    return _read(info)


def _read(info: bundles.BundleInfo) -> BundleRead:
    return BundleRead(
        digest=info.digest,
        size=info.size,
        compressed_size=info.compressed_size,
        file_count=info.file_count,
        created=info.created,
    )


@router.get(
    "/{digest}",
    response_class=Response,
    responses={200: {"description": "The compressed bundle, as uploaded.", "content": {GZIP: _BINARY}}},
)
def download_bundle(digest: Digest, principal: Annotated[Principal, allow(Action.BUNDLE_READ)], db: Db) -> Response:
    """The bundle's compressed bytes. A run token reads its own flow's bundle only."""
    with transaction(db) as session:
        data = bundles.get(session, principal.tenant_id, digest)
    return Response(data, media_type=GZIP)


@router.head(
    "/{digest}",
    response_class=Response,
    responses={200: {"description": "The tenant has the bundle; Content-Length is its compressed size."}},
)
def check_bundle(digest: Digest, principal: Annotated[Principal, allow(Action.BUNDLE_READ)], db: Db) -> Response:
    """Whether the tenant has the bundle (200) or not (404), without its bytes: clients ask before uploading."""
    with transaction(db) as session:
        info = bundles.get_info(session, principal.tenant_id, digest)
    return Response(headers={"Content-Length": str(info.compressed_size)}, media_type=GZIP)


async def _read_body(request: Request) -> bytes:
    """The request body, never more than :data:`MAX_COMPRESSED_BYTES` of it (413 past that, before reading on)."""
    too_big = HTTPException(413, f"a compressed bundle may be at most {MAX_COMPRESSED_BYTES} bytes")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_COMPRESSED_BYTES:
        raise too_big
    chunks: list[bytes] = []
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > MAX_COMPRESSED_BYTES:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


def _store(
    factory: sessionmaker[Session], tenant_id: str, checked: bundles.VerifiedBundle
) -> tuple[bundles.BundleInfo, bool]:
    with transaction(factory) as session:
        return bundles.store(session, tenant_id, checked)


def _find(factory: sessionmaker[Session], tenant_id: str, digest: str) -> bundles.BundleInfo | None:
    with transaction(factory) as session:
        return bundles.find(session, tenant_id, digest)


def _verifier(request: Request) -> anyio.CapacityLimiter:
    """One bundle check at a time per server process (up to ~1 s of CPU each for 10,000 members): a burst of uploads
    waits for this limiter, not in the worker threads every other request needs."""
    limiter: anyio.CapacityLimiter | None = getattr(request.app.state, "bundle_verifier", None)
    if limiter is None:
        limiter = request.app.state.bundle_verifier = anyio.CapacityLimiter(1)
    return limiter
